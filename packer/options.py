"""The plain values every stage shares: the options of a build, the transform they describe, the
file names of a build's outputs, its plan and its result.

This module imports nothing of the package but ``errors.py`` (types of other modules appear
only in annotations), so every stage can import it. Each option is declared once, as a field of
``BuildOptions`` whose metadata carries its help text; the command line (``cli.py``) is
generated from those fields, and ``BuildOptions`` checks every value when it is made, so an
option is validated once, wherever it comes from (command line, API, recipe).
"""
from __future__ import annotations

import dataclasses
import glob
import os
import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from .errors import UserError

if TYPE_CHECKING:
    from .subset import SubsetList
    from .tree import ClassInfo, SplitImages

Resize = Literal["crop", "squash"]
Layout = Literal["nhwc", "nchw"]
OnError = Literal["fail", "skip"]
Backend = Literal["local", "dask"]
Overlap = Literal["error", "first"]
Balance = Literal["labels", "classes"]

RESIZE_RULES: dict[str, str] = {
    "crop": "torchvision Resize(resize_size) + CenterCrop(crop_size), bilinear (Pillow)",
    "squash": "whole image to crop_size x crop_size, box filter (Pillow)",
}
CHUNK_SIZE = 32  # rows per chunk of work: the output bytes depend on it, never on the worker count

# The groups of command-line options, in the order ``--help`` shows them.
GENERAL, CHOOSING, SCALE = "general", "choosing classes and images", "running at scale"
HIERARCHY = "choosing by the WordNet hierarchy"
URLS = "building from an image-URL list (no ImageNet copy needed)"


ARCHIVE_INDEX_FOLDER = ".archive_index"  # in --out_dir, unless --index_dir says otherwise


def _option(default, help: str, *, group: str = GENERAL, shapes_output: bool = False, minimum: int | None = None,
            unit: str = "", metavar: str | None = None, flag: str | None = None):
    """A ``BuildOptions`` field. ``shapes_output``: the option decides the archive's bytes (a recipe
    fixes it); ``minimum`` and ``unit``: the least whole number allowed and what it counts (for
    messages); ``flag``: the command-line flag when it is not ``--<name>`` (a boolean whose flag is
    not its name is stored inverted: ``progress`` is ``--quiet``)."""
    return field(default=default, metadata={"help": help, "group": group, "shapes_output": shapes_output,
                                            "minimum": minimum, "unit": unit, "metavar": metavar, "flag": flag})


