"""Builders of the archives ImageNet is downloaded as, written from the files of a small tree.

Each builder takes the images (and label files) of an extracted tree and writes
the same bytes in one of the download forms ``--data_dir`` may hold:

- ``write_train_tar``: ``ILSVRC2012_img_train.tar``, a tar of one uncompressed
  ``<wnid>.tar`` per class, each holding ``<wnid>_<n>.JPEG`` in a shuffled (not
  sorted) order, as the real class tars are; a class given as ``bytes`` is put
  in verbatim (a damaged class tar);
- ``write_val_tar``: ``ILSVRC2012_img_val.tar``, the val images flat;
- ``write_devkit``: ``ILSVRC2012_devkit_t12.tar.gz`` with the ground truth at
  ``ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt`` among a
  few other members;
- ``write_kaggle_zip``: Kaggle's ``imagenet-object-localization-challenge.zip``,
  every file of a Kaggle-layout tree with its folder entries, some members
  stored and some deflated (``zipfile``, optionally ``force_zip64``);
- ``write_zip64``: a zip written by hand whose central directory defers every
  size and offset to zip64 extra fields and whose end record defers to the
  zip64 end record (what a zip of more than 4 GiB or 65,535 members holds).

Tars are written with ``tarfile`` in the format asked (ustar, GNU or pax; with
``pax_names`` every member's name is a pax ``path`` record and its header names
a placeholder). ``patch_tar_header`` rewrites one field of a header with a
correct or a broken checksum, for damaged archives.
"""
import gzip
import io
import os
import random
import struct
import tarfile
import time
import zipfile
import zlib
from pathlib import Path

from packer.labelfiles import builtin_classes

TRAIN_TAR, VAL_TAR = "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"
DEVKIT = "ILSVRC2012_devkit_t12.tar.gz"
GROUND_TRUTH = "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt"
KAGGLE_ZIP = "imagenet-object-localization-challenge.zip"
MTIME = 1_300_000_000  # a fixed member time, so archives written twice are byte-identical


# --------------------------------------------------------------------------- reading a tree

def train_files(train_dir: Path) -> dict[str, list[tuple[str, bytes]]]:
    """{wnid: [(file name, bytes)]} of an extracted ``train/``, classes and files sorted."""
    return {folder.name: [(f.name, f.read_bytes()) for f in sorted(folder.iterdir())]
            for folder in sorted(train_dir.iterdir()) if folder.is_dir()}


def val_files(val_dir: Path) -> dict[str, bytes]:
    """{file name: bytes} of a flat extracted ``val/``, sorted."""
    return {f.name: f.read_bytes() for f in sorted(val_dir.iterdir()) if f.is_file()}


# --------------------------------------------------------------------------- tars

def _info(name: str, size: int, pax_names: bool) -> tarfile.TarInfo:
    info = tarfile.TarInfo("placeholder" if pax_names else name)
    info.size, info.mtime, info.mode = size, MTIME, 0o644
    info.uname = info.gname = "imagenet"
    if pax_names:
        info.pax_headers = {"path": name}
    return info


def tar_bytes(files: list[tuple[str, bytes]], *, format=tarfile.GNU_FORMAT, pax_names: bool = False,
              folder: str | None = None) -> bytes:
    """An uncompressed tar of ``files`` (name, bytes) in the order given; ``folder``: a folder
    entry first (as ``tar cf`` writes for ``.``)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=format) as tar:
        if folder is not None:
            info = tarfile.TarInfo(folder)
            info.type, info.mtime, info.mode = tarfile.DIRTYPE, MTIME, 0o755
            tar.addfile(info)
        for name, data in files:
            tar.addfile(_info(name, len(data), pax_names), io.BytesIO(data))
    return out.getvalue()


def shuffled(files: list[tuple[str, bytes]], seed: int) -> list[tuple[str, bytes]]:
    """``files`` in a seeded random order (the real class tars are not sorted by name)."""
    files = list(files)
    random.Random(seed).shuffle(files)
    return files


def write_train_tar(path: Path, classes: dict[str, list[tuple[str, bytes]] | bytes], *,
                    format=tarfile.GNU_FORMAT, pax_names: bool = False, seed: int = 0) -> Path:
    """``ILSVRC2012_img_train.tar`` at ``path``: a ``<wnid>.tar`` per class, in WNID order, each
    holding the class's files shuffled; a class whose value is ``bytes`` gets them as its tar."""
    members = []
    for k, (wnid, files) in enumerate(sorted(classes.items())):
        data = files if isinstance(files, bytes) else tar_bytes(shuffled(files, seed + k), format=format,
                                                                pax_names=pax_names)
        members.append((f"{wnid}.tar", data))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tar_bytes(members, format=format, pax_names=pax_names))
    return path


