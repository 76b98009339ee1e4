"""Build a subset archive: the pipeline from a tree and a class list to files on disk.

    plan_build:  find_tree -> read_subset_list -> list and label the images
    execute:     lay out the archive -> run_chunks (parallel) -> close it
                 -> metadata CSV -> manifest -> rename all three into place

Outputs go to ``<out_dir>/<name>_cls.npz``, ``<name>_cls_metadata.csv`` and
``<name>_cls.manifest.json``. All are written under temporary names in
``out_dir`` and renamed into place only when complete: a failed or interrupted
run leaves no partial file at the final paths and never touches an earlier output.
"""
import contextlib
import datetime
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import describe
from .errors import UserError
from .npz import ArraySpec, DeflatedNpzWriter, StoredNpzWriter
from .sampling import Sampling, apply_sampling
from .subset import (Label, SubsetList, check_classes_present, classes_by_name, classes_by_search, label_images,
                     read_subset_list)
from .transform import LAYOUTS, RESIZE_MODES, TransformSpec
from .tree import ClassInfo, SplitImages, Tree, class_table, find_tree, list_train_images, list_val_images, train_classes
from .work import CHUNK_SIZE, Chunk, run_chunks

RESIZE_RULE = "torchvision Resize(resize_size) + CenterCrop(crop_size), bilinear (Pillow)"


@dataclass(frozen=True)
class BuildOptions:
    """Everything that decides what a build does. ``workers=None`` means all cores."""

    subset_name: str | None
    data_dir: str
    devkit_dir: str | None = None
    out_dir: str = "out_files"
    resize_size: int = 256
    crop_size: int = 224
    fast: bool = False
    compress: bool = False
    workers: int | None = None
    progress: bool = True
    resize: str = "crop"
    layout: str = "nhwc"
    classes: tuple[str, ...] | None = None
    search: str | None = None
    train_per_class: int | None = None
    val_per_class: int | None = None
    holdout_per_class: int = 0
    rest: int | None = None
    rest_val: int | None = None
    seed: int = 0

    def sampling(self) -> Sampling:
        return Sampling(self.train_per_class, self.val_per_class, self.holdout_per_class, self.rest,
                        self.rest_val, self.seed)

    def output_options(self) -> dict:
        """The options that shape the archive's bytes (recorded in the manifest)."""
        rule = RESIZE_RULE if self.resize == "crop" else "whole image to crop_size x crop_size, box filter (Pillow)"
        return {"resize_size": self.resize_size, "crop_size": self.crop_size, "resize": self.resize,
                "resize_rule": rule, "layout": self.layout, "fast": self.fast, "compress": self.compress,
                "chunk_size": CHUNK_SIZE, "sampling": asdict(self.sampling())}


@dataclass(frozen=True)
class BuildPlan:
    """Everything decided before any image is decoded: names, labelled images in row order, class facts."""

    name: str
    subset: SubsetList
    splits: tuple[SplitImages, ...]
    classes: dict[str, ClassInfo]
    input: dict
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class BuildResult:
    """What a build wrote and how long it took."""

    name: str
    archive: Path
    metadata: Path
    manifest: Path
    counts: dict[str, int]
    num_classes: int
    archive_bytes: int
    sha256: str
    seconds: float
    notes: tuple[str, ...] = field(default=())

    @property
    def images_per_second(self) -> float:
        return sum(self.counts.values()) / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        counts = ", ".join(f"{n} {split}" for split, n in self.counts.items())
        return (f"{self.name}: {counts} images, {self.num_classes} {'class' if self.num_classes == 1 else 'classes'} -> {self.archive} "
                f"({self.archive_bytes / 1e6:.1f} MB) in {self.seconds:.1f} s "
                f"({self.images_per_second:.0f} images/s)")


def default_workers() -> int:
    """The cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _check_options(options: BuildOptions) -> TransformSpec:
    """Every option's value, checked; the transform they describe."""
    for flag in ("resize_size", "crop_size"):
        value = getattr(options, flag)
        if not isinstance(value, int) or value < 1:
            raise UserError(f"--{flag} {value!r} must be a positive whole number of pixels")
    for flag in ("train_per_class", "val_per_class", "rest", "rest_val", "holdout_per_class"):
        value = getattr(options, flag)
        if value is not None and (not isinstance(value, int) or value < 0):
            raise UserError(f"--{flag} {value!r} must be a whole number of images, 0 or more")
    if not isinstance(options.seed, int):
        raise UserError(f"--seed {options.seed!r} must be a whole number")
    if options.resize not in RESIZE_MODES:
        raise UserError(f"--resize {options.resize!r} must be one of: {', '.join(RESIZE_MODES)}")
    if options.layout not in LAYOUTS:
        raise UserError(f"--layout {options.layout!r} must be one of: {', '.join(LAYOUTS)}")
    if options.resize == "crop" and options.crop_size > options.resize_size:
        raise UserError(f"--crop_size {options.crop_size} is larger than --resize_size {options.resize_size}; "
                        "the crop must fit inside the resized image")
    if options.fast and options.resize != "crop":
        raise UserError("--fast applies to --resize crop only; drop --fast or use --resize crop")
    if options.classes and options.search:
        raise UserError("--classes and --search both choose the classes; use one of them")
    if options.rest_val is not None and options.rest is None:
        raise UserError("--rest_val needs --rest N (the number of rest train images)")
    return TransformSpec(options.resize_size, options.crop_size, options.fast, options.resize, options.layout)


