"""The metadata CSV written beside the archive: exact bytes for each source of class information.

What the tree's files leave out comes from the built-in ILSVRC class table: for the classes used
here, C (n03000684) is chain_saw, CLS-LOC id 382, index 491; A (n01440764) tench, 449, 0; B
(n02102040) English_springer, 5, 217; D (n01530575) brambling, 386, 10.
"""
import pytest

from helpers import (A, B, C, D, NAMES, SUBSET, VAL_LABELS, build, kaggle_tree, plain_tree, write_ground_truth,
                     write_list, write_map_clsloc, write_synset_mapping)

HEADER = "subset_label,WNID,human_label,original_label,imagenet_index,num_train_images,num_val_images\n"

# 996 other WNIDs placed so that the sorted positions are easy to state:
# 400 before A (0-399), A 400, D 401, 100 between D and B (402-501), B 502,
# 10 between B and C (503-512), C 513, 486 after C.
FAKES = ([f"n{k:08d}" for k in range(1, 401)] + [f"n{2000000 + k:08d}" for k in range(1, 101)]
         + [f"n{2500000 + k:08d}" for k in range(1, 11)] + [f"n{9000000 + k:08d}" for k in range(1, 487)])
INDEX = {A: 400, D: 401, B: 502, C: 513}
CLSLOC_IDS = {A: 449, B: 218, C: 492, D: 11}


@pytest.fixture
def class_list(tmp_path):
    return write_list(tmp_path / "lists" / "mine.txt", SUBSET)


def test_fakes_are_as_described():
    every = sorted(FAKES + [A, B, C, D])
    assert len(set(every)) == 1000
    assert {w: every.index(w) for w in (A, B, C, D)} == INDEX


def test_kaggle_with_full_synset_mapping(tmp_path, class_list):
    names = {**{w: f"thing {i}, other name" for i, w in enumerate(FAKES)}, **NAMES}
    tree = kaggle_tree(tmp_path / "kaggle", names=names)
    assert len((tmp_path / "kaggle" / "LOC_synset_mapping.txt").read_text().splitlines()) == 1000
    result = build(class_list, tree.data_dir, tmp_path / "out")
    assert result.metadata.read_text() == (
        HEADER
        + '0,n03000684,"chain saw, chainsaw",382,513,4,3\n'
        + '1,n01440764,"tench, Tinca tinca",449,400,11,3\n'
        + '2,n02102040,"English springer, English springer spaniel",5,502,3,2\n')


def _full_map_clsloc(path):
    free_ids = iter(i for i in range(1, 1001) if i not in CLSLOC_IDS.values())
    classes = {w: (next(free_ids), f"fake_{w}") for w in FAKES}
    classes.update({A: (449, "tench"), B: (218, "English_springer"), C: (492, "chain_saw"), D: (11, "brambling")})
    # the devkit's file is ordered by id, not by WNID
    write_map_clsloc(path, dict(sorted(classes.items(), key=lambda item: item[1][0])))


def test_devkit_with_full_map_clsloc(tmp_path, class_list):
    tree = plain_tree(tmp_path / "tree" / "CLS-LOC")
    devkit = tmp_path / "devkit"
    _full_map_clsloc(devkit / "map_clsloc.txt")
    write_ground_truth(devkit / "ILSVRC2015_clsloc_validation_ground_truth.txt", VAL_LABELS, CLSLOC_IDS)
    result = build(class_list, tree.data_dir, tmp_path / "out", devkit_dir=devkit)
    assert result.metadata.read_text() == (
        HEADER
        + "0,n03000684,chain_saw,492,513,4,3\n"
        + "1,n01440764,tench,449,400,11,3\n"
        + "2,n02102040,English_springer,218,502,3,2\n")


def test_synset_names_win_over_map_clsloc_names(tmp_path, class_list):
    tree = kaggle_tree(tmp_path / "kaggle")  # 4-line LOC_synset_mapping.txt: the index is the built-in one
    write_map_clsloc(tmp_path / "kaggle" / "map_clsloc.txt", {w: (CLSLOC_IDS[w], f"x_{w}") for w in (A, B, C, D)})
    result = build(class_list, tree.data_dir, tmp_path / "out")
    assert result.metadata.read_text() == (
        HEADER
        + '0,n03000684,"chain saw, chainsaw",492,491,4,3\n'
        + '1,n01440764,"tench, Tinca tinca",449,0,11,3\n'
        + '2,n02102040,"English springer, English springer spaniel",218,217,3,2\n')


def test_a_tree_without_label_files_is_described_by_the_builtin_table(tmp_path, class_list):
    tree = plain_tree(tmp_path / "tree", sorted_val=True)
    result = build(class_list, tree.data_dir, tmp_path / "out")
    assert result.metadata.read_text() == HEADER + (
        "0,n03000684,chain_saw,382,491,4,3\n1,n01440764,tench,449,0,11,3\n2,n02102040,English_springer,5,217,3,2\n")
    assert result.notes == ()


def test_a_class_outside_the_builtin_table_leaves_cells_empty(tmp_path):
    other = "n00000042"
    tree = plain_tree(tmp_path / "tree", counts={other: 2, A: 1}, val={1: other, 2: A}, sorted_val=True)
    result = build(write_list(tmp_path / "l.txt", [other, A]), tree.data_dir, tmp_path / "out")
    assert result.metadata.read_text() == HEADER + "0,n00000042,,,,2,1\n1,n01440764,tench,449,0,1,1\n"
    assert result.notes[0].startswith("metadata columns left empty: human_label (from LOC_synset_mapping.txt or "
                                      "map_clsloc.txt); original_label (from map_clsloc.txt): not found in ")


def test_index_from_a_complete_train_folder(tmp_path, class_list):
    tree = plain_tree(tmp_path / "tree", sorted_val=True)
    for w in FAKES:
        (tree.train_dir / w).mkdir()
    result = build(class_list, tree.data_dir, tmp_path / "out")
    assert result.metadata.read_text() == (
        HEADER + "0,n03000684,chain_saw,382,513,4,3\n1,n01440764,tench,449,400,11,3\n"
        "2,n02102040,English_springer,5,502,3,2\n")


def test_partial_synset_mapping_and_class_without_val(tmp_path):
    # D has no name in the mapping file and no val image in the subset's images
    names = {A: NAMES[A], B: NAMES[B], C: NAMES[C]}
    tree = kaggle_tree(tmp_path / "kaggle", names=names, val={1: A, 2: B, 3: A})
    write_synset_mapping(tmp_path / "kaggle" / "LOC_synset_mapping.txt", names)
    result = build(write_list(tmp_path / "l.txt", [D, A]), tree.data_dir, tmp_path / "out")
    assert result.metadata.read_text() == (
        HEADER + "0,n01530575,brambling,386,10,2,0\n1,n01440764,\"tench, Tinca tinca\",449,0,11,2\n")
