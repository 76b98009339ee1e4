"""Find the images and labels of a local ILSVRC CLS-LOC tree, extracted or in its archives.

``data_dir`` is the folder holding ``train/`` and ``val/``, or the archives they
come in (``ILSVRC2012_img_train.tar``, ``ILSVRC2012_img_val.tar``, Kaggle's
zip; any mix with extracted folders), or one such archive: ``sources.py`` says
which, and gives each split as an ``ImageFolder``. Three layouts are
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

Label files are looked for in ``--devkit_dir``, then inside the Kaggle zip (in
its data folder and the three above it), then in ``data_dir`` (the folder of
the archives) and its three nearest ancestors, then in ``./aux_files`` (where
the original script kept them); a devkit archive (``ILSVRC2012_devkit_t12.tar.gz``
or ``ILSVRC2015_devkit.tar.gz``) in one of those folders is searched right after
it. The first found of each kind wins.

Train images are ``train/<wnid>/<stem>.JPEG`` (any case of ``.jpeg``/``.jpg``/``.png``),
or ``<stem>.JPEG`` in ``<wnid>.tar`` inside the train tar. Their rows follow
``train_cls.txt`` (ids are its line numbers). Without it, in a folder or zip the
sorted listing of the whole train tree gives the same order and ids; in the
train tar an image's id is the number of train images of the classes whose
WNIDs sort before its class (from the built-in class table) plus its 1-based
rank by name in its class tar, its line number in the standard
``train_cls.txt``, so no other class tar is read (a tar holding classes the
table lacks, or more images of a class than ImageNet has, is numbered by its
own listing instead). Val rows are in image-number order and ``val_id`` is
that number. Val labels come from the first source present: ``val/<wnid>/``
folders, ``LOC_val_solution.csv``, the devkit ground truth (with
``map_clsloc.txt``, or the built-in class table), the Annotations XML files,
the built-in labels of the 50,000 ILSVRC2012 val images.

Only the class folders (or class tars) of the subset are listed when
``train_cls.txt`` exists or the train images are in the train tar; no image
file is ever opened or stat'ed here.
"""
import csv
import itertools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import labelfiles
from .errors import UserError
from .labelfiles import (
    BUILTIN_VAL_LABELS,
    LabelSource,
    builtin_classes,
    builtin_val_labels,
    builtin_wnid_of_id,
    val_image_number,
)
from .options import shown
from .sources import (
    DEVKIT_ARCHIVES,
    ArchiveFolder,
    DiskPlace,
    ImageFolder,
    LabelPlace,
    devkit_archive,
    find_image_sources,
    is_image_name,
)

log = logging.getLogger("packer")


# Where devkit files may sit below each searched folder, first match first.
DEVKIT_FOLDERS = ("", "data/", "devkit/", "devkit/data/", "ILSVRC2012_devkit_t12/data/", "ILSVRC2015/devkit/data/")

IMAGES_CSV = "images.csv"  # what a download from a URL list kept (download.py)
IMAGE_COLUMNS = ("split", "path", "image_id", "wnid", "line", "url", "sha256", "bytes")
DOWNLOADED_EXTENSIONS = (".jpg", ".png")  # a downloaded image is kept as the JPEG or PNG it came as


def downloaded_paths(image_id: str) -> tuple[str, ...]:
    """Where a download may keep ``image_id`` (``<wnid>_<n>``), relative to its split's folder:
    ``<wnid>/<image_id>.jpg`` or ``.png``."""
    return tuple(f"{image_id[:9]}/{image_id}{extension}" for extension in DOWNLOADED_EXTENSIONS)
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
    """Where a tree's images are and which label files were found (None: not found). A label
    file is a ``Path`` or a file inside an archive; ``val_annotations`` is a folder of either kind."""

    data_dir: Path
    train: ImageFolder
    val: ImageFolder
    searched: tuple[Path, ...]
    train_cls: LabelSource | None = None
    synset_mapping: LabelSource | None = None
    val_solution: LabelSource | None = None
    val_annotations: "Path | ArchiveFolder | None" = None
    map_clsloc: LabelSource | None = None
    val_ground_truth: LabelSource | None = None
    downloaded: Path | None = None  # the images.csv of a folder downloaded from a URL list

    def looked_in(self) -> str:
        """The searched folders, comma-separated, for messages."""
        return ", ".join(str(folder) for folder in self.searched)


