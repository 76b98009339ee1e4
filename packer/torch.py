"""PyTorch: a map-style ``Dataset`` over an archive, and the usual ``DataLoader`` of it.

    from packer.torch import dataset, loader
    train = loader("out_files/imagenet30_cls.npz", batch_size=256, normalize="imagenet")
    for epoch in range(10):
        for X, y in train:       # X: (256, 3, 224, 224) float32 tensor, y: (256,) int64 tensor
            ...

``loader`` serves the batches of ``packer.batches`` with the same ``seed``,
``rank``, ``world_size`` and ``layout`` (the loader's default is ``"nchw"``;
it shuffles only ``train`` by default), as torch tensors: epoch 0 on its first
iteration, epoch 1 on the next, and so on (``set_epoch(e)`` picks the next
one, as with a ``DistributedSampler``).

``dataset(path, split)`` is a ``torch.utils.data.Dataset`` (map-style, so
``DataLoader`` shuffling, samplers, ``DistributedSampler`` and ``num_workers``
work as usual). Item ``i`` is ``(image, label)``: the image a tensor in the
format of ``packer.batches`` (``dtype``, ``normalize``, ``layout``; here
``layout="nchw"`` by default, as torch models expect) then ``transform``
applied to it, the label an int. The archive is read with ``pread`` by the
row reader of ``batching.py``, opened lazily in each process (safe with fork
and spawn workers), never memory-mapped, so a worker's memory stays at the
rows it is reading. Indexed with a list of indices, the dataset gives the whole
batch as one ``(images, labels)`` pair of tensors (``batch``), read in row order
and, in a worker, made in shared memory; ``loader`` asks it that way, so no
per-image tensors are collated and nothing is copied to hand a batch over. A
``DataLoader`` of your own with ``batch_size`` asks a batch's items at once
(``__getitems__``), also read in row order. Tensors share the numpy arrays'
memory (``torch.from_numpy``).

torch is an optional extra (``pip install "imagenet-subset[torch]"``);
``import packer`` never imports it, this module does.
"""
import operator
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

try:
    import torch
    import torch.utils.data
except ImportError as error:  # pragma: no cover (the tests that import this module have torch)
    raise ImportError('packer.torch needs torch: pip install "imagenet-subset[torch]"') from error

from .batching import (
    BatchFormat,
    Dtype,
    Layout,
    Normalize,
    ReusedArrays,
    batch_arrays,
    batch_format,
    check_batching,
    check_shares,
    epoch_rows,
    open_split,
    read_formatted,
)
from .errors import UserError
from .loading import Subset
from .work import default_workers


