"""Each supported ILSVRC layout, built in tmp_path: labels, ids, row order and row contents.

The trees (helpers.py) hold classes A, B, C, D; the subset lists them as C, A, B
(not sorted), so label 0 is C, 1 is A, 2 is B, and D is left out. Sorted by path
the train images are A_1 A_10 A_11 A_2 .. A_9 (ids 1-11), D_1 D_2 (12-13),
B_1 .. B_3 (14-16), C_1 .. C_4 (17-20).
"""
import json
from pathlib import Path

import numpy as np
import pytest

from helpers import (A, B, C, D, NAMES, SUBSET, TRAIN_COUNTS, VAL_LABELS, TreeWriter, assert_rows_are, build,
                     kaggle_tree, plain_tree, read_npz, sha256, write_annotations, write_ground_truth,
                     write_list, write_map_clsloc, write_synset_mapping, write_train_cls, write_val_solution)
from packer import UserError
from packer.labelfiles import builtin_classes, builtin_val_labels
from packer.tree import find_tree

TRAIN_FILES = ([f"{A}/{A}_{k}.JPEG" for k in (1, 10, 11, 2, 3, 4, 5, 6, 7, 8, 9)]
               + [f"{B}/{B}_{k}.JPEG" for k in (1, 2, 3)] + [f"{C}/{C}_{k}.JPEG" for k in (1, 2, 3, 4)])
TRAIN_IDS = list(range(1, 12)) + [14, 15, 16] + [17, 18, 19, 20]
TRAIN_LABELS = [1] * 11 + [2] * 3 + [0] * 4
VAL_IDS = [1, 2, 4, 5, 7, 8, 9, 12]
VAL_LABELS_OF_SUBSET = [2, 1, 0, 1, 2, 0, 0, 1]

CLSLOC_IDS = {A: 449, B: 218, C: 492, D: 11}


def check_archive(archive, tree):
    z = read_npz(archive)
    for key in ("y_train", "train_id", "y_val", "val_id"):
        assert z[key].dtype == np.int32, key
    assert z["X_train"].dtype == np.uint8 and z["X_val"].dtype == np.uint8
    assert z["y_train"].tolist() == TRAIN_LABELS
    assert z["train_id"].tolist() == TRAIN_IDS
    assert z["y_val"].tolist() == VAL_LABELS_OF_SUBSET
    assert z["val_id"].tolist() == VAL_IDS
    assert_rows_are(z["X_train"], [tree.train_dir / f for f in TRAIN_FILES])
    assert_rows_are(z["X_val"], [tree.val_path(n) for n in VAL_IDS])
    # the helper's own bookkeeping agrees with the hand-written expectation
    paths, labels, ids = tree.expected_train(SUBSET)
    assert [p.relative_to(tree.train_dir).as_posix() for p in paths] == TRAIN_FILES
    assert ids.tolist() == TRAIN_IDS and labels.tolist() == TRAIN_LABELS


@pytest.fixture
def class_list(tmp_path):
    return write_list(tmp_path / "lists" / "mine.txt", SUBSET)


def test_kaggle_layout(tmp_path, class_list):
    tree = kaggle_tree(tmp_path / "kaggle")
    result = build(class_list, tree.data_dir, tmp_path / "out")
    assert result.name == "mine"
    assert result.archive == tmp_path / "out" / "mine_cls.npz"
    assert result.metadata == tmp_path / "out" / "mine_cls_metadata.csv"
    assert result.counts == {"train": 18, "val": 8}
    assert result.num_classes == 3
    check_archive(result.archive, tree)


def test_kaggle_layout_2_workers(tmp_path, class_list):
    tree = kaggle_tree(tmp_path / "kaggle")
    check_archive(build(class_list, tree.data_dir, tmp_path / "out", workers=2).archive, tree)


