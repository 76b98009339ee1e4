"""Choose what goes in: per-class sampling, holdout, label groups, rest, --classes/--search, squash, nchw.

The tree is a small Kaggle-layout one from ``helpers.write_tree`` (``_write_tree``): eleven
classes with real ImageNet names (several contain "dog", "tiger" or "fish" so
that name matching has something to decide), photo-like JPEGs of varied sizes,
``train_cls.txt`` (ids are line numbers over every class), a flat ``val/`` with
``LOC_val_solution.csv``, and ``LOC_synset_mapping.txt``. Every expected choice
is recomputed here from the documented rule, independently of packer/sampling.py.
"""
import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import packer
from helpers import COARSE, Images, assert_one_error_line, reference_transform, run_main, write_tree
from packer import BuildOptions, UserError
from packer.plan import plan_build
from packer.subset import read_subset_list

TENCH, GOLDFISH, TIGER_SHARK = "n01440764", "n01443537", "n01491361"
RETRIEVER, PUG, HUNTING = "n02099601", "n02110958", "n02116738"
TIGER_CAT, TIGER, ANEMONE = "n02123159", "n02129604", "n02607072"
DOGSLED, HOTDOG = "n03218198", "n07697537"
NAMES = {
    TENCH: "tench, Tinca tinca",
    GOLDFISH: "goldfish, Carassius auratus",
    TIGER_SHARK: "tiger shark, Galeocerdo cuvieri",
    RETRIEVER: "golden retriever",
    PUG: "pug, pug-dog",
    HUNTING: "African hunting dog, hyena dog, Cape hunting dog, Lycaon pictus",
    TIGER_CAT: "tiger cat",
    TIGER: "tiger, Panthera tigris",
    ANEMONE: "anemone fish",
    DOGSLED: "dogsled, dog sled, dog sleigh",
    HOTDOG: "hotdog, hot dog, red hot",
}
ALL = sorted(NAMES)
TRAIN_COUNTS = {TENCH: 9, GOLDFISH: 7, TIGER_SHARK: 3, RETRIEVER: 5, PUG: 6, HUNTING: 4, TIGER_CAT: 2,
                TIGER: 8, ANEMONE: 5, DOGSLED: 6, HOTDOG: 10}
VAL_COUNTS = {TENCH: 4, GOLDFISH: 2, TIGER_SHARK: 3, RETRIEVER: 2, PUG: 3, HUNTING: 2, TIGER_CAT: 1,
              TIGER: 3, ANEMONE: 4, DOGSLED: 3, HOTDOG: 5}
SIZES = [(40, 30), (30, 44), (36, 36), (64, 48), (50, 90), (33, 47), (120, 80)]
SMALL = {"resize_size": 32, "crop_size": 24}
KEYS = ["X_train", "y_train", "train_id", "X_val", "y_val", "val_id"]
HOLDOUT_KEYS = KEYS + ["X_holdout", "y_holdout", "holdout_id"]


# --------------------------------------------------------------------------- builder

@dataclass
class Tree:
    root: Path
    data_dir: Path
    train: list[tuple[int, str, str]]  # (id, wnid, path relative to train/), in train_cls order
    val: list[tuple[int, str, str]]    # (number, wnid, path relative to val/), in number order

    def train_of(self, wnids):
        return [t for t in self.train if t[1] in wnids]

    def val_of(self, wnids):
        return [v for v in self.val if v[1] in wnids]


def _val_labels() -> dict[int, str]:
    """Val numbers with gaps, classes interleaved: number -> WNID, in number order."""
    owners = [w for w in ALL for _ in range(VAL_COUNTS[w])]
    labels, number = {}, 0
    for k in np.random.default_rng(7).permutation(len(owners)):
        number += 1 + (k % 3 == 0)
        labels[number] = owners[k]
    return labels


def _write_tree(root: Path) -> Tree:
    """Train image i (its id) is photo i of size ``SIZES[i % 7]``, val image n photo 1000 + n of ``SIZES[n % 7]``."""
    images = Images(sizes=tuple(SIZES), photo=COARSE, quality=90, first=1, val_from=1000)
    written = write_tree(root, counts=TRAIN_COUNTS, val=_val_labels(), names=NAMES, val_txt=False,
                         boxes=("1 2 20 20",), images=images, in_id_order=True)
    train = [(i, w, rel) for i, (w, rel) in enumerate(written.train, start=1)]
    val = [(n, w, f"ILSVRC2012_val_{n:08d}.JPEG") for n, w in written.val.items()]
    return Tree(root, written.data_dir, train, val)


