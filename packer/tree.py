"""Find the images and labels of a local ILSVRC CLS-LOC tree.

``data_dir`` is the folder holding ``train/`` and ``val/``. Three layouts are
recognised with no flags (any mix of their label files works):

1. Kaggle / ILSVRC2017 CLS-LOC download::

       <top>/LOC_synset_mapping.txt
       <top>/LOC_val_solution.csv
       <top>/ILSVRC/Data/CLS-LOC/{train,val}/            <- data_dir
       <top>/ILSVRC/ImageSets/CLS-LOC/{train_cls.txt,val.txt}
       <top>/ILSVRC/Annotations/CLS-LOC/val/ILSVRC2012_val_XXXXXXXX.xml

2. A devkit (``--devkit_dir``, or found beside the data): ``map_clsloc.txt`` and
   ``ILSVRC2015_clsloc_validation_ground_truth.txt`` (or the 2012
   ``ILSVRC2012_validation_ground_truth.txt``), directly in a searched folder or
   in one of its ``DEVKIT_FOLDERS``: ``data/``, ``devkit/``, ``devkit/data/``,
   and where the devkit archives extract, ``ILSVRC2012_devkit_t12/data/`` and
   ``ILSVRC2015/devkit/data/``. A devkit in ``<top>/devkit/`` beside
   ``<top>/ILSVRC/`` is found this way.
3. A val folder already sorted into ``val/<wnid>/*.JPEG`` (``valprep.sh``).

Label files are looked for in ``--devkit_dir``, then in ``data_dir`` and its
three nearest ancestors, then in ``./aux_files`` (where the original script kept
them); the first found of each kind wins.

Train images are ``train/<wnid>/<stem>.JPEG`` (any case of ``.jpeg``/``.jpg``/``.png``).
Their rows follow ``train_cls.txt`` (ids are its line numbers); without it, the
sorted listing of the whole train tree gives the same order and ids. Val rows
are in image-number order and ``val_id`` is that number. Val labels come from
the first source present: ``val/<wnid>/`` folders, ``LOC_val_solution.csv``, the
devkit ground truth with ``map_clsloc.txt``, the Annotations XML files.

Only the class folders of the subset are listed when ``train_cls.txt`` exists;
no image file is ever opened or stat'ed here.
"""
import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import labelfiles
from .errors import UserError
from .labelfiles import WNID_RE, val_image_number
from .options import shown

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")

# Where devkit files may sit below each searched folder, first match first.
DEVKIT_FOLDERS = ("", "data/", "devkit/", "devkit/data/", "ILSVRC2012_devkit_t12/data/", "ILSVRC2015/devkit/data/")

LABEL_FILE_PLACES = {
    "train_cls": ("ImageSets/CLS-LOC/train_cls.txt", "train_cls.txt"),
    "synset_mapping": ("LOC_synset_mapping.txt",),
    "val_solution": ("LOC_val_solution.csv",),
    "val_annotations": ("Annotations/CLS-LOC/val",),
    "map_clsloc": tuple(folder + "map_clsloc.txt" for folder in DEVKIT_FOLDERS),
    "val_ground_truth": tuple(
        folder + name
        for name in ("ILSVRC2015_clsloc_validation_ground_truth.txt", "ILSVRC2012_validation_ground_truth.txt")
        for folder in DEVKIT_FOLDERS
    ),
}


@dataclass(frozen=True)
class Tree:
    """Where a tree's images are and which label files were found (None: not found)."""

    data_dir: Path
    train_dir: Path
    val_dir: Path
    searched: tuple[Path, ...]
    train_cls: Path | None = None
    synset_mapping: Path | None = None
    val_solution: Path | None = None
    val_annotations: Path | None = None
    map_clsloc: Path | None = None
    val_ground_truth: Path | None = None

    def looked_in(self) -> str:
        """The searched folders, comma-separated, for messages."""
        return ", ".join(str(folder) for folder in self.searched)


