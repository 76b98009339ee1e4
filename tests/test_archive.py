"""The archive: same bytes for any worker count, a valid ZIP / npz, ZIP64 past 4 GiB, CRC-32 combining."""
import io
import os
import random
import shutil
import subprocess
import zipfile
import zlib

import numpy as np
import pytest

import packer
from helpers import (A, B, C, D, KEYS, assert_rows_are, build, kaggle_tree, read_npz, sha256, write_list)
from packer.crc32 import crc32_combine
from packer.npz import ArraySpec, StoredNpzWriter

# 40 + 30 + 5 images of the subset in train, 44 in val (D's 7 left out): several chunks of 32 in each split
COUNTS = {A: 40, B: 30, C: 5, D: 2}
VAL = {n: [A, B, C, D, B, A, A][n % 7] for n in range(1, 52)}
ROW = 224 * 224 * 3


@pytest.fixture(scope="module")
def tree(module_tmp_path_factory):
    return kaggle_tree(module_tmp_path_factory.mktemp("archive") / "kaggle", counts=COUNTS, val=VAL)


@pytest.fixture(scope="module")
def class_list(module_tmp_path_factory):
    return write_list(module_tmp_path_factory.mktemp("lists") / "abc.txt", [B, C, A])


@pytest.fixture(scope="module")
def stored(tree, class_list, module_tmp_path_factory):
    return build(class_list, tree.data_dir, module_tmp_path_factory.mktemp("stored")).archive


@pytest.fixture(scope="module")
def compressed(tree, class_list, module_tmp_path_factory):
    return build(class_list, tree.data_dir, module_tmp_path_factory.mktemp("compressed"), compress=True).archive


def test_rows_of_a_multi_chunk_archive(tree, stored):
    z = read_npz(stored)
    paths, labels, ids = tree.expected_train([B, C, A])
    assert len(paths) == 75
    assert z["y_train"].tolist() == labels.tolist() and z["train_id"].tolist() == ids.tolist()
    assert_rows_are(z["X_train"], paths)
    paths, labels, ids = tree.expected_val([B, C, A])
    assert len(paths) == 44
    assert z["y_val"].tolist() == labels.tolist() and z["val_id"].tolist() == ids.tolist()
    assert_rows_are(z["X_val"], paths)


@pytest.mark.parametrize("workers", [2, 3])
def test_same_bytes_for_any_worker_count(tree, class_list, stored, tmp_path, workers):
    again = build(class_list, tree.data_dir, tmp_path / "out", workers=workers).archive
    assert sha256(again) == sha256(stored)
    assert (tmp_path / "out" / "abc_cls_metadata.csv").read_bytes() == stored.with_name(
        "abc_cls_metadata.csv").read_bytes()


@pytest.mark.parametrize("workers", [2, 3])
def test_compressed_same_bytes_for_any_worker_count(tree, class_list, compressed, tmp_path, workers):
    again = build(class_list, tree.data_dir, tmp_path / "out", workers=workers, compress=True).archive
    assert sha256(again) == sha256(compressed)


def test_stored_archive_structure(stored):
    with zipfile.ZipFile(stored) as zf:
        assert zf.testzip() is None
        infos = zf.infolist()
        assert [i.filename for i in infos] == [k + ".npy" for k in KEYS]
        assert all(i.compress_type == zipfile.ZIP_STORED for i in infos)
        assert all(i.date_time == (1980, 1, 1, 0, 0, 0) for i in infos)
        sizes = {i.filename: i.file_size for i in infos}
    # .npy header (a multiple of 64 bytes) + data
    assert sizes["X_train.npy"] - 75 * ROW in (64, 128)
    assert sizes["X_val.npy"] - 44 * ROW in (64, 128)
    with np.load(stored) as z:
        assert z.files == KEYS
        assert z["X_train"].dtype == np.uint8 and z["X_train"].shape == (75, 224, 224, 3)
        assert z["X_val"].dtype == np.uint8 and z["X_val"].shape == (44, 224, 224, 3)
        for key, n in (("y_train", 75), ("train_id", 75), ("y_val", 44), ("val_id", 44)):
            assert z[key].dtype == np.int32 and z[key].shape == (n,), key


