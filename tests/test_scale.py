"""Scale and survive: Dask backend, shards, --resume after SIGKILL, Ctrl-C, unreadable images
(--on_error), full disk and unwritable output, the transform on any image, many workers.

Trees come from ``helpers.write_tree`` (through ``_write_tree``): ``train/<wnid>/``
and ``val/<wnid>/`` folders (no label files, so ids follow the sorted listing),
photo-like JPEGs of varied sizes, every image different.
"""
import errno
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import packer
from helpers import (COARSE, PYTHON, REPO, Images, assert_one_error_line, count_packed_chunks, files_in, photo,
                     reference_transform, run_main, save_image, sha256, stop_after_journal_records, subprocess_env,
                     write_list, write_tree)
from packer import BuildOptions, UserError
from packer.loading import ShardedArray
from packer.transform import TransformSpec, transform_image
from packer.checking import verify

pytestmark = pytest.mark.slow  # full builds: skipped by pytest -m "not slow"

KEYS = ["X_train", "y_train", "train_id", "X_val", "y_val", "val_id"]
SIZES = [(40, 30), (30, 44), (36, 36), (64, 48), (50, 90), (33, 47), (120, 80), (32, 32)]
SMALL = {"resize_size": 32, "crop_size": 24}


# --------------------------------------------------------------------------- builder

def _write_tree(root: Path, train: dict, val: dict, sizes=SIZES, quality=90) -> Path:
    """``train[wnid]`` / ``val[wnid]`` images per class (val numbered 1, 2, ... in that order), image k
    (from 1, train then val) a photo of seed k; returns the data_dir (also writes root/list.txt)."""
    labels = dict(enumerate((wnid for wnid, count in val.items() for _ in range(count)), start=1))
    images = Images(sizes=tuple(sizes), photo=COARSE, quality=quality, first=1)
    tree = write_tree(root / "data", counts=train, val=labels, kaggle=False, sorted_val=True, images=images)
    write_list(root / "list.txt", train)
    return tree.data_dir


A, B, C = "n01440764", "n01443537", "n01491361"
TRAIN = {A: 30, B: 25, C: 20}  # 75 train rows: chunks of 32, 32, 11
VAL = {A: 12, B: 10, C: 8}     # 30 val rows


@pytest.fixture(scope="module")
def small(module_tmp_path_factory):
    root = module_tmp_path_factory.mktemp("small")
    return root, _write_tree(root, TRAIN, VAL)


def _build(class_list, data_dir, out, **options):
    options = {"workers": 1, "progress": False, **SMALL, **options}
    return packer.build(BuildOptions(subset_name=str(class_list), data_dir=str(data_dir), out_dir=str(out), **options))


def _arrays(path) -> dict:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def good(small, module_tmp_path_factory):
    """The stored, unsharded build of the small tree: result and arrays."""
    root, data_dir = small
    result = _build(root / "list.txt", data_dir, module_tmp_path_factory.mktemp("good"))
    return result, _arrays(result.archive)


def _snapshot(folder: Path) -> dict:
    return {name: (folder / name).read_bytes() for name in files_in(folder) if (folder / name).is_file()}


# --------------------------------------------------------------------------- 1. Dask

@pytest.fixture(scope="module")
def cluster(module_tmp_path_factory):
    distributed = pytest.importorskip("distributed")
    import dask

    # the scheduler's and workers' dask-scratch-space (lock files) in a folder removed with the module
    scratch = module_tmp_path_factory.mktemp("dask")
    with dask.config.set({"temporary-directory": str(scratch)}), \
            distributed.LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None,
                                     silence_logs=40, local_directory=str(scratch)) as local:
        yield local


@pytest.mark.parametrize("compress", [False, True])
def test_dask_backend_gives_the_local_bytes(small, good, cluster, tmp_path, compress):
    root, data_dir = small
    local = good[0] if not compress else _build(root / "list.txt", data_dir, tmp_path / "local", compress=True)
    result = _build(root / "list.txt", data_dir, tmp_path / "dask", backend="dask",
                    scheduler=cluster.scheduler_address, compress=compress, workers=2)
    assert result.sha256 == local.sha256 == sha256(result.archive)
    assert Path(result.archive).read_bytes() == Path(local.archive).read_bytes()
    manifest = json.loads(result.manifest.read_text())
    assert manifest["build"]["backend"] == "dask"
    assert verify(result.archive) == []