def write_val_tar(path: Path, files: dict[str, bytes], *, format=tarfile.GNU_FORMAT, pax_names: bool = False,
                  seed: int = 1) -> Path:
    """``ILSVRC2012_img_val.tar`` at ``path``: the val images flat, shuffled."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tar_bytes(shuffled(list(files.items()), seed), format=format, pax_names=pax_names))
    return path


def tar_members(data: bytes) -> dict[str, tuple[int, int, int]]:
    """{name: (header offset, data offset, size)} of a tar's members, read with ``tarfile``."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return {m.name: (m.offset, m.offset_data, m.size) for m in tar.getmembers()}


def class_tar_members(path: Path, wnid: str) -> dict[str, tuple[int, int, int]]:
    """{name: (header offset, data offset, size)} of the members of ``<wnid>.tar`` inside the train
    tar at ``path``, as offsets in the train tar."""
    data = path.read_bytes()
    _, start, size = tar_members(data)[f"{wnid}.tar"]
    return {name: (header + start, offset + start, length)
            for name, (header, offset, length) in tar_members(data[start:start + size]).items()}


def tar_checksum(header: bytes) -> int:
    return sum(header[:148]) + 8 * 32 + sum(header[156:512])


def patch_tar_header(path: Path, header_offset: int, field: slice, value: bytes, *, fix_checksum: bool = True) -> None:
    """Write ``value`` into ``field`` of the 512-byte tar header at ``header_offset`` of ``path``,
    then (``fix_checksum``) store the header's correct checksum, so only the field is wrong."""
    data = bytearray(path.read_bytes())
    header = data[header_offset:header_offset + 512]
    assert len(value) == field.stop - field.start
    header[field] = value
    if fix_checksum:
        header[148:156] = b"%06o\0 " % tar_checksum(bytes(header))
    data[header_offset:header_offset + 512] = header
    path.write_bytes(bytes(data))


SIZE_FIELD, CHECKSUM_FIELD, NAME_FIELD = slice(124, 136), slice(148, 156), slice(0, 100)


# --------------------------------------------------------------------------- devkit

def ground_truth_text(labels: dict[int, str], filler: int = 1) -> str:
    """The devkit's ground truth: line i is the CLS-LOC id (built-in table) of val image i, for
    i = 1 .. the highest number in ``labels``; numbers not in ``labels`` get ``filler``."""
    ids = {wnid: info.clsloc_id for wnid, info in builtin_classes().items()}
    return "".join(f"{ids[labels[n]] if n in labels else filler}\n" for n in range(1, max(labels) + 1))


def devkit_bytes(ground_truth: str) -> bytes:
    """A gzip-compressed 2012 devkit tar: a few members before and after the ground truth (the
    member before it is incompressible, so a cut in the middle of the file comes before it)."""
    top = "ILSVRC2012_devkit_t12"
    files = [(f"{top}/COPYING", b"ImageNet devkit terms\n" * 40),
             (f"{top}/data/meta.mat", random.Random(7).randbytes(16384)),
             (GROUND_TRUTH, ground_truth.encode()),
             (f"{top}/evaluation/eval.m", b"% evaluation\n" * 100)]
    return gzip.compress(tar_bytes(files, folder=f"{top}/"), mtime=0)


def write_devkit(path: Path, labels: dict[int, str], filler: int = 1) -> Path:
    """``ILSVRC2012_devkit_t12.tar.gz`` at ``path`` whose ground truth labels the val images ``labels``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(devkit_bytes(ground_truth_text(labels, filler)))
    return path


def write_devkit_2015(path: Path, classes: dict[str, tuple[int, str]], labels: dict[int, str]) -> Path:
    """``ILSVRC2015_devkit.tar.gz`` at ``path``: ``ILSVRC2015/devkit/data/map_clsloc.txt`` of
    ``classes`` ({wnid: (id, name)}) and the ground truth of ``labels`` in those ids (image
    numbers not in ``labels`` get the first class's id)."""
    ids = {wnid: cls_id for wnid, (cls_id, _) in classes.items()}
    filler = min(ids.values())
    data = "ILSVRC2015/devkit/data/"
    files = [(data + "map_clsloc.txt", "".join(f"{w} {i} {name}\n" for w, (i, name) in classes.items()).encode()),
             (data + "ILSVRC2015_clsloc_validation_ground_truth.txt",
              "".join(f"{ids[labels[n]] if n in labels else filler}\n" for n in range(1, max(labels) + 1)).encode())]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(tar_bytes(files), mtime=0))
    return path


