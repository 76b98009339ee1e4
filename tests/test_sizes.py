"""--sizes: several sizes from one decode of each image, one complete output set per size.

Every set must be byte for byte what a build of that size alone writes (archives, shards, index,
metadata CSV, and the manifest but for its ``sizes`` list and timings), in every mode; all sets
share rows, ids and labels; an unreadable image is left out of every set; --resume continues an
interrupted several-size build; a recipe of any size rebuilds every size; info, the command-line
summary and the API result name every size; wrong --sizes are one-line errors; a failed build
leaves no set half-written and a rebuild leaves no stale shard of any set.

The tree: photo-like JPEGs of 44-90 px, 36 train rows (two chunks of 32 and 4) and 8 val rows
of the classes C, A, B (``SUBSET``), plus class D, left out.
"""
import json
import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    COARSE,
    PREFIX,
    PYTHON,
    REPO,
    SUBSET,
    A,
    B,
    C,
    D,
    FakeTree,
    Images,
    assert_one_error_line,
    count_packed_chunks,
    files_in,
    kaggle_tree,
    reference_transform,
    run_main,
    sha256,
    stop_after_journal_records,
    subprocess_env,
    write_list,
)
from PIL import Image

import packer
import packer.execute
import packer.work
import packer.workdir
from packer import BuildOptions, UserError
from packer.checking import info, verify

pytestmark = pytest.mark.slow  # full builds: skipped by pytest -m "not slow"

SIZES = "64/56,squash:24,40/32"
TEXTS = ["64/56", "squash:24", "40/32"]
NAMES = ["x", "x_24_squash", "x_32"]  # the build is named by its class list, x.txt
ALONE = [{"resize_size": 64, "crop_size": 56}, {"resize": "squash", "crop_size": 24},
         {"resize_size": 40, "crop_size": 32}]  # each size as a build of it alone is asked for
CROPS = [56, 24, 32]
COUNTS = {A: 20, B: 10, C: 6, D: 2}  # train rows of C, A, B: 6 + 20 + 10 = 36
TRAIN_ROWS, VAL_ROWS = 36, 8
IMAGES = Images(sizes=((60, 44), (44, 70), (50, 50), (90, 48)), photo=COARSE, quality=90)


@dataclass
class World:
    tree: FakeTree
    lists: Path  # x.txt, x_24_squash.txt, x_32.txt: the same classes, named as each set

    @property
    def data_dir(self) -> Path:
        return self.tree.data_dir


@pytest.fixture(scope="module")
def world(module_tmp_path_factory) -> World:
    root = module_tmp_path_factory.mktemp("sizes")
    tree = kaggle_tree(root / "kaggle", counts=COUNTS, images=IMAGES)
    for name in NAMES:
        write_list(root / "lists" / f"{name}.txt", SUBSET)
    return World(tree, root / "lists")


@pytest.fixture(scope="module")
def broken(world, module_tmp_path_factory) -> tuple[Path, str]:
    """A copy of the tree whose train image A_3 (train row 8, in the first chunk) is a truncated
    JPEG; (data_dir, its path relative to train/)."""
    root = module_tmp_path_factory.mktemp("broken")
    data_dir = copy_tree(world, root)
    rel = f"{A}/{A}_3.JPEG"
    path = data_dir / "train" / rel
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return data_dir, rel


def copy_tree(world: World, folder: Path) -> Path:
    """A copy of the whole tree (label files too) in ``folder``; its data_dir."""
    shutil.copytree(world.tree.root, folder / "kaggle")
    return folder / "kaggle" / world.data_dir.relative_to(world.tree.root)


def _options(**options) -> dict:
    return {"workers": 1, "progress": False, **options}


def several(world: World, out: Path, data_dir=None, **options) -> packer.BuildResult:
    """The build of every size of ``SIZES`` at once."""
    return packer.build(BuildOptions(subset_name=str(world.lists / "x.txt"), data_dir=str(data_dir or world.data_dir),
                                     out_dir=str(out), sizes=SIZES, **_options(**options)))


def alone(world: World, i: int, out: Path, data_dir=None, **options) -> packer.BuildResult:
    """The build of size ``i`` alone, named as its set in a several-size build (--fast only on a crop)."""
    options = dict(options)
    if ALONE[i].get("resize") == "squash":
        options.pop("fast", None)
    return packer.build(BuildOptions(subset_name=str(world.lists / f"{NAMES[i]}.txt"),
                                     data_dir=str(data_dir or world.data_dir), out_dir=str(out),
                                     **_options(**ALONE[i], **options)))


def manifest_of(result) -> dict:
    return json.loads(Path(result.manifest).read_text())


def arrays(path) -> dict:
    data = packer.load(path)
    return {key: np.asarray(data[key]) for key in data.keys()}


def set_files(name: str, shards: int | None) -> list[str]:
    archives = ([f"{name}_cls-{i:05d}-of-{shards:05d}.npz" for i in range(shards)] + [f"{name}_cls.index.json"]
                if shards else [f"{name}_cls.npz"])
    return archives + [f"{name}_cls.manifest.json", f"{name}_cls_metadata.csv"]


def all_files(shards: int | None = None) -> list[str]:
    return sorted(file for name in NAMES for file in set_files(name, shards))


