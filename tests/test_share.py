"""Share and use subsets: deterministic bytes, the manifest, verify, info, recipe rebuild, load, preview.

The trees come from ``helpers.write_tree`` (through ``_write_tree``): the
Kaggle layout, four classes A, B, C, D of which the subset lists C, A, B (not
sorted, D left out; D sorts between A and B so its images shift the ids), with
photo-like pictures (blurred noise) of varied sizes. The subset has 75 train
and 36 val rows, so each split spans several 32-row chunks and the worker
count has something to split.
"""
import datetime
import json
import os
import re
import shutil
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import packer
from helpers import (KEYS, NAMES, PREFIX, SOFT, SUBSET, A, B, C, D, Images, build, photo, read_npz, run_main,
                     save_image, sha256, write_tree)
from packer import UserError
from packer.preview import contact_sheet, write_preview
from packer.recipe import rebuild_from_recipe
from packer.checking import info, verify

# A, B, C, D, NAMES and SUBSET (C, A, B) are those of helpers
TRAIN_COUNTS = {A: 30, B: 20, C: 25, D: 3}  # 75 subset rows: chunks of 32, 32, 11
VAL_NUMBERS = [n for n in range(1, 56) if n % 7]  # gaps at multiples of 7
VAL_LABELS = {n: [B, A, D, C][n % 4] for n in VAL_NUMBERS}  # 36 subset rows: chunks of 32, 4
SIZES = [(40, 56), (64, 48), (90, 120), (57, 41), (300, 200), (48, 400), (256, 256), (41, 40)]
THUMB, GAP, LABEL_WIDTH = 112, 4, 260


# --------------------------------------------------------------------------- builder

# image k (train images in sorted-path order, then val): a soft photo of seed k and size SIZES[k % 8]
IMAGES = Images(sizes=tuple(SIZES), photo=SOFT, quality=92)


class Tree:
    """A Kaggle-layout tree: ``root`` has the label files, ``data_dir`` is ILSVRC/Data/CLS-LOC."""

    def __init__(self, root: Path):
        self.root = root
        self.data_dir = root / "ILSVRC" / "Data" / "CLS-LOC"
        # every train image, sorted by relative path: line i of train_cls.txt is id i
        self.all_train = sorted(f"{w}/{w}_{k}.JPEG" for w, n in TRAIN_COUNTS.items() for k in range(1, n + 1))

    def train_rows(self):
        """(relative paths, labels, ids) of the subset's train rows, in row order."""
        rows = [(rel, SUBSET.index(rel[:9]), i) for i, rel in enumerate(self.all_train, 1) if rel[:9] in SUBSET]
        return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]

    def val_rows(self):
        rows = [(f"ILSVRC2012_val_{n:08d}.JPEG", SUBSET.index(w), n) for n, w in sorted(VAL_LABELS.items())
                if w in SUBSET]
        return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]


def _write_tree(root: Path) -> Tree:
    write_tree(root, counts=TRAIN_COUNTS, val=VAL_LABELS, names=NAMES, val_txt=False, boxes=("1 2 30 40",),
               images=IMAGES, in_id_order=True)
    return Tree(root)


def _one_error_line(err: str, *needles) -> str:
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1, f"expected one line on stderr, got {err!r}"
    assert lines[0].startswith(PREFIX), lines[0]
    for needle in needles:
        assert str(needle) in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def _copy_outputs(result, folder: Path) -> dict[str, Path]:
    """The archive, CSV and manifest of ``result`` copied into ``folder`` (to damage freely)."""
    folder.mkdir(parents=True, exist_ok=True)
    return {kind: Path(shutil.copy2(getattr(result, kind), folder))
            for kind in ("archive", "metadata", "manifest")}


