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

The readers below take an archive or a shard index alike and read only what
they are asked for: ``read_arrays`` some arrays (the labels and ids, say,
without a byte of the images), ``read_rows`` some rows of an image array and
``iter_rows`` all of them in order; from a compressed member they decompress
no further than the last row needed. ``read_class_table`` reads the metadata
CSV beside an archive.

Only C-ordered arrays of plain dtypes are read, as every build writes them. A
member holding Python objects is refused and never unpickled (unpickling can
run code from the file); so is a Fortran-ordered one. A member that cannot be
read (a damaged deflate stream, a truncated file) is a one-line ``UserError``
naming it.
"""
import contextlib
import json
import struct
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import UserError
from .options import OutputNames

if TYPE_CHECKING:  # pandas is imported only when a class table is read
    import pandas as pd


@dataclass(frozen=True)
class Subset:
    """The arrays of an archive by key, plus the class table; ``subset["X_train"]`` works too."""

    path: Path
    arrays: "dict[str, np.ndarray | ShardedArray]"
    classes: "pd.DataFrame | None"

    def __getitem__(self, key: str) -> "np.ndarray | ShardedArray":
        return self.arrays[key]

    def __getattr__(self, key: str) -> "np.ndarray | ShardedArray":
        try:
            return self.__dict__["arrays"][key]
        except KeyError:
            raise AttributeError(key) from None

    def keys(self):
        return self.arrays.keys()


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

    @property
    def row_bytes(self) -> int:
        return int(self.dtype.itemsize * np.prod(self.shape[1:], dtype=np.int64))


def refuse_other_outputs(path: Path) -> None:
    """A one-line error when ``path`` is a build's manifest or metadata CSV, not its archive."""
    names = OutputNames.of(path)
    if path.name in (names.manifest, names.metadata):
        what = "manifest" if path.name == names.manifest else "metadata CSV"
        raise UserError(f"{path} is the {what} of a build, not an archive; pass {path.with_name(names.archive)} "
                        f"(or its shard index {names.index})")


def _open_zip(path: Path) -> zipfile.ZipFile:
    refuse_other_outputs(path)
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
                with _reading(path, key), archive.open(info) as member:
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
            headers[key] = ArrayHeader(key, dtype, tuple(shape), compressed, offset)
    return headers


@contextlib.contextmanager
def _reading(path: Path, key: str):
    """A damaged member (bad deflate data, a file cut short) as a one-line ``UserError``."""
    try:
        yield
    except (zlib.error, zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise UserError(f"{path}: {key}.npy cannot be read ({exc}); the file is damaged, rebuild or "
                        "re-download it") from None


def _memmap(archive: Path, header: ArrayHeader) -> np.ndarray:
    """A stored member, memory-mapped read-only."""
    return np.memmap(archive, dtype=header.dtype, mode="r", offset=int(header.data_offset or 0), shape=header.shape)


def _archives(path: Path) -> list[Path]:
    return shard_paths(path) if OutputNames.is_index(path) else [path]


def _headers_with(path: Path, keys: Sequence[str]) -> dict[str, ArrayHeader]:
    headers = array_headers(path)
    missing = [key for key in keys if key not in headers]
    if missing:
        raise UserError(f"{path} has no array {', '.join(missing)}; it has: {', '.join(headers)}")
    return headers


def read_arrays(path: str | Path, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of an archive (or, concatenated, of the shards of an index), in memory,
    in the order asked; no other member is read."""
    parts: dict[str, list[np.ndarray]] = {key: [] for key in keys}
    for archive in _archives(Path(path)):
        _headers_with(archive, keys)
        with _open_zip(archive) as opened:
            for key in keys:
                with _reading(archive, key), opened.open(key + ".npy") as member:
                    parts[key].append(np.lib.format.read_array(member))
    return {key: np.concatenate(arrays) for key, arrays in parts.items()}


def iter_rows(path: str | Path, key: str) -> Iterator[np.ndarray]:
    """Every row of image array ``key``, in order (across the shards of an index): memory-mapped
    from a stored member, decompressed one row at a time from a deflated one."""
    for archive in _archives(Path(path)):
        header = _headers_with(archive, [key])[key]
        if not header.compressed:
            if header.shape[0]:
                yield from _memmap(archive, header)
            continue
        with _open_zip(archive) as opened, _reading(archive, key), opened.open(key + ".npy") as member:
            _read_npy_header(member, archive, key + ".npy")
            for _ in range(header.shape[0]):
                data = member.read(header.row_bytes)
                if len(data) < header.row_bytes:
                    raise EOFError("the member ends before its last row")
                yield np.frombuffer(data, dtype=header.dtype).reshape(header.shape[1:])


def read_rows(path: str | Path, key: str, rows: Sequence[int] | np.ndarray) -> np.ndarray:
    """Rows ``rows`` of image array ``key`` (in that order, repeats allowed), of an archive or of
    the shards of an index; a deflated member is decompressed up to the last row asked, no further."""
    rows = np.asarray(rows, dtype=np.int64)
    archives = _archives(Path(path))
    headers = [_headers_with(archive, [key])[key] for archive in archives]
    starts = np.cumsum([0] + [h.shape[0] for h in headers])
    out = np.empty((len(rows),) + headers[0].shape[1:], dtype=headers[0].dtype)
    if rows.size and (rows.min() < 0 or rows.max() >= starts[-1]):
        raise IndexError(f"rows {rows.min()}..{rows.max()} out of range for the {starts[-1]} rows of {key}")
    for part, (archive, header) in enumerate(zip(archives, headers, strict=True)):
        wanted = np.flatnonzero((rows >= starts[part]) & (rows < starts[part + 1]))
        if not wanted.size:
            continue
        local = rows[wanted] - starts[part]
        if not header.compressed:
            out[wanted] = _memmap(archive, header)[local]
            continue
        last = int(local.max())
        for row, pixels in enumerate(iter_rows(archive, key)):
            out[wanted[local == row]] = pixels
            if row == last:
                break
    return out


def read_class_table(path: str | Path) -> "pd.DataFrame | None":
    """The metadata CSV of the build that wrote ``path`` (an archive, a shard or an index), with
    its ids as nullable integers; None when it is not beside it."""
    csv = OutputNames.sibling(path, "metadata")
    if not csv.is_file():
        return None
    import pandas as pd

    return pd.read_csv(csv, dtype={"human_label": "string", "original_label": "Int64", "imagenet_index": "Int64"})


def load(path: str | Path, mmap: bool = True) -> Subset:
    """Open ``path`` (a ``*_cls.npz``, or the ``*_cls.index.json`` of a sharded set); see the module docstring."""
    path = Path(path)
    arrays: dict[str, np.ndarray | ShardedArray] = {}
    if OutputNames.is_index(path):
        shards = [load(shard, mmap) for shard in shard_paths(path)]
        for key in shards[0].arrays:
            parts = [np.asarray(s.arrays[key]) if not key.startswith("X_") else s.arrays[key] for s in shards]
            arrays[key] = ShardedArray(parts) if key.startswith("X_") else np.concatenate(parts)  # type: ignore[arg-type]
        return Subset(path, arrays, shards[0].classes)
    headers = array_headers(path)
    with _open_zip(path) as archive:
        for key, header in headers.items():
            if mmap and not header.compressed:
                arrays[key] = _memmap(path, header) if 0 not in header.shape else np.empty(header.shape, header.dtype)
            else:
                with _reading(path, key), archive.open(key + ".npy") as member:
                    arrays[key] = np.lib.format.read_array(member)
    return Subset(path, arrays, read_class_table(path))