def snapshot(folder: Path) -> dict:
    """Every file and folder under ``folder`` (hidden ones too), with the bytes of the files."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else "dir") for p in sorted(folder.rglob("*"))}


def assert_same_as_alone(result, single) -> None:
    """``result`` (one set of a several-size build) holds what the build of its size alone wrote."""
    assert result.name == single.name
    assert [p.name for p in result.archives] == [p.name for p in single.archives]
    assert [p.read_bytes() for p in result.archives] == [p.read_bytes() for p in single.archives]
    assert Path(result.archive).read_bytes() == Path(single.archive).read_bytes()  # the shard index too
    assert result.metadata.read_bytes() == single.metadata.read_bytes()
    assert result.sha256 == single.sha256 == sha256(result.archive)
    assert result.counts == single.counts
    ours, theirs = manifest_of(result), manifest_of(single)
    assert "sizes" not in ours["options"]
    assert set(ours) == set(theirs) | {"sizes"}
    for key in theirs:
        if key not in ("build", "subset_source"):  # timings; the class list's file name (x.txt, x_32.txt)
            assert ours[key] == theirs[key], key
    assert verify(result.archive) == []


# --------------------------------------------------------------------------- byte identity

MODES = {
    "default": {},
    "nchw": {"layout": "nchw"},
    "compress": {"compress": True},
    "shards": {"shard_size": 16},
    "shards-compress": {"shard_size": 16, "compress": True},
    "fast": {"fast": True},
    "holdout": {"holdout_per_class": 2},
    "sampling": {"train_per_class": 5, "val_per_class": 2, "seed": 3},
    "nchw-fast-compress-2-workers": {"layout": "nchw", "fast": True, "compress": True, "workers": 2},
}


@pytest.mark.parametrize("mode", list(MODES))
def test_each_size_is_byte_identical_to_a_build_of_that_size_alone(world, tmp_path, mode):
    options = MODES[mode]
    out = tmp_path / "several"
    result = several(world, out, **options)
    results = [result, *result.other_sizes]
    assert [r.name for r in results] == NAMES
    assert [r.size for r in results] == TEXTS
    for i, r in enumerate(results):
        assert_same_as_alone(r, alone(world, i, tmp_path / f"alone{i}", **options))
    shards = {"shards": 3, "shards-compress": 3}.get(mode)  # 36 train rows in shards of 16
    assert files_in(out) == all_files(shards)
    sizes = [{"size": text, "name": name, "fast": bool(options.get("fast")) and text != "squash:24",
              "files": manifest_of(r)["files"]} for text, name, r in zip(TEXTS, NAMES, results, strict=True)]
    for r in results:  # every manifest lists every size, in --sizes order, right after its files
        assert manifest_of(r)["sizes"] == sizes
        keys = list(manifest_of(r))
        assert keys[keys.index("files") + 1:keys.index("files") + 3] == ["sizes", "skipped"]


@pytest.mark.parametrize("mode", ["default", "holdout", "sampling"])
def test_every_size_has_the_same_rows_ids_and_labels(world, tmp_path, mode):
    result = several(world, tmp_path / "out", **MODES[mode])
    sets = [arrays(r.archive) for r in (result, *result.other_sizes)]
    splits = ["train", "val", "holdout"] if mode == "holdout" else ["train", "val"]
    for data, crop in zip(sets, CROPS, strict=True):
        assert list(data) == [f"{kind}_{split}" if kind != "id" else f"{split}_id"
                              for split in splits for kind in ("X", "y", "id")]
        for split in splits:
            assert data[f"X_{split}"].shape == (len(sets[0][f"y_{split}"]), crop, crop, 3)
            np.testing.assert_array_equal(data[f"y_{split}"], sets[0][f"y_{split}"])
            np.testing.assert_array_equal(data[f"{split}_id"], sets[0][f"{split}_id"])
    if mode == "default":  # the rows are the images, each transformed by its size's rule
        paths, labels, ids = world.tree.expected_train(SUBSET)
        np.testing.assert_array_equal(sets[0]["y_train"], labels)
        np.testing.assert_array_equal(sets[0]["train_id"], ids)
        for row in (0, 7, 35):
            assert np.array_equal(sets[0]["X_train"][row], reference_transform(paths[row], 64, 56))
            assert np.array_equal(sets[2]["X_train"][row], reference_transform(paths[row], 40, 32))
            with Image.open(paths[row]) as image:
                squashed = np.asarray(image.convert("RGB").resize((24, 24), Image.Resampling.BOX))
            assert np.array_equal(sets[1]["X_train"][row], squashed)
    if mode == "holdout":
        assert len(sets[0]["y_holdout"]) == 2 * len(SUBSET)
        assert not set(sets[0]["holdout_id"]) & set(sets[0]["train_id"])


def test_fast_applies_only_to_the_crop_sizes(world, tmp_path):
    result = several(world, tmp_path / "out", fast=True)
    assert [manifest_of(r)["options"]["fast"] for r in (result, *result.other_sizes)] == [True, False, True]
    exact = several(world, tmp_path / "exact")
    assert result.other_sizes[0].archive.read_bytes() == exact.other_sizes[0].archive.read_bytes()  # squash: exact
    assert result.archive.read_bytes() != exact.archive.read_bytes()  # fast does shape the crop sizes
    first_squash = packer.build(BuildOptions(subset_name=str(world.lists / "x.txt"), data_dir=str(world.data_dir),
                                             out_dir=str(tmp_path / "squash_first"), sizes="squash:24,64/56", fast=True,
                                             **_options()))
    assert manifest_of(first_squash)["options"]["fast"] is False
    assert manifest_of(first_squash.other_sizes[0])["options"]["fast"] is True
    assert first_squash.archive.read_bytes() == exact.other_sizes[0].archive.read_bytes()
    assert first_squash.other_sizes[0].archive.read_bytes() == result.archive.read_bytes()


def test_sizes_from_kaggles_zip_are_the_sizes_from_folders(world, tmp_path):
    from archive_helpers import KAGGLE_ZIP, write_kaggle_zip

    zipped = write_kaggle_zip(tmp_path / KAGGLE_ZIP, world.tree.root)
    from_zip = several(world, tmp_path / "zip", data_dir=zipped, compress=True)
    from_folders = several(world, tmp_path / "folders", compress=True)
    for ours, theirs in zip((from_zip, *from_zip.other_sizes), (from_folders, *from_folders.other_sizes), strict=True):
        assert ours.archive.read_bytes() == theirs.archive.read_bytes()
        assert ours.metadata.read_bytes() == theirs.metadata.read_bytes()


def test_a_single_size_in_sizes_is_a_plain_build(world, tmp_path):
    result = packer.build(BuildOptions(subset_name=str(world.lists / "x.txt"), data_dir=str(world.data_dir),
                                       out_dir=str(tmp_path / "one"), sizes=["64/56"], **_options()))
    assert result.size is None and result.other_sizes == ()
    plain = alone(world, 0, tmp_path / "plain")
    assert plain.size is None and plain.other_sizes == ()
    assert result.archive.read_bytes() == plain.archive.read_bytes()
    assert manifest_of(result)["options"] == manifest_of(plain)["options"]
    assert "sizes" not in manifest_of(result)
    assert files_in(tmp_path / "one") == sorted(set_files("x", None))


# --------------------------------------------------------------------------- unreadable images

SKIP_MODES = {"stored": {}, "compress": {"compress": True}, "shards": {"shard_size": 16},
              "shards-nchw-holdout-2-workers": {"shard_size": 16, "layout": "nchw", "holdout_per_class": 1,
                                                "workers": 2}}


@pytest.mark.parametrize("mode", list(SKIP_MODES))
def test_on_error_skip_leaves_the_image_out_of_every_size(world, broken, tmp_path, mode):
    data_dir, rel = broken
    options = {"on_error": "skip", **SKIP_MODES[mode]}
    holdout = options.get("holdout_per_class", 0) * len(SUBSET)
    result = several(world, tmp_path / "several", data_dir=data_dir, **options)
    results = [result, *result.other_sizes]
    assert result.counts == {"train": TRAIN_ROWS - 1 - holdout, "val": VAL_ROWS} | (
        {"holdout": holdout} if holdout else {})
    skipped = manifest_of(result)["skipped"]
    assert len(skipped) == 1 and skipped[0]["split"] == "train" and skipped[0]["path"] == rel
    for i, r in enumerate(results):
        single = alone(world, i, tmp_path / f"alone{i}", data_dir=data_dir, **options)
        assert_same_as_alone(r, single)
        manifest = manifest_of(r)
        assert manifest["skipped"] == skipped  # listed once in each set
        assert rel not in manifest["sources"]["train"]["paths"]
        assert manifest["splits"]["train"]["images"] == TRAIN_ROWS - 1 - holdout
    notes = [note for note in result.notes if "unreadable" in note]
    assert len(notes) == 1 and notes[0].startswith("left out 1 unreadable images") and rel in notes[0]
    assert all(r.notes == () for r in result.other_sizes)
    ids = [arrays(r.archive)["train_id"] for r in results]
    assert all(np.array_equal(ids[0], other) for other in ids[1:])
    assert len(ids[0]) == TRAIN_ROWS - 1 - holdout
    assert world.tree.train.index((A, rel)) + 1 not in ids[0]  # its id (its train_cls.txt number) is gone


# --------------------------------------------------------------------------- resume

@pytest.mark.parametrize("mode, chunks", [("stored", 3), ("compress", 3), ("shards", 4), ("shards-compress", 4)])
def test_resume_of_a_several_size_build_gives_the_uninterrupted_bytes(world, broken, tmp_path, monkeypatch, caplog,
                                                                      mode, chunks):
    """Stopped after 4 journal lines: the first chunk at every size and the second at the first size
    only; the resumed run redoes every chunk but the first (the second lacks sizes), and writes what an
    uninterrupted run writes (an unreadable image left out, so the journal's record of it is used)."""
    data_dir, rel = broken
    options = {"on_error": "skip", "compress": "compress" in mode, **({"shard_size": 16} if "shards" in mode else {})}
    reference = several(world, tmp_path / "reference", data_dir=data_dir, **options)
    out = tmp_path / "out"
    restore = stop_after_journal_records(monkeypatch, 4)
    with pytest.raises(KeyboardInterrupt):
        several(world, out, data_dir=data_dir, resume=True, **options)
    restore()
    assert files_in(out) == [".x_cls.work"]  # no output of any size at the final paths
    lines = [json.loads(line) for line in (out / ".x_cls.work" / "journal.jsonl").read_text().splitlines()]
    assert [line["size"] for line in lines] == [0, 1, 2, 0]
    assert len({(line["part"], line["key"], line["start"]) for line in lines[:3]}) == 1
    assert (lines[3]["part"], lines[3]["key"], lines[3]["start"]) != (lines[0]["part"], lines[0]["key"],
                                                                      lines[0]["start"])
    packed = count_packed_chunks(monkeypatch)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="packer"):
        result = several(world, out, data_dir=data_dir, resume=True, **options)
    assert caplog.messages == [f"resuming: 1 of {chunks} chunks already done"]
    assert len(packed) == chunks - 1
    for ours, theirs in zip((result, *result.other_sizes), (reference, *reference.other_sizes), strict=True):
        assert [p.name for p in ours.archives] == [p.name for p in theirs.archives]
        assert [p.read_bytes() for p in ours.archives] == [p.read_bytes() for p in theirs.archives]
        assert ours.metadata.read_bytes() == theirs.metadata.read_bytes()
        manifest = manifest_of(ours)
        assert manifest["build"]["resumed"] is True
        assert manifest["skipped"] == manifest_of(theirs)["skipped"] != []
        assert manifest["sources"] == manifest_of(theirs)["sources"]
        assert manifest["sizes"] == manifest_of(theirs)["sizes"]
        assert verify(ours.archive) == []
    assert files_in(out) == all_files(3 if "shards" in mode else None)  # the work folder is gone


