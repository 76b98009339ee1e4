"""Where a tree's images and label files are: folders on disk, or the archives ImageNet comes in.

``find_image_sources`` gives the train and val images of ``--data_dir`` as two
``ImageFolder``s, each either a ``DiskFolder`` (an extracted ``train/`` or
``val/``) or an ``ArchiveFolder`` (a folder inside an archive), in any mix, and
the places inside archives where label files may be (``LabelPlace``). The
archives are recognised by their standard names in ``--data_dir``, or given as
``--data_dir`` itself (recognised by what they hold; the other split is then
looked for beside it):

    ILSVRC2012_img_train.tar     a tar of 1,000 uncompressed ``<wnid>.tar``, each
                                 holding ``<wnid>_<n>.JPEG``          -> train
    ILSVRC2012_img_val.tar       ``ILSVRC2012_val_XXXXXXXX.JPEG`` flat   -> val
    imagenet-object-localization-challenge.zip
                                 Kaggle's tree (``ILSVRC/Data/CLS-LOC/{train,val}``,
                                 ``LOC_*.csv``, ``ILSVRC/ImageSets``, ...) -> both,
                                 and its label files
    ILSVRC2012_devkit_t12.tar.gz, ILSVRC2015_devkit.tar.gz
                                 devkits, looked for where label files are
                                 (``DEVKIT_ARCHIVES``), for their label files

An ``ImageFolder`` answers what ``tree.py`` asks of a split: its class folders
(sorted WNIDs), the file names in the split or one of its class folders, and
for a path relative to the split (``n01440764/n01440764_10026.JPEG``,
``ILSVRC2012_val_00000001.JPEG``) the image a worker reads: an ``ImageFile``
or an ``archives.Member``. The relative paths are the same whatever the form,
so manifests and recipes do not depend on it. Member lists come from
``index.ArchiveIndex``; the class tars of the train tar are scanned only when
one of their classes is asked for.
"""
import functools
import os
import posixpath
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .archives import Member, first_tar_member, read_from_compressed_tar, scan_tar, scan_zip
from .errors import UserError
from .index import ArchiveIndex
from .labelfiles import WNID_RE
from .options import shown
from .work import ImageFile

TRAIN_TAR, VAL_TAR = "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"
KAGGLE_ZIP = "imagenet-object-localization-challenge.zip"
DEVKIT_ARCHIVES = ("ILSVRC2012_devkit_t12.tar.gz", "ILSVRC2015_devkit.tar.gz")
COMPRESSED_DOWNLOADS = ("ILSVRC2017_CLS-LOC.tar.gz", "ILSVRC2016_CLS-LOC.tar.gz")  # no reading by offset
_TRAIN_CLASS_FOLDER = re.compile(r"(?:(.*)/)?train/n\d{8}")
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


def is_image_name(name: str) -> bool:
    """Whether a file name is an image's (any case of ``.jpeg``, ``.jpg``, ``.png``)."""
    return name.lower().endswith(IMAGE_SUFFIXES)


class ImageFolder(Protocol):
    """One split's images (see the module docstring)."""

    def __str__(self) -> str: ...

    def class_folders(self) -> list[str]: ...

    def file_names(self, folder: str = "") -> list[str]: ...

    def image(self, relative: str) -> ImageFile | Member: ...

    def has(self, relative: str) -> bool: ...


@dataclass(frozen=True)
class DiskFolder:
    """An extracted split: ``path`` is ``train/`` or ``val/``."""

    path: Path

    def __str__(self) -> str:
        return str(self.path)

    def _entries(self, folder: Path) -> list[os.DirEntry]:
        try:
            with os.scandir(folder) as entries:
                return list(entries)
        except OSError as exc:
            raise UserError(f"cannot list {folder}: {exc.strerror}") from None

    def class_folders(self) -> list[str]:
        return sorted(e.name for e in self._entries(self.path) if WNID_RE.fullmatch(e.name) and e.is_dir())

    def file_names(self, folder: str = "") -> list[str]:
        return [e.name for e in self._entries(self.path / folder) if not e.is_dir()]

    def image(self, relative: str) -> ImageFile:
        return ImageFile(os.path.join(self.path, relative))

    def has(self, relative: str) -> bool:
        return os.path.isfile(self.path / relative)