def _input_description(tree: Tree, splits: list[SplitImages]) -> dict:
    found = {kind: getattr(tree, kind).name if getattr(tree, kind) else None
             for kind in ("train_cls", "synset_mapping", "val_solution", "val_annotations", "map_clsloc",
                          "val_ground_truth")}
    return {"train_order": splits[0].label_source, "val_labels": splits[1].label_source, "label_files": found}


def _choose_subset(options: BuildOptions, tree: Tree, classes: dict[str, ClassInfo]) -> SubsetList:
    if options.classes or options.search:
        names = {w: c.human_label for w, c in sorted(classes.items()) if c.human_label}
        source = " / ".join(p.name for p in (tree.synset_mapping, tree.map_clsloc) if p) or "the tree"
        if options.classes:
            wnids = classes_by_name(list(options.classes), names, source)
            default_name, how = "custom", f"--classes {','.join(options.classes)}"
        else:
            wnids = classes_by_search(options.search, names, source)
            default_name, how = "search_" + re.sub(r"[^a-z0-9]+", "_", options.search.lower()).strip("_"), \
                f"--search {options.search}"
        subset = SubsetList(options.subset_name or default_name, tuple(Label(w, (w,)) for w in wnids), how)
    else:
        subset = read_subset_list(options.subset_name or "imagenet30")
    return subset.with_rest() if options.rest is not None else subset


def plan_build(options: BuildOptions) -> BuildPlan:
    """Read the tree and the class list and decide every row of the archive."""
    _check_options(options)
    tree = find_tree(options.data_dir, options.devkit_dir)
    classes = class_table(tree)
    subset = _choose_subset(options, tree, classes)
    folders = train_classes(tree)
    check_classes_present(subset, folders, tree.train_dir)
    listed = folders if options.rest is not None else list(subset.wnids)
    train = label_images(list_train_images(tree, listed), subset)
    val = label_images(list_val_images(tree, listed), subset)
    rest_label = len(subset.labels) - 1 if options.rest is not None else None
    splits, notes = apply_sampling(train, val, [label.name for label in subset.labels], rest_label, options.sampling())
    description = _input_description(tree, splits)
    return BuildPlan(subset.name, subset, tuple(splits), classes, description, tuple(notes))


def _array_specs(splits, spec: TransformSpec) -> list[ArraySpec]:
    specs = []
    for images in splits:
        n = len(images)
        specs += [ArraySpec(f"X_{images.split}", "|u1", spec.stored_shape(n)),
                  ArraySpec(f"y_{images.split}", "<i4", (n,)),
                  ArraySpec(f"{images.split}_id", "<i4", (n,))]
    return specs


def _chunks(splits, writer) -> Iterator[Chunk]:
    for images in splits:
        key = f"X_{images.split}"
        root = str(images.root)
        for start in range(0, len(images), CHUNK_SIZE):
            paths = tuple(os.path.join(root, p) for p in images.paths[start:start + CHUNK_SIZE])
            if writer.compressed:
                yield Chunk(key, start, paths)
            else:
                yield Chunk(key, start, paths, writer.path, writer.pixel_offset(key, start))


def _temporary_path(out_dir: Path, final_name: str) -> str:
    """A new empty hidden file beside ``final_name`` (permissions as the umask gives a new file)."""
    path = out_dir / f".{final_name}.{os.getpid()}.{secrets.token_hex(4)}.partial"
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as exc:
        raise UserError(f"cannot write to --out_dir {out_dir}: {exc.strerror}; choose a writable folder") from None
    return str(path)


def _file_record(path: Path, sha256: str | None = None) -> dict:
    if sha256 is None:
        sha256 = describe.sha256_of_file(path)
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": sha256}


@dataclass
class _Totals:
    """What the parent accumulates from the chunk results, per split."""

    row_crcs: dict[str, np.ndarray]
    sums: dict[str, np.ndarray]
    squares: dict[str, np.ndarray]


def _run(splits, writer, spec: TransformSpec, workers: int, progress: bool) -> _Totals:
    """Feed the chunks to the workers and the results to the writer, with a progress bar per split."""
    from tqdm import tqdm

    totals = _Totals({s.split: np.zeros(len(s), dtype=np.uint32) for s in splits},
                     {s.split: np.zeros(3, dtype=np.uint64) for s in splits},
                     {s.split: np.zeros(3, dtype=np.uint64) for s in splits})
    sizes = {images.split: len(images) for images in splits}
    bar, bar_split = None, None
    try:
        for result in run_chunks(_chunks(splits, writer), spec, workers):
            writer.add_chunk(result.key, result.crc32, result.nbytes, result.payload)
            split = result.key.removeprefix("X_")
            totals.row_crcs[split][result.start:result.start + result.count] = result.row_crcs
            totals.sums[split] += np.array(result.channel_sums, dtype=np.uint64)
            totals.squares[split] += np.array(result.channel_squares, dtype=np.uint64)
            if split != bar_split:
                if bar is not None:
                    bar.close()
                bar_split = split
                bar = tqdm(total=sizes[split], desc=split, unit="img", disable=not progress, dynamic_ncols=True)
            bar.update(result.count)
    finally:
        if bar is not None:
            bar.close()
    return totals