def test_compressed_archive_structure_and_contents(stored, compressed):
    with zipfile.ZipFile(compressed) as zf:
        assert zf.testzip() is None
        infos = zf.infolist()
        assert [i.filename for i in infos] == [k + ".npy" for k in KEYS]
        assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in infos)
    assert os.path.getsize(compressed) < os.path.getsize(stored) / 10  # uniform images deflate well
    a, b = read_npz(stored), read_npz(compressed)
    for key in KEYS:
        assert a[key].dtype == b[key].dtype
        assert np.array_equal(a[key], b[key]), key


@pytest.mark.skipif(shutil.which("unzip") is None, reason="Info-ZIP unzip not installed")
def test_another_zip_reader_accepts_the_archives(stored, compressed):
    for archive in (stored, compressed):
        proc = subprocess.run(["unzip", "-t", str(archive)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "No errors detected" in proc.stdout
        assert [line.split()[1] for line in proc.stdout.splitlines() if "testing:" in line] == [
            k + ".npy" for k in KEYS]


def test_no_path_or_host_in_archive(stored, tree):
    data = stored.read_bytes()
    assert str(tree.root).encode() not in data
    assert os.uname().nodename.encode() not in data


@pytest.mark.parametrize("compress", [False, True])
def test_subset_with_no_val_images(tmp_path, compress):
    tree = kaggle_tree(tmp_path / "kaggle", counts={A: 35, B: 2}, val={1: B, 2: B})
    result = build(write_list(tmp_path / "a.txt", [A]), tree.data_dir, tmp_path / "out", compress=compress)
    with zipfile.ZipFile(result.archive) as zf:
        assert zf.testzip() is None
    z = read_npz(result.archive)
    assert z["X_train"].shape == (35, 224, 224, 3)
    assert z["X_val"].shape == (0, 224, 224, 3) and z["X_val"].dtype == np.uint8
    assert z["y_val"].shape == (0,) and z["val_id"].shape == (0,) and z["y_val"].dtype == np.int32
    assert_rows_are(z["X_train"], tree.expected_train([A])[0])


@pytest.mark.parametrize("compress", [False, True])
def test_subset_with_no_train_images(tmp_path, compress):
    """A listed class whose train folder is empty: 0 train rows, its val images still packed."""
    tree = kaggle_tree(tmp_path / "kaggle", counts={A: 3, B: 0}, val={1: B, 2: A, 3: B})
    assert (tree.train_dir / B).is_dir()
    result = build(write_list(tmp_path / "b.txt", [B]), tree.data_dir, tmp_path / "out", compress=compress)
    with zipfile.ZipFile(result.archive) as zf:
        assert zf.testzip() is None
    z = read_npz(result.archive)
    assert z["X_train"].shape == (0, 224, 224, 3) and z["y_train"].shape == (0,)
    assert z["val_id"].tolist() == [1, 3] and z["y_val"].tolist() == [0, 0]
    assert_rows_are(z["X_val"], [tree.val_path(1), tree.val_path(3)])


# -- ZIP64 --------------------------------------------------------------------------

def _crc_of_zeros(length: int) -> int:
    """CRC-32 of ``length`` zero bytes, by doubling (crc32_combine is checked against zlib below)."""
    crc, block, size = 0, zlib.crc32(b"\0"), 1
    while length:
        if length & 1:
            crc = crc32_combine(crc, block, size)
        block, size, length = crc32_combine(block, block, size), size * 2, length >> 1
    return crc


def test_zip64_stored_writer(tmp_path, monkeypatch):
    if shutil.disk_usage(tmp_path).free < 6e9:
        pytest.skip("needs 6 GB free (the file is sparse, but stay safe)")
    # The writer reads every finished byte back into a running SHA-256; over 4 GiB of holes that
    # alone takes 15-30 s here. This test is about the ZIP64 layout, so that read-back is skipped.
    monkeypatch.setattr(StoredNpzWriter, "_advance_hash", lambda self: None, raising=False)
    n, m = 28600, 2
    assert n * ROW > 0xFFFFFFFF
    specs = [ArraySpec("X_train", "|u1", (n, 224, 224, 3)), ArraySpec("y_train", "<i4", (n,)),
             ArraySpec("train_id", "<i4", (n,)), ArraySpec("X_val", "|u1", (m, 224, 224, 3)),
             ArraySpec("y_val", "<i4", (m,)), ArraySpec("val_id", "<i4", (m,))]
    rng = np.random.default_rng(0)
    y_train = rng.integers(0, 30, n, dtype=np.int32)
    arrays = {"y_train": y_train, "train_id": np.arange(1, n + 1, dtype=np.int32),
              "y_val": np.array([3, 7], np.int32), "val_id": np.array([5, 9], np.int32)}
    first, last = (rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(2))
    val_rows = rng.integers(0, 256, (m, 224, 224, 3), dtype=np.uint8)
    path = tmp_path / "big.npz"
    writer = StoredNpzWriter(str(path), specs, arrays)
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, first.tobytes(), writer.pixel_offset("X_train", 0))
        os.pwrite(fd, last.tobytes(), writer.pixel_offset("X_train", n - 1))
        os.pwrite(fd, val_rows.tobytes(), writer.pixel_offset("X_val", 0))
    finally:
        os.close(fd)
    writer.add_chunk("X_train", zlib.crc32(first.tobytes()), ROW)
    writer.add_chunk("X_train", _crc_of_zeros((n - 2) * ROW), (n - 2) * ROW)
    writer.add_chunk("X_train", zlib.crc32(last.tobytes()), ROW)
    writer.add_chunk("X_val", zlib.crc32(val_rows.tobytes()), m * ROW)
    writer.close()
    assert os.stat(path).st_blocks * 512 < 100e6  # still sparse

    with zipfile.ZipFile(path) as zf:
        infos = {i.filename: i for i in zf.infolist()}
        assert list(infos) == [k + ".npy" for k in KEYS]
        x_train = infos["X_train.npy"]
        header_bytes = x_train.file_size - n * ROW
        assert header_bytes in (64, 128)
        assert x_train.compress_size == x_train.file_size
        assert infos["X_val.npy"].file_size == header_bytes + m * ROW
        assert infos["X_val.npy"].header_offset > 0xFFFFFFFF
        with zf.open("X_train.npy") as member:
            header = member.read(header_bytes)
            assert member.read(ROW) == first.tobytes()
        stream = io.BytesIO(header)
        assert np.lib.format.read_magic(stream) == (1, 0)
        assert np.lib.format.read_array_header_1_0(stream) == ((n, 224, 224, 3), False, np.dtype(np.uint8))
        # the CRC in the directory is that of the member's bytes (zlib over the zeros: ~1.5 s)
        crc = zlib.crc32(header)
        crc = zlib.crc32(first.tobytes(), crc)
        zeros = bytes(64 << 20)
        remaining = (n - 2) * ROW
        while remaining:
            step = min(remaining, len(zeros))
            crc = zlib.crc32(memoryview(zeros)[:step], crc)
            remaining -= step
        crc = zlib.crc32(last.tobytes(), crc)
        assert x_train.CRC == crc
        # small members read to the end, so zipfile checks their CRC
        for key, want in (("y_train", y_train), ("X_val", val_rows), ("val_id", arrays["val_id"])):
            with zf.open(key + ".npy") as member:
                assert np.array_equal(np.lib.format.read_array(member), want)

    if shutil.which("unzip"):  # another reader of the ZIP64 directory (listing only: no 4 GiB read)
        listing = subprocess.run(["unzip", "-l", str(path)], capture_output=True, text=True, timeout=60)
        assert listing.returncode == 0, listing.stdout + listing.stderr
        assert f"{header_bytes + n * ROW}  1980-01-01 00:00   X_train.npy" in listing.stdout

    data = packer.load(path, mmap=True)
    assert list(data.keys()) == KEYS
    assert isinstance(data.X_train, np.memmap) and data.X_train.shape == (n, 224, 224, 3)
    assert np.array_equal(data.X_train[0], first)
    assert np.array_equal(data.X_train[n - 1], last)
    assert not data.X_train[1].any() and not data.X_train[n - 2].any()
    assert np.array_equal(data.X_val, val_rows)
    assert np.array_equal(data.y_train, y_train)
    assert data.train_id[-1] == n
    assert data.classes is None


# -- CRC-32 combining ---------------------------------------------------------------

@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="no posix_fadvise on this platform")
def test_flush_syncs_then_drops_only_what_the_checksum_has_read(tmp_path, monkeypatch):
    rows = np.arange(3 * 4 * 4 * 3, dtype=np.uint8).reshape(3, 4, 4, 3)
    specs = [ArraySpec("X_train", "|u1", rows.shape), ArraySpec("y_train", "<i4", (3,))]
    writer = StoredNpzWriter(str(tmp_path / "a.npz"), specs, {"y_train": np.zeros(3, np.int32)})
    calls = []
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(("fsync", fd)))
    monkeypatch.setattr(os, "posix_fadvise", lambda *args: calls.append(("fadvise", *args)))
    writer.write_rows("X_train", 0, rows[:2].tobytes())
    writer.add_chunk("X_train", zlib.crc32(rows[:2].tobytes()), rows[:2].nbytes)
    writer.flush()
    hashed = writer.pixel_offset("X_train", 2)  # the rows reported so far, and everything before them
    assert calls == [("fsync", writer._fd), ("fadvise", writer._fd, 0, hashed, os.POSIX_FADV_DONTNEED)]
    writer.abort()