class LabelPlace(Protocol):
    """A folder searched for label files (``tree.LABEL_FILE_PLACES``): on disk, inside an archive,
    or a devkit archive. ``label_file`` and ``folder`` give what ``labelfiles`` reads."""

    def is_file(self, relative: str) -> bool: ...

    def is_dir(self, relative: str) -> bool: ...

    def label_file(self, relative: str) -> "Path | LabelFile": ...

    def folder(self, relative: str) -> "Path | ArchiveFolder": ...


@dataclass(frozen=True)
class DiskPlace:
    """A folder on disk, as a ``LabelPlace``."""

    path: Path

    def is_file(self, relative: str) -> bool:
        return (self.path / relative).is_file()

    def is_dir(self, relative: str) -> bool:
        return (self.path / relative).is_dir()

    def label_file(self, relative: str) -> Path:
        return self.path / relative

    def folder(self, relative: str) -> Path:
        return self.path / relative


@dataclass(frozen=True)
class LabelFile:
    """A label file inside an archive, read as ``labelfiles`` reads a ``Path``: ``name`` is its
    file name, ``str()`` says where it is, ``read_bytes()`` gives its bytes."""

    archive: str
    path: str
    member: Member | None = None
    data: bytes | None = None

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    def __str__(self) -> str:
        return f"{self.archive}:{self.path}"

    def read_bytes(self) -> bytes:
        if self.data is not None:
            return self.data
        if self.member is None:
            raise FileNotFoundError(str(self))
        return self.member.read()


class ArchiveFolder:
    """A folder inside an archive (``inside``: its path there, "" for the top) whose files are the
    members the index groups under that path; ``scan`` lists the whole archive by folder, for the
    index. With ``class_tars`` (the train tar), the folder's ``<wnid>.tar`` members are its class
    folders, each scanned when first asked for."""

    def __init__(self, index: ArchiveIndex, inside: str, scan: Callable[[], Iterator[tuple[str, Member]]],
                 class_tars: bool = False):
        self.index, self.inside, self.scan, self.class_tars = index, inside, scan, class_tars
        self.groups = index.groups(scan)
        self._listed: dict[str, dict[str, Member]] = {}

    def __str__(self) -> str:
        return f"{self.index.archive}:{self.inside}" if self.inside else self.index.archive

    @property
    def name(self) -> str:
        """The folder's own name, as ``Path.name`` gives it (the archive's name for its top)."""
        return posixpath.basename(self.inside) if self.inside else os.path.basename(self.index.archive)

    def _path(self, folder: str) -> str:
        return posixpath.join(self.inside, folder) if folder else self.inside

    def _members(self, folder: str) -> dict[str, Member]:
        """File name -> member of ``folder`` (relative to this one)."""
        if folder not in self._listed:
            if self.class_tars and folder:
                tar = self._members("").get(folder + ".tar")
                members = [] if tar is None else self.index.members(
                    folder, lambda: scan_tar(tar.archive, tar.offset, tar.size, tar.path + "/"))
            else:
                path = self._path(folder)
                members = self.index.group(path, self.scan) if path in self.groups else []
            self._listed[folder] = {posixpath.basename(m.path): m for m in members}
        return self._listed[folder]

    def class_folders(self) -> list[str]:
        if self.class_tars:
            names = (name.removesuffix(".tar") for name in self._members("") if name.endswith(".tar"))
        else:
            names = (posixpath.basename(g) for g in self.groups if posixpath.dirname(g) == self.inside)
        return sorted(name for name in names if WNID_RE.fullmatch(name))

    def file_names(self, folder: str = "") -> list[str]:
        return list(self._members(folder))

    def image(self, relative: str) -> Member:
        folder, name = posixpath.split(relative)
        return self._members(folder)[name]

    def has(self, relative: str) -> bool:
        folder, name = posixpath.split(relative)
        return name in self._members(folder)

    # A folder of an archive is also a ``LabelPlace``
    def is_file(self, relative: str) -> bool:
        return self.has(relative)

    def is_dir(self, relative: str) -> bool:
        path = self._path(relative)
        return any(g == path or g.startswith(path + "/") for g in self.groups)

    def label_file(self, relative: str) -> LabelFile:
        member = self.image(relative)
        return LabelFile(member.archive, member.path, member)

    def folder(self, relative: str) -> "ArchiveFolder":
        return ArchiveFolder(self.index, self._path(relative), self.scan)

    def __truediv__(self, relative: str) -> LabelFile:
        """What ``Path / name`` gives for a file: one whose ``read_bytes`` raises ``FileNotFoundError``
        when it is not there, as a ``Path``'s does (how ``labelfiles`` reads annotation files)."""
        folder, name = posixpath.split(relative)
        member = self._members(folder).get(name)
        return LabelFile(self.index.archive, self._path(relative), member)