def test_devkit_given_with_devkit_dir(tmp_path, class_list):
    tree = plain_tree(tmp_path / "tree" / "CLS-LOC")
    devkit = tmp_path / "elsewhere" / "ILSVRC2015_devkit"
    write_map_clsloc(devkit / "map_clsloc.txt", {w: (CLSLOC_IDS[w], f"name_of_{w}") for w in (A, B, C, D)})
    write_ground_truth(devkit / "ILSVRC2015_clsloc_validation_ground_truth.txt", VAL_LABELS, CLSLOC_IDS)
    # without the devkit, the val images are labelled by the built-in ILSVRC2012 labels of their numbers
    unlabelled_here = build(class_list, tree.data_dir, tmp_path / "builtin")
    builtin = builtin_val_labels()
    expected = [n for n in sorted(VAL_LABELS) if builtin[n] in SUBSET]
    assert read_npz(unlabelled_here.archive)["val_id"].tolist() == expected
    manifest = json.loads(Path(unlabelled_here.manifest).read_text())
    assert manifest["sources"]["val"]["label_source"] == "built-in ILSVRC2012 validation labels"
    result = build(class_list, tree.data_dir, tmp_path / "out", devkit_dir=str(devkit))
    check_archive(result.archive, tree)


def test_devkit_found_beside_the_data(tmp_path, class_list):
    root = tmp_path / "imagenet"
    tree = plain_tree(root / "CLS-LOC")
    write_map_clsloc(root / "devkit" / "data" / "map_clsloc.txt",
                     {w: (CLSLOC_IDS[w], f"name_of_{w}") for w in (A, B, C, D)})
    write_ground_truth(root / "devkit" / "data" / "ILSVRC2015_clsloc_validation_ground_truth.txt",
                       VAL_LABELS, CLSLOC_IDS)
    check_archive(build(class_list, tree.data_dir, tmp_path / "out").archive, tree)


def test_devkit_2012_ground_truth(tmp_path, class_list):
    tree = plain_tree(tmp_path / "tree" / "train_val")
    devkit = tmp_path / "ILSVRC2012_devkit_t12"
    write_map_clsloc(devkit / "data" / "map_clsloc.txt", {w: (CLSLOC_IDS[w], f"name_of_{w}") for w in (A, B, C, D)})
    write_ground_truth(devkit / "data" / "ILSVRC2012_validation_ground_truth.txt", VAL_LABELS, CLSLOC_IDS)
    check_archive(build(class_list, tree.data_dir, tmp_path / "out", devkit_dir=devkit).archive, tree)


def test_val_sorted_into_class_folders(tmp_path, class_list):
    tree = plain_tree(tmp_path / "tree", sorted_val=True)
    assert (tree.val_dir / C / "ILSVRC2012_val_00000004.JPEG").is_file()
    result = build(class_list, tree.data_dir, tmp_path / "out")
    check_archive(result.archive, tree)


def test_annotations_only(tmp_path, class_list):
    tree = kaggle_tree(tmp_path / "kaggle", solution=False, annotations=True)
    assert not (tmp_path / "kaggle" / "LOC_val_solution.csv").exists()
    check_archive(build(class_list, tree.data_dir, tmp_path / "out").archive, tree)


def test_no_train_cls_uses_sorted_listing_of_whole_tree(tmp_path, class_list):
    tree = kaggle_tree(tmp_path / "kaggle", train_cls=False)
    assert not list(tmp_path.glob("kaggle/**/train_cls.txt"))
    check_archive(build(class_list, tree.data_dir, tmp_path / "out").archive, tree)


def test_no_train_cls_gives_identical_output_for_complete_tree(tmp_path, class_list):
    with_file = kaggle_tree(tmp_path / "with")
    without = kaggle_tree(tmp_path / "without", train_cls=False)
    first = build(class_list, with_file.data_dir, tmp_path / "out1")
    second = build(class_list, without.data_dir, tmp_path / "out2")
    assert sha256(first.archive) == sha256(second.archive)
    assert first.metadata.read_bytes() == second.metadata.read_bytes()


def test_train_cls_order_and_ids_are_taken_from_the_file(tmp_path):
    """ids are the file's numbers (not recomputed), images not listed are left out with a note."""
    tree = kaggle_tree(tmp_path / "kaggle", train_cls=False)
    lines = [f"{A}/{A}_1 1", f"{A}/{A}_10 2", f"{A}/{A}_2 5", f"{D}/{D}_1 6", f"{B}/{B}_3 9"]
    path = tmp_path / "kaggle" / "ILSVRC" / "ImageSets" / "CLS-LOC" / "train_cls.txt"
    path.write_text("\n".join(lines) + "\n")
    result = build(write_list(tmp_path / "ab.txt", [B, A]), tree.data_dir, tmp_path / "out")
    z = read_npz(result.archive)
    assert z["train_id"].tolist() == [1, 2, 5, 9]
    assert z["y_train"].tolist() == [1, 1, 1, 0]
    assert_rows_are(z["X_train"], [tree.train_dir / f"{A}/{A}_1.JPEG", tree.train_dir / f"{A}/{A}_10.JPEG",
                                   tree.train_dir / f"{A}/{A}_2.JPEG", tree.train_dir / f"{B}/{B}_3.JPEG"])
    # 11 + 3 images of A and B on disk, 4 listed
    assert any("10 train images not listed" in note and "train_cls.txt" in note for note in result.notes), result.notes


