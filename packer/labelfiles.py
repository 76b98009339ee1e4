"""Readers for the label files that ImageNet downloads carry. Each states its format.

All readers raise ``UserError`` naming the file and line of anything malformed.
Val images are identified by their number: ``ILSVRC2012_val_00000042`` is 42.
"""
import re
from pathlib import Path

from .errors import UserError

WNID_RE = re.compile(r"n\d{8}")
VAL_NAME_RE = re.compile(r"ILSVRC2012_val_(\d{8})(?:\.[A-Za-z]+)?")


def val_image_number(name: str) -> int | None:
    """42 for ``ILSVRC2012_val_00000042.JPEG`` (or without extension); None for other names."""
    match = VAL_NAME_RE.fullmatch(name)
    return int(match.group(1)) if match else None


def _lines(path: Path):
    try:
        with open(path, encoding="utf-8") as f:
            yield from enumerate(f, start=1)
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a text file; replace it with the file from the ImageNet download") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None


def _bad_line(path: Path, number: int, expected: str) -> UserError:
    return UserError(f"{path}:{number}: expected {expected}; fix or remove the file")


def train_list_from_train_cls(path: Path, wnids: set[str]):
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


def names_from_synset_mapping(path: Path) -> dict[str, str]:
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


def classes_from_map_clsloc(path: Path) -> dict[str, tuple[int, str]]:
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


def val_labels_from_solution_csv(path: Path) -> dict[int, str]:
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


def val_labels_from_ground_truth(path: Path, wnid_of_id: dict[int, str]) -> dict[int, str]:
    """Val image number -> WNID from a devkit ground-truth file.

    Format (``ILSVRC2015_clsloc_validation_ground_truth.txt`` or the 2012
    ``ILSVRC2012_validation_ground_truth.txt``): one CLS-LOC id (1-1000, as in
    ``map_clsloc.txt``) per line; line i is the label of val image i.
    """
    labels = {}
    for number, line in _lines(path):
        text = line.strip()
        if not text:
            continue
        if not text.isdigit() or int(text) not in wnid_of_id:
            raise _bad_line(path, number, "a class id listed in map_clsloc.txt")
        labels[number] = wnid_of_id[int(text)]
    return labels


_OBJECT_NAME_RE = re.compile(rb"<object>\s*<name>\s*(n\d{8})\s*</name>")


def val_labels_from_annotations(folder: Path, numbers: list[int]) -> dict[int, str]:
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