def test_dask_sharded_with_skip(small, good, cluster, tmp_path):
    root, data_dir = small
    tree = tmp_path / "tree"
    shutil.copytree(data_dir, tree)
    (tree / "train" / A / f"{A}_7.JPEG").write_bytes(b"")
    local = _build(root / "list.txt", tree, tmp_path / "local", shard_size=20, on_error="skip")
    result = _build(root / "list.txt", tree, tmp_path / "dask", shard_size=20, on_error="skip", backend="dask",
                    scheduler=cluster.scheduler_address, workers=2)
    assert [p.read_bytes() for p in result.archives] == [p.read_bytes() for p in local.archives]
    assert verify(result.archive) == []


def test_dask_backend_without_scheduler_is_one_line(small, tmp_path, capsys):
    root, data_dir = small
    code, _, err = run_main(["--subset_name", root / "list.txt", "--data_dir", data_dir, "--out_dir", tmp_path / "o",
                             "--backend", "dask"], capsys)
    assert code == 1
    assert_one_error_line(err, "--backend dask", "--scheduler")
    assert not (tmp_path / "o").exists()


def test_unreachable_scheduler_is_one_line_naming_it(small, tmp_path, capsys):
    dask = pytest.importorskip("dask")
    root, data_dir = small
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        code, _, err = run_main(["--subset_name", root / "list.txt", "--data_dir", data_dir, "--out_dir",
                                 tmp_path / "o", "--backend", "dask", "--scheduler", "tcp://127.0.0.1:9", "--quiet",
                                 "--resize_size", "32", "--crop_size", "24"], capsys)
    assert code == 1
    line = assert_one_error_line(err, "tcp://127.0.0.1:9")
    assert files_in(tmp_path / "o") == []
    assert "free space" not in line and "scheduler" in line


# --------------------------------------------------------------------------- 2. shards

