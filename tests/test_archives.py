"""Packing straight from the archives ImageNet is downloaded as (issue #12).

One small set of images is written, byte for byte the same, as an extracted
tree (``plain``: ``train/`` + flat ``val/``, no label file), as the two
ILSVRC2012 tars (``tars``), as a Kaggle-layout tree (``kaggle``) and as
Kaggle's zip of it (``zip``); see ``archive_helpers.py`` for the builders.
The classes are real ILSVRC WNIDs, chosen where the built-in class table's
train counts are not all 1300, so the train ids of the train tar (images of
the classes sorted before + rank by name) are not round numbers:

    T n01440764 tench                    11 images  ids 1..11        (none before it)
    C n02089078 black-and-tan coonhound   3 images  ids 212586..     (212585 before it)
    W n02089867 Walker hound              2 images  (never in the subset)
    F n02089973 English foxhound          4 images  ids 214343..     (214342 before it)

The subset lists F, T, C (label 0 is F). The val images have numbers whose
ILSVRC2012 label (the built-in labels) is their class. The expected ids and
labels are computed here from the packaged CSV and label list, not with the
package's own readers.
"""
import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from archive_helpers import (
    CHECKSUM_FIELD,
    DEVKIT,
    GROUND_TRUTH,
    KAGGLE_ZIP,
    NAME_FIELD,
    SIZE_FIELD,
    TRAIN_TAR,
    VAL_TAR,
    central_directory_offset,
    class_tar_members,
    devkit_bytes,
    ground_truth_text,
    patch_tar_header,
    tar_bytes,
    tar_members,
    train_files,
    val_files,
    write_devkit,
    write_devkit_2015,
    write_kaggle_zip,
    write_train_tar,
    write_val_tar,
    write_zip64,
    zip_local_offsets,
)
from helpers import (
    PREFIX,
    PYTHON,
    REPO,
    FakeTree,
    Images,
    assert_one_error_line,
    assert_rows_are,
    build,
    noise,
    read_npz,
    reference_transform,
    run_main,
    save_image,
    sha256,
    subprocess_env,
    write_list,
    write_tree,
)
from PIL import Image

from packer import archives, sources
from packer.archives import Member, scan_tar, scan_zip
from packer.errors import UserError
from packer.recipe import rebuild_from_recipe

# --------------------------------------------------------------------------- the packaged tables, read here

DATA = REPO / "packer" / "data"
with open(DATA / "ilsvrc2012_classes.csv", encoding="utf-8", newline="") as _f:
    TABLE = list(csv.DictReader(_f))
TABLE_TRAIN_IMAGES = {row["wnid"]: int(row["num_train_images"]) for row in TABLE}
HUMAN = {row["wnid"]: row["human_label"] for row in TABLE}
_WNID_OF_ID = {int(row["clsloc_id"]): row["wnid"] for row in TABLE}
BUILTIN_VAL = {n: _WNID_OF_ID[int(line)]
               for n, line in enumerate((DATA / "ilsvrc2012_val_labels.txt").read_text().split(), start=1)}


def images_before(wnid: str) -> int:
    """Train images of the classes whose WNIDs sort before ``wnid``, per the packaged table."""
    return sum(n for w, n in TABLE_TRAIN_IMAGES.items() if w < wnid)


# --------------------------------------------------------------------------- the images

T, C, W, F = "n01440764", "n02089078", "n02089867", "n02089973"
G = "n01443537"  # goldfish: a class the tree does not hold
COUNTS = {T: 11, C: 3, W: 2, F: 4}
VAL = {28: F, 48: F, 237: F, 293: T, 327: C, 511: W, 1538: W, 2138: T, 2398: C, 3014: T}
SUBSET = [F, T, C]
IMAGES = Images(sizes=((40, 30), (30, 40), (36, 36)))
SIZES = {"resize_size": 32, "crop_size": 24}
BUILTIN_LABELS = "built-in ILSVRC2012 validation labels"
TABLE_ORDER = "ILSVRC2012 train_cls.txt numbering (built-in class table)"


def train_rows(subset=SUBSET, counts=COUNTS):
    """(path relative to train/, label, id) of the train rows: classes in WNID order, files by name,
    ids by the packaged table."""
    rows = []
    for wnid in sorted(subset):
        stems = sorted(f"{wnid}_{k}" for k in range(1, counts[wnid] + 1))
        rows += [(f"{wnid}/{stem}.JPEG", subset.index(wnid), images_before(wnid) + rank)
                 for rank, stem in enumerate(stems, start=1)]
    return rows


TRAIN_PATHS = [r[0] for r in train_rows()]
TRAIN_LABELS = [r[1] for r in train_rows()]
TRAIN_IDS = [r[2] for r in train_rows()]
VAL_IDS = [n for n, w in sorted(VAL.items()) if w in SUBSET]
VAL_LABELS = [SUBSET.index(VAL[n]) for n in VAL_IDS]
VAL_PATHS = [f"ILSVRC2012_val_{n:08d}.JPEG" for n in VAL_IDS]


def test_the_expectations_are_what_the_module_docstring_says():
    assert TRAIN_IDS == list(range(1, 12)) + [212586, 212587, 212588] + [214343, 214344, 214345, 214346]
    assert TRAIN_PATHS[:4] == [f"{T}/{T}_1.JPEG", f"{T}/{T}_10.JPEG", f"{T}/{T}_11.JPEG", f"{T}/{T}_2.JPEG"]
    assert TRAIN_LABELS == [1] * 11 + [2] * 3 + [0] * 4
    assert all(BUILTIN_VAL[n] == w for n, w in VAL.items())
    assert VAL_IDS == [28, 48, 237, 293, 327, 2138, 2398, 3014] and VAL_LABELS == [0, 0, 0, 1, 2, 1, 2, 1]


def write_train_cls_with_table_ids(path: Path, counts=COUNTS) -> None:
    """A ``train_cls.txt`` listing every image of ``counts`` with the id the train tar gives it."""
    rows = train_rows(sorted(counts), counts)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{p.removesuffix('.JPEG')} {i}\n" for p, _, i in rows))


@dataclass
class Data:
    root: Path
    plain: FakeTree  # train/ + flat val/, no label file
    tars: Path  # ILSVRC2012_img_train.tar + ILSVRC2012_img_val.tar
    kaggle: FakeTree  # the Kaggle layout; train_cls.txt with the table's ids, names from the table
    zip: Path  # Kaggle's zip of it
    train: dict  # {wnid: [(file name, bytes)]}
    val: dict  # {file name: bytes}
    class_list: Path


@contextmanager
def in_folder(folder: Path):
    """Run in ``folder`` (an empty one: no ./aux_files), for module-scoped builds."""
    folder.mkdir(parents=True, exist_ok=True)
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


@pytest.fixture(scope="module")
def data(module_tmp_path_factory) -> Data:
    root = module_tmp_path_factory.mktemp("archives").resolve()
    plain = write_tree(root / "plain", counts=COUNTS, val=VAL, kaggle=False, images=IMAGES)
    kaggle = write_tree(root / "kaggle", counts=COUNTS, val=VAL, names={w: HUMAN[w] for w in COUNTS}, images=IMAGES)
    write_train_cls_with_table_ids(kaggle.root / "ILSVRC" / "ImageSets" / "CLS-LOC" / "train_cls.txt")
    train, val = train_files(plain.train_dir), val_files(plain.val_dir)
    assert train == train_files(kaggle.train_dir) and val == val_files(kaggle.val_dir)  # the same bytes
    write_train_tar(root / "tars" / TRAIN_TAR, train)
    write_val_tar(root / "tars" / VAL_TAR, val)
    zip_path = write_kaggle_zip(root / "zip" / KAGGLE_ZIP, kaggle.root)
    class_list = write_list(root / "lists" / "mine.txt", SUBSET)
    return Data(root, plain, root / "tars", kaggle, zip_path, train, val, class_list)


def pack(data: Data, data_dir, out_dir, class_list=None, **options):
    """An in-process build of the subset (or ``class_list``) from ``data_dir``, tiny and one worker."""
    return build(class_list or data.class_list, data_dir, out_dir, **SIZES, **options)


@pytest.fixture(scope="module")
def reference(data, module_tmp_path_factory):
    """The build from the two tars; the other forms are compared with it."""
    out = module_tmp_path_factory.mktemp("reference")
    with in_folder(out / "cwd"):
        return pack(data, data.tars, out / "out")


def cli(data: Data, data_dir, out_dir, *extra, class_list=None) -> list[str]:
    return ["--subset_name", str(class_list or data.class_list), "--data_dir", str(data_dir), "--out_dir",
            str(out_dir), "--resize_size", "32", "--crop_size", "24", "--workers", "1", "--quiet", *extra]


def manifest_of(result) -> dict:
    return json.loads(Path(result.manifest).read_text())