@dataclass(frozen=True)
class SplitImages:
    """The images of one split in row order: ``paths[i]`` (relative to the split's folder, and
    found in ``source``) has class ``wnids[i]`` and id ``ids[i]``.

    ``label_source`` names what gave the order and classes (a file name, or a
    description such as ``val/<wnid>/ folders``); ``labels`` (int32, per image)
    is set once a subset has been chosen; ``origins`` (images downloaded from a
    URL list) has one value per image under each of ``image_ids``, ``urls`` and
    ``sha256``, which the manifest records.
    """

    split: str
    source: ImageFolder
    paths: list[str]
    wnids: list[str]
    ids: np.ndarray
    label_source: str
    labels: np.ndarray | None = None
    notes: tuple[str, ...] = field(default=())
    origins: dict[str, list] | None = None

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
        origins = None if self.origins is None else {key: [values[i] for i in rows]
                                                      for key, values in self.origins.items()}
        return SplitImages(split or self.split, self.source, [self.paths[i] for i in rows],
                           [self.wnids[i] for i in rows], self.ids[rows], self.label_source,
                           None if self.labels is None else self.labels[rows], self.notes, origins)


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


def _label_places(searched: tuple[Path, ...], devkit_dir: Path | None, in_archives: tuple[LabelPlace, ...]):
    """Where label files are looked for, nearest first (see the module docstring): ``--devkit_dir``
    (a folder or a devkit archive), the folders inside the archives, then each searched folder
    followed by the devkit archives in it (each read when the search reaches it)."""
    devkit_places = LABEL_FILE_PLACES["map_clsloc"] + LABEL_FILE_PLACES["val_ground_truth"]

    def folder_and_its_devkits(folder: Path):
        yield DiskPlace(folder)
        for name in DEVKIT_ARCHIVES:
            if (folder / name).is_file():
                yield devkit_archive(folder / name, devkit_places)

    if devkit_dir is not None:
        if devkit_dir.is_file():
            yield devkit_archive(devkit_dir, devkit_places)
        else:
            yield from folder_and_its_devkits(devkit_dir)
    yield from in_archives
    for folder in searched:
        if folder != devkit_dir:
            yield from folder_and_its_devkits(folder)


def find_tree(data_dir: str | os.PathLike, devkit_dir: str | os.PathLike | None = None,
              index_dir: str | os.PathLike | None = None) -> Tree:
    """Find the images of ``data_dir`` (folders or archives; ``index_dir`` keeps the member lists
    of archives) and locate the label files."""
    data_dir = Path(os.path.abspath(data_dir))  # not resolved: an archive's neighbours are the link's
    if not data_dir.exists():
        raise UserError(f"--data_dir {data_dir} does not exist; pass the folder holding train/ and val/ "
                        "(e.g. ILSVRC/Data/CLS-LOC) or the ImageNet archives")
    if devkit_dir is not None:
        devkit_dir = Path(os.path.abspath(devkit_dir))
        if not (devkit_dir.is_file() and devkit_dir.name.endswith((".tar.gz", ".tgz", ".tar"))):
            _check_folder("--devkit_dir", devkit_dir, "the devkit folder holding map_clsloc.txt, or the devkit "
                                                      "archive (ILSVRC2012_devkit_t12.tar.gz)")
    if index_dir is not None and Path(index_dir).is_file():
        raise UserError(f"--index_dir {index_dir} is a file, not a folder; pass a folder for the member lists of "
                        "the archives (it is created if missing)")
    images = find_image_sources(data_dir, index_dir)
    searched = _search_folders(data_dir.parent if data_dir.is_file() else data_dir, devkit_dir)
    found: dict = {}
    for place in _label_places(searched, devkit_dir, images.label_places):
        for kind, kind_places in LABEL_FILE_PLACES.items():
            if found.get(kind):
                continue
            for relative in kind_places:
                if kind == "val_annotations" and place.is_dir(relative):
                    found[kind] = place.folder(relative)
                    break
                if kind != "val_annotations" and place.is_file(relative):
                    found[kind] = place.label_file(relative)
                    break
        if all(found.get(kind) for kind in LABEL_FILE_PLACES):
            break
    downloaded = data_dir / IMAGES_CSV if data_dir.is_dir() and (data_dir / IMAGES_CSV).is_file() else None
    return Tree(data_dir, images.train, images.val, searched, **found, downloaded=downloaded)


