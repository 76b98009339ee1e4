"""Every error path of the command line: exit code 1, one line naming the file or value, no traceback,
nothing written at the output paths."""
import errno
import json
import re
import os
import resource
import subprocess

import numpy as np
import pytest
from PIL import Image

from helpers import (A, B, C, D, PREFIX, PYTHON, REPO, SUBSET, assert_one_error_line, files_in, kaggle_tree,
                     noise, plain_tree, run_main, subprocess_env, write_list)


@pytest.fixture
def tree(tmp_path):
    return kaggle_tree(tmp_path / "kaggle")


@pytest.fixture
def class_list(tmp_path):
    return write_list(tmp_path / "lists" / "mine.txt", SUBSET)


def args(class_list, data_dir, out_dir, *extra):
    return ["--subset_name", class_list, "--data_dir", data_dir, "--out_dir", out_dir, "--workers", "1", "--quiet",
            *extra]


def assert_nothing_written(out_dir):
    assert files_in(out_dir) == [], files_in(out_dir)


def test_missing_data_dir(tmp_path, class_list, capsys):
    missing = tmp_path / "no" / "such" / "CLS-LOC"
    code, out, err = run_main(args(class_list, missing, tmp_path / "out"), capsys)
    assert code == 1
    assert_one_error_line(err, f"--data_dir {missing} does not exist")
    assert out == ""
    assert_nothing_written(tmp_path / "out")


@pytest.mark.parametrize("split", ["train", "val"])
def test_data_dir_without_split_folder(tmp_path, class_list, capsys, split):
    data_dir = tmp_path / "data"
    (data_dir / ("val" if split == "train" else "train") / A).mkdir(parents=True)
    code, _, err = run_main(args(class_list, data_dir, tmp_path / "out"), capsys)
    assert code == 1
    assert_one_error_line(err, f"--data_dir {data_dir} has no {split}/ folder")
    assert_nothing_written(tmp_path / "out")


def test_missing_devkit_dir(tree, tmp_path, class_list, capsys):
    code, _, err = run_main(args(class_list, tree.data_dir, tmp_path / "out", "--devkit_dir", tmp_path / "nodevkit"),
                            capsys)
    assert code == 1
    assert_one_error_line(err, f"--devkit_dir {tmp_path / 'nodevkit'} does not exist")


def test_val_numbers_beyond_the_builtin_labels_name_the_images(tmp_path, class_list, capsys):
    """With no label file, flat val images are labelled by the built-in labels of the 50,000
    ILSVRC2012 val images; an image numbered beyond them has no label, and the error says so."""
    tree = plain_tree(tmp_path / "tree" / "CLS-LOC")  # flat val/, no label file anywhere
    Image.new("RGB", (30, 30)).save(tree.val_dir / "ILSVRC2012_val_00050001.JPEG")
    code, _, err = run_main(args(class_list, tree.data_dir, tmp_path / "out"), capsys)
    assert code == 1
    assert_one_error_line(err, f"1 val images in {tree.val_dir} have no label in built-in ILSVRC2012 validation "
                               "labels: ILSVRC2012_val_00050001.JPEG; use the label file that came with these images")
    assert_nothing_written(tmp_path / "out")


def test_ground_truth_without_map_clsloc_uses_the_builtin_class_table(tmp_path, class_list, capsys):
    tree = plain_tree(tmp_path / "tree" / "CLS-LOC")
    # CLS-LOC id 449 is n01440764 (tench, A) in the built-in table: every val image is labelled A
    (tmp_path / "tree" / "ILSVRC2015_clsloc_validation_ground_truth.txt").write_text("449\n" * 13)
    code, _, _ = run_main(args(class_list, tree.data_dir, tmp_path / "out"), capsys)
    assert code == 0
    archive = np.load(tmp_path / "out" / "mine_cls.npz")
    assert archive["val_id"].tolist() == sorted(tree.val)
    assert archive["y_val"].tolist() == [SUBSET.index(A)] * len(tree.val)
    manifest = json.loads((tmp_path / "out" / "mine_cls.manifest.json").read_text())
    assert manifest["sources"]["val"]["label_source"] == (
        "ILSVRC2015_clsloc_validation_ground_truth.txt with the built-in class table")


def test_val_image_without_label(tree, tmp_path, class_list, capsys):
    extra = tree.val_dir / "ILSVRC2012_val_00000099.JPEG"
    Image.new("RGB", (30, 30)).save(extra)
    code, _, err = run_main(args(class_list, tree.data_dir, tmp_path / "out"), capsys)
    assert code == 1
    assert_one_error_line(err, "ILSVRC2012_val_00000099.JPEG", "LOC_val_solution.csv")
    assert_nothing_written(tmp_path / "out")


def test_val_image_with_unexpected_name(tree, tmp_path, class_list, capsys):
    Image.new("RGB", (30, 30)).save(tree.val_dir / "holiday.jpg")
    code, _, err = run_main(args(class_list, tree.data_dir, tmp_path / "out"), capsys)
    assert code == 1
    assert_one_error_line(err, str(tree.val_dir / "holiday.jpg"))