def test_train_cls_not_grouped_by_class(tmp_path):
    """Rows follow the file even when a class's lines are not together; the note counts each image once."""
    tree = kaggle_tree(tmp_path / "kaggle", train_cls=False)
    lines = [f"{A}/{A}_1 1", f"{B}/{B}_1 2", f"{A}/{A}_2 3"]
    path = tmp_path / "kaggle" / "ILSVRC" / "ImageSets" / "CLS-LOC" / "train_cls.txt"
    path.write_text("\n".join(lines) + "\n")
    result = build(write_list(tmp_path / "ab.txt", [A, B]), tree.data_dir, tmp_path / "out")
    z = read_npz(result.archive)
    assert z["train_id"].tolist() == [1, 2, 3] and z["y_train"].tolist() == [0, 1, 0]
    assert_rows_are(z["X_train"], [tree.train_dir / f"{A}/{A}_1.JPEG", tree.train_dir / f"{B}/{B}_1.JPEG",
                                   tree.train_dir / f"{A}/{A}_2.JPEG"])
    # A has 11 images, B 3; 3 are listed
    assert [n for n in result.notes if "not listed" in n] == [f"11 train images not listed in {path} were left out"]


def test_note_counts_images_of_a_class_missing_from_train_cls(tmp_path):
    tree = kaggle_tree(tmp_path / "kaggle", train_cls=False)
    path = tmp_path / "kaggle" / "ILSVRC" / "ImageSets" / "CLS-LOC" / "train_cls.txt"
    path.write_text(f"{A}/{A}_1 1\n{A}/{A}_2 2\n")
    result = build(write_list(tmp_path / "ab.txt", [A, B]), tree.data_dir, tmp_path / "out")
    assert read_npz(result.archive)["train_id"].tolist() == [1, 2]
    # 9 more images of A and the 3 of B are on disk but not listed
    assert [n for n in result.notes if "not listed" in n] == [f"12 train images not listed in {path} were left out"]


def test_sorted_listing_accepts_other_extensions_and_skips_other_files(tmp_path):
    data_dir = tmp_path / "tree"
    writer = TreeWriter()
    folder = data_dir / "train" / A
    for name in (f"{A}_3.jpg", f"{A}_1.png", f"{A}_2.JPEG", f"{A}_10.JPG", f"{A}_4.jpeg"):
        writer.image(folder / name)
    (folder / "README.txt").write_text("not an image\n")
    (folder / "Thumbs.db").write_bytes(b"\0" * 10)
    writer.train(data_dir, {B: 2})
    writer.val_sorted(data_dir, {3: A, 1: B, 2: A})
    result = build(write_list(tmp_path / "ab.txt", [A, B]), data_dir, tmp_path / "out")
    z = read_npz(result.archive)
    order = [f"{A}_1.png", f"{A}_10.JPG", f"{A}_2.JPEG", f"{A}_3.jpg", f"{A}_4.jpeg"]
    assert_rows_are(z["X_train"], [folder / n for n in order]
                    + [data_dir / "train" / B / f"{B}_{k}.JPEG" for k in (1, 2)])
    assert z["train_id"].tolist() == [1, 2, 3, 4, 5, 6, 7]
    assert z["y_train"].tolist() == [0, 0, 0, 0, 0, 1, 1]
    assert z["val_id"].tolist() == [1, 2, 3] and z["y_val"].tolist() == [1, 0, 0]
    assert_rows_are(z["X_val"], [data_dir / "val" / B / "ILSVRC2012_val_00000001.JPEG",
                                 data_dir / "val" / A / "ILSVRC2012_val_00000002.JPEG",
                                 data_dir / "val" / A / "ILSVRC2012_val_00000003.JPEG"])