# --------------------------------------------------------------------------- zips

def _deflated(name: str, number: int) -> bool:
    """Text files and every other image are deflated; the rest stored."""
    return not name.endswith(".JPEG") or number % 2 == 1


def write_kaggle_zip(path: Path, root: Path, *, force_zip64: bool = False, deflate=_deflated,
                     replace: dict[str, bytes] | None = None, leave_out: tuple[str, ...] = ()) -> Path:
    """Kaggle's zip at ``path``: every folder and file below ``root`` (a Kaggle-layout tree), with
    names relative to ``root``, in sorted order; ``deflate(name, number)`` says which are deflated;
    ``replace`` gives other bytes for some names, ``leave_out`` names files not to put in.
    ``force_zip64``: every member's local header has a zip64 extra field (the central directory
    does not, so the two extra fields differ in length)."""
    replace = replace or {}
    entries = sorted(root.rglob("*"), key=lambda p: p.relative_to(root).as_posix())
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for number, entry in enumerate(entries):
            name = entry.relative_to(root).as_posix()
            if name in leave_out:
                continue
            if entry.is_dir():
                zf.writestr(zipfile.ZipInfo(name + "/", date_time=(2017, 1, 1, 0, 0, 0)), b"")
                continue
            info = zipfile.ZipInfo(name, date_time=(2017, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED if deflate(name, number) else zipfile.ZIP_STORED
            with zf.open(info, "w", force_zip64=force_zip64) as f:
                f.write(replace[name] if name in replace else entry.read_bytes())
    return path


def zip_local_offsets(path: Path) -> dict[str, tuple[int, int, int]]:
    """{name: (local header offset, data offset, stored size)} of a zip's members (``zipfile``)."""
    data = path.read_bytes()
    result = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            name_length, extra_length = struct.unpack_from("<HH", data, info.header_offset + 26)
            result[info.filename] = (info.header_offset, info.header_offset + 30 + name_length + extra_length,
                                     info.compress_size)
    return result


def central_directory_offset(path: Path) -> int:
    data = path.read_bytes()
    return struct.unpack_from("<I", data, data.rfind(b"PK\x05\x06") + 16)[0]


def write_zip64(path: Path, files: list[tuple[str, bytes]], *, comment: bytes = b"made by hand") -> Path:
    """A zip of ``files`` (stored, or deflated when that is smaller) whose central directory gives
    every size and offset as 0xFFFFFFFF with the values in a zip64 extra field (id 1), whose end
    record defers to a zip64 end record and locator, and which ends with a ``comment``."""
    out = bytearray()
    central = bytearray()
    dos_time, dos_date = 0, (2017 - 1980) << 9 | 1 << 5 | 1
    for name, data in files:
        packed = zlib.compress(data, 9)[2:-4]
        method, stored = (8, packed) if len(packed) < len(data) else (0, data)
        crc = zlib.crc32(data)
        raw_name = name.encode()
        offset = len(out)
        local_extra = struct.pack("<HHQQ", 1, 16, len(data), len(stored))
        out += struct.pack("<4s5H3I2H", b"PK\x03\x04", 45, 0x800, method, dos_time, dos_date, crc,
                           0xFFFFFFFF, 0xFFFFFFFF, len(raw_name), len(local_extra)) + raw_name + local_extra + stored
        extra = struct.pack("<HHQQQ", 1, 24, len(data), len(stored), offset)
        central += struct.pack("<4s6H3I5H2I", b"PK\x01\x02", 45, 45, 0x800, method, dos_time, dos_date, crc,
                               0xFFFFFFFF, 0xFFFFFFFF, len(raw_name), len(extra), 0, 0, 0, 0, 0xFFFFFFFF)
        central += raw_name + extra
    directory_offset = len(out)
    out += central
    end64_offset = len(out)
    out += struct.pack("<4sQ2H2I4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, len(files), len(files), len(central),
                       directory_offset)
    out += struct.pack("<4sIQI", b"PK\x06\x07", 0, end64_offset, 1)
    out += struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, len(comment))
    out += comment
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(out))
    return path


def set_mtime(path: Path, seconds: float | None = None) -> None:
    """Give ``path`` a modification time ``seconds`` (default: an hour ago, so it surely differs)."""
    seconds = time.time() - 3600 if seconds is None else seconds
    os.utime(path, (seconds, seconds))
