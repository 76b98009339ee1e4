"""Describe a subset: the metadata CSV and the manifest written beside the archive.

``<name>_cls_metadata.csv`` (comma-separated, ``\\n`` line ends, one row per label
in label order) has the columns:

==================  ===========================================================
subset_label        the label (``y_train``/``y_val`` value), 0-based list position
WNID                the class id, e.g. ``n01440764``; a group's WNIDs separated
                    by spaces; empty for ``rest``
human_label         name from LOC_synset_mapping.txt or map_clsloc.txt; the
                    group's name for a group; ``rest`` for the rest label
original_label      ILSVRC CLS-LOC id (1-1000) from map_clsloc.txt
imagenet_index      0-999 position among the sorted 1000 classes (model outputs)
num_train_images    images of this label packed into ``X_train``
num_val_images      images of this label packed into ``X_val``
num_holdout_images  (only with a holdout split) images in ``X_holdout``
==================  ===========================================================

A cell the tree's label files say nothing about (and ``original_label`` and
``imagenet_index`` of groups and ``rest``) is left empty.

``<name>_cls.manifest.json`` records how the archive was made and what is in
it, enough to check it (``verify``) and to rebuild it elsewhere (``build
--recipe``). It is UTF-8 JSON as ``write_json`` lays it out: one line per key of
the top two levels, each value below them on one line. Its entries, in this
order::

    manifest_version    1 (``MANIFEST_VERSION``). A reader refuses a manifest of a
                        higher version; one without this entry is version 1
    tool                "imagenet-subset"
    tool_version        the version that wrote it, e.g. "0.1.0"
    name                the subset name, the stem of every output (<name>_cls.npz); for
                        a size after the first of --sizes, that size's (<name>_64)
    options             what shapes the archive's bytes; a recipe rebuilds with them:
      resize_size         short side after resizing, in pixels
      crop_size           side of the square crop, in pixels
      resize              "crop" or "squash"
      resize_rule         that rule in words, e.g. "torchvision Resize(resize_size) +
                          CenterCrop(crop_size), bilinear (Pillow)"
      layout              "nhwc" (images (N, S, S, 3)) or "nchw" ((N, 3, S, S))
      fast                true with --fast (false for a squash size of --sizes)
      compress            true with --compress
      chunk_size          rows per chunk of work (32); a compressed archive's bytes
                          depend on it
      shard_size          rows of each split per shard, or null for one archive
      on_error            "fail" or "skip"
      sampling            {train_per_class, val_per_class, holdout_per_class, rest,
                          rest_val, seed, balance}: the options of those names, null
                          where not given (holdout_per_class and seed are 0 by
                          default, balance "labels")
    classes             one record per label, in label order: {label, name, wnids,
                        human_label}. name is a class's WNID, a group's name or "rest";
                        wnids is [] for the rest label, whose record also has
                        "rest": true; human_label is null where no label file names it
    subset_source       where the classes came from: "built-in:<list>", the class-list
                        file's name (no folders), "--classes a,b" or "--search text"; a
                        rebuild keeps its recipe's ("recipe" if the recipe has none)
    input               the layout read (a rebuild keeps its recipe's): {train_order,
                        val_labels, label_files}. train_order and val_labels name what
                        gave the train order and the val labels (a file name, or e.g.
                        "sorted listing of train/", "val/<wnid>/ folders"); label_files
                        maps train_cls, synset_mapping, val_solution, val_annotations,
                        map_clsloc and val_ground_truth to the file found (its name
                        only) or null. With --under or --group_by, also hierarchy:
                        {source, sha256, under, exclude, groups, group_by, overlap}:
                        the hierarchy's files (packaged, --wordnet, --hierarchy; file
                        names only) and their SHA-256; under, exclude and groups as
                        [{name, wnid}], each name given (or, for level:N, each group)
                        with the synset it resolved to; group_by and overlap as given
    splits              {split: {images, per_class}}: each split's row count and its
                        count per label. The splits are train and val, then holdout
                        with --holdout_per_class
    X_train_stats       {mean, std}: per channel [r, g, b] over X_train on the 0-255
                        scale, to 4 decimals; [null, null, null] without train images
    files               what the build wrote, each as {file, bytes, sha256}:
      metadata            the metadata CSV
      archive             the archive (without --shard_size)
      shards              with --shard_size: one record per shard, in order, each
                          with rows {split: [start, end)} too, its rows of each split
      index               with --shard_size: the file name of the shards' index
    sizes               only in a build of several sizes (--sizes): every size it
                        wrote, this one included, in --sizes order, each as {size,
                        name, fast, files}: the size as --sizes writes it ("72/64",
                        "squash:32"), its build name ("<name>_64"), whether --fast
                        applied to it, and its files as above
    skipped             [{split, path, reason}] of the unreadable images that
                        --on_error skip left out (path relative to the split's folder);
                        [] when none
    build               how the run went (nothing a rebuild reproduces):
      seconds             wall time
      images_per_second   images packed per second
      workers             the worker count the run used
      backend             "local" or "dask"
      resumed             true when --resume took up an interrupted run of this build
      finished_utc        when it ended, ISO 8601 in UTC: "2026-11-23T10:01:02+00:00"
    sources             {split: {root, label_source, paths, ids, labels, row_crc32}}:
                        root is the split's name (held-out images are in train/);
                        label_source as in input; then one value per row, in row
                        order: the image's path relative to the split's folder, its
                        id, its label, and the CRC-32 of its stored pixels; for
                        images downloaded from a URL list also image_ids (<wnid>_<n>),
                        urls and sha256 (of the file as downloaded), one per row (the
                        ids are the images' line numbers in the list)

Dates and timings live only here, never in the archive or the CSV. The shard
index ``<name>_cls.index.json`` (with ``--shard_size``) is JSON in the same
layout: {name, manifest, metadata, shards}, the last being the manifest's
``files.shards``.
"""
import csv
import hashlib
import json
import os

