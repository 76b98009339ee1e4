"""Load a subset archive back: arrays (memory-mapped when stored) and the class table.

``load(path)`` returns a ``Subset`` whose ``X_train, y_train, train_id, X_val,
y_val, val_id`` are numpy arrays and whose ``classes`` is the metadata CSV as a
pandas DataFrame (None when the CSV is not beside the archive).

A sharded set is loaded from its ``<name>_cls.index.json``: labels and ids are
concatenated, and each image array is a ``ShardedArray`` that reads rows from
the shards on demand (``len``, ``shape``, integer, slice and index-array
access; ``np.asarray`` materialises it).

With ``mmap=True`` (the default) every uncompressed member is a read-only
``np.memmap`` straight into the ``.npz`` file: nothing is copied or extracted,
so a 20 GB subset opens at once on a small machine. Compressed members, and
everything when ``mmap=False``, are read into memory as ``np.load`` would.

Only C-ordered arrays of plain dtypes are read, as every build writes them. A
member holding Python objects is refused and never unpickled (unpickling can
run code from the file); so is a Fortran-ordered one.
"""
import json
import re
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


_SHARD_SUFFIX = re.compile(r"-\d{5}-of-\d{5}\.npz$")


def output_stem(path: str | Path) -> Path:
    """``out/x_cls`` for any output of a set: ``x_cls.npz``, a shard, ``x_cls.index.json``, ``x_cls.manifest.json``."""
    path = Path(path)
    name = _SHARD_SUFFIX.sub("", path.name)
    for suffix in (".npz", ".index.json", ".manifest.json", "_metadata.csv"):
        name = name.removesuffix(suffix)
    return path.with_name(name)


def metadata_path_of(archive: str | Path) -> Path:
    """``out/x_cls_metadata.csv`` for ``out/x_cls.npz`` (or a shard, the index, the manifest)."""
    stem = output_stem(archive)
    return stem.with_name(stem.name + "_metadata.csv")


def shard_paths(index: str | Path) -> list[Path]:
    """The shard files an index lists, in order."""
    index = Path(index)
    try:
        with open(index, encoding="utf-8") as f:
            shards = json.load(f)["shards"]
        return [index.with_name(shard["file"]) for shard in shards]
    except FileNotFoundError:
        raise UserError(f"{index} does not exist; build it first or check the path") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{index} is not a readable shard index ({exc}); rebuild the set") from None


class ShardedArray:
    """Rows of one array spread over shards, read on demand; see the module docstring."""

    def __init__(self, parts: list[np.ndarray]):
        self.parts = parts
        self.starts = np.cumsum([0] + [len(p) for p in parts])
        self.shape = (int(self.starts[-1]),) + tuple(parts[0].shape[1:])
        self.dtype = parts[0].dtype
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def _row(self, i: int) -> np.ndarray:
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"row {i} out of range for {len(self)} rows")
        part = int(np.searchsorted(self.starts, i, side="right")) - 1
        return self.parts[part][i - self.starts[part]]

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return self._row(int(index))
        if isinstance(index, tuple):
            if isinstance(index[0], (int, np.integer)):
                return self._row(int(index[0]))[index[1:]]
            return self[index[0]][(slice(None),) + index[1:]]
        rows = np.arange(len(self))[index]
        return np.stack([self._row(int(i)) for i in rows]) if len(rows) else np.empty((0,) + self.shape[1:], self.dtype)

    def __array__(self, dtype=None, copy=None):
        whole = np.concatenate([np.asarray(p) for p in self.parts])
        return whole if dtype is None else whole.astype(dtype)


@dataclass(frozen=True)
class ArrayHeader:
    """Where one array of an archive is and what it is, read from headers alone."""

    key: str
    dtype: np.dtype
    shape: tuple[int, ...]
    compressed: bool
    data_offset: int | None  # file offset of the first element (stored members only)
    member_bytes: int         # compressed size of the member


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except FileNotFoundError:
        raise UserError(f"{path} does not exist; build it first or check the path") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise UserError(f"{path} is not a readable .npz archive ({exc}): it may be truncated; "
                        "rebuild or re-download it") from None


def _read_npy_header(f, path: Path, name: str):
    try:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        return read(f)
    except ValueError as exc:
        raise UserError(f"{path}: the header of {name} is damaged ({exc}); rebuild or re-download it") from None


def array_headers(path: str | Path) -> dict[str, ArrayHeader]:
    """Every array of the archive by key, in archive order; reads only the ZIP and ``.npy`` headers."""
    path = Path(path)
    headers = {}
    with _open_zip(path) as archive, open(path, "rb") as f:
        for info in archive.infolist():
            key = info.filename.removesuffix(".npy")
            compressed = info.compress_type != zipfile.ZIP_STORED
            if compressed:
                with archive.open(info) as member:
                    shape, fortran_order, dtype = _read_npy_header(member, path, info.filename)
                offset = None
            else:
                f.seek(info.header_offset)
                local = f.read(30)
                if local[:4] != b"PK\x03\x04":
                    raise UserError(f"{path}: bad local header for {info.filename}; the file is damaged, rebuild it")
                name_length, extra_length = struct.unpack("<HH", local[26:30])
                f.seek(info.header_offset + 30 + name_length + extra_length)
                shape, fortran_order, dtype = _read_npy_header(f, path, info.filename)
                offset = f.tell()
            if dtype.hasobject:
                raise UserError(f"{path}: {info.filename} holds Python objects (pickled), which this tool never loads "
                                "because unpickling can run code from the file; archives written by imagenet-subset "
                                "never contain them")
            if fortran_order:
                raise UserError(f"{path}: {info.filename} is a Fortran-ordered (column-major) array, which this tool "
                                "does not read; archives written by imagenet-subset are C-ordered; np.load reads it")
            headers[key] = ArrayHeader(key, dtype, tuple(shape), compressed, offset, info.compress_size)
    return headers


def load(path: str | Path, mmap: bool = True) -> Subset:
    """Open ``path`` (a ``*_cls.npz``, or the ``*_cls.index.json`` of a sharded set); see the module docstring."""
    path = Path(path)
    if path.name.endswith(".index.json"):
        shards = [load(shard, mmap) for shard in shard_paths(path)]
        arrays = {key: (ShardedArray([s.arrays[key] for s in shards]) if key.startswith("X_")
                        else np.concatenate([s.arrays[key] for s in shards])) for key in shards[0].arrays}
        return Subset(path, arrays, shards[0].classes)
    headers = array_headers(path)
    arrays = {}
    with _open_zip(path) as archive:
        for key, header in headers.items():
            if mmap and not header.compressed:
                arrays[key] = (np.memmap(path, dtype=header.dtype, mode="r", offset=header.data_offset,
                                         shape=header.shape)
                               if 0 not in header.shape else np.empty(header.shape, dtype=header.dtype))
            else:
                with archive.open(key + ".npy") as member:
                    arrays[key] = np.lib.format.read_array(member)
    classes = None
    csv = metadata_path_of(path)
    if csv.is_file():
        import pandas as pd

        classes = pd.read_csv(csv, dtype={"human_label": "string", "original_label": "Int64", "imagenet_index": "Int64"})
    return Subset(path, arrays, classes)
