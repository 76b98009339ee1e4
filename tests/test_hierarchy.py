"""Choosing classes by the WordNet hierarchy (issue #13): the packaged hierarchy, --under / --exclude,
--group_by (names, level:N, --overlap, --rest), --balance classes, the built-in restricted_imagenet
list, the manifest's record and recipes, ``classes --tree`` / ``--search`` / ``--under``, and the
options' errors.

Trees are small plain ones (``helpers.plain_tree``: train/ and val/<wnid>/, no label files, so the
built-in class table names the classes) holding real ImageNet WNIDs. Expected labels, paths and
outlines are written out here from WordNet 3.0 (checked by hand against ImageNet's wordnet.is_a.txt);
the chosen images are recomputed from the documented rank rule (BLAKE2b of "<seed>/<split>/<path>"),
and the classes that get the images left over by --balance classes from the documented class order
(BLAKE2b of "<seed>/<split>/<wnid>"). Own hierarchies (--wordnet DIR, --hierarchy FILE) are small
files written in tmp_path; the manifest names them by file name only.
"""
import csv
import dataclasses
import hashlib
import json
import subprocess
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from helpers import PYTHON, assert_one_error_line, plain_tree, read_npz, run_main, sha256, subprocess_env

import packer
from packer import BuildOptions, UserError
from packer.hierarchy import BUILTIN_SOURCE, Hierarchy, hierarchy_from, load_hierarchy, outline
from packer.plan import plan_build
from packer.sampling import class_order, class_quotas
from packer.subset import builtin_list_names, read_subset_list

SMALL = {"resize_size": 32, "crop_size": 24, "workers": 1, "progress": False}

# synsets
ENTITY, DOG, TOY_DOG, BIRD, CAT = "n00001740", "n02084071", "n02085374", "n01503061", "n02121620"
WHEELED_VEHICLE, ZEBRA, TANK = "n04576211", "n02391049", "n04389033"
# classes of the tree "zoo"
CHIHUAHUA, JAPANESE_SPANIEL, BEAGLE, RETRIEVER, PUG = "n02085620", "n02085782", "n02088364", "n02099601", "n02110958"
TABBY, SIAMESE, TIGER = "n02123045", "n02123597", "n02129604"
HEN, GOOSE, CRANE_BIRD = "n01514859", "n01855672", "n02012849"
CRANE_MACHINE, TENCH, MINIVAN = "n03126707", "n01440764", "n03770679"
POOCH = "n02084732"  # pooch, doggie: a WordNet synset outside the 1,000 classes

DOGS = [CHIHUAHUA, JAPANESE_SPANIEL, BEAGLE, RETRIEVER, PUG]  # WNID order
CATS = [TABBY, SIAMESE]
BIRDS = [HEN, GOOSE, CRANE_BIRD]
OTHERS = [TENCH, TIGER, CRANE_MACHINE, MINIVAN]  # under none of dog, cat, bird
ZOO_TRAIN = {CHIHUAHUA: 6, JAPANESE_SPANIEL: 1, BEAGLE: 4, RETRIEVER: 3, PUG: 2, TABBY: 3, SIAMESE: 2, TIGER: 2,
             HEN: 2, GOOSE: 3, CRANE_BIRD: 1, CRANE_MACHINE: 2, TENCH: 2, MINIVAN: 2}
ZOO_VAL_COUNTS = {w: 2 if w == CHIHUAHUA else 1 for w in ZOO_TRAIN}

ORGANISM = "entity > physical entity > object > whole > living thing > organism"
CRANE_PATHS = {
    CRANE_BIRD: f"{ORGANISM} > animal > chordate > vertebrate > bird > aquatic bird > wading bird > crane",
    CRANE_MACHINE: "entity > physical entity > object > whole > artifact > instrumentality > device > lifting device "
                   "> crane",
}
BUILTIN_NAME = "built-in WordNet 3.0 hierarchy of the 1,000 ILSVRC classes"
# how an unknown name ends with the packaged hierarchy (it holds only the 1,000 classes' ancestors)
BUILTIN_HINT = ("; it holds the 1,000 classes and their ancestors: for other synsets pass --wordnet DIR with "
                "ImageNet's full words.txt and wordnet.is_a.txt")
TREE_HINT = "imagenet-subset classes --tree --data_dir DIR shows what the tree holds"


def _val_labels(counts: dict[str, int]) -> dict[int, str]:
    """Val images numbered 1, 2, ... class after class in WNID order."""
    owners = [w for w in sorted(counts) for _ in range(counts[w])]
    return {number: w for number, w in enumerate(owners, start=1)}


@pytest.fixture(scope="module")
def zoo(module_tmp_path_factory):
    return plain_tree(module_tmp_path_factory.mktemp("zoo"), counts=ZOO_TRAIN, val=_val_labels(ZOO_VAL_COUNTS),
                      sorted_val=True)


def _plan(tree, **options):
    return plan_build(BuildOptions(data_dir=str(tree.data_dir), **options))


def _labels(plan) -> list[tuple[str, tuple[str, ...]]]:
    return [(label.name, label.wnids) for label in plan.subset.labels]


def _singles(wnids) -> list[tuple[str, tuple[str, ...]]]:
    return [(w, (w,)) for w in wnids]


def _error(call, **options) -> str:
    with pytest.raises(UserError) as info:
        call(**options)
    return str(info.value)


def _build(tree, out: Path, **options):
    return packer.build(BuildOptions(data_dir=str(tree.data_dir), out_dir=str(out), **(SMALL | options)))


