"""Read members of the archives ImageNet is downloaded as, by offset, without extracting them.

A ``Member`` says where one file's bytes are inside an archive; ``Member.read()``
gets them with ``os.pread`` on the archive, so any process (a worker, a Dask
worker on another machine) reads just that file, and nothing is ever copied
out. The scanners list an archive's members in archive order; ``index.py``
keeps their lists so an archive is scanned once.

tar (POSIX.1-1988 ustar with the GNU and pax extensions; ILSVRC's archives)
    A sequence of 512-byte headers, each followed by its member's bytes padded
    with zeros to a multiple of 512, ended by two zero blocks. In a header:
    ``name`` bytes 0-99, ``size`` 124-135 (octal text, or base-256 when the
    first byte has its top bit set), ``chksum`` 148-155 (octal: the sum of the
    header's bytes with this field taken as spaces), ``typeflag`` 156 (``0`` or
    NUL: a file, ``5``: a folder, ``L``: the next member's long GNU name is the
    data, ``x``: pax records ``"<len> <key>=<value>\\n"`` for the next member,
    where ``path`` and ``size`` override the header's), ``magic`` 257-262
    (``ustar``) and ``prefix`` 345-499 (prepended to the name with ``/``). A
    member's bytes are contiguous, so (offset of its data, size) locates it.
    ``ILSVRC2012_img_train.tar`` holds one uncompressed ``<wnid>.tar`` per
    class, each holding ``<wnid>_<n>.JPEG``; a class tar is scanned as a window
    of the outer file. ``ILSVRC2012_img_val.tar`` holds
    ``ILSVRC2012_val_XXXXXXXX.JPEG`` flat.

zip (PKWARE APPNOTE 6.3, with zip64; Kaggle's ``imagenet-object-localization-challenge.zip``)
    The end of central directory record (``PK\\5\\6``, 22 bytes and a comment of
    at most 65,535) ends the file; it gives the central directory's size and
    offset, or (0xFFFFFFFF) defers to the zip64 end record that a locator
    (``PK\\6\\7``, 20 bytes, just before it) points to. The central directory
    has one entry per member (``PK\\1\\2``, 46 bytes, then name, extra field and
    comment): compression method (0 stored, 8 deflated), CRC-32, compressed and
    uncompressed size and the offset of the member's local header (those equal
    to 0xFFFFFFFF are in the zip64 extra field, id 1, in that order). The data
    starts after the local header (``PK\\3\\4``, 30 bytes, then a name and an
    extra field whose lengths may differ from the central entry's), so a
    ``Member`` of a zip keeps the local header's offset and the reader skips it.

gzip-compressed tar (the devkits, a few MB)
    Read as a stream with ``tarfile`` for the few label files they hold.

Any damage (a truncated file, a header that fails its checksum, a member that
runs past the end, a broken central directory, bad gzip) is a ``UserError``
naming the archive, and the member where there is one. Reading an image member
that turns out to be damaged is an ``ImageError``, which ``--on_error skip``
skips as it skips an unreadable file.
"""
import contextlib
import io
import os
import posixpath
import struct
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from .errors import ImageError, UserError

STORED, DEFLATED = 0, 8
BLOCK = 512
TAR_FILE_TYPES = (b"0", b"\0", b"7")


