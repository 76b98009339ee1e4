"""A recipe (a manifest someone sent) is untrusted input: ``build --recipe`` reads images only under
--data_dir, derives each split's folder from its name, and refuses any other recipe at once.

One small Kaggle-layout tree is built per module and packed twice at a 32x32 crop (plain, and
with a holdout split and a rest label); each test edits a copy of a genuine manifest. A refused recipe must give
exactly one ``UserError`` (one line, naming the manifest), before any image file is stat'ed or
opened and before the output folder exists. ``image_accesses`` records every image file this
process stats or opens (one worker runs in-process).
"""
import builtins
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import A, SUBSET, assert_one_error_line, build, kaggle_tree, run_main, save_uniform, sha256, write_list
from packer import UserError
from packer.recipe import rebuild_from_recipe

UNSAFE = "unsafe image paths in the recipe (only relative paths inside --data_dir are allowed)"
ENTRIES = "entries missing or not as a build writes them"
ASK = "ask the sender for the manifest written by the build"
SIZES = {"resize_size": 36, "crop_size": 32}


@dataclass
class Built:
    tree: object  # helpers.FakeTree
    plain: object  # BuildResult of the subset
    holdout: object  # BuildResult of the subset with holdout_per_class=1 and a rest label
    secret: Path  # a real image outside the tree


@pytest.fixture(scope="module")
def built(module_tmp_path_factory) -> Built:
    base = module_tmp_path_factory.mktemp("recipe_safety")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(base)  # no ./aux_files
        tree = kaggle_tree(base / "tree")
        class_list = write_list(base / "mine.txt", SUBSET)
        plain = build(class_list, tree.data_dir, base / "plain", **SIZES)
        holdout = build(class_list, tree.data_dir, base / "holdout", holdout_per_class=1, rest=1, **SIZES)
    secret = base / "outside" / "secret.JPEG"
    save_uniform(secret, (250, 5, 250))
    return Built(tree, plain, holdout, secret)


@pytest.fixture
def image_accesses(monkeypatch) -> list[str]:
    """Every image file (by suffix) stat'ed or opened in this process from now on."""
    seen = []

    def spy(function):
        def recorded(path, *args, **kwargs):
            if str(path).lower().endswith((".jpeg", ".jpg", ".png")):
                seen.append(str(path))
            return function(path, *args, **kwargs)
        return recorded

    for module, name in ((os, "stat"), (os, "lstat"), (os, "open"), (builtins, "open")):
        monkeypatch.setattr(module, name, spy(getattr(module, name)))
    return seen


def crafted(manifest, folder: Path, edit) -> Path:
    """A copy of ``manifest`` changed by ``edit(recipe)``, written to ``folder/M.json``."""
    recipe = json.loads(Path(manifest).read_text())
    edit(recipe)
    path = folder / "M.json"
    path.write_text(json.dumps(recipe))
    return path


def refusal(recipe_path, *problems) -> str:
    return f"{recipe_path}: {'; '.join(problems)}; {ASK}"


def raises_exactly(message: str):
    return pytest.raises(UserError, match=f"^{re.escape(message)}\\Z")


def rebuild(recipe_path, data_dir, out_dir):
    return rebuild_from_recipe(recipe_path, str(data_dir), out_dir=str(out_dir), workers=1, progress=False)


def cli(recipe_path, data_dir, out_dir, capsys):
    return run_main(["build", "--recipe", recipe_path, "--data_dir", data_dir, "--out_dir", out_dir,
                     "--workers", "1", "--quiet"], capsys)


def setter(split: str, key: str, row: int, value):
    """An edit that sets ``sources[split][key][row]``."""
    return lambda recipe: recipe["sources"][split][key].__setitem__(row, value)


# --------------------------------------------------------------------------- paths

def test_absolute_path_to_an_image_outside_the_tree_is_refused_before_any_image_is_touched(built, tmp_path,
                                                                                          image_accesses):
    recipe = crafted(built.plain.manifest, tmp_path, setter("train", "paths", 0, str(built.secret)))
    out_dir = tmp_path / "out"
    with raises_exactly(refusal(recipe, f"1 {UNSAFE}: train: {str(built.secret)!r}")):
        rebuild(recipe, built.tree.data_dir, out_dir)
    assert image_accesses == []
    assert not out_dir.exists()