@dataclass(frozen=True)
class SplitImages:
    """The images of one split in row order: ``root/paths[i]`` has class ``wnids[i]`` and id ``ids[i]``.

    ``label_source`` names what gave the order and classes (a file name, or a
    description such as ``val/<wnid>/ folders``); ``labels`` (int32, per image)
    is set once a subset has been chosen.
    """

    split: str
    root: Path
    paths: list[str]
    wnids: list[str]
    ids: np.ndarray
    label_source: str
    labels: np.ndarray | None = None
    notes: tuple[str, ...] = field(default=())

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def labelled(self) -> np.ndarray:
        """``labels``, once a subset has been chosen (``subset.label_images``)."""
        if self.labels is None:
            raise ValueError(f"the {self.split} images have no labels yet")
        return self.labels

    def take(self, rows: np.ndarray, split: str | None = None) -> "SplitImages":
        """The images at positions ``rows`` (in that order), optionally as another split."""
        rows = np.asarray(rows, dtype=np.int64)
        return SplitImages(split or self.split, self.root, [self.paths[i] for i in rows],
                           [self.wnids[i] for i in rows], self.ids[rows], self.label_source,
                           None if self.labels is None else self.labels[rows], self.notes)


@dataclass(frozen=True)
class ClassInfo:
    """What the tree's label files say of one class; None where they say nothing."""

    human_label: str | None
    original_label: int | None
    imagenet_index: int | None


def _search_folders(data_dir: Path, devkit_dir: Path | None) -> tuple[Path, ...]:
    folders = [devkit_dir] if devkit_dir else []
    folders += [data_dir, *list(data_dir.parents)[:3], Path("aux_files").resolve()]
    unique = []
    for folder in folders:
        if folder not in unique:
            unique.append(folder)
    return tuple(unique)


def _check_folder(flag: str, folder: Path, what_to_pass: str) -> None:
    """A one-line error unless ``folder`` is a folder: it may be missing, or a file."""
    if not folder.is_dir():
        problem = "is a file, not a folder" if folder.exists() else "does not exist"
        raise UserError(f"{flag} {folder} {problem}; pass {what_to_pass}")


