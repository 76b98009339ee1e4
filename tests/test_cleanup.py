"""Nothing is left in the system temp folder: not by the package, not by a passing test run.

A run of the suite used to leave ~1.3 GB there (pytest kept every tmp_path folder of the
last 3 runs, a SIGKILLed build left its fork server's socket folder, the Dask cluster its
scratch folder).
"""
import json
import os
import subprocess
import tempfile
import tomllib
from pathlib import Path

import pytest

from helpers import PYTHON, REPO, SUBSET, A, kaggle_tree, subprocess_env, write_list

pytestmark = pytest.mark.slow  # full builds: skipped by pytest -m "not slow"

# the command line from a process running a second thread: its workers come from a fork server
THREADED_MAIN = ("import sys, threading; threading.Thread(target=threading.Event().wait, daemon=True).start(); "
                 "import packer.cli; sys.exit(packer.cli.main())")


def fits_a_fork_server_socket(tmpdir) -> bool:
    """Whether multiprocessing's fork server can put its socket in ``tmpdir`` (Linux: 107 bytes at most)."""
    return len(os.fsencode(os.path.join(tmpdir, "pymp-12345678", "listener-12345678"))) <= 107


def _left_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _run(argv, tmpdir: Path, cwd=REPO):
    env = subprocess_env()
    env["TMPDIR"] = str(tmpdir)
    for name in list(env):
        if name.startswith("PYTEST_"):  # PYTEST_DEBUG_TEMPROOT would move pytest's base temp elsewhere
            del env[name]
    return subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def empty():
    """An empty temp folder for a subprocess (short: a fork server's socket may go in it)."""
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder)


# --------------------------------------------------------------------------- the package

@pytest.fixture
def small_tree(tmp_path):
    tree = kaggle_tree(tmp_path / "kaggle")
    return tree, write_list(tmp_path / "mine.txt", SUBSET)


@pytest.mark.parametrize("how", ["fork", "forkserver", "failed"])
def test_a_build_leaves_nothing_in_the_temp_folder(small_tree, tmp_path, empty, how):
    tree, class_list = small_tree
    if how == "forkserver" and not fits_a_fork_server_socket(empty):
        pytest.skip(f"TMPDIR {tempfile.gettempdir()} is too long to hold a fork server's socket in a folder")
    if how == "failed":
        bad = tree.train_dir / A / f"{A}_9.JPEG"
        bad.write_bytes(bad.read_bytes()[:200])
    main = ["-c", THREADED_MAIN] if how == "forkserver" else ["main.py"]
    proc = _run([PYTHON, *main, "--subset_name", class_list, "--data_dir", tree.data_dir, "--out_dir",
                 tmp_path / "out", "--workers", "2", "--quiet"], empty)
    assert proc.returncode == (1 if how == "failed" else 0), proc.stderr
    assert (tmp_path / "out" / "mine_cls.npz").is_file() == (how != "failed")
    assert _left_in(empty) == []


def test_the_demo_leaves_nothing_in_the_temp_folder(tmp_path, empty):
    """``demo`` without --dir writes its tree in a temporary folder: removed afterwards."""
    out = tmp_path / "out"
    proc = _run([PYTHON, "main.py", "demo", "--out_dir", out, "--workers", "2"], empty)
    assert proc.returncode == 0, proc.stderr
    assert (out / "demo_cls.npz").is_file()
    assert _left_in(empty) == []


# --------------------------------------------------------------------------- the test suite

def test_the_retention_policy_keeps_only_the_folders_of_failed_tests(request):
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert config["tmp_path_retention_policy"] == "failed"
    assert request.config.getini("tmp_path_retention_policy") == "failed"


