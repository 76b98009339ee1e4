"""What a new user trips over: a devkit beside ILSVRC/, empty metadata columns, misleading messages,
``--search`` taking classes the tree lacks, and pickled members in an archive.

Trees come from helpers.py (classes A, B, C, D; the subset lists C, A, B). Every
message is checked word for word, through ``packer.cli.main`` where the command
line is what a user sees: exit code 1 and one line on stderr.

The built-in ILSVRC class table fills the metadata of every real ImageNet class the tree's
files leave out (C n03000684 chain_saw, CLS-LOC id 382, index 491; A n01440764 tench, 449, 0;
B n02102040 English_springer, 5, 217), so the notes on empty metadata columns are exercised
with X, a made-up WNID outside ImageNet's 1,000.
"""
import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

import packer
from helpers import (A, B, C, D, NAMES, REPO, SUBSET, TRAIN_COUNTS, VAL_LABELS, assert_one_error_line, build,
                     kaggle_tree, plain_tree, read_npz, run_main, wnid, write_ground_truth, write_list,
                     write_map_clsloc)
from packer import BuildOptions, UserError
from packer.plan import plan_build

CLSLOC_IDS = {A: 449, B: 218, C: 492, D: 11}
BUILTINS = ", ".join(sorted(p.stem for p in (REPO / "packer" / "lists").glob("*.txt")))
HUMAN = "human_label (from LOC_synset_mapping.txt or map_clsloc.txt)"
ORIGINAL = "original_label (from map_clsloc.txt)"
# A class outside ImageNet's 1,000: the built-in class table knows nothing of it.
X = wnid(42)
X_NAME = "made-up class"
X_COUNTS = TRAIN_COUNTS | {X: 2}
X_VAL = VAL_LABELS | {14: X, 15: X}
X_SUBSET = [C, X, A]


def _gaps(looked: str, *columns: str) -> str:
    """The note on metadata columns whose label files were not found."""
    return (f"metadata columns left empty: {'; '.join(columns)}: not found in {looked}; "
            "pass --devkit_dir DIR to fill them")


def _no_index(*wnids: str) -> str:
    """The note on classes that have no 0-999 index: not among the 1000 (of a file, or built in)."""
    return f"imagenet_index is empty for {', '.join(wnids)}: not among the 1000 ImageNet classes"

SMALL = ["--workers", "1", "--quiet", "--resize_size", "32", "--crop_size", "24"]


def _data_dir(root):
    return root / "ILSVRC" / "Data" / "CLS-LOC"


def _looked_in(root, cwd) -> str:
    """The folders searched for label files of a tree at ``<root>/ILSVRC/Data/CLS-LOC``, run from ``cwd``."""
    data_dir = _data_dir(root)
    return ", ".join(str(p) for p in (data_dir, data_dir.parent, root / "ILSVRC", root, cwd / "aux_files"))


def _clsloc(wnids) -> dict:
    return {w: (CLSLOC_IDS[w], f"name_of_{w}") for w in wnids}


def _thousand_classes(wnids) -> dict:
    """``wnids`` (from CLSLOC_IDS) padded with made-up classes to the 1000 of a real map_clsloc.txt."""
    filler = {wnid(90000000 + k): (1001 + k, f"filler_{k}") for k in range(1000 - len(wnids))}
    return _clsloc(wnids) | filler