def _check_shards(result, out: Path, shard_size: int, good_arrays: dict, name="list"):
    counts = {"train": len(good_arrays["y_train"]), "val": len(good_arrays["y_val"])}
    k = -(-max(counts.values()) // shard_size)
    names = [f"{name}_cls-{i:05d}-of-{k:05d}.npz" for i in range(k)]
    assert files_in(out) == sorted(names + [f"{name}_cls.index.json", f"{name}_cls.manifest.json",
                                              f"{name}_cls_metadata.csv"])
    assert Path(result.archive) == out / f"{name}_cls.index.json"
    assert [p.name for p in result.archives] == names
    index = json.loads((out / f"{name}_cls.index.json").read_text())
    assert [s["file"] for s in index["shards"]] == names
    for i, file_name in enumerate(names):
        shard = _arrays(out / file_name)
        assert list(shard) == KEYS
        for split, total in counts.items():
            start, end = min(i * shard_size, total), min((i + 1) * shard_size, total)
            assert len(shard[f"X_{split}"]) == end - start <= shard_size
            np.testing.assert_array_equal(shard[f"X_{split}"], good_arrays[f"X_{split}"][start:end])
            np.testing.assert_array_equal(shard[f"{split}_id"], good_arrays[f"{split}_id"][start:end])
            assert index["shards"][i]["rows"][split] == [start, end]
    return index


@pytest.mark.parametrize("compress", [False, True])
def test_shards_load_as_the_unsharded_build(small, good, tmp_path, compress):
    root, data_dir = small
    out = tmp_path / "out"
    result = _build(root / "list.txt", data_dir, out, shard_size=20, compress=compress)
    _check_shards(result, out, 20, good[1])
    data = packer.load(result.archive)
    assert list(data.keys()) == KEYS
    for key in KEYS:
        np.testing.assert_array_equal(np.asarray(data[key]), good[1][key])
    assert data.classes["WNID"].tolist() == [A, B, C]
    assert verify(result.archive) == []


def test_sharded_array_indexing(small, good, tmp_path):
    root, data_dir = small
    result = _build(root / "list.txt", data_dir, tmp_path / "out", shard_size=20)
    X, expected = packer.load(result.archive).X_train, good[1]["X_train"]
    assert isinstance(X, ShardedArray)
    assert len(X) == 75 and X.shape == (75, 24, 24, 3) and X.dtype == np.uint8
    for i in (0, 19, 20, 39, 40, 74, -1, -21, np.int64(33)):
        np.testing.assert_array_equal(X[i], expected[i])
    for index in (slice(None), slice(5, 47), slice(18, 22), slice(None, None, 7), slice(70, 5, -9), slice(80, 90),
                  [3, 50, 0, 74, 50], np.array([-1, 20, 19]), np.arange(75) % 3 == 0, []):
        np.testing.assert_array_equal(X[index], expected[index], err_msg=repr(index))
    np.testing.assert_array_equal(X[10:30, 2:5], expected[10:30, 2:5])
    with pytest.raises(IndexError):
        X[75]
    # val has 30 rows: shards 2 and 3 hold none of them
    V = packer.load(result.archive).X_val
    np.testing.assert_array_equal(V[[29, 0, 20, 19]], good[1]["X_val"][[29, 0, 20, 19]])


def test_each_shard_verifies_alone_and_holdout_is_sharded_too(small, tmp_path):
    root, data_dir = small
    unsharded = _build(root / "list.txt", data_dir, tmp_path / "one", holdout_per_class=4, train_per_class=15, seed=1)
    result = _build(root / "list.txt", data_dir, tmp_path / "out", holdout_per_class=4, train_per_class=15, seed=1,
                    shard_size=16)
    expected = _arrays(unsharded.archive)
    assert list(expected) == KEYS + ["X_holdout", "y_holdout", "holdout_id"]
    assert {k: len(expected[f"y_{k}"]) for k in ("train", "val", "holdout")} == {"train": 45, "val": 30, "holdout": 12}
    assert [p.name for p in result.archives] == [f"list_cls-{i:05d}-of-00003.npz" for i in range(3)]
    data = packer.load(result.archive)
    for key in expected:
        np.testing.assert_array_equal(np.asarray(data[key]), expected[key], err_msg=key)
    for shard in result.archives:
        assert verify(shard) == []
        assert all(len(v) <= 16 for k, v in _arrays(shard).items() if k.startswith("y_"))
    assert verify(result.archive) == []


def test_shard_size_larger_than_the_splits_still_writes_an_index(small, good, tmp_path):
    root, data_dir = small
    out = tmp_path / "out"
    result = _build(root / "list.txt", data_dir, out, shard_size=100)
    assert files_in(out) == ["list_cls-00000-of-00001.npz", "list_cls.index.json", "list_cls.manifest.json",
                               "list_cls_metadata.csv"]
    assert Path(result.archive) == out / "list_cls.index.json"
    data = packer.load(out / "list_cls.index.json")
    np.testing.assert_array_equal(np.asarray(data.X_train), good[1]["X_train"])


def test_sharded_array_integer_tuple_index(small, good, tmp_path):
    root, data_dir = small
    result = _build(root / "list.txt", data_dir, tmp_path / "out", shard_size=20)
    X, expected = packer.load(result.archive).X_train, good[1]["X_train"]
    np.testing.assert_array_equal(X[33, 5], expected[33, 5])
    np.testing.assert_array_equal(X[33, 5, 7], expected[33, 5, 7])


def test_a_flipped_byte_in_one_shard_fails_verify_naming_it(small, tmp_path, capsys):
    from packer.loading import array_headers

    root, data_dir = small
    out = tmp_path / "out"
    result = _build(root / "list.txt", data_dir, out, shard_size=20)
    code, stdout, _ = run_main(["verify", result.archive], capsys)
    assert code == 0 and "OK" in stdout
    shard = result.archives[2]  # train rows 40..59
    header = array_headers(shard)["X_train"]
    row_bytes = 24 * 24 * 3
    offset = header.data_offset + 5 * row_bytes + 100  # row 45 of X_train
    with open(shard, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))
    problems = verify(result.archive)
    assert problems, "a damaged shard passed verify"
    assert any(str(shard) in p and "SHA-256 differs" in p for p in problems)
    for other in result.archives[:2] + result.archives[3:]:
        assert not any(str(other) in p for p in problems)
    manifest = json.loads(result.manifest.read_text())
    assert any(f"X_train row 45 ({manifest['sources']['train']['paths'][45]})" in p for p in problems)
    code, stdout, _ = run_main(["verify", result.archive], capsys)
    assert code == 1 and str(shard) in stdout