# --------------------------------------------------------------------------- recipes

RECIPE_MODES = {"stored": {}, "shards-compress-fast": {"shard_size": 16, "compress": True, "fast": True},
                "skip-holdout-sampling-nchw": {"on_error": "skip", "holdout_per_class": 1, "train_per_class": 9,
                                               "layout": "nchw"}}


@pytest.mark.parametrize("mode", list(RECIPE_MODES))
def test_the_recipe_of_the_second_size_rebuilds_every_size(world, broken, tmp_path, capsys, mode):
    options = RECIPE_MODES[mode]
    data_dir = broken[0] if options.get("on_error") == "skip" else world.data_dir  # (the recipe leaves it out)
    original = several(world, tmp_path / "original", data_dir=data_dir, **options)
    recipe = original.other_sizes[0].manifest
    assert recipe.name == "x_24_squash_cls.manifest.json"
    assert len(manifest_of(original)["skipped"]) == (options.get("on_error") == "skip")
    report = packer.rebuild_from_recipe(recipe, str(data_dir), out_dir=str(tmp_path / "api"), workers=1,
                                        progress=False)
    assert report.archive_matches and report.metadata_matches and report.differing_images == ()
    assert report.summary().splitlines()[-1] == ("archives of all 3 sizes identical to the recipe; "
                                                 "metadata CSV identical")
    rebuilt = [report.result, *report.result.other_sizes]
    assert [r.name for r in rebuilt] == NAMES and [r.size for r in rebuilt] == TEXTS
    for ours, theirs in zip(rebuilt, (original, *original.other_sizes), strict=True):
        assert [p.read_bytes() for p in ours.archives] == [p.read_bytes() for p in theirs.archives]
        assert ours.metadata.read_bytes() == theirs.metadata.read_bytes()
    assert files_in(tmp_path / "api") == files_in(tmp_path / "original")
    # the command line: exit 0, a summary line per size, the verdict, the labels
    out = tmp_path / "cli"
    code, stdout, err = run_main(["build", "--recipe", recipe, "--data_dir", data_dir, "--out_dir", out,
                                  "--workers", "1", "--quiet"], capsys)
    assert code == 0, err
    lines = stdout.splitlines()
    assert len(lines) == 5
    assert [line.split(":")[0] for line in lines[:3]] == NAMES
    assert lines[3] == "archives of all 3 sizes identical to the recipe; metadata CSV identical"
    assert lines[4] == original.labels_line()
    assert files_in(out) == files_in(tmp_path / "original")
    for name in files_in(out):
        if not name.endswith(".manifest.json"):  # (a manifest records its build's timings)
            assert (out / name).read_bytes() == (tmp_path / "original" / name).read_bytes(), name