@dataclass(frozen=True, kw_only=True)
class BuildOptions:
    """Everything that decides what a build does; every value is checked when the options are made."""

    subset_name: str | None = _option(
        None, "built-in list (imagenet30, imagenet100, imagenette, imagewoof, hotdog, restricted_imagenet), "
              "aux_files/NAME.txt, or a path "
              "to a class-list file (default: imagenet30); with --classes or --search, the output name",
        shapes_output=True)
    data_dir: str = _option("./Data/CLS-LOC", "folder holding train/ and val/, or the ImageNet archives "
                                              "(ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar, Kaggle's zip), "
                                              "or one archive (default: ./Data/CLS-LOC)")
    devkit_dir: str | None = _option(None, "folder with map_clsloc.txt and the val ground truth, or the devkit "
                                           "archive (ILSVRC2012_devkit_t12.tar.gz), if not found beside the data")
    out_dir: str = _option("out_files", "output folder (default: out_files)")
    index_dir: str | None = _option(None, "folder keeping the member lists of archives, so each is scanned once "
                                          f"(default: OUT_DIR/{ARCHIVE_INDEX_FOLDER})")
    resize_size: int = _option(256, "short side after resizing (default: 256)", shapes_output=True, minimum=1,
                               unit="pixels")
    crop_size: int = _option(224, "side of the center crop (default: 224)", shapes_output=True, minimum=1,
                             unit="pixels")
    resize: Resize = _option("crop", "crop: short side to --resize_size then center crop (default); squash: whole "
                                     "image to --crop_size square with a box filter, no crop", shapes_output=True)
    sizes: tuple[str, ...] | None = _option(
        None, "several sizes from one decode of each image, comma-separated: R/C (short side to R, center crop C) "
              "or squash:S, e.g. 256/224,72/64,squash:32; the first is NAME_cls.npz, each other "
              "NAME_<C>[_squash]_cls.npz (instead of --resize_size, --crop_size, --resize)", shapes_output=True,
        metavar="SIZES")
    layout: Layout = _option("nhwc", "store images channels last (default) or channels first", shapes_output=True)
    fast: bool = _option(False, "resize only the window kept by the crop: faster, pixels within 1 of exact",
                         shapes_output=True)
    compress: bool = _option(False, "deflate the archive members (smaller, slower, not memory-mappable)",
                             shapes_output=True)
    workers: int | None = _option(None, "worker processes (default: all cores)", minimum=1, unit="workers")
    progress: bool = _option(True, "no progress bars or lines", flag="--quiet")

    classes: tuple[str, ...] | None = _option(
        None, "comma-separated class names or WNIDs from the tree's mapping file, e.g. \"goldfish,tench\" "
              "(instead of --subset_name)", group=CHOOSING, shapes_output=True)
    search: str | None = _option(None, "every class of the tree whose name contains this text, e.g. dog",
                                 group=CHOOSING, shapes_output=True)
    under: tuple[str, ...] | None = _option(
        None, "every class of the tree below any of these comma-separated WordNet synsets (names or WNIDs), one "
              "label each, e.g. dog", group=HIERARCHY, shapes_output=True, metavar="NAMES")
    exclude: tuple[str, ...] | None = _option(
        None, "leave out the classes below these synsets, e.g. \"toy dog\"", group=HIERARCHY, shapes_output=True,
        metavar="NAMES")
    group_by: str | None = _option(
        None, "one label per synset, holding every class below it (\"dog,cat,bird\"), or level:N for the "
              "ancestors N edges below the root; classes below none are left out (or go to --rest)",
        group=HIERARCHY, shapes_output=True, metavar="NAMES|level:N")
    overlap: Overlap = _option("error", "a class below two --group_by synsets is an error (default), or goes to "
                                        "the first one listed", group=HIERARCHY, shapes_output=True)
    balance: Balance = _option("labels", "with --train_per_class/--val_per_class: N images per label drawn from "
                                         "all its images (labels, default), or spread evenly over its classes",
                               group=HIERARCHY, shapes_output=True)
    wordnet: str | None = _option(None, "folder with ImageNet's full words.txt and wordnet.is_a.txt, for classes "
                                        "outside the 1,000 (default: the packaged hierarchy)", group=HIERARCHY,
                                  shapes_output=True, metavar="DIR")
    hierarchy: str | None = _option(None, "a PARENT CHILD edge list to use instead of WordNet's is-a edges (e.g. "
                                          "BREEDS')", group=HIERARCHY, shapes_output=True, metavar="FILE")
    train_per_class: int | None = _option(None, "at most N train images per label (seeded choice)", group=CHOOSING,
                                          shapes_output=True, minimum=0, unit="images")
    val_per_class: int | None = _option(None, "at most M val images per label (seeded choice)", group=CHOOSING,
                                        shapes_output=True, minimum=0, unit="images")
    holdout_per_class: int = _option(0, "move K train images per label to X_holdout/y_holdout/holdout_id",
                                     group=CHOOSING, shapes_output=True, minimum=0, unit="images")
    rest: int | None = _option(None, "add a final label 'rest' with N train images from all other classes",
                               group=CHOOSING, shapes_output=True, minimum=0, unit="images")
    rest_val: int | None = _option(None, "val images of 'rest' (default: proportional to --rest)", group=CHOOSING,
                                   shapes_output=True, minimum=0, unit="images")
    seed: int = _option(0, "seed of every random choice (default: 0)", group=CHOOSING, shapes_output=True)

    urls: str | None = _option(
        None, "an image-URL list (fall11_urls.txt; a CSV/TSV with image_id or wnid, and url; .gz/.tgz too): "
              "download the chosen images, then pack them (instead of --data_dir)", group=URLS, metavar="LIST")
    download_dir: str | None = _option(None, "where the images are downloaded, as a tree the packer reads (default: "
                                             "OUT_DIR/NAME_images); a second run there fetches only what is missing",
                                       group=URLS, metavar="DIR")
    connections: int = _option(32, "downloads at once (default: 32)", group=URLS, minimum=1, unit="connections")
    per_host: int = _option(8, "downloads at once from one host (default: 8)", group=URLS, minimum=1,
                            unit="connections")
    timeout: int = _option(30, "seconds to wait for a server to answer or send more (default: 30; connecting: "
                               "at most 10)", group=URLS, minimum=1, unit="seconds")
    max_bytes: int = _option(20_000_000, "largest image accepted, in bytes; a larger one is abandoned (default: "
                                         "20000000)", group=URLS, minimum=1, unit="bytes")
    min_size: int = _option(32, "smallest short side of an image kept, in pixels (default: 32)", group=URLS,
                            minimum=1, unit="pixels")
    reject_sha256: str | None = _option(None, "a file of SHA-256 digests (one per line) of placeholder images never "
                                              "to keep, besides the built-in ones", group=URLS, metavar="FILE")

    on_error: OnError = _option("fail", "an unreadable image stops the run (fail, default) or is left out and "
                                        "listed (skip)", group=SCALE, shapes_output=True)
    resume: bool = _option(False, "continue an interrupted run of the same build, redoing only unfinished chunks",
                           group=SCALE)
    shard_size: int | None = _option(None, "write shards NAME_cls-00000-of-0000N.npz of at most N rows per split, "
                                           "plus an index", group=SCALE, shapes_output=True, minimum=1,
                                     unit="rows")
    backend: Backend = _option("local", "local processes (default) or an existing Dask cluster (needs --scheduler)",
                               group=SCALE)
    scheduler: str | None = _option(None, "address of the Dask scheduler", group=SCALE, metavar="tcp://HOST:PORT")

    @property
    def index_folder(self) -> str:
        """Where the member lists of archives are kept: ``index_dir``, or ``ARCHIVE_INDEX_FOLDER`` in ``out_dir``."""
        return self.index_dir or os.path.join(self.out_dir, ARCHIVE_INDEX_FOLDER)

    def __post_init__(self):
        for name in PATH_OPTIONS:  # paths may come as Path objects
            if isinstance(getattr(self, name), os.PathLike):
                object.__setattr__(self, name, os.fspath(getattr(self, name)))
        for name in ("under", "exclude"):  # "a,b" as the command line gives it, or a list
            value = getattr(self, name)
            if isinstance(value, str | list | tuple):
                items = value.split(",") if isinstance(value, str) else value
                object.__setattr__(self, name, tuple(str(item).strip() for item in items if str(item).strip()))
                if not getattr(self, name):
                    raise UserError(f"--{name} {value!r} must name synsets, as \"dog\" or \"dog,cat\"")
        if self.group_by is not None and not any(name.strip() for name in str(self.group_by).split(",")):
            raise UserError("--group_by needs synset names, as \"dog,cat\", or level:N")
        if isinstance(self.classes, str):  # one name, or "a,b" as the command line gives it
            object.__setattr__(self, "classes", tuple(c.strip() for c in self.classes.split(",") if c.strip()))
        elif isinstance(self.classes, list | tuple):  # in the order given: the order makes the labels
            object.__setattr__(self, "classes", tuple(self.classes))
        if self.classes is not None and (not isinstance(self.classes, tuple) or not self.classes
                                         or not all(isinstance(c, str) and c.strip() for c in self.classes)):
            raise UserError(f"--classes {self.classes!r} must name classes, as \"goldfish,tench\" or a list of "
                            "names in label order")
        if self.search is not None and isinstance(self.search, str) and not self.search.strip():
            raise UserError("--search needs a text, such as dog")
        for name, problem in _field_problems(self):
            raise UserError(f"{name} {problem}")
        if self.sizes is not None:
            self._take_sizes()
        elif self.resize == "crop" and self.crop_size > self.resize_size:
            raise UserError(f"--crop_size {self.crop_size} is larger than --resize_size {self.resize_size}; "
                            "the crop must fit inside the resized image")
        if self.fast and not any(size.resize == "crop" for size in self.transforms):
            raise UserError("--fast applies to crop sizes only; drop --fast, or add an R/C size to --sizes"
                            if self.sizes else "--fast applies to --resize crop only; drop --fast or use --resize crop")
        choosers = [flag for flag, value in (("--classes", self.classes), ("--search", self.search),
                                             ("--under", self.under), ("--group_by", self.group_by)) if value]
        if len(choosers) > 1 and choosers != ["--under", "--group_by"]:
            raise UserError(f"{' and '.join(choosers)} each choose the classes; use one of them (--under may "
                            "narrow --group_by)")
        if self.balance == "classes" and (self.train_per_class, self.val_per_class, self.holdout_per_class,
                                          self.rest) == (None, None, 0, None):
            raise UserError("--balance classes spreads --train_per_class, --val_per_class, --holdout_per_class or "
                            "--rest images over a label's classes; give one of them")
        if self.exclude and not (self.under or self.group_by):
            raise UserError("--exclude removes classes from --under or --group_by; give one of them")
        if self.overlap != "error" and not self.group_by:
            raise UserError("--overlap applies to --group_by; drop it or give --group_by")
        if self.group_by and self.group_by.startswith("level:") and not self.group_by[6:].strip().isdigit():
            raise UserError(f"--group_by {self.group_by}: the level is a whole number of edges below the root, "
                            "as level:3")
        if self.rest_val is not None and self.rest is None:
            raise UserError("--rest_val needs --rest N (the number of rest train images)")
        if self.backend == "dask":
            if not self.scheduler:
                raise UserError("--backend dask needs --scheduler tcp://HOST:PORT (the address of a running Dask "
                                "scheduler)")
            try:
                import distributed  # noqa: F401
            except ImportError:
                raise UserError("--backend dask needs Dask: pip install 'imagenet-subset[dask]'") from None

    def _take_sizes(self) -> None:
        """Check ``sizes`` (text as the command line gives it, or a list) and make the first one this
        build's ``resize_size``, ``crop_size`` and ``resize``."""
        items = self.sizes.split(",") if isinstance(self.sizes, str) else self.sizes
        if not isinstance(items, list | tuple) or not items:
            raise UserError(f"--sizes {self.sizes!r} must list sizes, as 256/224,72/64,squash:32")
        if any(not str(item).strip() for item in items):
            raise UserError(f"--sizes {self.sizes!r} has an empty size (a comma too many?); list sizes as "
                            "256/224,72/64,squash:32")
        sizes = tuple(parse_size(str(item)) for item in items)
        texts = tuple(size.text for size in sizes)
        object.__setattr__(self, "sizes", texts)
        first = sizes[0]
        given = {"--resize_size": self.resize_size, "--crop_size": self.crop_size, "--resize": self.resize}
        defaults = {"--resize_size": 256, "--crop_size": 224, "--resize": "crop"}
        taken = {"--resize_size": first.resize_size, "--crop_size": first.crop_size, "--resize": first.resize}
        clashing = [flag for flag, value in given.items() if value not in (defaults[flag], taken[flag])]
        if clashing:
            raise UserError(f"{', '.join(clashing)} and --sizes both set the size; give every size in --sizes "
                            f"(as --sizes {texts[0]},...) and drop {', '.join(clashing)}")
        for name, value in zip(("resize_size", "crop_size", "resize"), taken.values(), strict=True):
            object.__setattr__(self, name, value)
        names = [size_name("NAME", size, i == 0) for i, size in enumerate(sizes)]
        twice = sorted({text for text, name in zip(texts, names, strict=True)
                        if names.count(name) > 1 or texts.count(text) > 1})
        if twice:
            raise UserError(f"--sizes {','.join(texts)}: {' and '.join(twice)} would write archives of the "
                            "same name (each size after the first is named by its crop); give each size once, and "
                            "two crops of one size after the first in separate builds")

    @property
    def size(self) -> Size:
        """The size of the images (of the first size, with ``sizes``)."""
        return Size(self.resize_size, self.crop_size, self.resize)

    @property
    def transform(self) -> TransformSpec:
        """What to do to every image (of the first size)."""
        return TransformSpec(self.resize_size, self.crop_size, self.fast and self.resize == "crop", self.resize,
                             self.layout)

    @property
    def transforms(self) -> tuple[TransformSpec, ...]:
        """What to do to every image, one spec per size (``--fast`` only where a size crops)."""
        return tuple(options.transform for options in self.each_size())

    def each_size(self) -> list[BuildOptions]:
        """These options for each size, as a build of that size alone would have them (no ``sizes``)."""
        if self.sizes is None:
            return [self]
        sizes = [parse_size(text) for text in self.sizes]
        return [dataclasses.replace(self, sizes=None, resize_size=size.resize_size, crop_size=size.crop_size,
                                    resize=size.resize, fast=self.fast and size.resize == "crop") for size in sizes]

    @property
    def sampling(self) -> dict[str, int | str | None]:
        """The options that choose images within the classes (``sampling.py``)."""
        return {name: getattr(self, name) for name in SAMPLING_OPTIONS}

    def output_options(self) -> dict:
        """The options that shape the archive's bytes, as the manifest records them."""
        several = {"sizes": list(self.sizes)} if self.sizes and len(self.sizes) > 1 else {}
        return {"resize_size": self.resize_size, "crop_size": self.crop_size, "resize": self.resize,
                "resize_rule": RESIZE_RULES[self.resize], "layout": self.layout, "fast": self.fast,
                "compress": self.compress, "chunk_size": CHUNK_SIZE, "shard_size": self.shard_size,
                "on_error": self.on_error, "sampling": self.sampling} | several