def _member_data_offset(path: Path, member: str) -> int:
    """File offset of the first array element of a stored member, from the ZIP and .npy headers."""
    with zipfile.ZipFile(path) as z:
        zinfo = z.getinfo(member)
    assert zinfo.compress_type == zipfile.ZIP_STORED
    with open(path, "rb") as f:
        f.seek(zinfo.header_offset)
        local = f.read(30)
        assert local[:4] == b"PK\x03\x04"
        name_length, extra_length = struct.unpack("<HH", local[26:30])
        f.seek(zinfo.header_offset + 30 + name_length + extra_length)
        assert np.lib.format.read_magic(f) == (1, 0)
        np.lib.format.read_array_header_1_0(f)
        return f.tell()


def _flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


# --------------------------------------------------------------------------- shared fixtures

@pytest.fixture(scope="module")
def share_root(module_tmp_path_factory):
    return module_tmp_path_factory.mktemp("share")


@pytest.fixture(scope="module")
def tree(share_root):
    return _write_tree(share_root / "treeA")


@pytest.fixture(scope="module")
def class_list(share_root):
    path = share_root / "lists" / "mine.txt"
    path.parent.mkdir(parents=True)
    path.write_text("".join(f"{w}\n" for w in SUBSET))
    return path


@pytest.fixture(scope="module")
def built(tree, class_list, share_root):
    """The stored archive built with one worker (never modified by the tests)."""
    return build(class_list, tree.data_dir, share_root / "out_w1")


@pytest.fixture(scope="module")
def built_compressed(tree, class_list, share_root):
    return build(class_list, tree.data_dir, share_root / "out_z_w1", compress=True)


@pytest.fixture(scope="module")
def manifest(built):
    return json.loads(built.manifest.read_text(encoding="utf-8"))


def test_the_tree_spans_several_chunks(built, tree):
    """The worker-count tests below only mean something if each split is cut into several chunks."""
    assert built.counts == {"train": 75, "val": 36}
    z = read_npz(built.archive)
    paths, labels, ids = tree.train_rows()
    assert z["y_train"].tolist() == labels and z["train_id"].tolist() == ids
    paths, labels, ids = tree.val_rows()
    assert z["y_val"].tolist() == labels and z["val_id"].tolist() == ids
    # every row is a different picture
    assert len({zlib.crc32(row) for row in z["X_train"]}) == 75
    assert len({zlib.crc32(row) for row in z["X_val"]}) == 36


# --------------------------------------------------------------------------- 1. deterministic bytes

@pytest.mark.parametrize("compress", [False, True], ids=["stored", "compressed"])
def test_bytes_do_not_depend_on_worker_count(tree, class_list, share_root, built, built_compressed, compress):
    first = built_compressed if compress else built
    reference = (sha256(first.archive), sha256(first.metadata))
    assert first.sha256 == reference[0]
    for workers in (2, 3):
        result = build(class_list, tree.data_dir, share_root / f"out_{'z' if compress else 's'}_w{workers}",
                        compress=compress, workers=workers)
        assert (sha256(result.archive), sha256(result.metadata)) == reference, f"workers={workers}"
        assert result.sha256 == reference[0]
    # the same build again with one worker: also identical
    again = build(class_list, tree.data_dir, share_root / f"out_{'z' if compress else 's'}_again", compress=compress)
    assert (sha256(again.archive), sha256(again.metadata)) == reference


def test_compressed_archive_differs_from_stored_and_holds_the_same_arrays(built, built_compressed):
    assert sha256(built.archive) != sha256(built_compressed.archive)
    assert built_compressed.archive.stat().st_size < built.archive.stat().st_size
    with zipfile.ZipFile(built_compressed.archive) as z:
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_DEFLATED}
        assert z.testzip() is None
    stored, deflated = read_npz(built.archive), read_npz(built_compressed.archive)
    for key in KEYS:
        assert np.array_equal(stored[key], deflated[key]), key
    assert built.metadata.read_bytes() == built_compressed.metadata.read_bytes()