def _metadata(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _plan(data_dir, subset_name=None, **options):
    return plan_build(BuildOptions(subset_name=None if subset_name is None else str(subset_name),
                                   data_dir=str(data_dir), **options))


# --------------------------------------------------------------------------- A. a devkit beside ILSVRC/

@pytest.mark.parametrize("devkit", ["devkit", "ILSVRC2012_devkit_t12/data", "ILSVRC2015/devkit/data"])
def test_devkit_beside_ilsvrc_is_found(tmp_path, devkit):
    """Only train/ and val/ in the tree: val labels, human_label and original_label come from
    <root>/<devkit>/ (not from the built-in tables, which say otherwise for these made-up files); the
    4-class map_clsloc.txt gives no index, so the built-in sorted 1000 do."""
    root = tmp_path / "imagenet"
    tree = plain_tree(_data_dir(root))
    write_map_clsloc(root / devkit / "map_clsloc.txt", _clsloc([A, B, C, D]))
    write_ground_truth(root / devkit / "ILSVRC2012_validation_ground_truth.txt", VAL_LABELS, CLSLOC_IDS)
    result = build(write_list(tmp_path / "mine.txt", SUBSET), tree.data_dir, tmp_path / "out",
                   resize_size=32, crop_size=24)
    z = read_npz(result.archive)
    assert z["val_id"].tolist() == [1, 2, 4, 5, 7, 8, 9, 12]
    assert z["y_val"].tolist() == [2, 1, 0, 1, 2, 0, 0, 1]
    rows = _metadata(result.metadata)
    assert [(r["WNID"], r["human_label"], r["original_label"], r["imagenet_index"]) for r in rows] == [
        (C, f"name_of_{C}", "492", "491"), (A, f"name_of_{A}", "449", "0"), (B, f"name_of_{B}", "218", "217")]
    manifest = json.loads(Path(result.manifest).read_text())
    assert manifest["sources"]["val"]["label_source"] == "ILSVRC2012_validation_ground_truth.txt with map_clsloc.txt"
    assert result.notes == ()


@pytest.fixture(scope="module")
def kaggle(module_tmp_path_factory):
    """The Kaggle layout: LOC_synset_mapping.txt names the tree's 4 classes, no map_clsloc.txt anywhere."""
    return kaggle_tree(module_tmp_path_factory.mktemp("kaggle"))


def test_map_clsloc_in_devkit_beside_ilsvrc_fills_original_label(tmp_path):
    tree = kaggle_tree(tmp_path / "kaggle")
    write_map_clsloc(tmp_path / "kaggle" / "devkit" / "map_clsloc.txt", _thousand_classes([A, B, C, D]))
    result = build(write_list(tmp_path / "mine.txt", SUBSET), tree.data_dir, tmp_path / "out",
                   resize_size=32, crop_size=24)
    rows = _metadata(result.metadata)
    # human_label from LOC_synset_mapping.txt (first), original_label and the 0-999 index from map_clsloc.txt
    assert [(r["human_label"], r["original_label"], r["imagenet_index"]) for r in rows] == [
        (NAMES[C], "492", "3"), (NAMES[A], "449", "0"), (NAMES[B], "218", "2")]
    assert result.notes == ()


@pytest.fixture(scope="module")
def outsider(module_tmp_path_factory):
    """The Kaggle layout with X besides A, B, C, D: LOC_synset_mapping.txt names all five, no
    map_clsloc.txt anywhere."""
    return kaggle_tree(module_tmp_path_factory.mktemp("outsider"), counts=X_COUNTS, val=X_VAL,
                       names=NAMES | {X: X_NAME})


def test_real_classes_get_no_note(kaggle, _isolated_cwd):
    """No map_clsloc.txt and a 4-class mapping file: the built-in table fills the rest, no note."""
    assert _plan(kaggle.data_dir, write_list(_isolated_cwd / "mine.txt", SUBSET)).notes == ()


def test_notes_name_the_missing_files(outsider, _isolated_cwd):
    """X is named by the mapping file; nothing gives its CLS-LOC id (no map_clsloc.txt) or its index."""
    looked = _looked_in(outsider.root, _isolated_cwd)
    assert _plan(outsider.data_dir, write_list(_isolated_cwd / "mine.txt", X_SUBSET)).notes == (
        _gaps(looked, ORIGINAL), _no_index(X))


def test_notes_without_any_label_file(tmp_path, _isolated_cwd):
    root = tmp_path / "bare"
    tree = plain_tree(_data_dir(root), counts=X_COUNTS, val=X_VAL, sorted_val=True)
    looked = _looked_in(root, _isolated_cwd)
    assert _plan(tree.data_dir, write_list(tmp_path / "mine.txt", X_SUBSET)).notes == (
        _gaps(looked, HUMAN, ORIGINAL), _no_index(X))


def test_notes_name_the_classes_a_found_file_lacks(tmp_path):
    """Both files are found but neither lists X: the notes say so, for X only."""
    root = tmp_path / "kaggle"
    tree = kaggle_tree(root, counts=X_COUNTS, val=X_VAL, names=NAMES)
    write_map_clsloc(root / "devkit" / "map_clsloc.txt", _thousand_classes([A, B, C, D]))
    mapping, clsloc = root / "LOC_synset_mapping.txt", root / "devkit" / "map_clsloc.txt"
    assert _plan(tree.data_dir, write_list(tmp_path / "mine.txt", [C, X, A, B])).notes == (
        f"human_label is empty for {X}: not named in {mapping} and {clsloc}",
        f"original_label is empty for {X}: not listed in {clsloc}",
        _no_index(X))


def test_groups_and_rest_get_no_note(tmp_path):
    """A group's ids and index, and everything of rest, are empty by design; D, in the group only, is
    missing from map_clsloc.txt and gets no note either."""
    root = tmp_path / "kaggle"
    tree = kaggle_tree(root)
    write_map_clsloc(root / "devkit" / "map_clsloc.txt", _thousand_classes([A, B, C]))
    listed = tmp_path / "groups.txt"
    listed.write_text(f"fish_and_bird: {A} {D}\n{C}\n")
    plan = _plan(tree.data_dir, listed, rest=2)
    assert [label.name for label in plan.subset.labels] == ["fish_and_bird", C, "rest"]
    assert plan.notes == ()


def test_cli_prints_the_note(outsider, tmp_path, capsys):
    listed = write_list(tmp_path / "mine.txt", X_SUBSET)
    code, out, err = run_main(["--subset_name", listed, "--data_dir", outsider.data_dir, "--out_dir",
                               tmp_path / "out", *SMALL], capsys)
    assert code == 0, err
    looked = _looked_in(outsider.root, tmp_path / "cwd")
    assert err.splitlines() == [f"imagenet-subset: note: {_gaps(looked, ORIGINAL)}",
                                f"imagenet-subset: note: {_no_index(X)}"]
    rows = _metadata(tmp_path / "out" / "mine_cls_metadata.csv")
    assert [(r["WNID"], r["human_label"], r["original_label"], r["imagenet_index"]) for r in rows] == [
        (C, NAMES[C], "382", "491"), (X, X_NAME, "", ""), (A, NAMES[A], "449", "0")]


# --------------------------------------------------------------------------- B. messages that mislead

def _build_args(kaggle, subset_name, out_dir, *extra):
    return ["--subset_name", subset_name, "--data_dir", kaggle.data_dir, "--out_dir", out_dir, *SMALL, *extra]


@pytest.mark.parametrize("name", ["aux_files/lists/x.txt", "lists/birds", "birds.txt"])
def test_missing_class_list_file(kaggle, tmp_path, capsys, name):
    code, out, err = run_main(_build_args(kaggle, name, tmp_path / "out"), capsys)
    assert code == 1 and out == ""
    line = assert_one_error_line(err)
    assert line == (f"imagenet-subset: error: class list file {name} does not exist; check the path, "
                    f"or pass a built-in list name ({BUILTINS})")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("relative", [True, False])
def test_folder_as_subset_name(kaggle, tmp_path, capsys, _isolated_cwd, relative):
    (_isolated_cwd / "lists").mkdir()
    name = "lists" if relative else str(_isolated_cwd / "lists")
    code, _, err = run_main(_build_args(kaggle, name, tmp_path / "out"), capsys)
    assert code == 1
    assert assert_one_error_line(err) == (f"imagenet-subset: error: --subset_name {name} is a folder; "
                                          f"pass a class-list file or a built-in list name ({BUILTINS})")


def test_a_list_named_without_a_path_still_resolves(kaggle, _isolated_cwd):
    """aux_files/NAME.txt with a NAME holding a folder still wins over the 'missing file' error."""
    write_list(_isolated_cwd / "aux_files" / "lists" / "birds.txt", [D, A])
    assert _plan(kaggle.data_dir, "lists/birds").subset.wnids == (D, A)


@pytest.mark.parametrize("command", [["build", "--out_dir", "out"], ["classes"]])
def test_file_as_data_dir(tmp_path, capsys, _isolated_cwd, command):
    """A file may be an ImageNet archive; one that is not is refused as such."""
    not_a_folder = tmp_path / "CLS-LOC.tar"
    not_a_folder.write_bytes(b"\0" * 10)
    code, _, err = run_main(command + ["--data_dir", not_a_folder], capsys)
    assert code == 1
    assert assert_one_error_line(err) == (
        f"imagenet-subset: error: --data_dir {not_a_folder} is a file but not an ImageNet archive (a tar of class "
        "tars, a tar of val images, or imagenet-object-localization-challenge.zip); pass the folder holding train/ "
        "and val/ or the archives")
    assert not (_isolated_cwd / "out").exists()


@pytest.mark.parametrize("command", [["build", "--out_dir", "out"], ["classes"]])
def test_missing_data_dir(tmp_path, capsys, _isolated_cwd, command):
    missing = tmp_path / "nowhere"
    code, _, err = run_main(command + ["--data_dir", missing], capsys)
    assert code == 1
    assert assert_one_error_line(err) == (
        f"imagenet-subset: error: --data_dir {missing} does not exist; pass the folder holding train/ and val/ "
        "(e.g. ILSVRC/Data/CLS-LOC) or the ImageNet archives")
    assert not (_isolated_cwd / "out").exists()


def test_file_as_devkit_dir(kaggle, tmp_path, capsys):
    map_file = tmp_path / "map_clsloc.txt"
    write_map_clsloc(map_file, _clsloc([A, B, C, D]))
    code, _, err = run_main(_build_args(kaggle, write_list(tmp_path / "mine.txt", SUBSET), tmp_path / "out",
                                        "--devkit_dir", map_file), capsys)
    assert code == 1
    assert assert_one_error_line(err) == (f"imagenet-subset: error: --devkit_dir {map_file} is a file, not a "
                                          "folder; pass the devkit folder holding map_clsloc.txt, or the devkit "
                                          "archive (ILSVRC2012_devkit_t12.tar.gz)")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- C. --search, build and classes

CHIHUAHUA, SETTER, ZEBRA = wnid(2085620), wnid(2100735), wnid(2391049)


@pytest.fixture(scope="module")
def partial(module_tmp_path_factory):
    """A tree of A, B, C, D whose LOC_synset_mapping.txt also names three classes the tree lacks."""
    names = NAMES | {CHIHUAHUA: "Chihuahua", SETTER: "English setter", ZEBRA: "zebra"}
    return kaggle_tree(module_tmp_path_factory.mktemp("partial"), names=names)


@pytest.mark.parametrize("text, expected", [("English", [B]), ("CH", [A, C])])
def test_search_takes_only_classes_the_tree_holds(partial, capsys, text, expected):
    assert _plan(partial.data_dir, search=text).subset.wnids == tuple(expected)
    code, out, err = run_main(["classes", "--data_dir", partial.data_dir, "--search", text], capsys)
    assert code == 0, err
    assert [line.split()[0] for line in out.splitlines()[1:-1]] == expected


def test_search_build_on_the_command_line(partial, tmp_path, capsys):
    code, _, err = run_main(["--search", "ch", "--data_dir", partial.data_dir, "--out_dir", tmp_path / "out", *SMALL],
                            capsys)
    assert code == 0, err
    assert [r["WNID"] for r in _metadata(tmp_path / "out" / "search_ch_cls_metadata.csv")] == [A, C]


@pytest.mark.parametrize("command", [[], ["classes"]])
def test_search_matching_only_absent_classes_is_one_error(partial, tmp_path, capsys, command):
    argv = command + ["--data_dir", partial.data_dir, "--search", "zebra"]
    code, _, err = run_main(argv + ([] if command else ["--out_dir", tmp_path / "out"]), capsys)
    assert code == 1
    assert assert_one_error_line(err) == (
        f"imagenet-subset: error: --search: no class in {partial.train_dir} has a name containing 'zebra'; "
        "imagenet-subset classes --data_dir DIR lists the classes and their names")


@pytest.mark.parametrize("name, problem", [
    ("Chihuahua", "no class named 'Chihuahua' in"), (CHIHUAHUA, f"{CHIHUAHUA} is not in")])
def test_classes_naming_an_absent_class_stays_an_error(partial, tmp_path, capsys, name, problem):
    """--classes looks only among the classes the tree holds: one the mapping file names but the
    tree lacks is unknown, by name or by WNID."""
    code, _, err = run_main(["--classes", name, "--data_dir", partial.data_dir, "--out_dir", tmp_path / "o"],
                            capsys)
    assert code == 1
    assert assert_one_error_line(err) == (
        f"imagenet-subset: error: --classes: {problem} the classes of {partial.train_dir} "
        "(named by LOC_synset_mapping.txt)")
    assert not (tmp_path / "o").exists()


def test_search_without_class_names_uses_the_builtin_names(tmp_path, capsys):
    """No label file: the built-in class table names the real classes; X has no name and is never found."""
    tree = plain_tree(tmp_path / "bare", counts=X_COUNTS, val=X_VAL, sorted_val=True)
    assert _plan(tree.data_dir, search="springer").subset.wnids == (B,)
    code, out, err = run_main(["classes", "--data_dir", tree.data_dir, "--search", "springer"], capsys)
    assert code == 0, err
    assert out.splitlines()[1] == (f"{B}       3     2  English_springer  [entity > physical entity > object > "
                                   "whole > living thing > organism > animal > domestic animal > dog > hunting dog > "
                                   "sporting dog > spaniel > springer spaniel]")
    with pytest.raises(UserError) as info:
        _plan(tree.data_dir, search="class")
    assert str(info.value) == (f"--search: no class in {tree.train_dir} has a name containing 'class'; "
                               "imagenet-subset classes --data_dir DIR lists the classes and their names")


def test_classes_without_class_names_uses_the_builtin_names(tmp_path, capsys):
    tree = plain_tree(tmp_path / "bare", counts=X_COUNTS, val=X_VAL, sorted_val=True)
    assert _plan(tree.data_dir, classes=["chain_saw", "tench", X]).subset.wnids == (C, A, X)
    # the table's WordNet names match too, as a Kaggle mapping file's would
    assert _plan(tree.data_dir, classes=["chain saw", "English springer spaniel"]).subset.wnids == (C, B)
    assert _plan(tree.data_dir, search="springer spaniel").subset.wnids == (B,)
    code, _, err = run_main(["--classes", "goldfish", "--data_dir", tree.data_dir, "--out_dir", tmp_path / "o"],
                            capsys)
    assert code == 1
    assert assert_one_error_line(err) == (
        f"imagenet-subset: error: --classes: no class named 'goldfish' in the classes of {tree.train_dir} "
        "(named by the built-in class table)")


def test_a_tree_of_unnamed_classes_takes_wnids_but_not_names(tmp_path):
    """Only made-up classes and no mapping file: nothing names them, so names are refused, WNIDs taken."""
    other = "n00000043"
    tree = plain_tree(tmp_path / "unnamed", counts={X: 2, other: 1}, val={1: X, 2: other}, sorted_val=True)
    assert _plan(tree.data_dir, classes=[other, X]).subset.wnids == (other, X)
    with pytest.raises(UserError) as caught:
        _plan(tree.data_dir, classes=["made-up class"])
    assert str(caught.value) == (
        f"--classes: 'made-up class' is a name, but none of the classes of {tree.train_dir} (named by the "
        "built-in class table) has a name (they are not among ImageNet's 1000 and no LOC_synset_mapping.txt or "
        "map_clsloc.txt names them); pass WNIDs, or --devkit_dir DIR")
    with pytest.raises(UserError) as caught:
        _plan(tree.data_dir, search="made")
    assert str(caught.value) == (f"--search needs class names from LOC_synset_mapping.txt or map_clsloc.txt; none "
                                 f"found for {tree.train_dir}: pass --devkit_dir DIR")


def test_readme_classes_examples_name_the_tree():
    examples = re.findall(r"`(imagenet-subset classes[^`]*)`", (REPO / "README.md").read_text())
    assert examples and all("--data_dir" in example for example in examples), examples


# --------------------------------------------------------------------------- D. pickled members

def _pickled_message(path) -> str:
    return (f"{path}: X_train.npy holds Python objects (pickled), which this tool never loads because unpickling "
            "can run code from the file; archives written by imagenet-subset never contain them")


class _MakesFolder:
    """Unpickling it makes a folder: proof that nothing was unpickled when the folder is absent."""

    def __init__(self, folder):
        self.folder = str(folder)

    def __reduce__(self):
        import os

        return os.mkdir, (self.folder,)


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
@pytest.mark.parametrize("mmap", [True, False])
def test_pickled_member_is_refused_and_never_unpickled(tmp_path, save, mmap):
    path = tmp_path / "objects.npz"
    marker = tmp_path / "unpickled"
    save(path, X_train=np.array([{"a": 1}, _MakesFolder(marker)], dtype=object), y_train=np.zeros(2, np.int32))
    with pytest.raises(UserError) as info:
        packer.load(path, mmap=mmap)
    assert str(info.value) == _pickled_message(path)
    assert "np.load" not in str(info.value)
    assert not marker.exists()


def test_pickled_member_on_the_command_line(tmp_path, capsys):
    path = tmp_path / "objects.npz"
    np.savez(path, X_train=np.array([{"a": 1}], dtype=object), y_train=np.zeros(1, np.int32))
    code, out, err = run_main(["info", path], capsys)
    assert code == 1 and out == ""
    assert assert_one_error_line(err) == f"imagenet-subset: error: {_pickled_message(path)}"


def test_fortran_ordered_member_has_its_own_message(tmp_path):
    path = tmp_path / "fortran.npz"
    np.savez(path, X_train=np.asfortranarray(np.zeros((2, 3), np.uint8)), y_train=np.zeros(2, np.int32))
    with pytest.raises(UserError) as info:
        packer.load(path)
    assert str(info.value) == (f"{path}: X_train.npy is a Fortran-ordered (column-major) array, which this tool "
                               "does not read; archives written by imagenet-subset are C-ordered; np.load reads it")