def train_classes(tree: Tree) -> list[str]:
    """Sorted names of the class folders in ``train/`` (or class tars in the train tar; no image is touched)."""
    return tree.train.class_folders()


def _images_by_stem(folder: ImageFolder, class_folder: str) -> dict[str, str]:
    return {os.path.splitext(name)[0]: name for name in folder.file_names(class_folder) if is_image_name(name)}


def list_train_images(tree: Tree, wnids: list[str]) -> SplitImages:
    """The train images of ``wnids`` in ``train_cls.txt`` order (or sorted-tree order)."""
    wanted = set(wnids)
    if tree.downloaded is not None:
        return _downloaded_images(tree, "train", wanted)
    if tree.train_cls is not None:
        return _train_from_train_cls(tree, wanted)
    if isinstance(tree.train, ArchiveFolder) and tree.train.class_tars:
        numbered = _train_numbered_by_table(tree, wnids)
        if numbered is not None:
            return numbered
    paths, classes, ids = [], [], []
    next_id = 1
    for wnid in train_classes(tree):
        stems = _images_by_stem(tree.train, wnid)
        if wnid in wanted:
            for n, stem in enumerate(sorted(stems)):
                paths.append(f"{wnid}/{stems[stem]}")
                classes.append(wnid)
                ids.append(next_id + n)
        next_id += len(stems)
    return SplitImages("train", tree.train, paths, classes, np.array(ids, dtype=np.int32),
                       "sorted listing of train/")


def _train_numbered_by_table(tree: Tree, wnids: list[str]) -> SplitImages | None:
    """The train tar's images of ``wnids``, numbered as the standard ``train_cls.txt`` numbers
    them (see the module docstring); None when the tar is not ImageNet's, so the table does not apply."""
    table = builtin_classes()
    present = train_classes(tree)
    if any(wnid not in table for wnid in present):
        log.info("note: %s holds classes not among the 1,000 of ILSVRC; train ids follow its own listing, "
                 "so every class tar is read", tree.train)
        return None
    before, total = {}, 0
    for wnid in sorted(table):
        before[wnid], total = total, total + table[wnid].train_images
    paths, classes, ids = [], [], []
    for wnid in sorted(set(wnids)):
        stems = _images_by_stem(tree.train, wnid)
        if len(stems) > table[wnid].train_images:
            log.info("note: %s holds %d images of %s, more than ImageNet's %d; train ids follow its own listing, "
                     "so every class tar is read", tree.train, len(stems), wnid, table[wnid].train_images)
            return None
        for n, stem in enumerate(sorted(stems), start=1):
            paths.append(f"{wnid}/{stems[stem]}")
            classes.append(wnid)
            ids.append(before[wnid] + n)
    return SplitImages("train", tree.train, paths, classes, np.array(ids, dtype=np.int32),
                       "ILSVRC2012 train_cls.txt numbering (built-in class table)")


def _train_from_train_cls(tree: Tree, wanted: set[str]) -> SplitImages:
    train_cls = tree.train_cls
    assert train_cls is not None
    paths, classes, ids, missing = [], [], [], []
    unlisted: dict[str, dict[str, str]] = {}  # class -> its files not (yet) matched by a line
    rows = labelfiles.train_list_from_train_cls(train_cls, wanted)
    for wnid, class_rows in itertools.groupby(rows, key=lambda row: row[0]):
        on_disk = unlisted.pop(wnid) if wnid in unlisted else _images_by_stem(tree.train, wnid)
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
        unlisted[wnid] = _images_by_stem(tree.train, wnid)
    left_out = sum(len(files) for files in unlisted.values())
    notes = (f"{left_out} train images not listed in {tree.train_cls} were left out",) if left_out else ()
    return SplitImages("train", tree.train, paths, classes, np.array(ids, dtype=np.int32),
                       train_cls.name, notes=notes)