PATH_OPTIONS = ("subset_name", "data_dir", "devkit_dir", "out_dir", "index_dir", "wordnet", "hierarchy", "urls",
                "download_dir", "reject_sha256")
SAMPLING_OPTIONS = ("train_per_class", "val_per_class", "holdout_per_class", "rest", "rest_val", "seed", "balance")


def option_fields() -> list:
    """The fields of ``BuildOptions`` with their resolved types (``field.type`` is a string here)."""
    hints = typing.get_type_hints(BuildOptions)
    return [(f, hints[f.name]) for f in fields(BuildOptions)]


def _field_problems(options: BuildOptions):
    """``(what, problem)`` of every field whose value is not of its declared kind: ``what`` is the
    option's flag and value (its field name where the flag stores it inverted, as ``--quiet``)."""
    for f, kind in option_fields():
        value = getattr(options, f.name)
        name = f"{f.name if f.metadata['flag'] else '--' + f.name} {value!r}"
        allowed = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
        if value is None and type(None) in allowed:
            continue
        choices = next((typing.get_args(a) for a in allowed if typing.get_origin(a) is Literal), None)
        if choices is not None:
            if value not in choices:
                yield name, f"must be one of: {', '.join(choices)}"
        elif int in allowed:
            minimum = f.metadata["minimum"]
            if not isinstance(value, int) or isinstance(value, bool) or (minimum is not None and value < minimum):
                yield name, _WHOLE_NUMBER_RULES[(minimum, f.metadata["unit"])]
        elif bool in allowed and not isinstance(value, bool):
            yield name, "must be true or false"
        elif str in allowed and not isinstance(value, str):
            yield name, "must be a text"


