"""Write the archive: a ``.npz`` that plain ``np.load`` reads, written as a stream.

An ``.npz`` is a ZIP file whose members are ``.npy`` files, one per array. This
module writes that format itself, so that no array is ever held whole in memory
and the image pixels never pass through the parent process.

File layout (all integers little-endian)::

    [local header][.npy header][array bytes]     y_train.npy   } small arrays first,
    ...                                          } known before any pixel
    [local header][.npy header][image rows ...][data descriptor]   X_train.npy
    [local header][.npy header][image rows ...][data descriptor]   X_val.npy
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
Image members set flag bit 3: their local header has CRC and sizes 0, and a
data descriptor (``PK\\x07\\x08``, CRC-32, compressed and uncompressed size,
8-byte sizes past 4 GiB) follows their data. So the file is final from the
front to the last row written, and its SHA-256 is computed as it is produced.

Two writers share that format, and the interface ``ArchiveWriter``:

- ``StoredNpzWriter`` (the default): members are stored uncompressed, so every
  offset is known from the shapes alone. The file is sized up front, workers
  write their rows straight to ``rows_at(key, row)``, and the parent only
  combines their CRCs (``crc32.crc32_combine``) and fills in the headers at the
  end, reading finished regions back into the SHA-256 as rows arrive. Stored
  members can be memory-mapped by ``packer.load``.
- ``DeflatedNpzWriter`` (``--compress``): each worker deflates its rows into a
  raw deflate segment ending in a sync flush; segments concatenate into one
  valid deflate stream, which the parent appends in row order and ends with an
  empty final block and the data descriptor.
"""
import hashlib
import os
import struct
import zlib
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .crc32 import crc32_combine
from .errors import UserError

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
    """The ``.npy`` format 1.0 header for an array of this spec: the dict, padded with spaces to a
    multiple of 64 bytes and ended by a newline. This is what ``np.save`` wrote before numpy 1.24,
    which since pads the header further so that the shape can grow in place; every numpy reads
    both. Written here rather than by ``np.lib.format`` so that an archive's bytes do not depend on
    the numpy version that wrote it."""
    shape = repr(tuple(int(n) for n in spec.shape))
    text = f"{{'descr': '{spec.descr}', 'fortran_order': False, 'shape': {shape}, }}"
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
    """One archive member as the central directory describes it."""

    spec: ArraySpec
    header_offset: int
    method: int
    streamed: bool  # CRC and sizes follow the data in a data descriptor (flag bit 3)
    crc: int = 0
    compressed_size: int = 0

    @property
    def size(self) -> int:
        return len(npy_header(self.spec)) + self.spec.nbytes

    @property
    def zip64(self) -> bool:
        # deflate can expand incompressible data a little, so leave a margin
        return self.size + self.size // 1000 + 1024 >= _ZIP64_LIMIT

    def local_header(self) -> bytes:
        name = self.spec.member_name.encode()
        if self.streamed:  # CRC and sizes are in the data descriptor
            fields, extra = (0, 0, 0), b""
        elif self.zip64:
            fields = (self.crc, _ZIP64_LIMIT, _ZIP64_LIMIT)
            extra = struct.pack("<HHQQ", 1, 16, self.size, self.compressed_size)
        else:
            fields, extra = (self.crc, self.compressed_size, self.size), b""
        return struct.pack("<IHHHHHIIIHH", 0x04034B50, self.version, self.flags, self.method, 0, _DOS_DATE,
                           *fields, len(name), len(extra)) + name + extra

    def data_descriptor(self) -> bytes:
        if self.zip64:
            return struct.pack("<IIQQ", 0x08074B50, self.crc, self.compressed_size, self.size)
        return struct.pack("<IIII", 0x08074B50, self.crc, self.compressed_size, self.size)

    @property
    def descriptor_size(self) -> int:
        return (24 if self.zip64 else 16) if self.streamed else 0

    @property
    def flags(self) -> int:
        return 0x08 if self.streamed else 0

    @property
    def version(self) -> int:
        return _VERSION_ZIP64 if self.zip64 else _VERSION_STORED

    def directory_entry(self) -> bytes:
        name = self.spec.member_name.encode()
        values = {"size": self.size, "compressed": self.compressed_size, "offset": self.header_offset}
        big = [k for k in ("size", "compressed", "offset") if values[k] >= _ZIP64_LIMIT]
        extra = b"".join([struct.pack("<HH", 1, 8 * len(big))] + [struct.pack("<Q", values[k]) for k in big]) \
            if big else b""
        field = {k: _ZIP64_LIMIT if k in big else v for k, v in values.items()}
        version = _VERSION_ZIP64 if (self.zip64 or big) else _VERSION_STORED
        return struct.pack(
            "<IHHHHHHIIIHHHHHII", 0x02014B50, _MADE_BY, version, self.flags, self.method, 0, _DOS_DATE,
            self.crc, field["compressed"], field["size"], len(name), len(extra), 0, 0, 0, _FILE_MODE, field["offset"],
        ) + name + extra