class ArchiveDataset(torch.utils.data.Dataset):
    """The images and labels of one split of an archive; see the module docstring."""

    def __init__(self, source: "str | Path | Subset", split: str = "train", transform: Callable | None = None,
                 dtype: Dtype | None = None, normalize: Normalize = None, layout: Layout = "nchw"):
        self.rows, self.labels, path = open_split(source, split)
        self.format = batch_format(path, dtype, normalize, layout)
        self.transform = transform
        self.split = split
        self.shared: _SharedBuffers | None = None  # set by ``loader``: where its workers write batches

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """Items ``indices`` as one ``(images, labels)`` pair of tensors, read in row order. In a
        ``DataLoader`` worker the images are made in shared memory, so handing them to the main
        process copies nothing."""
        rows = self._rows(indices)
        if self.transform is not None:
            return torch.stack([image for image, _ in self._items(rows)]), self._labels(rows)
        return self._images(rows, self.format), self._labels(rows)

    def _labels(self, rows: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.labels[rows].astype(np.int64))

    def _rows(self, indices) -> np.ndarray:
        """``indices`` as row numbers, counted from the end when negative, as a list's."""
        rows = np.asarray(indices, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < -len(self) or rows.max() >= len(self)):
            raise IndexError(f"indices {rows.min()}..{rows.max()} out of range for the {len(self)} {self.split} images")
        return rows % max(len(self), 1)

    def _images(self, rows: np.ndarray, format_: BatchFormat) -> torch.Tensor:
        """Rows ``rows`` in ``format_``, in a new tensor (in shared memory in a ``DataLoader`` worker)."""
        images = self._new_images(format_, len(rows), shared=torch.utils.data.get_worker_info() is not None)
        read_formatted(self.rows, rows, format_, images.numpy())
        return images

    def _stored(self, batch: "AsStored") -> "tuple[torch.Tensor | _InSharedBuffer, torch.Tensor]":
        """The images of ``batch`` as uint8 in this dataset's layout, for ``ArchiveLoader`` to format:
        written into one of the loader's shared buffers when a worker of it finds one free (only the
        buffer's number is handed over), else in a new tensor."""
        rows = self._rows(batch)
        labels = self._labels(rows)
        stored = BatchFormat("uint8", self.format.layout)
        worker = torch.utils.data.get_worker_info()
        if self.shared is not None and worker is not None:
            index = self.shared.claim(worker.id, batch.epoch)
            if index is not None:
                read_formatted(self.rows, rows, stored, self.shared.batch(index, len(rows)))
                return _InSharedBuffer(index, len(rows)), labels
        return self._images(rows, stored), labels

    def _new_images(self, format_: BatchFormat, count: int, shared: bool = False, pinned: bool = False
                    ) -> torch.Tensor:
        shape = format_.shape((count,) + self.rows.row_shape, self.rows.layout)
        if shared or pinned:
            images = torch.empty(shape, dtype=getattr(torch, format_.dtype), pin_memory=pinned)
            return images.share_memory_() if shared else images
        # numpy asks the kernel for huge pages for a large array: 5x fewer page faults than torch.empty's
        return torch.from_numpy(np.empty(shape, format_.numpy_dtype))

    def formatted(self, stored: torch.Tensor, out: np.ndarray | None = None, pinned: bool = False) -> torch.Tensor:
        """Images as ``_stored`` gives them (uint8, this dataset's layout) in this dataset's format:
        into ``out`` (an array of ``len(stored)`` images in it) when given, else new (``pinned``
        memory when asked)."""
        images = torch.from_numpy(out) if out is not None else self._new_images(self.format, len(stored),
                                                                                  pinned=pinned)
        self.format.apply(stored.numpy(), self.format.layout, out=images.numpy())
        return images

    def _items(self, rows: np.ndarray) -> list[tuple[torch.Tensor, int]]:
        images = torch.from_numpy(self.format.apply(self.rows.read(rows), self.rows.layout))
        items = []
        for image, label in zip(images, self.labels[rows].tolist(), strict=True):
            items.append((self.transform(image) if self.transform else image, label))
        return items

    def __getitem__(self, index):
        """Item ``index``: ``(image, label)``; or, for a list of indices (what ``loader``'s batch
        sampler gives), the whole batch as ``batch`` makes it."""
        if isinstance(index, AsStored):
            return self._stored(index)
        if isinstance(index, slice):
            raise TypeError(f"the dataset takes an index or a list of indices, not the slice {index}; "
                            f"use list(range(len(dataset)))[{index.start}:{index.stop}:{index.step}]")
        if isinstance(index, torch.Tensor | np.ndarray) and index.ndim == 0:
            index = operator.index(index.item())
        if not isinstance(index, int | np.integer):
            return self.batch(index)
        return self._items(self._rows([index]))[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int]]:
        """A batch's items, read in row order (a ``DataLoader`` with ``batch_size`` calls this)."""
        return self._items(self._rows(indices))


def dataset(source: "str | Path | Subset", split: str = "train", transform: Callable | None = None,
            dtype: Dtype | None = None, normalize: Normalize = None, layout: Layout = "nchw") -> ArchiveDataset:
    """``split`` of an archive, a shard index or a ``Subset`` as a map-style ``Dataset``."""
    return ArchiveDataset(source, split, transform, dtype, normalize, layout)


class AsStored(list):
    """A batch's indices, for which the dataset gives the images as uint8 in its layout (``_stored``),
    for ``ArchiveLoader`` to format in the main process; ``epoch`` counts the loader's passes."""

    def __init__(self, indices, epoch: int):
        super().__init__(indices)
        self.epoch = epoch


