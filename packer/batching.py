"""Batches for training, straight from an archive: shuffled, read in row order, read ahead.

    for epoch in range(10):
        for X, y in packer.batches("out_files/imagenet30_cls.npz", batch_size=256, epoch=epoch):
            ...  # X: (256, 224, 224, 3) uint8, y: (256,) int32

``batches`` takes an archive, the ``*_cls.index.json`` of a sharded set, or a
``Subset`` from ``packer.load``, and one split (``train``, ``val`` or ``holdout``).

The order of an epoch. Row numbers ``0 .. N-1`` of the split (across its
shards, in order) are permuted by ``numpy.random.default_rng([seed, epoch])``
(with ``shuffle``; otherwise kept in order). With ``world_size`` processes,
process ``rank`` takes the ``rank``-th of ``world_size`` equal consecutive
blocks of that order, ``N // world_size`` rows each, so the shares are
disjoint and equal; the last ``N % world_size`` rows of the order sit out that
epoch (other rows each epoch when shuffled). A share is cut into batches of
``batch_size`` rows, the last one shorter unless ``drop_last``.

Reading. The rows of a batch are read in ascending row order (sequential
reads), each into its place in the batch, which holds them in the shuffled
order: straight there when the batch holds the stored bytes, else a CPU
cache's worth of rows at a time, formatted from there. A stored member is read
with ``pread`` from the archive (no memory map: the reader's memory stays at
the batches it holds, whatever the archive's size); a deflated member is decompressed into memory once, with a
warning saying how much memory that takes. A background thread reads up to
``prefetch`` batches ahead: besides the batch the consumer holds, at most
``prefetch`` are in memory (waiting, or being made), and a batch's place is free
again only when the consumer has let go of it (see ``_read_ahead``).

What a batch holds. ``X``: ``dtype="uint8"``, the stored values;
``"float32"``, the values divided by 255 (0 to 1, as torchvision's
``ToTensor``), and with ``normalize`` then ``(x - mean) / std`` per channel,
``mean`` and ``std`` on that 0-1 scale: ImageNet's usual ones for
``"imagenet"``, the manifest's ``X_train_stats`` for ``"manifest"``
(``normalize`` alone implies float32). ``layout`` ``"nhwc"`` (N, S, S, 3) or
``"nchw"`` (N, 3, S, S), whatever the archive stores. ``y``: int32 labels.

``ImageRows`` is the row reader underneath, shared with ``packer.torch``: it
opens its files lazily in each process, so it may be pickled into
``DataLoader`` workers (fork or spawn).
"""
import copy
import math
import mmap
import os
import queue
import sys
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Literal

import numpy as np

from .errors import UserError
from .loading import Subset, array_headers, read_arrays, shard_paths
from .options import OutputNames

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's, on the 0-1 scale
IMAGENET_STD = (0.229, 0.224, 0.225)
Normalize = Literal["imagenet", "manifest"] | None
Dtype = Literal["uint8", "float32"]
Layout = Literal["nhwc", "nchw"]


@dataclass(frozen=True)
class _StoredPart:
    """``count`` rows of ``row_bytes`` each, from byte ``offset`` of the file ``path``."""

    path: str
    offset: int
    count: int