_WHOLE_NUMBER_RULES = {  # (minimum, unit) -> what the value must be
    (None, ""): "must be a whole number",
    (1, "pixels"): "must be a positive whole number of pixels",
    (1, "workers"): "must be a whole number of at least 1",
    (1, "rows"): "must be a whole number of rows, at least 1",
    (0, "images"): "must be a whole number of images, 0 or more",
    (1, "connections"): "must be a whole number of connections, at least 1",
    (1, "seconds"): "must be a whole number of seconds, at least 1",
    (1, "bytes"): "must be a whole number of bytes, at least 1",
}


@dataclass(frozen=True)
class TransformSpec:
    """What to do to every image: sizes of the resize and the crop, and the mode (``transform.py``)."""

    resize_size: int = 256
    crop_size: int = 224
    fast: bool = False
    resize: Resize = "crop"
    layout: Layout = "nhwc"

    def stored_shape(self, count: int) -> tuple[int, int, int, int]:
        """Shape of ``count`` transformed images as the archive stores them."""
        c = self.crop_size
        return (count, 3, c, c) if self.layout == "nchw" else (count, c, c, 3)


@dataclass(frozen=True)
class Size:
    """One size of ``--sizes``: ``R/C`` (``resize`` "crop") or ``squash:S`` (``resize`` "squash",
    ``resize_size`` unused and kept at 256, as a build with ``--resize squash`` alone has it)."""

    resize_size: int
    crop_size: int
    resize: Resize

    @property
    def text(self) -> str:
        """The size as ``--sizes`` writes it: ``256/224`` or ``squash:32``."""
        return f"squash:{self.crop_size}" if self.resize == "squash" else f"{self.resize_size}/{self.crop_size}"


