"""packer.batches, packer.torch and ``bench-load`` (issue #16): training batches read straight from an archive.

Every expectation is computed here from ``packer.load(..., mmap=False)`` arrays and the documented order
(``np.random.default_rng([seed, epoch]).permutation(N)``, rank r's block of ``N // world_size`` rows), never
from the reader's own helpers. The images are photo-like noise, so every row (and every pixel of a row)
differs and a misplaced row or a wrong transpose shows.
"""
import gc
import importlib.util
import json
import os
import pickle
import re
import shutil
import subprocess
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    COARSE,
    PYTHON,
    REPO,
    SUBSET,
    A,
    B,
    C,
    D,
    Images,
    assert_one_error_line,
    build,
    kaggle_tree,
    run_main,
    subprocess_env,
    write_list,
)

import packer

batches = packer.batches  # taken first thing: see test_packer_batches_is_the_function_after_importing_packer_torch

SIZE = 32
BATCH = 16
COUNTS = {A: 25, B: 17, C: 20, D: 2}  # 62 train rows of SUBSET (D left out), 8 val rows
N_TRAIN = 62
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


@pytest.fixture(scope="module")
def built(module_tmp_path_factory):
    """Archives of one tree: stored nhwc, stored nchw, compressed, 4 shards of <= 20 rows, with holdout."""
    root = module_tmp_path_factory.mktemp("batches")
    tree = kaggle_tree(root / "kaggle", counts=COUNTS, images=Images(photo=COARSE))
    class_list = write_list(root / "mine.txt", SUBSET)
    sizes = {"resize_size": 40, "crop_size": SIZE}
    out = {name: build(class_list, tree.data_dir, root / name, **sizes, **options)
           for name, options in {"stored": {}, "nchw": {"layout": "nchw"}, "compressed": {"compress": True},
                                 "sharded": {"shard_size": 20}, "holdout": {"holdout_per_class": 2}}.items()}
    paths = {name: result.archive for name, result in out.items()}
    assert paths["sharded"].name == "mine_cls.index.json" and len(out["sharded"].archives) == 4
    return paths


@pytest.fixture(scope="module")
def arrays(built):
    """The arrays of the stored nhwc archive, in memory (no memory map kept open)."""
    data = packer.load(built["stored"], mmap=False)
    X, y = data.X_train, data.y_train
    assert X.shape == (N_TRAIN, SIZE, SIZE, 3) and y.dtype == np.int32
    assert len({row.tobytes() for row in X}) == N_TRAIN  # every row differs
    return {"X_train": X, "y_train": y, "X_val": data.X_val, "y_val": data.y_val}


def loaded(path, split="train"):
    data = packer.load(path, mmap=False)
    return np.asarray(data[f"X_{split}"]), np.asarray(data[f"y_{split}"])


def order_of(n, seed=0, epoch=0, shuffle=True, rank=0, world_size=1):
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    share = n // world_size
    return order[rank * share:(rank + 1) * share]


def collect(epoch):
    """All batches of an epoch: (list of X, list of y)."""
    pairs = list(epoch)
    return [X for X, _ in pairs], [y for _, y in pairs]


def joined(epoch):
    Xs, ys = collect(epoch)
    return np.concatenate(Xs), np.concatenate(ys)


def reference(X, mean=None, std=None, layout="nhwc"):
    """(x / 255 - mean) / std in float64, per channel of an nhwc uint8 array, then in ``layout``."""
    x = X.astype(np.float64) / 255
    if mean is not None:
        x = (x - np.asarray(mean)) / np.asarray(std)
    return x.transpose(0, 3, 1, 2) if layout == "nchw" else x


def batch_threads():
    return [t for t in threading.enumerate() if t.name == "packer-batches"]


def mapped(path) -> bool:
    return str(Path(path).resolve()) in Path("/proc/self/maps").read_text()


def open_fds_to(path) -> int:
    target = str(Path(path).resolve())
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}") == target
        except OSError:
            pass
    return count


# --------------------------------------------------------------------------- order, shares, batches


def test_shuffled_epoch_is_the_documented_permutation(built, arrays):
    epoch = batches(built["stored"], batch_size=BATCH, seed=3, epoch=5)
    Xs, ys = collect(epoch)
    assert len(epoch) == len(Xs) == 4  # 62 rows: 16 + 16 + 16 + 14
    assert [len(X) for X in Xs] == [16, 16, 16, 14]
    for X, y in zip(Xs, ys, strict=True):
        assert X.dtype == np.uint8 and X.shape[1:] == (SIZE, SIZE, 3) and X.flags.c_contiguous
        assert y.dtype == np.int32 and y.shape == (len(X),)
    order = order_of(N_TRAIN, seed=3, epoch=5)
    assert np.array_equal(np.concatenate(Xs), arrays["X_train"][order])
    assert np.array_equal(np.concatenate(ys), arrays["y_train"][order])


def test_unshuffled_epoch_keeps_row_order(built, arrays):
    X, y = joined(batches(built["stored"], batch_size=BATCH, shuffle=False))
    assert np.array_equal(X, arrays["X_train"]) and np.array_equal(y, arrays["y_train"])
    X, y = joined(batches(built["stored"], "val", batch_size=3, shuffle=False))
    assert np.array_equal(X, arrays["X_val"]) and np.array_equal(y, arrays["y_val"])