@pytest.fixture(scope="module")
def tree(module_tmp_path_factory) -> Tree:
    return _write_tree(module_tmp_path_factory.mktemp("choose"))


def _list(tmp_path: Path, text: str, name: str = "mine") -> str:
    path = tmp_path / f"{name}.txt"
    path.write_text(text)
    return str(path)


def _build(tree: Tree, subset_name, out: Path, **options):
    options = {"workers": 1, "progress": False, **SMALL, **options}
    return packer.build(BuildOptions(subset_name=subset_name, data_dir=str(tree.data_dir), out_dir=str(out), **options))


def _arrays(path) -> dict:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def everything(tree, module_tmp_path_factory):
    """Every image of every class (label = sorted position), no sampling: the source of expected rows."""
    folder = module_tmp_path_factory.mktemp("everything")
    result = _build(tree, _list(folder, "".join(w + "\n" for w in ALL), "all"), folder / "out")
    data = _arrays(result.archive)
    return {"train": {int(i): x for i, x in zip(data["train_id"], data["X_train"])},
            "val": {int(i): x for i, x in zip(data["val_id"], data["X_val"])}}


def _expected_rows(everything, split: str, ids) -> np.ndarray:
    return np.stack([everything[split][int(i)] for i in ids]) if len(ids) else np.zeros((0, 24, 24, 3), np.uint8)


