"""Write the archive: a ``.npz`` that plain ``np.load`` reads, written as a stream.

An ``.npz`` is a ZIP file whose members are ``.npy`` files, one per array. This
module writes that format itself, so that no array is ever held whole in memory
and the image pixels never pass through the parent process.

File layout (all integers little-endian)::

    [local header][.npy header][array bytes]     y_train.npy   } small arrays first,
    ...                                          } known before any pixel
    [local header][.npy header][image rows ...]   X_train.npy   } rows in order
    [local header][.npy header][image rows ...]   X_val.npy
    [central directory: one entry per array, in the order the specs were given]
    [ZIP64 end of central directory record + locator]   (only past 4 GiB)
    [end of central directory record]

``.npy`` header (numpy format 1.0): ``b"\\x93NUMPY\\x01\\x00"``, a uint16 header
length, then ``"{'descr': '|u1', 'fortran_order': False, 'shape': (N, 224, 224, 3), }"``
padded with spaces and ended by a newline so that the header is a multiple of
64 bytes long.

ZIP local header (30 bytes + name + extra): signature ``PK\\x03\\x04``, version
needed, flags 0, method (0 stored, 8 deflated), DOS time 0 and date 1980-01-01
(fixed, so the bytes do not depend on when they were made), CRC-32, compressed
size, uncompressed size, name length, extra length. A member of 4 GiB or more
has 0xFFFFFFFF in both size fields and a ZIP64 extra field (id 1) carrying the
real sizes; the central directory entry does the same for sizes and offsets.

Two writers share that format:

- ``StoredNpzWriter`` (the default): members are stored uncompressed, so every
  offset is known from the shapes alone. The file is sized up front, workers
  write their rows straight to ``pixel_offset(key, row)``, and the parent only
  combines their CRCs (``crc32.crc32_combine``) and fills in the headers at the
  end. Stored members can be memory-mapped by ``packer.load``.
- ``DeflatedNpzWriter`` (``--compress``): each worker deflates its rows into a
  raw deflate segment ending in a sync flush; segments concatenate into one
  valid deflate stream, which the parent appends in row order and ends with an
  empty final block. Sizes are patched into the local header afterwards.
"""
import io
import os
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from .crc32 import crc32_combine

DEFLATE_LEVEL = 6
_ZIP64_LIMIT = 0xFFFFFFFF
_DOS_DATE = (1 << 5) | 1  # 1980-01-01, the earliest ZIP date
_VERSION_STORED = 20
_VERSION_ZIP64 = 45
_MADE_BY = (3 << 8) | _VERSION_ZIP64  # Unix, spec 4.5
_FILE_MODE = 0o644 << 16