def read_images_csv(path) -> list[dict]:
    """The rows of a download's ``images.csv`` (``line`` and ``bytes`` as ints). Each row must name
    the file where the download puts that image, ``<split>/<wnid>/<image_id>.jpg`` or ``.png``
    (the folder may come from someone else: no other file is ever read)."""
    from .urllist import IMAGE_ID_RE

    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != IMAGE_COLUMNS:
            raise UserError(f"{path} is not an images.csv of imagenet-subset (columns "
                            f"{','.join(reader.fieldnames or [])[:80]}); remove it or download again")
        rows = []
        for number, row in enumerate(reader, start=2):
            image_id, wnid, split = row["image_id"], row["wnid"], row["split"]
            if not (split in ("train", "val") and row["line"].isdigit() and (row["bytes"] or "0").isdigit()
                    and IMAGE_ID_RE.fullmatch(image_id) and image_id[:9] == wnid
                    and row["path"] in (f"{split}/{path}" for path in downloaded_paths(image_id))):
                raise UserError(f"{path}, line {number}: not a row of a kept image (split {split!r}, path "
                                f"{row['path'][:80]!r}, line {row['line']!r}); download again")
            rows.append({**row, "line": int(row["line"]), "bytes": int(row["bytes"] or 0)})
    return rows


def _downloaded_images(tree: Tree, split: str, wanted: set[str]) -> SplitImages:
    """The ``split`` images of ``wanted`` classes a download from a URL list kept, in line order,
    as its ``images.csv`` lists them; ids are their line numbers in the list."""
    assert tree.downloaded is not None
    folder = tree.train if split == "train" else tree.val
    rows = [row for row in read_images_csv(tree.downloaded) if row["split"] == split and row["wnid"] in wanted]
    prefix = f"{split}/"
    paths = [row["path"][len(prefix):] for row in rows]
    missing = [row["path"] for row, path in zip(rows, paths, strict=True) if not folder.has(path)]
    if missing:
        raise UserError(f"{len(missing)} images listed in {tree.downloaded} are missing from {tree.data_dir}: "
                        f"{shown(missing)}; run the download again to fetch them")
    origins = {"image_ids": [row["image_id"] for row in rows], "urls": [row["url"] for row in rows],
               "sha256": [row["sha256"] for row in rows]}
    return SplitImages(split, folder, paths, [row["wnid"] for row in rows],
                       np.array([row["line"] for row in rows], dtype=np.int32),
                       f"{IMAGES_CSV} (downloaded from a URL list)", origins=origins)


def _val_number(tree: Tree, relative: str) -> int:
    number = val_image_number(os.path.basename(relative))
    if number is None:
        raise UserError(f"cannot read the image number of {tree.val}/{relative}; "
                        "val images are named ILSVRC2012_val_XXXXXXXX.JPEG: rename or remove it")
    return number


def list_val_images(tree: Tree, wnids: list[str]) -> SplitImages:
    """The val images of ``wnids`` in image-number order, labelled by the best source present."""
    wanted = set(wnids)
    if tree.downloaded is not None:
        return _downloaded_images(tree, "val", wanted)
    sorted_into = tree.val.class_folders()
    if sorted_into:
        entries = [
            (_val_number(tree, f"{wnid}/{name}"), wnid, f"{wnid}/{name}")
            for wnid in sorted(wanted & set(sorted_into))
            for name in tree.val.file_names(wnid) if is_image_name(name)
        ]
        source = "val/<wnid>/ folders"
    else:
        files = {}
        for name in tree.val.file_names():
            if is_image_name(name):
                files[_val_number(tree, name)] = name
        labels, source = _flat_val_labels(tree, sorted(files))
        unlabelled = [files[n] for n in sorted(files) if n not in labels]
        if unlabelled:
            raise UserError(f"{len(unlabelled)} val images in {tree.val} have no label in {source}: "
                            f"{shown(unlabelled)}; use the label file that came with these images")
        entries = [(n, labels[n], name) for n, name in files.items() if labels[n] in wanted]
    entries.sort()
    return SplitImages("val", tree.val, [e[2] for e in entries], [e[1] for e in entries],
                       np.array([e[0] for e in entries], dtype=np.int32), source)