def outputs(out_dir: Path) -> list[Path]:
    """The final output paths of the subset's build in ``out_dir`` that exist."""
    return [p for p in (out_dir / "mine_cls.npz", out_dir / "mine_cls_metadata.csv",
                        out_dir / "mine_cls.manifest.json") if p.exists()]


def assert_fails(argv, capsys, out_dir: Path, message: str) -> None:
    """The command exits 1 with exactly one line, ``imagenet-subset: error: <message>``, and no
    traceback; nothing is written at the output paths."""
    code, out, err = run_main(argv, capsys)
    assert code == 1, err
    assert out == ""
    line = assert_one_error_line(err)
    assert line == f"{PREFIX} {message}"
    assert outputs(out_dir) == []


def digest12(path: Path) -> str:
    return hashlib.sha1(str(path).encode()).hexdigest()[:12]


def group_file(group: str) -> str:
    return hashlib.sha1(group.encode()).hexdigest()[:16] + ".tsv"


def copy_tree(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


# =========================================================================== 1. the same output

def test_train_and_val_tars_pack_the_extracted_trees_images_with_the_table_ids(data, reference, tmp_path):
    extracted = read_npz(pack(data, data.plain.data_dir, tmp_path / "extracted").archive)
    packed = read_npz(reference.archive)
    for key in ("X_train", "y_train", "X_val", "y_val", "val_id"):
        assert np.array_equal(packed[key], extracted[key]), key
        assert packed[key].dtype == extracted[key].dtype, key
    # without train_cls.txt the extracted tree numbers its own sorted listing; the tar, the table's
    assert extracted["train_id"].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 17, 18, 19, 20]
    assert packed["train_id"].tolist() == TRAIN_IDS
    assert packed["train_id"].dtype == np.int32
    assert packed["y_train"].tolist() == TRAIN_LABELS
    assert packed["val_id"].tolist() == VAL_IDS and packed["y_val"].tolist() == VAL_LABELS
    assert_rows_are(packed["X_train"], [data.plain.train_dir / p for p in TRAIN_PATHS], crop=24)
    assert_rows_are(packed["X_val"], [data.plain.val_dir / p for p in VAL_PATHS], crop=24)
    assert reference.counts == {"train": 18, "val": 8} and reference.num_classes == 3
    manifest = manifest_of(reference)
    assert manifest["input"] == {
        "train_order": TABLE_ORDER, "val_labels": BUILTIN_LABELS,
        "label_files": dict.fromkeys(("train_cls", "synset_mapping", "val_solution", "val_annotations",
                                      "map_clsloc", "val_ground_truth"))}
    assert manifest["sources"]["train"]["label_source"] == TABLE_ORDER


def test_extracted_tree_with_the_same_train_cls_ids_is_byte_identical(data, reference, tmp_path):
    tree = copy_tree(data.plain.data_dir, tmp_path / "CLS-LOC")
    write_train_cls_with_table_ids(tree / "train_cls.txt")
    extracted = pack(data, tree, tmp_path / "out")
    assert extracted.sha256 == reference.sha256 == sha256(reference.archive) == sha256(extracted.archive)
    assert Path(extracted.metadata).read_bytes() == Path(reference.metadata).read_bytes()
    assert Path(reference.metadata).read_text().splitlines() == [
        "subset_label,WNID,human_label,original_label,imagenet_index,num_train_images,num_val_images",
        f"0,{F},English_foxhound,207,167,4,3",
        f"1,{T},tench,449,0,11,3",
        f"2,{C},black-and-tan_coonhound,42,165,3,2"]
    ours, theirs = manifest_of(extracted)["sources"], manifest_of(reference)["sources"]
    for split in ("train", "val"):
        for key in ("root", "paths", "ids", "labels", "row_crc32"):
            assert ours[split][key] == theirs[split][key], (split, key)


def test_kaggle_zip_is_byte_identical_to_its_extracted_tree_and_to_the_tars(data, reference, tmp_path):
    extracted = pack(data, data.kaggle.data_dir, tmp_path / "extracted")
    zipped = pack(data, data.zip.parent, tmp_path / "zipped")
    assert zipped.sha256 == extracted.sha256 == reference.sha256
    assert Path(zipped.metadata).read_bytes() == Path(extracted.metadata).read_bytes() \
        == Path(reference.metadata).read_bytes()
    assert manifest_of(zipped)["input"] == manifest_of(extracted)["input"] == {
        "train_order": "train_cls.txt", "val_labels": "LOC_val_solution.csv",
        "label_files": {"train_cls": "train_cls.txt", "synset_mapping": "LOC_synset_mapping.txt",
                        "val_solution": "LOC_val_solution.csv", "val_annotations": None, "map_clsloc": None,
                        "val_ground_truth": None}}
    infos = zipfile.ZipFile(data.zip).infolist()  # the zip mixes stored and deflated members, and folders
    assert {i.compress_type for i in infos if not i.is_dir()} == {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}
    assert any(i.is_dir() for i in infos)


@pytest.mark.parametrize("given", ["train tar", "val tar", "zip", "train tar under another name"])
def test_one_archive_file_as_data_dir(data, reference, tmp_path, given):
    if given == "train tar":
        data_dir = data.tars / TRAIN_TAR  # the val tar is found beside it
    elif given == "val tar":
        data_dir = data.tars / VAL_TAR
    elif given == "zip":
        data_dir = data.zip
    else:  # recognised by what it holds; the val tar beside it has its standard name
        folder = tmp_path / "downloads"
        folder.mkdir()
        shutil.copy(data.tars / TRAIN_TAR, folder / "imagenet-train.tar")
        os.symlink(data.tars / VAL_TAR, folder / VAL_TAR)
        data_dir = folder / "imagenet-train.tar"
    result = pack(data, data_dir, tmp_path / "out")
    assert result.sha256 == reference.sha256
    assert Path(result.metadata).read_bytes() == Path(reference.metadata).read_bytes()


@pytest.mark.parametrize("mix", ["extracted train + val tar", "train tar + extracted val",
                                 "extracted train + garbage train tar + val tar"])
def test_mixed_extracted_folders_and_archives(data, tmp_path, mix):
    expected = pack(data, data.plain.data_dir, tmp_path / "extracted")  # sorted-listing train ids
    folder = tmp_path / "mixed"
    folder.mkdir()
    if mix.startswith("extracted train"):
        os.symlink(data.plain.train_dir, folder / "train")
        os.symlink(data.tars / VAL_TAR, folder / VAL_TAR)
        if "garbage" in mix:  # an extracted folder wins over its archive, which is never opened
            (folder / TRAIN_TAR).write_bytes(b"not a tar at all\n" * 100)
        result = pack(data, folder, tmp_path / "out")
        assert result.sha256 == expected.sha256
        assert Path(result.metadata).read_bytes() == Path(expected.metadata).read_bytes()
        assert manifest_of(result)["input"]["train_order"] == "sorted listing of train/"
    else:
        os.symlink(data.tars / TRAIN_TAR, folder / TRAIN_TAR)
        os.symlink(data.plain.val_dir, folder / "val")
        packed = read_npz(pack(data, folder, tmp_path / "out").archive)
        extracted = read_npz(expected.archive)
        for key in ("X_train", "y_train", "X_val", "y_val", "val_id"):
            assert np.array_equal(packed[key], extracted[key]), key
        assert packed["train_id"].tolist() == TRAIN_IDS


@pytest.mark.parametrize("form", ["ustar", "gnu", "pax names", "pax with a global header"])
def test_every_tar_format_gives_the_same_archive(data, reference, tmp_path, form):
    tar_format = {"ustar": tarfile.USTAR_FORMAT, "gnu": tarfile.GNU_FORMAT}.get(form, tarfile.PAX_FORMAT)
    folder = tmp_path / "tars"
    write_train_tar(folder / TRAIN_TAR, data.train, format=tar_format, pax_names=form == "pax names", seed=5)
    if form == "pax with a global header":
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT,
                          pax_headers={"comment": "ILSVRC2012 validation images"}) as tar:
            for name, content in sorted(data.val.items()):
                info = tarfile.TarInfo("./" + name)
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
        (folder / VAL_TAR).write_bytes(out.getvalue())
        assert out.getvalue()[156:157] == b"g"
    else:
        write_val_tar(folder / VAL_TAR, data.val, format=tar_format, pax_names=form == "pax names")
    if form == "pax names":  # the headers name a placeholder; the pax records, the files
        assert tar_members((folder / VAL_TAR).read_bytes()).keys() == data.val.keys()
        raw = (folder / VAL_TAR).read_bytes()
        assert raw[156:157] == b"x" and raw[1024:1036] == b"placeholder\0"  # after the pax header and record
    result = pack(data, folder, tmp_path / "out")
    assert result.sha256 == reference.sha256


