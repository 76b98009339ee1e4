"""Hardening: options beside --recipe, memory, Pillow's warnings, worker caps, the demo's words, plain
progress lines in logs, --version, --out_dir clean-up, and hashing after Dask workers wrote the archive.

The trees come from helpers.kaggle_tree: four classes of small uniform images, three of them listed.
"""
import io
import json
import logging
import os
import re
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import packer
import packer.execute
import packer.work
from helpers import (PYTHON, REPO, SUBSET, A, assert_one_error_line, build, files_in, kaggle_tree, read_npz, run_main,
                     sha256, subprocess_env, write_list)
from packer import UserError
from packer.npz import ArraySpec, StoredNpzWriter
from packer.options import TransformSpec
from packer.progress import Progress

pytestmark = pytest.mark.slow  # full builds: skipped by pytest -m "not slow"

SMALL = ["--resize_size", "32", "--crop_size", "24", "--quiet"]


@pytest.fixture(scope="module")
def tree(module_tmp_path_factory):
    root = module_tmp_path_factory.mktemp("hardening")
    tree = kaggle_tree(root / "kaggle")
    write_list(root / "mine.txt", SUBSET)
    return tree


@pytest.fixture(scope="module")
def recipe(tree, module_tmp_path_factory):
    out = module_tmp_path_factory.mktemp("recipe")
    result = build(tree.root.parent / "mine.txt", tree.data_dir, out, resize_size=32, crop_size=24)
    return result


def _argv(tree, out, *extra):
    return ["--subset_name", tree.root.parent / "mine.txt", "--data_dir", tree.data_dir, "--out_dir", out, *extra]


# --------------------------------------------------------------------------- 2. options beside --recipe

@pytest.mark.parametrize("extra, named", [
    (["--crop_size", "64"], "--crop_size"),
    (["--crop_size", "24"], "--crop_size"),  # the recipe's own value, given explicitly: still refused
    (["--train_per_class", "3", "--seed", "7"], "--train_per_class, --seed"),
    (["--compress"], "--compress"),
    (["--subset_name", "imagenet30"], "--subset_name"),
    (["--layout", "nchw", "--shard_size", "5", "--on_error", "skip"], "--layout, --on_error, --shard_size"),
])
def test_options_that_shape_the_archive_are_refused_beside_a_recipe(recipe, tree, tmp_path, capsys, extra, named):
    out = tmp_path / "out"
    code, stdout, err = run_main(["build", "--recipe", recipe.manifest, "--data_dir", tree.data_dir,
                                  "--out_dir", out, *extra], capsys)
    assert code == 1
    line = assert_one_error_line(err)
    assert line == (f"imagenet-subset: error: {named}: the recipe {recipe.manifest} fixes the options that shape "
                    "the archive; drop them (beside --recipe give only --data_dir, --devkit_dir, --out_dir, "
                    "--index_dir, --workers, --quiet, --urls, --download_dir, --connections, --per_host, --timeout, "
                    "--max_bytes, --min_size, --reject_sha256, --resume, --backend, --scheduler)")
    assert not out.exists()


