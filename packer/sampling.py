"""Choose the rows: per-label sampling, a held-out split, a ``rest`` pool; seeded and stable.

Every image has a rank: the first 8 bytes of BLAKE2b of ``"<seed>/<split>/<path>"``
read as an integer. Choosing ``n`` images of a label takes the ``n`` with the
smallest ranks, and the chosen rows keep their original order. A rank depends
only on the seed and the image's own path, so the choice is the same on every
machine, numpy version and worker count, and asking for more images only adds some.

Order of the choices, per label:

1. holdout (``holdout_per_class`` K): K train images move to the ``holdout`` split;
2. train (``train_per_class`` N): N of the remaining train images
   (the ``rest`` label takes ``rest`` images instead, from its pool);
3. val (``val_per_class`` M): M val images (``rest``: ``rest_val``, by default
   the rest pool's own val/train ratio times the rest's train count, rounded).

A label with fewer images than asked keeps all it has, and a note says so.

With ``balance="classes"`` a label of several classes (a group, ``rest``)
spreads its ``n`` images evenly over its classes instead of taking the ``n``
lowest ranks among all its images: every class gets ``n // k`` and ``n % k``
classes one more, those first by the BLAKE2b of ``"<seed>/<split>/<wnid>"``
(so the lucky classes change with the seed, as images do); a class with fewer
images than its share gives all it has, and what it lacks is spread over the
others the same way; within a class the lowest ranks are taken.
"""
import hashlib

import numpy as np

from .options import BuildOptions, shown
from .tree import SplitImages


def ranks(images: SplitImages, seed: int, split: str | None = None) -> np.ndarray:
    """The rank of every image (see the module docstring; ``split`` defaults to the images'), as uint64."""
    prefix = f"{seed}/{split or images.split}/".encode()
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(prefix + p.encode(), digest_size=8).digest(), "little") for p in images.paths),
        dtype=np.uint64, count=len(images))


def _rows_by_label(labels: np.ndarray, num_labels: int) -> list[np.ndarray]:
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(num_labels + 1))
    return [order[bounds[i]:bounds[i + 1]] for i in range(num_labels)]


def _lowest(rows: np.ndarray, rank: np.ndarray, n: int | None) -> np.ndarray:
    if n is None or len(rows) <= n:
        return rows
    return rows[np.argsort(rank[rows], kind="stable")[:n]]