def test_traversal_to_an_image_outside_the_tree_is_refused_by_the_command_line(built, tmp_path, capsys,
                                                                               image_accesses):
    escape = f"{A}/" + os.path.relpath(built.secret, built.tree.train_dir / A)
    val_escape = os.path.relpath(built.secret, built.tree.val_dir)
    assert os.path.normpath(built.tree.train_dir / escape) == os.path.normpath(built.tree.val_dir / val_escape) \
        == str(built.secret)
    recipe = crafted(built.plain.manifest, tmp_path,
                     lambda r: (setter("train", "paths", 3, escape)(r), setter("val", "paths", 1, val_escape)(r)))
    out_dir = tmp_path / "out"
    code, out, err = cli(recipe, built.tree.data_dir, out_dir, capsys)
    assert code == 1 and out == ""
    expected = refusal(recipe, f"2 {UNSAFE}: train: {escape!r}, val: {val_escape!r}")
    assert assert_one_error_line(err) == f"imagenet-subset: error: {expected}"
    assert image_accesses == []
    assert not out_dir.exists()


@pytest.mark.parametrize("path", [
    "", ".", "..", f"{A}/./{A}_1.JPEG", f"{A}//{A}_1.JPEG", f"{A}/", f"/{A}/{A}_1.JPEG",
    f"{A}\\{A}_1.JPEG", "C:\\x.JPEG", "C:x.JPEG", "c:/x.JPEG", "\\\\server\\share\\x.JPEG",
    f"{A}/{A}_1.JPEG\x00", f"{A}/\x1b[2J.JPEG", f"{A}/x\u2028y.JPEG", 5, None, [f"{A}/{A}_1.JPEG"],
], ids=repr)
def test_unsafe_path_forms_are_refused(built, tmp_path, image_accesses, path):
    recipe = crafted(built.plain.manifest, tmp_path, setter("train", "paths", 2, path))
    with raises_exactly(refusal(recipe, f"1 {UNSAFE}: train: {path!r}")):
        rebuild(recipe, built.tree.data_dir, tmp_path / "out")
    assert image_accesses == []
    assert not (tmp_path / "out").exists()


def test_path_with_a_newline_keeps_the_error_on_one_line(built, tmp_path, capsys):
    path = f"{A}/x.JPEG\nimagenet-subset: error: not from the tool"
    recipe = crafted(built.plain.manifest, tmp_path, setter("val", "paths", 0, path))
    code, out, err = cli(recipe, built.tree.data_dir, tmp_path / "out", capsys)
    assert code == 1 and out == ""
    line = assert_one_error_line(err, "\\nimagenet-subset: error: not from the tool")
    assert line == f"imagenet-subset: error: {refusal(recipe, f'1 {UNSAFE}: val: {path!r}')}"


def test_many_problems_make_one_line_that_shows_the_first_five_of_each_kind(built, tmp_path, capsys):
    def edit(recipe):
        recipe["sources"]["train"]["paths"][:7] = [f"/abs/{i}.JPEG" for i in range(7)]
        recipe["sources"]["val"]["labels"][4] = 3
        recipe["name"] = "../../evil"

    recipe = crafted(built.plain.manifest, tmp_path, edit)
    code, out, err = cli(recipe, built.tree.data_dir, tmp_path / "a" / "b" / "out", capsys)
    assert code == 1 and out == ""
    shown = ", ".join(f"train: '/abs/{i}.JPEG'" for i in range(5))
    assert assert_one_error_line(err) == "imagenet-subset: error: " + refusal(
        recipe,
        f"1 {ENTRIES}: name '../../evil' (a file-name stem: not empty, no /, \\, :, .. or control characters)",
        f"7 {UNSAFE}: {shown} and 2 more",
        "1 labels outside 0..2 (one per class): val row 4: 3")
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["M.json"]


# --------------------------------------------------------------------------- roots

@pytest.mark.parametrize("root", ["/etc", "..", "../../outside", "holdout", "val"])
def test_the_recipe_root_is_ignored(built, tmp_path, image_accesses, root):
    def edit(recipe):
        for sources in recipe["sources"].values():
            sources["root"] = root

    recipe = crafted(built.plain.manifest, tmp_path, edit)
    report = rebuild(recipe, built.tree.data_dir, tmp_path / "out")
    assert report.archive_matches and report.metadata_matches
    assert report.differing_images == ()
    assert sha256(report.result.archive) == sha256(built.plain.archive)
    assert image_accesses and all(Path(path).is_relative_to(built.tree.data_dir) for path in image_accesses)


