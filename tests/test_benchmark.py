"""bench/benchmark.py runs on tiny trees in each mode and writes its table (no timing assertions)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow  # full builds: skipped by pytest -m "not slow"

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
CASES = ["(a) packer `main.py`, 1 worker", "(a) packer `main.py`, 2 workers", "(b) original-style loop",
         "(c) bare transform loop", "(d) Pillow decode only", "(e) packer `main.py --fast`", "(e) fast transform loop",
         "(f) start-up", "(g) fixed cost: packer on 32 images, 1 worker", "(g) fixed cost: packer on 32 images, 2 workers"]
COLUMNS = ["case", "images", "seconds (median)", "images/s", "ratio to (b)", "parallel eff.", "peak MiB (RSS sum)",
           "output MiB"]


def _bench(tmp_path, *options):
    results = tmp_path / "results"
    proc = subprocess.run([sys.executable, str(BENCH / "benchmark.py"), "--work_dir", str(tmp_path / "work"),
                           "--results_dir", str(results), "--retry_busy", "0", *options],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, results


def _photos(folder: Path, sizes) -> Path:
    """``folder`` with one photo-like JPEG ``p<i>.jpg`` of each (width, height) of ``sizes``."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, size in enumerate(sizes):
        pixels = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).resize(size, Image.BICUBIC).save(folder / f"p{i}.jpg", quality=90)
    return folder


def _table_rows(markdown: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in markdown.splitlines()
            if line.startswith("| ") and not line.startswith("| ---")]


def test_default_mode_synthetic_tree(tmp_path):
    stdout, results = _bench(tmp_path, "--classes", "2", "--train_per_class", "5", "--val_per_class", "2",
                             "--repeats", "1", "--workers", "2")
    latest = (results / "latest.md").read_text()
    assert latest == (results / "default.md").read_text()
    assert latest.strip() in stdout
    rows = _table_rows(latest)
    header, body = rows[0], rows[1:]
    assert all(column in header for column in COLUMNS)
    for case in CASES:
        assert any(row[0].startswith(case) for row in body), case
    assert any("machine ceiling" in row[0] for row in body)
    images = [row for row in body if row[0].startswith("(a)")][0][1]
    assert images == "14"  # 2 classes x (5 train + 2 val)
    for section in ("## Key figures", "## Machine", "**CPU**", "**Pillow**", "**numpy**", "**Python**", "**RAM**"):
        assert section in latest

    data = json.loads((results / "default.json").read_text())
    assert data["images"] == 14
    assert data["checks"]["workers_identical"] is True  # same bytes with 1 and 2 workers
    assert data["checks"]["original_identical"] is True  # same arrays as the original-style loop
    assert data["key"]["fast_max_diff"] <= 1
    for case in ("a1", "aN", "b", "eN"):
        run = data["runs"][case][0]
        assert run["rss"] > 10 and run["output"] > 0  # memory was sampled, an archive was written
    assert not (tmp_path / "work" / "out").exists()  # archives removed without --keep


def test_default_mode_from_a_folder_of_photos(tmp_path):
    photos = _photos(tmp_path / "photos", [(500, 375), (375, 500), (320, 240)])
    (photos / "notes.txt").write_text("not an image")
    stdout, results = _bench(tmp_path, "--images", str(photos), "--classes", "2", "--train_per_class", "4",
                             "--val_per_class", "1", "--repeats", "1", "--workers", "2")
    assert "real photos from" in (results / "latest.md").read_text()
    train = tmp_path / "work" / "tree-photos" / "ILSVRC" / "Data" / "CLS-LOC" / "train"
    links = sorted(train.rglob("*.JPEG"))
    assert len(links) == 8 and all(p.is_symlink() for p in links)