_SIZE_RE = re.compile(r"(?P<resize>[0-9]+)/(?P<crop>[0-9]+)|squash:(?P<squash>[0-9]+)")


def parse_size(text: str) -> Size:
    """``R/C`` or ``squash:S`` (whole numbers of at least 1, C at most R) as a ``Size``."""
    text = text.strip()
    found = _SIZE_RE.fullmatch(text)
    if found is None or min(int(n) for n in found.groups() if n is not None) < 1:
        raise UserError(f"--sizes {text!r}: each size is R/C (short side to R, center crop C, as 256/224) or "
                        "squash:S (whole image to S x S, as squash:32), whole numbers of pixels")
    if found["squash"]:
        return Size(256, int(found["squash"]), "squash")
    resize_size, crop_size = int(found["resize"]), int(found["crop"])
    if crop_size > resize_size:
        raise UserError(f"--sizes {text}: the crop {crop_size} is larger than the resized short side {resize_size}; "
                        "the crop must fit inside the resized image (R/C with C at most R)")
    return Size(resize_size, crop_size, "crop")


def size_name(name: str, size: Size, first: bool) -> str:
    """The build name of one size of a several-size build named ``name``: ``name`` itself for the
    first size, ``<name>_<C>`` for another crop, ``<name>_<S>_squash`` for a squash."""
    if first:
        return name
    return f"{name}_{size.crop_size}" + ("_squash" if size.resize == "squash" else "")


