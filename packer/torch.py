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
rows it is reading. ``DataLoader`` asks a batch's items at once
(``__getitems__``): they are read in row order. Tensors share the numpy
arrays' memory (``torch.from_numpy``): no extra copy.

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

    def _items(self, rows: np.ndarray) -> list[tuple[torch.Tensor, int]]:
        images = torch.from_numpy(self.format.apply(self.rows.read(rows), self.rows.layout))
        items = []
        for image, label in zip(images, self.labels[rows].tolist(), strict=True):
            items.append((self.transform(image) if self.transform else image, label))
        return items

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for the {len(self)} {self.split} images")
        return self._items(np.array([index % len(self)]))[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int]]:
        """A batch's items, read in row order (``DataLoader`` calls this for a whole batch)."""
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
    when CUDA is there."""
    data = dataset(source, split, **dataset_options)
    workers = min(4, len(os.sched_getaffinity(0))) if num_workers is None else num_workers
    return torch.utils.data.DataLoader(
        data, batch_size=batch_size, shuffle=split == "train" if shuffle is None else shuffle,
        num_workers=workers, persistent_workers=workers > 0, pin_memory=torch.cuda.is_available(),
        drop_last=drop_last, generator=torch.Generator().manual_seed(seed))