def test_big_mode_tiny(tmp_path):
    stdout, results = _bench(tmp_path, "--big", "--big_classes", "4", "--big_train_per_class", "3",
                             "--big_val_per_class", "1", "--workers", "2")
    report = (results / "big.md").read_text()
    rows = _table_rows(report)[1:]
    assert [r[0] for r in rows] == ["small: 1 classes", "big: 4 classes"]
    assert all(r[-1] == "ok" for r in rows)  # archive CRCs and spot-checked rows
    data = json.loads((results / "big.json").read_text())
    assert data["runs"]["big"]["images"] == 16 and data["runs"]["small"]["images"] == 4


def test_listing_mode_tiny(tmp_path):
    stdout, results = _bench(tmp_path, "--listing", "--listing_classes", "12", "--listing_images", "1000",
                             "--listing_val", "60", "--repeats", "1")
    report = (results / "listing.md").read_text()
    rows = _table_rows(report)[1:]
    assert [r[0] for r in rows] == ["with train_cls.txt", "without train_cls.txt"]
    tree = tmp_path / "work" / "tree-listing"
    train_cls = tree / "ILSVRC" / "ImageSets" / "CLS-LOC" / "train_cls.txt"
    assert len(train_cls.read_text().splitlines()) == 1000  # restored after the run without it
    assert sum(1 for _ in (tree / "ILSVRC" / "Data" / "CLS-LOC" / "train").rglob("*.JPEG")) == 1000
    assert len(list((tree / "ILSVRC" / "Data" / "CLS-LOC" / "val").iterdir())) == 60


def test_memory_sampler_sees_child_processes(tmp_path):
    sys.path.insert(0, str(BENCH))
    try:
        import bench_measure
    finally:
        sys.path.remove(str(BENCH))
    child = "import numpy, time; a = numpy.ones(150 * 2**20, dtype=numpy.uint8); time.sleep(0.5)"
    parent = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}], check=True)"
    result = bench_measure.run_timed([sys.executable, "-c", parent])
    assert result.processes >= 2
    assert result.peak_rss_mib >= 150