@dataclass(frozen=True, slots=True)  # slots: a build of the whole train set lists 1.28 million
class Member:
    """One file inside an archive: ``path`` (as the archive names it; a member of a class tar
    inside the train tar is ``<wnid>.tar/<file>``), and where its bytes are. For a tar member,
    ``offset`` is its first data byte and ``size`` its length; for a zip member, ``offset`` is
    its local header, ``size`` the stored (maybe deflated) length, ``file_size`` and ``crc32``
    those of the file itself."""

    archive: str
    path: str
    offset: int
    size: int
    method: int = STORED
    crc32: int | None = None
    file_size: int | None = None

    @property
    def name(self) -> str:
        """What errors and notes call the member: ``<archive>:<path>``."""
        return f"{self.archive}:{self.path}"

    def read(self) -> bytes:
        """The member's bytes (inflated and CRC-checked for a zip member); ``UserError`` if damaged."""
        try:
            with open(self.archive, "rb", buffering=0) as f:
                return self._read(f.fileno())
        except OSError as exc:
            raise UserError(f"cannot read {self.name}: {exc.strerror}") from None

    def open(self) -> io.BytesIO:
        """The member as a binary file for ``Image.open``; ``ImageError`` if it cannot be read."""
        try:
            return _MemberBytes(self.read(), posixpath.basename(self.path))
        except UserError as exc:
            raise ImageError(self.name, str(exc).removeprefix(f"{self.name}: ")) from None

    def _read(self, fd: int) -> bytes:
        offset = self.offset
        if self.crc32 is not None:  # a zip member: skip its local header
            header = os.pread(fd, 30, offset)
            if len(header) < 30 or header[:4] != b"PK\x03\x04":
                raise UserError(f"{self.name}: no local header at byte {offset}; the zip is damaged, download it again")
            name_length, extra_length = struct.unpack_from("<HH", header, 26)
            offset += 30 + name_length + extra_length
        data = _pread_exactly(fd, self.size, offset)
        if len(data) < self.size:
            raise UserError(f"{self.name}: ends after {len(data)} of its {self.size} bytes; "
                            "the archive is truncated, download it again")
        if self.method == DEFLATED:
            try:
                data = zlib.decompress(data, -15)
            except zlib.error as exc:
                raise UserError(f"{self.name}: bad deflate data ({exc}); the zip is damaged, download it again") \
                    from None
        elif self.method != STORED:
            raise UserError(f"{self.name}: zip compression method {self.method} is not supported (only stored "
                            "and deflated); recompress the zip or extract it")
        if self.crc32 is not None and zlib.crc32(data) != self.crc32:
            raise UserError(f"{self.name}: CRC-32 mismatch; the zip is damaged, download it again")
        return data


class _MemberBytes(io.BytesIO):
    """A member's bytes, shown as its file name: Pillow's "cannot identify image file %r" then
    reads as it does for the extracted file (not with a memory address)."""

    def __init__(self, data: bytes, file_name: str):
        super().__init__(data)
        self.file_name = file_name

    def __repr__(self) -> str:
        return repr(self.file_name)