@dataclass(frozen=True)
class OutputNames:
    """Every file name of build ``name`` in its output folder::

        <name>_cls.npz                          the archive (or the shards below)
        <name>_cls-00000-of-00026.npz           shard 0 of 26 (with --shard_size)
        <name>_cls.index.json                   the shards' index
        <name>_cls_metadata.csv                 one row per label
        <name>_cls.manifest.json                how it was made, for verify and recipes
        .<name>_cls.work/                       the work folder of an unfinished build
    """

    name: str

    @property
    def archive(self) -> str:
        return f"{self.name}_cls.npz"

    def shard(self, number: int, count: int) -> str:
        return f"{self.name}_cls-{number:05d}-of-{count:05d}.npz"

    @property
    def index(self) -> str:
        return f"{self.name}_cls.index.json"

    @property
    def metadata(self) -> str:
        return f"{self.name}_cls_metadata.csv"

    @property
    def manifest(self) -> str:
        return f"{self.name}_cls.manifest.json"

    @property
    def work_folder(self) -> str:
        return f".{self.name}_cls.work"

    def archive_files_in(self, folder: Path) -> list[Path]:
        """This build's archive, shards (of any set) and shard index that ``folder`` holds."""
        return sorted(path for path in folder.glob(f"{glob.escape(self.name)}_cls*")
                      if path.name in (self.archive, self.index)
                      or (path.suffix == ".npz" and _is_shard_stem(path.stem) and OutputNames.of(path) == self))

    @classmethod
    def of(cls, path: str | os.PathLike) -> OutputNames:
        """The names of the build that wrote ``path`` (any of its outputs)."""
        stem = Path(path).name
        for suffix in (".index.json", ".manifest.json", "_metadata.csv", ".npz"):
            stem = stem.removesuffix(suffix)
        stem = stem.rsplit("-", 3)[0] if _is_shard_stem(stem) else stem
        return cls(stem.removesuffix("_cls"))

    @staticmethod
    def sibling(path: str | os.PathLike, kind: str) -> Path:
        """The output ``kind`` (``"metadata"``, ``"manifest"``, ``"index"``) of the build that wrote
        ``path``, in the same folder: ``sibling("out/x_cls.npz", "manifest")`` is ``out/x_cls.manifest.json``."""
        return Path(path).with_name(getattr(OutputNames.of(path), kind))

    @staticmethod
    def is_index(path: str | os.PathLike) -> bool:
        """Whether ``path`` names a shard index."""
        return Path(path).name == OutputNames.of(path).index