def _end_records(members: list[_Member], offset: int) -> bytes:
    """Central directory entries and end records, for a directory starting at ``offset``."""
    directory = b"".join(m.directory_entry() for m in members)
    count, end = len(members), offset + len(directory)
    tail = b""
    if offset >= _ZIP64_LIMIT or len(directory) >= _ZIP64_LIMIT:
        tail += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, _MADE_BY, _VERSION_ZIP64, 0, 0,
                            count, count, len(directory), offset)
        tail += struct.pack("<IIQI", 0x07064B50, 0, end, 1)
        offset = _ZIP64_LIMIT
    tail += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, min(len(directory), _ZIP64_LIMIT), offset, 0)
    return directory + tail


def _array_bytes(spec: ArraySpec, array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array, dtype=np.dtype(spec.descr))
    if array.shape != spec.shape:
        raise ValueError(f"{spec.key}: shape {array.shape}, expected {spec.shape}")
    return array.tobytes()


class ArchiveWriter(Protocol):
    """What a build needs of an archive writer, stored or deflated.

    The small arrays are written when the writer is made; the image arrays arrive
    in row order, either written by workers at ``rows_at`` and reported with
    ``add_chunk``, or handed over as deflate segments (``add_chunk``'s payload) or
    as raw rows (``add_rows``). ``flush`` makes what was reported durable,
    ``close`` finishes the file (then ``sha256`` is its checksum), ``abort``
    closes it unfinished.
    """

    path: str
    kept_rows: bool  # a resumed writer kept the rows of an earlier run

    @property
    def sha256(self) -> str: ...

    def rows_at(self, key: str, row: int) -> int | None:
        """The file offset where workers write row ``row`` of ``key`` themselves, or None when this
        writer takes rows only from this process (``add_chunk``'s payload, ``add_rows``)."""

    def add_chunk(self, key: str, crc: int, nbytes: int, payload: bytes | None = None) -> None: ...

    def add_rows(self, key: str, data: bytes, crc: int) -> None:
        """Append rows of ``key`` that this process holds (``crc``: their CRC-32)."""

    def flush(self) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


class _NpzWriter:
    """What both writers share: members in order, a running SHA-256 of the file as it is produced."""

    def __init__(self, path: str, specs: list[ArraySpec]):
        self.path = path
        self._specs = specs
        self._directory_offset = 0  # where the central directory starts (known once the members are)
        self._members: dict[str, _Member] = {}
        self._sha256 = hashlib.sha256()
        self._hashed = 0  # bytes of the file already fed to the hash

    @property
    def sha256(self) -> str:
        """SHA-256 of the whole file; valid after ``close``."""
        return self._sha256.hexdigest()

    def _directory(self) -> bytes:
        return _end_records([self._members[s.key] for s in self._specs], self._directory_offset)