def test_options_that_do_not_shape_the_archive_are_taken_beside_a_recipe(recipe, tree, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = run_main(["build", "--recipe", recipe.manifest, "--data_dir", tree.data_dir, "--out_dir", out,
                                  "--workers", "2", "--quiet", "--resume"], capsys)
    assert code == 0, err
    assert "archive identical to the recipe" in stdout
    assert sha256(out / "mine_cls.npz") == recipe.sha256


# --------------------------------------------------------------------------- 3. memory

def test_a_crop_too_big_for_memory_is_refused_before_anything_is_written(tree, tmp_path, capsys):
    out = tmp_path / "new" / "out"
    code, _, err = run_main(_argv(tree, out, "--resize_size", "20000", "--crop_size", "20000", "--compress",
                                  "--quiet"), capsys)
    assert code == 1
    line = assert_one_error_line(err)
    assert re.fullmatch(r"imagenet-subset: error: --resize_size 20000 --crop_size 20000 needs about 156\.1 GB of "
                        r"memory per worker, but only [\d.]+ GB is available; use a smaller --crop_size or free "
                        r"memory", line), line
    assert not (tmp_path / "new").exists()  # the folders it would have created are gone again


def test_a_crop_too_big_for_ulimit_v_is_refused(tree, tmp_path):
    """Under ``ulimit -v`` (2 GiB of address space), 3000 x 3000 crops need more than a worker may map."""
    limit = "import resource; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30)); "
    code = limit + "import sys, packer.cli; sys.exit(packer.cli.main(sys.argv[1:]))"
    argv = [str(a) for a in _argv(tree, tmp_path / "out", "--resize_size", "3000", "--crop_size", "3000",
                                  "--compress", "--quiet")]
    done = subprocess.run([PYTHON, "-c", code, *argv], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=subprocess_env())
    assert done.returncode == 1, done.stderr
    line = assert_one_error_line(done.stderr)
    assert re.fullmatch(r"imagenet-subset: error: --resize_size 3000 --crop_size 3000 needs about 3\.6 GB of memory "
                        r"per worker, but a process may map only [\d.]+ [MG]B more \(ulimit -v\); use a smaller "
                        r"--crop_size or raise the limit", line), line
    assert not (tmp_path / "out").exists()


def _out_of_memory_on(monkeypatch, name: str) -> None:
    """Decoding the image called ``name`` raises MemoryError (forked workers inherit this)."""
    original = packer.work.open_rgb

    def decode(image, image_name):
        if os.path.basename(image_name) == name:
            raise MemoryError
        return original(image, image_name)

    monkeypatch.setattr(packer.work, "open_rgb", decode)


@pytest.mark.parametrize("workers", [1, 2])
def test_memory_error_in_a_worker_is_one_line_naming_the_image(tree, tmp_path, monkeypatch, capsys, workers):
    victim = tree.train_dir / SUBSET[0] / f"{SUBSET[0]}_2.JPEG"
    _out_of_memory_on(monkeypatch, victim.name)
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine_cls.npz").write_bytes(b"earlier")
    code, _, err = run_main(_argv(tree, out, "--workers", workers, *SMALL), capsys)
    assert code == 1
    assert assert_one_error_line(err) == (
        f"imagenet-subset: error: out of memory while packing {victim} (a worker holds 32 images of 24x24 at a "
        "time); use fewer --workers or a smaller --crop_size, or free memory")
    assert files_in(out) == ["mine_cls.npz"] and (out / "mine_cls.npz").read_bytes() == b"earlier"


def test_default_workers_are_reduced_to_what_memory_holds(tree, tmp_path, monkeypatch, caplog):
    need = packer.work.memory_per_worker((TransformSpec(32, 24),))
    monkeypatch.setattr(packer.execute, "available_memory", lambda: (int(need * 1.5), None))
    monkeypatch.setattr(packer.execute, "default_workers", lambda: 2)
    with caplog.at_level(logging.INFO, logger="packer"):
        result = build(tree.root.parent / "mine.txt", tree.data_dir, tmp_path / "out", resize_size=32, crop_size=24,
                       workers=None)
    assert json.loads(result.manifest.read_text())["build"]["workers"] == 1
    assert caplog.messages == [f"note: running 1 workers instead of 2: each needs about {need / 1e6:.1f} MB of "
                               f"memory and {int(need * 1.5) / 1e6:.1f} MB is available"]
    with pytest.raises(UserError, match=re.escape(
            f"--workers 2 would need about {2 * need / 1e6:.1f} MB of memory ({need / 1e6:.1f} MB each) but only "
            f"{int(need * 1.5) / 1e6:.1f} MB is available; use --workers 1 or fewer")):
        build(tree.root.parent / "mine.txt", tree.data_dir, tmp_path / "out2", resize_size=32, crop_size=24,
              workers=2)


# --------------------------------------------------------------------------- 4. Pillow's warnings

@pytest.mark.parametrize("workers", [1, 2])
def test_decompression_bomb_warning_is_a_note_naming_the_image(tree, tmp_path, monkeypatch, capfd, workers):
    """Every image but the 40x40 ones (1,600 pixels) is above a limit of 1,600, and below twice that."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1600)
    result = build(tree.root.parent / "mine.txt", tree.data_dir, tmp_path / "out", resize_size=32, crop_size=24,
                   workers=workers)
    reference = build(tree.root.parent / "mine.txt", tree.data_dir, tmp_path / "reference", resize_size=32,
                      crop_size=24, workers=workers)
    monkeypatch.undo()
    assert sha256(result.archive) == sha256(reference.archive)  # packed, as without the warning
    train, val = tree.expected_train(SUBSET)[0], tree.expected_val(SUBSET)[0]
    large = [f"{split}/{path.relative_to(folder).as_posix()}"
             for split, folder, paths in (("train", tree.train_dir, train), ("val", tree.val_dir, val))
             for path in paths if Image.open(path).size != (40, 40)]
    pixels = {(48, 36): "1,728", (36, 48): "1,728", (60, 32): "1,920"}
    shown = ", ".join(f"{p} ({pixels[Image.open(tree.data_dir / p).size]} pixels, above Pillow's "
                      "decompression-bomb warning limit of 1,600)" for p in large[:3])
    assert result.notes[-1] == f"{len(large)} images gave a warning and were packed: {shown} and {len(large) - 3} more"
    assert "DecompressionBombWarning" not in capfd.readouterr().err


def test_a_real_90_megapixel_image_is_packed_with_a_note(tmp_path):
    """A 9500 x 9500 grayscale PNG: 90,250,000 pixels, between Pillow's warning and error limits."""
    tree = kaggle_tree(tmp_path / "kaggle")
    huge = tree.train_dir / A / f"{A}_1.JPEG"  # train row 0; a PNG named .JPEG, as some ImageNet files are
    Image.new("L", (9500, 9500), 77).save(huge, "PNG")
    argv = ["--subset_name", write_list(tmp_path / "mine.txt", SUBSET), "--data_dir", tree.data_dir,
            "--out_dir", tmp_path / "out", *SMALL]
    done = subprocess.run([PYTHON, "main.py", *map(str, argv)], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env=subprocess_env())
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr and "Traceback" not in done.stderr
    assert (f"imagenet-subset: note: 1 images gave a warning and were packed: train/{A}/{huge.name} "
            "(90,250,000 pixels, above Pillow's decompression-bomb warning limit of 89,478,485)") in done.stderr
    assert (read_npz(tmp_path / "out" / "mine_cls.npz")["X_train"][0] == 77).all()


# --------------------------------------------------------------------------- 8. --workers capped

def test_workers_are_capped_at_a_multiple_of_the_cores_and_the_chunks(tree, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(packer.execute, "default_workers", lambda: 2)
    code, _, err = run_main(_argv(tree, tmp_path / "out", "--workers", "1000", *SMALL), capsys)
    assert code == 0, err
    # 18 train and 8 val rows: one chunk each
    assert err.splitlines()[0] == ("imagenet-subset: note: --workers 1000 capped at 2: at most 4 per core (2 cores) "
                                   "and one per chunk of 32 images (2 chunks)")
    assert json.loads((tmp_path / "out" / "mine_cls.manifest.json").read_text())["build"]["workers"] == 2


def test_workers_beyond_the_chunks_are_not_started(tree, tmp_path, monkeypatch):
    started = []
    original = packer.execute.run_chunks
    monkeypatch.setattr(packer.execute, "run_chunks",
                        lambda chunks, spec, workers, *rest: started.append(workers) or original(chunks, spec,
                                                                                                 workers, *rest))
    build(tree.root.parent / "mine.txt", tree.data_dir, tmp_path / "out", resize_size=32, crop_size=24, workers=3)
    assert started == [2]


# --------------------------------------------------------------------------- 9. demo's words

def test_demo_says_its_tree_was_temporary(tmp_path, capsys):
    code, stdout, err = run_main(["demo", "--out_dir", tmp_path / "out", "--workers", "1"], capsys)
    assert code == 0, err
    assert stdout.splitlines()[0] == ("wrote a synthetic ILSVRC tree in a temporary folder (removed at the end; "
                                      "--dir DIR keeps it): 12 classes, 20 train + 5 val images each")


def test_demo_with_dir_names_the_kept_tree(tmp_path, capsys):
    code, stdout, err = run_main(["demo", "--dir", tmp_path / "tree", "--out_dir", tmp_path / "out", "--workers", "1"],
                                 capsys)
    assert code == 0, err
    assert stdout.splitlines()[0] == (f"wrote a synthetic ILSVRC tree at {tmp_path / 'tree'}: 12 classes, "
                                      "20 train + 5 val images each")
    assert (tmp_path / "tree" / "ILSVRC" / "Data" / "CLS-LOC" / "train").is_dir()


# --------------------------------------------------------------------------- 12. progress in logs

def test_progress_without_a_terminal_is_plain_lines(tree, tmp_path):
    done = subprocess.run([PYTHON, "main.py", *map(str, _argv(tree, tmp_path / "out", "--resize_size", "32",
                                                              "--crop_size", "24", "--workers", "1"))],
                          cwd=REPO, capture_output=True, text=True, timeout=120, env=subprocess_env())
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr and "\x1b" not in done.stderr
    progress = [line for line in done.stderr.splitlines() if not line.startswith("imagenet-subset: note:")]
    assert len(progress) == 2, done.stderr
    assert re.fullmatch(r"train: 18/18 images \(100%\)(, \d+ images/s)?", progress[0])
    assert re.fullmatch(r"val: 8/8 images \(100%\)(, \d+ images/s)?", progress[1])


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_is_a_bar():
    stream = _Terminal()
    with Progress({"train": 64}, stream=stream) as progress:
        progress.update("train", 32)
        progress.update("train", 32)
    assert "\r" in stream.getvalue() and "64/64" in stream.getvalue()


def test_plain_lines_come_every_few_seconds_and_at_the_end(monkeypatch):
    clock = iter([0.0, 1.0, 2.0, 12.5, 13.0, 14.0, 15.0])
    monkeypatch.setattr("packer.progress.time.monotonic", lambda: next(clock))
    stream = io.StringIO()
    with Progress({"train": 100, "val": 10}, stream=stream) as progress:  # started at 0.0
        progress.update("train", 10)   # 1.0: first line
        progress.update("train", 10)   # 2.0: too soon
        progress.update("train", 10)   # 12.5: 11.5 s after the last line
        progress.update("train", 10)   # 13.0: too soon; shown when the build stops
        progress.update("val", 10)     # 14.0: first and last
    assert stream.getvalue().splitlines() == [
        "train: 10/100 images (10%), 10 images/s", "train: 30/100 images (30%), 2 images/s",
        "val: 10/10 images (100%), 10 images/s", "train: 40/100 images (40%), 3 images/s"]


# --------------------------------------------------------------------------- 13. --version, --out_dir

def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        packer.cli.main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out == f"imagenet-subset {packer.__version__}\n"


def test_a_failed_build_removes_the_out_dir_it_created(tree, tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / "out"
    code, _, err = run_main(_argv(tree, out, "--classes", "nothing like this", *SMALL), capsys)
    assert code == 1
    bad = tree.train_dir / SUBSET[0] / f"{SUBSET[0]}_1.JPEG"
    original = bad.read_bytes()
    try:
        bad.write_text("not a picture")
        code, _, err = run_main(_argv(tree, out, *SMALL), capsys)
    finally:
        bad.write_bytes(original)
    assert code == 1 and "cannot read image" in assert_one_error_line(err)
    assert not (tmp_path / "new").exists()


def test_a_failed_build_keeps_an_out_dir_that_existed(tree, tmp_path, monkeypatch, capsys):
    _out_of_memory_on(monkeypatch, f"{SUBSET[0]}_1.JPEG")
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = run_main(_argv(tree, out, "--workers", "1", *SMALL), capsys)
    assert code == 1
    assert out.is_dir() and files_in(out) == []


def test_out_dir_naming_a_file(tree, tmp_path, capsys):
    (tmp_path / "taken").write_text("a file")
    code, _, err = run_main(_argv(tree, tmp_path / "taken", *SMALL), capsys)
    assert code == 1
    assert assert_one_error_line(err) == (f"imagenet-subset: error: --out_dir {tmp_path / 'taken'} is a file, not a "
                                          "folder; choose a folder (it is created if missing)")
    code, _, err = run_main(_argv(tree, tmp_path / "taken" / "out", *SMALL), capsys)
    assert code == 1
    assert assert_one_error_line(err) == (f"imagenet-subset: error: cannot create --out_dir {tmp_path / 'taken' / 'out'}"
                                          ": part of that path is a file; choose a folder")
    assert (tmp_path / "taken").read_text() == "a file"


# --------------------------------------------------------------------------- 16. hashing after other hosts wrote

def _writer_with_rows(path: Path, hash_after_close: bool, rows: np.ndarray, write_late: bool):
    """A one-array archive whose rows a 'worker' writes through its own descriptor, before it reports
    them (as a local worker does) or only after (as a stale view of a shared file system looks)."""
    specs = [ArraySpec("X_train", "|u1", rows.shape), ArraySpec("y_train", "<i4", (len(rows),))]
    writer = StoredNpzWriter(str(path), specs, {"y_train": np.arange(len(rows), dtype=np.int32)},
                             hash_after_close=hash_after_close)
    data = rows.tobytes()
    worker = os.open(path, os.O_WRONLY)
    try:
        if not write_late:
            os.pwrite(worker, data, writer.pixel_offset("X_train", 0))
        writer.add_chunk("X_train", zlib.crc32(data), len(data))
        if write_late:
            os.pwrite(worker, data, writer.pixel_offset("X_train", 0))
    finally:
        os.close(worker)
    writer.close()
    return writer


@pytest.mark.parametrize("write_late", [False, True], ids=["seen_at_once", "seen_late"])
def test_hash_after_close_is_of_the_file_as_written(tmp_path, write_late):
    rows = np.random.default_rng(0).integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
    writer = _writer_with_rows(tmp_path / "a.npz", True, rows, write_late)
    assert writer.sha256 == sha256(tmp_path / "a.npz")
    with np.load(tmp_path / "a.npz") as z:
        assert np.array_equal(z["X_train"], rows)


def test_hash_as_rows_arrive_misses_rows_seen_late(tmp_path):
    """Why the Dask backend hashes after close: read back as reported, a late view gives a wrong SHA-256."""
    rows = np.random.default_rng(0).integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
    writer = _writer_with_rows(tmp_path / "a.npz", False, rows, write_late=True)
    assert writer.sha256 != sha256(tmp_path / "a.npz")


def test_hash_after_close_names_rows_that_read_back_differently(tmp_path):
    rows = np.random.default_rng(0).integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
    path = tmp_path / "a.npz"
    specs = [ArraySpec("X_train", "|u1", rows.shape), ArraySpec("y_train", "<i4", (5,))]
    writer = StoredNpzWriter(str(path), specs, {"y_train": np.arange(5, dtype=np.int32)}, hash_after_close=True)
    writer.write_rows("X_train", 0, rows.tobytes())
    writer.add_chunk("X_train", zlib.crc32(rows.tobytes()) ^ 1, rows.nbytes)  # a report the file does not match
    with pytest.raises(UserError, match=re.escape(
            f"{path}: X_train.npy reads back other bytes than the workers wrote; the shared file system must show "
            "each host what the others wrote and closed (close-to-open consistency, as NFS gives); check it and "
            "run again")):
        writer.close()


def test_dask_builds_hash_after_close(tree, tmp_path, monkeypatch):
    """The Dask backend asks its writers to hash after close (local runs hash as rows arrive)."""
    seen = []
    original = StoredNpzWriter.__init__

    def init(self, *args, **kwargs):
        seen.append(kwargs.get("hash_after_close"))
        original(self, *args, **kwargs)

    monkeypatch.setattr(StoredNpzWriter, "__init__", init)
    monkeypatch.setattr(packer.execute, "check_dask_scheduler", lambda address: None)
    monkeypatch.setattr(packer.execute, "run_chunks",
                        lambda chunks, spec, workers, backend, scheduler, done:
                        packer.work.run_chunks(chunks, spec, 1, "local", None, done))
    pytest.importorskip("distributed")
    build(tree.root.parent / "mine.txt", tree.data_dir, tmp_path / "local", resize_size=32, crop_size=24)
    result = build(tree.root.parent / "mine.txt", tree.data_dir, tmp_path / "dask", resize_size=32, crop_size=24,
                   backend="dask", scheduler="tcp://127.0.0.1:1")
    assert seen == [False, True]
    assert result.sha256 == sha256(result.archive) == sha256(tmp_path / "local" / "mine_cls.npz")


def test_a_fork_server_that_cannot_start_is_one_line(tree, tmp_path):
    """From a process running threads the workers come from a fork server, whose socket lives under TMPDIR:
    a TMPDIR too long for a socket path is named, not reported as a failed write of the archive."""
    long_tmp = tmp_path / ("t" * 110)
    long_tmp.mkdir()
    threaded = ("import sys, threading; threading.Thread(target=threading.Event().wait, daemon=True).start(); "
                "import packer.cli; sys.exit(packer.cli.main(sys.argv[1:]))")
    done = subprocess.run([PYTHON, "-c", threaded, *map(str, _argv(tree, tmp_path / "out", "--workers", "2", *SMALL))],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**subprocess_env(), "TMPDIR": str(long_tmp)})
    assert done.returncode == 1
    assert assert_one_error_line(done.stderr) == (
        "imagenet-subset: error: cannot start the fork server that starts the workers (AF_UNIX path too long, "
        f"socket under {long_tmp}); set TMPDIR to a short path such as /tmp")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- found in review

def test_an_interruption_between_the_final_renames_puts_every_earlier_output_back(tree, tmp_path, monkeypatch):
    out = tmp_path / "out"
    first = build(tree.root.parent / "mine.txt", tree.data_dir, out, resize_size=32, crop_size=24)
    earlier = {name: (out / name).read_bytes() for name in files_in(out)}
    original, renames = os.replace, []

    def replace(source, target):
        renames.append(target)
        original(source, target)
        if len(renames) == 1 and str(target).endswith("_cls.npz"):  # the new archive is in place, the CSV not yet
            raise KeyboardInterrupt

    monkeypatch.setattr(packer.execute.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        build(tree.root.parent / "mine.txt", tree.data_dir, out, resize_size=40, crop_size=32)
    monkeypatch.undo()
    assert {name: (out / name).read_bytes() for name in files_in(out)} == earlier
    assert sha256(first.archive) == first.sha256


def test_demo_refuses_a_folder_that_holds_files(tmp_path, capsys):
    kept = tmp_path / "imagenet"
    kept.mkdir()
    (kept / "LOC_synset_mapping.txt").write_text("n01440764 tench, Tinca tinca\n")
    code, _, err = run_main(["demo", "--dir", kept, "--out_dir", tmp_path / "out"], capsys)
    assert code == 1
    assert assert_one_error_line(err) == (f"imagenet-subset: error: --dir {kept} is not an empty folder; the demo "
                                          "writes a whole tree there, so give a new or empty folder")
    assert files_in(kept) == ["LOC_synset_mapping.txt"] and not (tmp_path / "out").exists()


def test_the_output_name_of_a_choice_by_name_stays_in_out_dir(tree, tmp_path, capsys):
    out = tmp_path / "deep" / "out"
    code, _, err = run_main(["--classes", "tench", "--subset_name", "../escaped.txt", "--data_dir", tree.data_dir,
                             "--out_dir", out, *SMALL], capsys)
    assert code == 0, err
    assert files_in(out) == ["escaped_cls.manifest.json", "escaped_cls.npz", "escaped_cls_metadata.csv"]
    assert files_in(tmp_path / "deep") == ["out"]


def test_preview_is_no_wider_than_the_images_it_shows(recipe, tmp_path):
    from packer.preview import LABEL_WIDTH, contact_sheet

    sheet = contact_sheet(recipe.archive, per_class=100_000, thumbnail=16)
    most = max(np.bincount(read_npz(recipe.archive)["y_train"]))
    assert sheet.size[0] == LABEL_WIDTH + most * (16 + 4) + 4


def test_a_manifest_lacking_entries_is_one_line_in_info_and_a_problem_in_verify(recipe, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    for path in (recipe.archive, recipe.metadata, recipe.manifest):
        (out / path.name).write_bytes(path.read_bytes())
    manifest = json.loads(recipe.manifest.read_text())
    del manifest["options"]
    (out / recipe.manifest.name).write_text(json.dumps(manifest))
    code, _, err = run_main(["info", out / recipe.archive.name], capsys)
    assert code == 1
    assert assert_one_error_line(err) == (f"imagenet-subset: error: {out / recipe.manifest.name} lacks options: it is "
                                          "not a complete manifest; rebuild the archive")
    code, stdout, err = run_main(["verify", out / recipe.archive.name], capsys)
    assert code == 1 and "Traceback" not in err
    assert (f"FAIL: {out / recipe.manifest.name} lacks options: it is not a complete manifest; rebuild the archive"
            in stdout.splitlines())


def test_verify_of_a_folder_says_it_is_a_folder(tmp_path, capsys):
    code, _, err = run_main(["verify", tmp_path], capsys)
    assert code == 1
    assert assert_one_error_line(err) == (f"imagenet-subset: error: {tmp_path} is a folder; pass an archive "
                                          "(*_cls.npz) or a shard index (*_cls.index.json)")