# --------------------------------------------------------------------------- 3. resume and Ctrl-C

BIG = {f"n0200000{i}": 150 for i in range(1, 5)}  # 600 train images of 1600 x 1200: several seconds at default sizes


@pytest.fixture(scope="module")
def big(module_tmp_path_factory):
    root = module_tmp_path_factory.mktemp("big")
    data_dir = _write_tree(root, BIG, {"n02000001": 4, "n02000003": 3}, sizes=[(300, 225), (225, 300), (256, 256)])
    # large photos make the build last long enough to be interrupted: hard links to three of them
    large = []
    for k, size in enumerate([(1600, 1200), (1200, 1600), (1400, 1400)]):
        large.append(root / f"large{k}.JPEG")
        save_image(large[-1], photo(*size, seed=1000 + k, **COARSE), quality=90)
    for k, path in enumerate(sorted((data_dir / "train").rglob("*.JPEG"))):
        path.unlink()
        os.link(large[k % 3], path)
    return root, data_dir


def _cli(root, data_dir, out, *extra):
    return [PYTHON, "main.py", "--subset_name", str(root / "list.txt"), "--data_dir", str(data_dir),
            "--out_dir", str(out), "--workers", "2", "--quiet", *extra]


def _start_and_wait_for_journal(argv, work: Path, out: Path):
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=subprocess_env(),
                            start_new_session=True)
    journal = work / "journal.jsonl"
    started = time.monotonic()
    try:
        while not (journal.is_file() and "\n" in journal.read_text()):
            if proc.poll() is not None:
                raise AssertionError(f"the build ended before it could be interrupted: {proc.stderr.read()!r}")
            assert time.monotonic() - started < 120, "no journal line after 120 s"
            time.sleep(0.02)
        assert not (out / "list_cls.npz").exists(), "the build finished before it could be interrupted"
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    return proc


@pytest.mark.parametrize("compress", [False, True])
def test_resume_after_sigkill_gives_the_uninterrupted_bytes(big, tmp_path, compress):
    root, data_dir = big
    extra = ["--compress"] if compress else []
    reference = _build(root / "list.txt", data_dir, tmp_path / "reference", resize_size=256, crop_size=224,
                       compress=compress, workers=2)
    out = tmp_path / "out"
    work = out / ".list_cls.work"
    proc = _start_and_wait_for_journal(_cli(root, data_dir, out, "--resume", *extra), work, out)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole session: the build and its workers
    proc.wait(timeout=30)
    proc.stdout.close()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert work.is_dir() and (work / "journal.jsonl").read_text().count("\n") >= 1
    assert files_in(out) == [".list_cls.work"]
    rerun = subprocess.run(_cli(root, data_dir, out, "--resume", *extra), cwd=REPO, capture_output=True, text=True,
                           timeout=300, env=subprocess_env())
    assert rerun.returncode == 0, rerun.stderr
    assert files_in(out) == ["list_cls.manifest.json", "list_cls.npz", "list_cls_metadata.csv"]
    assert sha256(out / "list_cls.npz") == reference.sha256 == sha256(reference.archive)
    manifest = json.loads((out / "list_cls.manifest.json").read_text())
    assert manifest["build"]["resumed"] is True
    assert manifest["files"]["archive"]["sha256"] == reference.sha256
    assert (out / "list_cls_metadata.csv").read_bytes() == reference.metadata.read_bytes()
    assert verify(out / "list_cls.npz") == []