def test_a_subprocess_of_a_test_gets_a_temp_folder_of_its_own(_subprocess_tmpdir):
    if _subprocess_tmpdir is None:
        pytest.skip(f"TMPDIR {tempfile.gettempdir()} is too long to hold a fork server's socket in a folder")
    folder = Path(os.environ["TMPDIR"])
    assert folder == _subprocess_tmpdir and folder.is_dir() and _left_in(folder) == []
    assert fits_a_fork_server_socket(folder)
    seen = subprocess.run([PYTHON, "-c", "import tempfile; print(tempfile.gettempdir())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert seen == str(folder)
    # ... while this process keeps the temp folder it started with (the test's own is removed after it)
    assert Path(tempfile.gettempdir()) != folder


# A sample project with this repository's pytest settings and conftest.py, run by pytest in a
# subprocess whose TMPDIR is an empty folder.

SUITE = '''
import subprocess
import sys

import pytest

FAIL = False


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tree")
    (folder / "tree.bin").write_bytes(bytes(100_000))
    return folder


def test_writes_to_tmp_path(tmp_path, tree):
    (tmp_path / "archive.bin").write_bytes(bytes(100_000))


def test_a_subprocess_leaves_a_temp_folder():
    # as a build SIGKILLed on purpose does: it cannot remove its fork server's socket folder
    subprocess.run([sys.executable, "-c", "import tempfile; tempfile.mkdtemp(prefix='leftover-')"], check=True)


def test_maybe_fails(tmp_path):
    (tmp_path / "evidence.txt").write_text("kept for a look")
    assert not FAIL
'''

SHARED = '''
from pathlib import Path

import pytest

FAIL = False


@pytest.fixture(scope="module")
def shared(module_tmp_path_factory):
    folder = module_tmp_path_factory.mktemp("shared")
    (folder / "shared.bin").write_bytes(bytes(100_000))
    return folder


def test_uses_the_shared_tree(shared):
    (Path(__file__).parent.parent / "shared.txt").write_text(str(shared))
    assert not FAIL
'''

AFTER = '''
from pathlib import Path

FAIL = False


def test_the_shared_tree_of_the_finished_module_is_gone_unless_its_test_failed():
    shared = Path((Path(__file__).parent.parent / "shared.txt").read_text())
    assert shared.name.startswith("shared")
    assert shared.exists() == FAIL
'''


def _sample_run(folder: Path, tmpdir: Path, modules: dict, fail: bool = False):
    tests = folder / "tests"
    tests.mkdir(parents=True)
    settings = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    (folder / "pyproject.toml").write_text(
        "[tool.pytest.ini_options]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items()))
    (tests / "conftest.py").write_text((REPO / "tests" / "conftest.py").read_text())
    for name, text in modules.items():
        (tests / name).write_text(text.replace("FAIL = False", f"FAIL = {fail}"))
    return _run([PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider"], tmpdir, cwd=folder)


def _skip_unless_room_for_a_tmpdir_in(folder: Path):
    if not fits_a_fork_server_socket(folder / "tmp12345678"):
        pytest.skip(f"TMPDIR {tempfile.gettempdir()} is too long: the sample's tests would keep the usual TMPDIR")


def test_a_passing_run_leaves_nothing_in_the_temp_folder(tmp_path, empty):
    _skip_unless_room_for_a_tmpdir_in(empty)
    proc = _sample_run(tmp_path / "project", empty, {"test_suite.py": SUITE})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 passed" in proc.stdout
    # pytest's own pytest-of-<user> folder stays, empty
    left = _left_in(empty)
    assert len(left) <= 1 and all(name.startswith("pytest-of-") for name in left), left


def test_a_module_s_shared_trees_are_removed_when_it_is_done(tmp_path, empty):
    proc = _sample_run(tmp_path / "project", empty, {"test_shared.py": SHARED, "test_zafter.py": AFTER})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 passed" in proc.stdout


def test_a_failed_run_keeps_the_folders_of_the_failed_tests(tmp_path, empty):
    proc = _sample_run(tmp_path / "project", empty,
                       {"test_suite.py": SUITE, "test_shared.py": SHARED, "test_zafter.py": AFTER}, fail=True)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "2 failed, 3 passed" in proc.stdout  # test_zafter: the failed module's shared tree is kept
    left = _left_in(empty)
    assert [name for name in left if name.endswith("/evidence.txt")], left  # the failed test's tmp_path
    assert [name for name in left if name.endswith("/shared.bin")], left  # the failed module's shared tree
    assert not [name for name in left if name.endswith("/archive.bin")], left  # a passed test's tmp_path