def _corrupt(path, kind):
    if kind == "truncated":
        Image.fromarray(noise(200, 150, seed=2)).save(path, "JPEG", quality=90)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        path.write_text("<html>404 Not Found</html>\n")


@pytest.mark.parametrize("kind", ["truncated", "empty", "text"])
@pytest.mark.parametrize("workers", [1, 2])
def test_corrupt_train_image(tmp_path, class_list, capsys, kind, workers):
    # 40 images of A: the corrupt one (A_9, last in sorted order) is in the second chunk of 32
    tree = kaggle_tree(tmp_path / "kaggle", counts={A: 40, B: 3, C: 4, D: 2})
    bad = tree.train_dir / A / f"{A}_9.JPEG"
    _corrupt(bad, kind)
    argv = args(class_list, tree.data_dir, tmp_path / "out")
    argv[argv.index("--workers") + 1] = str(workers)
    code, out, err = run_main(argv, capsys)
    assert code == 1
    assert_one_error_line(err, f"cannot read image {bad}")
    assert out == ""
    assert_nothing_written(tmp_path / "out")


def test_corrupt_val_image(tree, tmp_path, class_list, capsys):
    bad = tree.val_path(8)
    _corrupt(bad, "truncated")
    code, _, err = run_main(args(class_list, tree.data_dir, tmp_path / "out", "--compress"), capsys)
    assert code == 1
    assert_one_error_line(err, f"cannot read image {bad}")
    assert_nothing_written(tmp_path / "out")


def test_corrupt_image_with_progress_bars(tmp_path, class_list, capsys):
    """Progress bars may be on stderr, but the error is still one line, the last one."""
    tree = kaggle_tree(tmp_path / "kaggle", counts={A: 40, B: 3, C: 4, D: 2})
    bad = tree.val_path(9)
    _corrupt(bad, "empty")
    argv = [a for a in args(class_list, tree.data_dir, tmp_path / "out") if a != "--quiet"]
    code, _, err = run_main(argv, capsys)
    assert code == 1
    lines = [line for line in err.replace("\r", "\n").split("\n") if line.strip()]
    errors = [line for line in lines if line.startswith(PREFIX)]
    assert len(errors) == 1 and errors[0] == lines[-1]
    assert f"cannot read image {bad}" in errors[0]
    assert "Traceback" not in err
    assert_nothing_written(tmp_path / "out")


def test_crop_larger_than_resize(tree, tmp_path, class_list, capsys):
    code, _, err = run_main(args(class_list, tree.data_dir, tmp_path / "out", "--resize_size", "200",
                                 "--crop_size", "224"), capsys)
    assert code == 1
    assert_one_error_line(err, "--crop_size 224", "--resize_size 200")
    assert_nothing_written(tmp_path / "out")


def test_train_cls_lists_a_missing_file(tree, tmp_path, class_list, capsys):
    (tree.train_dir / B / f"{B}_2.JPEG").unlink()
    code, _, err = run_main(args(class_list, tree.data_dir, tmp_path / "out"), capsys)
    assert code == 1
    train_cls = tmp_path / "kaggle" / "ILSVRC" / "ImageSets" / "CLS-LOC" / "train_cls.txt"
    assert_one_error_line(err, f"{B}/{B}_2", str(train_cls))
    assert_nothing_written(tmp_path / "out")


def test_wnids_without_train_folder(tree, tmp_path, capsys):
    path = write_list(tmp_path / "l.txt", [A, "n09999991", B, "n00000007"])
    code, _, err = run_main(args(path, tree.data_dir, tmp_path / "out"), capsys)
    assert code == 1
    assert_one_error_line(err, str(path), "n09999991", "n00000007")


def test_unknown_subset_name(tree, tmp_path, capsys):
    code, _, err = run_main(args("imagenet31", tree.data_dir, tmp_path / "out"), capsys)
    assert code == 1
    assert_one_error_line(err, "imagenet31", "imagenet30")


def test_malformed_class_list(tree, tmp_path, capsys):
    path = tmp_path / "l.txt"
    path.write_text(f"{A}\nn123\n{A}\n")
    code, _, err = run_main(args(path, tree.data_dir, tmp_path / "out"), capsys)
    assert code == 1
    assert_one_error_line(err, str(path), "line 2 'n123'", f"{A} (lines 1 and 3)")


def test_malformed_label_file_names_file_and_line(tree, tmp_path, class_list, capsys):
    solution = tmp_path / "kaggle" / "LOC_val_solution.csv"
    lines = solution.read_text().splitlines()
    lines[3] = "ILSVRC2012_val_00000004,not-a-wnid 1 2 3 4"
    solution.write_text("\n".join(lines) + "\n")
    code, _, err = run_main(args(class_list, tree.data_dir, tmp_path / "out"), capsys)
    assert code == 1
    assert_one_error_line(err, f"{solution}:4")


