"""A rebuild replaces the whole archive set of its name: another shard count, shards for one
archive or one archive for shards, with no stale file left beside the new set; and a rebuild that
fails while putting its outputs in place leaves the earlier set exactly as it was."""
import os

import pytest

import packer.execute
from helpers import SUBSET, build, kaggle_tree, sha256, write_list
from packer.checking import verify


@pytest.fixture(scope="module")
def tree_and_list(module_tmp_path_factory):
    root = module_tmp_path_factory.mktemp("sets")
    return kaggle_tree(root / "kaggle"), write_list(root / "mine.txt", SUBSET)


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


SHARDS_OF = {4: 5, 8: 3}  # 18 train rows: shards of 4 make 5, of 8 make 3
OTHERS = ["mine_cls.manifest.json", "mine_cls_metadata.csv"]


def _set(shard_size):
    if shard_size is None:
        return sorted(["mine_cls.npz", *OTHERS])
    count = SHARDS_OF[shard_size]
    return sorted([f"mine_cls-{i:05d}-of-{count:05d}.npz" for i in range(count)] + ["mine_cls.index.json", *OTHERS])


def test_each_rebuild_leaves_only_its_own_set(tree_and_list, tmp_path):
    tree, class_list = tree_and_list
    out = tmp_path / "out"
    (tmp_path / "out").mkdir()
    (out / "mine_cls-00009-of-00010.npz.txt").write_text("not ours")  # a look-alike is left alone
    for shard_size in (4, 8, None, 8):
        options = {"shard_size": shard_size} if shard_size else {}
        result = build(class_list, tree.data_dir, out, **options)
        assert _files(out) == sorted(_set(shard_size) + ["mine_cls-00009-of-00010.npz.txt"])
        assert verify(result.archive if shard_size is None else out / "mine_cls.index.json") == []


def test_a_rebuild_that_fails_while_committing_puts_the_earlier_set_back(tree_and_list, tmp_path, monkeypatch):
    tree, class_list = tree_and_list
    out = tmp_path / "out"
    build(class_list, tree.data_dir, out, shard_size=4)
    before = {name: sha256(out / name) for name in _files(out)}
    real_replace = os.replace
    failed = []

    def failing_replace(source, target):
        if str(target).endswith(".manifest.json") and not failed:  # the last output put in place, once
            failed.append(target)
            raise OSError(28, "No space left on device")
        return real_replace(source, target)

    monkeypatch.setattr(packer.execute.os, "replace", failing_replace)
    with pytest.raises(packer.UserError):
        build(class_list, tree.data_dir, out, shard_size=8)
    monkeypatch.setattr(packer.execute.os, "replace", real_replace)
    assert failed
    assert {name: sha256(out / name) for name in _files(out)} == before