def test_kaggle_zip_without_train_cls_numbers_its_sorted_listing(data, tmp_path):
    """As the extracted tree: ids from the sorted listing of the whole train/ (so the same as the
    plain tree's), labels from the zip's LOC_val_solution.csv (which agrees with the built-in ones)."""
    path = write_kaggle_zip(tmp_path / "zips" / KAGGLE_ZIP, data.kaggle.root,
                            leave_out=("ILSVRC/ImageSets/CLS-LOC/train_cls.txt",))
    result = pack(data, path, tmp_path / "out")
    extracted = pack(data, data.plain.data_dir, tmp_path / "extracted")
    assert result.sha256 == extracted.sha256
    assert read_npz(result.archive)["train_id"].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 17, 18,
                                                              19, 20]
    assert manifest_of(result)["input"]["train_order"] == "sorted listing of train/"
    assert manifest_of(result)["input"]["val_labels"] == "LOC_val_solution.csv"


def test_val_annotations_inside_the_zip_label_val(data, tmp_path):
    labels = VAL | {28: T, 293: F}  # the XML files disagree with the built-in labels here
    tree = write_tree(tmp_path / "kaggle", counts=COUNTS, val=labels, names={w: HUMAN[w] for w in COUNTS},
                      images=IMAGES, solution=False, annotations=True)
    path = write_kaggle_zip(tmp_path / "zips" / KAGGLE_ZIP, tree.root)
    result = pack(data, path, tmp_path / "out")
    z = read_npz(result.archive)
    assert z["val_id"].tolist() == [28, 48, 237, 293, 327, 2138, 2398, 3014]
    assert z["y_val"].tolist() == [1, 0, 0, 0, 2, 1, 2, 1]
    assert manifest_of(result)["sources"]["val"]["label_source"] == "Annotations/CLS-LOC/val"
    assert manifest_of(result)["input"]["label_files"]["val_annotations"] == "val"
    # an image whose XML file is missing has no label, and the error says where it looked
    missing = write_kaggle_zip(tmp_path / "missing" / KAGGLE_ZIP, tree.root,
                               leave_out=("ILSVRC/Annotations/CLS-LOC/val/ILSVRC2012_val_00000327.xml",))
    with pytest.raises(UserError) as error:
        pack(data, missing, tmp_path / "out2")
    assert str(error.value) == (
        f"1 val images in {missing}:ILSVRC/Data/CLS-LOC/val have no label in Annotations/CLS-LOC/val: "
        "ILSVRC2012_val_00000327.JPEG; use the label file that came with these images")


def test_a_class_outside_the_table_makes_the_train_tar_number_its_own_listing(data, tmp_path, caplog):
    """A tar holding a class the built-in table lacks is not ImageNet's: its ids follow its own
    sorted listing, as an extracted tree's do, and every class tar is read."""
    fake = "n00000042"
    tree = copy_tree(data.plain.data_dir, tmp_path / "CLS-LOC")
    (tree / "train" / fake).mkdir()
    for name, content in data.train[T][:3]:
        (tree / "train" / fake / name.replace(T, fake)).write_bytes(content)
    folder = tmp_path / "tars"
    write_train_tar(folder / TRAIN_TAR, train_files(tree / "train"))
    os.symlink(data.tars / VAL_TAR, folder / VAL_TAR)
    extracted = pack(data, tree, tmp_path / "extracted")
    caplog.set_level("INFO", logger="packer")
    result = pack(data, folder, tmp_path / "out")
    assert result.sha256 == extracted.sha256
    assert read_npz(result.archive)["train_id"].tolist() == list(range(4, 15)) + [15, 16, 17, 20, 21, 22, 23]
    assert f"note: {folder / TRAIN_TAR} holds classes not among the 1,000 of ILSVRC; train ids follow its own " \
           "listing, so every class tar is read" in caplog.messages
    assert manifest_of(result)["input"]["train_order"] == "sorted listing of train/"


@pytest.mark.parametrize("form", ["force_zip64", "zip64 end record and extras", "all deflated", "all stored"])
def test_zip_variants_give_the_same_archive(data, reference, tmp_path, form):
    path = tmp_path / "zips" / KAGGLE_ZIP
    if form == "force_zip64":
        write_kaggle_zip(path, data.kaggle.root, force_zip64=True)
        raw = path.read_bytes()
        for name, (local, _, _) in zip_local_offsets(path).items():
            # a file's local header has the 20-byte zip64 extra field; its central entry has none
            assert int.from_bytes(raw[local + 28:local + 30], "little") == (0 if name.endswith("/") else 20), name
    elif form == "zip64 end record and extras":
        with zipfile.ZipFile(data.zip) as zf:
            files = [(i.filename, zf.read(i)) for i in zf.infolist() if not i.is_dir()]
        write_zip64(path, files)
        with zipfile.ZipFile(path) as zf:  # a valid zip, as Python reads it
            assert zf.testzip() is None
            assert sorted(zf.namelist()) == sorted(name for name, _ in files)
    else:
        write_kaggle_zip(path, data.kaggle.root, deflate=lambda name, number: form == "all deflated")
    result = pack(data, path, tmp_path / "out")
    assert result.sha256 == reference.sha256
    assert Path(result.metadata).read_bytes() == Path(reference.metadata).read_bytes()


# =========================================================================== 2. only the subset is read

GARBAGE = b"this is not a tar file\n" * 100


def garbage_train_tar(data: Data, folder: Path) -> Path:
    """The train tar with W's class tar replaced by bytes that are not a tar, plus a fifth class
    (goldfish) as garbage too; the val tar beside it."""
    classes = dict(data.train)
    classes[W] = GARBAGE
    classes[G] = b"\x00garbage" * 300
    write_train_tar(folder / TRAIN_TAR, classes)
    os.symlink(data.tars / VAL_TAR, folder / VAL_TAR)
    return folder


def test_class_tars_outside_the_subset_are_never_read(data, reference, tmp_path):
    folder = garbage_train_tar(data, tmp_path / "tars")
    result = pack(data, folder, tmp_path / "out")
    assert result.sha256 == reference.sha256
    index = tmp_path / "out" / ".archive_index" / f"{TRAIN_TAR}.{digest12(folder / TRAIN_TAR)}"
    assert sorted(p.name for p in index.iterdir()) == sorted(
        ["archive.json", "groups.txt", group_file("")] + [group_file(w) for w in SUBSET])


def test_asking_for_a_damaged_class_tar_names_the_archive_and_member(data, tmp_path, capsys):
    folder = garbage_train_tar(data, tmp_path / "tars")
    class_list = write_list(tmp_path / "lists" / "mine.txt", [T, W])
    field = GARBAGE[148:156].split(b"\0", 1)[0].strip()[:12]
    assert_fails(cli(data, folder, tmp_path / "out", class_list=class_list), capsys, tmp_path / "out",
                 f"{folder / TRAIN_TAR}:{W}.tar (header at byte 0): damaged tar header (number {field!r}); "
                 "download the archive again")


def test_a_class_the_train_tar_lacks_is_named(data, tmp_path, capsys):
    class_list = write_list(tmp_path / "lists" / "mine.txt", [T, G])
    assert_fails(cli(data, data.tars, tmp_path / "out", class_list=class_list), capsys, tmp_path / "out",
                 f"{class_list}: 1 WNIDs have no folder in {data.tars / TRAIN_TAR}: {G}; remove them from the list "
                 "or point --data_dir at a tree that has them")


# =========================================================================== 3. the member index

class Scans:
    """Counts the scans of archives: ``calls`` is [(scanner, archive file name, class-tar label)]."""

    def __init__(self, monkeypatch, fail: bool = False):
        self.calls: list[tuple[str, str, str]] = []
        real_tar, real_zip = archives.scan_tar, archives.scan_zip

        def tar(archive, start=0, length=None, label=""):
            self.calls.append(("tar", Path(archive).name, label))
            if fail:
                raise AssertionError(f"{archive} {label} scanned again")
            return real_tar(archive, start, length, label)

        def zip_(archive):
            self.calls.append(("zip", Path(archive).name, ""))
            if fail:
                raise AssertionError(f"{archive} scanned again")
            return real_zip(archive)

        for module in (sources, archives):
            monkeypatch.setattr(module, "scan_tar", tar)
        monkeypatch.setattr(sources, "scan_zip", zip_)