class StoredNpzWriter(_NpzWriter):
    """An uncompressed ``.npz`` whose layout is fixed before any image is decoded.

    ``specs`` lists every array in central-directory order (the order
    ``np.load(...).files`` reports). ``arrays`` holds the contents of the small
    arrays, written at once; the other ("image") arrays are filled by workers at
    ``pixel_offset`` and reported in row order through ``add_chunk``. Image
    members carry their CRC in a data descriptor after their rows, so every byte
    before the last reported row is final: the parent reads that region back
    (from the page cache) into the SHA-256 as it goes, never a second pass.
    """

    def __init__(self, path: str, specs: list[ArraySpec], arrays: dict[str, np.ndarray], resume: bool = False,
                 hash_after_close: bool = False):
        """``resume=True`` keeps the rows already in an existing file at ``path`` (a resumed run).

        ``hash_after_close=True`` is for workers on other machines writing through a shared file
        system, whose writes this process's open descriptor may not see (NFS promises only
        close-to-open consistency): nothing is read back during the build, and ``close`` reads
        the whole file from a fresh descriptor into the SHA-256, checking every image member
        against the CRC-32 its workers reported.
        """
        super().__init__(path, specs)
        self._hash_after_close = hash_after_close
        offset = 0
        for spec in sorted(specs, key=lambda s: s.key not in arrays):  # small arrays first
            member = _Member(spec, offset, method=0, streamed=spec.key not in arrays)
            member.compressed_size = member.size
            self._members[spec.key] = member
            offset += len(member.local_header()) + member.size + member.descriptor_size
        self._directory_offset = offset
        self._rows_done = {key: 0 for key in self._members}
        # an interrupted run may have got as far as appending the directory: trimmed off below
        self.kept_rows = resume and os.path.isfile(path) and os.path.getsize(path) >= offset
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | (0 if self.kept_rows else os.O_TRUNC), 0o644)
        os.ftruncate(self._fd, offset)
        for member in self._members.values():
            header = npy_header(member.spec)
            member.crc = zlib.crc32(header)
            data = b""
            if not member.streamed:
                data = _array_bytes(member.spec, arrays[member.spec.key])
                member.crc = zlib.crc32(data, member.crc)
            os.pwrite(self._fd, member.local_header() + header + data, member.header_offset)
            if member.streamed and member.spec.nbytes == 0:
                self._finish_member(member)
        self._advance_hash()

    def _data_offset(self, member: _Member) -> int:
        return member.header_offset + len(member.local_header()) + len(npy_header(member.spec))

    def pixel_offset(self, key: str, row: int) -> int:
        """File offset where row ``row`` of image array ``key`` starts."""
        member = self._members[key]
        return self._data_offset(member) + row * member.spec.row_bytes

    def rows_at(self, key: str, row: int) -> int:
        return self.pixel_offset(key, row)

    def write_rows(self, key: str, row: int, data: bytes) -> None:
        """Write rows of ``key`` from ``row`` on, from this process (workers write their own)."""
        os.pwrite(self._fd, data, self.pixel_offset(key, row))

    def add_rows(self, key: str, data: bytes, crc: int) -> None:
        self.write_rows(key, self._rows_done[key], data)
        self.add_chunk(key, crc, len(data))

    def add_chunk(self, key: str, crc: int, nbytes: int, payload: bytes | None = None) -> None:
        """Record the next rows of ``key``, already written at their offsets (``crc``: their CRC-32)."""
        member = self._members[key]
        member.crc = crc32_combine(member.crc, crc, nbytes)
        self._rows_done[key] += nbytes // member.spec.row_bytes
        if self._rows_done[key] == member.spec.shape[0]:
            self._finish_member(member)
        self._advance_hash()

    def _finish_member(self, member: _Member) -> None:
        descriptor_at = self._data_offset(member) + member.spec.nbytes
        os.pwrite(self._fd, member.data_descriptor(), descriptor_at)

    def _final_until(self) -> int:
        """Every byte before this offset has its final value."""
        for member in sorted(self._members.values(), key=lambda m: m.header_offset):
            if member.streamed and self._rows_done[member.spec.key] < member.spec.shape[0]:
                return self._data_offset(member) + self._rows_done[member.spec.key] * member.spec.row_bytes
        return self._directory_offset

    def _advance_hash(self) -> None:
        if self._hash_after_close:
            return
        until = self._final_until()
        while self._hashed < until:
            block = os.pread(self._fd, min(until - self._hashed, 8 << 20), self._hashed)
            if not block:
                raise OSError(f"{self.path} is shorter than expected")
            self._sha256.update(block)
            self._hashed += len(block)

    def flush(self) -> None:
        """Make every row written so far durable (before recording it as done), then drop from
        the page cache what the checksum has already read back: a build recycles its own memory
        as it goes instead of filling the cache with an archive of any size."""
        hashed = self._hashed
        os.fsync(self._fd)
        if hashed and hasattr(os, "posix_fadvise"):  # (a length of 0 would mean the whole file)
            os.posix_fadvise(self._fd, 0, hashed, os.POSIX_FADV_DONTNEED)

    def close(self) -> None:
        """Write the central directory, flush to disk, close the file."""
        directory = self._directory()
        os.pwrite(self._fd, directory, self._directory_offset)
        self._sha256.update(directory)
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1
        if self._hash_after_close:
            self._hash_closed_file()

    def _hash_closed_file(self) -> None:
        """The SHA-256 of the file as a fresh descriptor reads it; a ``UserError`` if an image
        member's bytes differ from the CRC-32s its workers reported."""
        self._sha256 = hashlib.sha256()
        regions = {key: (self._data_offset(m) - len(npy_header(m.spec)), self._data_offset(m) + m.spec.nbytes)
                   for key, m in self._members.items() if m.streamed}
        crcs = dict.fromkeys(regions, 0)
        offset = 0
        with open(self.path, "rb") as f:
            while block := f.read(8 << 20):
                self._sha256.update(block)
                view = memoryview(block)
                for key, (start, end) in regions.items():
                    if start < offset + len(block) and offset < end:
                        crcs[key] = zlib.crc32(view[max(start - offset, 0):end - offset], crcs[key])
                offset += len(block)
        differing = [f"{key}.npy" for key in regions if crcs[key] != self._members[key].crc]
        if differing:
            raise UserError(f"{self.path}: {', '.join(differing)} reads back other bytes than the workers wrote; the "
                            "shared file system must show each host what the others wrote and closed (close-to-open "
                            "consistency, as NFS gives); check it and run again")

    def abort(self) -> None:
        """Close without finishing (the caller removes the file)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class DeflatedNpzWriter(_NpzWriter):
    """A deflate-compressed ``.npz`` written strictly front to back.

    The image arrays arrive as deflate segments through ``add_chunk`` (or as raw
    rows through ``add_rows``), one array after another in the order of
    ``specs``; each ends with a data descriptor.
    """

    kept_rows = True  # finished rows live in the work folder's segments, not in this file

    def __init__(self, path: str, specs: list[ArraySpec], arrays: dict[str, np.ndarray], resume: bool = False,
                 hash_after_close: bool = False):
        """Always starts afresh: a resumed run replays the deflate segments it kept. This process
        writes every byte itself, so the file is always hashed as it is written."""
        super().__init__(path, specs)
        self._file = open(path, "wb")
        self._current: _Member | None = None
        for spec in specs:
            if spec.key in arrays:
                raw = npy_header(spec) + _array_bytes(spec, arrays[spec.key])
                member = _Member(spec, self._file.tell(), method=8, streamed=False)
                member.crc, segment = zlib.crc32(raw), deflate_segment(raw, final=True)
                member.compressed_size = len(segment)
                self._members[spec.key] = member
                self._write(member.local_header() + segment)
        self._pending = [s for s in specs if s.key not in arrays]

    def _write(self, data: bytes) -> None:
        self._file.write(data)
        self._sha256.update(data)

    def flush(self) -> None:
        """Nothing to do: a resumed run rewrites this file from the kept segments."""

    def _append(self, segment: bytes, crc: int, nbytes: int) -> None:
        current = self._open_member()
        self._write(segment)
        current.compressed_size += len(segment)
        current.crc = crc32_combine(current.crc, crc, nbytes)

    def _open_member(self) -> _Member:
        if self._current is None:
            raise ValueError(f"{self.path}: no array is being written")
        return self._current

    def _begin_next(self) -> None:
        spec = self._pending.pop(0)
        self._current = _Member(spec, self._file.tell(), method=8, streamed=True)
        self._members[spec.key] = self._current
        self._write(self._current.local_header())
        header = npy_header(spec)
        self._append(deflate_segment(header), zlib.crc32(header), len(header))

    def _finish_current(self) -> None:
        current = self._open_member()
        self._write(_FINAL_EMPTY_BLOCK)
        current.compressed_size += len(_FINAL_EMPTY_BLOCK)
        self._write(current.data_descriptor())
        self._current = None

    def rows_at(self, key: str, row: int) -> None:
        return None  # workers send their rows deflated

    def add_rows(self, key: str, data: bytes, crc: int) -> None:
        self.add_chunk(key, crc, len(data), deflate_segment(data))

    def add_chunk(self, key: str, crc: int, nbytes: int, payload: bytes | None = None) -> None:
        """Append a deflate segment of the next rows of ``key``; ``crc`` is of the uncompressed rows."""
        while self._current is None or self._current.spec.key != key:
            if self._current is not None:
                self._finish_current()
            if not self._pending:
                raise ValueError(f"rows of {key} arrived after its array was closed")
            self._begin_next()
        if payload is None:
            raise ValueError(f"rows of {key} for a compressed archive come as deflate segments")
        self._append(payload, crc, nbytes)

    def close(self) -> None:
        while self._current is not None or self._pending:  # finish the last array, and any with no rows
            if self._current is None:
                self._begin_next()
            self._finish_current()
        self._directory_offset = self._file.tell()
        self._write(self._directory())
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def abort(self) -> None:
        self._file.close()