@pytest.fixture(scope="module")
def recipe_build(world, module_tmp_path_factory):
    """A several-size build of the tree, for the recipe, info and result tests."""
    out = module_tmp_path_factory.mktemp("built") / "out"
    return several(world, out)


def _tampered(recipe_build, tmp_path, change) -> Path:
    """The manifest of the second size (the squash) with its ``sizes`` changed by ``change``."""
    document = json.loads(recipe_build.other_sizes[0].manifest.read_text())
    change(document["sizes"])
    return _written(document, tmp_path)


def _written(document: dict, tmp_path: Path) -> Path:
    path = tmp_path / "x_24_squash_cls.manifest.json"
    path.write_text(json.dumps(document))
    return path


TAMPERED = {  # how the recipe's sizes are changed -> what the error says of them
    "name-escapes": (lambda sizes: sizes[2].update(name="../evil"), "sizes[2].name '../evil' ('x_32')"),
    "name-not-derived": (lambda sizes: sizes[2].update(name="y_32"), "sizes[2].name 'y_32' ('x_32')"),
    "bad-size": (lambda sizes: sizes[1].update(size="24x24"),
                 "sizes[1].size '24x24' (R/C or squash:S, as --sizes writes it)"),
    "size-not-its-name": (lambda sizes: sizes[2].update(size="40/30"), "sizes[2].name 'x_32' ('x_30')"),
    "no-fast": (lambda sizes: sizes[0].pop("fast"), "sizes[0].fast missing (true or false)"),
    "fast-not-a-flag": (lambda sizes: sizes[1].update(fast="no"), "sizes[1].fast 'no' (false for a squash)"),
    "no-archive-hash": (lambda sizes: sizes[2]["files"].pop("archive"), "sizes[2].files (archive.sha256)"),
    "own-size-left-out": (lambda sizes: sizes.pop(1), "sizes (no size named 'x_24_squash', the recipe's own)"),
}