@pytest.mark.parametrize("compress", [False, True], ids=["stored", "compressed"])
def test_archive_and_csv_hold_no_host_date_or_path(built, built_compressed, share_root, tree, compress):
    result = built_compressed if compress else built
    now = datetime.datetime.now(datetime.timezone.utc)
    local = datetime.date.today()
    needles = [str(share_root).encode(), str(tree.data_dir).encode(), str(result.archive.parent).encode(),
               now.date().isoformat().encode(), local.isoformat().encode(), f"{now.year}-".encode(),
               f"{local.year}-".encode()]
    node = os.uname().nodename
    if len(node) >= 4:
        needles.append(node.encode())
    for path in (result.archive, result.metadata):
        data = path.read_bytes()
        for needle in needles:
            assert needle not in data, f"{needle!r} found in {path.name}"
    with zipfile.ZipFile(result.archive) as z:
        assert z.namelist() == [k + ".npy" for k in KEYS]
        for zinfo in z.infolist():
            assert zinfo.date_time == (1980, 1, 1, 0, 0, 0), zinfo.filename
            assert zinfo.comment == b"" and zinfo.extra == b""
        assert z.comment == b""


# --------------------------------------------------------------------------- 2. the manifest

def test_manifest_header_options_and_classes(built, manifest):
    assert built.manifest == built.archive.parent / "mine_cls.manifest.json"
    assert manifest["tool"] == "imagenet-subset"
    assert manifest["tool_version"] == packer.__version__
    assert manifest["manifest_version"] == 1
    assert manifest["name"] == "mine"
    options = manifest["options"]
    assert {k: options.get(k) for k in ("resize_size", "crop_size", "fast", "compress", "chunk_size")} == {
        "resize_size": 256, "crop_size": 224, "fast": False, "compress": False, "chunk_size": 32}
    assert "Resize(resize_size) + CenterCrop(crop_size)" in options["resize_rule"]
    assert [{k: c.get(k) for k in ("label", "wnids", "human_label")} for c in manifest["classes"]] == [
        {"label": 0, "wnids": [C], "human_label": "chain saw, chainsaw"},
        {"label": 1, "wnids": [A], "human_label": "tench, Tinca tinca"},
        {"label": 2, "wnids": [B], "human_label": "English springer, English springer spaniel"},
    ]


def test_manifest_options_of_a_compressed_build(built_compressed):
    manifest = json.loads(built_compressed.manifest.read_text(encoding="utf-8"))
    assert manifest["options"]["compress"] is True
    assert manifest["files"]["archive"] == {"file": "mine_cls.npz", "bytes": built_compressed.archive.stat().st_size,
                                            "sha256": sha256(built_compressed.archive)}


def test_manifest_input_names_label_files_only(manifest):
    assert manifest["input"] == {
        "train_order": "train_cls.txt",
        "val_labels": "LOC_val_solution.csv",
        "label_files": {"train_cls": "train_cls.txt", "synset_mapping": "LOC_synset_mapping.txt",
                        "val_solution": "LOC_val_solution.csv", "val_annotations": None, "map_clsloc": None,
                        "val_ground_truth": None},
    }


def test_manifest_holds_no_absolute_path(manifest, share_root):
    text = json.dumps(manifest)
    assert str(share_root) not in text


def test_manifest_splits_and_sources_match_the_arrays(built, manifest, tree):
    z = read_npz(built.archive)
    assert list(manifest["splits"]) == ["train", "val"]
    assert list(manifest["sources"]) == ["train", "val"]
    expected_rows = {"train": tree.train_rows(), "val": tree.val_rows()}
    for split in ("train", "val"):
        X, y, ids = z[f"X_{split}"], z[f"y_{split}"], z[f"{split}_id"]
        assert manifest["splits"][split] == {"images": len(X), "per_class": np.bincount(y, minlength=3).tolist()}
        sources = manifest["sources"][split]
        paths, labels, expected_ids = expected_rows[split]
        assert sources["root"] == split
        assert sources["paths"] == paths  # relative to the split's root
        assert sources["ids"] == ids.tolist() == expected_ids
        assert sources["labels"] == y.tolist() == labels
        assert sources["row_crc32"] == [zlib.crc32(row.tobytes()) for row in X]
    assert manifest["splits"]["train"]["per_class"] == [25, 30, 20]
    assert manifest["sources"]["train"]["label_source"] == "train_cls.txt"
    assert manifest["sources"]["val"]["label_source"] == "LOC_val_solution.csv"