def find_tree(data_dir: str | os.PathLike, devkit_dir: str | os.PathLike | None = None) -> Tree:
    """Check ``data_dir`` holds ``train/`` and ``val/`` and locate the label files."""
    data_dir = Path(data_dir).resolve()
    data_dir_hint = "the folder holding train/ and val/ (e.g. ILSVRC/Data/CLS-LOC)"
    _check_folder("--data_dir", data_dir, data_dir_hint)
    for split in ("train", "val"):
        if not (data_dir / split).is_dir():
            raise UserError(f"--data_dir {data_dir} has no {split}/ folder; pass {data_dir_hint}")
    if devkit_dir is not None:
        devkit_dir = Path(devkit_dir).resolve()
        _check_folder("--devkit_dir", devkit_dir, "the devkit folder holding map_clsloc.txt")
    searched = _search_folders(data_dir, devkit_dir)
    found = {}
    for kind, places in LABEL_FILE_PLACES.items():
        want_dir = kind == "val_annotations"
        found[kind] = next(
            (folder / place for folder in searched for place in places
             if ((folder / place).is_dir() if want_dir else (folder / place).is_file())),
            None,
        )
    return Tree(data_dir, data_dir / "train", data_dir / "val", searched, **found)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def _list_dir(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except OSError as exc:
        raise UserError(f"cannot list {folder}: {exc.strerror}") from None


def train_classes(tree: Tree) -> list[str]:
    """Sorted names of the class folders in ``train/`` (no image is touched)."""
    return sorted(e.name for e in _list_dir(tree.train_dir) if WNID_RE.fullmatch(e.name) and e.is_dir())


def _images_by_stem(folder: Path) -> dict[str, str]:
    return {os.path.splitext(e.name)[0]: e.name for e in _list_dir(folder) if _is_image(e.name)}


def list_train_images(tree: Tree, wnids: list[str]) -> SplitImages:
    """The train images of ``wnids`` in ``train_cls.txt`` order (or sorted-tree order)."""
    wanted = set(wnids)
    if tree.train_cls is not None:
        return _train_from_train_cls(tree, wanted)
    paths, classes, ids = [], [], []
    next_id = 1
    for wnid in train_classes(tree):
        stems = _images_by_stem(tree.train_dir / wnid)
        if wnid in wanted:
            for n, stem in enumerate(sorted(stems)):
                paths.append(f"{wnid}/{stems[stem]}")
                classes.append(wnid)
                ids.append(next_id + n)
        next_id += len(stems)
    return SplitImages("train", tree.train_dir, paths, classes, np.array(ids, dtype=np.int32),
                       "sorted listing of train/")


def _train_from_train_cls(tree: Tree, wanted: set[str]) -> SplitImages:
    train_cls = tree.train_cls
    assert train_cls is not None
    paths, classes, ids, missing = [], [], [], []
    unlisted: dict[str, dict[str, str]] = {}  # class -> its files not (yet) matched by a line
    rows = labelfiles.train_list_from_train_cls(train_cls, wanted)
    for wnid, class_rows in itertools.groupby(rows, key=lambda row: row[0]):
        on_disk = unlisted.pop(wnid) if wnid in unlisted else _images_by_stem(tree.train_dir / wnid)
        for _, stem, image_id in class_rows:
            name = on_disk.pop(stem, None)
            if name is None:
                missing.append(f"train/{wnid}/{stem}.JPEG")
                continue
            paths.append(f"{wnid}/{name}")
            classes.append(wnid)
            ids.append(image_id)
        unlisted[wnid] = on_disk  # empty for a complete class, so a sorted file keeps one folder at a time
    if missing:
        raise UserError(f"{len(missing)} train images listed in {tree.train_cls} are missing from {tree.data_dir}: "
                        f"{shown(missing)}; restore them or remove train_cls.txt to use the images present")
    for wnid in wanted - set(unlisted):  # classes with no line at all
        unlisted[wnid] = _images_by_stem(tree.train_dir / wnid)
    left_out = sum(len(files) for files in unlisted.values())
    notes = (f"{left_out} train images not listed in {tree.train_cls} were left out",) if left_out else ()
    return SplitImages("train", tree.train_dir, paths, classes, np.array(ids, dtype=np.int32),
                       train_cls.name, notes=notes)


def _val_is_sorted(tree: Tree) -> bool:
    return any(WNID_RE.fullmatch(e.name) and e.is_dir() for e in _list_dir(tree.val_dir))


def _val_number(tree: Tree, relative: str) -> int:
    number = val_image_number(os.path.basename(relative))
    if number is None:
        raise UserError(f"cannot read the image number of {tree.val_dir / relative}; "
                        "val images are named ILSVRC2012_val_XXXXXXXX.JPEG: rename or remove it")
    return number


def list_val_images(tree: Tree, wnids: list[str]) -> SplitImages:
    """The val images of ``wnids`` in image-number order, labelled by the best source present."""
    wanted = set(wnids)
    if _val_is_sorted(tree):
        entries = [
            (_val_number(tree, f"{wnid}/{e.name}"), wnid, f"{wnid}/{e.name}")
            for wnid in sorted(wanted) if (tree.val_dir / wnid).is_dir()
            for e in _list_dir(tree.val_dir / wnid) if _is_image(e.name)
        ]
        source = "val/<wnid>/ folders"
    else:
        files = {}
        for e in _list_dir(tree.val_dir):
            if _is_image(e.name):
                files[_val_number(tree, e.name)] = e.name
        labels, source = _flat_val_labels(tree, sorted(files))
        unlabelled = [files[n] for n in sorted(files) if n not in labels]
        if unlabelled:
            raise UserError(f"{len(unlabelled)} val images in {tree.val_dir} have no label in {source}: "
                            f"{shown(unlabelled)}; use the label file that came with these images")
        entries = [(n, labels[n], name) for n, name in files.items() if labels[n] in wanted]
    entries.sort()
    return SplitImages("val", tree.val_dir, [e[2] for e in entries], [e[1] for e in entries],
                       np.array([e[0] for e in entries], dtype=np.int32), source)


def _flat_val_labels(tree: Tree, numbers: list[int]) -> tuple[dict[int, str], str]:
    if tree.val_solution:
        return labelfiles.val_labels_from_solution_csv(tree.val_solution), tree.val_solution.name
    if tree.val_ground_truth and tree.map_clsloc:
        wnid_of_id = {cls_id: wnid for wnid, (cls_id, _) in labelfiles.classes_from_map_clsloc(tree.map_clsloc).items()}
        return (labelfiles.val_labels_from_ground_truth(tree.val_ground_truth, wnid_of_id),
                f"{tree.val_ground_truth.name} with {tree.map_clsloc.name}")
    if tree.val_annotations:
        return labelfiles.val_labels_from_annotations(tree.val_annotations, numbers), "Annotations/CLS-LOC/val"
    hint = " (found it, but map_clsloc.txt is needed to read it)" if tree.val_ground_truth else ""
    raise UserError(
        f"no val labels found for {tree.val_dir}: looked for val/<wnid>/ folders, LOC_val_solution.csv, "
        f"ILSVRC2015_clsloc_validation_ground_truth.txt{hint}, Annotations/CLS-LOC/val/ in "
        f"{tree.looked_in()}; pass --devkit_dir or sort val/ into class folders")


def class_table(tree: Tree) -> dict[str, ClassInfo]:
    """Human label, CLS-LOC id and 0-999 model index of every class the label files know.

    The index is the position in the sorted list of the 1000 classes, from the
    mapping file, ``map_clsloc.txt``, or a complete ``train/`` (1000 folders).
    """
    names = labelfiles.names_from_synset_mapping(tree.synset_mapping) if tree.synset_mapping else {}
    clsloc = labelfiles.classes_from_map_clsloc(tree.map_clsloc) if tree.map_clsloc else {}
    all_classes = next((sorted(c) for c in (names, clsloc) if len(c) == 1000), None)
    if all_classes is None:
        folders = train_classes(tree)
        all_classes = folders if len(folders) == 1000 else []
    index = {wnid: i for i, wnid in enumerate(all_classes)}
    return {
        wnid: ClassInfo(names.get(wnid) or clsloc.get(wnid, (None, None))[1],
                        clsloc.get(wnid, (None, None))[0], index.get(wnid))
        for wnid in set(names) | set(clsloc) | set(index)
    }


def human_labels(classes: dict[str, ClassInfo]) -> dict[str, str]:
    """WNID -> human label, in WNID order, of the classes of ``class_table`` that have one."""
    return {wnid: info.human_label for wnid, info in sorted(classes.items()) if info.human_label}


def class_table_gaps(tree: Tree, classes: dict[str, ClassInfo], wnids: list[str]) -> list[str]:
    """Notes on the ``ClassInfo`` fields that ``class_table`` left None for some of ``wnids``:
    one for every field whose file was not found (naming the files and the folders searched),
    and one per field whose file was found but does not list some of the classes."""
    mapping_files = " and ".join(str(p) for p in (tree.synset_mapping, tree.map_clsloc) if p)
    has_index = any(info.imagenet_index is not None for info in classes.values())
    columns = (  # (field, the file that fills it, why it is empty when that file was found)
        ("human_label", "LOC_synset_mapping.txt or map_clsloc.txt", mapping_files and f"not named in {mapping_files}"),
        ("original_label", "map_clsloc.txt", tree.map_clsloc and f"not listed in {tree.map_clsloc}"),
        ("imagenet_index", "a 1000-class LOC_synset_mapping.txt or map_clsloc.txt, or a complete train/",
         has_index and "not among the 1000 ImageNet classes"),
    )
    unknown = ClassInfo(None, None, None)
    missing_files, notes = [], []
    for column, filled_by, lacking in columns:
        empty = [wnid for wnid in wnids if getattr(classes.get(wnid, unknown), column) is None]
        if empty and lacking:
            notes.append(f"{column} is empty for {shown(empty)}: {lacking}")
        elif empty:
            missing_files.append(f"{column} (from {filled_by})")
    if missing_files:
        notes.insert(0, f"metadata columns left empty: {'; '.join(missing_files)}: not found in "
                        f"{tree.looked_in()}; pass --devkit_dir DIR to fill them")
    return notes


def image_counts(tree: Tree, wnids: list[str]) -> dict[str, tuple[int, int]]:
    """WNID -> (train images, val images) in the tree, by listing folders (no image is opened)."""
    val = list_val_images(tree, wnids)
    val_counts = {w: 0 for w in wnids}
    for wnid in val.wnids:
        val_counts[wnid] += 1
    return {w: (len(_images_by_stem(tree.train_dir / w)), val_counts[w]) for w in wnids}
