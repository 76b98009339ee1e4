"""Readers for the label files that ImageNet downloads carry, and the tables the package ships.
Each states its format.

A label file is a ``Path``, or a file inside an archive (``sources.LabelFile``),
which offers the same ``name``, ``str()`` and ``read_bytes()``. All readers raise
``UserError`` naming the file and line of anything malformed. Val images are
identified by their number: ``ILSVRC2012_val_00000042`` is 42.

The package ships two ILSVRC tables in ``packer/data/`` (facts about the 1,000
CLS-LOC classes, the same in ILSVRC 2012-2017; see its README for where they
come from), so that no devkit is needed to name the classes or label val:

- ``ilsvrc2012_classes.csv``: header ``clsloc_id,wnid,human_label,names,num_train_images``,
  then the 1,000 classes in CLS-LOC id order (1-1000: the ids of ``map_clsloc.txt``,
  ``meta.mat`` and both devkits' val ground truth), e.g.
  ``1,n02119789,kit_fox,"kit fox, Vulpes macrotis",1300``;
- ``ilsvrc2012_val_labels.txt``: 50,000 lines, line i the CLS-LOC id of val image i.
"""
import csv
import functools
import io
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Protocol

from .errors import UserError

WNID_RE = re.compile(r"n\d{8}")
VAL_NAME_RE = re.compile(r"ILSVRC2012_val_(\d{8})(?:\.[A-Za-z]+)?")


def val_image_number(name: str) -> int | None:
    """42 for ``ILSVRC2012_val_00000042.JPEG`` (or without extension); None for other names."""
    match = VAL_NAME_RE.fullmatch(name)
    return int(match.group(1)) if match else None


class LabelSource(Protocol):
    """What the readers use of a label file: a ``Path`` or a file inside an archive."""

    @property
    def name(self) -> str: ...

    def read_bytes(self) -> bytes: ...


def _lines(path: LabelSource):
    try:
        if isinstance(path, Path):
            with open(path, encoding="utf-8") as f:
                yield from enumerate(f, start=1)
        else:
            yield from enumerate(io.StringIO(path.read_bytes().decode("utf-8"), newline=None), start=1)
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a text file; replace it with the file from the ImageNet download") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None


def _bad_line(path: LabelSource, number: int, expected: str) -> UserError:
    return UserError(f"{path}:{number}: expected {expected}; fix or remove the file")


def train_list_from_train_cls(path: LabelSource, wnids: set[str]):
    """Rows of ``ImageSets/CLS-LOC/train_cls.txt`` whose class is in ``wnids``, streamed.

    Format: one line per train image, sorted by path, ``<wnid>/<stem> <id>`` with
    the 1-based line number as id, e.g. ``n01440764/n01440764_10026 1``.
    Yields ``(wnid, stem, id)`` in file order.
    """
    for number, line in _lines(path):
        wnid, slash, rest = line.partition("/")
        if wnid not in wnids:
            if not slash and line.strip():
                raise _bad_line(path, number, "'<wnid>/<image> <id>'")
            continue
        parts = rest.split()
        if len(parts) != 2 or not parts[1].isdigit():
            raise _bad_line(path, number, "'<wnid>/<image> <id>'")
        yield wnid, parts[0], int(parts[1])


def names_from_synset_mapping(path: LabelSource) -> dict[str, str]:
    """WNID -> human label from ``LOC_synset_mapping.txt``.

    Format: 1000 lines ``<wnid> <names>``, e.g. ``n01440764 tench, Tinca tinca``,
    sorted by WNID (so line order is the 0-999 index that pretrained models output).
    """
    names = {}
    for number, line in _lines(path):
        wnid, _, name = line.strip().partition(" ")
        if not line.strip():
            continue
        if not WNID_RE.fullmatch(wnid):
            raise _bad_line(path, number, "'<wnid> <names>'")
        names[wnid] = name.strip()
    return names


def classes_from_map_clsloc(path: LabelSource) -> dict[str, tuple[int, str]]:
    """WNID -> (CLS-LOC id, name) from the devkit's ``map_clsloc.txt``.

    Format: 1000 lines ``<wnid> <id> <name>``, e.g. ``n02119789 1 kit_fox``; ids 1-1000
    are the labels used by the devkit's validation ground-truth files.
    """
    classes = {}
    for number, line in _lines(path):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 3 or not WNID_RE.fullmatch(parts[0]) or not parts[1].isdigit():
            raise _bad_line(path, number, "'<wnid> <id> <name>'")
        classes[parts[0]] = (int(parts[1]), " ".join(parts[2:]))
    return classes