@pytest.mark.parametrize("case", list(TAMPERED))
def test_a_tampered_recipe_is_refused_in_one_line(world, recipe_build, tmp_path, capsys, case):
    change, problem = TAMPERED[case]
    recipe = _tampered(recipe_build, tmp_path, change)
    out = tmp_path / "out"
    code, stdout, err = run_main(["build", "--recipe", recipe, "--data_dir", world.data_dir, "--out_dir", out,
                                  "--workers", "1", "--quiet"], capsys)
    assert code == 1 and stdout == ""
    assert assert_one_error_line(err) == (f"{PREFIX} {recipe}: 1 sizes not as a build writes them: {problem}; "
                                          "ask the sender for the manifest written by the build")
    assert not out.exists()
    assert not (tmp_path / "evil").exists()
    with pytest.raises(UserError, match=re.escape(problem)):
        packer.rebuild_from_recipe(recipe, str(world.data_dir), out_dir=str(out), workers=1, progress=False)
    assert not out.exists()


def _refused(recipe: Path, world: World, out: Path, capsys) -> str:
    """The one error line a rebuild from ``recipe`` gives (exit 1, nothing on stdout, nothing written)."""
    code, stdout, err = run_main(["build", "--recipe", recipe, "--data_dir", world.data_dir, "--out_dir", out,
                                  "--workers", "1", "--quiet"], capsys)
    assert code == 1 and stdout == ""
    assert not out.exists()
    return assert_one_error_line(err)


def test_more_tampered_recipes_are_refused(world, recipe_build, tmp_path, capsys):
    own = json.loads(recipe_build.other_sizes[0].manifest.read_text())
    # a first name that escapes the folder: refused (and the others, derived from it, are not named for it)
    line = _refused(_tampered(recipe_build, tmp_path, lambda sizes: sizes[0].update(name="../evil")), world,
                    tmp_path / "out", capsys)
    assert line == (f"{PREFIX} {tmp_path / 'x_24_squash_cls.manifest.json'}: 1 sizes not as a build writes "
                    "them: sizes[0].name '../evil' (a file-name stem); ask the sender for the manifest written by "
                    "the build")
    # the recipe's own options changed, its sizes entry not
    document = json.loads(json.dumps(own))
    document["options"]["crop_size"] = 20
    line = _refused(_written(document, tmp_path), world, tmp_path / "out", capsys)
    assert line.endswith(": 1 sizes not as a build writes them: sizes[1].size 'squash:24' ('squash:20', the size "
                         "of the recipe's options); ask the sender for the manifest written by the build")
    # one size only
    line = _refused(_tampered(recipe_build, tmp_path, lambda sizes: sizes.__delitem__(slice(1, None))), world,
                    tmp_path / "out", capsys)
    assert ": sizes [{" in line and "(a list of two or more sizes); ask the sender" in line
    # a size listed twice (each entry well formed): refused as --sizes would be
    line = _refused(_tampered(recipe_build, tmp_path, lambda sizes: sizes.__setitem__(2, dict(sizes[1]))), world,
                    tmp_path / "out", capsys)
    assert line == (f"{PREFIX} --sizes 64/56,squash:24,squash:24: squash:24 would write archives of the same name "
                    "(each size after the first is named by its crop); give each size once, and two crops of one "
                    "size after the first in separate builds")
    # --sizes beside --recipe: the recipe fixes them
    code, _, err = run_main(["build", "--recipe", recipe_build.other_sizes[0].manifest, "--data_dir",
                             world.data_dir, "--out_dir", tmp_path / "out", "--sizes", "72/64,squash:32"], capsys)
    assert code == 1
    assert assert_one_error_line(err).startswith(
        f"{PREFIX} --sizes: the recipe {recipe_build.other_sizes[0].manifest} fixes the options that shape the "
        "archive; drop them")
    with pytest.raises(UserError, match=r"^sizes: the recipe .* fixes the options that shape the archive"):
        packer.rebuild_from_recipe(recipe_build.other_sizes[0].manifest, str(world.data_dir),
                                   out_dir=str(tmp_path / "out"), sizes="72/64,squash:32")
    assert not (tmp_path / "out").exists()


def test_a_recipe_whose_other_size_differs_says_so(world, recipe_build, tmp_path, capsys):
    """The rebuild compares every size's archive, not only the recipe's own."""
    recipe = _tampered(recipe_build, tmp_path, lambda sizes: sizes[2]["files"]["archive"].update(sha256="0" * 64))
    out = tmp_path / "out"
    code, stdout, err = run_main(["build", "--recipe", recipe, "--data_dir", world.data_dir, "--out_dir", out,
                                  "--workers", "1", "--quiet"], capsys)
    assert code == 1, err
    verdict = stdout.splitlines()[3]
    assert verdict == "archives DIFFER from the recipe: x_32_cls.npz; metadata CSV identical"
    assert (out / "x_32_cls.npz").read_bytes() == recipe_build.other_sizes[1].archive.read_bytes()


