"""Shared fixtures; the tree builders and helpers live in helpers.py."""
import pytest


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path, monkeypatch):
    """Run each test from an empty folder: ./aux_files of the repository is never searched."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd
