"""Build a subset archive: the pipeline from a tree and a class list to files on disk.

    find_tree -> read_subset_list -> list images -> plan the archive
      -> run_chunks (parallel) -> close the archive -> metadata CSV -> rename into place

Outputs go to ``<out_dir>/<name>_cls.npz`` and ``<out_dir>/<name>_cls_metadata.csv``.
Both are written under temporary names in ``out_dir`` and renamed into place only
when complete: a failed or interrupted run leaves no partial file at the final
paths and never touches an earlier output.
"""
import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .describe import metadata_table, write_metadata_csv
from .errors import UserError
from .npz import ArraySpec, DeflatedNpzWriter, StoredNpzWriter
from .subset import check_classes_present, labels_of, read_subset_list
from .transform import TransformSpec
from .tree import SplitImages, class_table, find_tree, list_train_images, list_val_images, train_classes
from .work import CHUNK_SIZE, Chunk, run_chunks

SPLITS = ("train", "val")


@dataclass(frozen=True)
class BuildOptions:
    """Everything that decides what a build does. ``workers=None`` means all cores."""

    subset_name: str
    data_dir: str
    devkit_dir: str | None = None
    out_dir: str = "out_files"
    resize_size: int = 256
    crop_size: int = 224
    fast: bool = False
    compress: bool = False
    workers: int | None = None
    progress: bool = True


@dataclass(frozen=True)
class BuildResult:
    """What a build wrote and how long it took."""

    name: str
    archive: Path
    metadata: Path
    counts: dict[str, int]
    num_classes: int
    archive_bytes: int
    seconds: float
    notes: tuple[str, ...] = field(default=())

    @property
    def images_per_second(self) -> float:
        return sum(self.counts.values()) / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        counts = ", ".join(f"{n} {split}" for split, n in self.counts.items())
        return (f"{self.name}: {counts} images, {self.num_classes} classes -> {self.archive} "
                f"({self.archive_bytes / 1e6:.1f} MB) in {self.seconds:.1f} s "
                f"({self.images_per_second:.0f} images/s)")


def default_workers() -> int:
    """The cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _transform_spec(options: BuildOptions) -> TransformSpec:
    for flag in ("resize_size", "crop_size"):
        value = getattr(options, flag)
        if not isinstance(value, int) or value < 1:
            raise UserError(f"--{flag} {value!r} must be a positive whole number of pixels")
    if options.crop_size > options.resize_size:
        raise UserError(f"--crop_size {options.crop_size} is larger than --resize_size {options.resize_size}; "
                        "the crop must fit inside the resized image")
    return TransformSpec(options.resize_size, options.crop_size, options.fast)


def _array_specs(splits: list[SplitImages], crop: int) -> list[ArraySpec]:
    specs = []
    for images in splits:
        n = len(images)
        specs += [ArraySpec(f"X_{images.split}", "|u1", (n, crop, crop, 3)),
                  ArraySpec(f"y_{images.split}", "<i4", (n,)),
                  ArraySpec(f"{images.split}_id", "<i4", (n,))]
    return specs


def _chunks(splits: list[SplitImages], writer) -> Iterator[Chunk]:
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
    try:
        fd, path = tempfile.mkstemp(prefix=f".{final_name}.", suffix=".partial", dir=out_dir)
    except OSError as exc:
        raise UserError(f"cannot write to --out_dir {out_dir}: {exc.strerror}; choose a writable folder") from None
    os.close(fd)
    return path


def build(options: BuildOptions) -> BuildResult:
    """Run the whole pipeline for ``options``; see the module docstring for the guarantees."""
    started = time.perf_counter()
    spec = _transform_spec(options)
    workers = default_workers() if options.workers is None else options.workers
    if not isinstance(workers, int) or workers < 1:
        raise UserError(f"--workers {workers!r} must be a whole number of at least 1")

    tree = find_tree(options.data_dir, options.devkit_dir)
    subset = read_subset_list(options.subset_name)
    check_classes_present(subset, train_classes(tree), tree.train_dir)
    splits = [list_train_images(tree, list(subset.wnids)), list_val_images(tree, list(subset.wnids))]
    labels = {images.split: labels_of(images, subset) for images in splits}
    table = metadata_table(subset, class_table(tree), labels["train"], labels["val"])

    out_dir = Path(options.out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create --out_dir {out_dir}: {exc.strerror}; choose a writable folder") from None
    archive_path = out_dir / f"{subset.name}_cls.npz"
    metadata_path = out_dir / f"{subset.name}_cls_metadata.csv"
    specs = _array_specs(splits, spec.crop_size)
    needed = sum(s.nbytes for s in specs)
    free = shutil.disk_usage(out_dir).free
    if not options.compress and needed > free:
        raise UserError(f"--out_dir {out_dir} has {free / 1e9:.1f} GB free but the archive needs "
                        f"{needed / 1e9:.1f} GB; free some space, choose another folder, or add --compress")

    arrays = {}
    for images in splits:
        arrays[f"y_{images.split}"] = labels[images.split]
        arrays[f"{images.split}_id"] = images.ids
    temporary = [_temporary_path(out_dir, archive_path.name), _temporary_path(out_dir, metadata_path.name)]
    writer = None
    try:
        writer_class = DeflatedNpzWriter if options.compress else StoredNpzWriter
        writer = writer_class(temporary[0], specs, arrays)
        _run(splits, writer, spec, workers, options.progress)
        writer.close()
        write_metadata_csv(table, temporary[1])
        os.replace(temporary[0], archive_path)
        os.replace(temporary[1], metadata_path)
    except OSError as exc:
        raise UserError(f"writing {archive_path} failed: {exc.strerror or exc}; "
                        "free space or fix permissions and run again (earlier outputs are untouched)") from None
    finally:
        if writer is not None:
            writer.abort()
        for path in temporary:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
    notes = tuple(note for images in splits for note in images.notes)
    return BuildResult(subset.name, archive_path, metadata_path, {s.split: len(s) for s in splits},
                       len(subset.wnids), archive_path.stat().st_size, time.perf_counter() - started, notes)


def _run(splits: list[SplitImages], writer, spec: TransformSpec, workers: int, progress: bool) -> None:
    """Feed the chunks to the workers and the results to the writer, with a progress bar per split."""
    from tqdm import tqdm

    totals = {images.split: len(images) for images in splits}
    bar, bar_split = None, None
    try:
        for result in run_chunks(_chunks(splits, writer), spec, workers):
            writer.add_chunk(result.key, result.crc32, result.nbytes, result.payload)
            split = result.key.removeprefix("X_")
            if split != bar_split:
                if bar is not None:
                    bar.close()
                bar_split = split
                bar = tqdm(total=totals[split], desc=split, unit="img", disable=not progress, dynamic_ncols=True)
            bar.update(result.count)
    finally:
        if bar is not None:
            bar.close()


def build_subset(subset_name: str, data_dir: str, **options) -> BuildResult:
    """Build ``<out_dir>/<name>_cls.npz`` and its metadata CSV; keyword options as ``BuildOptions``."""
    return build(BuildOptions(subset_name, str(data_dir), **options))