def _flat_val_labels(tree: Tree, numbers: list[int]) -> tuple[dict[int, str], str]:
    if tree.val_solution:
        return labelfiles.val_labels_from_solution_csv(tree.val_solution), tree.val_solution.name
    if tree.val_ground_truth:
        if tree.map_clsloc:
            classes = labelfiles.classes_from_map_clsloc(tree.map_clsloc)
            wnid_of_id, table = {cls_id: wnid for wnid, (cls_id, _) in classes.items()}, tree.map_clsloc.name
        else:
            wnid_of_id, table = builtin_wnid_of_id(), "the built-in class table"
        return (labelfiles.val_labels_from_ground_truth(tree.val_ground_truth, wnid_of_id),
                f"{tree.val_ground_truth.name} with {table}")
    if tree.val_annotations:
        return labelfiles.val_labels_from_annotations(tree.val_annotations, numbers), "Annotations/CLS-LOC/val"
    return builtin_val_labels(), BUILTIN_VAL_LABELS


def class_table(tree: Tree) -> dict[str, ClassInfo]:
    """Human label, CLS-LOC id and 0-999 model index of every class the label files or the
    built-in class table know; the tree's own files come first.

    The index is the position in the sorted list of the 1000 classes, from the
    mapping file, ``map_clsloc.txt``, a complete ``train/`` (1000 class folders),
    or the built-in table (ImageNet's 1000).
    """
    names = labelfiles.names_from_synset_mapping(tree.synset_mapping) if tree.synset_mapping else {}
    clsloc = labelfiles.classes_from_map_clsloc(tree.map_clsloc) if tree.map_clsloc else {}
    builtin = builtin_classes()
    folders = train_classes(tree)
    all_classes = next((sorted(c) for c in (names, clsloc, folders) if len(c) == 1000), sorted(builtin))
    index = {wnid: i for i, wnid in enumerate(all_classes)}

    def facts(wnid: str) -> ClassInfo:
        known = builtin.get(wnid)
        human_label = names.get(wnid) or (clsloc[wnid][1] if wnid in clsloc else known and known.human_label)
        original_label = clsloc[wnid][0] if wnid in clsloc else (known.clsloc_id if known else None)
        return ClassInfo(human_label or None, original_label, index.get(wnid))

    return {wnid: facts(wnid) for wnid in set(names) | set(clsloc) | set(index) | set(builtin)}


def names_to_match(classes: dict[str, ClassInfo]) -> dict[str, str]:
    """WNID -> the comma-separated names ``--classes`` and ``--search`` match, in WNID order: the
    human label of ``class_table``, then the class's WordNet names from the built-in table where
    they add to it (``English_springer, English springer, English springer spaniel``)."""
    builtin = builtin_classes()
    names = {}
    for wnid, info in sorted(classes.items()):
        known = builtin[wnid].names if wnid in builtin else ""
        label = info.human_label or ""
        extra = [n.strip() for n in known.split(",") if n.strip() and n.strip().lower() not in label.lower()]
        if label or extra:
            names[wnid] = ", ".join(([label] if label else []) + extra)
    return names


def class_table_gaps(tree: Tree, classes: dict[str, ClassInfo], wnids: list[str]) -> list[str]:
    """Notes on the ``ClassInfo`` fields that ``class_table`` left None for some of ``wnids``:
    one for every field whose file was not found (naming the files and the folders searched),
    and one per field whose file was found but does not list some of the classes."""
    mapping_files = " and ".join(str(p) for p in (tree.synset_mapping, tree.map_clsloc) if p)
    columns = (  # (field, the file that fills it, why it is empty when that file was found)
        ("human_label", "LOC_synset_mapping.txt or map_clsloc.txt", mapping_files and f"not named in {mapping_files}"),
        ("original_label", "map_clsloc.txt", tree.map_clsloc and f"not listed in {tree.map_clsloc}"),
        ("imagenet_index", "", "not among the 1000 ImageNet classes"),  # the built-in table has the 1000
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
    return {w: (len(_images_by_stem(tree.train, w)), val_counts[w]) for w in wnids}