def _metadata(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def rank(seed: int, split: str, path: str) -> int:
    """The documented rank of an image (packer/sampling.py's docstring), written out."""
    return int.from_bytes(hashlib.blake2b(f"{seed}/{split}/{path}".encode(), digest_size=8).digest(), "little")


def _lowest(paths, n: int, seed: int = 0, split: str = "train") -> list[str]:
    return sorted(paths, key=lambda p: rank(seed, split, p))[:n]


def class_rank_order(wnids, seed: int, split: str) -> list[str]:
    """The documented order in which classes get the images left over by --balance classes (BLAKE2b of
    "<seed>/<split>/<wnid>", its 8 bytes compared as they are), written out."""
    return sorted(wnids, key=lambda w: hashlib.blake2b(f"{seed}/{split}/{w}".encode(), digest_size=8).digest())


def _train_paths(wnid: str) -> list[str]:
    return [f"{wnid}/{wnid}_{k}.JPEG" for k in range(1, ZOO_TRAIN[wnid] + 1)]


def _rows(split) -> dict[str, list[str]]:
    """WNID -> the chosen paths of that class, for one planned split."""
    found: dict[str, list[str]] = {}
    for path, wnid in zip(split.paths, split.wnids, strict=True):
        found.setdefault(wnid, []).append(path)
    return found


def _classes_table():
    with resources.files("packer.data").joinpath("ilsvrc2012_classes.csv").open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


# =========================================================================== 1. the packaged hierarchy

def test_packaged_hierarchy_facts():
    hierarchy = load_hierarchy()
    nodes = set(hierarchy.parents) | set(hierarchy.children)
    assert len(nodes) == len(hierarchy.names) == 1860
    assert nodes == set(hierarchy.names)
    assert sum(len(parents) for parents in hierarchy.parents.values()) == 1937
    assert hierarchy.roots == [ENTITY] and hierarchy.name(ENTITY) == "entity" and hierarchy.depth(ENTITY) == 0
    assert hierarchy.source == BUILTIN_NAME == BUILTIN_SOURCE
    classes = {row["wnid"]: row for row in _classes_table()}
    assert len(classes) == 1000
    assert all(w in hierarchy.parents and not hierarchy.children.get(w) for w in classes)  # every class is a leaf
    assert len(nodes - set(classes)) == 860
    # the words are WordNet's own: each class's names are the class table's WordNet names
    assert all(hierarchy.names[w] == row["names"] for w, row in classes.items())
    assert hierarchy.names[DOG] == "dog, domestic dog, Canis familiaris"
    # a DAG: 38 classes have more than one parent (37 two, the tank three)
    parents = {w: hierarchy.parents[w] for w in classes if len(hierarchy.parents[w]) > 1}
    assert len(parents) == 38
    assert sorted(len(p) for p in parents.values()) == [2] * 37 + [3]
    assert sorted(hierarchy.name(p) for p in parents[TANK]) == ["armored vehicle", "military vehicle",
                                                                 "tracked vehicle"]
    assert sorted(hierarchy.name(p) for p in parents[MINIVAN]) == ["car", "passenger van"]
    below = {node: hierarchy.descendants(node) & set(classes) for node in (DOG, BIRD, WHEELED_VEHICLE, ENTITY)}
    assert {node: len(found) for node, found in below.items()} == {DOG: 118, BIRD: 59, WHEELED_VEHICLE: 44,
                                                                   ENTITY: 1000}
    assert DOG in hierarchy.descendants(DOG) and DOG in hierarchy.ancestors(DOG)
    assert hierarchy.ancestors(PUG) == {PUG} | hierarchy.ancestors(DOG)
    assert hierarchy.parents[DOG] == ("n01317541", "n02083346")  # domestic animal, canine
    # depth: the shortest way down from entity (via domestic animal, not canine)
    assert hierarchy.depth(DOG) == 8 and hierarchy.depth(PUG) == 9 and hierarchy.depth("n99999999") is None
    assert hierarchy.shown_path(DOG) == f"{ORGANISM} > animal > domestic animal > dog"
    assert len(hierarchy.sha256) == 64 and int(hierarchy.sha256, 16) >= 0


def test_packaged_files_and_license():
    data = resources.files("packer.data")
    words = data.joinpath("wordnet_words.txt").read_text(encoding="utf-8").splitlines()
    edges = data.joinpath("wordnet_is_a.txt").read_text(encoding="utf-8").splitlines()
    assert len(words) == 1860 and words == sorted(words) and len({w.split("\t")[0] for w in words}) == 1860
    assert len(edges) == 1937 and edges == sorted(edges) and len(set(edges)) == 1937
    assert f"{DOG}\tdog, domestic dog, Canis familiaris" in words
    assert f"{DOG} {PUG}" in edges and "n02083346 n02084071" in edges and "n01317541 n02084071" in edges
    # WordNet's terms ask for the notice on every copy: it sits beside the data, and ships with it
    license_file = Path(str(data.joinpath("LICENSE-WordNet-3.0.txt")))
    assert license_file.parent == Path(str(data.joinpath("wordnet_is_a.txt"))).parent
    text = license_file.read_text(encoding="utf-8")
    assert "WordNet 3.0" in text and "Princeton University" in text
    assert "WordNet" in (license_file.parent / "README.md").read_text(encoding="utf-8")


# =========================================================================== 2. --under

def test_under_dog_takes_the_dog_classes_one_label_each(zoo):
    plan = _plan(zoo, under="dog")
    assert plan.name == "under_dog"
    assert _labels(plan) == _singles(DOGS)
    assert plan.subset.source == "--under dog"
    train, val = plan.splits
    assert sorted(set(train.wnids)) == DOGS and sorted(set(val.wnids)) == DOGS
    assert len(train) == sum(ZOO_TRAIN[w] for w in DOGS) and len(val) == 6
    assert [DOGS[label] for label in train.labels] == train.wnids  # label i is the i-th class in WNID order
    assert [DOGS[label] for label in val.labels] == val.wnids


@pytest.mark.parametrize("under, name", [("n02084071", "under_n02084071"), ("domestic dog", "under_domestic_dog"),
                                         ("DOG", "under_dog"), (" dog ", "under_dog"), (["dog"], "under_dog"),
                                         (("Canis familiaris",), "under_canis_familiaris")])
def test_under_takes_a_wnid_a_synonym_or_a_list(zoo, under, name):
    plan = _plan(zoo, under=under)
    assert _labels(plan) == _singles(DOGS)
    assert plan.name == name


def test_under_dog_exclude_toy_dog(zoo):
    plan = _plan(zoo, under="dog", exclude="toy dog")
    assert _labels(plan) == _singles([BEAGLE, RETRIEVER, PUG])
    assert plan.name == "under_dog" and plan.subset.source == "--under dog --exclude toy dog"
    assert sorted(set(plan.splits[0].wnids)) == [BEAGLE, RETRIEVER, PUG]
    # excluding a synset the tree has no class below removes nothing; a class may be excluded by WNID
    assert _labels(_plan(zoo, under="dog", exclude="zebra")) == _singles(DOGS)
    assert _labels(_plan(zoo, under="dog", exclude=[PUG, "hound"])) == _singles([CHIHUAHUA, JAPANESE_SPANIEL,
                                                                                RETRIEVER])


def test_under_several_names(zoo):
    plan = _plan(zoo, under="dog, bird", subset_name="pets_and_birds")
    assert _labels(plan) == _singles(sorted(DOGS + BIRDS))
    assert plan.name == "pets_and_birds" and plan.subset.source == "--under dog,bird"
    assert _labels(_plan(zoo, under=["bird", "dog"])) == _singles(sorted(DOGS + BIRDS))
    assert _plan(zoo, under="bird,dog").name == "under_bird_dog"
    # overlapping names: each class once
    assert _labels(_plan(zoo, under="toy dog,dog,n02085620")) == _singles(DOGS)


def test_under_an_ambiguous_name_lists_the_candidates_with_their_paths(zoo, tmp_path, capsys):
    message = _error(_plan, tree=zoo, under="crane")
    assert message == (f"--under: 'crane' is ambiguous: {CRANE_BIRD} ({CRANE_PATHS[CRANE_BIRD]}), {CRANE_MACHINE} "
                       f"({CRANE_PATHS[CRANE_MACHINE]}); use the WNID or a more precise name")
    code, out, err = run_main(["--under", "crane", "--data_dir", zoo.data_dir, "--out_dir", tmp_path / "o"], capsys)
    assert (code, out) == (1, "")
    assert assert_one_error_line(err) == f"imagenet-subset: error: {message}"
    assert not (tmp_path / "o").exists()
    # the WNID says which
    assert _labels(_plan(zoo, under=CRANE_MACHINE)) == _singles([CRANE_MACHINE])
    assert _labels(_plan(zoo, under=f"{CRANE_BIRD},{CRANE_MACHINE}")) == _singles([CRANE_BIRD, CRANE_MACHINE])


def test_under_an_unknown_name_suggests_close_names(zoo, tmp_path):
    # the packaged hierarchy holds only the 1,000 classes and their ancestors: the message says where the rest are
    assert _error(_plan, tree=zoo, under="doggo") == (
        f"--under: no synset named 'doggo' in the {BUILTIN_NAME}; close names: dog, door, dough{BUILTIN_HINT}")
    assert _error(_plan, tree=zoo, under="dog,qqqqxxzz") == (
        f"--under: no synset named 'qqqqxxzz' in the {BUILTIN_NAME}{BUILTIN_HINT}")
    assert _error(_plan, tree=zoo, under="dog", exclude="doggo") == (
        f"--exclude: no synset named 'doggo' in the {BUILTIN_NAME}; close names: dog, door, dough{BUILTIN_HINT}")
    assert _error(_plan, tree=zoo, group_by="dog,qqqqxxzz") == (
        f"--group_by: no synset named 'qqqqxxzz' in the {BUILTIN_NAME}{BUILTIN_HINT}")
    # an own hierarchy is named by its file name, and has no such hint (--wordnet is what it gave, or --hierarchy
    # names the edges: the words are still the packaged ones)
    edges = _edge_list(tmp_path / "edges")
    assert _error(_plan, tree=zoo, under="doggo", hierarchy=str(edges)) == (
        "--under: no synset named 'doggo' in the hierarchy hierarchy.txt; close names: dog, door, dough")
    wordnet = _wordnet_dir(tmp_path / "wordnet")
    assert _error(_plan, tree=zoo, under="doggo", wordnet=str(wordnet)) == (
        "--under: no synset named 'doggo' in the WordNet hierarchy in wordnet/; close names: doggy, dog, doggie")


def test_under_a_synset_without_a_class_of_the_tree_is_an_error(zoo):
    assert _error(_plan, tree=zoo, under="zebra") == (
        f"--under: no class of {zoo.train_dir} is below {ZEBRA} (zebra); {TREE_HINT}")
    assert _error(_plan, tree=zoo, under="dog", exclude="dog") == (
        f"--under: no class of {zoo.train_dir} is below {DOG} (dog) once --exclude is applied; {TREE_HINT}")
    assert _error(_plan, tree=zoo, under="toy dog,cat", exclude="Chihuahua,Japanese spaniel,domestic cat") == (
        f"--under: no class of {zoo.train_dir} is below {TOY_DOG} (toy dog), {CAT} (cat) once --exclude is applied; "
        f"{TREE_HINT}")


# =========================================================================== 3. --group_by

def test_group_by_names_one_label_per_group_in_the_order_given(zoo):
    plan = _plan(zoo, group_by="dog,cat,bird")
    assert plan.name == "grouped_dog_cat_bird" and plan.subset.source == "--group_by dog,cat,bird"
    assert _labels(plan) == [("dog", tuple(DOGS)), ("cat", tuple(CATS)), ("bird", tuple(BIRDS))]
    train, val = plan.splits
    label_of = {w: i for i, group in enumerate([DOGS, CATS, BIRDS]) for w in group}
    assert set(train.wnids) == set(label_of) and set(val.wnids) == set(label_of)  # tench, tiger, ... left out
    assert train.labels.tolist() == [label_of[w] for w in train.wnids]
    assert val.labels.tolist() == [label_of[w] for w in val.wnids]
    assert np.bincount(train.labels).tolist() == [16, 5, 6] and np.bincount(val.labels).tolist() == [6, 2, 3]
    assert _labels(_plan(zoo, group_by="bird, dog")) == [("bird", tuple(BIRDS)), ("dog", tuple(DOGS))]
    # a label is named as given, whatever names the synset
    assert _labels(_plan(zoo, group_by="domestic dog,n01503061")) == [("domestic dog", tuple(DOGS)),
                                                                      ("n01503061", tuple(BIRDS))]


@pytest.fixture(scope="module")
def grouped(zoo, module_tmp_path_factory):
    """The zoo grouped by dog, cat, bird (every image)."""
    return _build(zoo, module_tmp_path_factory.mktemp("grouped") / "out", group_by="dog,cat,bird")


def test_group_by_metadata_and_archive(grouped):
    assert grouped.name == "grouped_dog_cat_bird"
    assert grouped.archive.name == "grouped_dog_cat_bird_cls.npz"
    assert grouped.counts == {"train": 27, "val": 11} and grouped.num_classes == 3
    assert _metadata(grouped.metadata) == [
        {"subset_label": "0", "WNID": " ".join(DOGS), "human_label": "dog", "original_label": "",
         "imagenet_index": "", "num_train_images": "16", "num_val_images": "6"},
        {"subset_label": "1", "WNID": " ".join(CATS), "human_label": "cat", "original_label": "",
         "imagenet_index": "", "num_train_images": "5", "num_val_images": "2"},
        {"subset_label": "2", "WNID": " ".join(BIRDS), "human_label": "bird", "original_label": "",
         "imagenet_index": "", "num_train_images": "6", "num_val_images": "3"},
    ]
    data = read_npz(grouped.archive)
    assert np.bincount(data["y_train"]).tolist() == [16, 5, 6] and np.bincount(data["y_val"]).tolist() == [6, 2, 3]
    manifest = json.loads(grouped.manifest.read_text())
    assert manifest["classes"] == [
        {"label": 0, "name": "dog", "wnids": DOGS, "human_label": "dog"},
        {"label": 1, "name": "cat", "wnids": CATS, "human_label": "cat"},
        {"label": 2, "name": "bird", "wnids": BIRDS, "human_label": "bird"},
    ]
    assert manifest["subset_source"] == "--group_by dog,cat,bird"


def test_group_by_with_rest_pools_the_classes_below_none(zoo):
    plan = _plan(zoo, group_by="dog,cat,bird", rest=6)
    assert _labels(plan) == [("dog", tuple(DOGS)), ("cat", tuple(CATS)), ("bird", tuple(BIRDS)), ("rest", ())]
    assert plan.subset.labels[-1].is_rest
    train, val = plan.splits
    pool_train = [p for w in OTHERS for p in _train_paths(w)]
    assert sorted(p for p, label in zip(train.paths, train.labels, strict=True) if label == 3) == \
        sorted(_lowest(pool_train, 6))
    # the rest's val images: the pool's val/train ratio (4/8) times 6
    pool_val = [f"{w}/ILSVRC2012_val_{n:08d}.JPEG" for n, w in _val_labels(ZOO_VAL_COUNTS).items() if w in OTHERS]
    assert sorted(p for p, label in zip(val.paths, val.labels, strict=True) if label == 3) == \
        sorted(_lowest(pool_val, 3, split="val"))
    assert np.bincount(train.labels).tolist() == [16, 5, 6, 6]
    # spread evenly over the rest's classes: 6 over 4 classes of 2 images, the first two in the seeded class
    # order one more (seed 0: tench, tiger, minivan, crane; seed 4: minivan, tench, tiger, crane)
    assert class_rank_order(OTHERS, 0, "train")[:2] == [TENCH, TIGER]
    assert class_rank_order(OTHERS, 4, "train")[:2] == [MINIVAN, TENCH]
    for seed, quotas in ((0, {TENCH: 2, TIGER: 2, CRANE_MACHINE: 1, MINIVAN: 1}),
                         (4, {TENCH: 2, TIGER: 1, CRANE_MACHINE: 1, MINIVAN: 2})):
        balanced = _plan(zoo, group_by="dog,cat,bird", rest=6, balance="classes", seed=seed).splits[0]
        rest_rows = [w for w, label in zip(balanced.wnids, balanced.labels, strict=True) if label == 3]
        assert {w: rest_rows.count(w) for w in OTHERS} == quotas


def _rest_rows(split, rest_label: int) -> dict[str, int]:
    """WNID -> how many images of that class the rest label holds, in one planned split."""
    wnids = [w for w, label in zip(split.wnids, split.labels, strict=True) if label == rest_label]
    return {w: wnids.count(w) for w in sorted(set(wnids))}


def test_rest_leaves_out_the_classes_under_and_exclude_take_away(zoo):
    """--rest pools the classes no label holds, but not those --exclude (and, with --group_by, --under)
    took away: --under dog --rest N is dogs against everything else."""
    # --under dog --exclude "toy dog": rest is drawn from every class not under dog; no toy dog anywhere
    plan = _plan(zoo, under="dog", exclude="toy dog", rest=4)
    assert _labels(plan) == _singles([BEAGLE, RETRIEVER, PUG]) + [("rest", ())]
    train, val = plan.splits
    not_dogs = set(CATS) | set(BIRDS) | set(OTHERS)
    assert set(_rest_rows(train, 3)) <= not_dogs and sum(_rest_rows(train, 3).values()) == 4
    assert sorted(p for p, label in zip(train.paths, train.labels, strict=True) if label == 3) == \
        sorted(_lowest([p for w in sorted(not_dogs) for p in _train_paths(w)], 4))
    assert not {CHIHUAHUA, JAPANESE_SPANIEL} & (set(train.wnids) | set(val.wnids))
    assert not any("rest (" in note for note in plan.notes)
    # --group_by with --exclude: the toy dogs are in no group and not in rest; the classes below no group are
    plan = _plan(zoo, group_by="dog,cat,bird", exclude="toy dog", rest=20)
    assert _labels(plan) == [("dog", (BEAGLE, RETRIEVER, PUG)), ("cat", tuple(CATS)), ("bird", tuple(BIRDS)),
                             ("rest", ())]
    train, val = plan.splits
    assert _rest_rows(train, 3) == {w: ZOO_TRAIN[w] for w in OTHERS}
    assert _rest_rows(val, 3) == dict.fromkeys(OTHERS, 1)  # 8 of 8 train taken: all 4 val
    assert not {CHIHUAHUA, JAPANESE_SPANIEL} & (set(train.wnids) | set(val.wnids))
    # --group_by with --under: the classes outside --under are not in rest; those below no group are
    plan = _plan(zoo, group_by="dog,cat", under="domestic animal,bird", rest=20)
    assert _labels(plan) == [("dog", tuple(DOGS)), ("cat", tuple(CATS)), ("rest", ())]
    train, val = plan.splits
    assert _rest_rows(train, 2) == {w: ZOO_TRAIN[w] for w in BIRDS}
    assert _rest_rows(val, 2) == dict.fromkeys(BIRDS, 1)
    assert not set(OTHERS) & (set(train.wnids) | set(val.wnids))
    assert "train: 1 labels have fewer images than asked and kept all: rest (6 of 20)" in plan.notes
    # both: only the birds left below no group, the toy dogs gone
    plan = _plan(zoo, group_by="dog", under="domestic animal,bird", exclude="toy dog,domestic cat", rest=3)
    assert _labels(plan) == [("dog", (BEAGLE, RETRIEVER, PUG)), ("rest", ())]
    rest = _rest_rows(plan.splits[0], 1)
    assert set(rest) <= set(BIRDS) and sum(rest.values()) == 3
    assert sorted(p for p, label in zip(plan.splits[0].paths, plan.splits[0].labels, strict=True) if label == 1) == \
        sorted(_lowest([p for w in BIRDS for p in _train_paths(w)], 3))


def test_group_by_overlap_is_an_error_naming_the_class_and_both_groups(zoo, tmp_path, capsys):
    message = _error(_plan, tree=zoo, group_by="dog,domestic animal")
    assert message == (
        "--group_by: 5 classes are below two groups: n02085620 (Chihuahua) is below dog and domestic animal, "
        "n02085782 (Japanese spaniel) is below dog and domestic animal, n02088364 (beagle) is below dog and "
        "domestic animal, n02099601 (golden retriever) is below dog and domestic animal and 1 more; use --overlap "
        "first to give each to the first group listed, or --exclude one side")
    # a class with two parents (minivan: car and passenger van) under two groups
    code, out, err = run_main(["--group_by", "car,van", "--data_dir", zoo.data_dir, "--out_dir", tmp_path / "o"],
                              capsys)
    assert (code, out) == (1, "")
    line = assert_one_error_line(err, f"{MINIVAN} (minivan) is below car and van", "--overlap first")
    assert line.startswith("imagenet-subset: error: --group_by: 1 ")
    assert not (tmp_path / "o").exists()
    # --exclude one side
    assert _labels(_plan(zoo, group_by="feline,domestic animal", exclude="domestic cat")) == [
        ("feline", (TIGER,)), ("domestic animal", tuple(DOGS))]


def test_group_by_overlap_first_gives_the_class_to_the_first_group(zoo):
    plan = _plan(zoo, group_by="dog,domestic animal", overlap="first")
    assert _labels(plan) == [("dog", tuple(DOGS)), ("domestic animal", tuple(CATS))]
    assert plan.input["hierarchy"]["overlap"] == "first"
    # the order given decides: tabby and Siamese are below cat and domestic animal
    assert _labels(_plan(zoo, group_by="cat,domestic animal", overlap="first")) == [("cat", tuple(CATS)),
                                                                                   ("domestic animal", tuple(DOGS))]


def test_group_by_overlap_first_that_empties_a_named_group_says_so(zoo):
    """Every class below dog is below domestic animal too: given first, it takes them all and the
    group dog, named by the user, would be left with no class. A named group without a class is an
    error (see the test below), so this one should be too, not a label silently dropped."""
    message = _error(_plan, tree=zoo, group_by="domestic animal,dog", overlap="first")
    assert "dog" in message


def test_group_by_a_group_without_a_class_is_an_error(zoo):
    hint = "imagenet-subset classes --tree --data_dir DIR shows what the tree holds"
    assert _error(_plan, tree=zoo, group_by="dog,zebra") == (
        f"--group_by: no class of {zoo.train_dir} is below zebra ({ZEBRA}); {hint}")
    assert _error(_plan, tree=zoo, group_by="dog,n02084071") == (
        "--group_by names n02084071 twice; name each synset once")
    assert _error(_plan, tree=zoo, group_by="dog,crane").startswith("--group_by: 'crane' is ambiguous: ")


def test_under_and_exclude_narrow_group_by(zoo):
    plan = _plan(zoo, group_by="dog,cat", under="domestic animal", exclude="toy dog")
    assert _labels(plan) == [("dog", (BEAGLE, RETRIEVER, PUG)), ("cat", tuple(CATS))]
    assert plan.subset.source == "--group_by dog,cat --exclude toy dog"
    # each name with the synset it resolved to
    assert plan.input["hierarchy"] == {"source": BUILTIN_NAME, "sha256": load_hierarchy().sha256,
                                       "under": [{"name": "domestic animal", "wnid": "n01317541"}],
                                       "exclude": [{"name": "toy dog", "wnid": TOY_DOG}],
                                       "groups": [{"name": "dog", "wnid": DOG}, {"name": "cat", "wnid": CAT}],
                                       "group_by": "dog,cat", "overlap": "error"}
    # feline holds tiger too; --under cat leaves only the true cats
    assert _labels(_plan(zoo, group_by="feline")) == [("feline", (TABBY, SIAMESE, TIGER))]
    assert _labels(_plan(zoo, group_by="feline", under="cat")) == [("feline", tuple(CATS))]


def test_a_group_emptied_by_under_or_exclude_says_which_narrowed_it(zoo):
    """A named group that has classes of the tree, but none once --under / --exclude are applied."""
    assert _error(_plan, tree=zoo, group_by="dog,bird", under="hunting dog") == (
        f"--group_by: no class of {zoo.train_dir} is below bird ({BIRD}) once --under is applied; {TREE_HINT}")
    assert _error(_plan, tree=zoo, group_by="dog,bird", exclude="bird") == (
        f"--group_by: no class of {zoo.train_dir} is below bird ({BIRD}) once --exclude is applied; {TREE_HINT}")
    assert _error(_plan, tree=zoo, group_by="dog,cat", under="domestic animal", exclude="domestic cat") == (
        f"--group_by: no class of {zoo.train_dir} is below cat ({CAT}) once --under and --exclude are applied; "
        f"{TREE_HINT}")
    assert _error(_plan, tree=zoo, group_by="toy dog,bird,cat", under="dog,bird", exclude="Chihuahua,"
                  "Japanese spaniel") == (
        f"--group_by: no class of {zoo.train_dir} is below toy dog ({TOY_DOG}) once --under and --exclude are "
        f"applied, cat ({CAT}) once --under and --exclude are applied; {TREE_HINT}")
    # a group the tree never had a class below gets no such words, even with --under
    assert _error(_plan, tree=zoo, group_by="dog,zebra", under="dog") == (
        f"--group_by: no class of {zoo.train_dir} is below zebra ({ZEBRA}); {TREE_HINT}")
    # without --under or --exclude, no such words
    assert _error(_plan, tree=zoo, group_by="bird,zebra") == (
        f"--group_by: no class of {zoo.train_dir} is below zebra ({ZEBRA}); {TREE_HINT}")


def test_exclude_names_resolve_among_the_classes_left_by_under(zoo):
    """crane is the bird and the machine; below bird it can only be the bird, below instrumentality the
    machine: --exclude picks among the classes --under left, with --under alone and with --group_by."""
    assert _error(_plan, tree=zoo, under="bird,instrumentality", exclude="crane").startswith(
        "--exclude: 'crane' is ambiguous: ")
    bird = _plan(zoo, under="bird", exclude="crane")
    assert _labels(bird) == _singles([HEN, GOOSE])
    assert bird.input["hierarchy"]["exclude"] == [{"name": "crane", "wnid": CRANE_BIRD}]
    machine = _plan(zoo, under="instrumentality", exclude="crane")
    assert _labels(machine) == _singles([MINIVAN])
    assert machine.input["hierarchy"]["exclude"] == [{"name": "crane", "wnid": CRANE_MACHINE}]
    grouped = _plan(zoo, group_by="bird", under="bird", exclude="crane")
    assert _labels(grouped) == [("bird", (HEN, GOOSE))]
    assert grouped.input["hierarchy"]["exclude"] == [{"name": "crane", "wnid": CRANE_BIRD}]
    assert _error(_plan, tree=zoo, group_by="motor vehicle,device", under="instrumentality", exclude="crane") == (
        f"--group_by: no class of {zoo.train_dir} is below device (n03183080) once --under and --exclude are "
        f"applied; {TREE_HINT}")
    # without --under, the whole tree: still ambiguous
    assert _error(_plan, tree=zoo, group_by="bird", exclude="crane").startswith("--exclude: 'crane' is ambiguous: ")


# a tree-shaped PARENT CHILD list, BREEDS-like: internal nodes need not be WNIDs
HIERARCHY_EDGES = f"""{ENTITY} n00015388
n00015388 dummy1
dummy1 {DOG}
dummy1 {CAT}
{DOG} {CHIHUAHUA}
{DOG} {BEAGLE}
{DOG} {PUG}
{CAT} {TABBY}
n00015388 {BIRD}
{BIRD} {GOOSE}
{BIRD} {HEN}
{ENTITY} n03575240
n03575240 {CRANE_MACHINE}
"""


def _edge_list(folder: Path, text: str = HIERARCHY_EDGES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "hierarchy.txt"
    path.write_text(text)
    return path


def test_group_by_level_on_an_own_hierarchy(zoo, tmp_path):
    edges = _edge_list(tmp_path)
    # depth 2: dummy1 (below animal), bird, and the crane class itself; ids sorted, a node without words by its id
    plan = _plan(zoo, group_by="level:2", hierarchy=str(edges))
    assert _labels(plan) == [("dummy1", (CHIHUAHUA, BEAGLE, PUG, TABBY)), ("bird", (HEN, GOOSE)),
                             ("crane", (CRANE_MACHINE,))]
    assert plan.name == "grouped_level_2"
    assert set(plan.splits[0].wnids) == {CHIHUAHUA, BEAGLE, PUG, TABBY, HEN, GOOSE, CRANE_MACHINE}
    # the 7 classes of the zoo the file does not hold are in no group, and a note says so
    not_in_file = "(they are nearer the root, or not in the hierarchy hierarchy.txt) and are in no group"
    assert [n for n in plan.notes if n.startswith("--group_by")] == [
        f"--group_by level:2: 7 classes have no synset at that level above them {not_in_file}: "
        f"{TENCH}, {CRANE_BIRD}, {JAPANESE_SPANIEL} and 4 more"]
    assert plan.input["hierarchy"]["groups"] == [{"name": "dummy1", "wnid": "dummy1"}, {"name": "bird", "wnid": BIRD},
                                                 {"name": "crane", "wnid": CRANE_MACHINE}]
    # depth 3: the classes at depth 3 are their own groups; the crane (depth 2) has no ancestor there
    deeper = _plan(zoo, group_by="level:3", hierarchy=str(edges))
    assert _labels(deeper) == [
        ("hen", (HEN,)), ("goose", (GOOSE,)), ("dog", (CHIHUAHUA, BEAGLE, PUG)), ("cat", (TABBY,))]
    assert [n for n in deeper.notes if n.startswith("--group_by")] == [
        f"--group_by level:3: 8 classes have no synset at that level above them {not_in_file}: "
        f"{TENCH}, {CRANE_BIRD}, {JAPANESE_SPANIEL} and 5 more"]
    assert CRANE_MACHINE not in deeper.splits[0].wnids
    assert _labels(_plan(zoo, group_by="level:1", hierarchy=str(edges))) == [
        ("animal", (HEN, GOOSE, CHIHUAHUA, BEAGLE, PUG, TABBY)), ("instrumentality", (CRANE_MACHINE,))]
    # every class placed: no note
    assert not [n for n in _plan(zoo, group_by="level:3", under="dummy1", hierarchy=str(edges)).notes
                if n.startswith("--group_by")]
    # a level below every class: the Chihuahua, beagle and pug are deepest, 4 edges down
    assert _error(_plan, tree=zoo, group_by="level:5", hierarchy=str(edges)) == (
        f"--group_by level:5: no class of {zoo.train_dir} has a synset 5 edges below the root above it; the deepest "
        "of them is at level 4")
    assert _error(_plan, tree=zoo, group_by="level:4", under="bird", hierarchy=str(edges)) == (
        f"--group_by level:4: no class of {zoo.train_dir} has a synset 4 edges below the root "
        "above it; the deepest of them is at level 3")
    # names work on it too: an internal node by its id; --under follows the file's edges, not WordNet's
    assert _labels(_plan(zoo, group_by="dummy1,bird", hierarchy=str(edges))) == [
        ("dummy1", (CHIHUAHUA, BEAGLE, PUG, TABBY)), ("bird", (HEN, GOOSE))]
    assert _labels(_plan(zoo, under="dog", hierarchy=str(edges))) == _singles([CHIHUAHUA, BEAGLE, PUG])
    assert _labels(_plan(zoo, group_by="level:2", under="dummy1", hierarchy=str(edges))) == [
        ("dummy1", (CHIHUAHUA, BEAGLE, PUG, TABBY))]


def test_group_by_level_on_wordnet(zoo, tmp_path, capsys):
    """WordNet is a DAG: 5 edges below entity (the shortest way) are organism and instrumentality;
    at 6, the minivan is below both container and conveyance (wheeled vehicle has two parents)."""
    plan = _plan(zoo, group_by="level:5")
    assert _labels(plan) == [("organism", tuple(sorted(set(ZOO_TRAIN) - {CRANE_MACHINE, MINIVAN}))),
                             ("instrumentality", (CRANE_MACHINE, MINIVAN))]
    assert plan.name == "grouped_level_5" and plan.subset.source == "--group_by level:5"
    assert not [n for n in plan.notes if n.startswith("--group_by")]  # every class is 5 edges down or more
    code, out, err = run_main(["--group_by", "level:6", "--data_dir", zoo.data_dir, "--out_dir", tmp_path / "o"],
                              capsys)
    assert (code, out) == (1, "") and not (tmp_path / "o").exists()
    line = assert_one_error_line(err, ": n03770679 (minivan) is below container and conveyance; use --overlap first to "
                                      "give each to the first group listed, or --exclude one side")
    assert line.startswith("imagenet-subset: error: --group_by: 1 ")
    # --overlap first: the first in WNID order (container n03094503, conveyance n03100490)
    assert _labels(_plan(zoo, group_by="level:6", overlap="first")) == [
        ("animal", tuple(sorted(set(ZOO_TRAIN) - {CRANE_MACHINE, MINIVAN}))), ("container", (MINIVAN,)),
        ("device", (CRANE_MACHINE,))]


# =========================================================================== 4. --balance

def test_class_quotas_spread_evenly():
    available = {CHIHUAHUA: 6, JAPANESE_SPANIEL: 1, BEAGLE: 4, RETRIEVER: 3, PUG: 2}
    # n // k each, the first n % k classes in WNID order one more; a class short of its share gives all it has
    assert class_quotas(available, 2) == {CHIHUAHUA: 1, JAPANESE_SPANIEL: 1, BEAGLE: 0, RETRIEVER: 0, PUG: 0}
    assert class_quotas(available, 4) == {CHIHUAHUA: 1, JAPANESE_SPANIEL: 1, BEAGLE: 1, RETRIEVER: 1, PUG: 0}
    assert class_quotas(available, 8) == {CHIHUAHUA: 2, JAPANESE_SPANIEL: 1, BEAGLE: 2, RETRIEVER: 2, PUG: 1}
    assert class_quotas(available, 12) == {CHIHUAHUA: 3, JAPANESE_SPANIEL: 1, BEAGLE: 3, RETRIEVER: 3, PUG: 2}
    assert class_quotas(available, 14) == {CHIHUAHUA: 4, JAPANESE_SPANIEL: 1, BEAGLE: 4, RETRIEVER: 3, PUG: 2}
    assert class_quotas(available, 16) == available
    assert class_quotas(available, 99) == available
    assert class_quotas(available, 0) == dict.fromkeys(available, 0)
    # what a short class lacks is spread over the others evenly
    assert class_quotas({"n00000001": 3, "n00000002": 10, "n00000003": 10}, 11) == {
        "n00000001": 3, "n00000002": 4, "n00000003": 4}
    assert class_quotas({"n00000003": 10, "n00000001": 10, "n00000002": 10}, 10) == {
        "n00000001": 4, "n00000002": 3, "n00000003": 3}
    assert class_quotas({"n00000001": 10}, 7) == {"n00000001": 7}
    for n in range(0, 20):
        quota = class_quotas(available, n)
        assert sum(quota.values()) == min(n, 16) and all(quota[w] <= available[w] for w in available)


def test_class_quotas_give_the_leftover_to_the_classes_first_in_order():
    available = {CHIHUAHUA: 6, JAPANESE_SPANIEL: 1, BEAGLE: 4, RETRIEVER: 3, PUG: 2}
    order = [PUG, RETRIEVER, BEAGLE, JAPANESE_SPANIEL, CHIHUAHUA]
    assert class_quotas(available, 2, order) == {CHIHUAHUA: 0, JAPANESE_SPANIEL: 0, BEAGLE: 0, RETRIEVER: 1, PUG: 1}
    assert class_quotas(available, 4, order) == {CHIHUAHUA: 0, JAPANESE_SPANIEL: 1, BEAGLE: 1, RETRIEVER: 1, PUG: 1}
    # the Japanese spaniel gives its one image; 7 left over 4 classes: 1 each, 3 more to pug, retriever, beagle
    assert class_quotas(available, 8, order) == {CHIHUAHUA: 1, JAPANESE_SPANIEL: 1, BEAGLE: 2, RETRIEVER: 2, PUG: 2}
    assert class_quotas(available, 14, order) == {CHIHUAHUA: 4, JAPANESE_SPANIEL: 1, BEAGLE: 4, RETRIEVER: 3, PUG: 2}
    # order=None is WNID order
    assert class_quotas(available, 4, None) == class_quotas(available, 4, sorted(available)) == {
        CHIHUAHUA: 1, JAPANESE_SPANIEL: 1, BEAGLE: 1, RETRIEVER: 1, PUG: 0}
    for n in range(0, 20):
        quota = class_quotas(available, n, order)
        assert sum(quota.values()) == min(n, 16) and all(quota[w] <= available[w] for w in available)


def test_class_order_is_seeded_and_stable():
    assert class_order(DOGS, 3, "train") == class_rank_order(DOGS, 3, "train") == [
        RETRIEVER, JAPANESE_SPANIEL, PUG, BEAGLE, CHIHUAHUA]
    assert class_order(list(reversed(DOGS)), 3, "train") == class_order(DOGS, 3, "train")  # the input order is moot
    assert class_order(set(DOGS), 3, "train") == class_order(DOGS, 3, "train")
    orders = {tuple(class_order(DOGS, seed, split)) for seed in range(6) for split in ("train", "val", "holdout")}
    assert len(orders) > 10  # it changes with the seed and the split
    for seed in range(6):
        for split in ("train", "val", "holdout"):
            assert class_order(DOGS + CATS + BIRDS + OTHERS, seed, split) == class_rank_order(
                DOGS + CATS + BIRDS + OTHERS, seed, split)
    assert class_order([], 0, "train") == []


def test_balance_classes_leftover_follows_the_seed(zoo):
    """4 train images over the 5 dog classes: which class goes without changes with the seed; the
    counts still add up, and each class gives its lowest-ranked images."""
    available = {w: ZOO_TRAIN[w] for w in DOGS}
    seen = set()
    for seed in range(6):
        plan = _plan(zoo, group_by="dog,cat,bird", train_per_class=4, val_per_class=2, balance="classes", seed=seed)
        train, val = plan.splits
        chosen = {w: len(_rows(train).get(w, [])) for w in DOGS}
        assert chosen == class_quotas(available, 4, class_rank_order(DOGS, seed, "train"))
        assert sum(chosen.values()) == 4 and np.bincount(train.labels).tolist() == [4, 4, 4]
        assert np.bincount(val.labels).tolist() == [2, 2, 2]
        for wnid, n in chosen.items():
            assert sorted(_rows(train).get(wnid, [])) == sorted(_lowest(_train_paths(wnid), n, seed=seed))
        seen.add(tuple(chosen.values()))
    assert len(seen) > 1  # not WNID order every time
    assert (1, 1, 1, 1, 0) in seen and seen != {(1, 1, 1, 1, 0)}
    # holdout ranks the classes by its own split name: 2 per label held out, then 2 trained on
    plan = _plan(zoo, group_by="dog,cat,bird", holdout_per_class=2, train_per_class=2, balance="classes", seed=1)
    holdout = {w: len(v) for w, v in _rows(plan.splits[2]).items() if w in DOGS}
    first = class_rank_order(DOGS, 1, "holdout")[:2]
    assert holdout == dict.fromkeys(first, 1) and first == [RETRIEVER, PUG]


def test_balance_classes_spreads_each_label_over_its_classes(zoo):
    plan = _plan(zoo, group_by="dog,cat,bird", train_per_class=4, val_per_class=2, balance="classes", seed=3)
    train, val = plan.splits
    chosen = _rows(train)
    # the images left over after an even share go to the classes first in the seeded order (seed 3, train)
    assert class_rank_order(DOGS, 3, "train") == [RETRIEVER, JAPANESE_SPANIEL, PUG, BEAGLE, CHIHUAHUA]
    assert class_rank_order(BIRDS, 3, "train") == [CRANE_BIRD, GOOSE, HEN]
    quotas = {CHIHUAHUA: 0, JAPANESE_SPANIEL: 1, BEAGLE: 1, RETRIEVER: 1, PUG: 1,  # 4 over 5 classes
              TABBY: 2, SIAMESE: 2,  # 4 over 3 + 2 images
              HEN: 1, GOOSE: 2, CRANE_BIRD: 1}  # the crane gives its one image, 3 left over goose and hen
    assert {w: len(chosen.get(w, [])) for w in quotas} == quotas
    for wnid, n in quotas.items():  # within a class, the lowest ranks
        assert sorted(chosen.get(wnid, [])) == sorted(_lowest(_train_paths(wnid), n, seed=3))
    assert np.bincount(train.labels).tolist() == [4, 4, 4]
    assert list(train.paths) == sorted(train.paths)  # rows keep the tree's order
    val_chosen = _rows(val)  # val ranks the classes by its own split name
    assert class_rank_order(DOGS, 3, "val")[:2] == [JAPANESE_SPANIEL, CHIHUAHUA]
    assert class_rank_order(BIRDS, 3, "val")[:2] == [HEN, GOOSE]
    assert {w: len(val_chosen.get(w, [])) for w in DOGS + CATS + BIRDS} == {
        CHIHUAHUA: 1, JAPANESE_SPANIEL: 1, BEAGLE: 0, RETRIEVER: 0, PUG: 0, TABBY: 1, SIAMESE: 1,
        HEN: 1, GOOSE: 1, CRANE_BIRD: 0}
    assert plan.input["hierarchy"]["group_by"] == "dog,cat,bird"


def test_balance_labels_takes_the_lowest_ranks_of_the_whole_label(zoo):
    plan = _plan(zoo, group_by="dog,cat,bird", train_per_class=4, seed=3)
    train = plan.splits[0]
    for label, group in enumerate([DOGS, CATS, BIRDS]):
        mine = [p for p, lab in zip(train.paths, train.labels, strict=True) if lab == label]
        assert sorted(mine) == sorted(_lowest([p for w in group for p in _train_paths(w)], 4, seed=3))
    # the two rules choose differently here: labels takes no Japanese spaniel nor pug but 3 Chihuahuas ...
    dogs = {w: len(v) for w, v in _rows(train).items() if w in DOGS}
    balanced = {w: len(v) for w, v in _rows(_plan(zoo, group_by="dog,cat,bird", train_per_class=4, seed=3,
                                                  balance="classes").splits[0]).items() if w in DOGS}
    assert dogs != balanced and sum(dogs.values()) == sum(balanced.values()) == 4


def test_balance_classes_with_a_short_label_keeps_all_and_notes_it(zoo):
    plan = _plan(zoo, group_by="cat,bird", train_per_class=6, balance="classes")
    assert np.bincount(plan.splits[0].labels).tolist() == [5, 6]
    assert {w: len(v) for w, v in _rows(plan.splits[0]).items()} == {TABBY: 3, SIAMESE: 2, HEN: 2, GOOSE: 3,
                                                                     CRANE_BIRD: 1}
    notes = [n for n in plan.notes if n.startswith("train:")]
    assert len(notes) == 1 and "cat (5 of 6)" in notes[0] and "bird" not in notes[0]


def test_balance_classes_on_single_class_labels_changes_nothing(zoo):
    one = _plan(zoo, under="dog", train_per_class=2, seed=1)
    other = _plan(zoo, under="dog", train_per_class=2, seed=1, balance="classes")
    assert one.splits[0].paths == other.splits[0].paths and one.splits[1].paths == other.splits[1].paths


# =========================================================================== 5. restricted_imagenet

RESTRICTED = [("dog", 151, 268), ("cat", 281, 285), ("frog", 30, 32), ("turtle", 33, 37), ("bird", 80, 100),
              ("primate", 365, 382), ("fish", 389, 397), ("crab", 118, 121), ("insect", 300, 319)]


def _restricted_groups() -> list[tuple[str, tuple[str, ...]]]:
    wnids = sorted(row["wnid"] for row in _classes_table())
    return [(name, tuple(wnids[first:last + 1])) for name, first, last in RESTRICTED]


def test_restricted_imagenet_is_the_robustness_librarys_definition():
    assert "restricted_imagenet" in builtin_list_names()
    subset = read_subset_list("restricted_imagenet")
    assert subset.source == "built-in:restricted_imagenet" and subset.name == "restricted_imagenet"
    assert [(label.name, label.wnids) for label in subset.labels] == _restricted_groups()
    assert [len(label.wnids) for label in subset.labels] == [118, 5, 3, 5, 21, 18, 9, 4, 20]
    assert len(subset.wnids) == len(set(subset.wnids)) == 203
    # cross-checks with the hierarchy: the dog range is every dog, the cat range the domestic cats
    hierarchy = load_hierarchy()
    classes = {row["wnid"] for row in _classes_table()}
    assert set(subset.labels[0].wnids) == hierarchy.descendants(DOG) & classes
    assert set(subset.labels[1].wnids) == hierarchy.descendants("n02121808") & classes
    assert set(subset.labels[4].wnids) < hierarchy.descendants(BIRD) & classes  # 21 of the 59 birds


@pytest.fixture(scope="module")
def restricted_tree(module_tmp_path_factory):
    """Every class of Restricted ImageNet, one train image each; one val image per label."""
    groups = _restricted_groups()
    counts = {w: 1 for _, wnids in groups for w in wnids}
    val = {number: wnids[0] for number, (_, wnids) in enumerate(groups, start=1)}
    return plain_tree(module_tmp_path_factory.mktemp("restricted"), counts=counts, val=val, sorted_val=True)


def test_restricted_imagenet_builds(restricted_tree, tmp_path):
    result = packer.build(BuildOptions(subset_name="restricted_imagenet", data_dir=str(restricted_tree.data_dir),
                                       out_dir=str(tmp_path / "out"), **SMALL))
    assert result.name == "restricted_imagenet" and result.num_classes == 9
    assert result.counts == {"train": 203, "val": 9}
    data = read_npz(result.archive)
    assert np.bincount(data["y_train"]).tolist() == [118, 5, 3, 5, 21, 18, 9, 4, 20]
    assert data["y_val"].tolist() == list(range(9))  # val image n: the first class of label n - 1
    rows = _metadata(result.metadata)
    assert [r["human_label"] for r in rows] == [name for name, _, _ in RESTRICTED]
    assert [r["WNID"] for r in rows] == [" ".join(wnids) for _, wnids in _restricted_groups()]
    manifest = json.loads(result.manifest.read_text())
    assert manifest["subset_source"] == "built-in:restricted_imagenet"
    assert "hierarchy" not in manifest["input"]


def test_restricted_imagenet_on_a_tree_with_a_few_of_its_classes(tmp_path):
    """A built-in list names classes the tree must hold, as for every built-in list: a tree with a few
    of them is one error naming how many are missing (--group_by takes what the tree holds)."""
    tree = plain_tree(tmp_path / "few", counts={CHIHUAHUA: 2, TABBY: 2, GOOSE: 1, TENCH: 1},
                      val={1: CHIHUAHUA, 2: TABBY}, sorted_val=True)
    message = _error(_plan, tree=tree, subset_name="restricted_imagenet")
    assert message.startswith(f"built-in:restricted_imagenet: 200 WNIDs have no folder in {tree.train_dir}: ")
    plan = _plan(tree, group_by="dog,cat,bird")
    assert _labels(plan) == [("dog", (CHIHUAHUA,)), ("cat", (TABBY,)), ("bird", (GOOSE,))]


# =========================================================================== 6. manifest and recipes

def test_manifest_records_the_hierarchy(grouped):
    manifest = json.loads(grouped.manifest.read_text())
    assert manifest["input"]["hierarchy"] == {"source": BUILTIN_NAME, "sha256": load_hierarchy().sha256,
                                              "under": [], "exclude": [],
                                              "groups": [{"name": "dog", "wnid": DOG}, {"name": "cat", "wnid": CAT},
                                                         {"name": "bird", "wnid": BIRD}],
                                              "group_by": "dog,cat,bird", "overlap": "error"}
    assert manifest["options"]["sampling"]["balance"] == "labels"


def test_plain_build_has_no_hierarchy_record(zoo):
    plan = _plan(zoo, classes=[PUG, TABBY])
    assert "hierarchy" not in plan.input


def _wordnet_dir(folder: Path) -> Path:
    """Own words.txt and wordnet.is_a.txt: a small chain down to dog, which holds pooch (outside the 1,000)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "words.txt").write_text(
        f"{ENTITY}\tentity\n"
        "n00015388\tanimal, animate being, beast, brute, creature, fauna\n"
        "n01317541\tdomestic animal, domesticated animal\n"
        f"{DOG}\tdog, domestic dog, Canis familiaris\n"
        f"{POOCH}\tpooch, doggie, doggy, barker, bow-wow\n"
        f"{CHIHUAHUA}\tChihuahua\n")
    (folder / "wordnet.is_a.txt").write_text(
        f"{ENTITY} n00015388\nn00015388 n01317541\nn01317541 {DOG}\n{DOG} {POOCH}\n{DOG} {CHIHUAHUA}\n")
    return folder


def test_an_edited_hierarchy_file_is_read_again(zoo, tmp_path):
    """In one Python session (a notebook), a hierarchy file edited or removed between two builds: the
    second build reads the file as it is now, and records that file's sha256."""
    edges = _edge_list(tmp_path, f"{ENTITY} {DOG}\n{DOG} {PUG}\n")
    first = _plan(zoo, under="dog", hierarchy=str(edges))
    assert _labels(first) == _singles([PUG])
    edges.write_text(f"{ENTITY} {DOG}\n{DOG} {PUG}\n{DOG} {BEAGLE}\n")
    second = _plan(zoo, under="dog", hierarchy=str(edges))
    assert _labels(second) == _singles([BEAGLE, PUG])
    assert second.input["hierarchy"]["sha256"] != first.input["hierarchy"]["sha256"]
    edges.unlink()
    assert _error(_plan, tree=zoo, under="dog", hierarchy=str(edges)).startswith(
        f"--hierarchy {edges} does not exist")


def test_the_record_names_the_files_read(zoo, tmp_path):
    builtin = _plan(zoo, under="dog").input["hierarchy"]
    edges = _edge_list(tmp_path / "edges")
    own = _plan(zoo, under="dog", hierarchy=str(edges)).input["hierarchy"]
    wordnet = _wordnet_dir(tmp_path / "wordnet")
    full = _plan(zoo, under="dog", wordnet=str(wordnet)).input["hierarchy"]
    # --under alone: no groups
    assert builtin == {"source": BUILTIN_NAME, "sha256": load_hierarchy().sha256,
                       "under": [{"name": "dog", "wnid": DOG}], "exclude": [], "group_by": None, "overlap": "error"}
    # file names only, never where they are on this machine
    assert own["source"] == "hierarchy hierarchy.txt" and full["source"] == "WordNet hierarchy in wordnet/"
    assert str(tmp_path) not in json.dumps([own, full])
    assert _plan(zoo, under="dog", wordnet=f"{wordnet}/").input["hierarchy"]["source"] == \
        "WordNet hierarchy in wordnet/"
    assert own["under"] == full["under"] == [{"name": "dog", "wnid": DOG}]
    # the names as given, each with the synset it resolved to (a WNID resolves to itself)
    several = _plan(zoo, under=f"Canis familiaris,{BIRD}", exclude="toy,n02110958").input["hierarchy"]
    assert several["under"] == [{"name": "Canis familiaris", "wnid": DOG}, {"name": BIRD, "wnid": BIRD}]
    assert several["exclude"] == [{"name": "toy", "wnid": TOY_DOG}, {"name": PUG, "wnid": PUG}]
    assert "groups" not in several
    assert len({builtin["sha256"], own["sha256"], full["sha256"]}) == 3
    assert all(len(r["sha256"]) == 64 for r in (builtin, own, full))
    # the same files give the same sha256; a changed edge list another
    other = _edge_list(tmp_path / "other")
    assert _plan(zoo, under="dog", hierarchy=str(other)).input["hierarchy"]["sha256"] == own["sha256"]
    changed = _edge_list(tmp_path / "changed", HIERARCHY_EDGES + f"{DOG} {RETRIEVER}\n")
    assert _plan(zoo, under="dog", hierarchy=str(changed)).input["hierarchy"]["sha256"] != own["sha256"]
    assert _labels(_plan(zoo, under="dog", hierarchy=str(changed))) == _singles([CHIHUAHUA, BEAGLE, RETRIEVER, PUG])


def test_a_recipe_rebuilds_the_labels_without_the_hierarchy(zoo, tmp_path, capsys):
    edges = _edge_list(tmp_path / "edges")
    original = _build(zoo, tmp_path / "first", group_by="level:2", hierarchy=str(edges), train_per_class=3,
                      balance="classes")
    edges.unlink()  # the other machine has no such file; the recipe needs none
    report = packer.rebuild_from_recipe(original.manifest, str(zoo.data_dir), out_dir=str(tmp_path / "again"),
                                        workers=1, progress=False)
    assert report.archive_matches and report.metadata_matches
    assert report.result.sha256 == original.sha256
    first, again = (json.loads(Path(m).read_text()) for m in (original.manifest, report.result.manifest))
    assert again["classes"] == first["classes"] == [
        {"label": 0, "name": "dummy1", "wnids": [CHIHUAHUA, BEAGLE, PUG, TABBY], "human_label": "dummy1"},
        {"label": 1, "name": "bird", "wnids": [HEN, GOOSE], "human_label": "bird"},
        {"label": 2, "name": "crane", "wnids": [CRANE_MACHINE], "human_label": "crane"}]
    assert again["input"]["hierarchy"] == first["input"]["hierarchy"]
    assert first["input"]["hierarchy"]["source"] == "hierarchy hierarchy.txt"
    assert first["input"]["hierarchy"]["groups"] == [{"name": "dummy1", "wnid": "dummy1"},
                                                     {"name": "bird", "wnid": BIRD},
                                                     {"name": "crane", "wnid": CRANE_MACHINE}]
    assert str(tmp_path) not in json.dumps(first["input"]["hierarchy"])
    assert first["options"]["sampling"]["balance"] == "classes" and first["options"]["sampling"]["train_per_class"] == 3
    assert first["splits"]["train"]["per_class"] == again["splits"]["train"]["per_class"]
    # from the command line: no hierarchy option needed, and none taken (the recipe fixes the labels)
    code, out, err = run_main(["build", "--recipe", original.manifest, "--data_dir", zoo.data_dir, "--out_dir",
                               tmp_path / "cli", "--workers", "1", "--quiet"], capsys)
    assert (code, err) == (0, "")
    assert f"archive identical to the recipe (sha256 {original.sha256})" in out
    assert sha256(tmp_path / "cli" / "grouped_level_2_cls.npz") == original.sha256
    wordnet = _wordnet_dir(tmp_path / "wordnet")
    for option in (["--under", "dog"], ["--wordnet", wordnet], ["--balance", "labels"]):
        code, out, err = run_main(["build", "--recipe", original.manifest, "--data_dir", zoo.data_dir, "--out_dir",
                                   tmp_path / "refused", *option], capsys)
        assert (code, out) == (1, "")
        assert_one_error_line(err, f"{option[0]}: the recipe {original.manifest} fixes the options that shape the "
                                   "archive")
    assert not (tmp_path / "refused").exists()


# =========================================================================== 7. classes --tree, --search, --under

ANIMALS = {CHIHUAHUA: 3, PUG: 2, TABBY: 3}
ANIMALS_VAL = {1: PUG, 2: CHIHUAHUA, 3: TABBY, 4: PUG}

ANIMALS_TREE = """\
entity (n00001740): 3 classes, 8 train, 4 val
  physical entity (n00001930): 3 classes, 8 train, 4 val
    object (n00002684): 3 classes, 8 train, 4 val
      whole (n00003553): 3 classes, 8 train, 4 val
        living thing (n00004258): 3 classes, 8 train, 4 val
          organism (n00004475): 3 classes, 8 train, 4 val
            animal (n00015388): 3 classes, 8 train, 4 val
              chordate (n01466257): 3 classes, 8 train, 4 val
                vertebrate (n01471682): 3 classes, 8 train, 4 val
                  mammal (n01861778): 3 classes, 8 train, 4 val
                    placental (n01886756): 3 classes, 8 train, 4 val
                      carnivore (n02075296): 3 classes, 8 train, 4 val
                        canine (n02083346): 2 classes, 5 train, 3 val
                          dog (n02084071): 2 classes, 5 train, 3 val  [also under domestic animal]
                            pug (n02110958): 2 train, 2 val
                            toy dog (n02085374): 1 class, 3 train, 1 val
                              Chihuahua (n02085620): 3 train, 1 val
                        feline (n02120997): 1 class, 3 train, 1 val
                          cat (n02121620): 1 class, 3 train, 1 val
                            domestic cat (n02121808): 1 class, 3 train, 1 val  [also under domestic animal]
                              tabby (n02123045): 3 train, 1 val
              domestic animal (n01317541): 3 classes, 8 train, 4 val
                dog (n02084071): 2 classes, 5 train, 3 val  [also under canine]
                  pug (n02110958): 2 train, 2 val
                  toy dog (n02085374): 1 class, 3 train, 1 val
                    Chihuahua (n02085620): 3 train, 1 val
                domestic cat (n02121808): 1 class, 3 train, 1 val  [also under cat]
                  tabby (n02123045): 3 train, 1 val
"""


@pytest.fixture(scope="module")
def animals(module_tmp_path_factory):
    return plain_tree(module_tmp_path_factory.mktemp("animals"), counts=ANIMALS, val=ANIMALS_VAL, sorted_val=True)


def _classes(capsys, *argv) -> list[str]:
    code, out, err = run_main(["classes", *argv], capsys)
    assert (code, err) == (0, ""), err
    return out.splitlines()


def test_classes_tree(animals, capsys):
    assert _classes(capsys, "--data_dir", animals.data_dir, "--tree") == ANIMALS_TREE.splitlines()


def test_classes_tree_under_and_depth(animals, capsys):
    assert _classes(capsys, "--data_dir", animals.data_dir, "--tree", "--under", "dog") == [
        "dog (n02084071): 2 classes, 5 train, 3 val",
        "  pug (n02110958): 2 train, 2 val",
        "  toy dog (n02085374): 1 class, 3 train, 1 val",
        "    Chihuahua (n02085620): 3 train, 1 val"]
    assert _classes(capsys, "--data_dir", animals.data_dir, "--tree", "--depth", "2") == \
        ANIMALS_TREE.splitlines()[:3]
    assert _classes(capsys, "--data_dir", animals.data_dir, "--tree", "--depth", "0") == \
        ANIMALS_TREE.splitlines()[:1]
    assert _classes(capsys, "--data_dir", animals.data_dir, "--tree", "--under", "domestic animal", "--depth",
                    "1") == [
        "domestic animal (n01317541): 3 classes, 8 train, 4 val",
        "  dog (n02084071): 2 classes, 5 train, 3 val  [also under canine]",
        "  domestic cat (n02121808): 1 class, 3 train, 1 val  [also under cat]"]
    assert _classes(capsys, "--data_dir", animals.data_dir, "--tree", "--under", "dog,cat", "--depth", "1") == [
        "dog (n02084071): 2 classes, 5 train, 3 val",
        "  pug (n02110958): 2 train, 2 val",
        "  toy dog (n02085374): 1 class, 3 train, 1 val",
        "cat (n02121620): 1 class, 3 train, 1 val",
        "  domestic cat (n02121808): 1 class, 3 train, 1 val  [also under domestic animal]"]


def test_classes_tree_shows_a_class_under_both_its_parents(zoo, capsys):
    assert _classes(capsys, "--data_dir", zoo.data_dir, "--tree", "--under", "motor vehicle") == [
        "motor vehicle (n03791235): 1 class, 2 train, 1 val",
        "  car (n02958343): 1 class, 2 train, 1 val",
        "    minivan (n03770679): 2 train, 1 val  [also under passenger van]",
        "  truck (n04490091): 1 class, 2 train, 1 val",
        "    van (n04520170): 1 class, 2 train, 1 val",
        "      passenger van (n03896419): 1 class, 2 train, 1 val",
        "        minivan (n03770679): 2 train, 1 val  [also under car]"]
    lines = _classes(capsys, "--data_dir", zoo.data_dir, "--tree")
    assert lines[0] == "entity (n00001740): 14 classes, 35 train, 15 val"
    assert sum(line.strip().startswith("minivan (") for line in lines) == 4  # two parents, below two vehicles
    assert sum(line.strip().startswith("Chihuahua (") for line in lines) == 2


def test_classes_under_lists_the_classes_below(zoo, capsys):
    assert _classes(capsys, "--data_dir", zoo.data_dir, "--under", "cat") == [
        f"{'WNID':<10} {'train':>6} {'val':>5}  human_label",
        f"{TABBY}       3     1  tabby",
        f"{SIAMESE}       2     1  Siamese_cat",
        "2 classes, 5 train and 2 val images"]
    assert _classes(capsys, "--data_dir", zoo.data_dir, "--under", "toy dog,bird")[1:] == [
        f"{HEN}       2     1  hen",
        f"{GOOSE}       3     1  goose",
        f"{CRANE_BIRD}       1     1  crane",
        f"{CHIHUAHUA}       6     2  Chihuahua",
        f"{JAPANESE_SPANIEL}       1     1  Japanese_spaniel",
        "5 classes, 13 train and 6 val images"]


def test_classes_search_shows_the_path(zoo, capsys):
    assert _classes(capsys, "--data_dir", zoo.data_dir, "--search", "spaniel") == [
        f"{'WNID':<10} {'train':>6} {'val':>5}  human_label",
        f"{JAPANESE_SPANIEL}       1     1  Japanese_spaniel  [{ORGANISM} > animal > domestic animal > dog > toy dog]",
        "1 classes, 1 train and 1 val images"]
    assert _classes(capsys, "--data_dir", zoo.data_dir, "--search", "crane")[1:3] == [
        f"{CRANE_BIRD}       1     1  crane  [{CRANE_PATHS[CRANE_BIRD].removesuffix(' > crane')}]",
        f"{CRANE_MACHINE}       2     1  crane  [{CRANE_PATHS[CRANE_MACHINE].removesuffix(' > crane')}]"]
    # --search and --under together: the classes below that match
    assert _classes(capsys, "--data_dir", zoo.data_dir, "--under", "bird", "--search", "crane")[1:] == [
        f"{CRANE_BIRD}       1     1  crane  [{CRANE_PATHS[CRANE_BIRD].removesuffix(' > crane')}]",
        "1 classes, 1 train and 1 val images"]


@pytest.fixture(scope="module")
def outside(module_tmp_path_factory):
    """Chihuahua, pooch (a WordNet synset outside the 1,000 classes) and tench."""
    return plain_tree(module_tmp_path_factory.mktemp("outside"), counts={CHIHUAHUA: 2, POOCH: 3, TENCH: 1},
                      val={1: POOCH, 2: CHIHUAHUA, 3: TENCH}, sorted_val=True)


def test_own_wordnet_files(outside, tmp_path, capsys):
    wordnet = _wordnet_dir(tmp_path / "wordnet")
    assert _classes(capsys, "--data_dir", outside.data_dir, "--tree", "--wordnet", wordnet) == [
        "entity (n00001740): 2 classes, 5 train, 2 val",
        "  animal (n00015388): 2 classes, 5 train, 2 val",
        "    domestic animal (n01317541): 2 classes, 5 train, 2 val",
        "      dog (n02084071): 2 classes, 5 train, 2 val",
        "        Chihuahua (n02085620): 2 train, 1 val",
        "        pooch (n02084732): 3 train, 1 val",
        f"not in the WordNet hierarchy in wordnet/: {TENCH}"]
    assert _classes(capsys, "--data_dir", outside.data_dir, "--tree") == [
        "entity (n00001740): 2 classes, 3 train, 2 val",
        "  physical entity (n00001930): 2 classes, 3 train, 2 val",
        "    object (n00002684): 2 classes, 3 train, 2 val",
        "      whole (n00003553): 2 classes, 3 train, 2 val",
        "        living thing (n00004258): 2 classes, 3 train, 2 val",
        "          organism (n00004475): 2 classes, 3 train, 2 val",
        "            animal (n00015388): 2 classes, 3 train, 2 val",
        "              chordate (n01466257): 2 classes, 3 train, 2 val",
        "                vertebrate (n01471682): 2 classes, 3 train, 2 val",
        "                  aquatic vertebrate (n01473806): 1 class, 1 train, 1 val",
        "                    fish (n02512053): 1 class, 1 train, 1 val",
        "                      bony fish (n02514825): 1 class, 1 train, 1 val",
        "                        teleost fish (n02528163): 1 class, 1 train, 1 val",
        "                          soft-finned fish (n01428580): 1 class, 1 train, 1 val",
        "                            cypriniform fish (n01438208): 1 class, 1 train, 1 val",
        "                              cyprinid (n01439121): 1 class, 1 train, 1 val",
        "                                tench (n01440764): 1 train, 1 val",
        "                  mammal (n01861778): 1 class, 2 train, 1 val",
        "                    placental (n01886756): 1 class, 2 train, 1 val",
        "                      carnivore (n02075296): 1 class, 2 train, 1 val",
        "                        canine (n02083346): 1 class, 2 train, 1 val",
        "                          dog (n02084071): 1 class, 2 train, 1 val  [also under domestic animal]",
        "                            toy dog (n02085374): 1 class, 2 train, 1 val",
        "                              Chihuahua (n02085620): 2 train, 1 val",
        "              domestic animal (n01317541): 1 class, 2 train, 1 val",
        "                dog (n02084071): 1 class, 2 train, 1 val  [also under canine]",
        "                  toy dog (n02085374): 1 class, 2 train, 1 val",
        "                    Chihuahua (n02085620): 2 train, 1 val",
        f"not in the {BUILTIN_NAME}: {POOCH}"]
    assert _classes(capsys, "--data_dir", outside.data_dir, "--search", "chihuahua", "--wordnet", wordnet)[1] == (
        f"{CHIHUAHUA}       2     1  Chihuahua  [entity > animal > domestic animal > dog]")
    # building: the packaged hierarchy knows no pooch; the user's does
    assert _labels(_plan(outside, under="dog")) == _singles([CHIHUAHUA])
    assert _labels(_plan(outside, under="dog", wordnet=str(wordnet))) == _singles([POOCH, CHIHUAHUA])
    assert _labels(_plan(outside, under="bow-wow", wordnet=str(wordnet))) == _singles([POOCH])
    assert _error(_plan, tree=outside, under="pooch").startswith(
        f"--under: no synset named 'pooch' in the {BUILTIN_NAME}")
    # --wordnet with --hierarchy: the user's names, the file's edges
    edges = _edge_list(tmp_path / "edges", f"{ENTITY} {DOG}\n{DOG} {POOCH}\n")
    assert _labels(_plan(outside, group_by="level:1", wordnet=str(wordnet), hierarchy=str(edges))) == [
        ("dog", (POOCH,))]


# =========================================================================== 8. option errors

def _fails(capsys, tmp_path, argv, message: str) -> None:
    code, out, err = run_main([*argv, "--out_dir", tmp_path / "o"], capsys)
    assert (code, out) == (1, "")
    assert assert_one_error_line(err) == f"imagenet-subset: error: {message}"
    assert not (tmp_path / "o").exists()


BALANCE_NEEDS_A_COUNT = ("--balance classes spreads --train_per_class, --val_per_class, --holdout_per_class or --rest "
                         "images over a label's classes; give one of them")


@pytest.mark.parametrize("argv, message", [
    (["--exclude", "toy dog"], "--exclude removes classes from --under or --group_by; give one of them"),
    (["--exclude", "toy dog", "--classes", "pug"], "--exclude removes classes from --under or --group_by; give one "
                                                   "of them"),
    (["--overlap", "first"], "--overlap applies to --group_by; drop it or give --group_by"),
    (["--overlap", "first", "--under", "dog"], "--overlap applies to --group_by; drop it or give --group_by"),
    (["--group_by", "level:x"], "--group_by level:x: the level is a whole number of edges below the root, as level:3"),
    (["--group_by", "level:-1"], "--group_by level:-1: the level is a whole number of edges below the root, as "
                                 "level:3"),
    (["--group_by", ""], "--group_by needs synset names, as \"dog,cat\", or level:N"),
    (["--group_by", " , "], "--group_by needs synset names, as \"dog,cat\", or level:N"),
    (["--under", ","], "--under ',' must name synsets, as \"dog\" or \"dog,cat\""),
    (["--under", "dog", "--classes", "pug"], "--classes and --under each choose the classes; use one of them "
                                             "(--under may narrow --group_by)"),
    (["--under", "dog", "--search", "pug"], "--search and --under each choose the classes; use one of them "
                                            "(--under may narrow --group_by)"),
    (["--group_by", "dog", "--classes", "pug"], "--classes and --group_by each choose the classes; use one of them "
                                                "(--under may narrow --group_by)"),
    (["--balance", "classes"], BALANCE_NEEDS_A_COUNT),
    (["--balance", "classes", "--group_by", "dog,cat"], BALANCE_NEEDS_A_COUNT),
    (["--balance", "classes", "--under", "dog", "--holdout_per_class", "0"], BALANCE_NEEDS_A_COUNT),
    (["--balance", "evenly"], "argument --balance: invalid choice: 'evenly' (choose from 'labels', 'classes') (see "
                              "imagenet-subset --help)"),
    (["--overlap", "last", "--group_by", "dog"], "argument --overlap: invalid choice: 'last' (choose from 'error', "
                                                 "'first') (see imagenet-subset --help)"),
])
def test_option_errors(zoo, tmp_path, capsys, argv, message):
    _fails(capsys, tmp_path, ["--data_dir", zoo.data_dir, *argv], message)


def test_bad_hierarchy_files(zoo, tmp_path, capsys):
    missing = tmp_path / "missing.txt"
    line = f"--hierarchy {missing} does not exist; pass a PARENT CHILD edge list, one edge per line"
    code, out, err = run_main(["--under", "dog", "--hierarchy", missing, "--data_dir", zoo.data_dir, "--out_dir",
                               tmp_path / "o"], capsys)
    assert (code, out) == (1, "") and not (tmp_path / "o").exists()
    assert_one_error_line(err, line)
    three = _edge_list(tmp_path / "three", f"{ENTITY} {DOG}\n{DOG} {PUG} {BEAGLE}\n")
    _fails(capsys, tmp_path, ["--under", "dog", "--hierarchy", three, "--data_dir", zoo.data_dir],
           f"{three}:2: expected 'PARENT CHILD' (two different ids); fix or replace the file")
    loop = _edge_list(tmp_path / "loop", f"{ENTITY} {DOG}\n{DOG} {DOG}\n")
    _fails(capsys, tmp_path, ["--under", "dog", "--hierarchy", loop, "--data_dir", zoo.data_dir],
           f"{loop}:2: expected 'PARENT CHILD' (two different ids); fix or replace the file")
    cycle = _edge_list(tmp_path / "cycle", f"{ENTITY} n00015388\nn00015388 {DOG}\n{DOG} n00015388\n{DOG} {PUG}\n")
    _fails(capsys, tmp_path, ["--group_by", "level:1", "--hierarchy", cycle, "--data_dir", zoo.data_dir],
           f"{cycle}: the edges make a cycle through n00015388; an is-a hierarchy has none")
    # classes --tree reads the same files, with the same errors
    code, out, err = run_main(["classes", "--tree", "--hierarchy", cycle, "--data_dir", zoo.data_dir], capsys)
    assert (code, out) == (1, "")
    assert_one_error_line(err, "the edges make a cycle through n00015388")


def test_bad_wordnet_folders(zoo, tmp_path, capsys):
    a_file = tmp_path / "words.txt"
    a_file.write_text(f"{DOG}\tdog\n")
    hint = "pass the folder holding ImageNet's words.txt and wordnet.is_a.txt"
    _fails(capsys, tmp_path, ["--under", "dog", "--wordnet", a_file, "--data_dir", zoo.data_dir],
           f"--wordnet {a_file} is not a folder; {hint}")
    _fails(capsys, tmp_path, ["--under", "dog", "--wordnet", tmp_path / "nowhere", "--data_dir", zoo.data_dir],
           f"--wordnet {tmp_path / 'nowhere'} is not a folder; {hint}")
    half = tmp_path / "half"
    half.mkdir()
    (half / "words.txt").write_text(f"{DOG}\tdog\n")
    code, out, err = run_main(["--under", "dog", "--wordnet", half, "--data_dir", zoo.data_dir, "--out_dir",
                               tmp_path / "o"], capsys)
    assert (code, out) == (1, "") and not (tmp_path / "o").exists()
    assert_one_error_line(err, f"--wordnet file {half / 'wordnet.is_a.txt'} does not exist")
    (half / "wordnet.is_a.txt").write_text(f"{ENTITY} {DOG}\n")
    (half / "words.txt").write_text(f"{ENTITY}\tentity\n{DOG} dog\n")  # a space, not a tab
    _fails(capsys, tmp_path, ["--under", "dog", "--wordnet", half, "--data_dir", zoo.data_dir],
           f"{half / 'words.txt'}:2: expected 'WNID<TAB>names'; fix or replace the file")


def test_option_errors_in_python(zoo):
    assert _error(BuildOptions, under=[]) == "--under [] must name synsets, as \"dog\" or \"dog,cat\""
    assert _error(BuildOptions, exclude="toy dog") == (
        "--exclude removes classes from --under or --group_by; give one of them")
    assert _error(BuildOptions, group_by="dog", search="dog") == (
        "--search and --group_by each choose the classes; use one of them (--under may narrow --group_by)")
    assert _error(BuildOptions, group_by="dog,cat", balance="classes") == BALANCE_NEEDS_A_COUNT
    assert _error(BuildOptions, group_by="dog,cat", balance="classes", holdout_per_class=0) == BALANCE_NEEDS_A_COUNT
    for count in ({"train_per_class": 2}, {"val_per_class": 1}, {"holdout_per_class": 1}, {"rest": 3}):
        assert BuildOptions(group_by="dog,cat", balance="classes", **count).balance == "classes"
    options = BuildOptions(under="dog, toy dog", exclude=["pug"], group_by="cat")
    assert options.under == ("dog", "toy dog") and options.exclude == ("pug",)
    assert BuildOptions(under="dog").sampling["balance"] == "labels"


# =========================================================================== end to end

@pytest.mark.slow
def test_command_line_build_and_lazy_hierarchy(zoo, tmp_path):
    """The installed command packs a grouped, balanced subset; a plain build never loads the hierarchy."""
    command = Path(PYTHON).parent / "imagenet-subset"
    run = subprocess.run([str(command), "--group_by", "dog,cat,bird", "--balance", "classes", "--train_per_class",
                          "4", "--data_dir", str(zoo.data_dir), "--out_dir", str(tmp_path / "out"), "--workers", "1",
                          "--resize_size", "32", "--crop_size", "24", "--quiet"], capture_output=True, text=True,
                         env=subprocess_env(), cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    assert run.stdout.splitlines()[0].startswith("grouped_dog_cat_bird: 12 train, 11 val images, 3 classes -> ")
    data = read_npz(tmp_path / "out" / "grouped_dog_cat_bird_cls.npz")
    assert np.bincount(data["y_train"]).tolist() == [4, 4, 4]
    probe = ("import sys, packer\n"
             "packer.build(packer.BuildOptions(subset_name=sys.argv[1], data_dir=sys.argv[2], out_dir=sys.argv[3], "
             "workers=1, progress=False, resize_size=32, crop_size=24))\n"
             "print('packer.hierarchy' in sys.modules)\n")
    class_list = tmp_path / "two.txt"
    class_list.write_text(f"{PUG}\n{TABBY}\n")
    run = subprocess.run([PYTHON, "-c", probe, str(class_list), str(zoo.data_dir), str(tmp_path / "plain")],
                         capture_output=True, text=True, env=subprocess_env(), cwd=tmp_path, timeout=120)
    assert (run.returncode, run.stdout) == (0, "False\n"), run.stderr


def test_depth_without_tree_is_refused(zoo, capsys):
    code, out, err = run_main(["classes", "--data_dir", zoo.data_dir, "--depth", "2"], capsys)
    assert (code, out) == (1, "")
    assert assert_one_error_line(err) == "imagenet-subset: error: --depth applies to --tree; add --tree or drop --depth"


@pytest.mark.parametrize("option", ["--wordnet", "--hierarchy"])
def test_classes_with_a_hierarchy_but_nothing_to_use_it_is_refused(zoo, tmp_path, capsys, option):
    given = _wordnet_dir(tmp_path / "wordnet") if option == "--wordnet" else _edge_list(tmp_path / "edges")
    code, out, err = run_main(["classes", "--data_dir", zoo.data_dir, option, given], capsys)
    assert (code, out) == (1, "")
    assert assert_one_error_line(err) == ("imagenet-subset: error: --wordnet and --hierarchy apply to --tree, --search "
                                          "and --under; add one or drop them")
    # with any of the three it is used
    assert _classes(capsys, "--data_dir", zoo.data_dir, option, given, "--under", "dog")[-1] == (
        "3 classes, 12 train and 4 val images" if option == "--hierarchy" else "1 classes, 6 train and 2 val images")
    assert _classes(capsys, "--data_dir", zoo.data_dir, option, given, "--search", "chihuahua")[1].startswith(
        f"{CHIHUAHUA}       6     2  Chihuahua  [entity > ")
    assert _classes(capsys, "--data_dir", zoo.data_dir, option, given, "--tree")[0].startswith("entity (n00001740): ")


def test_node_names_is_read_as_its_own_file(zoo, tmp_path, capsys):
    """node_names.txt is parsed by itself: its errors name it and its own line; its names win over the
    words file's (the packaged one, or --wordnet's)."""
    edges = _edge_list(tmp_path / "breeds")
    node_names = tmp_path / "breeds" / "node_names.txt"
    node_names.write_text(f"dummy1\tpets\n{DOG} hound\n")  # a space, not a tab
    message = f"{node_names}:2: expected 'WNID<TAB>names'; fix or replace the file"
    assert _error(_plan, tree=zoo, group_by="level:2", hierarchy=str(edges)) == message
    wordnet = _wordnet_dir(tmp_path / "wordnet")  # 6 lines of words before it: still line 2 of node_names.txt
    assert _error(_plan, tree=zoo, group_by="level:2", hierarchy=str(edges), wordnet=str(wordnet)) == message
    _fails(capsys, tmp_path, ["--group_by", "level:2", "--hierarchy", edges, "--data_dir", zoo.data_dir], message)
    code, out, err = run_main(["classes", "--tree", "--hierarchy", edges, "--data_dir", zoo.data_dir], capsys)
    assert (code, out) == (1, "") and assert_one_error_line(err) == f"imagenet-subset: error: {message}"
    # a bad words.txt beside a good node_names.txt: the words file's own line
    node_names.write_text(f"{DOG}\tcanis, pooches\n")
    broken = _wordnet_dir(tmp_path / "broken")
    (broken / "words.txt").write_text(f"{ENTITY}\tentity\n{DOG}\tdog\n{PUG} pug\n")
    assert _error(_plan, tree=zoo, group_by="level:2", hierarchy=str(edges), wordnet=str(broken)) == (
        f"{broken / 'words.txt'}:3: expected 'WNID<TAB>names'; fix or replace the file")
    # its names win: over the packaged words ...
    plan = _plan(zoo, group_by="level:3", hierarchy=str(edges))
    assert _labels(plan) == [("hen", (HEN,)), ("goose", (GOOSE,)), ("canis", (CHIHUAHUA, BEAGLE, PUG)),
                             ("cat", (TABBY,))]
    assert plan.input["hierarchy"]["groups"][2] == {"name": "canis", "wnid": DOG}
    # ... and over --wordnet's (which names no hen, goose nor cat: those go by their ids)
    assert _labels(_plan(zoo, group_by="level:3", hierarchy=str(edges), wordnet=str(wordnet))) == [
        (HEN, (HEN,)), (GOOSE, (GOOSE,)), ("canis", (CHIHUAHUA, BEAGLE, PUG)), (CAT, (TABBY,))]
    assert _labels(_plan(zoo, group_by="pooches", hierarchy=str(edges), wordnet=str(wordnet))) == [
        ("pooches", (CHIHUAHUA, BEAGLE, PUG))]
    assert _error(_plan, tree=zoo, group_by="domestic dog", hierarchy=str(edges), wordnet=str(wordnet)) == (
        "--group_by: no synset named 'domestic dog' in the hierarchy hierarchy.txt; close names: domestic animal")


def test_hierarchy_from_reads_each_words_file_by_itself():
    """The Python API: words files as (text, where), a later one's names winning; errors name the file and line."""
    hierarchy = hierarchy_from([("r\troot\na\tfirst, one\n", "words.txt"), ("a\tsecond\n", "names.txt")],
                               "r a\na b\n", "my hierarchy", "edges.txt")
    assert (hierarchy.name("r"), hierarchy.name("a"), hierarchy.name("b")) == ("root", "second", "b")
    assert hierarchy.source == "my hierarchy" and hierarchy.roots == ["r"]
    with pytest.raises(UserError) as info:
        hierarchy.resolve("one", "--under")
    assert str(info.value) == "--under: no synset named 'one' in the my hierarchy"  # the later names replace
    for words, where in (([("r\troot\n", "words.txt"), ("a second\n", "names.txt")], "names.txt:1"),
                         ([("r\troot\n\nb b\n", "words.txt"), ("a\tsecond\n", "names.txt")], "words.txt:3")):
        with pytest.raises(UserError) as info:
            hierarchy_from(words, "r a\n", "my hierarchy", "edges.txt")
        assert str(info.value) == f"{where}: expected 'WNID<TAB>names'; fix or replace the file"
    with pytest.raises(UserError) as info:
        hierarchy_from([], "r a\nr\n", "my hierarchy", "edges.txt")
    assert str(info.value) == "edges.txt:2: expected 'PARENT CHILD' (two different ids); fix or replace the file"
    # the sha256 counts every file: the same names split otherwise, or another edge list, give another
    same = hierarchy_from([("r\troot\na\tfirst, one\n", "w"), ("a\tsecond\n", "n")], "r a\na b\n", "x", "e")
    assert same.sha256 == hierarchy.sha256
    assert hierarchy_from([("r\troot\na\tfirst, one\n", "w")], "r a\na b\n", "x", "e").sha256 != hierarchy.sha256
    assert hierarchy_from([("r\troot\na\tfirst, one\n", "w"), ("a\tsecond\n", "n")], "r a\n", "x",
                          "e").sha256 != hierarchy.sha256


CHAIN = 3000  # nested edges: far deeper than Python's recursion limit


def test_outline_of_a_deep_chain_does_not_recurse():
    edges = "".join(f"c{i} c{i + 1}\n" for i in range(CHAIN))
    hierarchy = hierarchy_from([("c0\tthe top\n", "words")], edges, "chain", "chain.txt")
    leaf = f"c{CHAIN}"
    counts = {leaf: (2, 1)}
    lines = outline(hierarchy, counts)
    assert len(lines) == CHAIN + 1
    assert lines[0] == "the top (c0): 1 class, 2 train, 1 val"
    assert lines[1] == "  c1 (c1): 1 class, 2 train, 1 val"
    assert lines[1500] == " " * 3000 + "c1500 (c1500): 1 class, 2 train, 1 val"
    assert lines[-1] == " " * (2 * CHAIN) + f"{leaf} ({leaf}): 2 train, 1 val"
    assert outline(hierarchy, counts, depth=2) == lines[:3]
    assert outline(hierarchy, counts, [f"c{CHAIN - 1}"]) == [
        f"c{CHAIN - 1} (c{CHAIN - 1}): 1 class, 2 train, 1 val", f"  {leaf} ({leaf}): 2 train, 1 val"]
    assert outline(hierarchy, counts | {"elsewhere": (1, 1)})[-1] == "not in the chain: elsewhere"
    # the rest of the walk is flat too
    assert hierarchy.depth(leaf) == CHAIN and len(hierarchy.ancestors(leaf)) == len(hierarchy.descendants("c0")) == \
        CHAIN + 1
    assert hierarchy.path_to_root(leaf) == [f"c{i}" for i in range(CHAIN + 1)]
    # a chain that loops back is found without recursion too
    with pytest.raises(UserError) as info:
        hierarchy_from([], edges + f"{leaf} c0\n", "chain", "chain.txt")
    assert str(info.value).startswith("chain.txt: the edges make a cycle through c")


def test_a_deep_hierarchy_file_on_the_command_line(zoo, tmp_path, capsys):
    """classes --tree and a build on a --hierarchy chain of 3,000 edges down to the pug."""
    edges = _edge_list(tmp_path / "chain", "".join(f"c{i} c{i + 1}\n" for i in range(CHAIN - 1))
                       + f"c{CHAIN - 1} {PUG}\n")
    lines = _classes(capsys, "--data_dir", zoo.data_dir, "--tree", "--hierarchy", edges)
    assert len(lines) == CHAIN + 2
    assert lines[0] == "c0 (c0): 1 class, 2 train, 1 val"
    assert lines[-2] == " " * (2 * CHAIN) + f"pug ({PUG}): 2 train, 1 val"
    assert lines[-1] == f"not in the hierarchy hierarchy.txt: {', '.join(sorted(set(ZOO_TRAIN) - {PUG}))}"
    assert _labels(_plan(zoo, group_by=f"level:{CHAIN - 1}", hierarchy=str(edges))) == [(f"c{CHAIN - 1}", (PUG,))]
    assert _labels(_plan(zoo, under="c0", hierarchy=str(edges))) == _singles([PUG])


def test_depths_is_a_plain_field_of_shortest_paths():
    assert [f.name for f in dataclasses.fields(Hierarchy)] == ["names", "parents", "children", "source", "sha256",
                                                               "depths"]
    hierarchy = load_hierarchy()
    assert len(hierarchy.depths) == 1860 and hierarchy.depths[ENTITY] == 0
    # dog: 8 via domestic animal, not 13 via canine (12 edges down itself)
    assert hierarchy.depths[DOG] == 8 and hierarchy.depths[PUG] == 9 and hierarchy.depths["n02083346"] == 12
    assert all(hierarchy.depth(node) == depth for node, depth in hierarchy.depths.items())
    assert all(min(hierarchy.depths[p] for p in parents) + 1 == hierarchy.depths[child]
               for child, parents in hierarchy.parents.items())
    # nothing else is kept on it, however it is used: equal to a fresh one, and frozen
    used = [(hierarchy.shown_path(n), hierarchy.ancestors(n), hierarchy.depth(n)) for n in (PUG, TANK, MINIVAN)]
    assert [depth for _, _, depth in used] == [9, 9, 11]  # tank: ... > vehicle > military vehicle > tank
    data = resources.files("packer.data")
    fresh = hierarchy_from([(data.joinpath("wordnet_words.txt").read_text(encoding="utf-8"), "words")],
                           data.joinpath("wordnet_is_a.txt").read_text(encoding="utf-8"), BUILTIN_SOURCE, "is_a")
    assert set(vars(hierarchy)) == {f.name for f in dataclasses.fields(Hierarchy)}
    assert fresh == hierarchy and fresh.sha256 == hierarchy.sha256
    with pytest.raises(dataclasses.FrozenInstanceError):
        hierarchy.depths = {}
    # a DAG with a long and a short way down, and two roots
    diamond = hierarchy_from([], "r a\na b\nb c\nr c\nc d\nq d\n", "diamond", "diamond.txt")
    assert diamond.depths == {"r": 0, "q": 0, "a": 1, "c": 1, "b": 2, "d": 1}
    assert diamond.roots == ["q", "r"] and diamond.depth("nowhere") is None


def test_node_names_beside_the_hierarchy_file_name_its_nodes(zoo, tmp_path):
    """BREEDS publishes its nodes' names as node_names.txt beside its edge list; they name the groups,
    count in the hierarchy's sha256, and are read again when they change."""
    edges = _edge_list(tmp_path)
    without = _plan(zoo, group_by="level:2", hierarchy=str(edges))
    (tmp_path / "node_names.txt").write_text("dummy1\tpets, companion animals\n")
    named = _plan(zoo, group_by="level:2", hierarchy=str(edges))
    assert _labels(named) == [("pets", (CHIHUAHUA, BEAGLE, PUG, TABBY)), ("bird", (HEN, GOOSE)),
                              ("crane", (CRANE_MACHINE,))]
    assert _labels(_plan(zoo, group_by="companion animals", hierarchy=str(edges))) == [
        ("companion animals", (CHIHUAHUA, BEAGLE, PUG, TABBY))]
    assert named.input["hierarchy"]["sha256"] != without.input["hierarchy"]["sha256"]
    (tmp_path / "node_names.txt").write_text("dummy1\thousehold animals\n")
    assert _labels(_plan(zoo, group_by="level:2", hierarchy=str(edges)))[0][0] == "household animals"