def test_a_recipe_size_with_a_superscript_digit_is_refused_in_one_line(world, recipe_build, tmp_path, capsys):
    recipe = _tampered(recipe_build, tmp_path, lambda sizes: sizes[1].update(size="²/1"))
    code, stdout, err = run_main(["build", "--recipe", recipe, "--data_dir", world.data_dir, "--out_dir",
                                  tmp_path / "out", "--workers", "1", "--quiet"], capsys)
    assert code == 1
    assert_one_error_line(err, "sizes[1].size '²/1' (R/C or squash:S, as --sizes writes it)")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- info, summary, result

def test_info_names_every_size(recipe_build):
    out = recipe_build.archive.parent
    lines = info(out / "x_24_squash_cls.npz").splitlines()
    assert "options: squash to 24, exact, stored" in lines
    assert ("sizes: the same pass wrote 3 sizes of these images: x_cls.npz (64/56), x_24_squash_cls.npz "
            "(squash:24), x_32_cls.npz (40/32)") in lines
    assert "options: resize 40, crop 32, exact, stored" in info(out / "x_32_cls.npz").splitlines()
    assert [line for line in info(out / "x_cls.npz").splitlines() if line.startswith("sizes:")] == [
        "sizes: the same pass wrote 3 sizes of these images: x_cls.npz (64/56), x_24_squash_cls.npz (squash:24), "
        "x_32_cls.npz (40/32)"]
    assert [line for line in info(out / "x_32_cls.npz").splitlines() if line.startswith("sha256:")] == [
        f"sha256: {sha256(out / 'x_32_cls.npz')}  x_32_cls.npz (from the manifest; run verify to check)"]


def test_info_of_sharded_sizes_names_the_indexes(world, tmp_path, capsys):
    several(world, tmp_path / "out", shard_size=16, compress=True)
    code, stdout, err = run_main(["info", tmp_path / "out" / "x_24_squash_cls.index.json"], capsys)
    assert code == 0, err
    lines = stdout.splitlines()
    assert "options: squash to 24, exact, compressed" in lines
    assert ("sizes: the same pass wrote 3 sizes of these images: x_cls.index.json (64/56), "
            "x_24_squash_cls.index.json (squash:24), x_32_cls.index.json (40/32)") in lines


def test_the_result_names_every_size(recipe_build):
    result, out = recipe_build, recipe_build.archive.parent
    assert (result.name, result.size, result.archive) == ("x", "64/56", out / "x_cls.npz")
    assert [(r.name, r.size) for r in result.other_sizes] == [("x_24_squash", "squash:24"), ("x_32", "40/32")]
    for r, name in zip((result, *result.other_sizes), NAMES, strict=True):
        assert r.archive == out / f"{name}_cls.npz" and r.archives == (r.archive,)
        assert r.manifest == out / f"{name}_cls.manifest.json"
        assert r.metadata == out / f"{name}_cls_metadata.csv"
        assert r.sha256 == sha256(r.archive) == manifest_of(r)["files"]["archive"]["sha256"]
        assert r.archive_bytes == r.archive.stat().st_size
        assert r.counts == {"train": TRAIN_ROWS, "val": VAL_ROWS} and r.num_classes == 3
        assert manifest_of(r)["name"] == name
    assert all(r.other_sizes == () and r.notes == () for r in result.other_sizes)


