"""Peak memory of a build does not grow with the number of images."""
import os
import subprocess
import time

import numpy as np
import psutil
import pytest
from PIL import Image

from helpers import PYTHON, REPO, noise, subprocess_env, write_list

pytestmark = pytest.mark.slow  # full builds: skipped by pytest -m "not slow"

SMALL, EXTRA = "n08000001", "n08000002"
MIB = 1 << 20


@pytest.fixture(scope="module")
def tree(module_tmp_path_factory):
    """300 images of SMALL and 900 more of EXTRA, 300x240 (hard links to 8 JPEGs)."""
    root = module_tmp_path_factory.mktemp("memory")
    sources = []
    for k in range(8):
        path = root / f"source{k}.JPEG"
        Image.fromarray(noise(75, 60, seed=k)).resize((300, 240), Image.BICUBIC).save(path, "JPEG", quality=90)
        sources.append(path)
    data_dir = root / "data"
    for wnid, n in ((SMALL, 300), (EXTRA, 900)):
        folder = data_dir / "train" / wnid
        folder.mkdir(parents=True)
        for i in range(n):
            os.link(sources[i % 8], folder / f"{wnid}_{i + 1}.JPEG")
    (data_dir / "val" / SMALL).mkdir(parents=True)
    (data_dir / "val" / EXTRA).mkdir(parents=True)
    write_list(root / "small.txt", [SMALL])
    write_list(root / "large.txt", [SMALL, EXTRA])
    return root


def _peak_rss(argv) -> int:
    """Run argv; return the peak of the summed RSS of the process and all its descendants (sampled every 20 ms)."""
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=subprocess_env())
    peak = 0
    try:
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            total = 0
            try:
                processes = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            for process in processes:
                try:
                    total += process.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            peak = max(peak, total)
            time.sleep(0.02)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()
    return peak


def test_peak_memory_is_flat(tree, tmp_path):
    peaks, sizes = {}, {}
    for name in ("small", "large"):
        out = tmp_path / name
        peaks[name] = _peak_rss([PYTHON, "main.py", "--subset_name", str(tree / f"{name}.txt"), "--data_dir",
                                 str(tree / "data"), "--out_dir", str(out), "--workers", "2", "--quiet"])
        sizes[name] = os.path.getsize(out / f"{name}_cls.npz")
    with np.load(tmp_path / "large" / "large_cls.npz") as z:
        assert z["X_train"].shape == (1200, 224, 224, 3)
    # the archive is 4x larger (up to headers) ...
    assert abs(sizes["large"] - 4 * sizes["small"]) < 16 * 1024, sizes
    assert sizes["large"] > 1200 * 224 * 224 * 3
    # ... but the peak memory is not (the pixels alone would add 135 MiB)
    assert peaks["small"] > 0
    assert peaks["large"] < peaks["small"] + 100 * MIB, {k: v / MIB for k, v in peaks.items()}