@dataclass(frozen=True)
class DevkitArchive:
    """The label files of a devkit archive (read at once: a few MB), as a folder to search."""

    archive: str
    files: dict[str, bytes]  # path relative to the devkit's data folder's parent, e.g. "data/map_clsloc.txt"

    def is_file(self, relative: str) -> bool:
        return relative in self.files

    def is_dir(self, relative: str) -> bool:
        return False

    def label_file(self, relative: str) -> LabelFile:
        return LabelFile(self.archive, relative, data=self.files[relative])

    def folder(self, relative: str) -> Path:
        raise NotImplementedError("a devkit archive is searched for files only")

    def __str__(self) -> str:
        return self.archive


def devkit_archive(archive: Path, places: tuple[str, ...]) -> DevkitArchive:
    """The files of ``places`` (``data/map_clsloc.txt``, ...) in a devkit archive, keyed by place."""
    found = read_from_compressed_tar(str(archive), places)
    return DevkitArchive(str(archive), found)


@dataclass(frozen=True)
class ImageSources:
    """What ``--data_dir`` holds: each split's images, and the folders inside archives where label
    files are to be looked for, nearest first."""

    train: ImageFolder
    val: ImageFolder
    label_places: tuple[ArchiveFolder, ...]


def _kind_of_archive(path: Path) -> str | None:
    """"zip", "train" (a tar of tars), "val" (a tar of images), or None for anything else."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    if magic == b"PK\x03\x04" or path.suffix.lower() == ".zip":
        return "zip"
    first = first_tar_member(str(path))
    if first is None:
        return None
    return "train" if first.endswith(".tar") else "val"


def _zip_groups(archive: str) -> Iterator[tuple[str, Member]]:
    """Members of a zip by folder, leaving out the two big folders no build reads (Kaggle's
    train annotations and test images)."""
    for member in scan_zip(archive):
        if "Annotations/CLS-LOC/train/" in member.path or "Data/CLS-LOC/test/" in member.path:
            continue
        yield posixpath.dirname(member.path), member


def _tar_groups(archive: str) -> Iterator[tuple[str, Member]]:
    for member in scan_tar(archive):
        yield posixpath.dirname(member.path), member


def _zip_folders(path: Path, index_dir) -> tuple[ArchiveFolder, ArchiveFolder, tuple[ArchiveFolder, ...]]:
    """The train and val folders of a zip holding an ImageNet tree, and its label places."""
    index = ArchiveIndex(str(path), index_dir)
    scan = functools.partial(_zip_groups, str(path))
    roots = sorted({m.group(1) or "" for g in index.groups(scan) if (m := _TRAIN_CLASS_FOLDER.fullmatch(g))},
                   key=len)
    if not roots:
        raise UserError(f"{path} holds no train/<wnid>/ folders; pass the zip of the ImageNet download "
                        f"({KAGGLE_ZIP})")
    root = roots[0]
    places, folder = [], root
    for _ in range(4):
        places.append(ArchiveFolder(index, folder, scan))
        if not folder:
            break
        folder = posixpath.dirname(folder)
    return (ArchiveFolder(index, posixpath.join(root, "train"), scan),
            ArchiveFolder(index, posixpath.join(root, "val"), scan), tuple(places))


def _standard_archives(folder: Path) -> dict[str, Path]:
    named = {"train": folder / TRAIN_TAR, "val": folder / VAL_TAR, "zip": folder / KAGGLE_ZIP}
    return {kind: path for kind, path in named.items() if path.is_file()}


def _tar_folder(archive: Path, index_dir, class_tars: bool) -> ArchiveFolder:
    return ArchiveFolder(ArchiveIndex(str(archive), index_dir), "", functools.partial(_tar_groups, str(archive)),
                         class_tars)


def find_image_sources(data_dir: Path, index_dir: str | os.PathLike | None) -> ImageSources:
    """The train and val images of ``data_dir`` (a folder, or one archive); see the module docstring.
    In a folder, each split is an extracted folder if there is one, else its tar, else the zip."""
    given: dict[str, Path] = {}
    folder = data_dir
    if data_dir.is_file():
        kind = _kind_of_archive(data_dir)
        if kind is None:
            raise UserError(f"--data_dir {data_dir} is a file but not an ImageNet archive (a tar of class tars, "
                            f"a tar of val images, or {KAGGLE_ZIP}); pass the folder holding train/ and val/ "
                            "or the archives")
        given, folder = {kind: data_dir}, data_dir.parent
    archives = _standard_archives(folder) | given
    splits: dict[str, ImageFolder] = {}
    places: tuple[ArchiveFolder, ...] = ()
    if "zip" in given:
        splits["train"], splits["val"], places = _zip_folders(data_dir, index_dir)
    for split in ("train", "val"):
        if split in splits:
            continue
        if split not in given and (folder / split).is_dir():
            splits[split] = DiskFolder(folder / split)
        elif split in archives:
            splits[split] = _tar_folder(archives[split], index_dir, class_tars=split == "train")
    if len(splits) < 2 and "zip" in archives:
        zip_train, zip_val, places = _zip_folders(archives["zip"], index_dir)
        splits.setdefault("train", zip_train)
        splits.setdefault("val", zip_val)
    for split, archive in (("train", TRAIN_TAR), ("val", VAL_TAR)):
        if split not in splits:
            compressed = [name for name in COMPRESSED_DOWNLOADS if (folder / name).is_file()]
            hint = (f"; {compressed[0]} is gzip-compressed and cannot be read by offset: extract it, or use "
                    f"the uncompressed {TRAIN_TAR} and {VAL_TAR}") if compressed else ""
            raise UserError(f"--data_dir {data_dir} has no {split}/ folder, {archive} or {KAGGLE_ZIP}{hint}; pass "
                            "the folder holding train/ and val/ (e.g. ILSVRC/Data/CLS-LOC) or the archives")
    for split, images in splits.items():
        if isinstance(images, ArchiveFolder):
            _check_holds_images(images, split)
    return ImageSources(splits["train"], splits["val"], places)


def _check_holds_images(images: ArchiveFolder, split: str) -> None:
    """A one-line error for an archive that holds no images of ``split`` where ImageNet's has them
    (an extracted folder may be empty; an archive laid out otherwise would pack nothing)."""
    if images.class_folders() or any(is_image_name(name) for name in images.file_names()):
        return
    expected = {"train": "<wnid>.tar class tars at its top" if images.class_tars else "train/<wnid>/ folders",
                "val": "ILSVRC2012_val_XXXXXXXX.JPEG files at its top" if not images.inside else "val images"}[split]
    folders = sorted(group + "/" for group in images.groups
                     if group and (not images.inside or group.startswith(images.inside + "/")))
    found = f"; its files are in {shown(folders)}" if folders else ""
    raise UserError(f"{images} holds no {split} images ({expected}){found}; pass the archive as ImageNet "
                    "distributes it, or extract it")
