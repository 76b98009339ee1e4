"""``imagenet-subset demo``: writes a synthetic tree, packs the imagenette classes of it."""
import zipfile

import numpy as np
import pandas as pd
import pytest

from helpers import KEYS, read_npz, run_main
from packer.subset import read_subset_list

pytestmark = pytest.mark.slow  # full builds: skipped by pytest -m "not slow"


def test_demo(tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = run_main(["demo", "--out_dir", out], capsys)
    assert code == 0, err
    archive, csv = out / "demo_cls.npz", out / "demo_cls_metadata.csv"
    assert archive.is_file() and csv.is_file()
    with zipfile.ZipFile(archive) as zf:
        assert zf.testzip() is None
    z = read_npz(archive)
    assert list(z) == KEYS
    assert z["X_train"].shape == (200, 224, 224, 3) and z["X_train"].dtype == np.uint8
    assert z["X_val"].shape == (50, 224, 224, 3) and z["X_val"].dtype == np.uint8
    assert np.bincount(z["y_train"]).tolist() == [20] * 10
    assert np.bincount(z["y_val"]).tolist() == [5] * 10
    assert np.all(np.diff(z["train_id"]) > 0) and np.all(np.diff(z["val_id"]) > 0)
    table = pd.read_csv(csv)
    assert list(table.columns) == ["subset_label", "WNID", "human_label", "original_label", "imagenet_index",
                                   "num_train_images", "num_val_images"]
    assert table["WNID"].tolist() == list(read_subset_list("imagenette").wnids)
    assert table["subset_label"].tolist() == list(range(10))
    assert table["num_train_images"].tolist() == [20] * 10 and table["num_val_images"].tolist() == [5] * 10
    assert table["human_label"].iloc[0] == "tench, Tinca tinca"
    assert str(archive) in stdout
    assert "Traceback" not in err