def _pread_exactly(fd: int, size: int, offset: int) -> bytes:
    parts, got = [], 0
    while got < size:
        part = os.pread(fd, min(size - got, 64 << 20), offset + got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def archive_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None


@contextlib.contextmanager
def _opened(archive: str) -> Iterator[int]:
    """A read-only descriptor of ``archive``; a ``UserError`` naming it if it cannot be opened."""
    try:
        f = open(archive, "rb", buffering=0)
    except OSError as exc:
        raise UserError(f"cannot read {archive}: {exc.strerror}") from None
    with f:
        yield f.fileno()


def _past_the_end(shown: str, name: str, archive_kind: str = "archive", ends: tuple[int, int] | None = None) \
        -> UserError:
    detail = f" ({ends[0]} > {ends[1]} bytes)" if ends else ""
    return UserError(f"{shown}: member {name} runs past the end of the {archive_kind}{detail}; it is truncated, "
                     "download it again")


# --- tar -------------------------------------------------------------------------------------------

def _tar_number(field: bytes, where: str) -> int:
    if field[:1] and field[0] & 0x80:  # base-256, for sizes of 8 GiB and more
        return int.from_bytes(field, "big") & ~(0x80 << (8 * (len(field) - 1)))
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise UserError(f"{where}: damaged tar header (number {text[:12]!r}); download the archive again") from None


def _tar_text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _pax_records(data: bytes, where: str) -> dict[str, str]:
    records, position = {}, 0
    while position < len(data) and data[position:position + 1] != b"\0":
        length_text, _, _ = data[position:position + 20].partition(b" ")
        if not length_text.isdigit() or int(length_text) <= 0:
            raise UserError(f"{where}: damaged pax header; download the archive again")
        record = data[position:position + int(length_text)]
        key, _, value = record[len(length_text) + 1:].rstrip(b"\n").partition(b"=")
        records[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
        position += int(length_text)
    return records


def _member_name(raw: str) -> str:
    """A member's path as extraction would place it: ``././a//b`` is ``a/b``, ``/a`` is ``a``."""
    return posixpath.normpath(raw).lstrip("/")


def scan_tar(archive: str, start: int = 0, length: int | None = None, label: str = "") -> Iterator[Member]:
    """The files of the tar in bytes ``start .. start+length`` of ``archive`` (the whole file by
    default), in archive order; ``label`` (``n01440764.tar/``) is prefixed to their paths. Only
    headers are read: the data of every member is seeked over. A hard link is a file with its
    target's bytes, as extraction makes it; folders, symbolic links and devices are left out."""
    end = start + (archive_size(archive) - start if length is None else length)
    shown = f"{archive}:{label.rstrip('/')}" if label else archive
    seen: dict[str, Member] = {}  # by name, for hard links
    with _opened(archive) as fd:
        position = start
        long_name: str | None = None
        long_link: str | None = None
        pax: dict[str, str] = {}
        while True:
            header = os.pread(fd, BLOCK, position) if position + BLOCK <= end else b""
            if len(header) < BLOCK:
                raise UserError(f"{shown} ends at byte {end - start} without tar's end-of-archive blocks; it is "
                                "truncated, download it again")
            if header == bytes(BLOCK):
                return
            where = f"{shown} (header at byte {position - start})"
            checksum = _tar_number(header[148:156], where)
            if checksum != sum(header[:148]) + 8 * 32 + sum(header[156:]):
                raise UserError(f"{where}: damaged tar header (checksum mismatch); download the archive again")
            kind = header[156:157]
            name = _tar_text(header[:100])
            if header[257:263] == b"ustar\0" and header[345:346] != b"\0":  # POSIX ustar: a name prefix
                name = _tar_text(header[345:500]) + "/" + name
            name = _member_name(pax.get("path") or long_name or name)
            size = int(pax["size"]) if "size" in pax and kind not in (b"L", b"K", b"x") else \
                _tar_number(header[124:136], where)
            data = position + BLOCK
            if data + size > end:
                raise _past_the_end(shown, name, ends=(data + size - start, end - start))
            if kind in (b"L", b"K", b"x"):
                content = _pread_exactly(fd, size, data)
                if kind == b"L":
                    long_name = _tar_text(content)
                elif kind == b"K":
                    long_link = _tar_text(content)
                else:
                    pax = _pax_records(content, where)
            else:
                if kind in TAR_FILE_TYPES and name != ".":
                    seen[name] = Member(archive, label + name, data, size)
                    yield seen[name]
                elif kind == b"1":  # a hard link to an earlier member
                    target = seen.get(_member_name(pax.get("linkpath") or long_link or _tar_text(header[157:257])))
                    if target is not None:
                        seen[name] = Member(archive, label + name, target.offset, target.size)
                        yield seen[name]
                long_name, long_link, pax = None, None, {}  # (global pax records, type g, say nothing of members)
            position = data + (size + BLOCK - 1) // BLOCK * BLOCK


def first_tar_member(archive: str) -> str | None:
    """The path of the first file in a tar (None for a tar without files or a file that is not a tar)."""
    try:
        first = next(iter(scan_tar(archive)), None)
    except UserError:
        return None
    return first.path if first else None


# --- zip -------------------------------------------------------------------------------------------

_CENTRAL = struct.Struct("<4s6H3I5H2I")  # 46 bytes
_END = struct.Struct("<4s4H2IH")  # 22 bytes
_END64 = struct.Struct("<4sQ2H2I4Q")  # 56 bytes
_LOCATOR64 = struct.Struct("<4sIQI")  # 20 bytes


def _zip_directory(archive: str, fd: int, size: int) -> tuple[int, int]:
    """(offset, size) of the zip's central directory. The end record is the last ``PK\\5\\6``
    whose comment length reaches exactly to the end of the file (a comment may hold the
    signature too)."""
    tail_start = max(0, size - _END.size - 65535)
    tail = os.pread(fd, size - tail_start, tail_start)
    at = tail.rfind(b"PK\x05\x06")
    while at >= 0 and (at + _END.size > len(tail) or at + _END.size + _END.unpack_from(tail, at)[-1] != len(tail)):
        at = tail.rfind(b"PK\x05\x06", 0, at)
    if at < 0:
        raise UserError(f"{archive}: no zip end-of-central-directory record; it is not a zip or it is truncated, "
                        "download it again")
    *_, directory_size, directory_offset, _ = _END.unpack_from(tail, at)
    if directory_size == 0xFFFFFFFF or directory_offset == 0xFFFFFFFF or _END.unpack_from(tail, at)[4] == 0xFFFF:
        locator = tail[at - _LOCATOR64.size:at] if at >= _LOCATOR64.size else b""
        if len(locator) < _LOCATOR64.size or locator[:4] != b"PK\x06\x07":
            raise UserError(f"{archive}: its zip64 end record is missing; the zip is damaged, download it again")
        end64 = os.pread(fd, _END64.size, _LOCATOR64.unpack(locator)[2])
        if len(end64) < _END64.size or end64[:4] != b"PK\x06\x06":
            raise UserError(f"{archive}: broken zip64 end record; the zip is damaged, download it again")
        *_, directory_size, directory_offset = _END64.unpack(end64)
    if directory_offset + directory_size > tail_start + at:
        raise UserError(f"{archive}: its central directory runs past the end; the zip is truncated, download it again")
    return directory_offset, directory_size


def _zip64_values(extra: bytes, wanted: list[str], archive: str, name: str) -> dict[str, int]:
    position = 0
    while position + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, position)
        if tag == 1:
            values = {}
            for i, field in enumerate(wanted):
                if position + 4 + 8 * (i + 1) > len(extra):
                    break
                values[field] = struct.unpack_from("<Q", extra, position + 4 + 8 * i)[0]
            if len(values) == len(wanted):
                return values
            break
        position += 4 + length
    raise UserError(f"{archive}: member {name} lacks its zip64 sizes; the zip is damaged, download it again")


def scan_zip(archive: str) -> Iterator[Member]:
    """The files of a zip in central-directory order (folders left out). The central directory is
    read in blocks of 8 MiB until its size is used up (not trusting the entry count, which some
    writers wrap at 65,536), so memory stays small for a zip of millions of members."""
    with _opened(archive) as fd:
        size = os.fstat(fd).st_size
        start, directory_size = _zip_directory(archive, fd, size)
        end, read_to = start + directory_size, start
        buffer, at, number = b"", 0, 0

        def have(count: int) -> bool:  # at least ``count`` bytes from ``at`` are in the buffer
            nonlocal buffer, at, read_to
            while len(buffer) - at < count and read_to < end:
                block = os.pread(fd, min(8 << 20, end - read_to), read_to)
                if not block:
                    break
                buffer, at, read_to = buffer[at:] + block, 0, read_to + len(block)
            return len(buffer) - at >= count

        while read_to < end or at < len(buffer):
            number += 1
            if not have(_CENTRAL.size) or buffer[at:at + 4] != b"PK\x01\x02":
                raise UserError(f"{archive}: broken central directory at entry {number}; the zip is damaged, "
                                "download it again")
            (_, _, _, flags, method, _, _, crc, stored, file_size, name_length, extra_length, comment_length, _, _, _,
             local) = _CENTRAL.unpack_from(buffer, at)
            entry_size = _CENTRAL.size + name_length + extra_length + comment_length
            if not have(entry_size):
                raise UserError(f"{archive}: broken central directory at entry {number}; the zip is damaged, "
                                "download it again")
            name_at = at + _CENTRAL.size
            name = buffer[name_at:name_at + name_length].decode("utf-8" if flags & 0x800 else "cp437",
                                                                 "surrogateescape")
            wanted = [f for f, v in (("file_size", file_size), ("stored", stored), ("local", local))
                      if v == 0xFFFFFFFF]
            if wanted:
                extra = buffer[name_at + name_length:name_at + name_length + extra_length]
                values = _zip64_values(extra, wanted, archive, name)
                file_size, stored, local = (values.get("file_size", file_size), values.get("stored", stored),
                                            values.get("local", local))
            at += entry_size
            if name.endswith("/"):
                continue
            if flags & 1:
                raise UserError(f"{archive}: member {name} is encrypted; extract the zip with its password")
            if local + stored > size:
                raise _past_the_end(archive, name, "zip")
            yield Member(archive, _member_name(name), local, stored, method, crc, file_size)


# --- gzip-compressed tar (devkits) -------------------------------------------------------------

def read_from_compressed_tar(archive: str, wanted: tuple[str, ...]) -> dict[str, bytes]:
    """The members of a (gzip-compressed) tar whose paths end with one of ``wanted`` (paths
    relative to some folder: ``data/ILSVRC2012_validation_ground_truth.txt``), read in one
    streaming pass: {ending: bytes}, the first member for each ending."""
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r|*") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                path = "/" + info.name.removeprefix("./")
                ending = next((w for w in wanted if path.endswith("/" + w) and w not in found), None)
                if ending is not None:
                    extracted = tar.extractfile(info)
                    found[ending] = extracted.read() if extracted else b""
                    if len(found) == len(wanted):
                        break
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise UserError(f"cannot read {archive}: {reason} (a damaged or truncated download?); download it again "
                        "or extract it") from None
    return found