def test_index_layout_and_contents(data, reference, tmp_path):
    result = pack(data, data.tars, tmp_path / "out")
    index = tmp_path / "out" / ".archive_index"
    train_tar, val_tar = data.tars / TRAIN_TAR, data.tars / VAL_TAR
    train_folder, val_folder = f"{TRAIN_TAR}.{digest12(train_tar)}", f"{VAL_TAR}.{digest12(val_tar)}"
    assert sorted(p.name for p in index.iterdir()) == sorted([train_folder, val_folder])
    for folder, tar in ((train_folder, train_tar), (val_folder, val_tar)):
        stat = os.stat(tar)
        assert json.loads((index / folder / "archive.json").read_text()) == {
            "format": 1, "archive": str(tar), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        assert (index / folder / "groups.txt").read_text() == "\n"  # one group, the tar's top
    outer = tar_members(train_tar.read_bytes())
    assert (index / train_folder / group_file("")).read_text() == "".join(
        f'"{name}"\t{offset}\t{size}\t0\t\t\n' for name, (_, offset, size) in outer.items())
    for wnid in SUBSET:  # archive order (the class tars are shuffled), offsets in the train tar
        assert (index / train_folder / group_file(wnid)).read_text() == "".join(
            f'"{wnid}.tar/{name}"\t{offset}\t{size}\t0\t\t\n'
            for name, (_, offset, size) in class_tar_members(train_tar, wnid).items())
    assert (index / val_folder / group_file("")).read_text() == "".join(
        f'"{name}"\t{offset}\t{size}\t0\t\t\n' for name, (_, offset, size) in tar_members(val_tar.read_bytes()).items())
    assert result.sha256 == reference.sha256


def test_a_second_build_reads_the_kept_lists(data, reference, tmp_path, monkeypatch):
    out = tmp_path / "out"
    pack(data, data.tars, out, class_list=write_list(tmp_path / "two.txt", [T, C]))
    scans = Scans(monkeypatch)
    result = pack(data, data.tars, out)  # F is new: only its class tar is scanned
    assert scans.calls == [("tar", TRAIN_TAR, f"{F}.tar/")]
    assert result.sha256 == reference.sha256
    Scans(monkeypatch, fail=True)  # now nothing is scanned at all
    assert pack(data, data.tars, out).sha256 == reference.sha256
    scans = Scans(monkeypatch)
    assert pack(data, data.zip, out).sha256 == reference.sha256  # a zip is scanned once, whole
    assert scans.calls == [("zip", KAGGLE_ZIP, "")]
    Scans(monkeypatch, fail=True)
    assert pack(data, data.zip, out).sha256 == reference.sha256


def test_index_dir_puts_the_index_where_asked(data, reference, tmp_path, capsys):
    index = tmp_path / "elsewhere" / "index"
    code, out, err = run_main(cli(data, data.zip, tmp_path / "out", "--index_dir", index), capsys)
    assert (code, err) == (0, "")
    assert sha256(tmp_path / "out" / "mine_cls.npz") == reference.sha256
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "mine_cls.manifest.json", "mine_cls.npz", "mine_cls_metadata.csv"]
    assert [p.name for p in index.iterdir()] == [f"{KAGGLE_ZIP}.{digest12(data.zip)}"]
    code, out, err = run_main(["classes", "--data_dir", data.tars, "--index_dir", index], capsys)
    assert code == 0
    assert sorted(p.name for p in index.iterdir()) == sorted(
        [f"{KAGGLE_ZIP}.{digest12(data.zip)}", f"{TRAIN_TAR}.{digest12(data.tars / TRAIN_TAR)}",
         f"{VAL_TAR}.{digest12(data.tars / VAL_TAR)}"])
    assert not (Path.cwd() / "out_files").exists()


def test_an_archive_changed_in_place_is_scanned_again(data, reference, tmp_path, monkeypatch):
    """The same members in another order: the same size, so only the modification time tells;
    the kept offsets would now point at other images."""
    folder = tmp_path / "tars"
    tar = write_train_tar(folder / TRAIN_TAR, data.train, seed=0)
    os.symlink(data.tars / VAL_TAR, folder / VAL_TAR)
    index = tmp_path / "index"
    assert pack(data, folder, tmp_path / "first", index_dir=index).sha256 == reference.sha256
    before = os.stat(tar)
    old_offsets = class_tar_members(tar, T)
    write_train_tar(tar, data.train, seed=100)
    os.utime(tar, ns=(before.st_atime_ns, before.st_mtime_ns + 2_000_000_000))
    assert os.stat(tar).st_size == before.st_size and class_tar_members(tar, T) != old_offsets
    scans = Scans(monkeypatch)
    assert pack(data, folder, tmp_path / "second", index_dir=index).sha256 == reference.sha256
    assert ("tar", TRAIN_TAR, f"{T}.tar/") in scans.calls
    kept = json.loads((index / f"{TRAIN_TAR}.{digest12(tar)}" / "archive.json").read_text())
    assert kept["mtime_ns"] == before.st_mtime_ns + 2_000_000_000