def test_the_command_line_prints_a_line_per_size(world, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([PYTHON, str(REPO / "main.py"), "--subset_name", str(world.lists / "x.txt"), "--data_dir",
                           str(world.data_dir), "--out_dir", str(out), "--sizes", SIZES, "--workers", "1", "--quiet"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, env=subprocess_env())
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert len(lines) == 5
    for line, name, text in zip(lines[:3], NAMES, TEXTS, strict=True):
        pattern = (re.escape(f"{name}: {TRAIN_ROWS} train, {VAL_ROWS} val images, 3 classes at {text} -> "
                             f"{out / f'{name}_cls.npz'} (") + r"\d+\.\d MB\) in \d+\.\d s \(\d+ images/s\)")
        assert re.fullmatch(pattern, line), line
    assert lines[3] == alone(world, 0, tmp_path / "plain").labels_line()
    assert lines[4] == "metadata: " + ", ".join(str(out / f"{name}_cls_metadata.csv") for name in NAMES)
    assert files_in(out) == all_files()


# --------------------------------------------------------------------------- wrong --sizes

SIZE_ERRORS = {  # extra arguments -> the error line after "imagenet-subset: error: "
    "not-a-size": (["--sizes", "256x224"],
                   "--sizes '256x224': each size is R/C (short side to R, center crop C, as 256/224) or squash:S "
                   "(whole image to S x S, as squash:32), whole numbers of pixels"),
    "squash-0": (["--sizes", "72/64,squash:0"],
                 "--sizes 'squash:0': each size is R/C (short side to R, center crop C, as 256/224) or squash:S "
                 "(whole image to S x S, as squash:32), whole numbers of pixels"),
    "crop-larger": (["--sizes", "64/72"],
                    "--sizes 64/72: the crop 72 is larger than the resized short side 64; the crop must fit inside "
                    "the resized image (R/C with C at most R)"),
    "twice": (["--sizes", "72/64,72/64"],
              "--sizes 72/64,72/64: 72/64 would write archives of the same name (each size after the first is "
              "named by its crop); give each size once, and two crops of one size after the first in separate "
              "builds"),
    "same-name": (["--sizes", "256/224,72/64,80/64"],
                  "--sizes 256/224,72/64,80/64: 72/64 and 80/64 would write archives of the same name (each size "
                  "after the first is named by its crop); give each size once, and two crops of one size after "
                  "the first in separate builds"),
    "crop-size-clash": (["--crop_size", "100", "--sizes", "72/64"],
                        "--crop_size and --sizes both set the size; give every size in --sizes (as --sizes "
                        "72/64,...) and drop --crop_size"),
    "two-clashes": (["--resize_size", "80", "--resize", "squash", "--sizes", "72/64,squash:32"],
                    "--resize_size, --resize and --sizes both set the size; give every size in --sizes (as --sizes "
                    "72/64,...) and drop --resize_size, --resize"),
    "explicit-default": (["--crop_size", "224", "--resize", "crop", "--sizes", "72/64,squash:32"],
                         "--crop_size, --resize and --sizes both set the size; give every size in --sizes (as --sizes "
                         "72/64,...) and drop --crop_size, --resize"),
    "fast-squash-only": (["--fast", "--sizes", "squash:32,squash:16"],
                         "--fast applies to crop sizes only; drop --fast, or add an R/C size to --sizes"),
}


@pytest.mark.parametrize("case", list(SIZE_ERRORS))
def test_wrong_sizes_are_one_line_errors(world, tmp_path, case):
    extra, message = SIZE_ERRORS[case]
    out = tmp_path / "out"
    proc = subprocess.run([PYTHON, str(REPO / "main.py"), "--subset_name", str(world.lists / "x.txt"), "--data_dir",
                           str(world.data_dir), "--out_dir", str(out), "--workers", "1", "--quiet", *extra],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60, env=subprocess_env())
    assert (proc.returncode, proc.stdout, proc.stderr) == (1, "", f"{PREFIX} {message}\n")
    assert not out.exists()


API_SIZE_ERRORS = {
    "not-a-size": ({"sizes": "256x224"}, SIZE_ERRORS["not-a-size"][1]),
    "squash-0": ({"sizes": ["72/64", "squash:0"]}, SIZE_ERRORS["squash-0"][1]),
    "crop-larger": ({"sizes": ("64/72",)}, SIZE_ERRORS["crop-larger"][1]),
    "twice": ({"sizes": ["72/64", " 72/64"]}, SIZE_ERRORS["twice"][1]),
    "same-name": ({"sizes": "256/224,72/64,80/64"}, SIZE_ERRORS["same-name"][1]),
    "crop-size-clash": ({"crop_size": 100, "sizes": "72/64"}, SIZE_ERRORS["crop-size-clash"][1]),
    "resize-clash": ({"resize": "squash", "sizes": "72/64"},
                     "--resize and --sizes both set the size; give every size in --sizes (as --sizes 72/64,...) and "
                     "drop --resize"),
    "fast-squash-only": ({"fast": True, "sizes": "squash:32"}, SIZE_ERRORS["fast-squash-only"][1]),
    "empty-list": ({"sizes": []}, "--sizes [] must list sizes, as 256/224,72/64,squash:32"),
    "empty-item": ({"sizes": "72/64,"}, "--sizes '72/64,' has an empty size (a comma too many?); list sizes as "
                                        "256/224,72/64,squash:32"),
    "space-inside": ({"sizes": "72/64,squash: 32"}, "--sizes 'squash: 32': each size is R/C"),
    "other-digits": ({"sizes": "72/64,٣٢/٣٢"}, "--sizes '٣٢/٣٢': each size is R/C"),
}


@pytest.mark.parametrize("case", list(API_SIZE_ERRORS))
def test_wrong_sizes_in_the_api(tmp_path, case):
    options, message = API_SIZE_ERRORS[case]
    with pytest.raises(UserError, match="^" + re.escape(message)):
        BuildOptions(subset_name="x", out_dir=str(tmp_path / "out"), **options)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("options, first", [
    ({"sizes": "72/64,squash:32", "crop_size": 64}, (72, 64, "crop")),
    ({"sizes": "72/64,squash:32", "resize_size": 72, "resize": "crop"}, (72, 64, "crop")),
    ({"sizes": "72/64,squash:32", "resize_size": 256, "crop_size": 224, "resize": "crop"}, (72, 64, "crop")),
    ({"sizes": "squash:32,72/64", "resize": "squash", "crop_size": 32}, (256, 32, "squash")),
    ({"sizes": [" 72/64", "squash:32 "], "fast": True}, (72, 64, "crop")),
])
def test_size_options_equal_to_the_default_or_the_first_size_are_allowed(options, first):
    built = BuildOptions(subset_name="x", **options)
    assert (built.resize_size, built.crop_size, built.resize) == first
    assert built.sizes == tuple(text.replace(" ", "") for text in (
        options["sizes"].split(",") if isinstance(options["sizes"], str) else options["sizes"]))
    assert [(o.resize_size, o.crop_size, o.resize, o.fast, o.sizes) for o in built.each_size()][0] == (
        *first, bool(options.get("fast")) and first[2] == "crop", None)


def test_a_superscript_digit_in_sizes_is_a_one_line_error(world, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([PYTHON, str(REPO / "main.py"), "--subset_name", str(world.lists / "x.txt"), "--data_dir",
                           str(world.data_dir), "--out_dir", str(out), "--workers", "1", "--quiet",
                           "--sizes", "72/64,²/1"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env=subprocess_env())
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"{PREFIX} --sizes '²/1': each size is R/C") and "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- atomicity

def test_a_failed_several_size_build_writes_nothing_and_keeps_earlier_outputs(world, tmp_path):
    data_dir = copy_tree(world, tmp_path)
    out = tmp_path / "out"
    several(world, out, data_dir=data_dir, shard_size=16)
    before = snapshot(out)
    assert sorted(before) == all_files(3)
    bad = data_dir / "val" / "ILSVRC2012_val_00000012.JPEG"  # the last val row: the last chunk
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    for options in ({"shard_size": 16}, {}, {"compress": True}):  # same set, other shards, compressed
        with pytest.raises(UserError, match=re.escape(f"cannot read image {bad}")):
            several(world, out, data_dir=data_dir, **options)
        assert snapshot(out) == before  # every size as it was; no .partial, no work folder
    fresh = tmp_path / "fresh" / "out"
    with pytest.raises(UserError, match=re.escape(f"cannot read image {bad}")):
        several(world, fresh, data_dir=data_dir)
    assert not (tmp_path / "fresh").exists()


def test_an_interrupted_several_size_build_without_resume_writes_nothing(world, tmp_path, monkeypatch):
    out = tmp_path / "out"
    several(world, out, compress=True)
    before = snapshot(out)
    for folder, options in ((out, {"shard_size": 16}), (tmp_path / "fresh", {})):
        restore = stop_after_journal_records(monkeypatch, 4)
        with pytest.raises(KeyboardInterrupt):
            several(world, folder, compress=True, **options)
        restore()
    assert snapshot(out) == before  # the work folder is gone too
    assert not (tmp_path / "fresh").exists()


def test_a_failure_while_putting_the_sizes_in_place_restores_every_earlier_set(world, tmp_path, monkeypatch):
    out = tmp_path / "out"
    several(world, out, shard_size=16)
    before = snapshot(out)
    real_replace, failed = os.replace, []

    def failing_replace(source, target):
        if str(target).endswith("x_32_cls.manifest.json") and not failed:  # the last output put in place
            failed.append(target)
            raise OSError(28, "No space left on device")
        return real_replace(source, target)

    monkeypatch.setattr(packer.execute.os, "replace", failing_replace)
    with pytest.raises(UserError, match="No space left on device"):
        several(world, out, shard_size=32)  # 2 shards per size instead of 3: the 3 are moved aside first
    monkeypatch.setattr(packer.execute.os, "replace", real_replace)
    assert failed
    assert snapshot(out) == before


def test_a_rebuild_leaves_no_stale_shard_of_any_size(world, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "x_32_cls-00009-of-00010.npz.txt").write_text("not ours")  # a look-alike is left alone
    for shard_size, shards in ((16, 3), (32, 2), (None, None), (12, 3), (8, 5)):
        result = several(world, out, **({"shard_size": shard_size} if shard_size else {}))
        assert files_in(out) == sorted(all_files(shards) + ["x_32_cls-00009-of-00010.npz.txt"]), shard_size
        for r in (result, *result.other_sizes):
            assert verify(r.archive) == []


# --------------------------------------------------------------------------- the other sizes' names

def test_a_build_of_another_sizes_name_running_meanwhile_is_refused(world, tmp_path):
    """While a several-size build runs it holds the work-folder lock of every size's name, so a build
    of one of those names (x_32 here) cannot interleave its outputs with it, and the other way."""
    import fcntl

    out = tmp_path / "out"
    (out / ".x_32_cls.work").mkdir(parents=True)
    with open(out / ".x_32_cls.work" / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running build of x_32 holds it
        with pytest.raises(UserError, match=re.escape(f"another build is writing {out / '.x_32_cls.work'} right "
                                                      "now; wait for it or stop it")):
            several(world, out)
    assert sorted(p.name for p in out.iterdir()) == [".x_32_cls.work"]  # nothing of the refused build
    several(world, out)
    assert files_in(out) == all_files()
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # no lock folder left


def test_info_says_when_another_size_was_replaced_or_removed(world, tmp_path):
    out = tmp_path / "out"
    result = several(world, out)
    packer.build(BuildOptions(subset_name=str(world.lists / "x_32.txt"), data_dir=str(world.data_dir),
                              out_dir=str(out), workers=1, progress=False, resize_size=40, crop_size=24))
    # (a build of its own named x_32, over the pass's x_32)
    result.other_sizes[0].manifest.unlink()
    line = next(line for line in info(result.archive).splitlines() if line.startswith("sizes:"))
    assert line == ("sizes: the same pass wrote 3 sizes of these images: x_cls.npz (64/56), x_24_squash_cls.npz "
                    "(squash:24) [missing], x_32_cls.npz (40/32) [since replaced by another build]")


def test_resume_without_sizes_says_that_sizes_changed(world, tmp_path, monkeypatch, caplog):
    out = tmp_path / "out"
    restore = stop_after_journal_records(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        several(world, out, resume=True)
    restore()
    with caplog.at_level(logging.WARNING, logger="packer"):  # the first size alone, --sizes dropped
        packer.build(BuildOptions(subset_name=str(world.lists / "x.txt"), data_dir=str(world.data_dir),
                                  out_dir=str(out), workers=1, progress=False, resume=True, resize_size=64,
                                  crop_size=56))
    assert ("nothing to resume (options changed: sizes ['64/56', 'squash:24', '40/32'] -> None) — starting afresh"
            in caplog.messages)