@dataclass(frozen=True)
class _InSharedBuffer:
    """A batch a worker wrote into buffer ``index`` of the loader's ``_SharedBuffers`` (its first
    ``count`` images), handed over instead of the images themselves."""

    index: int
    count: int


class _SharedBuffers:
    """Buffers in shared memory that the loader's workers write uint8 batches into, and the
    training process formats from and gives back: mapped once in each process, so a batch crosses
    with no new shared-memory segment and no page faults (about 0.2 ms per image otherwise).

    Worker ``w`` writes only into buffers ``w * per`` to ``w * per + per - 1``, one for each batch
    it may have waiting plus the one being formatted. Buffer ``i`` is free while ``free[i]`` is 1,
    or when the pass of the loader that took it (``epoch[i]``) is over: a pass left early never
    formats its last batches, and a worker runs its tasks in order, so when it reads for a later
    pass its earlier tasks are done. A worker that finds none of its own free within
    ``CLAIM_SECONDS`` makes its batch in a new shared tensor instead, so it never waits long."""

    CLAIM_SECONDS = 0.05

    def __init__(self, workers: int, per: int, shape: tuple[int, ...]):
        self.per = per
        self.buffers = torch.empty((workers * per,) + shape, dtype=torch.uint8).share_memory_()
        self.free = torch.ones(workers * per, dtype=torch.int32).share_memory_()
        self.epoch = torch.zeros(workers * per, dtype=torch.int64).share_memory_()

    def claim(self, worker: int, epoch: int) -> int | None:
        free, taken_in = self.free.numpy(), self.epoch.numpy()
        deadline = time.monotonic() + self.CLAIM_SECONDS
        while True:
            for index in range(worker * self.per, (worker + 1) * self.per):
                if free[index] or taken_in[index] < epoch:
                    free[index], taken_in[index] = 0, epoch
                    return index
            if time.monotonic() > deadline:
                return None
            time.sleep(0.0005)

    def batch(self, index: int, count: int) -> np.ndarray:
        return self.buffers[index].numpy()[:count]

    def give_back(self, index: int) -> None:
        self.free.numpy()[index] = 1


class EpochOrder(torch.utils.data.Sampler):
    """The rows of an epoch in the order of ``packer.batches`` (``batching.epoch_rows`` of
    ``seed`` and the epoch, this ``rank``'s share of ``world_size``): epoch 0 first, then the
    next epoch each time it is iterated again, or the one ``set_epoch`` names (as
    ``DistributedSampler``'s, for the next iteration). An iteration counts once its first row
    is asked for."""

    def __init__(self, count: int, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1):
        self.count, self.shuffle, self.seed, self.rank, self.world_size = count, shuffle, seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        check_batching(epoch=epoch)
        self.epoch = epoch

    def __len__(self) -> int:
        return self.count // self.world_size

    def __iter__(self):
        rows = epoch_rows(self.count, self.shuffle, self.seed, self.epoch, self.rank, self.world_size)
        self.epoch += 1
        yield from rows.tolist()


class _StoredBatches(torch.utils.data.BatchSampler):
    """Batches of indices as ``AsStored``, marked with the loader's pass (``passes``, which
    ``ArchiveLoader`` counts)."""

    passes = 0

    def __iter__(self):
        return (AsStored(batch, self.passes) for batch in super().__iter__())