@dataclass(frozen=True)
class ArraySpec:
    """One array of the archive: its key (``X_train``), numpy type string and shape."""

    key: str
    descr: str
    shape: tuple[int, ...]

    @property
    def member_name(self) -> str:
        return self.key + ".npy"

    @property
    def row_bytes(self) -> int:
        return int(np.dtype(self.descr).itemsize * np.prod(self.shape[1:], dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.row_bytes


def npy_header(spec: ArraySpec) -> bytes:
    """The ``.npy`` format 1.0 header for an array of this spec, as ``np.save`` writes it."""
    shape = repr(tuple(int(n) for n in spec.shape))
    text = "{'descr': '%s', 'fortran_order': False, 'shape': %s, }" % (spec.descr, shape)
    unpadded = 10 + len(text) + 1
    text += " " * (-unpadded % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")


def deflate_segment(data, final: bool = False) -> bytes:
    """Raw-deflate ``data`` into a segment that concatenates with others (see module doc)."""
    compressor = zlib.compressobj(DEFLATE_LEVEL, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush(zlib.Z_FINISH if final else zlib.Z_SYNC_FLUSH)


_FINAL_EMPTY_BLOCK = zlib.compressobj(DEFLATE_LEVEL, zlib.DEFLATED, -15).flush()


@dataclass
class _Member:
    spec: ArraySpec
    header_offset: int
    method: int
    zip64: bool
    crc: int = 0
    compressed_size: int = 0

    @property
    def size(self) -> int:
        return len(npy_header(self.spec)) + self.spec.nbytes


def _local_header(member: _Member) -> bytes:
    name = member.spec.member_name.encode()
    if member.zip64:
        extra = struct.pack("<HHQQ", 1, 16, member.size, member.compressed_size)
        sizes = (_ZIP64_LIMIT, _ZIP64_LIMIT)
    else:
        extra = b""
        sizes = (member.compressed_size, member.size)
    version = _VERSION_ZIP64 if member.zip64 else _VERSION_STORED
    return struct.pack(
        "<IHHHHHIIIHH", 0x04034B50, version, 0, member.method, 0, _DOS_DATE,
        member.crc, *sizes, len(name), len(extra),
    ) + name + extra


def _local_header_size(spec: ArraySpec, zip64: bool) -> int:
    return 30 + len(spec.member_name.encode()) + (20 if zip64 else 0)


def _central_directory(members: list[_Member], offset: int) -> bytes:
    """Central directory entries, then the end records, for a directory starting at ``offset``."""
    out = io.BytesIO()
    for m in members:
        name = m.spec.member_name.encode()
        big = [v >= _ZIP64_LIMIT for v in (m.size, m.compressed_size, m.header_offset)]
        extra_values = [v for v, b in zip((m.size, m.compressed_size, m.header_offset), big) if b]
        extra = struct.pack("<HH", 1, 8 * len(extra_values)) + struct.pack(
            f"<{len(extra_values)}Q", *extra_values) if extra_values else b""
        fields = [_ZIP64_LIMIT if b else v for v, b in zip((m.compressed_size, m.size, m.header_offset), (big[1], big[0], big[2]))]
        version = _VERSION_ZIP64 if (m.zip64 or extra_values) else _VERSION_STORED
        out.write(struct.pack(
            "<IHHHHHHIIIHHHHHII", 0x02014B50, _MADE_BY, version, 0, m.method, 0, _DOS_DATE,
            m.crc, fields[0], fields[1], len(name), len(extra), 0, 0, 0, _FILE_MODE, fields[2],
        ) + name + extra)
    directory = out.getvalue()
    count = len(members)
    end = offset + len(directory)
    if offset >= _ZIP64_LIMIT or len(directory) >= _ZIP64_LIMIT:
        out.write(struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, _MADE_BY, _VERSION_ZIP64, 0, 0,
                              count, count, len(directory), offset))
        out.write(struct.pack("<IIQI", 0x07064B50, 0, end, 1))
        offset_field = size_field = _ZIP64_LIMIT
    else:
        offset_field, size_field = offset, len(directory)
    out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, size_field, offset_field, 0))
    return out.getvalue()


def _array_bytes(spec: ArraySpec, array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array, dtype=np.dtype(spec.descr))
    if array.shape != spec.shape:
        raise ValueError(f"{spec.key}: shape {array.shape}, expected {spec.shape}")
    return array.tobytes()


class StoredNpzWriter:
    """An uncompressed ``.npz`` whose layout is fixed before any image is decoded.

    ``specs`` lists every array in the order of the central directory (the order
    ``np.load(...).files`` reports). ``arrays`` holds the contents of the small
    arrays, written at once; the others ("image arrays") are filled by workers
    at ``pixel_offset`` and reported, in row order, through ``add_chunk``.
    """

    compressed = False

    def __init__(self, path: str, specs: list[ArraySpec], arrays: dict[str, np.ndarray]):
        self.path = path
        self._specs = specs
        self._members: dict[str, _Member] = {}
        self._data_offset: dict[str, int] = {}
        offset = 0
        for spec in sorted(specs, key=lambda s: s.key not in arrays):  # small arrays first
            zip64 = len(npy_header(spec)) + spec.nbytes >= _ZIP64_LIMIT
            member = _Member(spec, offset, method=0, zip64=zip64)
            member.compressed_size = member.size
            self._members[spec.key] = member
            self._data_offset[spec.key] = offset + _local_header_size(spec, zip64)
            offset += _local_header_size(spec, zip64) + member.size
        self._directory_offset = offset
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        os.ftruncate(self._fd, offset)
        for spec in specs:
            header = npy_header(spec)
            self._members[spec.key].crc = zlib.crc32(header)
            if spec.key in arrays:
                data = _array_bytes(spec, arrays[spec.key])
                os.pwrite(self._fd, data, self._data_offset[spec.key] + len(header))
                self._members[spec.key].crc = zlib.crc32(data, self._members[spec.key].crc)

    @property
    def size(self) -> int:
        """Bytes before the central directory (the directory adds a few hundred)."""
        return self._directory_offset

    def pixel_offset(self, key: str, row: int) -> int:
        """File offset where row ``row`` of image array ``key`` starts."""
        spec = self._members[key].spec
        return self._data_offset[key] + len(npy_header(spec)) + row * spec.row_bytes

    def add_chunk(self, key: str, crc: int, nbytes: int, payload: bytes | None = None) -> None:
        """Record rows already written at their offsets; ``crc`` is zlib.crc32 of their bytes."""
        member = self._members[key]
        member.crc = crc32_combine(member.crc, crc, nbytes)

    def close(self) -> None:
        """Write every header and the central directory, flush to disk, close the file."""
        for member in self._members.values():
            os.pwrite(self._fd, _local_header(member) + npy_header(member.spec), member.header_offset)
        ordered = [self._members[s.key] for s in self._specs]
        os.pwrite(self._fd, _central_directory(ordered, self._directory_offset), self._directory_offset)
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1

    def abort(self) -> None:
        """Close without finishing (the caller removes the file)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class DeflatedNpzWriter:
    """A deflate-compressed ``.npz`` written front to back.

    Same interface as ``StoredNpzWriter`` without ``pixel_offset``: the image
    arrays arrive as deflate segments through ``add_chunk``, one array after
    another in the order of ``specs``.
    """

    compressed = True

    def __init__(self, path: str, specs: list[ArraySpec], arrays: dict[str, np.ndarray]):
        self.path = path
        self._specs = specs
        self._members: dict[str, _Member] = {}
        self._file = open(path, "wb")
        self._current: _Member | None = None
        for spec in specs:
            if spec.key in arrays:
                raw = npy_header(spec) + _array_bytes(spec, arrays[spec.key])
                member = self._begin(spec)
                self._append(deflate_segment(raw, final=True), zlib.crc32(raw), len(raw))
                self._end(member)
        self._pending = [s for s in specs if s.key not in arrays]

    @property
    def size(self) -> int:
        return self._file.tell()

    def _begin(self, spec: ArraySpec) -> _Member:
        size = len(npy_header(spec)) + spec.nbytes
        zip64 = size + size // 1000 + 1024 >= _ZIP64_LIMIT  # deflate may expand a little
        member = _Member(spec, self._file.tell(), method=8, zip64=zip64)
        self._members[spec.key] = member
        self._file.write(_local_header(member))
        self._current = member
        return member

    def _append(self, segment: bytes, crc: int, nbytes: int) -> None:
        member = self._current
        self._file.write(segment)
        member.compressed_size += len(segment)
        member.crc = crc32_combine(member.crc, crc, nbytes)

    def _end(self, member: _Member) -> None:
        end = self._file.tell()
        self._file.seek(member.header_offset)
        self._file.write(_local_header(member))
        self._file.seek(end)
        self._current = None

    def add_chunk(self, key: str, crc: int, nbytes: int, payload: bytes | None = None) -> None:
        """Append a deflate segment of rows of ``key``; ``crc`` is of the uncompressed rows."""
        if self._current is None or self._current.spec.key != key:
            if self._current is not None:
                self._finish_current()
            spec = self._pending.pop(0)
            if spec.key != key:
                raise ValueError(f"expected rows of {spec.key}, got {key}")
            self._begin(spec)
            header = npy_header(spec)
            self._append(deflate_segment(header), zlib.crc32(header), len(header))
        self._append(payload, crc, nbytes)

    def _finish_current(self) -> None:
        self._file.write(_FINAL_EMPTY_BLOCK)
        self._current.compressed_size += len(_FINAL_EMPTY_BLOCK)
        self._end(self._current)

    def close(self) -> None:
        if self._current is not None:
            self._finish_current()
        for spec in self._pending:  # image arrays with no rows at all
            self._begin(spec)
            header = npy_header(spec)
            self._append(deflate_segment(header, final=True), zlib.crc32(header), len(header))
            self._end(self._members[spec.key])
        self._pending = []
        ordered = [self._members[s.key] for s in self._specs]
        self._file.write(_central_directory(ordered, self._file.tell()))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def abort(self) -> None:
        self._file.close()