def test_val_solution_wins_over_other_sources(tmp_path, class_list):
    """LOC_val_solution.csv comes before the annotations: a disagreeing XML is not read."""
    tree = kaggle_tree(tmp_path / "kaggle", annotations=True)
    wrong = {n: (A if w != A else B) for n, w in VAL_LABELS.items()}
    write_annotations(tmp_path / "kaggle" / "ILSVRC" / "Annotations" / "CLS-LOC" / "val", wrong)
    check_archive(build(class_list, tree.data_dir, tmp_path / "out").archive, tree)


def test_sorted_val_wins_over_solution_csv(tmp_path, class_list):
    tree = plain_tree(tmp_path / "kaggle" / "ILSVRC" / "Data" / "CLS-LOC", sorted_val=True)
    wrong = {n: (A if w != A else B) for n, w in VAL_LABELS.items()}
    write_val_solution(tmp_path / "kaggle" / "LOC_val_solution.csv", wrong)
    write_synset_mapping(tmp_path / "kaggle" / "LOC_synset_mapping.txt", NAMES)
    check_archive(build(class_list, tree.data_dir, tmp_path / "out").archive, tree)


def test_label_files_left_in_aux_files_are_used(tmp_path, class_list, _isolated_cwd):
    """The original script kept label files in ./aux_files; they are still found there."""
    tree = plain_tree(tmp_path / "tree" / "CLS-LOC")
    aux = _isolated_cwd / "aux_files"
    write_train_cls(aux / "ImageSets" / "CLS-LOC" / "train_cls.txt", tree.train)
    write_map_clsloc(aux / "map_clsloc.txt", {w: (CLSLOC_IDS[w], f"name_of_{w}") for w in (A, B, C, D)})
    write_ground_truth(aux / "ILSVRC2015_clsloc_validation_ground_truth.txt", VAL_LABELS, CLSLOC_IDS)
    result = build(class_list, tree.data_dir, tmp_path / "out")
    check_archive(result.archive, tree)
    # every image is listed in train_cls.txt; the 4-class map_clsloc.txt names the classes and the
    # built-in class table gives the 0-999 index
    assert result.notes == ()
    metadata = Path(result.metadata).read_text().splitlines()
    assert metadata[1].split(",")[:5] == ["0", SUBSET[0], f"name_of_{SUBSET[0]}", str(CLSLOC_IDS[SUBSET[0]]),
                                          str(sorted(builtin_classes()).index(SUBSET[0]))]


def test_subset_with_no_val_images(tmp_path):
    tree = kaggle_tree(tmp_path / "kaggle", val={1: B, 2: D})
    result = build(write_list(tmp_path / "ca.txt", [C, A]), tree.data_dir, tmp_path / "out")
    z = read_npz(result.archive)
    assert z["X_val"].shape == (0, 224, 224, 3) and z["X_val"].dtype == np.uint8
    assert z["y_val"].shape == (0,) and z["y_val"].dtype == np.int32
    assert z["val_id"].shape == (0,) and z["val_id"].dtype == np.int32
    assert z["train_id"].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 17, 18, 19, 20]
    assert result.counts == {"train": 15, "val": 0}
    assert TRAIN_COUNTS[A] == 11


def test_other_sizes_in_a_build(tmp_path, class_list):
    tree = kaggle_tree(tmp_path / "kaggle")
    result = build(class_list, tree.data_dir, tmp_path / "out", resize_size=40, crop_size=32)
    z = read_npz(result.archive)
    assert z["X_train"].shape == (18, 32, 32, 3) and z["X_val"].shape == (8, 32, 32, 3)
    assert_rows_are(z["X_train"], [tree.train_dir / f for f in TRAIN_FILES], crop=32)
    assert_rows_are(z["X_val"], [tree.val_path(n) for n in VAL_IDS], crop=32)


def test_with_train_cls_only_the_subset_folders_are_listed(tmp_path, class_list, monkeypatch):
    """README: with train_cls.txt, no folder of a class outside the subset is listed."""
    import os

    tree = kaggle_tree(tmp_path / "kaggle")
    listed = []
    real_scandir = os.scandir

    def recording_scandir(path="."):
        if isinstance(path, (str, os.PathLike)):  # (shutil.rmtree lists by file descriptor)
            listed.append(os.path.abspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", recording_scandir)
    check_archive(build(class_list, tree.data_dir, tmp_path / "out").archive, tree)
    assert str(tree.train_dir / A) in listed  # the recording works
    assert not [p for p in listed if p.startswith(str(tree.train_dir / D))]