class ImageRows:
    """The image rows of one split, across its archives: ``read(rows)`` returns them as one array.

    Each part is a stored member (read with ``pread``, the file opened on first use in each
    process) or an array in memory (a decompressed member)."""

    def __init__(self, parts: list["_StoredPart | np.ndarray"], row_shape: tuple[int, ...], layout: Layout):
        self.parts = parts
        self.row_shape, self.layout = row_shape, layout
        self.row_bytes = math.prod(row_shape)
        self.starts = np.cumsum([0] + [p.count if isinstance(p, _StoredPart) else len(p) for p in parts])
        self._files: dict[str, int] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_files": {}}  # a worker process opens its own files

    def _fd(self, path: str) -> int:
        if self._pid != os.getpid():  # forked: open files of its own (the inherited ones are left alone)
            self._files, self._pid = {}, os.getpid()
        if path not in self._files:
            self._files[path] = os.open(path, os.O_RDONLY)
        return self._files[path]

    def close(self) -> None:
        """Close the files this process opened (a later ``read`` opens them again)."""
        if self._pid == os.getpid():
            for fd in self._files.values():
                os.close(fd)
        self._files = {}

    def __del__(self) -> None:
        self.close()

    def read(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``rows`` (in that order) as a uint8 array, new or ``out``; the files are read in row order."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows),) + self.row_shape, dtype=np.uint8) if out is None else out
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"rows {rows.min()}..{rows.max()} out of range for {len(self)} rows")
        ascending = np.argsort(rows, kind="stable")
        in_part = np.searchsorted(self.starts, rows[ascending], side="right") - 1
        for number, part in enumerate(self.parts):
            places = ascending[in_part == number]
            if not places.size:
                continue
            local = rows[places] - self.starts[number]
            if isinstance(part, np.ndarray):
                out[places] = part[local]
                continue
            fd, flat = self._fd(part.path), out.reshape(len(out), -1)
            for place, row in zip(places.tolist(), local.tolist(), strict=True):
                if os.preadv(fd, [flat[place]], part.offset + row * self.row_bytes) != self.row_bytes:
                    raise UserError(f"{part.path} ends before row {row}; the file is damaged, rebuild it")
        return out