def _is_shard_stem(stem: str) -> bool:
    parts = stem.rsplit("-", 3)
    return len(parts) == 4 and parts[2] == "of" and parts[1].isdigit() and parts[3].isdigit()


@dataclass(frozen=True)
class BuildPlan:
    """Everything decided before any image is decoded: names, labelled images in row order, class
    facts, and notes for the user (labels left short of images, metadata columns left empty)."""

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
    notes: tuple[str, ...] = ()
    archives: tuple[Path, ...] = ()
    label_sources: dict[str, str] = field(default_factory=dict)  # split -> what gave its order and labels
    size: str | None = None  # in a build of several sizes: this one, as --sizes writes it
    other_sizes: tuple[BuildResult, ...] = ()  # what the same pass wrote at the other sizes, in --sizes order
    downloaded: tuple[str, ...] = ()  # from a URL list: how the download went, in lines

    @property
    def images_per_second(self) -> float:
        return sum(self.counts.values()) / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        """One line per size: what was written, how big, how fast."""
        counts = ", ".join(f"{n} {split}" for split, n in self.counts.items())
        classes = "class" if self.num_classes == 1 else "classes"
        size = f" at {self.size}" if self.size else ""
        line = (f"{self.name}: {counts} images, {self.num_classes} {classes}{size} -> {self.archive} "
                f"({self.archive_bytes / 1e6:.1f} MB) in {self.seconds:.1f} s "
                f"({self.images_per_second:.0f} images/s)")
        return "\n".join([line] + [other.summary() for other in self.other_sizes])

    def labels_line(self) -> str:
        """Where each split's order and labels came from: ``labels: train from train_cls.txt; val from ...``."""
        return "labels: " + "; ".join(f"{split} from {source}" for split, source in self.label_sources.items())


def shown(items, limit: int = 3) -> str:
    """The first ``limit`` items, comma-separated, and how many more there are: ``a, b, c and 4 more``."""
    items = [str(item) for item in items]
    text = ", ".join(items[:limit])
    return text + (f" and {len(items) - limit} more" if len(items) > limit else "")


