"""Build a subset archive: options, the plan of every row, and the entry points.

    plan_build:  find_tree -> choose the classes -> list and label the images
                 -> sampling (per class, holdout, rest) -> notes on what the
                 metadata CSV will leave empty and which file would fill it
    execute:     (execute.py) pack the plan into archives, safely

``build_subset("imagenet30", data_dir=...)`` and ``build(BuildOptions(...))``
run both; ``plan_build`` alone decides everything without decoding an image.
"""
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import UserError
from .execute import execute
from .sampling import Sampling, apply_sampling
from .subset import (Label, SubsetList, check_classes_present, classes_by_name, classes_by_search, label_images,
                     read_subset_list)
from .transform import LAYOUTS, RESIZE_MODES, TransformSpec
from .tree import (ClassInfo, SplitImages, Tree, class_table, class_table_gaps, find_tree, human_labels,
                   list_train_images, list_val_images, train_classes)
from .work import CHUNK_SIZE

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
    on_error: str = "fail"
    resume: bool = False
    backend: str = "local"
    scheduler: str | None = None
    shard_size: int | None = None

    def sampling(self) -> Sampling:
        return Sampling(self.train_per_class, self.val_per_class, self.holdout_per_class, self.rest,
                        self.rest_val, self.seed)

    def output_options(self) -> dict:
        """The options that shape the archive's bytes (recorded in the manifest)."""
        rule = RESIZE_RULE if self.resize == "crop" else "whole image to crop_size x crop_size, box filter (Pillow)"
        return {"resize_size": self.resize_size, "crop_size": self.crop_size, "resize": self.resize,
                "resize_rule": rule, "layout": self.layout, "fast": self.fast, "compress": self.compress,
                "chunk_size": CHUNK_SIZE, "shard_size": self.shard_size, "on_error": self.on_error,
                "sampling": asdict(self.sampling())}


@dataclass(frozen=True)
class BuildPlan:
    """Everything decided before any image is decoded: names, labelled images in row order, class facts,
    and notes for the user (labels left short of images, metadata columns left empty)."""

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
    archives: tuple[Path, ...] = field(default=())

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


def check_options(options: BuildOptions) -> TransformSpec:
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
    if options.on_error not in ("fail", "skip"):
        raise UserError(f"--on_error {options.on_error!r} must be 'fail' or 'skip'")
    if options.backend not in ("local", "dask"):
        raise UserError(f"--backend {options.backend!r} must be 'local' or 'dask'")
    if options.backend == "dask":
        if not options.scheduler:
            raise UserError("--backend dask needs --scheduler tcp://HOST:PORT (the address of a running Dask scheduler)")
        try:
            import distributed  # noqa: F401
        except ImportError:
            raise UserError("--backend dask needs Dask: pip install 'imagenet-subset[dask]'") from None
    if options.shard_size is not None and (not isinstance(options.shard_size, int) or options.shard_size < 1):
        raise UserError(f"--shard_size {options.shard_size!r} must be a whole number of rows, at least 1")
    if options.rest_val is not None and options.rest is None:
        raise UserError("--rest_val needs --rest N (the number of rest train images)")
    return TransformSpec(options.resize_size, options.crop_size, options.fast, options.resize, options.layout)


def _input_description(tree: Tree, splits: list[SplitImages]) -> dict:
    found = {kind: getattr(tree, kind).name if getattr(tree, kind) else None
             for kind in ("train_cls", "synset_mapping", "val_solution", "val_annotations", "map_clsloc",
                          "val_ground_truth")}
    return {"train_order": splits[0].label_source, "val_labels": splits[1].label_source, "label_files": found}


def _choose_subset(options: BuildOptions, tree: Tree, classes: dict[str, ClassInfo], folders: list[str]) -> SubsetList:
    if options.classes or options.search:
        names = human_labels(classes)
        if options.classes:
            source = " / ".join(p.name for p in (tree.synset_mapping, tree.map_clsloc) if p) or "the tree"
            wnids = classes_by_name(list(options.classes), names, source)
            default_name, how = "custom", f"--classes {','.join(options.classes)}"
        else:
            wnids = classes_by_search(options.search, names, folders, str(tree.train_dir))
            default_name, how = "search_" + re.sub(r"[^a-z0-9]+", "_", options.search.lower()).strip("_"), \
                f"--search {options.search}"
        subset = SubsetList(options.subset_name or default_name, tuple(Label(w, (w,)) for w in wnids), how)
    else:
        subset = read_subset_list(options.subset_name or "imagenet30")
    return subset.with_rest() if options.rest is not None else subset


def plan_build(options: BuildOptions) -> BuildPlan:
    """Read the tree and the class list and decide every row of the archive."""
    check_options(options)
    tree = find_tree(options.data_dir, options.devkit_dir)
    classes = class_table(tree)
    folders = train_classes(tree)
    subset = _choose_subset(options, tree, classes, folders)
    check_classes_present(subset, folders, tree.train_dir)
    listed = folders if options.rest is not None else list(subset.wnids)
    train = label_images(list_train_images(tree, listed), subset)
    val = label_images(list_val_images(tree, listed), subset)
    rest_label = len(subset.labels) - 1 if options.rest is not None else None
    splits, notes = apply_sampling(train, val, [label.name for label in subset.labels], rest_label, options.sampling())
    notes += class_table_gaps(tree, classes, subset.single_classes())
    description = _input_description(tree, splits)
    return BuildPlan(subset.name, subset, tuple(splits), classes, description, tuple(notes))


def build(options: BuildOptions) -> BuildResult:
    """Plan and execute a build."""
    started = time.perf_counter()
    return execute(plan_build(options), options, started)


def build_subset(subset_name: str, data_dir: str, **options) -> BuildResult:
    """Build ``<out_dir>/<name>_cls.npz``, its metadata CSV and manifest; keyword options as ``BuildOptions``."""
    return build(BuildOptions(subset_name, str(data_dir), **options))