class ArchiveLoader(torch.utils.data.DataLoader):
    """The ``DataLoader`` ``loader`` makes. When its batches are float32 (and there is no
    ``transform``), the workers hand over the images as uint8, a quarter of the bytes, and the
    main process formats them: making a float32 batch in shared memory costs a worker more than
    formatting it (shared memory gets no huge pages), and the main process formats from the
    CPU cache, a few images at a time, into arrays reused once nothing refers to them
    (``batching.ReusedArrays``)."""

    def set_epoch(self, epoch: int) -> None:
        """Serve epoch ``epoch`` of the order next (as ``DistributedSampler.set_epoch``)."""
        self.sampler.sampler.set_epoch(epoch)  # type: ignore[attr-defined]

    def __iter__(self):
        stored = isinstance(self.sampler, _StoredBatches)
        if stored:
            self.sampler.passes += 1  # type: ignore[attr-defined]
        batches = super().__iter__()
        if not stored:
            return batches
        size = min(self.sampler.batch_size, len(self.sampler.sampler))  # type: ignore[attr-defined]
        return self._formatted(batches, batch_arrays(self.dataset.rows, self.dataset.format, size))

    def _formatted(self, batches, outputs: ReusedArrays):
        for images, labels in batches:
            # made by a call, so this frame holds no reference to a batch while the next is made
            yield self._format(images, outputs), labels

    def _format(self, images: "torch.Tensor | _InSharedBuffer", outputs: ReusedArrays) -> torch.Tensor:
        data: ArchiveDataset = self.dataset  # type: ignore[assignment]
        if not isinstance(images, _InSharedBuffer):
            return self._format_stored(images, outputs)
        assert data.shared is not None
        formatted = self._format_stored(torch.from_numpy(data.shared.batch(images.index, images.count)), outputs)
        data.shared.give_back(images.index)
        return formatted

    def _format_stored(self, stored: torch.Tensor, outputs: ReusedArrays) -> torch.Tensor:
        """``stored`` formatted into an array of ``outputs``; with pinned memory, into a new pinned
        tensor (one is copied to the GPU while the next is made)."""
        out = None if self.pin_memory else outputs.take()[:len(stored)]
        return self.dataset.formatted(stored, out, self.pin_memory)  # type: ignore[attr-defined]


def loader(source: "str | Path | Subset", split: str = "train", batch_size: int = 256, shuffle: bool | None = None,
           num_workers: int | None = None, seed: int = 0, drop_last: bool = False, prefetch: int = 2,
           rank: int = 0, world_size: int = 1, **dataset_options) -> ArchiveLoader:
    """The usual ``DataLoader`` of ``dataset(source, split, **dataset_options)``: its batches are
    those of ``packer.batches`` with the same ``seed``, ``rank`` and ``world_size`` (shuffled for
    ``train`` unless ``shuffle`` says otherwise), epoch 0 on the first iteration, the next one on
    each iteration after (or the one ``set_epoch`` names); ``num_workers`` worker processes
    (default: up to 4, one per core) kept alive between epochs, reading ``prefetch`` batches ahead
    in all (at least one per worker: ``prefetch_factor`` is ``prefetch / num_workers`` rounded
    up), pinned memory when CUDA is there. Its sampler hands each worker a whole batch of
    indices, which the dataset reads at once into one tensor (no per-image tensors to collate);
    float32 batches are formatted in the main process (see ``ArchiveLoader``)."""
    if "epoch" in dataset_options:
        raise UserError("loader takes no epoch: it serves epoch 0 first, then the next each time; "
                        "call .set_epoch(e) on it to choose the next one")
    check_batching(batch_size=batch_size, world_size=world_size, prefetch=prefetch, seed=seed, rank=rank,
                   **({} if num_workers is None else {"num_workers": num_workers}))
    data = dataset(source, split, **dataset_options)
    check_shares(len(data), split, world_size)
    workers = min(4, default_workers()) if num_workers is None else num_workers
    order = EpochOrder(len(data), split == "train" if shuffle is None else shuffle, seed, rank, world_size)
    as_stored = workers > 0 and data.transform is None and data.format.dtype == "float32"
    ahead = max(1, -(-prefetch // workers)) if workers else None
    if as_stored:
        assert ahead is not None
        stored = BatchFormat("uint8", data.format.layout)
        data.shared = _SharedBuffers(workers, ahead + 1, stored.shape((max(1, min(batch_size, len(order))),)
                                                                        + data.rows.row_shape, data.rows.layout))
    return ArchiveLoader(
        data, batch_size=None,
        sampler=(_StoredBatches if as_stored else torch.utils.data.BatchSampler)(order, batch_size, drop_last),
        num_workers=workers, persistent_workers=workers > 0, pin_memory=torch.cuda.is_available(),
        prefetch_factor=ahead, generator=torch.Generator().manual_seed(seed))
