"""PyTorch: a map-style ``Dataset`` over an archive, and the usual ``DataLoader`` of it.

    from packer.torch import dataset, loader
    train = loader("out_files/imagenet30_cls.npz", batch_size=256, normalize="imagenet")
    for X, y in train:           # X: (256, 3, 224, 224) float32 tensor, y: (256,) int64 tensor
        ...

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
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.utils.data

from .batching import Dtype, Layout, Normalize, batch_format, open_split
from .loading import Subset


class ArchiveDataset(torch.utils.data.Dataset):
    """The images and labels of one split of an archive; see the module docstring."""

    def __init__(self, source: "str | Path | Subset", split: str = "train", transform: Callable | None = None,
                 dtype: Dtype | None = None, normalize: Normalize = None, layout: Layout = "nchw"):
        self.rows, self.labels, path = open_split(source, split)
        self.format = batch_format(path, dtype, normalize, layout)
        self.transform = transform
        self.split = split

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """Items ``indices`` as one ``(images, labels)`` pair of tensors, read in row order. In a
        ``DataLoader`` worker the images are made in shared memory, so handing them to the main
        process copies nothing."""
        rows = np.asarray(indices, dtype=np.int64)
        if rows.size and (rows.min() < -len(self) or rows.max() >= len(self)):
            raise IndexError(f"indices {rows.min()}..{rows.max()} out of range for the {len(self)} {self.split} images")
        rows %= max(len(self), 1)
        labels = torch.from_numpy(self.labels[rows].astype(np.int64))
        if self.transform is not None:
            return torch.stack([image for image, _ in self._items(rows)]), labels
        stored_shape = (len(rows),) + self.rows.row_shape
        images = torch.empty(self.format.shape(stored_shape, self.rows.layout),
                             dtype=torch.float32 if self.format.dtype == "float32" else torch.uint8)
        if torch.utils.data.get_worker_info() is not None:
            images.share_memory_()
        if self.format.dtype == "uint8" and self.format.layout == self.rows.layout:
            self.rows.read(rows, out=images.numpy())
        else:
            self.format.apply(self.rows.read(rows), self.rows.layout, out=images.numpy())
        return images, labels

    def _items(self, rows: np.ndarray) -> list[tuple[torch.Tensor, int]]:
        images = torch.from_numpy(self.format.apply(self.rows.read(rows), self.rows.layout))
        items = []
        for image, label in zip(images, self.labels[rows].tolist(), strict=True):
            items.append((self.transform(image) if self.transform else image, label))
        return items

    def __getitem__(self, index):
        """Item ``index``: ``(image, label)``; or, for a list of indices (what ``loader``'s batch
        sampler gives), the whole batch as ``batch`` makes it."""
        if not isinstance(index, int | np.integer):
            return self.batch(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for the {len(self)} {self.split} images")
        return self._items(np.array([index % len(self)]))[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int]]:
        """A batch's items, read in row order (a ``DataLoader`` with ``batch_size`` calls this)."""
        return self._items(np.asarray(indices, dtype=np.int64))


def dataset(source: "str | Path | Subset", split: str = "train", transform: Callable | None = None,
            dtype: Dtype | None = None, normalize: Normalize = None, layout: Layout = "nchw") -> ArchiveDataset:
    """``split`` of an archive, a shard index or a ``Subset`` as a map-style ``Dataset``."""
    return ArchiveDataset(source, split, transform, dtype, normalize, layout)


def loader(source: "str | Path | Subset", split: str = "train", batch_size: int = 256, shuffle: bool | None = None,
           num_workers: int | None = None, seed: int = 0, drop_last: bool = False, **dataset_options
           ) -> torch.utils.data.DataLoader:
    """The usual ``DataLoader`` of ``dataset(source, split, **dataset_options)``: shuffled for
    ``train`` (unless ``shuffle`` says otherwise) with a generator seeded by ``seed``, ``num_workers``
    worker processes (default: up to 4, one per core) kept alive between epochs, pinned memory
    when CUDA is there. Its sampler hands each worker a whole batch of indices, which the dataset
    reads and formats at once into one tensor (no per-image tensors to collate)."""
    data = dataset(source, split, **dataset_options)
    workers = min(4, len(os.sched_getaffinity(0))) if num_workers is None else num_workers
    generator = torch.Generator().manual_seed(seed)
    order = (torch.utils.data.RandomSampler(data, generator=generator)
             if (split == "train" if shuffle is None else shuffle) else torch.utils.data.SequentialSampler(data))
    return torch.utils.data.DataLoader(
        data, batch_size=None, sampler=torch.utils.data.BatchSampler(order, batch_size, drop_last),
        num_workers=workers, persistent_workers=workers > 0, pin_memory=torch.cuda.is_available(),
        generator=generator)