def test_out_dir_is_a_file(tree, tmp_path, class_list, capsys):
    blocker = tmp_path / "out"
    blocker.write_text("not a folder")
    code, _, err = run_main(args(class_list, tree.data_dir, blocker), capsys)
    assert code == 1
    assert_one_error_line(err, str(blocker))
    assert blocker.read_text() == "not a folder"
    code, _, err = run_main(args(class_list, tree.data_dir, blocker / "sub"), capsys)
    assert code == 1
    assert_one_error_line(err, str(blocker / "sub"))


def test_unwritable_out_dir(tree, tmp_path, class_list, capsys):
    out = tmp_path / "readonly"
    out.mkdir()
    out.chmod(0o500)
    try:
        if os.access(out, os.W_OK):
            pytest.skip("running as root: chmod does not make a folder unwritable")
        code, _, err = run_main(args(class_list, tree.data_dir, out), capsys)
        assert code == 1
        assert_one_error_line(err, str(out))
        assert files_in(out) == []
    finally:
        out.chmod(0o700)


def _limit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))


@pytest.mark.parametrize("compress", [False, True])
def test_full_disk(tree, tmp_path, class_list, compress):
    """A write that fails (here: file size limit of 1 MiB, EFBIG) is one line and leaves nothing."""
    out = tmp_path / "out"
    argv = [PYTHON, "main.py", *map(str, args(class_list, tree.data_dir, out))] + (["--compress"] if compress else [])
    if compress:  # noise compresses badly: make the rows big enough to pass the limit
        for path in tree.colours:
            Image.fromarray(noise(64, 48, seed=hash(path.name) % 1000)).save(path, "JPEG", quality=95)
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120, env=subprocess_env(),
                          preexec_fn=_limit_file_size)
    assert proc.returncode == 1, proc.stderr
    assert_one_error_line(proc.stderr, str(out), os.strerror(errno.EFBIG))  # "File too large"
    assert files_in(out) == []


def test_subprocess_main_py_missing_data_dir(tmp_path, class_list):
    missing = tmp_path / "nope"
    proc = subprocess.run([PYTHON, "main.py", "--subset_name", str(class_list), "--data_dir", str(missing),
                           "--out_dir", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env=subprocess_env())
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert_one_error_line(proc.stderr, f"--data_dir {missing} does not exist")
    assert not (tmp_path / "out").exists()


def test_subprocess_main_py_corrupt_image_two_workers(tree, tmp_path, class_list):
    bad = tree.train_dir / C / f"{C}_3.JPEG"
    _corrupt(bad, "text")
    argv = [str(a) for a in args(class_list, tree.data_dir, tmp_path / "out")]
    argv[argv.index("--workers") + 1] = "2"
    proc = subprocess.run([PYTHON, "main.py", *argv], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=subprocess_env())
    assert proc.returncode == 1
    assert_one_error_line(proc.stderr, f"cannot read image {bad}")
    assert files_in(tmp_path / "out") == []


def test_compatibility_options_are_accepted(tree, tmp_path, class_list, capsys):
    code, out, err = run_main(args(class_list, tree.data_dir, tmp_path / "out", "--max_ram", "4", "--concatenate"),
                              capsys)
    assert code == 0
    assert "--max_ram and --concatenate are no longer needed" in err
    assert {"mine_cls.npz", "mine_cls_metadata.csv"} <= set(files_in(tmp_path / "out"))
    assert str(tmp_path / "out" / "mine_cls.npz") in out


@pytest.mark.parametrize("option,value", [("--workers", "0"), ("--resize_size", "abc"), ("--crop_size", "-3")])
def test_bad_option_value_is_one_line(tree, tmp_path, class_list, capsys, option, value):
    argv = args(class_list, tree.data_dir, tmp_path / "out")
    argv += [option, value]
    try:
        code, _, err = run_main(argv, capsys)
    except SystemExit as exit_:  # argparse's own exit: two lines and code 2
        code, err = exit_.code, capsys.readouterr().err
    assert code == 1
    assert_one_error_line(err, option, value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [[], ["build"]])
def test_successful_build_prints_the_summary(tree, tmp_path, class_list, capsys, command):
    out = tmp_path / "out"
    code, stdout, err = run_main(command + args(class_list, tree.data_dir, out), capsys)
    assert code == 0, err
    archive = out / "mine_cls.npz"
    first = stdout.splitlines()[0]
    assert re.fullmatch(rf"mine: 18 train, 8 val images, 3 classes -> {re.escape(str(archive))} "
                        r"\(\d+\.\d MB\) in \d+\.\d s \(\d+ images/s\)", first), first
    assert stdout.splitlines()[1] == "labels: train from train_cls.txt; val from LOC_val_solution.csv"
    assert f"metadata: {out / 'mine_cls_metadata.csv'}" in stdout
    assert "Traceback" not in err and PREFIX not in err
