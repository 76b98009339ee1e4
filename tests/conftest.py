"""Shared fixtures; the tree builders and helpers live in helpers.py.

Temporary files: a passing run leaves nothing in the system temp folder.

- ``tmp_path`` folders are removed as soon as their test passes, and pytest's base temp
  folder when the whole run passes (``tmp_path_retention_policy = "failed"`` in
  pyproject.toml); a failed test's folders are kept for a look.
- Trees shared by a module come from ``module_tmp_path_factory``: removed when the module
  is done, unless one of its tests failed.
- Every subprocess a test starts gets a ``TMPDIR`` of its own, removed after the test:
  whatever it leaves there (a build SIGKILLed on purpose cannot remove its fork server's
  socket folder) goes with it. tests/test_cleanup.py checks that the package itself
  leaves nothing in its temp folder.
"""
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Fix this process's temp folder now, before a test points TMPDIR elsewhere: tempfile
# reads TMPDIR once, at its first use, and a per-test folder is removed after the test.
tempfile.gettempdir()


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path, monkeypatch):
    """Run each test from an empty folder: ./aux_files of the repository is never searched."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


@pytest.fixture(autouse=True)
def _subprocess_tmpdir(monkeypatch):
    """Subprocesses started by the test keep their temporary files in a folder of their own, removed
    after the test. It is a short one beside tmp_path, not in it: a fork server's socket goes in
    ``TMPDIR/pymp-XXXXXXXX/listener-XXXXXXXX``, which must fit in AF_UNIX's 107 bytes; where even a
    short folder would not leave room for it, the subprocesses keep the usual TMPDIR."""
    folder = tempfile.mkdtemp()
    if not fits_a_fork_server_socket(folder):
        os.rmdir(folder)
        yield None
        return
    monkeypatch.setenv("TMPDIR", folder)
    yield Path(folder)
    shutil.rmtree(folder, ignore_errors=True)


def fits_a_fork_server_socket(tmpdir) -> bool:
    """Whether multiprocessing's fork server can put its socket in ``tmpdir`` (Linux: 107 bytes at most)."""
    return len(os.fsencode(os.path.join(tmpdir, "pymp-12345678", "listener-12345678"))) <= 107


class ModuleTempPathFactory:
    """``tmp_path_factory.mktemp`` for trees shared by one module; see ``module_tmp_path_factory``."""

    def __init__(self, factory: pytest.TempPathFactory):
        self._factory = factory
        self.made = []

    def mktemp(self, basename: str, numbered: bool = True):
        path = self._factory.mktemp(basename, numbered=numbered)
        self.made.append(path)
        return path


@pytest.fixture(scope="module")
def module_tmp_path_factory(request, tmp_path_factory):
    """Folders for a module's shared (module-scoped) trees and archives, removed when the module
    is done if none of its tests failed (then they are kept with the failed tests' folders)."""
    factory = ModuleTempPathFactory(tmp_path_factory)
    failed_before = request.session.testsfailed
    yield factory
    if request.session.testsfailed == failed_before:
        for path in factory.made:
            shutil.rmtree(path, ignore_errors=True)