def val_labels_from_solution_csv(path: LabelSource) -> dict[int, str]:
    """Val image number -> WNID from Kaggle's ``LOC_val_solution.csv``.

    Format: header ``ImageId,PredictionString``, then rows such as
    ``ILSVRC2012_val_00008726,n02119789 255 142 454 329 n02119789 44 21 322 295``:
    the first token of the string is the image's class (the rest are boxes).
    """
    labels = {}
    for number, line in _lines(path):
        if number == 1 and line.startswith("ImageId"):
            continue
        image, _, prediction = line.strip().partition(",")
        if not image:
            continue
        image_number = val_image_number(image)
        tokens = prediction.split()
        if image_number is None or not tokens or not WNID_RE.fullmatch(tokens[0]):
            raise _bad_line(path, number, "'ILSVRC2012_val_XXXXXXXX,<wnid> ...'")
        labels[image_number] = tokens[0]
    return labels


def val_labels_from_ground_truth(path: LabelSource, wnid_of_id: dict[int, str]) -> dict[int, str]:
    """Val image number -> WNID from a devkit ground-truth file.

    Format (``ILSVRC2015_clsloc_validation_ground_truth.txt`` or the 2012
    ``ILSVRC2012_validation_ground_truth.txt``): one CLS-LOC id (1-1000, as in
    ``map_clsloc.txt`` and the built-in class table) per line; line i is the
    label of val image i.
    """
    labels = {}
    for number, line in _lines(path):
        text = line.strip()
        if not text:
            continue
        if not text.isdigit() or int(text) not in wnid_of_id:
            raise _bad_line(path, number, "a CLS-LOC class id from 1 to 1000")
        labels[number] = wnid_of_id[int(text)]
    return labels


_OBJECT_NAME_RE = re.compile(rb"<object>\s*<name>\s*(n\d{8})\s*</name>")


def val_labels_from_annotations(folder, numbers: list[int]) -> dict[int, str]:
    """Val image number -> WNID from ``Annotations/CLS-LOC/val/ILSVRC2012_val_XXXXXXXX.xml``.

    Format: PASCAL VOC XML, one file per image; the ``<name>`` of its first
    ``<object>`` is the image's class. Only the files of ``numbers`` are read;
    a missing file leaves that number out.
    """
    labels = {}
    for image_number in numbers:
        path = folder / f"ILSVRC2012_val_{image_number:08d}.xml"
        try:
            match = _OBJECT_NAME_RE.search(path.read_bytes())
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise UserError(f"cannot read {path}: {exc.strerror}") from None
        if match is None:
            raise UserError(f"{path}: no <object><name>WNID</name> found; fix or remove the file")
        labels[image_number] = match.group(1).decode()
    return labels


@dataclass(frozen=True)
class BuiltinClass:
    """One of the 1,000 ILSVRC CLS-LOC classes, as the packaged table has it."""

    clsloc_id: int
    human_label: str
    names: str
    train_images: int


@functools.cache
def builtin_classes() -> dict[str, BuiltinClass]:
    """WNID -> ``BuiltinClass`` of the 1,000 classes, in CLS-LOC id order (``ilsvrc2012_classes.csv``)."""
    text = resources.files("packer.data").joinpath("ilsvrc2012_classes.csv").read_text(encoding="utf-8")
    return {row["wnid"]: BuiltinClass(int(row["clsloc_id"]), row["human_label"], row["names"],
                                      int(row["num_train_images"]))
            for row in csv.DictReader(io.StringIO(text))}


BUILTIN_VAL_LABELS = "built-in ILSVRC2012 validation labels"


@functools.cache
def builtin_wnid_of_id() -> dict[int, str]:
    """CLS-LOC id (1-1000) -> WNID, from the built-in class table."""
    return {info.clsloc_id: wnid for wnid, info in builtin_classes().items()}


@functools.cache
def builtin_val_labels() -> dict[int, str]:
    """Val image number (1-50,000) -> WNID: ``ilsvrc2012_val_labels.txt``, a ground-truth file read
    with the built-in class table."""
    return val_labels_from_ground_truth(resources.files("packer.data").joinpath("ilsvrc2012_val_labels.txt"),
                                        builtin_wnid_of_id())