def test_a_good_recipe_rebuilds_identical_from_the_command_line(built, tmp_path, capsys):
    code, out, err = cli(built.plain.manifest, built.tree.data_dir, tmp_path / "out", capsys)
    assert (code, err) == (0, "")
    assert f"archive identical to the recipe (sha256 {sha256(built.plain.archive)}); metadata CSV identical" in out
    assert sha256(tmp_path / "out" / "mine_cls.npz") == sha256(built.plain.archive)


def test_a_holdout_recipe_rebuilds_identical_from_the_train_folder(built, tmp_path):
    recipe = json.loads(Path(built.holdout.manifest).read_text())
    assert recipe["sources"]["holdout"]["root"] == "holdout" and len(recipe["sources"]["holdout"]["paths"]) == 4
    assert recipe["classes"][3] == {"label": 3, "name": "rest", "wnids": [], "human_label": "rest", "rest": True}
    report = rebuild(built.holdout.manifest, built.tree.data_dir, tmp_path / "out")
    assert report.archive_matches and report.metadata_matches
    assert report.result.counts == {"train": 16, "val": 9, "holdout": 4}
    assert sha256(report.result.archive) == sha256(built.holdout.archive)


def test_a_missing_holdout_image_is_named_in_the_train_folder(built, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(built.tree.root, copy)
    data_dir = copy / built.tree.data_dir.relative_to(built.tree.root)
    gone = json.loads(Path(built.holdout.manifest).read_text())["sources"]["holdout"]["paths"][1]
    (data_dir / "train" / gone).unlink()
    with raises_exactly(f"1 images of the recipe are missing from {data_dir}: train/{gone}; "
                        "this copy of ImageNet lacks them"):
        rebuild(built.holdout.manifest, data_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- everything else

@pytest.mark.parametrize("name", ["../../evil", "", "a/b", "a\\b", "evil\x00", "C:evil", "..", "a\nb", 7, None])
def test_a_name_that_is_not_a_file_name_stem_is_refused(built, tmp_path, image_accesses, name):
    recipe = crafted(built.plain.manifest, tmp_path, lambda r: r.__setitem__("name", name))
    out_dir = tmp_path / "a" / "b" / "out"
    expected = f"name {name!r} (a file-name stem: not empty, no /, \\, :, .. or control characters)"
    with raises_exactly(refusal(recipe, f"1 {ENTRIES}: {expected}")):
        rebuild(recipe, built.tree.data_dir, out_dir)
    assert image_accesses == []
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["M.json"]


def test_an_unknown_split_is_refused(built, tmp_path, image_accesses):
    recipe = crafted(built.plain.manifest, tmp_path,
                     lambda r: r["sources"].__setitem__("test", dict(r["sources"]["val"], root="test")))
    with raises_exactly(refusal(recipe, "1 unknown splits (a recipe holds train, val and holdout rows): 'test'")):
        rebuild(recipe, built.tree.data_dir, tmp_path / "out")
    assert image_accesses == []


def set_wnids(label: int, wnids):
    return lambda recipe: recipe["classes"][label].__setitem__("wnids", wnids)


LENGTHS = "1 splits whose paths, ids, labels and row_crc32 differ in length"
LABELS = "1 labels outside 0..2 (one per class)"
IDS = "1 ids that are not whole numbers from 1 to 2147483647"
WNIDS = "1 classes without valid WNIDs (a WNID is 'n' and 8 digits; only the rest label has none)"


@pytest.mark.parametrize("edit, problem", [
    pytest.param(lambda r: r["sources"]["train"]["labels"].pop(),
                 f"{LENGTHS}: train (18 paths, 18 ids, 17 labels, 18 row_crc32)", id="train-lengths"),
    pytest.param(lambda r: r["sources"]["val"]["row_crc32"].append(1),
                 f"{LENGTHS}: val (8 paths, 8 ids, 8 labels, 9 row_crc32)", id="val-lengths"),
    pytest.param(setter("train", "labels", 6, 3), f"{LABELS}: train row 6: 3", id="label-too-big"),
    pytest.param(setter("val", "labels", 0, -1), f"{LABELS}: val row 0: -1", id="label-negative"),
    pytest.param(setter("val", "labels", 0, True), f"{LABELS}: val row 0: True", id="label-bool"),
    pytest.param(setter("val", "labels", 0, "1"), f"{LABELS}: val row 0: '1'", id="label-text"),
    pytest.param(setter("train", "ids", 1, "7"), f"{IDS}: train row 1: '7'", id="id-text"),
    pytest.param(setter("train", "ids", 1, 1.5), f"{IDS}: train row 1: 1.5", id="id-float"),
    pytest.param(setter("val", "ids", 2, 2**31), f"{IDS}: val row 2: 2147483648", id="id-too-big"),
    pytest.param(setter("val", "row_crc32", 2, -1),
                 "1 row_crc32 values that are not whole numbers from 0 to 4294967295: val row 2: -1",
                 id="crc-negative"),
    pytest.param(set_wnids(1, ["n1440764"]), f"{WNIDS}: class 1 ['n1440764']", id="wnid-malformed"),
    pytest.param(set_wnids(0, []), f"{WNIDS}: class 0 []", id="wnids-empty"),
    pytest.param(set_wnids(2, A), f"{WNIDS}: class 2 '{A}'", id="wnids-not-a-list"),
    pytest.param(set_wnids(2, [A]), f"1 WNIDs in more than one class: {A} (classes 1 and 2)", id="wnid-repeated"),
    pytest.param(lambda r: r["sources"]["train"].__setitem__("paths", A),
                 f"1 {ENTRIES}: sources.train.paths '{A}' (a list)", id="paths-not-a-list"),
    pytest.param(lambda r: r["sources"].pop("val"), f"1 {ENTRIES}: sources.val missing (the val rows)",
                 id="val-split-missing"),
    pytest.param(lambda r: r["options"].update(fast="yes", resize_size="256", layout="nhcw"),
                 f"3 {ENTRIES}: options.resize_size '256' (a whole number of at least 1), "
                 "options.fast 'yes' (true or false), options.layout 'nhcw' ('nhwc' or 'nchw')", id="options"),
    pytest.param(lambda r: r.update(input=[], classes=[]),
                 f"2 {ENTRIES}: input [] (an object), classes [] (a non-empty list of classes)",
                 id="input-and-classes"),
    pytest.param(lambda r: r["files"].pop("archive"), f"1 {ENTRIES}: files.archive.sha256 missing (a text)",
                 id="files-archive"),
    pytest.param(lambda r: r["options"].update(shard_size=4),
                 f"1 {ENTRIES}: files.shards missing (a list of {{sha256}}, one per shard)", id="files-shards"),
])
def test_malformed_recipes_are_refused_before_any_image_is_touched(built, tmp_path, image_accesses, edit, problem):
    recipe = crafted(built.plain.manifest, tmp_path, edit)
    with raises_exactly(refusal(recipe, problem)):
        rebuild(recipe, built.tree.data_dir, tmp_path / "out")
    assert image_accesses == []
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- the recipe first

def test_a_refused_recipe_is_refused_before_data_dir_and_options_are_read(built, tmp_path, image_accesses):
    """The recipe is checked before anything else: a missing --data_dir, an option that shapes the
    archive and a bad --workers are not what the error reports."""
    recipe = crafted(built.plain.manifest, tmp_path, lambda r: r.__setitem__("name", "../evil"))
    expected = "name '../evil' (a file-name stem: not empty, no /, \\, :, .. or control characters)"
    with raises_exactly(refusal(recipe, f"1 {ENTRIES}: {expected}")):
        rebuild_from_recipe(recipe, str(tmp_path / "nowhere"), out_dir=str(tmp_path / "out"), workers=0,
                            crop_size=5, progress=False)
    assert image_accesses == []
    assert not (tmp_path / "out").exists()


def test_options_that_shape_the_archive_are_the_recipe_s(built, tmp_path, image_accesses):
    with raises_exactly(f"crop_size, layout: the recipe {built.plain.manifest} fixes the options that shape the "
                        "archive; leave them out"):
        rebuild_from_recipe(built.plain.manifest, str(built.tree.data_dir), out_dir=str(tmp_path / "out"),
                            layout="nchw", crop_size=5, workers=1, progress=False)
    assert image_accesses == []
    assert not (tmp_path / "out").exists()


def test_options_are_keywords_only(built, tmp_path):
    with pytest.raises(TypeError):
        rebuild_from_recipe(built.plain.manifest, str(built.tree.data_dir), None, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
