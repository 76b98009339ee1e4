"""Load a subset archive back: arrays (memory-mapped when stored) and the class table.

``load(path)`` returns a ``Subset`` whose ``X_train, y_train, train_id, X_val,
y_val, val_id`` are numpy arrays and whose ``classes`` is the metadata CSV as a
pandas DataFrame (None when the CSV is not beside the archive).

With ``mmap=True`` (the default) every uncompressed member is a read-only
``np.memmap`` straight into the ``.npz`` file: nothing is copied or extracted,
so a 20 GB subset opens at once on a small machine. Compressed members, and
everything when ``mmap=False``, are read into memory as ``np.load`` would.
"""
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError


@dataclass(frozen=True)
class Subset:
    """The arrays of an archive by key, plus the class table; ``subset["X_train"]`` works too."""

    path: Path
    arrays: dict[str, np.ndarray]
    classes: "object | None"

    def __getitem__(self, key: str) -> np.ndarray:
        return self.arrays[key]

    def __getattr__(self, key: str) -> np.ndarray:
        try:
            return self.__dict__["arrays"][key]
        except KeyError:
            raise AttributeError(key) from None

    def keys(self):
        return self.arrays.keys()


def metadata_path_of(archive: str | Path) -> Path:
    """``out/x_cls_metadata.csv`` for ``out/x_cls.npz``."""
    archive = Path(archive)
    return archive.with_name(archive.name.removesuffix(".npz") + "_metadata.csv")


def _member_data_offset(f, info: zipfile.ZipInfo) -> int:
    f.seek(info.header_offset)
    header = f.read(30)
    if header[:4] != b"PK\x03\x04":
        raise UserError(f"{f.name}: bad local header for {info.filename}; the file is damaged, rebuild it")
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_length + extra_length


def _mapped_array(path: Path, f, info: zipfile.ZipInfo) -> np.ndarray:
    f.seek(_member_data_offset(f, info))
    version = np.lib.format.read_magic(f)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read_header(f)
    if fortran_order or dtype.hasobject:
        raise UserError(f"{path}: {info.filename} is not a plain C-ordered array; load it with np.load")
    if 0 in shape:
        return np.empty(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=f.tell(), shape=shape)


def load(path: str | Path, mmap: bool = True) -> Subset:
    """Open ``path`` (a ``*_cls.npz``); see the module docstring."""
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise UserError(f"{path} does not exist; build it first or check the path") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise UserError(f"{path} is not a readable .npz archive ({exc}); rebuild or re-download it") from None
    arrays = {}
    with archive, open(path, "rb") as f:
        for info in archive.infolist():
            key = info.filename.removesuffix(".npy")
            if mmap and info.compress_type == zipfile.ZIP_STORED:
                arrays[key] = _mapped_array(path, f, info)
            else:
                with archive.open(info) as member:
                    arrays[key] = np.lib.format.read_array(member)
    classes = None
    csv = metadata_path_of(path)
    if csv.is_file():
        import pandas as pd

        classes = pd.read_csv(csv, dtype={"human_label": "string", "original_label": "Int64", "imagenet_index": "Int64"})
    return Subset(path, arrays, classes)