@pytest.mark.parametrize("options, chunks", [({}, 4), ({"compress": True}, 4), ({"shard_size": 20}, 6),
                                             ({"shard_size": 20, "compress": True}, 6)])
def test_resume_redoes_only_unfinished_chunks(small, tmp_path, monkeypatch, options, chunks):
    """In-process: stop after 2 journaled chunks; the resumed run packs only the others, bytes as uninterrupted
    (with an unreadable image left out, so the journal's record of it is used too)."""
    root, data_dir = small
    tree = tmp_path / "tree"
    shutil.copytree(data_dir, tree)
    (tree / "train" / A / f"{A}_12.JPEG").write_text("not a picture")  # train row 4, in the first chunk
    options = {**options, "on_error": "skip"}
    reference = _build(root / "list.txt", tree, tmp_path / "reference", **options)
    out = tmp_path / "out"
    restore = stop_after_journal_records(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        _build(root / "list.txt", tree, out, resume=True, **options)
    restore()
    assert files_in(out) == [".list_cls.work"]
    assert (out / ".list_cls.work" / "journal.jsonl").read_text().count("\n") == 2
    packed = count_packed_chunks(monkeypatch)
    result = _build(root / "list.txt", tree, out, resume=True, **options)
    assert len(packed) == chunks - 2
    assert [p.name for p in result.archives] == [p.name for p in reference.archives]
    assert [p.read_bytes() for p in result.archives] == [p.read_bytes() for p in reference.archives]
    manifest = json.loads(result.manifest.read_text())
    assert manifest["build"]["resumed"] is True
    assert manifest["skipped"] == json.loads(reference.manifest.read_text())["skipped"] != []
    assert result.metadata.read_bytes() == reference.metadata.read_bytes()
    assert ".list_cls.work" not in files_in(out)
    assert verify(result.archive) == []


def test_resume_of_a_different_build_starts_afresh(small, tmp_path, monkeypatch):
    root, data_dir = small
    out = tmp_path / "out"
    restore = stop_after_journal_records(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        _build(root / "list.txt", data_dir, out, resume=True)
    restore()
    packed = count_packed_chunks(monkeypatch)
    result = _build(root / "list.txt", data_dir, out, resume=True, crop_size=20)  # other options: other bytes
    assert len(packed) == 4
    assert json.loads(result.manifest.read_text())["build"]["resumed"] is False
    fresh = _build(root / "list.txt", data_dir, tmp_path / "fresh", crop_size=20)
    assert result.sha256 == fresh.sha256


def test_resume_says_what_it_does(small, tmp_path, monkeypatch, caplog):
    """Each kind of start gets its own line: nothing to resume (and why), resuming, or an interrupted
    run of the same build discarded by a run without --resume."""
    root, data_dir = small
    out = tmp_path / "out"
    work = out / ".list_cls.work"

    def run(class_list=root / "list.txt", interrupt=False, **options) -> list[str]:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="packer"):
            if interrupt:
                restore = stop_after_journal_records(monkeypatch, 2)
                with pytest.raises(KeyboardInterrupt):
                    _build(class_list, data_dir, out, resume=True, **options)
                restore()
                assert work.is_dir()
            else:
                _build(class_list, data_dir, out, **options)
        return caplog.messages

    afresh = " — starting afresh"
    assert run(resume=True) == [f"nothing to resume (no interrupted run of this build in {work}){afresh}"]
    assert run(interrupt=True) == [f"nothing to resume (no interrupted run of this build in {work}){afresh}"]
    assert run(resume=True, crop_size=20, seed=3) == [f"nothing to resume (options changed: crop_size 24 -> 20, "
                                                      f"seed 0 -> 3){afresh}"]
    run(interrupt=True)
    other = tmp_path / "other" / "list.txt"  # the same name and options, other classes
    other.parent.mkdir()
    other.write_text((root / "list.txt").read_text().splitlines()[0] + "\n")
    assert run(other, resume=True) == [f"nothing to resume (the classes or images changed){afresh}"]
    run(interrupt=True)
    assert run() == ["a previous run of this build was interrupted; add --resume to continue it (starting afresh)"]
    run(interrupt=True)
    assert run(resume=True) == ["resuming: 2 of 4 chunks already done"]
    assert not work.exists()


def test_ctrl_c_without_resume_removes_the_work_folder(big, tmp_path):
    root, data_dir = big
    out = tmp_path / "out"
    work = out / ".list_cls.work"
    proc = _start_and_wait_for_journal(_cli(root, data_dir, out), work, out)
    try:
        os.kill(proc.pid, signal.SIGINT)  # the build process only
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    err = err.decode()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert err.rstrip().split("\n")[-1].startswith("imagenet-subset: interrupted")
    assert files_in(out) == []


# --------------------------------------------------------------------------- 4. unreadable images

def _truncate(path: Path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def _empty(path: Path):
    path.write_bytes(b"")


def _text(path: Path):
    path.write_text("this is not a picture\n")


def _unreadable(path: Path):
    path.chmod(0)
    if os.access(path, os.R_OK):
        pytest.skip("running as root: chmod 000 does not make a file unreadable")


# (how, split, row): rows inside chunks, on both splits
CASES = {"truncated": (_truncate, "train", 40), "empty": (_empty, "val", 5), "text": (_text, "train", 74),
         "unreadable": (_unreadable, "train", 0)}
REASON_TEXT = {"truncated": "truncated", "empty": "cannot identify image file 'ILSVRC2012_val_00000006.JPEG'",
               # train row 74 is the last of C in sorted order: _1, _10, ..., _19, _2, _20, _3, ..., _9
               "text": f"cannot identify image file '{C}_9.JPEG'", "unreadable": "Permission denied"}


def _corrupt_copy(small, tmp_path, case):
    """A copy of the small tree with one image damaged; (data_dir, split, row, relative path, absolute path, reason)."""
    how, split, row = CASES[case]
    _, data_dir = small
    tree = tmp_path / "tree"
    shutil.copytree(data_dir, tree)
    folder = tree / split
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.JPEG"))
    if split == "val":
        files.sort(key=lambda rel: rel.split("/")[1])  # image-number order
    rel = files[row]
    path = folder / rel
    how(path)
    try:
        with Image.open(path) as image:
            image.load()
    except Exception as exc:  # the reason, written out independently: Pillow's message, path shortened
        reason = str(exc).replace(str(path), path.name)
    else:
        raise AssertionError(f"{path} still decodes")
    return tree, split, row, rel, path, reason


@pytest.mark.parametrize("case, workers", [(case, 1) for case in CASES] + [("truncated", 2)])
def test_on_error_fail_is_one_line_and_writes_nothing(small, tmp_path, capsys, case, workers):
    root, _ = small
    tree, split, row, rel, path, reason = _corrupt_copy(small, tmp_path, case)
    out = tmp_path / "out"
    code, stdout, err = run_main(["--subset_name", root / "list.txt", "--data_dir", tree, "--out_dir", out,
                                  "--workers", workers, "--quiet", "--resize_size", "32", "--crop_size", "24",
                                  "--on_error", "fail"], capsys)
    assert code == 1
    assert_one_error_line(err, f"cannot read image {path}: {reason}")
    assert REASON_TEXT[case].lower() in reason.lower()
    assert stdout == ""
    assert files_in(out) == []


def _good_minus(good_arrays, split, row):
    expected = dict(good_arrays)
    for key in (f"X_{split}", f"y_{split}", f"{split}_id"):
        expected[key] = np.delete(good_arrays[key], row, axis=0)
    return expected


@pytest.mark.parametrize("mode", ["stored", "compress", "sharded", "sharded-compress"])
@pytest.mark.parametrize("case", list(CASES))
def test_on_error_skip_leaves_the_image_out(small, good, tmp_path, case, mode):
    root, _ = small
    tree, split, row, rel, path, reason = _corrupt_copy(small, tmp_path, case)
    out = tmp_path / "out"
    shard_size = 20 if mode.startswith("sharded") else None
    result = _build(root / "list.txt", tree, out, on_error="skip", compress=mode.endswith("compress"),
                    shard_size=shard_size, workers=2 if case == "text" else 1)
    expected = _good_minus(good[1], split, row)
    data = packer.load(result.archive)
    for key in KEYS:
        np.testing.assert_array_equal(np.asarray(data[key]), expected[key], err_msg=key)
    assert result.counts == {s: len(expected[f"y_{s}"]) for s in ("train", "val")}
    manifest = json.loads(result.manifest.read_text())
    assert manifest["skipped"] == [{"split": split, "path": rel, "reason": reason}]
    assert manifest["splits"][split]["images"] == len(expected[f"y_{split}"])
    assert rel not in manifest["sources"][split]["paths"]
    notes = [n for n in result.notes if "unreadable" in n]
    assert len(notes) == 1 and f"{rel} ({reason})" in notes[0] and "left out 1 " in notes[0]
    if shard_size:
        _check_shards(result, out, shard_size, expected)
    else:
        assert files_in(out) == ["list_cls.manifest.json", "list_cls.npz", "list_cls_metadata.csv"]
    assert verify(result.archive) == []
    # the statistics ignore the left-out row
    x = expected["X_train"].reshape(-1, 3)
    assert manifest["X_train_stats"]["mean"] == [round(float(v), 4) for v in x.sum(axis=0, dtype=np.uint64) / len(x)]


def test_on_error_skip_note_on_the_command_line(small, tmp_path, capsys):
    root, _ = small
    tree, split, row, rel, path, reason = _corrupt_copy(small, tmp_path, "text")
    code, stdout, err = run_main(["--subset_name", root / "list.txt", "--data_dir", tree, "--out_dir",
                                  tmp_path / "out", "--workers", "1", "--quiet", "--resize_size", "32",
                                  "--crop_size", "24", "--on_error", "skip"], capsys)
    assert code == 0, err
    notes = [line for line in err.splitlines() if "unreadable" in line]
    assert len(notes) == 1 and notes[0].startswith("imagenet-subset: note: left out 1 ") and rel in notes[0]
    assert "74 train" in stdout


# --------------------------------------------------------------------------- 5. full disk, unwritable output

def _limited_run(argv, limit: int):
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (%d, %d)); "
            "from packer.cli import main; sys.exit(main(%r))" % (limit, limit, [str(a) for a in argv]))
    return subprocess.run([PYTHON, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=subprocess_env())


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("compress", [False, True])
def test_full_disk_is_one_line_and_keeps_the_earlier_output(small, tmp_path, compress, workers):
    root, data_dir = small
    out = tmp_path / "out"
    earlier = _build(root / "list.txt", data_dir, out, resize_size=256, crop_size=224, compress=compress)
    before = _snapshot(out)
    assert set(before) == {"list_cls.npz", "list_cls_metadata.csv", "list_cls.manifest.json"}
    size = earlier.archive_bytes
    limit = size - 3_000_000
    assert limit > 1_000_000, size
    proc = _limited_run(["--subset_name", root / "list.txt", "--data_dir", data_dir, "--out_dir", out,
                         "--workers", workers, "--quiet"] + (["--compress"] if compress else []), limit)
    assert proc.returncode == 1, proc.stderr
    assert_one_error_line(proc.stderr, str(out), os.strerror(errno.EFBIG))
    assert _snapshot(out) == before  # byte for byte, and no partial file or work folder
    assert files_in(out) == sorted(before)


def test_too_little_free_space_is_refused(small, tmp_path, monkeypatch):
    import packer.execute

    root, data_dir = small
    Usage = namedtuple("Usage", "total used free")
    asked = []

    def disk_usage(path):
        asked.append(Path(path))
        return Usage(10**12, 10**12 - 3_240_000_000, 3_240_000_000)

    monkeypatch.setattr(packer.execute.shutil, "disk_usage", disk_usage)
    out = tmp_path / "out"
    # 105 rows of 20000 x 20000 x 3 bytes: 126 GB (refused before any image is decoded)
    with pytest.raises(UserError) as info:
        _build(root / "list.txt", data_dir, out, resize_size=20000, crop_size=20000)
    message = str(info.value)
    assert "3.2 GB free" in message and "needs 126.0 GB" in message and str(out) in message
    assert "--compress" in message and "\n" not in message
    assert asked == [out]
    assert files_in(out) == []
    # enough space: the same check lets a build through
    monkeypatch.setattr(packer.execute.shutil, "disk_usage", lambda path: Usage(10**12, 0, 10**12))
    assert _build(root / "list.txt", data_dir, out).counts == {"train": 75, "val": 30}


# --------------------------------------------------------------------------- 6. the transform, property-based

MODES = ["RGB", "L", "CMYK", "RGBA", "P", "LA", "I;16"]
FORMATS = {"RGB": ["JPEG", "PNG"], "L": ["JPEG", "PNG"], "CMYK": ["JPEG"]}  # the rest: PNG only
BYTES_PER_PIXEL = {"RGB": 3, "L": 1, "CMYK": 4, "RGBA": 4, "P": 1, "LA": 2, "I;16": 2}


@pytest.fixture(scope="module")
def scratch(module_tmp_path_factory):
    return module_tmp_path_factory.mktemp("hypothesis")


@st.composite
def images(draw):
    mode = draw(st.sampled_from(MODES))
    fmt = draw(st.sampled_from(FORMATS.get(mode, ["PNG"])))
    width, height = draw(st.integers(1, 600)), draw(st.integers(1, 600))
    seed = draw(st.integers(0, 2**32 - 1))
    resize = draw(st.integers(1, 64))
    crop = draw(st.integers(1, resize))
    return mode, fmt, width, height, seed, resize, crop


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=images())
def test_transform_image_matches_the_rule_for_any_image(scratch, case):
    mode, fmt, width, height, seed, resize, crop = case
    rng = np.random.default_rng(seed)
    image = Image.frombytes(mode, (width, height),
                            rng.integers(0, 256, width * height * BYTES_PER_PIXEL[mode], dtype=np.uint8).tobytes())
    if mode == "P":
        image.putpalette(rng.integers(0, 256, 768, dtype=np.uint8).tobytes())
    path = scratch / f"image.{fmt.lower()}"
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    path.write_bytes(buffer.getvalue())
    out = transform_image(str(path), TransformSpec(resize, crop))
    assert out.shape == (crop, crop, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, reference_transform(path, resize, crop))


