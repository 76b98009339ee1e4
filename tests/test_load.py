"""packer.load: memory-mapped or in-memory arrays equal to np.load's, and the class table."""
import shutil

import numpy as np
import pandas as pd
import pytest

import packer
from helpers import KEYS, NAMES, SUBSET, build, kaggle_tree, read_npz, write_list


@pytest.fixture(scope="module")
def built(module_tmp_path_factory):
    root = module_tmp_path_factory.mktemp("load")
    tree = kaggle_tree(root / "kaggle")
    class_list = write_list(root / "mine.txt", SUBSET)
    stored = build(class_list, tree.data_dir, root / "stored")
    compressed = build(class_list, tree.data_dir, root / "compressed", compress=True)
    return stored, compressed


def test_mmap_gives_memmaps_equal_to_np_load(built):
    stored, _ = built
    expected = read_npz(stored.archive)
    data = packer.load(stored.archive)  # mmap=True is the default
    assert list(data.keys()) == KEYS
    for key in ("X_train", "X_val"):
        assert isinstance(data[key], np.memmap), key
        assert not data[key].flags.writeable
    for key in KEYS:
        assert data[key].dtype == expected[key].dtype and data[key].shape == expected[key].shape
        assert np.array_equal(data[key], expected[key]), key
    assert data.X_train is data["X_train"]
    assert data.path == stored.archive


def test_no_mmap_gives_ndarrays(built):
    stored, _ = built
    expected = read_npz(stored.archive)
    data = packer.load(stored.archive, mmap=False)
    for key in KEYS:
        assert type(data[key]) is np.ndarray, key
        assert np.array_equal(data[key], expected[key]), key


def test_compressed_archive_loads_into_memory(built):
    stored, compressed = built
    expected = read_npz(stored.archive)
    data = packer.load(compressed.archive)
    for key in KEYS:
        assert type(data[key]) is np.ndarray, key
        assert np.array_equal(data[key], expected[key]), key


def test_classes_is_the_csv(built):
    stored, _ = built
    data = packer.load(stored.archive)
    csv = pd.read_csv(stored.metadata)
    assert list(data.classes.columns) == list(csv.columns)
    assert len(data.classes) == len(csv) == 3
    # written back, the table is the CSV byte for byte
    assert data.classes.to_csv(index=False, lineterminator="\n") == stored.metadata.read_text()
    assert data.classes["WNID"].tolist() == SUBSET
    assert data.classes["human_label"].tolist() == [NAMES[w] for w in SUBSET]
    assert data.classes["subset_label"].tolist() == [0, 1, 2]
    assert data.classes["num_train_images"].tolist() == [4, 11, 3]
    assert data.classes["num_val_images"].tolist() == [3, 3, 2]
    # from the built-in class table (the tree has no map_clsloc.txt and a 4-class mapping file)
    assert data.classes["original_label"].tolist() == [382, 449, 5]
    assert data.classes["imagenet_index"].tolist() == [491, 0, 217]


def test_no_csv_gives_no_classes(built, tmp_path):
    stored, _ = built
    copy = tmp_path / "copy_cls.npz"
    shutil.copyfile(stored.archive, copy)
    data = packer.load(copy)
    assert data.classes is None
    assert np.array_equal(data.y_train, read_npz(stored.archive)["y_train"])


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(packer.UserError, match=str(tmp_path / "missing.npz")):
        packer.load(tmp_path / "missing.npz")
    junk = tmp_path / "junk_cls.npz"
    junk.write_text("not a zip file at all\n")
    with pytest.raises(packer.UserError, match=str(junk)):
        packer.load(junk)