def test_sizes_bench_tiny(tmp_path):
    """bench/bench_sizes.py on a few small photos: its tables, and the same bytes as the separate builds."""
    photos = _photos(tmp_path / "photos", [(160, 120), (120, 160), (100, 100)])
    results = tmp_path / "results"
    proc = subprocess.run([sys.executable, str(BENCH / "bench_sizes.py"), "--images", str(photos), "--classes", "2",
                           "--train_per_class", "4", "--val_per_class", "1", "--repeats", "1", "--retry_busy", "0",
                           "--workers", "2", "--work_dir", str(tmp_path / "work"), "--results_dir", str(results)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (results / "sizes.md").read_text()
    assert report == (results / "latest.md").read_text()
    assert report.strip() in proc.stdout
    tables = [_table_rows(block) for block in report.split("\n\n") if block.startswith("| ")]
    assert len(tables) == 2
    (header, *timing), (byte_header, *pairs) = tables
    assert header[:6] == ["case", "archives", "images", "seconds (median)", "images/s", "peak MiB (RSS sum)"]
    assert [row[0] for row in timing] == [
        "(A) `--sizes 256/224,72/64,squash:32`", "(B) `--resize_size 256 --crop_size 224`",
        "(B) `--resize_size 72 --crop_size 64`", "(B) `--resize squash --crop_size 32`",
        "(B) the three separate builds, summed per round", "(C) `--sizes 256/224,squash:32`"]
    assert all(row[2] == "10" for row in timing)  # 2 classes x (4 train + 1 val)
    assert timing[0][1] == "`bench_subset_cls.npz`, `bench_subset_64_cls.npz`, `bench_subset_32_squash_cls.npz`"
    assert byte_header[:3] == ["build", "size", "archive"] and byte_header[-1] == "bytes identical"
    assert [(row[0], row[1]) for row in pairs] == [("(A)", "256/224"), ("(A)", "72/64"), ("(A)", "squash:32"),
                                                   ("(C)", "256/224"), ("(C)", "squash:32")]
    assert all(row[-1] == "yes" for row in pairs)
    for key in ("(1) three separate builds", "(2) adding squash:32", "peak memory", "## Machine"):
        assert key in report
    data = json.loads((results / "sizes.json").read_text())
    assert data["images"] == 10 and data["key"]["bytes_identical"] is True
    assert all(run["rss"] > 10 for runs in data["runs"].values() for run in runs)  # memory was sampled
    assert not (tmp_path / "work" / "out").exists()  # archives removed without --keep


def test_load_bench_tiny(tmp_path):
    """bench/bench_load.py on a few small photos: the packer rows are measured; the ImageFolder rows say why
    not where torchvision is missing (and the packer.torch rows where torch is)."""
    def importable(module: str) -> bool:
        return subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True).returncode == 0

    photos = _photos(tmp_path / "photos", [(160, 120), (120, 160), (100, 100)])
    results = tmp_path / "results"
    proc = subprocess.run([sys.executable, str(BENCH / "bench_load.py"), "--images", str(photos), "--classes", "2",
                           "--train_per_class", "6", "--big_train_per_class", "15", "--batch_size", "4",
                           "--repeats", "1", "--retry_busy", "0", "--work_dir", str(tmp_path / "work"),
                           "--results_dir", str(results)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (results / "load.md").read_text()
    assert report == (results / "latest.md").read_text()
    assert report.strip() in proc.stdout
    header, *rows = _table_rows(report.split("\n\n")[2])
    assert header[:7] == ["case", "data", "page cache", "images", "seconds (median)", "images/s",
                          "x ImageFolder (same cache)"]
    by_case = {(row[0].split(")")[0] + ")", row[2], "big" in row[1]): row for row in rows}
    has_torch, has_vision = importable("torch"), importable("torchvision")
    expected = [("(BU)", "warm", False), ("(BF)", "warm", False), ("(BH)", "warm", False), ("(BU)", "cold", False),
                ("(BF)", "cold", False), ("(BU)", "warm", True), ("(BF)", "warm", True)]
    torch_rows = [("(PT)", "warm", False), ("(PT)", "cold", False), ("(PT)", "warm", True), ("(PU)", "warm", False)]
    folder_rows = [("(IF)", "warm", False), ("(IF)", "cold", False)]
    assert set(by_case) == set(expected + torch_rows + folder_rows)
    for case in expected + (torch_rows if has_torch else []) + (folder_rows if has_vision else []):
        row = by_case[case]
        assert row[3] == ("12" if not case[2] else "30"), row  # 2 classes x 6 rows; the big archive 2 x 15
        assert float(row[5].strip("*").replace(",", "")) > 0, row
    if not has_vision:
        assert all(by_case[case][3] == "not measured: torchvision not installed" for case in folder_rows)
        assert "- warm: not measured (torchvision not installed)" in report
    if not has_torch:
        assert all(by_case[case][3] == "not measured: torch not installed" for case in torch_rows)
    cold = [row for (_, cache, _), row in by_case.items() if cache == "cold" and row[4]]
    resident = header.index("resident before")
    assert cold and all(row[resident] == "0%" for row in cold)  # every page of the files dropped before the epoch
    memory = [block for block in report.split("\n\n") if block.startswith("| loader |")]
    assert len(memory) == 1
    memory_header, *memory_rows = _table_rows(memory[0])
    assert memory_header[:3] == ["loader", "data", "consumer"] and "below the bound" in memory_header
    loaders = ["(BU)", "(BF)"] + (["(PT)"] if has_torch else [])
    assert sorted((row[0].split(")")[0] + ")", row[1], row[2]) for row in memory_rows) == sorted(
        [(name, data, consumer) for name in loaders for data in ("12 rows", "30 rows (big)")
         for consumer in ("reads each batch", "sleeps 100 ms per batch")]
        + ([("(PU)", "12 rows", "reads each batch")] if has_torch else []))
    for key in ("## Key figures", "- memory, (BU)", "## Where the time goes", "## Machine"):
        assert key in report
    data = json.loads((results / "load.json").read_text())
    assert data["rows"] == 12 and data["big_rows"] == 30
    for key in ("BU_warm", "BF_warm", "BU_big", "BF_big"):
        run = data["runs"][key][0]
        assert run["images"] == (data["big_rows"] if key.endswith("big") else data["rows"])
        assert run["hwm_above"] is not None and run["first_batch"] >= 0
    assert not (tmp_path / "work" / "out").exists() and not (tmp_path / "work" / "big" / "out").exists()


def test_bench_urls_smoke(tmp_path):
    """bench/bench_urls.py with a few photos, a 20 ms server and a 3,000-line list: its three tables and key figures."""
    photos = _photos(tmp_path / "photos", [(160, 120), (120, 160), (100, 100), (140, 100), (100, 140), (128, 128)])
    results = tmp_path / "results"
    proc = subprocess.run([sys.executable, str(BENCH / "bench_urls.py"), "--images", str(photos), "--labels", "3",
                           "--per_label", "2", "--delay_ms", "20", "--repeats", "1", "--retry_busy", "0",
                           "--lines", "3000", "--wnids", "30", "--select", "5", "--rest_candidates", "100",
                           "--work_dir", str(tmp_path / "work"), "--results_dir", str(results)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (results / "urls.md").read_text()
    assert report == (results / "latest.md").read_text()
    assert report.strip() in proc.stdout
    for section in ("## (1) Fetch throughput", "## (2) List selection at full scale", "## (3) Download + pack",
                    "## Key figures", "## Machine"):
        assert section in report
    tables = [_table_rows(block) for block in report.split("\n\n") if block.startswith("| ")]
    (fetch_header, *fetch), (select_header, *select) = tables[:2]
    assert fetch_header[:4] == ["case", "images", "seconds (median)", "images/s"]
    assert [row[0] for row in fetch] == ["`DownloadOptions(connections=32, per_host=32)`",
                                         "`DownloadOptions(connections=1, per_host=1)`"]
    assert all(row[1] == "6" for row in fetch)  # 3 labels x 2 photos
    assert [row[0][:3] for row in select] == ["(a)", "(b)", "(c)"]

    data = json.loads((results / "urls.json").read_text())
    key = data["key"]
    assert data["images"] == 6 and key["fetch_targets_apply"] is False  # not 50 ms: no verdict on the targets
    assert 0 < key["fetch_one_ips"] <= key["fetch_one_limit_ips"] == 50  # the server held each answer 20 ms
    assert key["fetch_many_ips"] > 0 and key["fetch_ratio"] > 0
    assert all(run["connections"] == 1 for run in data["fetch"]["1"])  # one kept-alive connection
    assert key["select_lines"] == 3000
    for case in ("plain", "rest", "tgz"):
        assert 0 < key[f"select_{case}_seconds"] < 30
        assert 10 < key[f"select_{case}_after_imports_mib"] <= key[f"select_{case}_peak_mib"] < 1024
        run = data["select"]["runs"][case][0]
        assert run["selected_images"] == data["select"]["expected_images"] > 0 and run["selected_wnids"] == 5
    assert data["select"]["runs"]["rest"][0]["rest_images"] == 100
    if key["e2e_measured"]:  # main.py has --urls
        run = data["e2e"]["runs"][0]
        assert run["images"] == 6 and run["download"] > 0 and run["pack"] >= 0 and run["rest"] > 0  # 0.1 s steps
        assert key["e2e_seconds"] > key["e2e_download_seconds"]
    else:
        assert "Not measured" in report.split("## (3)")[1]
    assert not (tmp_path / "work" / "fetch").exists() and not (tmp_path / "work" / "e2e").exists()