def read_formatted(rows: ImageRows, indices: np.ndarray, format_: "BatchFormat", out: np.ndarray) -> np.ndarray:
    """Rows ``indices`` of ``rows`` in ``format_``, into ``out``: read straight into it when the
    format is the stored bytes; else read in ascending row order a CPU cache's worth at a time,
    each image formatted into its place (no batch-sized array of the stored bytes)."""
    if format_.dtype == "uint8" and format_.layout == rows.layout:
        return rows.read(indices, out=out)
    indices = np.asarray(indices, dtype=np.int64)
    ascending = np.argsort(indices, kind="stable")
    staging = np.empty((max(1, min(len(indices), _CACHE_BYTES // rows.row_bytes)),) + rows.row_shape, np.uint8)
    for start in range(0, len(indices), len(staging)):
        places = ascending[start:start + len(staging)]
        stored = rows.read(indices[places], out=staging[:len(places)])
        format_.apply(stored, rows.layout, out=out, places=places)
    return out


def open_split(source: "str | Path | Subset", split: str) -> tuple[ImageRows, np.ndarray, Path]:
    """The image rows and the labels of ``split`` of an archive, a shard index or a ``Subset``, and
    the path the build is called by (to find its manifest)."""
    path = Path(source.path if isinstance(source, Subset) else source)
    archives = shard_paths(path) if OutputNames.is_index(path) else [path]
    parts: list[_StoredPart | np.ndarray] = []
    labels = []
    shape = None
    for archive in archives:
        headers = array_headers(archive)
        key = f"X_{split}"
        if key not in headers:
            splits = [k[2:] for k in headers if k.startswith("X_")]
            raise UserError(f"{archive} has no {split} split; it has: {', '.join(splits)}")
        header = headers[key]
        shape = header.shape[1:]
        if header.compressed:
            gigabytes = header.shape[0] * header.row_bytes / 1e9
            warnings.warn(f"{archive}: {key} is compressed, so it is decompressed into memory ({gigabytes:.1f} GB); "
                          "build without --compress to read it from disk instead", stacklevel=_stacklevel_outside())
            parts.append(read_arrays(archive, [key])[key])
        else:
            parts.append(_StoredPart(str(archive), int(header.data_offset or 0), header.shape[0]))
        labels.append(read_arrays(archive, [f"y_{split}"])[f"y_{split}"])
    assert shape is not None
    rows = ImageRows(parts, tuple(shape), _stored_layout(path, tuple(shape)))
    return rows, np.concatenate(labels).astype(np.int32, copy=False), path


def _stacklevel_outside() -> int:
    """The ``stacklevel`` of a warning given here that names the first caller outside this package."""
    level = 2
    frame: FrameType | None = sys._getframe(2)
    while (frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR)
           and frame.f_globals.get("__name__") != "__main__"):  # python -m packer.cli: name the CLI's line
        level, frame = level + 1, frame.f_back
    return level


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _stored_layout(path: Path, row_shape: tuple[int, ...]) -> Layout:
    """How the build stored its images: its manifest's ``layout``, else (no manifest) guessed from
    the shape of a row (channels first when only the first axis is 3)."""
    from .checking import read_manifest

    manifest_path = OutputNames.sibling(path, "manifest")
    if manifest_path.is_file():
        layout = read_manifest(manifest_path).get("options", {}).get("layout")
        if layout in ("nhwc", "nchw"):
            return layout
    return "nchw" if row_shape[0] == 3 and row_shape[-1] != 3 else "nhwc"


@dataclass(frozen=True)
class BatchFormat:
    """What a batch's images become: ``dtype``, ``normalize`` (``mean`` and ``std`` per channel on
    the 0-1 scale, or None) and ``layout``; see the module docstring."""

    dtype: Dtype = "uint8"
    layout: Layout = "nhwc"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @property
    def numpy_dtype(self) -> type[np.generic]:
        return np.float32 if self.dtype == "float32" else np.uint8

    def _axes(self, stored: Layout) -> tuple[int, int, int, int]:
        """How ``apply`` moves the axes of a batch in the ``stored`` layout."""
        return (0, 1, 2, 3) if self.layout == stored else (0, 3, 1, 2) if self.layout == "nchw" else (0, 2, 3, 1)

    def shape(self, stored_shape: tuple[int, ...], stored: Layout) -> tuple[int, ...]:
        """The shape ``apply`` gives images of ``stored_shape`` in the ``stored`` layout."""
        return tuple(stored_shape[axis] for axis in self._axes(stored))

    def apply(self, images: np.ndarray, stored: Layout, out: np.ndarray | None = None,
              places: np.ndarray | None = None) -> np.ndarray:
        """``images`` (uint8, in the ``stored`` layout) in this format, C-ordered: into ``out`` (of
        ``shape`` and this dtype) when given, else a new array; with ``places``, image ``i`` goes
        to ``out[places[i]]`` (``out`` then holds the batch the images are part of)."""
        axes = self._axes(stored)
        if self.dtype == "uint8" and out is None:
            return np.ascontiguousarray(images.transpose(axes))
        if out is None:
            out = np.empty(self.shape(images.shape, stored), np.float32)
        if places is None:  # a few images at a time, so the add finds the products still in the CPU cache
            step = max(1, _CACHE_BYTES * len(out) // max(1, out.nbytes))
            pairs = [(slice(start, start + step), slice(start, start + step)) for start in range(0, len(images), step)]
        else:
            pairs = [(slice(i, i + 1), slice(place, place + 1)) for i, place in enumerate(places.tolist())]
        if self.dtype == "uint8":
            for source, target in pairs:
                np.copyto(out[target], images[source].transpose(axes))
            return out
        mean = np.asarray(self.mean or (0.0, 0.0, 0.0), np.float64)
        std = np.asarray(self.std or (1.0, 1.0, 1.0), np.float64)
        scale, offset = (1 / (255 * std)).astype(np.float32), (-mean / std).astype(np.float32)
        if self.layout == "nchw":  # per channel plane
            scale, offset = scale.reshape(1, 3, 1, 1), offset.reshape(1, 3, 1, 1)
        else:  # along an image line of interleaved channels (3x faster than a 3-value broadcast)
            scale, offset = np.tile(scale, out.shape[2]), np.tile(offset, out.shape[2])
        for source, target in pairs:  # (x / 255 - mean) / std as one multiply and one add
            into, values = out[target], images[source].transpose(axes)
            if self.layout == "nhwc":
                line = (len(into), -1, scale.size)
                into, values = into.reshape(line), values.reshape(line)
            np.multiply(values, scale, out=into)
            if self.mean is not None:
                into += offset
        return out


_CACHE_BYTES = 2 << 20  # the bytes formatted at once, or read to be formatted (a CPU cache's worth)


def batch_format(path: Path, dtype: Dtype | None, normalize: Normalize, layout: Layout) -> BatchFormat:
    """Check the format options; ``"manifest"`` reads the mean and std beside ``path``."""
    if dtype not in (None, "uint8", "float32"):
        raise UserError(f"dtype {dtype!r} must be 'uint8' or 'float32'")
    if normalize not in (None, "imagenet", "manifest"):
        raise UserError(f"normalize {normalize!r} must be None, 'imagenet' or 'manifest'")
    if layout not in ("nhwc", "nchw"):
        raise UserError(f"layout {layout!r} must be 'nhwc' or 'nchw'")
    if normalize and dtype == "uint8":
        raise UserError(f"normalize={normalize!r} gives float32 values; drop dtype='uint8' or normalize")
    mean: tuple[float, ...] | None = IMAGENET_MEAN if normalize == "imagenet" else None
    std: tuple[float, ...] | None = IMAGENET_STD if normalize == "imagenet" else None
    if normalize == "manifest":
        mean, std = manifest_statistics(path)
    return BatchFormat("float32" if normalize else dtype or "uint8", layout, mean, std)


def manifest_statistics(path: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel mean and standard deviation of ``X_train`` from the manifest beside ``path``,
    on the 0-1 scale."""
    from .checking import read_manifest

    manifest_path = OutputNames.sibling(path, "manifest")
    if not manifest_path.is_file():
        raise UserError(f"normalize='manifest' needs {manifest_path}, which is not beside {path}; copy it there or "
                        "use normalize='imagenet'")
    stats = read_manifest(manifest_path).get("X_train_stats") or {}
    mean, std = stats.get("mean"), stats.get("std")
    if not (isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == 3
            and all(isinstance(v, int | float) for v in mean + std) and min(std) > 0):
        raise UserError(f"{manifest_path} has no X_train mean and std (a build without train images?); "
                        "use normalize='imagenet'")
    return tuple(v / 255 for v in mean), tuple(v / 255 for v in std)


def epoch_rows(count: int, shuffle: bool, seed: int, epoch: int, rank: int, world_size: int) -> np.ndarray:
    """This process's rows of an epoch, in the order they are served (see the module docstring)."""
    order = np.random.default_rng([seed, epoch]).permutation(count) if shuffle else np.arange(count)
    share = count // world_size
    return order[rank * share:(rank + 1) * share] if world_size > 1 else order


class ReusedArrays:
    """Arrays of one shape and dtype, handed out again once nothing refers to them any more (their
    reference count says so: a view, a tensor made with ``torch.from_numpy`` or a list holding one
    keeps it taken). A batch's memory is then not asked from the kernel, zeroed and faulted in
    anew for every batch: on a virtual machine fresh memory can take a third of a second."""

    def __init__(self, shape: tuple[int, ...], dtype):
        self.shape, self.dtype = shape, np.dtype(dtype)
        self.arrays: list[np.ndarray] = []

    def take(self) -> np.ndarray:
        """An array nothing else refers to: a kept one, or a new one (kept from then on)."""
        for array, count in zip(self.arrays, _reference_counts(self.arrays), strict=True):
            if count <= _UNREFERENCED:
                return array
        self.arrays.append(_array_in_small_pages(self.shape, self.dtype))
        return self.arrays[-1]

    def taken(self) -> int:
        """How many of the arrays something outside refers to."""
        return sum(count > _UNREFERENCED for count in _reference_counts(self.arrays))


def _reference_counts(arrays: list[np.ndarray]) -> list[int]:
    return [sys.getrefcount(array) for array in arrays]


# the count of an array only its list refers to, in this Python (the references a call and a loop
# add differ between versions)
_UNREFERENCED = _reference_counts([np.empty(0)])[0]


def _array_in_small_pages(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An array in anonymous memory of its own, in 4 KiB pages. numpy asks for transparent huge
    pages for a large array, and on a virtual machine the first touch of those varies from 13 to
    370 ms per 147 MiB between runs, against a steady 53 ms in small pages; once touched, both
    are as fast. (``np.empty`` where ``mmap`` has no anonymous private mappings.)"""
    nbytes = math.prod(shape) * dtype.itemsize
    if not nbytes or not hasattr(mmap, "MAP_ANONYMOUS"):
        return np.empty(shape, dtype)
    memory = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_NOHUGEPAGE"):  # where huge pages are "always", not only when asked for
        memory.madvise(mmap.MADV_NOHUGEPAGE)
    return np.ndarray(shape, dtype, buffer=memory)  # its views refer to it (a reshape's would not)


@dataclass(eq=False, repr=False)
class Batches:
    """One epoch of ``(X, y)`` batches of a split; iterate it (again for the same epoch), ``len``
    is the number of batches. Made by ``batches``."""

    rows: ImageRows
    labels: np.ndarray
    order: np.ndarray
    batch_size: int
    drop_last: bool
    format: BatchFormat
    prefetch: int

    def __len__(self) -> int:
        whole, rest = divmod(len(self.order), self.batch_size)
        return whole + (1 if rest and not self.drop_last else 0)

    def _batches(self, rows: ImageRows, outputs: ReusedArrays) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Each batch's images in an array of ``outputs`` (the last, shorter batch in the front of one)."""
        try:
            for number in range(len(self)):
                # made by a call, so this frame holds no reference to a batch while it waits
                yield self._batch(rows, self.order[number * self.batch_size:(number + 1) * self.batch_size], outputs)
        finally:
            rows.close()

    def _batch(self, rows: ImageRows, indices: np.ndarray, outputs: ReusedArrays) -> tuple[np.ndarray, np.ndarray]:
        return read_formatted(rows, indices, self.format, outputs.take()[:len(indices)]), self.labels[indices]

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        rows = copy.copy(self.rows)  # files of this pass's own, which another pass ending cannot close
        outputs = batch_arrays(rows, self.format, min(self.batch_size, len(self.order)))
        return _read_ahead(self._batches(rows, outputs), self.prefetch, outputs)


def batch_arrays(rows: ImageRows, format_: BatchFormat, batch_size: int) -> ReusedArrays:
    """Reused arrays for batches of ``batch_size`` of ``rows`` in ``format_``."""
    shape = format_.shape((batch_size,) + rows.row_shape, rows.layout)
    return ReusedArrays(shape, format_.numpy_dtype)


def check_batching(**whole_numbers: int) -> None:
    """A one-line error for an option of the order or batching that is not a whole number of at
    least 1 (``batch_size``, ``world_size``) or 0 (the others), or a ``rank`` not below ``world_size``."""
    for name, value in whole_numbers.items():
        least = 1 if name in ("batch_size", "world_size") else 0
        if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < least:
            raise UserError(f"{name} {value!r} must be a whole number of at least {least}")
    rank, world_size = whole_numbers.get("rank", 0), whole_numbers.get("world_size", 1)
    if rank >= world_size:
        raise UserError(f"rank {rank} must be below world_size {world_size} (ranks count from 0)")


def check_shares(count: int, split: str, world_size: int) -> None:
    """A one-line error when ``world_size`` processes leave no row of ``split``'s ``count`` to each."""
    if world_size > 1 and count < world_size:
        raise UserError(f"world_size {world_size} is more than the {count} {split} images, so a process would get "
                        f"none; use at most {count} processes")


def batches(source: "str | Path | Subset", split: str = "train", batch_size: int = 256, shuffle: bool = True,
            seed: int = 0, epoch: int = 0, drop_last: bool = False, dtype: Dtype | None = None,
            normalize: Normalize = None, layout: Layout = "nhwc", rank: int = 0, world_size: int = 1,
            prefetch: int = 2) -> Batches:
    """One epoch of ``(X, y)`` numpy batches of ``split``; see the module docstring."""
    check_batching(batch_size=batch_size, world_size=world_size, prefetch=prefetch, seed=seed, epoch=epoch, rank=rank)
    rows, labels, path = open_split(source, split)
    check_shares(len(rows), split, world_size)
    format_ = batch_format(path, dtype, normalize, layout)
    order = epoch_rows(len(rows), shuffle, int(seed), int(epoch), int(rank), int(world_size))
    return Batches(rows, labels, order, int(batch_size), drop_last, format_, int(prefetch))


@dataclass(frozen=True)
class EpochSpeed:
    """How fast one epoch of batches went: what was read, how many images, how long."""

    what: str
    images: int
    nbytes: int
    seconds: float

    def line(self) -> str:
        rate = self.images / self.seconds if self.seconds else 0.0
        return (f"{self.what}: {self.images} images in {self.seconds:.2f} s: {rate:,.0f} images/s "
                f"({self.nbytes / self.seconds / 1e6 if self.seconds else 0:,.0f} MB/s)")


def timed_epoch(what: str, epoch) -> EpochSpeed:
    """Iterate ``epoch`` (``(X, y)`` batches of numpy arrays or tensors) to its end, timed."""
    import time

    started, images, nbytes = time.perf_counter(), 0, 0
    for X, _ in epoch:
        images += len(X)
        nbytes += X.nbytes if hasattr(X, "nbytes") else X.element_size() * X.nelement()
    return EpochSpeed(what, images, nbytes, time.perf_counter() - started)


_END = object()


@dataclass(frozen=True)
class _Failed:
    error: BaseException


def _read_ahead(batches: Iterator[tuple[np.ndarray, np.ndarray]], depth: int, outputs: ReusedArrays) -> Iterator:
    """``batches``, whose images are arrays of ``outputs``, made by a background thread ahead of
    the consumer (in this thread when ``depth`` is 0). At most ``depth + 1`` batches are alive at
    once: those waiting, the one being made and the one the consumer holds. A batch's array is
    free again (for the next batch) when nothing refers to it any more, not when it is handed
    over, so a consumer that still holds the previous batch while it asks for the next does not
    make room for one more. A consumer that keeps batches, and so holds every place while it
    waits for the next, gets one more place: it is never stuck. Stopping early stops the thread;
    its error is raised here."""
    if depth == 0:
        yield from batches
        return
    ready: queue.Queue = queue.Queue()
    lock = threading.Lock()
    state = {"allowed": depth + 1, "making": False}
    stop = threading.Event()

    def produce() -> None:
        try:
            while True:
                while outputs.taken() >= state["allowed"]:  # freed by the consumer letting go: polled
                    if stop.wait(0.001):
                        return
                with lock:
                    state["making"] = True
                batch = next(batches, None)
                if batch is None or stop.is_set():
                    ready.put(_END)
                    return
                with lock:
                    ready.put(batch)
                    state["making"] = False
                del batch
        except BaseException as exc:  # handed to the consumer
            ready.put(_Failed(exc))

    thread = threading.Thread(target=produce, name="packer-batches", daemon=True)
    thread.start()
    try:
        while True:
            with lock:  # nothing waiting or being made, every place taken: all in the consumer's hands
                if ready.empty() and not state["making"] and outputs.taken() >= state["allowed"]:
                    state["allowed"] += 1
            try:
                item = ready.get(timeout=0.05)
            except queue.Empty:
                continue
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
            del item
    finally:
        stop.set()
        thread.join()