def test_an_archive_of_another_size_is_scanned_again(data, tmp_path):
    """One more tench image (noise, so it does not fit in the tar's padding), and the modification
    time put back: the size tells."""
    folder = tmp_path / "tars"
    tar = write_train_tar(folder / TRAIN_TAR, data.train)
    os.symlink(data.tars / VAL_TAR, folder / VAL_TAR)
    index = tmp_path / "index"
    first = read_npz(pack(data, folder, tmp_path / "first", index_dir=index).archive)
    before = os.stat(tar)
    extra = tmp_path / f"{T}_12.JPEG"
    save_image(extra, Image.fromarray(noise(80, 60, seed=12)))
    classes = dict(data.train)
    classes[T] = [*classes[T], (extra.name, extra.read_bytes())]
    write_train_tar(tar, classes)
    os.utime(tar, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(tar).st_size != before.st_size
    z = read_npz(pack(data, folder, tmp_path / "second", index_dir=index).archive)
    # T_12 sorts after T_11 and before T_2: row 3, rank 4
    assert z["train_id"].tolist() == list(range(1, 13)) + TRAIN_IDS[11:]
    assert z["y_train"].tolist() == [1] * 12 + TRAIN_LABELS[11:]
    assert np.array_equal(z["X_train"][3], reference_transform(extra, 32, 24))
    assert np.array_equal(np.delete(z["X_train"], 3, axis=0), first["X_train"])


def test_an_unwritable_index_folder_still_builds(data, reference, tmp_path, capsys):
    blocker = tmp_path / "index-is-a-file"
    blocker.write_text("not a folder\n")
    unwritable = blocker / "index"  # cannot be made: its parent is a file
    code, out, err = run_main(cli(data, data.tars, tmp_path / "out", "--index_dir", unwritable), capsys)
    assert code == 0, err
    assert err.splitlines() == [
        f"imagenet-subset: note: cannot keep the member index of {data.tars / name} in "
        f"{unwritable / (name + '.' + digest12(data.tars / name))} (Not a directory); it is scanned again next time"
        for name in (TRAIN_TAR, VAL_TAR)]
    assert sha256(tmp_path / "out" / "mine_cls.npz") == reference.sha256
    assert blocker.read_text() == "not a folder\n"
    result = pack(data, data.zip, tmp_path / "zip-out", index_dir=unwritable)  # a zip too, kept in memory
    assert result.sha256 == reference.sha256


def test_an_index_dir_that_is_a_file_is_refused(data, tmp_path, capsys):
    blocker = tmp_path / "index-is-a-file"
    blocker.write_text("not a folder\n")
    assert_fails(cli(data, data.tars, tmp_path / "out", "--index_dir", blocker), capsys, tmp_path / "out",
                 f"--index_dir {blocker} is a file, not a folder; pass a folder for the member lists of the archives "
                 "(it is created if missing)")
    assert blocker.read_text() == "not a folder\n"


@pytest.mark.parametrize("damaged", ["a class tar's list", "the val tar's list", "a folder list of the zip",
                                     "the train tar's list of class tars"])
def test_a_damaged_kept_list_is_made_again(data, reference, tmp_path, damaged):
    """index.py: "a damaged list: scan again". A list whose line is not six tab-separated fields,
    and a list that is gone, must give the same archive as a fresh scan."""
    archive, group = {
        "a class tar's list": (data.tars / TRAIN_TAR, T),
        "the val tar's list": (data.tars / VAL_TAR, ""),
        "a folder list of the zip": (data.zip, "ILSVRC/Data/CLS-LOC/val"),
        "the train tar's list of class tars": (data.tars / TRAIN_TAR, ""),
    }[damaged]
    data_dir = data.zip if archive == data.zip else data.tars
    index = tmp_path / "index"
    pack(data, data_dir, tmp_path / "first", index_dir=index)
    kept = index / f"{archive.name}.{digest12(archive)}" / group_file(group)
    assert kept.read_text().count("\n") >= 3
    kept.write_text("ILSVRC2012_val_00000028.JPEG\tnot a number\n")
    assert pack(data, data_dir, tmp_path / "second", index_dir=index).sha256 == reference.sha256
    kept.unlink()
    assert pack(data, data_dir, tmp_path / "third", index_dir=index).sha256 == reference.sha256


def test_a_member_name_holding_a_tab_does_not_empty_its_folder(data, reference, tmp_path):
    """The kept lists are tab-separated; a file named with a tab (here a note beside the val images)
    must not cost the images of its folder, on the first build or the next."""
    folder = tmp_path / "tars"
    write_val_tar(folder / VAL_TAR, data.val | {"README\tcopy.txt": b"notes\n"})
    os.symlink(data.tars / TRAIN_TAR, folder / TRAIN_TAR)
    blocker = tmp_path / "a-file"  # lists kept in memory only (the index cannot be made): the images are all there
    blocker.write_text("")
    assert pack(data, folder, tmp_path / "memory", index_dir=blocker / "index").sha256 == reference.sha256
    first = pack(data, folder, tmp_path / "first")
    assert first.counts == {"train": 18, "val": 8}
    assert first.sha256 == reference.sha256
    assert pack(data, folder, tmp_path / "first").sha256 == reference.sha256


# =========================================================================== 4. val labels

def test_val_tar_without_a_label_file_uses_the_builtin_labels(data, reference, tmp_path, capsys):
    manifest = manifest_of(reference)
    assert manifest["sources"]["val"]["label_source"] == BUILTIN_LABELS
    assert manifest["input"]["val_labels"] == BUILTIN_LABELS
    assert manifest["sources"]["val"]["ids"] == VAL_IDS and manifest["sources"]["val"]["labels"] == VAL_LABELS
    assert reference.label_sources == {"train": TABLE_ORDER, "val": BUILTIN_LABELS}
    code, out, err = run_main(cli(data, data.tars, tmp_path / "out"), capsys)
    assert (code, err) == (0, "")  # no note: nothing is missing
    summary, labels, metadata = out.splitlines()
    assert summary.startswith(f"mine: 18 train, 8 val images, 3 classes -> {tmp_path / 'out' / 'mine_cls.npz'} (")
    assert labels == f"labels: train from {TABLE_ORDER}; val from {BUILTIN_LABELS}"
    assert metadata == f"metadata: {tmp_path / 'out' / 'mine_cls_metadata.csv'}"


# Ground truth that disagrees with the built-in labels: 28 is tench (not foxhound), 327 foxhound
# (not coonhound), 511 coonhound (not Walker hound), 2138 Walker hound (not tench).
DEVKIT_LABELS = VAL | {28: T, 327: F, 511: C, 2138: W}


@pytest.mark.parametrize("where", ["beside the val tar", "in the parent folder", "--devkit_dir"])
def test_devkit_archive_ground_truth_labels_val(data, tmp_path, where):
    folder = tmp_path / "downloads" / "imagenet"
    folder.mkdir(parents=True)
    for name in (TRAIN_TAR, VAL_TAR):
        os.symlink(data.tars / name, folder / name)
    devkit_folder = {"beside the val tar": folder, "in the parent folder": folder.parent,
                     "--devkit_dir": tmp_path / "devkits"}[where]
    write_devkit(devkit_folder / DEVKIT, DEVKIT_LABELS, filler=1000)
    options = {"devkit_dir": devkit_folder} if where == "--devkit_dir" else {}
    result = pack(data, folder, tmp_path / "out", **options)
    z = read_npz(result.archive)
    expected = [n for n in sorted(DEVKIT_LABELS) if DEVKIT_LABELS[n] in SUBSET]
    assert expected == [28, 48, 237, 293, 327, 511, 2398, 3014]
    assert z["val_id"].tolist() == expected
    assert z["y_val"].tolist() == [SUBSET.index(DEVKIT_LABELS[n]) for n in expected] == [1, 0, 0, 1, 0, 2, 2, 1]
    assert_rows_are(z["X_val"], [data.plain.val_dir / f"ILSVRC2012_val_{n:08d}.JPEG" for n in expected], crop=24)
    source = "ILSVRC2012_validation_ground_truth.txt with the built-in class table"
    manifest = manifest_of(result)
    assert result.label_sources == {"train": TABLE_ORDER, "val": source}
    assert result.labels_line() == f"labels: train from {TABLE_ORDER}; val from {source}"
    assert manifest["sources"]["val"]["label_source"] == source
    assert manifest["input"]["val_labels"] == source
    assert manifest["input"]["label_files"]["val_ground_truth"] == "ILSVRC2012_validation_ground_truth.txt"
    assert manifest["input"]["label_files"]["map_clsloc"] is None


def test_2015_devkit_archive_with_its_own_class_map(data, tmp_path):
    folder = tmp_path / "imagenet"
    folder.mkdir()
    os.symlink(data.tars / TRAIN_TAR, folder / TRAIN_TAR)
    os.symlink(data.tars / VAL_TAR, folder / VAL_TAR)
    classes = {F: (3, "foxhound_of_the_map"), T: (1, "tench_of_the_map"), C: (2, "coonhound_of_the_map"),
               W: (4, "walker_of_the_map")}
    write_devkit_2015(folder / "ILSVRC2015_devkit.tar.gz", classes, DEVKIT_LABELS)
    result = pack(data, folder, tmp_path / "out")
    z = read_npz(result.archive)
    assert z["val_id"].tolist() == [28, 48, 237, 293, 327, 511, 2398, 3014]
    assert z["y_val"].tolist() == [1, 0, 0, 1, 0, 2, 2, 1]
    assert manifest_of(result)["sources"]["val"]["label_source"] == (
        "ILSVRC2015_clsloc_validation_ground_truth.txt with map_clsloc.txt")
    assert Path(result.metadata).read_text().splitlines()[1:] == [
        f"0,{F},foxhound_of_the_map,3,167,4,3", f"1,{T},tench_of_the_map,1,0,11,3",
        f"2,{C},coonhound_of_the_map,2,165,3,2"]


def test_val_solution_csv_inside_the_zip_labels_val(data, tmp_path):
    labels = VAL | {28: C, 2398: W, 511: T}
    rows = "".join(f"ILSVRC2012_val_{n:08d},{w} 1 2 30 20 {w} 3 3 9 9\n" for n, w in sorted(labels.items()))
    devkit_beside = tmp_path / "zips"  # a devkit beside the zip does not win over the zip's own csv
    write_devkit(devkit_beside / DEVKIT, VAL | {28: T}, filler=1000)
    path = write_kaggle_zip(devkit_beside / KAGGLE_ZIP, data.kaggle.root,
                            replace={"LOC_val_solution.csv": ("ImageId,PredictionString\n" + rows).encode()})
    result = pack(data, path, tmp_path / "out")
    z = read_npz(result.archive)
    expected = [n for n in sorted(labels) if labels[n] in SUBSET]
    assert z["val_id"].tolist() == expected == [28, 48, 237, 293, 327, 511, 2138, 3014]
    assert z["y_val"].tolist() == [SUBSET.index(labels[n]) for n in expected] == [2, 0, 0, 1, 2, 1, 1, 1]
    assert manifest_of(result)["sources"]["val"]["label_source"] == "LOC_val_solution.csv"
    assert result.labels_line() == "labels: train from train_cls.txt; val from LOC_val_solution.csv"
    assert manifest_of(result)["input"]["label_files"]["val_ground_truth"] == "ILSVRC2012_validation_ground_truth.txt"


# =========================================================================== 5. damaged archives

@pytest.fixture
def downloads(data, tmp_path) -> Path:
    """A fresh copy of the two tars, to damage."""
    folder = tmp_path / "downloads"
    folder.mkdir()
    for name in (TRAIN_TAR, VAL_TAR):
        shutil.copy(data.tars / name, folder / name)
    return folder


def test_truncated_train_tar(data, downloads, tmp_path, capsys):
    tar = downloads / TRAIN_TAR
    _, start, size = tar_members(tar.read_bytes())[f"{C}.tar"]
    cut = start + size // 2  # in the middle of C's class tar
    tar.write_bytes(tar.read_bytes()[:cut])
    assert_fails(cli(data, downloads, tmp_path / "out"), capsys, tmp_path / "out",
                 f"{tar}: member {C}.tar runs past the end of the archive ({start + size} > {cut} bytes); "
                 "it is truncated, download it again")


def test_truncated_archive_is_noticed_although_its_lists_were_kept(data, downloads, tmp_path, capsys):
    index = tmp_path / "index"
    pack(data, downloads, tmp_path / "first", index_dir=index)
    tar = downloads / VAL_TAR
    members = tar_members(tar.read_bytes())
    _, start, size = members[max(members, key=lambda name: members[name][1])]  # the last member
    end = start + (size + 511) // 512 * 512
    tar.write_bytes(tar.read_bytes()[:end])  # no end-of-archive blocks
    assert_fails(cli(data, downloads, tmp_path / "out", "--index_dir", index), capsys, tmp_path / "out",
                 f"{tar} ends at byte {end} without tar's end-of-archive blocks; it is truncated, download it again")


def test_member_running_past_the_end_of_its_class_tar(data, downloads, tmp_path, capsys):
    tar = downloads / TRAIN_TAR
    _, class_start, class_size = tar_members(tar.read_bytes())[f"{F}.tar"]
    name = f"{F}_2.JPEG"
    header, offset, _ = class_tar_members(tar, F)[name]
    patch_tar_header(tar, header, SIZE_FIELD, b"%011o\0" % 50_000)  # a good checksum, a size too big
    with pytest.raises(tarfile.ReadError):  # Python's tarfile agrees the class tar is damaged
        with tarfile.open(fileobj=io.BytesIO(tar.read_bytes()[class_start:class_start + class_size])) as inner:
            for member in inner:
                inner.extractfile(member).read()
    assert_fails(cli(data, downloads, tmp_path / "out"), capsys, tmp_path / "out",
                 f"{tar}:{F}.tar: member {name} runs past the end of the archive "
                 f"({offset - class_start + 50_000} > {class_size} bytes); it is truncated, download it again")


def test_val_member_running_past_the_end(data, downloads, tmp_path, capsys):
    tar = downloads / VAL_TAR
    name = "ILSVRC2012_val_00000327.JPEG"
    header, offset, _ = tar_members(tar.read_bytes())[name]
    size = tar.stat().st_size
    patch_tar_header(tar, header, SIZE_FIELD, b"%011o\0" % size)
    assert_fails(cli(data, downloads, tmp_path / "out"), capsys, tmp_path / "out",
                 f"{tar}: member {name} runs past the end of the archive ({offset + size} > {size} bytes); "
                 "it is truncated, download it again")


def test_corrupted_header_checksum(data, downloads, tmp_path, capsys):
    tar = downloads / VAL_TAR
    header, _, _ = tar_members(tar.read_bytes())["ILSVRC2012_val_00002138.JPEG"]
    patch_tar_header(tar, header, slice(20, 21), b"9", fix_checksum=False)  # one byte of the name
    assert_fails(cli(data, downloads, tmp_path / "out"), capsys, tmp_path / "out",
                 f"{tar} (header at byte {header}): damaged tar header (checksum mismatch); download the archive again")


def test_corrupted_header_checksum_inside_a_class_tar(data, downloads, tmp_path, capsys):
    tar = downloads / TRAIN_TAR
    _, class_start, _ = tar_members(tar.read_bytes())[f"{T}.tar"]
    header, _, _ = class_tar_members(tar, T)[f"{T}_7.JPEG"]
    patch_tar_header(tar, header, CHECKSUM_FIELD, b"0000000\0", fix_checksum=False)
    assert_fails(cli(data, downloads, tmp_path / "out"), capsys, tmp_path / "out",
                 f"{tar}:{T}.tar (header at byte {header - class_start}): damaged tar header (checksum mismatch); "
                 "download the archive again")


@pytest.mark.parametrize("damage", ["not gzip", "truncated"])
def test_bad_gzip_devkit(data, downloads, tmp_path, capsys, damage):
    good = devkit_bytes(ground_truth_text(VAL))
    devkit = downloads / DEVKIT
    devkit.write_bytes(b"this is not gzip\n" * 64 if damage == "not gzip" else good[:len(good) // 2])
    reason = "invalid header" if damage == "not gzip" else "unexpected end of data"
    assert_fails(cli(data, downloads, tmp_path / "out"), capsys, tmp_path / "out",
                 f"cannot read {devkit}: {reason} (a damaged or truncated download?); download it again or extract it")


def test_the_undamaged_devkit_labels_val(data, downloads, tmp_path):
    """The devkit the test above damages is good when whole: its ground truth labels the val images."""
    (downloads / DEVKIT).write_bytes(devkit_bytes(ground_truth_text(VAL)))
    with tarfile.open(downloads / DEVKIT) as tar:
        assert GROUND_TRUTH in tar.getnames()
    assert manifest_of(pack(data, downloads, tmp_path / "out"))["sources"]["val"]["label_source"] == (
        "ILSVRC2012_validation_ground_truth.txt with the built-in class table")


@pytest.fixture
def zip_copy(data, tmp_path) -> Path:
    path = tmp_path / "zips" / KAGGLE_ZIP
    path.parent.mkdir()
    shutil.copy(data.zip, path)
    return path


def test_truncated_zip(data, zip_copy, tmp_path, capsys):
    zip_copy.write_bytes(zip_copy.read_bytes()[:-100])
    assert_fails(cli(data, zip_copy, tmp_path / "out"), capsys, tmp_path / "out",
                 f"{zip_copy}: no zip end-of-central-directory record; it is not a zip or it is truncated, download "
                 "it again")


def test_zip_cut_in_its_central_directory(data, zip_copy, tmp_path, capsys):
    raw = zip_copy.read_bytes()
    directory = central_directory_offset(zip_copy)
    end = raw[raw.rfind(b"PK\x05\x06"):]
    zip_copy.write_bytes(raw[:directory + 200] + end)  # the end record kept, the directory cut short
    assert_fails(cli(data, zip_copy, tmp_path / "out"), capsys, tmp_path / "out",
                 f"{zip_copy}: its central directory runs past the end; the zip is truncated, download it again")


def test_zip_with_a_broken_central_directory_entry(data, zip_copy, tmp_path, capsys):
    raw = bytearray(zip_copy.read_bytes())
    third = raw.index(b"PK\x01\x02", raw.index(b"PK\x01\x02", central_directory_offset(zip_copy)) + 1)
    third = raw.index(b"PK\x01\x02", third + 1)
    raw[third:third + 4] = b"XX\x01\x02"
    zip_copy.write_bytes(bytes(raw))
    assert_fails(cli(data, zip_copy, tmp_path / "out"), capsys, tmp_path / "out",
                 f"{zip_copy}: broken central directory at entry 3; the zip is damaged, download it again")


def corrupt_jpeg_in_class_tar(data: Data, folder: Path) -> Path:
    classes = dict(data.train)
    classes[T] = [(name, b"\xff\xd8\xff\xe0 not a JPEG after all " * 20 if name == f"{T}_5.JPEG" else content)
                  for name, content in classes[T]]
    write_train_tar(folder / TRAIN_TAR, classes)
    os.symlink(data.tars / VAL_TAR, folder / VAL_TAR)
    return folder


def damage_zip_member(zip_path: Path, name: str, how: str) -> None:
    raw = bytearray(zip_path.read_bytes())
    local, offset, size = zip_local_offsets(zip_path)[name]
    if how == "data":
        raw[offset + size // 2] ^= 0xFF
    else:
        raw[local:local + 4] = b"XXXX"
    zip_path.write_bytes(bytes(raw))


ZIP_T5 = f"ILSVRC/Data/CLS-LOC/train/{T}/{T}_5.JPEG"


@pytest.mark.parametrize("damage", ["undecodable JPEG in a class tar", "stored zip member with a flipped byte",
                                    "deflated zip member with a flipped byte", "zip member without its local header"])
def test_unreadable_member_fails_the_build_or_is_skipped(data, reference, tmp_path, capsys, damage):
    if damage == "undecodable JPEG in a class tar":
        data_dir = corrupt_jpeg_in_class_tar(data, tmp_path / "tars")
        member = f"{data_dir / TRAIN_TAR}:{T}.tar/{T}_5.JPEG"
    else:
        data_dir = tmp_path / "zips" / KAGGLE_ZIP
        deflated = damage.startswith("deflated")
        write_kaggle_zip(data_dir, data.kaggle.root, deflate=lambda name, number: deflated or not name.endswith("JPEG"))
        local = zip_local_offsets(data_dir)[ZIP_T5][0]
        damage_zip_member(data_dir, ZIP_T5, "header" if "local header" in damage else "data")
        member = f"{data_dir}:{ZIP_T5}"
    code, out, err = run_main(cli(data, data_dir, tmp_path / "out"), capsys)
    assert (code, out) == (1, "")
    line = assert_one_error_line(err)
    assert line.startswith(f"{PREFIX} cannot read image {member}: "), line
    reason = line.removeprefix(f"{PREFIX} cannot read image {member}: ")
    if damage.startswith("stored"):
        assert reason == "CRC-32 mismatch; the zip is damaged, download it again"
    elif damage.startswith("deflated"):
        assert reason.endswith("; the zip is damaged, download it again")
    elif "local header" in damage:
        assert reason == f"no local header at byte {local}; the zip is damaged, download it again"
    assert outputs(tmp_path / "out") == []
    # --on_error skip leaves the member out and packs the rest
    result = pack(data, data_dir, tmp_path / "skipped", on_error="skip")
    skipped = TRAIN_PATHS.index(f"{T}/{T}_5.JPEG")
    z, full = read_npz(result.archive), read_npz(reference.archive)
    keep = [i for i in range(len(TRAIN_IDS)) if i != skipped]
    assert z["train_id"].tolist() == [TRAIN_IDS[i] for i in keep]
    assert z["y_train"].tolist() == [TRAIN_LABELS[i] for i in keep]
    assert np.array_equal(z["X_train"], full["X_train"][keep])
    for key in ("X_val", "y_val", "val_id"):
        assert np.array_equal(z[key], full[key]), key
    assert manifest_of(result)["skipped"] == [{"split": "train", "path": f"{T}/{T}_5.JPEG", "reason": reason}]
    assert result.notes == (f"left out 1 unreadable images (listed in the manifest): {T}/{T}_5.JPEG ({reason})",)


@pytest.mark.parametrize("content", [b"\xff\xd8\xff\xe0 a JPEG start, then nothing " * 20,
                                     b"not an image at all " * 20], ids=["truncated JPEG", "not an image"])
def test_skipped_member_is_recorded_as_the_extracted_file_is(data, tmp_path, content):
    """The manifest's skipped list (path and reason) of a build from the train tar is that of the
    same build from the extracted tree: it names the image, and is the same from run to run."""
    tree = copy_tree(data.plain.data_dir, tmp_path / "CLS-LOC")
    (tree / "train" / T / f"{T}_5.JPEG").write_bytes(content)
    folder = tmp_path / "tars"
    write_train_tar(folder / TRAIN_TAR, train_files(tree / "train"))
    os.symlink(data.tars / VAL_TAR, folder / VAL_TAR)
    write_train_cls_with_table_ids(tree / "train_cls.txt")
    extracted = pack(data, tree, tmp_path / "extracted", on_error="skip")
    packed = pack(data, folder, tmp_path / "packed", on_error="skip")
    assert packed.sha256 == extracted.sha256
    skipped = manifest_of(extracted)["skipped"]
    assert [(s["split"], s["path"]) for s in skipped] == [("train", f"{T}/{T}_5.JPEG")]
    assert manifest_of(packed)["skipped"] == skipped
    assert packed.notes == extracted.notes


def test_a_file_that_is_not_an_archive_as_data_dir(data, tmp_path, capsys):
    path = tmp_path / "notes.txt"
    path.write_text("not an archive\n" * 100)
    assert_fails(cli(data, path, tmp_path / "out"), capsys, tmp_path / "out",
                 f"--data_dir {path} is a file but not an ImageNet archive (a tar of class tars, a tar of val images, "
                 f"or {KAGGLE_ZIP}); pass the folder holding train/ and val/ or the archives")


def test_a_gzip_compressed_download_is_refused_with_a_hint(data, tmp_path, capsys):
    folder = tmp_path / "downloads"
    folder.mkdir()
    (folder / "ILSVRC2017_CLS-LOC.tar.gz").write_bytes(b"\x1f\x8b" + bytes(100))
    assert_fails(cli(data, folder, tmp_path / "out"), capsys, tmp_path / "out",
                 f"--data_dir {folder} has no train/ folder, {TRAIN_TAR} or {KAGGLE_ZIP}; ILSVRC2017_CLS-LOC.tar.gz "
                 f"is gzip-compressed and cannot be read by offset: extract it, or use the uncompressed {TRAIN_TAR} "
                 f"and {VAL_TAR}; pass the folder holding train/ and val/ (e.g. ILSVRC/Data/CLS-LOC) or the archives")


@pytest.mark.parametrize("damage", ["truncated train tar", "bad gzip devkit", "truncated zip"])
def test_a_failed_build_leaves_no_out_dir_it_created(data, downloads, zip_copy, tmp_path, capsys, damage):
    """README: no error "leaves behind an --out_dir the run created" -- the default member index
    lives in <out_dir>/.archive_index, made while the archives are scanned."""
    data_dir = downloads
    if damage == "truncated train tar":
        (downloads / TRAIN_TAR).write_bytes((downloads / TRAIN_TAR).read_bytes()[:30000])
    elif damage == "bad gzip devkit":
        (downloads / DEVKIT).write_bytes(b"this is not gzip\n" * 64)
    else:
        zip_copy.write_bytes(zip_copy.read_bytes()[:-100])
        data_dir = zip_copy
    out = tmp_path / "new" / "out"
    code, _, err = run_main(cli(data, data_dir, out), capsys)
    assert code == 1
    assert_one_error_line(err)
    assert not out.exists(), sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert not out.parent.exists()


# =========================================================================== 6. recipes across forms

def test_manifest_paths_are_relative_to_the_split_folders(reference):
    sources_ = manifest_of(reference)["sources"]
    assert sources_["train"]["root"] == "train" and sources_["val"]["root"] == "val"
    assert sources_["train"]["paths"] == TRAIN_PATHS
    assert sources_["train"]["ids"] == TRAIN_IDS and sources_["train"]["labels"] == TRAIN_LABELS
    assert sources_["val"]["paths"] == VAL_PATHS


def test_recipe_from_the_extracted_tree_rebuilds_from_the_archives(data, reference, tmp_path):
    tree = copy_tree(data.plain.data_dir, tmp_path / "CLS-LOC")
    write_train_cls_with_table_ids(tree / "train_cls.txt")
    recipe = pack(data, tree, tmp_path / "recipe").manifest
    assert json.loads(Path(recipe).read_text())["sources"]["train"]["paths"] == TRAIN_PATHS
    for name, data_dir in (("tars", data.tars), ("zip", data.zip), ("train tar", data.tars / TRAIN_TAR)):
        report = rebuild_from_recipe(recipe, str(data_dir), out_dir=str(tmp_path / name), workers=1, progress=False)
        assert report.archive_matches, name
        assert report.metadata_matches, name
        assert report.differing_images == ()
        assert report.result.sha256 == reference.sha256


def test_recipe_from_the_archives_rebuilds_from_the_extracted_tree(data, reference, tmp_path, capsys):
    """``imagenet-subset build --recipe`` both ways; the recipe carries the ids, so even the extracted
    tree without train_cls.txt rebuilds the tars' archive."""
    for name, data_dir in (("plain", data.plain.data_dir), ("kaggle", data.kaggle.data_dir), ("zip", data.zip)):
        code, out, err = run_main(["build", "--recipe", reference.manifest, "--data_dir", data_dir, "--out_dir",
                                   tmp_path / name, "--workers", "1", "--quiet", "--index_dir", tmp_path / "index"],
                                  capsys)
        assert (code, err) == (0, ""), name
        assert out.splitlines()[1] == (f"archive identical to the recipe (sha256 {reference.sha256}); "
                                       "metadata CSV identical"), name
        assert sha256(tmp_path / name / "mine_cls.npz") == reference.sha256
    assert [p.name for p in (tmp_path / "index").iterdir()] == [f"{KAGGLE_ZIP}.{digest12(data.zip)}"]


def test_recipe_image_missing_from_the_archive_is_named(data, reference, tmp_path, capsys):
    folder = tmp_path / "tars"
    classes = dict(data.train)
    classes[T] = [(name, content) for name, content in classes[T] if name != f"{T}_5.JPEG"]
    write_train_tar(folder / TRAIN_TAR, classes)
    os.symlink(data.tars / VAL_TAR, folder / VAL_TAR)
    code, out, err = run_main(["build", "--recipe", reference.manifest, "--data_dir", folder, "--out_dir",
                               tmp_path / "out", "--workers", "1", "--quiet"], capsys)
    assert (code, out) == (1, "")
    line = assert_one_error_line(err, f"1 images of the recipe are missing from {folder}: train/{T}/{T}_5.JPEG")
    assert line.startswith(f"{PREFIX} 1 images of the recipe")
    assert outputs(tmp_path / "out") == []


# =========================================================================== 7. classes

CLASSES_TABLE = [
    f"{'WNID':<10} {'train':>6} {'val':>5}  human_label",
    f"{T:<10} {11:>6} {3:>5}  tench",
    f"{C:<10} {3:>6} {2:>5}  black-and-tan_coonhound",
    f"{W:<10} {2:>6} {2:>5}  Walker_hound",
    f"{F:<10} {4:>6} {3:>5}  English_foxhound",
    "4 classes, 20 train and 10 val images",
]


@pytest.mark.parametrize("form", ["tars", "zip", "train tar"])
def test_classes_lists_the_archives_classes_with_counts(data, tmp_path, capsys, form):
    data_dir = {"tars": data.tars, "zip": data.zip, "train tar": data.tars / TRAIN_TAR}[form]
    code, out, err = run_main(["classes", "--data_dir", data_dir, "--out_dir", tmp_path / "out"], capsys)
    assert (code, err) == (0, "")
    assert out.splitlines() == CLASSES_TABLE
    code, out, err = run_main(["classes", "--data_dir", data_dir, "--out_dir", tmp_path / "out", "--search",
                               "hound"], capsys)
    assert (code, err) == (0, "")
    hound = "entity > physical entity > object > whole > living thing > organism > animal > domestic animal > dog " \
            "> hunting dog > hound"
    assert out.splitlines() == [CLASSES_TABLE[0], f"{CLASSES_TABLE[2]}  [{hound} > coonhound]",
                                f"{CLASSES_TABLE[3]}  [{hound} > foxhound]",
                                f"{CLASSES_TABLE[4]}  [{hound} > foxhound]", "3 classes, 9 train and 7 val images"]


# =========================================================================== 8. workers

@pytest.mark.slow
@pytest.mark.parametrize("form", ["tars", "zip"])
def test_two_workers_read_members_as_one_does(tmp_path, form):
    """70 train images (three chunks of 32 rows) read by offset in worker processes."""
    counts = {T: 40, C: 30}
    tree = write_tree(tmp_path / "kaggle", counts=counts, val={293: T, 327: C, 2138: T}, images=IMAGES,
                      names={w: HUMAN[w] for w in counts})
    if form == "tars":
        data_dir = tmp_path / "tars"
        write_train_tar(data_dir / TRAIN_TAR, train_files(tree.train_dir))
        write_val_tar(data_dir / VAL_TAR, val_files(tree.val_dir))
    else:
        data_dir = write_kaggle_zip(tmp_path / "zip" / KAGGLE_ZIP, tree.root)
    class_list = write_list(tmp_path / "two.txt", [C, T])
    one = build(class_list, data_dir, tmp_path / "one", workers=1, **SIZES)
    two = build(class_list, data_dir, tmp_path / "two", workers=2, **SIZES)
    assert one.counts == {"train": 70, "val": 3}
    assert two.sha256 == one.sha256 == sha256(two.archive)
    assert manifest_of(two)["build"]["workers"] == 2
    z = read_npz(two.archive)
    paths = sorted(tree.train_dir.glob("*/*.JPEG"), key=lambda p: (p.parent.name, p.stem))
    assert_rows_are(z["X_train"], paths, crop=24)


@pytest.mark.slow
def test_console_script_packs_the_zip_with_worker_processes(data, reference, tmp_path):
    script = Path(PYTHON).parent / "imagenet-subset"
    args = cli(data, data.zip, tmp_path / "out")
    args[args.index("--workers") + 1] = "2"
    run = subprocess.run([str(script), *args], capture_output=True, text=True, env=subprocess_env(), timeout=120,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    assert sha256(tmp_path / "out" / "mine_cls.npz") == reference.sha256
    assert (tmp_path / "out" / "mine_cls_metadata.csv").read_bytes() == Path(reference.metadata).read_bytes()


# =========================================================================== the scanners, against tarfile and zipfile

def regular_files(raw: bytes) -> list[tuple[str, int, int]]:
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        return [(m.name, m.offset_data, m.size) for m in tar.getmembers() if m.isreg()]


LONG = "a-folder-with-a-long-name/" * 5 + "and-a-file-whose-name-is-long-too.JPEG"


@pytest.mark.parametrize("tar_format", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_scan_tar_finds_what_tarfile_finds(tmp_path, tar_format):
    files = [("short.JPEG", b"x" * 100), (LONG, b"y" * 512), ("empty", b""), ("one-block-and-a-byte", b"z" * 513),
             ("ünïcode.JPEG", b"u" * 10)]
    if tar_format == tarfile.USTAR_FORMAT:
        files = [(name, content) for name, content in files if name.isascii()]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tar_format) as tar:
        for name, content in files:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        folder = tarfile.TarInfo("a-folder")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        link = tarfile.TarInfo("link.JPEG")
        link.type, link.linkname = tarfile.SYMTYPE, "short.JPEG"
        tar.addfile(link)
    path = tmp_path / "x.tar"
    path.write_bytes(out.getvalue())
    members = list(scan_tar(str(path)))
    assert [(m.path, m.offset, m.size) for m in members] == regular_files(out.getvalue())
    assert [m.path for m in members] == [name for name, _ in files]
    assert [m.read() for m in members] == [content for _, content in files]
    assert members[0].name == f"{path}:short.JPEG"


def test_scan_tar_reads_base256_sizes(tmp_path):
    raw = tar_bytes([("first.JPEG", b"a" * 700), ("second.JPEG", b"b" * 30)])
    path = tmp_path / "x.tar"
    path.write_bytes(raw)
    patch_tar_header(path, 0, SIZE_FIELD, b"\x80" + (700).to_bytes(11, "big"))  # as GNU tar writes >= 8 GiB
    assert regular_files(path.read_bytes()) == [("first.JPEG", 512, 700), ("second.JPEG", 2048, 30)]
    assert [(m.path, m.offset, m.size) for m in scan_tar(str(path))] == [("first.JPEG", 512, 700),
                                                                       ("second.JPEG", 2048, 30)]


def test_scan_tar_of_a_window_prefixes_the_label(tmp_path):
    inner = tar_bytes([("b.JPEG", b"b" * 600), ("a.JPEG", b"a" * 3)])
    path = tmp_path / "outer.tar"
    path.write_bytes(tar_bytes([("first.tar", inner), ("n01440764.tar", inner)]))
    _, start, size = tar_members(path.read_bytes())["n01440764.tar"]
    members = list(scan_tar(str(path), start, size, "n01440764.tar/"))
    assert [(m.path, m.offset - start, m.size) for m in members] == [
        ("n01440764.tar/b.JPEG", 512, 600), ("n01440764.tar/a.JPEG", 2048, 3)]
    assert [m.read() for m in members] == [b"b" * 600, b"a" * 3]


def test_tar_name_field_damage_names_the_header(tmp_path):
    path = tmp_path / "x.tar"
    path.write_bytes(tar_bytes([("a.JPEG", b"a" * 600), ("b.JPEG", b"b")]))
    patch_tar_header(path, 1536, NAME_FIELD, b"c.JPEG".ljust(100, b"\0"), fix_checksum=False)
    with pytest.raises(UserError) as error:
        list(scan_tar(str(path)))
    assert str(error.value) == (f"{path} (header at byte 1536): damaged tar header (checksum mismatch); "
                                "download the archive again")


@pytest.mark.parametrize("form", ["stored and deflated", "force_zip64", "zip64 by hand"])
def test_scan_zip_finds_what_zipfile_finds(tmp_path, form):
    files = [("top.txt", b"t" * 10), ("d/one.JPEG", bytes(range(256)) * 20), ("d/e/two.JPEG", b"\x00" * 5000),
             ("d/empty", b"")]
    path = tmp_path / "x.zip"
    if form == "zip64 by hand":
        write_zip64(path, files)
    else:
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr(zipfile.ZipInfo("d/"), b"")
            for k, (name, content) in enumerate(files):
                info = zipfile.ZipInfo(name)
                info.compress_type = zipfile.ZIP_DEFLATED if k % 2 else zipfile.ZIP_STORED
                with zf.open(info, "w", force_zip64=form == "force_zip64") as f:
                    f.write(content)
            zf.comment = b"a comment at the end"
    members = list(scan_zip(str(path)))
    with zipfile.ZipFile(path) as zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        assert [(m.path, m.offset, m.size, m.method, m.crc32, m.file_size) for m in members] == [
            (i.filename, i.header_offset, i.compress_size, i.compress_type, i.CRC, i.file_size) for i in infos]
    assert [m.read() for m in members] == [content for _, content in files]


def test_zip_member_of_an_unsupported_method_or_encrypted(tmp_path):
    path = tmp_path / "x.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_BZIP2) as zf:
        zf.writestr("a.JPEG", b"a" * 100)
    (member,) = scan_zip(str(path))
    with pytest.raises(UserError) as error:
        member.read()
    assert str(error.value) == (f"{path}:a.JPEG: zip compression method 12 is not supported (only stored and "
                                "deflated); recompress the zip or extract it")
    raw = bytearray(path.read_bytes())
    central = central_directory_offset(path)
    raw[central + 8] |= 1  # the encrypted flag
    path.write_bytes(bytes(raw))
    with pytest.raises(UserError) as error:
        list(scan_zip(str(path)))
    assert str(error.value) == f"{path}: member a.JPEG is encrypted; extract the zip with its password"


def test_member_read_of_a_truncated_archive(tmp_path):
    path = tmp_path / "x.tar"
    path.write_bytes(tar_bytes([("a.JPEG", b"a" * 2000)]))
    member = Member(str(path), "a.JPEG", 512, 2000)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(UserError) as error:
        member.read()
    assert str(error.value) == (f"{path}:a.JPEG: ends after 488 of its 2000 bytes; the archive is truncated, "
                                "download it again")