def test_crc32_combine_equals_crc_of_concatenation():
    rng = random.Random(1234)
    for _ in range(300):
        data = rng.randbytes(rng.choice([0, 1, 2, 7, 100, 4096, 70000]))
        cut = rng.randint(0, len(data))
        a, b = data[:cut], data[cut:]
        assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(data)


def test_crc32_combine_many_parts():
    rng = random.Random(99)
    data = rng.randbytes(200_000)
    cuts = sorted(rng.sample(range(1, len(data)), 40))
    parts = [data[i:j] for i, j in zip([0] + cuts, cuts + [len(data)])]
    crc = 0
    for part in parts:
        crc = crc32_combine(crc, zlib.crc32(part), len(part))
    assert crc == zlib.crc32(data)
    assert crc32_combine(12345, zlib.crc32(b""), 0) == 12345


def test_fast_build_is_within_one_of_exact(tmp_path):
    from helpers import photo

    tree = kaggle_tree(tmp_path / "kaggle", counts={A: 3, B: 1}, val={1: A, 2: B})
    sizes = [(500, 375), (375, 500), (333, 500), (640, 480), (80, 60), (1000, 255)]
    for k, path in enumerate(sorted(tree.colours)):
        photo(*sizes[k % len(sizes)], seed=k).save(path, "JPEG", quality=90)
    class_list = write_list(tmp_path / "ab.txt", [A, B])
    exact = read_npz(build(class_list, tree.data_dir, tmp_path / "exact").archive)
    fast = read_npz(build(class_list, tree.data_dir, tmp_path / "fast", fast=True).archive)
    for key in ("X_train", "X_val"):
        diff = np.abs(exact[key].astype(int) - fast[key].astype(int))
        assert diff.max() <= 1, key
    assert not np.array_equal(exact["X_train"], fast["X_train"])
    for key in ("y_train", "train_id", "y_val", "val_id"):
        assert np.array_equal(exact[key], fast[key])