import numpy as np

from .subset import REST, Label, SubsetList
from .tree import ClassInfo


def _label_facts(label: Label, classes: dict[str, ClassInfo]) -> tuple:
    """(WNID cell, human_label, original_label, imagenet_index) of one label."""
    if label.is_rest:
        return "", REST, None, None
    if len(label.wnids) > 1 or label.name != label.wnids[0]:  # a group
        return " ".join(label.wnids), label.name, None, None
    info = classes.get(label.wnids[0], ClassInfo(None, None, None))
    return label.wnids[0], info.human_label, info.original_label, info.imagenet_index


METADATA_COLUMNS = ("subset_label", "WNID", "human_label", "original_label", "imagenet_index")


def metadata_table(subset: SubsetList, classes: dict[str, ClassInfo], splits) -> list[dict]:
    """One row per label of ``subset``: ``METADATA_COLUMNS`` then ``num_<split>_images``, the
    counts of images actually packed in each split. Unknown values are None."""
    counts = {f"num_{images.split}_images": np.bincount(images.labels, minlength=len(subset.labels))
              for images in splits}
    return [dict(zip(METADATA_COLUMNS, (i, *_label_facts(label, classes)), strict=True))
            | {column: int(per_label[i]) for column, per_label in counts.items()}
            for i, label in enumerate(subset.labels)]


def class_records(subset: SubsetList, classes: dict[str, ClassInfo]) -> list[dict]:
    """The manifest's ``classes``: label, name, WNIDs, human label, and ``rest`` for the rest label."""
    records = []
    for i, label in enumerate(subset.labels):
        record = {"label": i, "name": label.name, "wnids": list(label.wnids),
                  "human_label": _label_facts(label, classes)[1]}
        if label.is_rest:
            record["rest"] = True
        records.append(record)
    return records


def write_metadata_csv(rows: list[dict], path) -> None:
    """The rows of ``metadata_table`` as CSV: a header line, ``\\n`` line ends, None as an
    empty cell, quotes only where a cell needs them (as ``pandas.DataFrame.to_csv`` writes)."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else list(METADATA_COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


MANIFEST_VERSION = 1  # raised when an entry changes meaning or goes; a new entry keeps it


def channel_statistics(sums, squares, count: int) -> dict:
    """Per-channel mean and standard deviation (0-255 scale) from exact sums over ``count`` values each."""
    if count == 0:
        return {"mean": [None] * 3, "std": [None] * 3}
    mean = np.array(sums, dtype=np.float64) / count
    variance = np.maximum(np.array(squares, dtype=np.float64) / count - mean * mean, 0.0)
    return {"mean": [round(float(v), 4) for v in mean], "std": [round(float(v), 4) for v in np.sqrt(variance)]}


def split_sources(images, row_crcs) -> dict:
    """The manifest's record of one split: where each row came from, its label and pixel CRC-32."""
    return {
        "root": images.split,
        "label_source": images.label_source,
        "paths": list(images.paths),
        "ids": images.ids.tolist(),
        "labels": images.labels.tolist(),
        "row_crc32": [int(c) for c in row_crcs],
        **(images.origins or {}),
    }


def sha256_of_file(path, block_size: int = 8 << 20) -> str:
    """SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(block_size):
            digest.update(block)
    return digest.hexdigest()


def file_record(path, name: str, sha256: str | None = None) -> dict:
    """``{file, bytes, sha256}`` of an output (``path`` may be its unfinished copy)."""
    return {"file": name, "bytes": os.path.getsize(path), "sha256": sha256 or sha256_of_file(path)}


def plan_fingerprint(plan, output_options: dict) -> str:
    """SHA-256 of everything that decides the output bytes: options, labels, and every row."""
    digest = hashlib.sha256(json.dumps([plan.name, output_options, class_records(plan.subset, plan.classes)],
                                       sort_keys=True, default=str).encode())
    for images in plan.splits:
        digest.update(f"\n{images.split}:{images.source}\n".encode())
        digest.update("\n".join(images.paths).encode())
        digest.update(images.ids.tobytes())
        digest.update(images.labels.tobytes())
    return digest.hexdigest()


def write_json(document: dict, path) -> None:
    """``document`` as UTF-8 JSON: the keys of the top two levels one per line, each value
    below them on one line (json's C encoder: quick even for a million source paths)."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(_json_text(document, levels=2) + "\n")


def _json_key(key) -> str:
    """A dict key as ``json.dumps`` writes it: strings as they are, 1 as "1", None as "null"."""
    return json.dumps(key if isinstance(key, str) else json.dumps(key), ensure_ascii=False)


def _json_text(value, levels: int, indent: str = "") -> str:
    if not isinstance(value, dict) or not value or levels == 0:
        return json.dumps(value, ensure_ascii=False)
    inner = indent + " "
    items = (f"{inner}{_json_key(key)}: {_json_text(item, levels - 1, inner)}" for key, item in value.items())
    return "{\n" + ",\n".join(items) + "\n" + indent + "}"