def test_manifest_train_statistics(built, manifest):
    X = read_npz(built.archive)["X_train"].reshape(-1, 3).astype(np.float64)
    stats = manifest["X_train_stats"]
    assert set(stats) == {"mean", "std"}
    np.testing.assert_allclose(stats["mean"], X.mean(axis=0), rtol=0, atol=1e-3)
    np.testing.assert_allclose(stats["std"], X.std(axis=0), rtol=0, atol=1e-3)


def test_manifest_layout_one_line_per_value_below_two_levels(built):
    text = (built.archive.parent / "mine_cls.manifest.json").read_text(encoding="utf-8")
    lines = text.split("\n")
    assert lines[:2] == ["{", ' "manifest_version": 1,'] and lines[-2:] == ["}", ""]
    # each split's sources (thousands of paths for a real subset) is one line of compact JSON
    train = [line for line in lines if line.startswith('  "train": {"root"')]
    assert len(train) == 1
    assert json.loads("{" + train[0].rstrip(",") + "}")["train"] == json.loads(text)["sources"]["train"]


def test_channel_sums_are_exact_in_both_accumulators():
    from packer.work import channel_sums

    rng = np.random.default_rng(3)
    for rows in (rng.integers(0, 256, (5, 7, 6, 3), dtype=np.uint8),  # a uint32 total is exact
                 np.full((70000, 1, 1, 3), 255, dtype=np.uint8)):     # 70,000 lines x 255**2 needs uint64
        values = rows.reshape(-1, 3).astype(np.int64)
        assert channel_sums(rows) == (tuple(int(v) for v in values.sum(axis=0)),
                                      tuple(int(v) for v in (values ** 2).sum(axis=0)))
    assert channel_sums(np.zeros((0, 4, 4, 3), dtype=np.uint8)) == ((0, 0, 0), (0, 0, 0))


def test_manifest_files_and_build_records(built, manifest):
    files = manifest["files"]
    assert files["archive"] == {"file": "mine_cls.npz", "bytes": built.archive.stat().st_size,
                                "sha256": sha256(built.archive)}
    assert files["metadata"] == {"file": "mine_cls_metadata.csv", "bytes": built.metadata.stat().st_size,
                                 "sha256": sha256(built.metadata)}
    assert built.sha256 == files["archive"]["sha256"]
    record = manifest["build"]
    assert isinstance(record["seconds"], (int, float)) and record["seconds"] > 0
    assert isinstance(record["images_per_second"], (int, float)) and record["images_per_second"] > 0
    assert record["workers"] == 1
    finished = datetime.datetime.fromisoformat(record["finished_utc"])
    assert finished.utcoffset() == datetime.timedelta(0)


# --------------------------------------------------------------------------- 3. verify

def _verify_cli(archive, capsys):
    code, out, err = run_main(["verify", archive], capsys)
    assert "Traceback" not in out + err
    lines = out.rstrip("\n").split("\n")
    return code, lines, err


def test_verify_good_archive(built, capsys):
    assert verify(built.archive) == []
    code, lines, err = _verify_cli(built.archive, capsys)
    assert code == 0 and err == ""
    assert lines == [f"{built.archive}: OK, all checks hold"]