def execute(plan: BuildPlan, options: BuildOptions, started: float | None = None) -> BuildResult:
    """Pack the images of ``plan`` with ``options``; see the module docstring for the guarantees."""
    started = time.perf_counter() if started is None else started
    spec = _check_options(options)
    workers = default_workers() if options.workers is None else options.workers
    if not isinstance(workers, int) or workers < 1:
        raise UserError(f"--workers {workers!r} must be a whole number of at least 1")
    out_dir = Path(options.out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create --out_dir {out_dir}: {exc.strerror}; choose a writable folder") from None
    final = {"archive": out_dir / f"{plan.name}_cls.npz",
             "metadata": out_dir / f"{plan.name}_cls_metadata.csv",
             "manifest": out_dir / f"{plan.name}_cls.manifest.json"}
    specs = _array_specs(plan.splits, spec)
    needed = sum(s.nbytes for s in specs)
    free = shutil.disk_usage(out_dir).free
    if not options.compress and needed > free:
        raise UserError(f"--out_dir {out_dir} has {free / 1e9:.1f} GB free but the archive needs "
                        f"{needed / 1e9:.1f} GB; free some space, choose another folder, or add --compress")
    arrays = {}
    for images in plan.splits:
        arrays[f"y_{images.split}"] = images.labels
        arrays[f"{images.split}_id"] = images.ids
    table = describe.metadata_table(plan.subset, plan.classes, plan.splits)

    temporary = {kind: _temporary_path(out_dir, path.name) for kind, path in final.items()}
    writer = None
    try:
        writer_class = DeflatedNpzWriter if options.compress else StoredNpzWriter
        writer = writer_class(temporary["archive"], specs, arrays)
        totals = _run(plan.splits, writer, spec, workers, options.progress)
        writer.close()
        describe.write_metadata_csv(table, temporary["metadata"])
        seconds = time.perf_counter() - started
        manifest = _manifest(plan, options, totals, workers, seconds, spec,
                             _file_record(Path(temporary["archive"]), writer.sha256),
                             _file_record(Path(temporary["metadata"])), final)
        describe.write_json(manifest, temporary["manifest"])
        for kind in ("archive", "metadata", "manifest"):
            os.replace(temporary[kind], final[kind])
    except OSError as exc:
        raise UserError(f"writing {final['archive']} failed: {exc.strerror or exc}; "
                        "free space or fix permissions and run again (earlier outputs are untouched)") from None
    finally:
        if writer is not None:
            writer.abort()
        for path in temporary.values():
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
    notes = tuple(note for images in plan.splits for note in images.notes) + plan.notes
    return BuildResult(plan.name, final["archive"], final["metadata"], final["manifest"],
                       {s.split: len(s) for s in plan.splits}, len(plan.subset.labels),
                       final["archive"].stat().st_size, writer.sha256, seconds, notes)


def _manifest(plan, options, totals, workers, seconds, spec, archive_record, metadata_record, final) -> dict:
    from . import __version__

    archive_record["file"] = final["archive"].name
    metadata_record["file"] = final["metadata"].name
    train = plan.splits[0]
    images = sum(len(s) for s in plan.splits)
    return {
        "manifest_version": describe.MANIFEST_VERSION,
        "tool": "imagenet-subset",
        "tool_version": __version__,
        "name": plan.name,
        "options": options.output_options(),
        "classes": describe.class_records(plan.subset, plan.classes),
        "subset_source": plan.subset.source,
        "input": plan.input,
        "splits": {s.split: {"images": len(s), "per_class": np.bincount(s.labels, minlength=len(plan.subset.labels)).tolist()}
                   for s in plan.splits},
        "X_train_stats": describe.channel_statistics(totals.sums["train"], totals.squares["train"],
                                                     len(train) * spec.crop_size * spec.crop_size),
        "files": {"archive": archive_record, "metadata": metadata_record},
        "build": {"seconds": round(seconds, 3), "images_per_second": round(images / seconds, 1) if seconds else None,
                  "workers": workers, "finished_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")},
        "sources": {s.split: describe.split_sources(s, totals.row_crcs[s.split]) for s in plan.splits},
    }


def build(options: BuildOptions) -> BuildResult:
    """Plan and execute a build."""
    started = time.perf_counter()
    return execute(plan_build(options), options, started)


def build_subset(subset_name: str, data_dir: str, **options) -> BuildResult:
    """Build ``<out_dir>/<name>_cls.npz``, its metadata CSV and manifest; keyword options as ``BuildOptions``."""
    return build(BuildOptions(subset_name, str(data_dir), **options))