def _metadata(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- the rule, written out

def rank(seed: int, split: str, rel: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}/{split}/{rel}".encode(), digest_size=8).digest(), "little")


def choose(items, label_of, n, seed: int, split: str) -> list:
    """Of ``items`` ((id, wnid, rel)), the ``n`` per label with the smallest ranks, in the original order."""
    kept = []
    for label in sorted(set(label_of.values())):
        mine = [t for t in items if label_of[t[1]] == label]
        wanted = n(label) if callable(n) else n
        kept += mine if wanted is None else sorted(mine, key=lambda t: rank(seed, split, t[2]))[:wanted]
    return sorted(kept, key=lambda t: t[0])


def _labels(items, label_of):
    return np.array([label_of[t[1]] for t in items], np.int32)


def _ids(items):
    return np.array([t[0] for t in items], np.int32)


def _assert_split(data, split: str, items, label_of, everything=None, source: str | None = None) -> None:
    """``<split>_id`` and ``y_<split>`` are those of ``items``; given ``everything``, ``X_<split>`` holds
    the full build's rows of those ids, taken from its split ``source`` (default: the same split)."""
    np.testing.assert_array_equal(data[f"{split}_id"], _ids(items))
    np.testing.assert_array_equal(data[f"y_{split}"], _labels(items, label_of))
    if everything is not None:
        np.testing.assert_array_equal(data[f"X_{split}"], _expected_rows(everything, source or split, data[f"{split}_id"]))


# --------------------------------------------------------------------------- 1. per-class sampling

SAMPLED = [TIGER, TENCH, TIGER_CAT, GOLDFISH]  # not sorted; TIGER_CAT has 2 train and 1 val image


def test_per_class_sampling_takes_the_lowest_ranks_in_original_order(tree, everything, tmp_path):
    label_of = {w: i for i, w in enumerate(SAMPLED)}
    result = _build(tree, _list(tmp_path, "\n".join(SAMPLED)), tmp_path / "out", train_per_class=3,
                    val_per_class=2, seed=5)
    data = _arrays(result.archive)
    assert list(data) == KEYS
    train = choose(tree.train_of(SAMPLED), label_of, 3, 5, "train")
    val = choose(tree.val_of(SAMPLED), label_of, 2, 5, "val")
    _assert_split(data, "train", train, label_of, everything)
    _assert_split(data, "val", val, label_of, everything)
    # exactly N per label, fewer only where the label has fewer; ids increase like the full build
    assert np.bincount(data["y_train"]).tolist() == [3, 3, 2, 3]
    assert np.bincount(data["y_val"]).tolist() == [2, 2, 1, 2]
    assert (np.diff(data["train_id"]) > 0).all() and (np.diff(data["val_id"]) > 0).all()
    assert result.counts == {"train": 11, "val": 7}
    # the short label is named in a note, per split
    train_notes = [n for n in result.notes if n.startswith("train:")]
    val_notes = [n for n in result.notes if n.startswith("val:")]
    assert len(train_notes) == 1 and f"{TIGER_CAT} (2 of 3)" in train_notes[0]
    assert len(val_notes) == 1 and f"{TIGER_CAT} (1 of 2)" in val_notes[0]
    for other in (TIGER, TENCH, GOLDFISH):
        assert other not in train_notes[0] + val_notes[0]
    rows = _metadata(result.metadata)
    assert [r["num_train_images"] for r in rows] == ["3", "3", "2", "3"]
    assert [r["num_val_images"] for r in rows] == ["2", "2", "1", "2"]


def test_sampling_is_a_choice_among_the_full_build_rows(tree, tmp_path):
    """Against the full build of the same list: the sampled rows are a subsequence, labels unchanged."""
    listed = _list(tmp_path, "\n".join(SAMPLED))
    full = _arrays(_build(tree, listed, tmp_path / "full").archive)
    part = _arrays(_build(tree, listed, tmp_path / "part", train_per_class=2, seed=11).archive)
    where = np.searchsorted(full["train_id"], part["train_id"])
    np.testing.assert_array_equal(full["train_id"][where], part["train_id"])
    np.testing.assert_array_equal(full["y_train"][where], part["y_train"])
    np.testing.assert_array_equal(full["X_train"][where], part["X_train"])
    # val_per_class not given: every val image, as in the full build
    for key in ("X_val", "y_val", "val_id"):
        np.testing.assert_array_equal(part[key], full[key])


def test_same_seed_same_bytes_whatever_the_workers_other_seed_other_choice(tree, tmp_path):
    listed = _list(tmp_path, "\n".join(SAMPLED))
    one = _build(tree, listed, tmp_path / "w1", train_per_class=3, val_per_class=1, seed=42, workers=1)
    two = _build(tree, listed, tmp_path / "w2", train_per_class=3, val_per_class=1, seed=42, workers=2)
    assert one.sha256 == two.sha256
    assert Path(one.archive).read_bytes() == Path(two.archive).read_bytes()
    other = _build(tree, listed, tmp_path / "s43", train_per_class=3, val_per_class=1, seed=43)
    a, b = _arrays(one.archive), _arrays(other.archive)
    assert a["train_id"].tolist() != b["train_id"].tolist()
    label_of = {w: i for i, w in enumerate(SAMPLED)}
    for seed, data in ((42, a), (43, b)):
        np.testing.assert_array_equal(data["train_id"], _ids(choose(tree.train_of(SAMPLED), label_of, 3, seed, "train")))
        np.testing.assert_array_equal(data["val_id"], _ids(choose(tree.val_of(SAMPLED), label_of, 1, seed, "val")))


def test_asking_for_more_only_adds_images(tree, tmp_path):
    listed = _list(tmp_path, "\n".join(SAMPLED))
    previous = None
    for n in range(0, 6):
        data = _arrays(_build(tree, listed, tmp_path / f"n{n}", train_per_class=n, seed=3).archive)
        chosen = set(data["train_id"].tolist())
        assert np.bincount(data["y_train"], minlength=4).tolist() == [min(n, TRAIN_COUNTS[w]) for w in SAMPLED]
        if previous is not None:
            assert previous <= chosen
        previous = chosen


def test_zero_per_class_gives_empty_arrays_that_verify(tree, tmp_path):
    from packer.checking import verify

    result = _build(tree, _list(tmp_path, "\n".join(SAMPLED)), tmp_path / "out", train_per_class=0, val_per_class=1)
    data = _arrays(result.archive)
    assert data["X_train"].shape == (0, 24, 24, 3) and data["y_train"].shape == (0,)
    assert data["X_val"].shape == (4, 24, 24, 3)
    assert verify(result.archive) == []


def test_sampling_larger_than_every_class_equals_the_full_build(tree, tmp_path):
    listed = _list(tmp_path, "\n".join(SAMPLED))
    full = _build(tree, listed, tmp_path / "full")
    big = _build(tree, listed, tmp_path / "big", train_per_class=1000, val_per_class=1000, seed=9)
    assert big.sha256 == full.sha256
    assert any(f"{TENCH} (9 of 1000)" in n for n in big.notes if n.startswith("train:"))


# --------------------------------------------------------------------------- 2. holdout

@pytest.mark.parametrize("train_per_class", [None, 3])
def test_holdout(tree, everything, tmp_path, train_per_class):
    label_of = {w: i for i, w in enumerate(SAMPLED)}
    result = _build(tree, _list(tmp_path, "\n".join(SAMPLED)), tmp_path / "out", holdout_per_class=2,
                    train_per_class=train_per_class, seed=8)
    data = _arrays(result.archive)
    assert list(data) == HOLDOUT_KEYS
    items = tree.train_of(SAMPLED)
    holdout = choose(items, label_of, 2, 8, "holdout")
    remaining = [t for t in items if t not in holdout]
    train = choose(remaining, label_of, train_per_class, 8, "train")
    _assert_split(data, "holdout", holdout, label_of, everything, source="train")
    _assert_split(data, "train", train, label_of, everything)
    assert np.bincount(data["y_holdout"]).tolist() == [2, 2, 2, 2]
    assert not set(data["holdout_id"].tolist()) & set(data["train_id"].tolist())
    assert set(data["holdout_id"].tolist()) | set(data["train_id"].tolist()) <= {t[0] for t in items}
    if train_per_class is None:  # everything not held out stays in train
        assert sorted(data["holdout_id"].tolist() + data["train_id"].tolist()) == [t[0] for t in items]
    else:
        # TIGER_CAT has 2 train images, both held out: train keeps none of it, and a note says so
        assert np.bincount(data["y_train"], minlength=4).tolist() == [3, 3, 0, 3]
        assert any(n.startswith("train:") and f"{TIGER_CAT} (0 of 3)" in n for n in result.notes)
    rows = _metadata(result.metadata)
    assert list(rows[0]) == ["subset_label", "WNID", "human_label", "original_label", "imagenet_index",
                             "num_train_images", "num_val_images", "num_holdout_images"]
    assert [r["num_holdout_images"] for r in rows] == ["2", "2", "2", "2"]
    assert [int(r["num_train_images"]) for r in rows] == np.bincount(data["y_train"], minlength=4).tolist()
    assert result.counts["holdout"] == 8


# --------------------------------------------------------------------------- 3. label groups

def test_label_group_gets_one_label_and_a_metadata_row(tree, everything, tmp_path):
    listed = _list(tmp_path, f"# groups and classes\ndog: {PUG} {HUNTING}\n\n{TENCH} tench\n{RETRIEVER}\n")
    result = _build(tree, listed, tmp_path / "out")
    data = _arrays(result.archive)
    label_of = {PUG: 0, HUNTING: 0, TENCH: 1, RETRIEVER: 2}
    train, val = tree.train_of(label_of), tree.val_of(label_of)
    _assert_split(data, "train", train, label_of, everything)
    _assert_split(data, "val", val, label_of)
    assert np.bincount(data["y_train"]).tolist() == [TRAIN_COUNTS[PUG] + TRAIN_COUNTS[HUNTING],
                                                    TRAIN_COUNTS[TENCH], TRAIN_COUNTS[RETRIEVER]]
    rows = _metadata(result.metadata)
    assert [(r["subset_label"], r["WNID"], r["human_label"]) for r in rows] == [
        ("0", f"{PUG} {HUNTING}", "dog"), ("1", TENCH, NAMES[TENCH]), ("2", RETRIEVER, NAMES[RETRIEVER])]
    assert rows[0]["original_label"] == "" and rows[0]["imagenet_index"] == ""
    assert rows[0]["num_train_images"] == str(TRAIN_COUNTS[PUG] + TRAIN_COUNTS[HUNTING])
    assert rows[0]["num_val_images"] == str(VAL_COUNTS[PUG] + VAL_COUNTS[HUNTING])
    assert result.num_classes == 3


def test_a_group_is_sampled_as_one_label(tree, tmp_path):
    listed = _list(tmp_path, f"dog: {PUG} {HUNTING}\n{TENCH}\n")
    data = _arrays(_build(tree, listed, tmp_path / "out", train_per_class=4, seed=2).archive)
    label_of = {PUG: 0, HUNTING: 0, TENCH: 1}
    train = choose(tree.train_of(label_of), label_of, 4, 2, "train")
    np.testing.assert_array_equal(data["train_id"], _ids(train))
    assert np.bincount(data["y_train"]).tolist() == [4, 4]


def test_group_with_unknown_wnid_is_an_error_naming_it(tree, tmp_path, capsys):
    listed = _list(tmp_path, f"dog: {PUG} n09999991\n{TENCH}\n")
    code, _, err = run_main(["--subset_name", listed, "--data_dir", tree.data_dir, "--out_dir", tmp_path / "out",
                             "--workers", "1", "--quiet"], capsys)
    assert code == 1
    line = assert_one_error_line(err, "n09999991")
    assert PUG not in line and TENCH not in line
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_wnid_in_a_group_and_on_its_own_line_is_an_error(tree, tmp_path, capsys):
    listed = _list(tmp_path, f"{TENCH}\ndog: {PUG} {HUNTING}\n{PUG}\n")
    code, _, err = run_main(["--subset_name", listed, "--data_dir", tree.data_dir, "--out_dir", tmp_path / "out"],
                            capsys)
    assert code == 1
    assert_one_error_line(err, listed, f"{PUG} (lines 2 and 3)")
    with pytest.raises(UserError, match=f"repeated WNIDs: {PUG}"):
        read_subset_list(listed)


# --------------------------------------------------------------------------- 4. rest

def _rest_expectation(tree, listed, n, seed, rest_val=None):
    label_of = {w: (listed.index(w) if w in listed else len(listed)) for w in ALL}
    rest = len(listed)
    train = choose(tree.train, label_of, lambda label: n if label == rest else None, seed, "train")
    pool_train = sum(1 for t in tree.train if label_of[t[1]] == rest)
    pool_val = sum(1 for t in tree.val if label_of[t[1]] == rest)
    taken = sum(1 for t in train if label_of[t[1]] == rest)
    if rest_val is None:
        rest_val = round(taken * pool_val / pool_train)
    val = choose(tree.val, label_of, lambda label: rest_val if label == rest else None, seed, "val")
    return label_of, train, val, rest_val


@pytest.mark.parametrize("rest_val", [None, 2])
def test_rest_label(tree, everything, tmp_path, rest_val):
    listed = [GOLDFISH, TENCH]
    options = {"rest": 7, "seed": 3} | ({"rest_val": rest_val} if rest_val is not None else {})
    result = _build(tree, _list(tmp_path, "\n".join(listed)), tmp_path / "out", **options)
    data = _arrays(result.archive)
    label_of, train, val, expected_rest_val = _rest_expectation(tree, listed, 7, 3, rest_val)
    if rest_val is None:  # 7 of 49 pool train images, 26 pool val images: round(3.71) = 4
        assert expected_rest_val == 4
    _assert_split(data, "train", train, label_of, everything)
    _assert_split(data, "val", val, label_of, everything)
    assert np.bincount(data["y_train"]).tolist() == [TRAIN_COUNTS[GOLDFISH], TRAIN_COUNTS[TENCH], 7]
    assert np.bincount(data["y_val"]).tolist() == [VAL_COUNTS[GOLDFISH], VAL_COUNTS[TENCH], expected_rest_val]
    # rest rows are interleaved in train_cls order with the others
    assert (np.diff(data["train_id"]) > 0).all()
    rows = _metadata(result.metadata)
    assert [(r["subset_label"], r["WNID"], r["human_label"]) for r in rows] == [
        ("0", GOLDFISH, NAMES[GOLDFISH]), ("1", TENCH, NAMES[TENCH]), ("2", "", "rest")]
    assert rows[2]["num_train_images"] == "7" and rows[2]["num_val_images"] == str(expected_rest_val)
    assert result.num_classes == 3
    assert not [n for n in result.notes if n.startswith(("train:", "val:"))]


def test_rest_pool_smaller_than_asked_keeps_all_with_a_note(tree, tmp_path):
    listed = [GOLDFISH, TENCH]
    result = _build(tree, _list(tmp_path, "\n".join(listed)), tmp_path / "out", rest=1000)
    data = _arrays(result.archive)
    pool_train = sum(TRAIN_COUNTS[w] for w in ALL if w not in listed)
    pool_val = sum(VAL_COUNTS[w] for w in ALL if w not in listed)
    assert np.bincount(data["y_train"]).tolist() == [7, 9, pool_train]
    assert np.bincount(data["y_val"]).tolist() == [2, 4, pool_val]  # proportional: all of the val pool
    np.testing.assert_array_equal(data["train_id"], [t[0] for t in tree.train])
    notes = [n for n in result.notes if n.startswith("train:")]
    assert len(notes) == 1 and f"rest ({pool_train} of 1000)" in notes[0]


def test_builtin_hotdog_list_with_rest(tree, tmp_path):
    assert [label.wnids for label in read_subset_list("hotdog").labels] == [(HOTDOG,)]
    result = _build(tree, "hotdog", tmp_path / "out", rest=10, seed=1)
    assert Path(result.archive).name == "hotdog_cls.npz"
    data = _arrays(result.archive)
    label_of, train, val, _ = _rest_expectation(tree, [HOTDOG], 10, 1)
    _assert_split(data, "train", train, label_of)
    np.testing.assert_array_equal(data["val_id"], _ids(val))
    rows = _metadata(result.metadata)
    assert [(r["WNID"], r["human_label"]) for r in rows] == [(HOTDOG, NAMES[HOTDOG]), ("", "rest")]


def test_rest_val_without_rest_is_an_error(tree, tmp_path, capsys):
    code, _, err = run_main(["--subset_name", _list(tmp_path, TENCH), "--data_dir", tree.data_dir,
                             "--out_dir", tmp_path / "out", "--rest_val", "3"], capsys)
    assert code == 1
    assert_one_error_line(err, "--rest_val", "--rest")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- 5. --classes, --search, classes

def _plan_wnids(tree, **options) -> list:
    plan = plan_build(BuildOptions(subset_name=options.pop("subset_name", None), data_dir=str(tree.data_dir), **options))
    return [label.wnids for label in plan.subset.labels], plan.name


def test_classes_by_name_build(tree, everything, tmp_path):
    result = _build(tree, None, tmp_path / "out", classes=("goldfish", "tench"))
    assert Path(result.archive).name == "custom_cls.npz"
    data = _arrays(result.archive)
    label_of = {GOLDFISH: 0, TENCH: 1}
    train = tree.train_of(label_of)
    _assert_split(data, "train", train, label_of, everything)
    rows = _metadata(result.metadata)
    assert [(r["WNID"], r["human_label"]) for r in rows] == [(GOLDFISH, NAMES[GOLDFISH]), (TENCH, NAMES[TENCH])]


def test_classes_by_name_on_the_command_line(tree, tmp_path, capsys):
    code, out, err = run_main(["--classes", " GoldFish , TENCH ", "--data_dir", tree.data_dir,
                               "--out_dir", tmp_path / "out", "--subset_name", "fishes", "--workers", "1",
                               "--quiet", "--resize_size", "32", "--crop_size", "24"], capsys)
    assert code == 0, err
    assert (tmp_path / "out" / "fishes_cls.npz").is_file()
    assert [r["WNID"] for r in _metadata(tmp_path / "out" / "fishes_cls_metadata.csv")] == [GOLDFISH, TENCH]


@pytest.mark.parametrize("names, expected", [
    (("tench", "goldfish"), [TENCH, GOLDFISH]),
    (("TIGER",), [TIGER]),                       # exact synonym wins over 'tiger cat', 'tiger shark'
    (("hot dog", PUG), [HOTDOG, PUG]),           # a later synonym, and a WNID
    (("retriever",), [RETRIEVER]),               # unique substring
    (("Hyena Dog",), [HUNTING]),
    (("panthera",), [TIGER]),
])
def test_classes_resolution(tree, names, expected):
    labels, name = _plan_wnids(tree, classes=names)
    assert labels == [(w,) for w in expected]
    assert name == "custom"


def test_ambiguous_name_lists_candidates_with_wnids(tree, tmp_path, capsys):
    code, _, err = run_main(["--classes", "tench,fish", "--data_dir", tree.data_dir, "--out_dir", tmp_path / "o"],
                            capsys)
    assert code == 1
    line = assert_one_error_line(err, "'fish'", "ambiguous", f"{GOLDFISH} ({NAMES[GOLDFISH]})",
                                 f"{ANEMONE} ({NAMES[ANEMONE]})")
    assert TENCH not in line and TIGER_SHARK not in line


def test_unknown_name_suggests_close_names(tree, tmp_path, capsys):
    code, _, err = run_main(["--classes", "goldfsh", "--data_dir", tree.data_dir, "--out_dir", tmp_path / "o"],
                            capsys)
    assert code == 1
    line = assert_one_error_line(err, "'goldfsh'", "close names")
    assert line.split("close names:")[1].split(",")[0].strip() == "goldfish"


def test_unknown_wnid_in_classes_is_an_error(tree):
    with pytest.raises(UserError, match="n09999991"):
        _plan_wnids(tree, classes=("n09999991",))


def test_search_takes_every_matching_class_sorted_by_wnid(tree, everything, tmp_path):
    labels, name = _plan_wnids(tree, search="DOG")
    assert labels == [(PUG,), (HUNTING,), (DOGSLED,), (HOTDOG,)]
    assert name == "search_dog"
    assert _plan_wnids(tree, search="hot dog")[1] == "search_hot_dog"
    assert _plan_wnids(tree, search="dog", subset_name="dogs")[1] == "dogs"
    result = _build(tree, None, tmp_path / "out", search="dog")
    assert Path(result.archive).name == "search_dog_cls.npz"
    data = _arrays(result.archive)
    label_of = {PUG: 0, HUNTING: 1, DOGSLED: 2, HOTDOG: 3}
    _assert_split(data, "train", tree.train_of(label_of), label_of)
    np.testing.assert_array_equal(data["val_id"], _ids(tree.val_of(label_of)))


def test_search_without_match_is_an_error(tree):
    with pytest.raises(UserError, match="'zebra'"):
        _plan_wnids(tree, search="zebra")


def test_classes_and_search_together_is_an_error(tree, tmp_path, capsys):
    code, _, err = run_main(["--classes", "tench", "--search", "dog", "--data_dir", tree.data_dir,
                             "--out_dir", tmp_path / "out"], capsys)
    assert code == 1
    assert_one_error_line(err, "--classes", "--search")
    assert not (tmp_path / "out").exists()


_ORGANISM = "entity > physical entity > object > whole > living thing > organism"
_FISH = f"{_ORGANISM} > animal > chordate > vertebrate > aquatic vertebrate > fish"
_CARNIVORE = f"{_ORGANISM} > animal > chordate > vertebrate > mammal > placental > carnivore"
# each class's path in the WordNet hierarchy, as classes --search appends it: root to parent, by the shortest way
WORDNET_PATHS = {
    TENCH: f"{_FISH} > bony fish > teleost fish > soft-finned fish > cypriniform fish > cyprinid",
    GOLDFISH: f"{_FISH} > bony fish > teleost fish > soft-finned fish > cypriniform fish > cyprinid",
    TIGER_SHARK: f"{_FISH} > cartilaginous fish > elasmobranch > shark > requiem shark",
    RETRIEVER: f"{_ORGANISM} > animal > domestic animal > dog > hunting dog > sporting dog > retriever",
    PUG: f"{_ORGANISM} > animal > domestic animal > dog",
    HUNTING: f"{_CARNIVORE} > canine > wild dog",
    TIGER_CAT: f"{_ORGANISM} > animal > domestic animal > domestic cat",
    TIGER: f"{_CARNIVORE} > feline > big cat",
    ANEMONE: f"{_FISH} > bony fish > teleost fish > spiny-finned fish > percoid fish > damselfish",
    DOGSLED: "entity > physical entity > object > whole > artifact > instrumentality > conveyance > vehicle > sled",
    HOTDOG: "entity > physical entity > matter > substance > food > nutriment > dish > snack food > sandwich",
}


def _classes_lines(wnids, paths=False):
    return [(w, str(TRAIN_COUNTS[w]), str(VAL_COUNTS[w]), NAMES[w] + (f"  [{WORDNET_PATHS[w]}]" if paths else ""))
            for w in wnids]


@pytest.mark.parametrize("search", [None, "dog", "Tiger"])
def test_classes_command(tree, capsys, search):
    argv = ["classes", "--data_dir", tree.data_dir] + (["--search", search] if search else [])
    code, out, err = run_main(argv, capsys)
    assert code == 0, err
    lines = out.rstrip("\n").split("\n")
    assert lines[0].split() == ["WNID", "train", "val", "human_label"]
    wnids = [w for w in ALL if search is None or search.lower() in NAMES[w].lower()]
    assert [tuple(line.split(None, 3)) for line in lines[1:-1]] == _classes_lines(wnids, paths=search is not None)
    assert lines[-1] == (f"{len(wnids)} classes, {sum(TRAIN_COUNTS[w] for w in wnids)} train and "
                         f"{sum(VAL_COUNTS[w] for w in wnids)} val images")
    if search == "Tiger":
        assert wnids == [TIGER_SHARK, TIGER_CAT, TIGER]


def test_classes_command_search_without_match(tree, capsys):
    code, _, err = run_main(["classes", "--data_dir", tree.data_dir, "--search", "zebra"], capsys)
    assert code == 1
    assert_one_error_line(err, "'zebra'")


# --------------------------------------------------------------------------- 6. transforms and defaults

TRANSFORM_LIST = [TIGER_CAT, TIGER_SHARK, HUNTING]  # 9 train, 6 val images of every size


def _paths(tree, split, ids):
    if split == "train":
        rel = {t[0]: t[2] for t in tree.train}
        return [tree.data_dir / "train" / rel[int(i)] for i in ids]
    rel = {v[0]: v[2] for v in tree.val}
    return [tree.data_dir / "val" / rel[int(i)] for i in ids]


def test_squash_is_a_box_resize_of_the_whole_image(tree, tmp_path):
    result = _build(tree, _list(tmp_path, "\n".join(TRANSFORM_LIST)), tmp_path / "out", resize="squash",
                    crop_size=16, resize_size=8)  # resize_size is unused by squash (and may be smaller)
    data = _arrays(result.archive)
    for split in ("train", "val"):
        paths = _paths(tree, split, data[f"{split}_id"])
        assert data[f"X_{split}"].shape == (len(paths), 16, 16, 3)
        for row, path in zip(data[f"X_{split}"], paths):
            expected = np.asarray(Image.open(path).convert("RGB").resize((16, 16), Image.BOX))
            np.testing.assert_array_equal(row, expected, err_msg=str(path))


@pytest.mark.parametrize("resize", ["crop", "squash"])
def test_nchw_is_the_nhwc_build_transposed(tree, tmp_path, resize):
    listed = _list(tmp_path, "\n".join(TRANSFORM_LIST))
    nhwc = _arrays(_build(tree, listed, tmp_path / "nhwc", resize=resize).archive)
    result = _build(tree, listed, tmp_path / "nchw", resize=resize, layout="nchw")
    nchw = _arrays(result.archive)
    assert list(nchw) == KEYS
    for split in ("train", "val"):
        assert nchw[f"X_{split}"].shape == (len(nhwc[f"X_{split}"]), 3, 24, 24)
        np.testing.assert_array_equal(nchw[f"X_{split}"], nhwc[f"X_{split}"].transpose(0, 3, 1, 2))
        np.testing.assert_array_equal(nchw[f"y_{split}"], nhwc[f"y_{split}"])
        np.testing.assert_array_equal(nchw[f"{split}_id"], nhwc[f"{split}_id"])
    from packer.checking import verify
    assert verify(result.archive) == []


def test_resize_72_crop_64_is_the_exact_rule(tree, tmp_path):
    data = _arrays(_build(tree, _list(tmp_path, "\n".join(TRANSFORM_LIST)), tmp_path / "out",
                          resize_size=72, crop_size=64).archive)
    for split in ("train", "val"):
        paths = _paths(tree, split, data[f"{split}_id"])
        assert data[f"X_{split}"].shape == (len(paths), 64, 64, 3)
        for row, path in zip(data[f"X_{split}"], paths):
            np.testing.assert_array_equal(row, reference_transform(path, 72, 64), err_msg=str(path))


def test_defaults_are_unchanged_by_unset_sampling_options(tree, tmp_path):
    listed = _list(tmp_path, f"{TIGER_CAT}\n{TIGER_SHARK}\n")
    default = packer.build_subset(listed, data_dir=str(tree.data_dir), out_dir=str(tmp_path / "default"),
                                  workers=1, progress=False)
    explicit = packer.build(BuildOptions(
        subset_name=listed, data_dir=str(tree.data_dir), out_dir=str(tmp_path / "explicit"), workers=1, progress=False,
        resize_size=256, crop_size=224, resize="crop", layout="nhwc", classes=None, search=None,
        train_per_class=None, val_per_class=None, holdout_per_class=0, rest=None, rest_val=None, seed=1234))
    assert explicit.sha256 == default.sha256
    assert Path(explicit.archive).read_bytes() == Path(default.archive).read_bytes()
    assert default.notes == ()  # the built-in class table fills what the 11-class mapping file lacks
    data = _arrays(default.archive)
    assert list(data) == KEYS
    label_of = {TIGER_CAT: 0, TIGER_SHARK: 1}
    train, val = tree.train_of(label_of), tree.val_of(label_of)
    np.testing.assert_array_equal(data["train_id"], _ids(train))
    np.testing.assert_array_equal(data["y_val"], _labels(val, label_of))
    for split, items in (("train", train), ("val", val)):
        paths = _paths(tree, split, [t[0] for t in items])
        assert data[f"X_{split}"].shape == (len(paths), 224, 224, 3)
        for row, path in zip(data[f"X_{split}"], paths):
            np.testing.assert_array_equal(row, reference_transform(path, 256, 224), err_msg=str(path))
    rows = _metadata(default.metadata)
    assert list(rows[0]) == ["subset_label", "WNID", "human_label", "original_label", "imagenet_index",
                             "num_train_images", "num_val_images"]