# --------------------------------------------------------------------------- 7. more workers than cores

@pytest.fixture(scope="module")
def many(module_tmp_path_factory):
    root = module_tmp_path_factory.mktemp("many")
    return root, _write_tree(root, {f"n0300000{i}": 500 for i in range(1, 5)}, {"n03000002": 20, "n03000004": 20},
                             sizes=[(40, 30)], quality=75)


def test_more_workers_than_cores_gives_the_same_bytes(many, tmp_path):
    root, data_dir = many
    one = _build(root / "list.txt", data_dir, tmp_path / "one", resize_size=20, crop_size=16, workers=1)
    five = _build(root / "list.txt", data_dir, tmp_path / "five", resize_size=20, crop_size=16, workers=5)
    assert one.counts == {"train": 2000, "val": 40}
    assert one.sha256 == five.sha256 == sha256(five.archive)
    assert json.loads(five.manifest.read_text())["build"]["workers"] == 5


def test_a_build_from_a_process_running_threads_uses_a_fork_server(small, good, tmp_path):
    """A notebook or a Dask client runs threads: the workers are then not forked from it."""
    from packer.work import _pool_context

    root, data_dir = small
    release = threading.Event()
    bystander = threading.Thread(target=release.wait, daemon=True)
    bystander.start()
    try:
        assert _pool_context().get_start_method() == "forkserver"
        threaded = _build(root / "list.txt", data_dir, tmp_path / "threaded", workers=2)
    finally:
        release.set()
        bystander.join()
    assert threaded.sha256 == good[0].sha256