def class_quotas(available: dict[str, int], n: int, order: list[str] | None = None) -> dict[str, int]:
    """How many of ``n`` images each class gives when they are spread evenly (module docstring);
    the images left over after an even share go to the classes first in ``order`` (default: WNID
    order)."""
    quota, left = {}, n
    pending = sorted(available, key=lambda wnid: (available[wnid], wnid))
    while pending and (small := [w for w in pending if available[w] <= left // len(pending)]):
        for wnid in small:
            quota[wnid], left = available[wnid], left - available[wnid]
        pending = [w for w in pending if w not in quota]
    position = {wnid: i for i, wnid in enumerate(order or sorted(available))}
    pending.sort(key=lambda wnid: position[wnid])
    share, extra = divmod(left, len(pending)) if pending else (0, 0)
    quota.update({wnid: share + (i < extra) for i, wnid in enumerate(pending)})
    return quota


def class_order(wnids, seed: int, split: str) -> list[str]:
    """``wnids`` in the order of the BLAKE2b digests (8 bytes, compared as bytes) of
    ``"<seed>/<split>/<wnid>"``: who gets an image left over after an even share, the same on
    every machine and different for every seed."""
    def rank(wnid: str) -> bytes:
        return hashlib.blake2b(f"{seed}/{split}/{wnid}".encode(), digest_size=8).digest()
    return sorted(wnids, key=rank)


def _balanced(rows: np.ndarray, wnids: list[str], rank: np.ndarray, n: int | None, order_of) -> np.ndarray:
    if n is None or len(rows) <= n:
        return rows
    by_class: dict[str, list[int]] = {}
    for row in rows:
        by_class.setdefault(wnids[row], []).append(row)
    quota = class_quotas({wnid: len(r) for wnid, r in by_class.items()}, n, order_of(by_class))
    return np.sort(np.concatenate([_lowest(np.array(r, dtype=np.int64), rank, quota[wnid])
                                   for wnid, r in by_class.items()]))


def _choose(images: SplitImages, counts: list[int | None], seed: int, exclude: np.ndarray | None = None,
            split: str | None = None, balance: str = "labels"):
    """Rows to keep (sorted) taking ``counts[label]`` per label, and the labels left short."""
    rank = ranks(images, seed, split) if any(c is not None for c in counts) else None
    if balance == "classes":
        def pick(rows, wnids, rank, n):
            return _balanced(rows, wnids, rank, n, lambda classes: class_order(classes, seed, split or images.split))
    else:
        def pick(rows, wnids, rank, n):
            return _lowest(rows, rank, n)
    kept, short = [], []
    for label, rows in enumerate(_rows_by_label(images.labelled, len(counts))):
        if exclude is not None:
            rows = rows[~exclude[rows]]
        wanted = counts[label]
        chosen = rows if rank is None else pick(rows, images.wnids, rank, wanted)
        if wanted is not None and len(chosen) < wanted:
            short.append((label, len(chosen)))
        kept.append(chosen)
    return np.sort(np.concatenate(kept)) if kept else np.zeros(0, dtype=np.int64), short


def _short_note(split: str, short, wanted: list[int | None], label_names: list[str]) -> list[str]:
    if not short:
        return []
    labels = shown([f"{label_names[label]} ({have} of {wanted[label]})" for label, have in short], 8)
    return [f"{split}: {len(short)} labels have fewer images than asked and kept all: {labels}"]


def apply_sampling(train: SplitImages, val: SplitImages, label_names: list[str], rest_label: int | None,
                   sampling: BuildOptions) -> tuple[list[SplitImages], list[str]]:
    """The splits to pack (train, val, and holdout when asked) and notes on labels left short;
    ``sampling`` gives ``train_per_class``, ``val_per_class``, ``holdout_per_class``, ``rest``,
    ``rest_val`` and ``seed`` (None: all)."""
    n = len(label_names)
    if (sampling.train_per_class, sampling.val_per_class, sampling.holdout_per_class, sampling.rest) == \
            (None, None, 0, None):
        return [train, val], []
    notes = []

    def per_label(count, rest_count):
        return [rest_count if label == rest_label else count for label in range(n)]

    holdout_rows = np.zeros(0, dtype=np.int64)
    in_holdout = np.zeros(len(train), dtype=bool)
    if sampling.holdout_per_class:
        wanted = per_label(sampling.holdout_per_class, sampling.holdout_per_class)
        holdout_rows, short = _choose(train, wanted, sampling.seed, split="holdout", balance=sampling.balance)
        in_holdout[holdout_rows] = True
        notes += _short_note("holdout", short, wanted, label_names)

    wanted = per_label(sampling.train_per_class, sampling.rest)
    train_rows, short = _choose(train, wanted, sampling.seed, exclude=in_holdout, balance=sampling.balance)
    notes += _short_note("train", short, wanted, label_names)

    rest_val = sampling.rest_val
    if rest_label is not None and rest_val is None and sampling.rest is not None:
        pool_train = int(np.count_nonzero(train.labelled == rest_label))
        pool_val = int(np.count_nonzero(val.labelled == rest_label))
        taken = int(np.count_nonzero(train.labelled[train_rows] == rest_label))
        rest_val = round(taken * pool_val / pool_train) if pool_train else 0
    wanted = per_label(sampling.val_per_class, rest_val)
    val_rows, short = _choose(val, wanted, sampling.seed, balance=sampling.balance)
    notes += _short_note("val", short, wanted, label_names)

    splits = [train.take(train_rows), val.take(val_rows)]
    if sampling.holdout_per_class:
        splits.append(train.take(holdout_rows, "holdout"))
    return splits, notes