def test_verify_truncated_archive(built, tmp_path, capsys):
    files = _copy_outputs(built, tmp_path / "out")
    archive = files["archive"]
    size = archive.stat().st_size
    os.truncate(archive, size // 2)
    problems = verify(archive)
    assert problems, "a truncated archive passed verify"
    assert problems[0] == (f"{archive} is {size // 2} bytes but the manifest says {size}: truncated; "
                           "rebuild or re-download it")
    assert all(str(archive) in p for p in problems)
    code, lines, err = _verify_cli(archive, capsys)
    assert code == 1 and err == ""
    assert lines == [f"FAIL: {p}" for p in problems] + [f"{archive}: {len(problems)} problem{'' if len(problems) == 1 else 's'}"]


def test_verify_names_the_damaged_row(built, tree, tmp_path, capsys):
    files = _copy_outputs(built, tmp_path / "out")
    archive = files["archive"]
    row = 40
    _flip_byte(archive, _member_data_offset(archive, "X_train.npy") + row * 224 * 224 * 3 + 12345)
    rel = tree.train_rows()[0][row]
    problems = verify(archive)
    assert f"{archive}: SHA-256 differs from the manifest: the file was changed or damaged" in problems
    assert f"1 image rows differ from their recorded CRC-32: X_train row {row} ({rel})" in problems
    assert len(problems) == 2, problems
    code, lines, err = _verify_cli(archive, capsys)
    assert code == 1 and err == ""
    assert lines == [f"FAIL: {p}" for p in problems] + [f"{archive}: 2 problems"]


def test_verify_damaged_compressed_archive_reports_without_traceback(built_compressed, tmp_path, capsys):
    files = _copy_outputs(built_compressed, tmp_path / "out")
    archive = files["archive"]
    with zipfile.ZipFile(archive) as z:
        zinfo = z.getinfo("X_train.npy")
    _flip_byte(archive, zinfo.header_offset + 30 + len("X_train.npy") + zinfo.compress_size // 2)
    code, out, err = run_main(["verify", archive], capsys)
    assert "Traceback" not in out + err
    assert code == 1
    assert f"FAIL: {archive}: SHA-256 differs from the manifest: the file was changed or damaged" in out.splitlines()


def test_verify_damaged_compressed_archive_claims_no_wrong_counts(built_compressed, tmp_path):
    files = _copy_outputs(built_compressed, tmp_path / "out")
    archive = files["archive"]
    with zipfile.ZipFile(archive) as z:
        zinfo = z.getinfo("X_train.npy")
    _flip_byte(archive, zinfo.header_offset + 30 + len("X_train.npy") + zinfo.compress_size // 2)
    problems = verify(archive)
    assert problems[0] == f"{archive}: SHA-256 differs from the manifest: the file was changed or damaged"
    assert any("X_train.npy" in p for p in problems[1:]), problems  # the unreadable member is named
    # the archive still holds 75 and 36 rows: no problem may claim otherwise
    assert not [p for p in problems if "has 0 images" in p], problems


def test_verify_changed_csv(built, tmp_path, capsys):
    files = _copy_outputs(built, tmp_path / "out")
    csv = files["metadata"]
    text = csv.read_bytes()
    at = text.index(b"chain saw")
    csv.write_bytes(text[:at] + b"C" + text[at + 1:])
    assert verify(files["archive"]) == [f"{csv}: SHA-256 differs from the manifest: the file was changed"]
    code, lines, err = _verify_cli(files["archive"], capsys)
    assert code == 1 and err == ""
    assert lines == [f"FAIL: {csv}: SHA-256 differs from the manifest: the file was changed",
                     f"{files['archive']}: 1 problem"]


def test_verify_missing_manifest(built, tmp_path, capsys):
    files = _copy_outputs(built, tmp_path / "out")
    files["manifest"].unlink()
    problems = verify(files["archive"])
    assert problems == [f"no manifest at {files['manifest']}; it is written beside the archive by every build"]
    code, lines, err = _verify_cli(files["archive"], capsys)
    assert code == 1 and err == ""
    assert lines[0] == f"FAIL: {problems[0]}"
    assert len(lines) == 2


def test_verify_missing_archive_is_one_error_line(tmp_path, capsys):
    missing = tmp_path / "nothing_cls.npz"
    with pytest.raises(UserError, match=re.escape(str(missing))):
        verify(missing)
    code, out, err = run_main(["verify", missing], capsys)
    assert code == 1 and out == ""
    _one_error_line(err, missing)


# --------------------------------------------------------------------------- 4. info

def test_info_lists_arrays_classes_and_sha(built, manifest, capsys):
    text = info(built.archive)
    lines = text.split("\n")
    assert lines[0].startswith(f"{built.archive}  ")
    arrays = {line.split()[0]: line.split(None, 2)[1:] for line in lines if line.startswith("  ")
              and line.split()[0] in KEYS}
    assert arrays == {"X_train": ["uint8", "(75, 224, 224, 3)"], "y_train": ["int32", "(75,)"],
                      "train_id": ["int32", "(75,)"], "X_val": ["uint8", "(36, 224, 224, 3)"],
                      "y_val": ["int32", "(36,)"], "val_id": ["int32", "(36,)"]}
    sha_lines = [line for line in lines if line.startswith("sha256: ")]
    assert len(sha_lines) == 1 and sha_lines[0].split()[1] == manifest["files"]["archive"]["sha256"] == sha256(
        built.archive)
    assert "from the manifest" in sha_lines[0]
    counts = {C: (25, 12), A: (30, 12), B: (20, 12)}
    assert [c["label"] for c in manifest["classes"]] == [0, 1, 2]
    assert manifest["splits"]["val"]["per_class"] == [12, 12, 12]
    class_lines = lines[lines.index("classes:") + 1:]
    assert len(class_lines) == 4  # header + one per class
    for label, wnid in enumerate(SUBSET):
        (line,) = [x for x in class_lines if wnid in x]
        assert NAMES[wnid] in line
        tokens = line.split()
        assert tokens[0] == str(label) and tokens[1] == wnid
        assert tokens[-2:] == [str(n) for n in counts[wnid]]
    code, out, err = run_main(["info", built.archive], capsys)
    assert code == 0 and err == "" and out == text + "\n"


def _rchar() -> int:
    return int(re.search(r"^rchar:\s*(\d+)", Path("/proc/self/io").read_text(), re.M).group(1))


def _single_class_tree(data_dir: Path, n_train: int, n_val: int) -> None:
    """One class, the same small picture ``n_train`` + ``n_val`` times; val sorted into a class folder."""
    write_tree(data_dir, counts={A: n_train}, val=dict.fromkeys(range(1, n_val + 1), A), kaggle=False,
               sorted_val=True, images=Images(sizes=((64, 48),), photo=SOFT, quality=90, first=7, repeat=True))


@pytest.mark.skipif(not Path("/proc/self/io").is_file(), reason="needs /proc/self/io")
def test_info_reads_only_headers(tmp_path):
    class_list = tmp_path / "one.txt"
    class_list.write_text(f"{A}\n")
    archives = []
    for scale in (1, 4):
        data_dir = tmp_path / f"tree{scale}" / "CLS-LOC"
        _single_class_tree(data_dir, 140 * scale, 4 * scale)
        archives.append(build(class_list, data_dir, tmp_path / f"out{scale}").archive)
    small, big = archives
    assert small.stat().st_size >= 20e6 and big.stat().st_size >= 4 * small.stat().st_size - 1e6
    info(small)  # warm up: first-use imports (pandas, ...) read files too
    read = {}
    for archive in (small, big):
        before = _rchar()
        text = info(archive)
        read[archive] = _rchar() - before
        assert "(140" in text or "(560" in text
    for archive in (small, big):
        assert read[archive] < 0.02 * archive.stat().st_size, (archive.name, read[archive])
    # what grows with the archive is only the manifest's per-row record and the CSV, not the pixels
    side_files = {a: a.with_name("one_cls.manifest.json").stat().st_size + a.with_name("one_cls_metadata.csv").stat().st_size
                  for a in archives}
    assert read[big] - read[small] <= side_files[big] - side_files[small] + 64 * 1024, read


# --------------------------------------------------------------------------- 5. recipe rebuild

@pytest.fixture
def tree_b(tree, tmp_path):
    """A copy of the tree at another absolute path."""
    root = tmp_path / "elsewhere" / "copyB"
    shutil.copytree(tree.root, root)
    return Tree(root)


def test_recipe_rebuild_on_a_copy_is_identical(built, tree_b, tmp_path, capsys):
    report = rebuild_from_recipe(built.manifest, str(tree_b.data_dir), out_dir=str(tmp_path / "other"),
                                 workers=1, progress=False)
    assert report.archive_matches is True
    assert report.metadata_matches is True
    assert report.differing_images == ()
    assert report.result.archive == tmp_path / "other" / "mine_cls.npz"
    assert report.result.sha256 == sha256(report.result.archive) == sha256(built.archive)
    assert sha256(report.result.metadata) == sha256(built.metadata)
    code, out, err = run_main(["build", "--recipe", built.manifest, "--data_dir", tree_b.data_dir,
                           "--out_dir", tmp_path / "cli", "--workers", "1", "--quiet"], capsys)
    assert code == 0, err
    assert "Traceback" not in err
    assert f"identical to the recipe (sha256 {sha256(built.archive)})" in out
    assert sha256(tmp_path / "cli" / "mine_cls.npz") == sha256(built.archive)


def test_recipe_rebuild_names_a_missing_image(built, tree_b, tmp_path, capsys):
    paths = tree_b.train_rows()[0]
    gone = f"train/{paths[17]}"
    (tree_b.data_dir / gone).unlink()
    with pytest.raises(UserError) as raised:
        rebuild_from_recipe(built.manifest, str(tree_b.data_dir), out_dir=str(tmp_path / "other"),
                            workers=1, progress=False)
    assert gone in str(raised.value)
    assert "1 images of the recipe are missing" in str(raised.value)
    code, out, err = run_main(["build", "--recipe", built.manifest, "--data_dir", tree_b.data_dir,
                           "--out_dir", tmp_path / "cli", "--workers", "1", "--quiet"], capsys)
    assert code == 1 and out == ""
    _one_error_line(err, gone)
    assert not (tmp_path / "cli" / "mine_cls.npz").exists()


def test_recipe_rebuild_names_a_changed_image(built, tree_b, tmp_path, capsys):
    changed = f"val/{tree_b.val_rows()[0][5]}"
    save_image(tree_b.data_dir / changed, photo(70, 50, seed=999, **SOFT), quality=92)
    report = rebuild_from_recipe(built.manifest, str(tree_b.data_dir), out_dir=str(tmp_path / "other"),
                                 workers=1, progress=False)
    assert report.archive_matches is False
    assert report.differing_images == (changed,)
    assert report.metadata_matches is True
    assert report.result.sha256 != sha256(built.archive)
    code, out, err = run_main(["build", "--recipe", built.manifest, "--data_dir", tree_b.data_dir,
                           "--out_dir", tmp_path / "cli", "--workers", "1", "--quiet"], capsys)
    assert code == 1
    assert "Traceback" not in err
    assert f"DIFFERS from the recipe: 1 images differ: {changed}" in out


# --------------------------------------------------------------------------- 6. load

def test_load_memory_maps_stored_arrays(built):
    reference = read_npz(built.archive)
    data = packer.load(built.archive, mmap=True)
    assert list(data.keys()) == KEYS
    for key in ("X_train", "X_val"):
        assert isinstance(data[key], np.memmap), key
    for key in KEYS:
        assert data[key].dtype == reference[key].dtype and data[key].shape == reference[key].shape, key
        assert np.array_equal(data[key], reference[key]), key
    assert data.X_train is data["X_train"]
    assert np.array_equal(data["y_val"], reference["y_val"])
    assert np.array_equal(data.val_id, reference["val_id"])
    with pytest.raises(AttributeError):
        data.X_test


def test_load_without_mmap_gives_plain_arrays(built):
    reference = read_npz(built.archive)
    data = packer.load(built.archive, mmap=False)
    for key in KEYS:
        assert type(data[key]) is np.ndarray, key
        assert np.array_equal(data[key], reference[key]), key


def test_load_compressed_archive(built, built_compressed):
    reference = read_npz(built.archive)
    data = packer.load(built_compressed.archive)
    for key in KEYS:
        assert not isinstance(data[key], np.memmap), key
        assert data[key].dtype == reference[key].dtype
        assert np.array_equal(data[key], reference[key]), key


def test_load_classes_is_the_metadata_csv(built):
    data = packer.load(built.archive)
    plain = pd.read_csv(built.metadata)
    assert list(data.classes.columns) == list(plain.columns)
    pd.testing.assert_frame_equal(data.classes.astype(object).where(data.classes.notna(), None),
                                  plain.astype(object).where(plain.notna(), None), check_dtype=False)
    assert data.classes["WNID"].tolist() == SUBSET
    assert data.classes["human_label"].tolist() == [NAMES[w] for w in SUBSET]
    assert data.classes["num_train_images"].tolist() == [25, 30, 20]


# --------------------------------------------------------------------------- 7. preview

def _tile(X, row) -> np.ndarray:
    return np.asarray(Image.fromarray(np.asarray(X[row])).resize((THUMB, THUMB), Image.Resampling.BILINEAR))


def _check_sheet(sheet: Image.Image, archive, split: str, labels: list[int], per_class: int) -> None:
    z = read_npz(archive)
    X, y = z[f"X_{split}"], z[f"y_{split}"]
    assert sheet.mode == "RGB"
    assert sheet.size == (LABEL_WIDTH + per_class * (THUMB + GAP) + GAP, len(labels) * (THUMB + GAP) + GAP)
    pixels = np.asarray(sheet)
    for r, label in enumerate(labels):
        top = GAP + r * (THUMB + GAP)
        members = np.flatnonzero(y == label)[:per_class]
        assert len(members) == per_class
        for c, row in enumerate(members):
            left = LABEL_WIDTH + c * (THUMB + GAP)
            region = pixels[top:top + THUMB, left:left + THUMB]
            assert np.array_equal(region, _tile(X, row)), (label, c)
            assert region.std() > 5  # a picture, not a flat tile
        panel = pixels[top:top + THUMB, :LABEL_WIDTH]
        assert (panel != np.array([245, 245, 245], np.uint8)).any(), f"label panel of row {r} is blank"


def test_contact_sheet_shows_the_first_images_of_each_class(built):
    sheet = contact_sheet(built.archive, per_class=3, classes=["0", B])
    _check_sheet(sheet, built.archive, "train", [0, 2], 3)
    default = contact_sheet(built.archive, split="val", per_class=2)
    _check_sheet(default, built.archive, "val", [0, 1, 2], 2)


def test_contact_sheet_unknown_class_or_split(built):
    for bad in ("n09999999", "7", "tench"):
        with pytest.raises(UserError, match=re.escape(f"'{bad}'")):
            contact_sheet(built.archive, classes=["0", bad])
    with pytest.raises(UserError, match=re.escape("'test'")) as raised:
        contact_sheet(built.archive, split="test")
    assert str(built.archive) in str(raised.value)


def test_write_preview_and_cli(built, tmp_path, capsys):
    output = write_preview(built.archive, tmp_path / "api.png", per_class=3, classes=[C, "2"])
    assert output == tmp_path / "api.png"
    with Image.open(output) as image:
        _check_sheet(image.convert("RGB"), built.archive, "train", [0, 2], 3)
    out_png = tmp_path / "cli.png"
    code, out, err = run_main(["preview", built.archive, "-o", out_png, "--per_class", "3", "--classes", f"0,{B}"],
                              capsys)
    assert code == 0 and err == ""
    assert out == f"wrote {out_png}\n"
    with Image.open(out_png) as image:
        assert image.format == "PNG"
        _check_sheet(image.convert("RGB"), built.archive, "train", [0, 2], 3)


def test_preview_cli_errors(built, tmp_path, capsys):
    out_png = tmp_path / "bad.png"
    code, out, err = run_main(["preview", built.archive, "-o", out_png, "--classes", "0,n09999999"], capsys)
    assert code == 1 and out == ""
    _one_error_line(err, "n09999999")
    code, out, err = run_main(["preview", built.archive, "-o", out_png, "--split", "test"], capsys)
    assert code == 1 and out == ""
    _one_error_line(err, "'test'")
    assert not out_png.exists()