def test_same_seed_and_epoch_give_the_same_batches_other_epochs_and_seeds_differ(built):
    def epoch_of(**options):
        return joined(batches(built["stored"], batch_size=BATCH, **options))

    first, again = epoch_of(seed=7, epoch=2), epoch_of(seed=7, epoch=2)
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    for other in ({"seed": 7, "epoch": 3}, {"seed": 8, "epoch": 2}):
        X, _ = epoch_of(**other)
        assert not np.array_equal(X, first[0]), other
        # the same rows, in another order
        assert sorted(r.tobytes() for r in X) == sorted(r.tobytes() for r in first[0])
    # one Batches iterated twice serves the same epoch twice
    epoch = batches(built["stored"], batch_size=BATCH, seed=7, epoch=2)
    assert np.array_equal(joined(epoch)[0], joined(epoch)[0])


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_ranks_take_disjoint_equal_blocks_of_the_order(built, arrays, world_size):
    share = N_TRAIN // world_size
    seen = []
    for rank in range(world_size):
        epoch = batches(built["stored"], batch_size=BATCH, seed=1, epoch=4, rank=rank, world_size=world_size)
        assert len(epoch) == -(-share // BATCH)
        X, y = joined(epoch)
        rows = order_of(N_TRAIN, 1, 4, rank=rank, world_size=world_size)
        assert len(rows) == share
        assert np.array_equal(X, arrays["X_train"][rows]) and np.array_equal(y, arrays["y_train"][rows])
        seen += [r.tobytes() for r in X]
    assert len(seen) == len(set(seen)) == N_TRAIN - N_TRAIN % world_size
    full = np.random.default_rng([1, 4]).permutation(N_TRAIN)
    sitting_out = {arrays["X_train"][r].tobytes() for r in full[world_size * share:]}
    assert len(sitting_out) == N_TRAIN % world_size and not sitting_out & set(seen)


def test_unshuffled_ranks_take_consecutive_row_blocks(built, arrays):
    X, _ = joined(batches(built["stored"], batch_size=BATCH, shuffle=False, rank=1, world_size=3))
    assert np.array_equal(X, arrays["X_train"][20:40])


@pytest.mark.parametrize("batch_size, drop_last, sizes", [
    (16, False, [16, 16, 16, 14]), (16, True, [16, 16, 16]), (31, False, [31, 31]), (31, True, [31, 31]),
    (62, True, [62]), (100, False, [62]), (100, True, []), (1, True, [1] * 62)])
def test_drop_last_and_len(built, arrays, batch_size, drop_last, sizes):
    epoch = batches(built["stored"], batch_size=batch_size, drop_last=drop_last, seed=2)
    assert len(epoch) == len(sizes)
    Xs, ys = collect(epoch)
    assert [len(X) for X in Xs] == [len(y) for y in ys] == sizes
    if sizes:
        rows = order_of(N_TRAIN, seed=2)[:sum(sizes)]
        assert np.array_equal(np.concatenate(Xs), arrays["X_train"][rows])


def test_drop_last_with_ranks(built):
    # 62 // 3 = 20 rows per rank: two batches of 8 and a dropped one of 4
    epoch = batches(built["stored"], batch_size=8, drop_last=True, rank=2, world_size=3)
    assert len(epoch) == 2 and [len(X) for X, _ in epoch] == [8, 8]


def test_rows_of_a_batch_are_read_in_ascending_order_into_place(built, arrays, monkeypatch):
    offsets = []
    original = os.preadv

    def recording(fd, buffers, offset, *rest):
        offsets.append(offset)
        return original(fd, buffers, offset, *rest)

    monkeypatch.setattr(os, "preadv", recording)
    epoch = batches(built["stored"], batch_size=BATCH, seed=9, prefetch=0)
    row_bytes = SIZE * SIZE * 3
    order = order_of(N_TRAIN, seed=9)
    for number, (X, _) in enumerate(epoch):
        rows = order[number * BATCH:(number + 1) * BATCH]
        read, offsets[:] = list(offsets), []
        assert len(read) == len(rows)  # one read per row, no memory map
        assert read == sorted(read)  # sequential
        first = read[0] - int(rows.min()) * row_bytes  # where row 0 starts
        assert read == [first + int(r) * row_bytes for r in sorted(rows)]
        assert np.array_equal(X, arrays["X_train"][rows])  # each in its shuffled place


@pytest.mark.parametrize("dtype,normalize,layout", [("uint8", None, "nchw"), (None, "imagenet", "nchw"),
                                                    (None, "imagenet", "nhwc"), ("float32", None, "nchw")])
def test_formatted_batches_are_read_a_few_rows_at_a_time_in_ascending_order(built, arrays, monkeypatch,
                                                                             dtype, normalize, layout):
    """A batch in another format than the stored bytes is read a cache's worth of rows at a time
    (here 3 rows), still in ascending row order across the batch, each formatted into its place."""
    import packer.batching

    row_bytes = SIZE * SIZE * 3
    monkeypatch.setattr(packer.batching, "_CACHE_BYTES", 3 * row_bytes)
    offsets, reads = [], []
    original = os.preadv

    def recording(fd, buffers, offset, *rest):
        offsets.append(offset)
        return original(fd, buffers, offset, *rest)

    original_read = packer.batching.ImageRows.read

    def read(self, rows, out=None):
        reads.append(len(rows))
        return original_read(self, rows, out)

    monkeypatch.setattr(os, "preadv", recording)
    monkeypatch.setattr(packer.batching.ImageRows, "read", read)
    epoch = batches(built["stored"], batch_size=BATCH, seed=3, prefetch=0, dtype=dtype, normalize=normalize,
                    layout=layout)
    order = order_of(N_TRAIN, seed=3)
    for number, (X, y) in enumerate(epoch):
        rows = order[number * BATCH:(number + 1) * BATCH]
        assert reads == [3] * (len(rows) // 3) + ([len(rows) % 3] if len(rows) % 3 else [])
        assert offsets == sorted(offsets) and len(offsets) == len(rows)
        offsets[:], reads[:] = [], []
        if dtype == "uint8":
            assert X.dtype == np.uint8 and np.array_equal(X, arrays["X_train"][rows].transpose(0, 3, 1, 2))
        else:
            mean, std = (IMAGENET_MEAN, IMAGENET_STD) if normalize else (None, None)
            np.testing.assert_allclose(X, reference(arrays["X_train"][rows], mean, std, layout), rtol=1e-6, atol=1e-6)
        assert np.array_equal(y, arrays["y_train"][rows])


# --------------------------------------------------------------------------- format


@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
def test_float32_is_x_over_255(built, arrays, layout):
    X, _ = joined(batches(built["stored"], batch_size=BATCH, shuffle=False, dtype="float32", layout=layout))
    assert X.dtype == np.float32 and X.flags.c_contiguous
    np.testing.assert_allclose(X, reference(arrays["X_train"], layout=layout), rtol=1e-6, atol=1e-6)
    assert X.min() >= 0 and X.max() <= 1


@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
@pytest.mark.parametrize("dtype", [None, "float32"])
def test_normalize_imagenet(built, arrays, layout, dtype):
    X, y = joined(batches(built["stored"], batch_size=BATCH, seed=4, normalize="imagenet", dtype=dtype, layout=layout))
    order = order_of(N_TRAIN, seed=4)
    assert X.dtype == np.float32 and y.dtype == np.int32
    expected = reference(arrays["X_train"][order], IMAGENET_MEAN, IMAGENET_STD, layout)
    np.testing.assert_allclose(X, expected, rtol=1e-6, atol=1e-6)
    assert np.array_equal(y, arrays["y_train"][order])


def manifest_stats(path):
    stats = json.loads(Path(path).with_name("mine_cls.manifest.json").read_text())["X_train_stats"]
    return np.array(stats["mean"]) / 255, np.array(stats["std"]) / 255


def test_normalize_manifest_uses_its_x_train_stats(built, arrays):
    mean, std = manifest_stats(built["stored"])
    assert not np.allclose(mean, IMAGENET_MEAN, atol=0.01)  # the test tells them apart
    X, _ = joined(batches(built["stored"], "val", batch_size=BATCH, shuffle=False, normalize="manifest",
                          layout="nchw"))
    np.testing.assert_allclose(X, reference(arrays["X_val"], mean, std, "nchw"), rtol=1e-6, atol=1e-6)


def test_normalize_manifest_takes_the_numbers_of_the_manifest_exactly(built, arrays, tmp_path):
    archive = tmp_path / "mine_cls.npz"
    shutil.copyfile(built["stored"], archive)
    manifest = json.loads(Path(built["stored"]).with_name("mine_cls.manifest.json").read_text())
    manifest["X_train_stats"] = {"mean": [10.5, 200, 64], "std": [3, 25.5, 100]}
    (tmp_path / "mine_cls.manifest.json").write_text(json.dumps(manifest))
    X, _ = joined(batches(archive, batch_size=BATCH, shuffle=False, normalize="manifest"))
    expected = reference(arrays["X_train"], np.array([10.5, 200, 64]) / 255, np.array([3, 25.5, 100]) / 255)
    np.testing.assert_allclose(X, expected, rtol=1e-6, atol=1e-6)


def test_normalize_manifest_of_a_shard_index_reads_the_sets_manifest(built, arrays):
    mean, std = manifest_stats(built["sharded"])
    X, _ = joined(batches(built["sharded"], batch_size=BATCH, shuffle=False, normalize="manifest"))
    np.testing.assert_allclose(X, reference(arrays["X_train"], mean, std), rtol=1e-6, atol=1e-6)


def test_nchw_archive_reads_in_either_layout(built, arrays):
    stored = packer.load(built["nchw"], mmap=False).X_train
    assert stored.shape == (N_TRAIN, 3, SIZE, SIZE)
    assert np.array_equal(stored, arrays["X_train"].transpose(0, 3, 1, 2))  # same pixels, channels first
    order = order_of(N_TRAIN, seed=6)
    as_nhwc, y = joined(batches(built["nchw"], batch_size=BATCH, seed=6))
    assert as_nhwc.shape == (N_TRAIN, SIZE, SIZE, 3) and as_nhwc.flags.c_contiguous
    assert np.array_equal(as_nhwc, arrays["X_train"][order]) and np.array_equal(y, arrays["y_train"][order])
    as_nchw, _ = joined(batches(built["nchw"], batch_size=BATCH, seed=6, layout="nchw"))
    assert np.array_equal(as_nchw, stored[order])
    normalized, _ = joined(batches(built["nchw"], batch_size=BATCH, seed=6, normalize="imagenet"))
    np.testing.assert_allclose(normalized, reference(arrays["X_train"][order], IMAGENET_MEAN, IMAGENET_STD),
                               rtol=1e-6, atol=1e-6)


def test_nhwc_archive_reads_as_nchw(built, arrays):
    X, _ = joined(batches(built["stored"], batch_size=BATCH, seed=6, layout="nchw"))
    assert X.shape == (N_TRAIN, 3, SIZE, SIZE) and X.flags.c_contiguous
    assert np.array_equal(X, arrays["X_train"][order_of(N_TRAIN, seed=6)].transpose(0, 3, 1, 2))


def test_nchw_archive_of_crop_size_3_reads_right(tmp_path):
    tree = kaggle_tree(tmp_path / "kaggle", images=Images(photo=COARSE))
    class_list = write_list(tmp_path / "mine.txt", SUBSET)
    nhwc = build(class_list, tree.data_dir, tmp_path / "nhwc", resize_size=3, crop_size=3).archive
    nchw = build(class_list, tree.data_dir, tmp_path / "nchw", resize_size=3, crop_size=3, layout="nchw").archive
    X = packer.load(nhwc, mmap=False).X_train
    assert np.array_equal(packer.load(nchw, mmap=False).X_train, X.transpose(0, 3, 1, 2))
    assert np.array_equal(joined(batches(nchw, shuffle=False))[0], X)


# --------------------------------------------------------------------------- sources and splits


def test_shard_index_gives_the_same_batches(built, arrays):
    for options in ({"seed": 11}, {"shuffle": False}, {"seed": 2, "rank": 1, "world_size": 3}):
        X, y = joined(batches(built["sharded"], batch_size=BATCH, **options))
        expected_X, expected_y = joined(batches(built["stored"], batch_size=BATCH, **options))
        assert np.array_equal(X, expected_X) and np.array_equal(y, expected_y), options
    # its val rows are all in the first shard, the other shards hold none
    X, y = joined(batches(built["sharded"], "val", batch_size=3, shuffle=False))
    assert np.array_equal(X, arrays["X_val"]) and np.array_equal(y, arrays["y_val"])


def test_compressed_archive_gives_the_same_batches_and_warns_once(built):
    with pytest.warns(UserWarning) as caught:
        epoch = batches(built["compressed"], batch_size=BATCH, seed=3, normalize="imagenet")
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages
    assert str(built["compressed"]) in messages[0] and re.search(r"\d+\.\d GB", messages[0]), messages[0]
    assert caught[0].filename == __file__  # pointed at the caller
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # decompressed once: iterating warns no more
        X, y = joined(epoch)
        again, _ = joined(epoch)
    expected_X, expected_y = joined(batches(built["stored"], batch_size=BATCH, seed=3, normalize="imagenet"))
    assert np.array_equal(X, expected_X) and np.array_equal(y, expected_y) and np.array_equal(again, X)


def test_compressed_archive_warning_through_torch_points_at_the_caller(built, ptorch):
    _, pt = ptorch
    for make in (lambda: pt.dataset(built["compressed"]), lambda: pt.loader(built["compressed"], num_workers=0)):
        with pytest.warns(UserWarning, match="is compressed") as caught:
            make()
        assert [w.filename for w in caught] == [__file__]


def test_two_passes_over_one_epoch_read_their_own_files(built, arrays):
    """A pass left suspended and dropped closes only its own files: another pass of the same
    ``Batches`` reading meanwhile goes on to the end."""
    epoch = batches(built["stored"], batch_size=BATCH, shuffle=False, prefetch=0)
    first, second = iter(epoch), iter(epoch)
    served = [next(second)[0].copy()]
    next(first)
    assert open_fds_to(built["stored"]) == 2  # one for each pass
    del first
    gc.collect()
    assert open_fds_to(built["stored"]) == 1
    served += [X.copy() for X, _ in second]
    assert np.array_equal(np.concatenate(served), arrays["X_train"])


@pytest.mark.parametrize("make", ["batches", "loader"])
def test_a_consumer_that_keeps_no_batch_needs_one_array_sized_by_the_split(built, ptorch_or_none, monkeypatch, make):
    """Nothing of the reader's holds a batch while the next is made; a batch is never larger than the split."""
    import packer.batching

    made = []
    original = packer.batching.batch_arrays

    def kept(*args):
        made.append(original(*args))
        return made[-1]

    if make == "loader":
        if ptorch_or_none is None:
            pytest.skip("torch not installed")
        _, pt = ptorch_or_none
        monkeypatch.setattr(pt, "batch_arrays", kept)
        epochs = [pt.loader(built["stored"], batch_size=BATCH, num_workers=2, normalize="imagenet"),
                  pt.loader(built["stored"], "val", batch_size=200_000, num_workers=2, normalize="imagenet")]
    else:
        monkeypatch.setattr(packer.batching, "batch_arrays", kept)
        epochs = [batches(built["stored"], batch_size=BATCH, prefetch=0, normalize="imagenet"),
                  batches(built["stored"], "val", batch_size=200_000, prefetch=0, normalize="imagenet")]
    for epoch in epochs:
        count = 0
        for X, _ in epoch:
            count += len(X)
            del X
        assert count == (N_TRAIN if len(made) == 1 else 8)
    assert [len(outputs.arrays) for outputs in made] == [1, 1]
    assert [outputs.shape[0] for outputs in made] == [BATCH, 8]


def test_stored_archive_does_not_warn(built):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        joined(batches(built["stored"], batch_size=BATCH))


def test_a_loaded_subset_is_a_source(built, arrays):
    for name in ("stored", "sharded", "compressed"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            subset = packer.load(built[name], mmap=False)
            X, y = joined(batches(subset, batch_size=BATCH, seed=5, normalize="manifest"))
        order = order_of(N_TRAIN, seed=5)
        mean, std = manifest_stats(built[name])
        np.testing.assert_allclose(X, reference(arrays["X_train"][order], mean, std), rtol=1e-6, atol=1e-6)
        assert np.array_equal(y, arrays["y_train"][order]), name


def test_holdout_split(built):
    X_holdout, y_holdout = loaded(built["holdout"], "holdout")
    X_train, y_train = loaded(built["holdout"], "train")
    assert len(X_holdout) == 6 and len(X_train) == N_TRAIN - 6
    X, y = joined(batches(built["holdout"], "holdout", batch_size=4, shuffle=False))
    assert np.array_equal(X, X_holdout) and np.array_equal(y, y_holdout)
    order = order_of(len(X_train), seed=1)
    X, y = joined(batches(built["holdout"], batch_size=BATCH, seed=1))
    assert np.array_equal(X, X_train[order]) and np.array_equal(y, y_train[order])


# --------------------------------------------------------------------------- errors


def test_more_processes_than_images_is_a_user_error(built):
    with pytest.raises(packer.UserError) as raised:
        batches(built["stored"], "val", world_size=9, rank=3)
    assert str(raised.value) == ("world_size 9 is more than the 8 val images, so a process would get none; "
                                 "use at most 8 processes")
    assert len(batches(built["stored"], "val", batch_size=1, world_size=8, rank=7)) == 1  # one each is fine


@pytest.mark.parametrize("options, needle", [
    ({"batch_size": 0}, "batch_size 0"), ({"batch_size": -3}, "batch_size -3"), ({"batch_size": 2.0}, "batch_size"),
    ({"batch_size": True}, "batch_size True"), ({"batch_size": "16"}, "batch_size"),
    ({"world_size": 0}, "world_size 0"), ({"rank": -1}, "rank -1"), ({"prefetch": -1}, "prefetch -1"),
    ({"prefetch": 1.5}, "prefetch"), ({"seed": -1}, "seed -1"), ({"seed": 1.5}, "seed"), ({"epoch": -2}, "epoch -2"),
    ({"rank": 2, "world_size": 2}, "rank 2 must be below world_size 2"),
    ({"rank": 5, "world_size": 3}, "rank 5"),
    ({"dtype": "float64"}, "dtype 'float64'"), ({"dtype": np.uint8}, "dtype"),
    ({"layout": "NCHW"}, "layout 'NCHW'"), ({"layout": "chw"}, "layout 'chw'"),
    ({"normalize": "imagnet"}, "normalize 'imagnet'"), ({"normalize": True}, "normalize True"),
    ({"normalize": "imagenet", "dtype": "uint8"}, "normalize='imagenet'"),
    ({"normalize": "manifest", "dtype": "uint8"}, "normalize='manifest'"),
])
def test_bad_options_are_one_line_user_errors(built, options, needle):
    with pytest.raises(packer.UserError) as caught:
        batches(built["stored"], **options)
    message = str(caught.value)
    assert "\n" not in message and needle in message, message


def test_unknown_split_names_the_splits_present(built):
    with pytest.raises(packer.UserError, match=r"has no holdout split; it has: train, val$"):
        batches(built["stored"], "holdout")
    with pytest.raises(packer.UserError, match=r"has no test split; it has: train, val, holdout$"):
        batches(built["holdout"], "test")
    with pytest.raises(packer.UserError, match="has no holdout split"):
        batches(built["sharded"], "holdout")


def test_manifest_normalize_without_a_manifest(built, tmp_path):
    archive = tmp_path / "mine_cls.npz"
    shutil.copyfile(built["stored"], archive)
    with pytest.raises(packer.UserError) as caught:
        batches(archive, normalize="manifest")
    message = str(caught.value)
    assert "\n" not in message and str(tmp_path / "mine_cls.manifest.json") in message
    assert "normalize='imagenet'" in message
    joined(batches(archive, normalize="imagenet"))  # the other normalizations need no manifest


def test_not_an_archive(built, tmp_path):
    metadata = Path(built["stored"]).with_name("mine_cls_metadata.csv")
    for path, needle in ((metadata, "metadata CSV"), (tmp_path / "missing_cls.npz", "does not exist")):
        with pytest.raises(packer.UserError, match=re.escape(str(path))) as caught:
            batches(path)
        assert needle in str(caught.value) and "\n" not in str(caught.value)


# --------------------------------------------------------------------------- reading: prefetch, threads, no mmap


@pytest.mark.parametrize("prefetch", [0, 1, 2, 5])
def test_every_prefetch_depth_gives_the_same_batches(built, arrays, prefetch):
    before = threading.active_count()
    X, y = joined(batches(built["stored"], batch_size=BATCH, seed=8, prefetch=prefetch))
    order = order_of(N_TRAIN, seed=8)
    assert np.array_equal(X, arrays["X_train"][order]) and np.array_equal(y, arrays["y_train"][order])
    assert threading.active_count() == before and not batch_threads()


def test_prefetch_reads_ahead_in_a_background_thread(built, monkeypatch):
    readers = []
    original = os.preadv

    def recording(fd, buffers, offset, *rest):
        readers.append(threading.current_thread().name)
        return original(fd, buffers, offset, *rest)

    monkeypatch.setattr(os, "preadv", recording)
    joined(batches(built["stored"], batch_size=BATCH, prefetch=2))
    assert readers and set(readers) == {"packer-batches"}
    readers.clear()
    joined(batches(built["stored"], batch_size=BATCH, prefetch=0))
    assert readers and set(readers) == {threading.current_thread().name}  # the caller's thread


def test_breaking_out_early_stops_the_thread(built):
    before = threading.active_count()
    for prefetch in (1, 2, 4):
        for number, _ in enumerate(batches(built["stored"], batch_size=4, prefetch=prefetch)):
            assert batch_threads()  # reading ahead meanwhile
            if number == 1:
                break
        assert threading.active_count() == before and not batch_threads(), prefetch
    # an exception in the loop body stops it too
    with pytest.raises(KeyError):
        for _ in batches(built["stored"], batch_size=4):
            raise KeyError("stop")
    assert threading.active_count() == before and not batch_threads()
    # as does dropping an iterator taken by hand
    iterator = iter(batches(built["stored"], batch_size=4))
    next(iterator)
    del iterator
    gc.collect()
    assert threading.active_count() == before and not batch_threads()


def truncated_copy(built, tmp_path, keep_rows):
    """A copy of the stored archive, and a function cutting it after ``keep_rows`` rows of X_train."""
    archive = tmp_path / "cut_cls.npz"
    shutil.copyfile(built["stored"], archive)
    from packer.loading import array_headers

    end = array_headers(archive)["X_train"].data_offset + keep_rows * SIZE * SIZE * 3 + 100  # into row keep_rows
    return archive, lambda: os.truncate(archive, end)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_an_archive_cut_short_after_opening_is_a_user_error_in_the_consumer(built, tmp_path, prefetch):
    archive, cut = truncated_copy(built, tmp_path, keep_rows=20)
    before = threading.active_count()
    epoch = batches(archive, batch_size=BATCH, shuffle=False, prefetch=prefetch)
    cut()
    served = []
    with pytest.raises(packer.UserError) as caught:
        for X, _ in epoch:
            served.append(X)
    message = str(caught.value)
    assert str(archive) in message and "\n" not in message and "row 20" in message, message
    assert len(served) == 1  # rows 0-15 were there; rows 16-31 reach past the end
    assert threading.active_count() == before and not batch_threads()


def test_the_archive_is_never_memory_mapped(built, tmp_path):
    archive = tmp_path / "own_cls.npz"  # a path nothing else in this process has mapped
    shutil.copyfile(built["stored"], archive)
    assert not mapped(archive)
    for prefetch in (0, 2):
        for _X, _ in batches(archive, batch_size=BATCH, normalize="imagenet", prefetch=prefetch):
            assert not mapped(archive)
    # packer.load does map it (the check can see a mapping)
    data = packer.load(archive)
    assert mapped(archive)
    del data
    gc.collect()


# --------------------------------------------------------------------------- import, CLI


def test_import_packer_does_not_import_torch(built):
    code = ("import packer, sys; packer.batches; assert 'torch' not in sys.modules; "
            f"sum(len(X) for X, _ in packer.batches({str(built['stored'])!r}, normalize='imagenet')); "
            "assert 'torch' not in sys.modules")
    proc = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_packer_batches_is_the_function_after_importing_packer_torch(built):
    modules = "packer.batching, packer.torch" if importlib.util.find_spec("torch") else "packer.batching"
    code = (f"import {modules}, packer; X, y = next(iter(packer.batches({str(built['stored'])!r}))); "
            "assert len(X) == 62")
    proc = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr


BENCH_LINE = r"{}: {} images in \d+\.\d\d s: [\d,]+ images/s \([\d,]+ MB/s\)"


def test_bench_load_prints_three_lines(built, capsys):
    pytest.importorskip("torch")
    for source in (built["stored"], built["sharded"]):
        code, out, err = run_main(["bench-load", source, "--batch_size", "16", "--workers", "2"], capsys)
        assert code == 0, err
        lines = out.strip("\n").split("\n")
        assert len(lines) == 3, out
        assert re.fullmatch(BENCH_LINE.format("batches, uint8 nhwc", 62), lines[0]), lines[0]
        assert re.fullmatch(BENCH_LINE.format("batches, float32 normalized nchw", 62), lines[1]), lines[1]
        assert re.fullmatch(BENCH_LINE.format("torch DataLoader, 2 workers, float32 normalized nchw", 62),
                            lines[2]), lines[2]
    code, out, err = run_main(["bench-load", built["holdout"], "--split", "holdout", "--workers", "0"], capsys)
    assert code == 0, err
    assert [line.split(":")[0] for line in out.splitlines()] == [
        "batches, uint8 nhwc", "batches, float32 normalized nchw",
        "torch DataLoader, 0 workers, float32 normalized nchw"]
    assert all(" 6 images in " in line for line in out.splitlines())


def test_bench_load_bad_inputs_are_one_line_errors(built, capsys, tmp_path):
    metadata = Path(built["stored"]).with_name("mine_cls_metadata.csv")
    for argv, needles in (
            ([metadata], [metadata, "metadata CSV"]),
            ([built["stored"], "--split", "holdout"], ["has no holdout split", "train, val"]),
            ([tmp_path / "missing_cls.npz"], ["missing_cls.npz", "does not exist"]),
            ([built["stored"], "--batch_size", "0"], ["--batch_size"]),
            ([built["stored"], "--workers", "-1"], ["--workers"])):
        code, out, err = run_main(["bench-load", *argv], capsys)
        assert code == 1, (argv, out, err)
        assert_one_error_line(err, *needles)
        assert out == ""


def test_bench_load_without_torch(built, tmp_path):
    fake = tmp_path / "no_torch"
    (fake / "torch").mkdir(parents=True)
    (fake / "torch" / "__init__.py").write_text("raise ImportError('No module named torch (hidden by the test)')\n")
    env = subprocess_env()
    env["PYTHONPATH"] = str(fake)
    proc = subprocess.run([PYTHON, str(REPO / "main.py"), "bench-load", str(built["stored"]), "--batch_size", "16"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip("\n").split("\n")
    assert len(lines) == 3, proc.stdout
    assert re.fullmatch(BENCH_LINE.format("batches, uint8 nhwc", 62), lines[0]), lines[0]
    assert re.fullmatch(BENCH_LINE.format("batches, float32 normalized nchw", 62), lines[1]), lines[1]
    assert lines[2] == "torch DataLoader: not timed, torch is not installed (pip install 'imagenet-subset[torch]')"
    assert proc.stderr == ""


# --------------------------------------------------------------------------- PyTorch


@pytest.fixture(scope="module")
def ptorch_or_none():
    """(torch, packer.torch), or None without torch."""
    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    import packer.torch

    return torch, packer.torch


@pytest.fixture(scope="module")
def ptorch():
    torch = pytest.importorskip("torch")
    import packer.torch

    return torch, packer.torch


def test_dataset_items_are_the_arrays(built, arrays, ptorch):
    torch, pt = ptorch
    data = pt.dataset(built["stored"])
    assert isinstance(data, torch.utils.data.Dataset) and isinstance(data, pt.ArchiveDataset)
    assert len(data) == N_TRAIN
    for index in (0, 1, 30, N_TRAIN - 1):
        image, label = data[index]
        assert isinstance(image, torch.Tensor) and image.dtype == torch.uint8 and image.shape == (3, SIZE, SIZE)
        assert type(label) is int and label == arrays["y_train"][index]
        assert np.array_equal(image.numpy(), arrays["X_train"][index].transpose(2, 0, 1))
    image, label = data[-1]  # Python's negative indices, as a sequence
    assert np.array_equal(image.numpy(), arrays["X_train"][-1].transpose(2, 0, 1))
    assert np.array_equal(data[np.int64(5)][0].numpy(), arrays["X_train"][5].transpose(2, 0, 1))
    for bad in (N_TRAIN, N_TRAIN + 10, -N_TRAIN - 1):
        with pytest.raises(IndexError):
            data[bad]
    val = pt.dataset(built["stored"], "val", layout="nhwc")
    assert len(val) == 8
    assert np.array_equal(np.stack([val[i][0].numpy() for i in range(8)]), arrays["X_val"])
    assert [val[i][1] for i in range(8)] == arrays["y_val"].tolist()


def test_dataset_getitems_in_the_order_asked(built, arrays, ptorch):
    _, pt = ptorch
    data = pt.dataset(built["nchw"], normalize="imagenet")
    indices = [40, 3, 61, 0, 3, 17]
    items = data.__getitems__(indices)
    assert [label for _, label in items] == arrays["y_train"][indices].tolist()
    images = np.stack([image.numpy() for image, _ in items])
    np.testing.assert_allclose(images, reference(arrays["X_train"][indices], IMAGENET_MEAN, IMAGENET_STD, "nchw"),
                               rtol=1e-6, atol=1e-6)
    for image, _ in items:
        assert image.dtype == ptorch[0].float32
    with pytest.raises(IndexError):
        data.__getitems__([1, N_TRAIN])


def test_dataset_formats_and_transform(built, arrays, ptorch):
    torch, pt = ptorch
    mean, std = manifest_stats(built["sharded"])
    data = pt.dataset(built["sharded"], normalize="manifest", layout="nhwc")
    image, _ = data[33]
    assert image.dtype == torch.float32 and image.shape == (SIZE, SIZE, 3)
    np.testing.assert_allclose(image.numpy(), reference(arrays["X_train"][33:34], mean, std)[0], rtol=1e-6, atol=1e-6)
    image, _ = pt.dataset(built["stored"], dtype="float32")[2]
    np.testing.assert_allclose(image.numpy(), reference(arrays["X_train"][2:3], layout="nchw")[0], rtol=1e-6,
                               atol=1e-6)
    flipped = pt.dataset(built["stored"], transform=lambda t: t.flip(-1))
    assert np.array_equal(flipped[7][0].numpy(), arrays["X_train"][7].transpose(2, 0, 1)[:, :, ::-1])
    assert [image.shape for image, _ in flipped.__getitems__([1, 2])] == [(3, SIZE, SIZE)] * 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        subset = packer.load(built["compressed"], mmap=False)
    with pytest.warns(UserWarning, match="X_train is compressed"):
        from_subset = pt.dataset(subset, layout="nhwc")
    assert np.array_equal(from_subset[9][0].numpy(), arrays["X_train"][9])
    with pytest.raises(packer.UserError, match="has no holdout split"):
        pt.dataset(built["stored"], "holdout")
    with pytest.raises(packer.UserError, match="drop dtype='uint8'"):
        pt.dataset(built["stored"], dtype="uint8", normalize="imagenet")


def test_dataset_pickles_without_open_files(built, arrays, ptorch, tmp_path):
    _, pt = ptorch
    archive = tmp_path / "own_cls.npz"
    shutil.copyfile(built["stored"], archive)
    data = pt.dataset(archive)
    data[0]  # opens the archive in this process
    assert open_fds_to(archive) == 1
    copy = pickle.loads(pickle.dumps(data))
    assert copy.rows._files == {}  # no descriptor went along
    assert open_fds_to(archive) == 1  # and unpickling opens none
    assert np.array_equal(copy[4][0].numpy(), arrays["X_train"][4].transpose(2, 0, 1))
    assert open_fds_to(archive) == 2  # the copy opened its own
    assert not mapped(archive)


def epoch_rows(loader, arrays, layout="nchw"):
    """The row number of every image a loader serves, in order (each row's pixels are unique)."""
    row_of = {arrays["X_train"][i].tobytes(): i for i in range(N_TRAIN)}
    rows, labels = [], []
    for X, y in loader:
        X = X.numpy()
        X = X.transpose(0, 2, 3, 1) if layout == "nchw" else X
        rows += [row_of[np.ascontiguousarray(x).tobytes()] for x in X]
        labels += y.tolist()
    assert labels == arrays["y_train"][rows].tolist()
    return rows


def test_loader_covers_every_row_once_per_epoch(built, arrays, ptorch):
    torch, pt = ptorch
    loader = pt.loader(built["stored"], batch_size=BATCH, num_workers=0, seed=3)
    assert loader.batch_sampler is None and isinstance(loader.sampler.sampler, pt.EpochOrder)
    first, second = epoch_rows(loader, arrays), epoch_rows(loader, arrays)
    assert first == order_of(N_TRAIN, seed=3, epoch=0).tolist()  # the documented order, epoch 0 then 1
    assert second == order_of(N_TRAIN, seed=3, epoch=1).tolist()
    assert epoch_rows(pt.loader(built["stored"], batch_size=BATCH, num_workers=0, seed=3), arrays) == first  # seeded
    X, y = next(iter(loader))
    assert X.shape == (BATCH, 3, SIZE, SIZE) and X.dtype == torch.uint8 and y.dtype == torch.int64
    dropped = pt.loader(built["stored"], batch_size=BATCH, num_workers=0, drop_last=True)
    assert len(dropped) == 3 and len(loader) == 4


def test_loader_keeps_order_off_train(built, arrays, ptorch):
    torch, pt = ptorch
    val = pt.loader(built["stored"], "val", batch_size=3, num_workers=0, normalize="imagenet")
    assert not val.sampler.sampler.shuffle
    X = torch.cat([X for X, _ in val]).numpy()
    np.testing.assert_allclose(X, reference(arrays["X_val"], IMAGENET_MEAN, IMAGENET_STD, "nchw"), rtol=1e-6,
                               atol=1e-6)
    unshuffled = pt.loader(built["stored"], batch_size=BATCH, shuffle=False, num_workers=0)
    assert epoch_rows(unshuffled, arrays) == list(range(N_TRAIN))


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_serves_the_batches_of_packer_batches(built, arrays, ptorch, workers):
    """Same seed, rank and world_size: the loader's epochs are packer.batches' epochs 0, 1, ...
    batch for batch, or the epoch set_epoch names; ranks of a distributed job get disjoint shares."""
    torch, pt = ptorch

    def same(loader, epoch, **options):
        expected = list(batches(built["stored"], batch_size=BATCH, seed=7, epoch=epoch, normalize="imagenet",
                                layout="nchw", **options))
        served = [(X.numpy().copy(), y.numpy().copy()) for X, y in loader]
        assert len(served) == len(expected) == len(loader)
        for (X, y), (X_expected, y_expected) in zip(served, expected, strict=True):
            np.testing.assert_array_equal(X, X_expected)
            assert y.dtype == np.int64 and np.array_equal(y, y_expected)

    loader = pt.loader(built["stored"], batch_size=BATCH, num_workers=workers, seed=7, normalize="imagenet")
    same(loader, 0)
    same(loader, 1)
    loader.set_epoch(5)
    same(loader, 5)
    same(loader, 6)
    shares = []
    for rank in range(3):
        share = pt.loader(built["stored"], batch_size=BATCH, num_workers=workers, seed=7, normalize="imagenet",
                          rank=rank, world_size=3)
        share.set_epoch(2)
        same(share, 2, rank=rank, world_size=3)
        shares.append(set(order_of(N_TRAIN, seed=7, epoch=2, rank=rank, world_size=3).tolist()))
    assert sum(map(len, shares)) == len(set.union(*shares)) == 3 * (N_TRAIN // 3)


@pytest.mark.parametrize("options,needle", [
    ({"rank": 2, "world_size": 2}, "rank 2 must be below world_size 2 (ranks count from 0)"),
    ({"world_size": 0}, "world_size 0 must be a whole number of at least 1"),
    ({"batch_size": 2.5}, "batch_size 2.5 must be a whole number of at least 1"),
    ({"seed": -1}, "seed -1 must be a whole number of at least 0"),
    ({"num_workers": -1}, "num_workers -1 must be a whole number of at least 0"),
    ({"num_workers": 1.5}, "num_workers 1.5 must be a whole number of at least 0"),
    ({"epoch": 3}, "loader takes no epoch: it serves epoch 0 first, then the next each time; "
                   "call .set_epoch(e) on it to choose the next one"),
    ({"split": "val", "world_size": 9, "rank": 3},
     "world_size 9 is more than the 8 val images, so a process would get none; use at most 8 processes"),
])
def test_loader_bad_options_are_one_line_user_errors(built, ptorch, options, needle):
    _, pt = ptorch
    with pytest.raises(packer.UserError) as raised:
        pt.loader(built["stored"], **{"num_workers": 0, **options})
    assert str(raised.value) == needle


def test_a_shared_buffer_is_free_when_given_back_or_taken_in_an_earlier_pass(ptorch):
    _, pt = ptorch
    shared = pt._SharedBuffers(2, 2, (3, 4))
    assert [shared.claim(1, 1), shared.claim(1, 1)] == [2, 3]  # worker 1's own buffers
    assert shared.claim(1, 1) is None  # both taken in this pass: after CLAIM_SECONDS, none
    assert shared.claim(0, 1) == 0
    shared.give_back(3)
    assert shared.claim(1, 1) == 3
    assert shared.claim(1, 2) == 2  # taken in pass 1, never given back (a pass left early): free in pass 2
    assert shared.claim(1, 2) == 3 and shared.claim(1, 2) is None
    assert shared.epoch.tolist() == [1, 0, 2, 2] and shared.free.tolist() == [0, 1, 0, 0]


def test_shared_buffers_one_per_batch_a_worker_may_hold_sized_by_the_split(built, arrays, ptorch):
    """A worker may have prefetch_factor batches waiting and one being formatted; a batch is never
    larger than the split."""
    _, pt = ptorch
    loader = pt.loader(built["stored"], "val", batch_size=200_000, num_workers=1, prefetch=4, normalize="imagenet")
    assert loader.prefetch_factor == 4
    assert tuple(loader.dataset.shared.buffers.shape) == (5, 8, 3, SIZE, SIZE)
    X, y = next(iter(loader))
    np.testing.assert_allclose(X.numpy(), reference(arrays["X_val"], IMAGENET_MEAN, IMAGENET_STD, "nchw"),
                               rtol=1e-6, atol=1e-6)


def test_set_epoch_checks_the_epoch(built, ptorch):
    _, pt = ptorch
    loader = pt.loader(built["stored"], num_workers=0)
    with pytest.raises(packer.UserError) as raised:
        loader.set_epoch(-1)
    assert str(raised.value) == "epoch -1 must be a whole number of at least 0"


def test_epoch_order_as_a_plain_sampler_starts_at_epoch_0(built, arrays, ptorch):
    """torch asks a sampler for an iterator twice when a loader with workers starts; an epoch counts
    only once its first row is asked for."""
    torch, pt = ptorch
    order = pt.EpochOrder(N_TRAIN, True, 4)
    iter(order)  # asked for, never read: no epoch used up
    data = pt.dataset(built["stored"], layout="nhwc")
    for epoch in range(2):
        loader = torch.utils.data.DataLoader(data, batch_size=None, sampler=order, num_workers=2)
        rows = epoch_rows(([X[None], torch.tensor([y])] for X, y in loader), arrays, layout="nhwc")
        assert rows == order_of(N_TRAIN, seed=4, epoch=epoch).tolist()
        del loader


def test_dataset_indexing(built, arrays, ptorch):
    torch, pt = ptorch
    data = pt.dataset(built["stored"], layout="nhwc")
    image, label = data[torch.tensor(3)]
    assert np.array_equal(image.numpy(), arrays["X_train"][3]) and label == arrays["y_train"][3]
    items = data.__getitems__([-1, 0])
    assert np.array_equal(items[0][0].numpy(), arrays["X_train"][-1]) and items[1][1] == arrays["y_train"][0]
    with pytest.raises(TypeError, match=r"not the slice slice\(0, 4, None\)"):
        data[0:4]


def test_loader_with_two_fork_workers(built, arrays, ptorch):
    _, pt = ptorch
    loader = pt.loader(built["sharded"], batch_size=BATCH, num_workers=2, seed=1)
    assert loader.num_workers == 2 and loader.persistent_workers
    loader.dataset[0]  # the parent has the shards open before the workers fork
    pids = []
    for _ in range(2):  # the same workers serve both epochs
        assert sorted(epoch_rows(loader, arrays)) == list(range(N_TRAIN))
        pids.append(sorted(w.pid for w in loader._iterator._workers))
    assert pids[0] == pids[1] and len(pids[0]) == 2
    X, _ = next(iter(loader))
    assert X.is_shared()  # made by a worker in shared memory: handed over without a copy
    del loader
    gc.collect()


def test_dataloader_with_two_spawn_workers(built, arrays, ptorch):
    torch, pt = ptorch
    data = pt.dataset(built["stored"], layout="nhwc")
    data[0]
    loader = torch.utils.data.DataLoader(data, batch_size=BATCH, num_workers=2, multiprocessing_context="spawn",
                                         shuffle=True, generator=torch.Generator().manual_seed(0))
    assert sorted(epoch_rows(loader, arrays, layout="nhwc")) == list(range(N_TRAIN))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compressed = pt.dataset(built["compressed"], normalize="imagenet")
    loader = torch.utils.data.DataLoader(compressed, batch_size=BATCH, num_workers=2, multiprocessing_context="spawn")
    X = torch.cat([X for X, _ in loader]).numpy()
    np.testing.assert_allclose(X, reference(arrays["X_train"], IMAGENET_MEAN, IMAGENET_STD, "nchw"), rtol=1e-6,
                               atol=1e-6)


# --------------------------------------------------------------------------- JAX, TensorFlow


def test_jax_device_put_of_a_batch(built, arrays):
    """The README's loop; the device arrays, all kept to the end of the epoch, hold their batches
    (none written over by a later batch made into a reused array)."""
    jax = pytest.importorskip("jax")
    kept = []
    for X, y in batches(built["stored"], batch_size=BATCH, epoch=1, normalize="imagenet"):
        X_device, y_device = jax.device_put(X), jax.device_put(y)
        assert X_device.shape == X.shape and X_device.dtype == X.dtype and y_device.dtype == y.dtype
        kept.append((X_device, y_device))
    order = order_of(N_TRAIN, epoch=1)
    X_all = np.concatenate([np.asarray(X) for X, _ in kept])
    np.testing.assert_allclose(X_all, reference(arrays["X_train"][order], IMAGENET_MEAN, IMAGENET_STD),
                               rtol=1e-6, atol=1e-6)
    assert np.array_equal(np.concatenate([np.asarray(y) for _, y in kept]), arrays["y_train"][order])


def test_tensorflow_from_generator(built):
    """The README's dataset: each pass takes the next epoch; all batches kept, none written over."""
    import itertools

    tf = pytest.importorskip("tensorflow")
    epochs = itertools.count()
    dataset = tf.data.Dataset.from_generator(
        lambda: batches(built["stored"], batch_size=BATCH, seed=2, epoch=next(epochs)),
        output_signature=(tf.TensorSpec(shape=(None, SIZE, SIZE, 3), dtype=tf.uint8),
                          tf.TensorSpec(shape=(None,), dtype=tf.int32)))
    for epoch in range(2):
        served = list(dataset.as_numpy_iterator())
        expected = list(batches(built["stored"], batch_size=BATCH, seed=2, epoch=epoch))
        assert len(served) == len(expected) == 4
        for (X, y), (X_expected, y_expected) in zip(served, expected, strict=True):
            assert X.dtype == np.uint8 and y.dtype == np.int32
            assert np.array_equal(X, X_expected) and np.array_equal(y, y_expected)


def test_epochs_leave_no_file_open(built):
    """Each epoch opens the archives it reads and closes them when it ends (or is left early)."""
    open_files = len(os.listdir("/proc/self/fd"))
    for epoch in range(20):
        for _ in batches(built["sharded"], batch_size=BATCH, epoch=epoch):
            pass
        for _ in batches(built["stored"], batch_size=BATCH, epoch=epoch):
            break
    assert len(os.listdir("/proc/self/fd")) == open_files


def test_a_batch_from_the_dataset_is_one_tensor_in_any_format(built, arrays, ptorch):
    torch, pt = ptorch
    rows = [5, 0, 61, 5]
    for options, expected in (({}, arrays["X_train"][rows].transpose(0, 3, 1, 2)),
                              ({"layout": "nhwc"}, arrays["X_train"][rows]),
                              ({"normalize": "imagenet"}, reference(arrays["X_train"][rows], IMAGENET_MEAN,
                                                                    IMAGENET_STD, "nchw")),
                              ({"normalize": "imagenet", "layout": "nhwc"},
                               reference(arrays["X_train"][rows], IMAGENET_MEAN, IMAGENET_STD, "nhwc"))):
        X, y = pt.dataset(built["stored"], **options)[rows]
        np.testing.assert_allclose(X.numpy(), expected, rtol=1e-6, atol=1e-6)
        assert y.tolist() == arrays["y_train"][rows].tolist() and y.dtype == torch.int64
    with pytest.raises(IndexError, match="out of range"):
        pt.dataset(built["stored"])[[0, 62]]


def test_loader_formats_float32_in_the_main_process(built, arrays, ptorch):
    """With workers, float32 batches cross as uint8 in the batch's layout and are formatted after."""
    torch, pt = ptorch
    loader = pt.loader(built["stored"], batch_size=BATCH, num_workers=2, seed=4, normalize="imagenet", prefetch=3)
    assert isinstance(loader, torch.utils.data.DataLoader) and isinstance(loader.sampler, pt._StoredBatches)
    assert loader.prefetch_factor == 2  # 3 batches ahead over 2 workers, rounded up
    X, y = loader.dataset[pt.AsStored([5, 0, 61], 0)]  # what a worker hands over
    assert X.dtype == torch.uint8 and np.array_equal(X.numpy(), arrays["X_train"][[5, 0, 61]].transpose(0, 3, 1, 2))
    served, labels = [], []
    for X, y in loader:
        assert X.dtype == torch.float32 and X.shape[1:] == (3, SIZE, SIZE) and not X.is_shared()
        served.append(X.numpy())
        labels += y.tolist()
    assert sorted(labels) == sorted(arrays["y_train"].tolist())
    expected = reference(arrays["X_train"], IMAGENET_MEAN, IMAGENET_STD, "nchw")
    rows = epoch_rows(pt.loader(built["stored"], batch_size=BATCH, num_workers=0, seed=4, layout="nhwc"), arrays,
                      layout="nhwc")  # the same seed's order, read without workers
    np.testing.assert_allclose(np.concatenate(served), expected[rows], rtol=1e-6, atol=1e-6)
    assert labels == arrays["y_train"][rows].tolist()
    del loader
    gc.collect()
    for options in ({"num_workers": 0, "normalize": "imagenet"}, {"num_workers": 2},
                    {"num_workers": 2, "normalize": "imagenet", "transform": lambda t: t}):
        kept = pt.loader(built["stored"], batch_size=BATCH, **options)
        assert type(kept.sampler) is torch.utils.data.BatchSampler, options  # formatted where it is read
        assert kept.prefetch_factor == (None if not options["num_workers"] else 1)


def _numbered(outputs, number: int):
    X = outputs.take()
    X[...] = number
    return X, np.array([number], dtype=np.int32)


def _numbered_batches(outputs, count: int):
    """``count`` small batches numbered in their pixels, their images arrays of ``outputs``."""
    for number in range(count):
        yield _numbered(outputs, number)


def test_read_ahead_frees_a_place_only_when_the_consumer_lets_go():
    """prefetch 2: at most 3 batches alive (2 ahead, 1 held), also for a consumer that still holds
    the previous batch when it asks for the next (so 3 arrays serve the whole epoch); one that
    keeps every batch is never stuck, and no batch it keeps is written over."""
    import time

    from packer.batching import ReusedArrays, _read_ahead

    outputs = ReusedArrays((2, 3), np.uint8)
    previous, seen = None, []
    for X, _ in _read_ahead(_numbered_batches(outputs, 12), 2, outputs):
        time.sleep(0.01)  # the read-ahead fills up meanwhile
        seen.append(int(X[0, 0]))
        previous = X  # noqa: F841 (held while the next is asked for)
    assert seen == list(range(12))
    assert len(outputs.arrays) == 3
    outputs = ReusedArrays((2, 3), np.uint8)
    assert [int(X[0, 0]) for X, _ in _read_ahead(_numbered_batches(outputs, 12), 2, outputs)] == list(range(12))
    assert len(outputs.arrays) <= 3
    outputs = ReusedArrays((2, 3), np.uint8)
    every = list(_read_ahead(_numbered_batches(outputs, 12), 2, outputs))  # one more place each time it waits
    assert [X.tolist() for X, _ in every] == [[[n] * 3] * 2 for n in range(12)]
    assert len(outputs.arrays) == 12


def test_reused_arrays_are_handed_out_only_when_nothing_refers_to_them():
    from packer.batching import ReusedArrays

    arrays = ReusedArrays((4,), np.float32)
    first = arrays.take()
    view = first[1:][1:]  # a view of a view refers to the array itself
    del first
    second = arrays.take()  # the first is still seen through the view
    assert len(arrays.arrays) == 2 and arrays.taken() == 2
    del view
    assert arrays.taken() == 1 and arrays.take() is arrays.arrays[0]
    del second
    assert arrays.taken() == 0


def test_loader_workers_write_into_shared_buffers_given_back(built, arrays, ptorch, monkeypatch):
    """Float32 batches cross through the loader's shared buffers, each given back once formatted; an
    epoch left after one batch leaves buffers taken, which the next epoch's workers take again (every
    one of its batches comes through a buffer) while it serves every row once."""
    torch, pt = ptorch
    loader = pt.loader(built["stored"], batch_size=BATCH, num_workers=2, seed=5, normalize="imagenet")
    shared = loader.dataset.shared
    assert isinstance(shared, pt._SharedBuffers) and shared.free.tolist() == [1, 1, 1, 1]
    assert tuple(shared.buffers.shape) == (4, BATCH, 3, SIZE, SIZE) and shared.buffers.is_shared()
    made, given = [], []  # the training process's view of which buffers batches came in
    original_format, original_give_back = pt.ArchiveLoader._format, pt._SharedBuffers.give_back

    def noted_format(self, images, outputs):
        if isinstance(images, pt._InSharedBuffer):
            made.append(images.index)
        return original_format(self, images, outputs)

    def noted_give_back(self, index):
        given.append(index)
        original_give_back(self, index)

    # on the classes, so the dataset the workers get stays picklable (the workers call neither)
    monkeypatch.setattr(pt.ArchiveLoader, "_format", noted_format)
    monkeypatch.setattr(pt._SharedBuffers, "give_back", noted_give_back)
    first = next(iter(loader))[0].numpy().copy()  # an epoch left after one batch
    assert first.shape == (BATCH, 3, SIZE, SIZE) and made == given and len(made) == 1
    made[:], given[:] = [], []
    served = []
    for X, _ in loader:
        assert len(made) == len(given)  # given back as soon as formatted
        served.append(X.numpy().copy())
    assert len(made) == len(loader) == 4 and set(made) <= {0, 1, 2, 3}  # no batch made outside the buffers
    # every buffer taken in this pass (the loader's second) is given back; one left taken by a task of
    # the pass left early is free for the next pass all the same
    assert shared.epoch.max() == 2
    assert all(free or taken_in < 2 for free, taken_in in zip(shared.free.tolist(), shared.epoch.tolist(), strict=True))
    served = np.concatenate(served)
    # back to the stored bytes, to tell which row each image is (every row's pixels are unique)
    mean, std = np.array(IMAGENET_MEAN)[:, None, None], np.array(IMAGENET_STD)[:, None, None]
    stored = np.rint((served * std + mean) * 255).astype(np.uint8).transpose(0, 2, 3, 1)
    row_of = {arrays["X_train"][i].tobytes(): i for i in range(N_TRAIN)}
    rows = [row_of[np.ascontiguousarray(x).tobytes()] for x in stored]
    assert rows == order_of(N_TRAIN, seed=5, epoch=1).tolist()  # every row once, in epoch 1's order
    np.testing.assert_allclose(served, reference(arrays["X_train"][rows], IMAGENET_MEAN, IMAGENET_STD, "nchw"),
                               rtol=1e-6, atol=1e-6)
    del loader
    gc.collect()
