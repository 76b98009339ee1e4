"""Pack a planned build into archives on disk, safely.

    Packing(plan, options):
      enter     lock the work folder; open a writer per output archive in it
      run       chunks -> workers (local processes or Dask) -> writers, journal
      drop_failed   rewrite the archives without unreadable images (--on_error skip)
      describe  the metadata CSV, the manifest, the shard index
      commit    rename every output into place
      exit      remove the work folder (or keep it for --resume), close what is open

Outputs in ``out_dir`` are named by ``OutputNames`` (``options.py``): the
archive, or shards with at most ``shard_size`` rows of each split and an index
listing them, the metadata CSV and the manifest. Until ``commit`` everything
lives in the work folder (``workdir.py``), so a failed or interrupted run leaves
nothing at the final paths and never touches an earlier output.

A build writes one ``OutputSet`` per size (``--sizes``; one set without it),
each a complete output as a build of that size alone writes it. All sets share
the plan: the same rows, ids and labels. A plan's rows are cut into
``ArchivePart``s (one archive, or shards), the same cut in every set; each part of
each set has its writer (``npz.ArchiveWriter``), and a chunk of work names the
part its rows belong to and their destination in every set. An image that
cannot be read is left out of every set. The sets share one work folder (the
first set's) and are put in place together.
"""
import contextlib
import dataclasses
import datetime
import errno
import logging
import math
import os
import shutil
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import describe
from .crc32 import crc32_of_parts
from .errors import Interrupted, UserError
from .npz import ArchiveWriter, ArraySpec, DeflatedNpzWriter, StoredNpzWriter
from .options import (
    CHUNK_SIZE,
    BuildOptions,
    BuildPlan,
    BuildResult,
    OutputNames,
    TransformSpec,
    shown,
    size_name,
)
from .progress import Progress
from .work import (
    Chunk,
    ChunkResult,
    SendDeflated,
    WriteInPlace,
    available_memory,
    check_dask_scheduler,
    default_workers,
    memory_per_worker,
    run_chunks,
)
from .workdir import WorkFolder, name_held

log = logging.getLogger("packer")
WORKERS_PER_CORE = 4  # more local workers than this only add processes competing for the same cores

# OSErrors that say something about the machine, not about the code, and what to do about them
_WHAT_TO_DO = {errno.ENOSPC: "free space", errno.EDQUOT: "free space", errno.EFBIG: "free space",
               errno.EACCES: "fix permissions", errno.EPERM: "fix permissions", errno.EROFS: "fix permissions",
               errno.EISDIR: "move what is in the way", errno.ENOTDIR: "move what is in the way",
               errno.ENOTEMPTY: "move what is in the way", errno.EIO: "check the disk"}


@dataclass(frozen=True)
class ArchivePart:
    """One output archive: its file name and the rows ``[start, end)`` of each split it holds."""

    file_name: str
    rows: dict[str, tuple[int, int]]


def plan_parts(names: OutputNames, splits, shard_size: int | None) -> list[ArchivePart]:
    """One archive, or shards of at most ``shard_size`` rows of each split."""
    if not shard_size:
        return [ArchivePart(names.archive, {s.split: (0, len(s)) for s in splits})]
    count = max(1, math.ceil(max(len(s) for s in splits) / shard_size))
    return [ArchivePart(names.shard(i, count),
                        {s.split: (min(i * shard_size, len(s)), min((i + 1) * shard_size, len(s))) for s in splits})
            for i in range(count)]


def _array_specs(part: ArchivePart, spec: TransformSpec) -> list[ArraySpec]:
    specs = []
    for split, (start, end) in part.rows.items():
        n = end - start
        specs += [ArraySpec(f"X_{split}", "|u1", spec.stored_shape(n)), ArraySpec(f"y_{split}", "<i4", (n,)),
                  ArraySpec(f"{split}_id", "<i4", (n,))]
    return specs


def _small_arrays(part: ArchivePart, splits) -> dict[str, np.ndarray]:
    arrays = {}
    for images in splits:
        start, end = part.rows[images.split]
        arrays[f"y_{images.split}"] = images.labels[start:end]
        arrays[f"{images.split}_id"] = images.ids[start:end]
    return arrays


def _size(nbytes: int) -> str:
    return f"{nbytes / 1e9:.1f} GB" if nbytes >= 1e9 else f"{nbytes / 1e6:.1f} MB"


@dataclass
class _Totals:
    """What the parent accumulates from the chunk results, per split (global rows)."""

    row_crcs: dict[str, np.ndarray]
    sums: dict[str, np.ndarray]
    squares: dict[str, np.ndarray]
    failed: dict[str, dict[int, str]]  # split -> {row: reason} of unreadable images
    warned: dict[str, dict[int, str]]  # split -> {row: warning} of images packed despite a warning

    @classmethod
    def of(cls, splits) -> "_Totals":
        return cls({s.split: np.zeros(len(s), dtype=np.uint32) for s in splits},
                   {s.split: np.zeros(3, dtype=np.uint64) for s in splits},
                   {s.split: np.zeros(3, dtype=np.uint64) for s in splits},
                   {s.split: {} for s in splits}, {s.split: {} for s in splits})

    def add(self, result: ChunkResult, split: str, first: int) -> None:
        """Take in ``result``, whose rows start at row ``first`` of ``split``."""
        self.row_crcs[split][first:first + result.count] = result.row_crcs
        self.sums[split] += np.array(result.channel_sums, dtype=np.uint64)
        self.squares[split] += np.array(result.channel_squares, dtype=np.uint64)
        for row, reason in result.failed:
            self.failed[split][first - result.start + row] = reason
        for row, warning in result.warned:
            self.warned[split][first - result.start + row] = warning


@dataclass
class OutputSet:
    """The outputs of one size: their names, the options of a build of that size alone, the
    archive parts and their writers, and the totals of the chunk results of that size."""

    names: OutputNames
    options: BuildOptions
    parts: list[ArchivePart]
    writers: list[ArchiveWriter]
    totals: _Totals

    @property
    def spec(self) -> TransformSpec:
        return self.options.transform

    @property
    def size(self) -> str:
        """The size as ``--sizes`` writes it."""
        return self.options.size.text

    def file_names(self, sharded: bool) -> list[str]:
        """Every file the set puts in ``--out_dir``: its archive or shards, CSV, manifest (and shard index)."""
        names = self.names
        return [p.file_name for p in self.parts] + [names.metadata, names.manifest] + ([names.index] if sharded else [])

    @property
    def archive_bytes(self) -> int:
        """Bytes of the (uncompressed) arrays of every part."""
        return sum(s.nbytes for part in self.parts for s in _array_specs(part, self.spec))


def output_sets(plan: BuildPlan, options: BuildOptions) -> list[OutputSet]:
    """One ``OutputSet`` per size of ``options`` (no writers yet), in the order of ``--sizes``."""
    sets = []
    for i, size_options in enumerate(options.each_size()):
        names = OutputNames(size_name(plan.name, size_options.size, i == 0))
        sets.append(OutputSet(names, size_options, plan_parts(names, plan.splits, options.shard_size), [],
                              _Totals.of(plan.splits)))
    return sets


def execute(plan: BuildPlan, options: BuildOptions, started: float | None = None) -> BuildResult:
    """Pack the images of ``plan`` with ``options``; see the module docstring for the guarantees."""
    started = time.perf_counter() if started is None else started
    out_dir = Path(options.out_dir)
    with new_out_dir_removed_on_failure(options):
        _make_folder(out_dir)
        with Packing(plan, options, out_dir, started) as packing:
            packing.run()
            packing.drop_failed()
            packing.describe()
            packing.commit()
        return packing.result()


@contextlib.contextmanager
def new_out_dir_removed_on_failure(options: BuildOptions) -> Iterator[None]:
    """If the block fails, remove the folders up to ``--out_dir`` that did not exist before it, when
    nothing is left in them but the archive index that planning may have started there (a work
    folder kept for ``--resume`` keeps them all)."""
    out_dir = Path(options.out_dir).absolute()
    missing = [folder for folder in (out_dir, *out_dir.parents) if not folder.exists()]
    try:
        yield
    except BaseException:
        if missing:
            _remove_if_only_an_index(missing[-1], Path(options.index_folder).absolute())
        for folder in missing:  # deepest first; only those left empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def _remove_if_only_an_index(top: Path, index_folder: Path) -> None:
    """Remove ``index_folder``'s member lists if they are all that ``top`` holds."""
    if not index_folder.is_relative_to(top):
        return
    lists = [kept.parent for kept in index_folder.glob("*/archive.json")]  # one folder per archive
    for folder, _, files in os.walk(top):
        if files and not any(Path(folder).is_relative_to(archive_lists) for archive_lists in lists):
            return
    for archive_lists in lists:
        shutil.rmtree(archive_lists, ignore_errors=True)
    with contextlib.suppress(OSError):
        index_folder.rmdir()


def _make_folder(out_dir: Path) -> None:
    """Create ``out_dir`` as needed."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out_dir {out_dir} is a file, not a folder; choose a folder (it is created if missing)")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"cannot create --out_dir {out_dir}: part of that path is a file; choose a folder") from None
    except OSError as exc:
        raise UserError(f"cannot create --out_dir {out_dir}: {exc.strerror}; choose a writable folder") from None


class Packing:
    """One build's packing: its output sets (a set's parts, writers and totals), and the work
    folder, from the first chunk to the outputs in place (see the module docstring).

    As a context manager it owns what it opens: leaving the block aborts the writers and removes
    the work folder, or keeps it (with every finished chunk journaled) when ``--resume`` asked for
    it or SIGTERM / SIGHUP stopped the build. A full disk or a permission problem while writing
    becomes a one-line ``UserError`` naming the output.
    """

    def __init__(self, plan: BuildPlan, options: BuildOptions, out_dir: Path, started: float):
        self.plan, self.out_dir, self.started = plan, out_dir, started
        self.sets = output_sets(plan, options)
        self.names = self.sets[0].names  # the build's name: its work folder, what it is called by
        self.specs = tuple(output.spec for output in self.sets)
        self.splits = list(plan.splits)
        self.chunk_count = sum(math.ceil((end - start) / CHUNK_SIZE)
                               for part in self.sets[0].parts for start, end in part.rows.values())
        what = "the archive" if len(self.sets) == 1 else f"writing the archives of the {len(self.sets)} sizes"
        self._check_space(sum(output.archive_bytes for output in self.sets), options, what)
        self.workers = _worker_count(options, self.specs, self.chunk_count)
        self.options = dataclasses.replace(options, workers=self.workers)
        if options.backend == "dask":
            check_dask_scheduler(str(options.scheduler))
        self.skipped: list[dict] = []
        self.outputs: list[str] = []  # the file names that commit puts in place
        self.committed = False
        self._stack = contextlib.ExitStack()

    @property
    def writers(self) -> list[ArchiveWriter]:
        """The writers of every set."""
        return [writer for output in self.sets for writer in output.writers]

    def archive_path(self, output: OutputSet) -> Path:
        """What a set is called by: its archive, or the index of its shards."""
        return self.out_dir / (output.names.index if self.options.shard_size else output.parts[0].file_name)

    def __enter__(self) -> "Packing":
        output_options = self.options.output_options()
        for output in self.sets[1:]:
            self._stack.enter_context(name_held(self.out_dir, output.names))
        self.work = WorkFolder(self.out_dir, self.names, describe.plan_fingerprint(self.plan, output_options),
                               output_options, self.options.resume)
        self._stack.push(self._leave_work_folder)
        if self.work.resume_state:
            log.warning(self.work.resume_state)
        writer_class = DeflatedNpzWriter if self.options.compress else StoredNpzWriter
        try:
            with self._writing():
                for output in self.sets:
                    for part in output.parts:
                        output.writers.append(writer_class(
                            self.work.partial(part.file_name), _array_specs(part, output.spec),
                            _small_arrays(part, self.splits), resume=self.work.resumed,
                            hash_after_close=self.options.backend == "dask"))
        except BaseException as exc:  # no __exit__ follows a failed __enter__
            self._stack.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self._stack.__exit__(kind, error, traceback)

    @contextlib.contextmanager
    def _writing(self):
        """Turn an OSError of the machine (no space, no permission, something in the way, a disk
        error) into a one-line ``UserError`` naming the output; any other OSError is a bug and
        stays as it is."""
        try:
            yield
        except OSError as exc:
            if exc.errno not in _WHAT_TO_DO:
                raise
            named = [str(f) for f in (exc.filename2, exc.filename) if f and self.names.work_folder not in str(f)]
            raise UserError(f"writing {named[0] if named else self.archive_path(self.sets[0])} failed: {exc.strerror}; "
                            f"{_WHAT_TO_DO[exc.errno]} and run again (earlier outputs are untouched)") from None

    def run(self) -> None:
        """Feed the chunks to the workers, and their results to the writers and the journal."""
        done = {}
        if self.work.resumed:
            if all(writer.kept_rows for writer in self.writers):
                done = self.work.finished_chunks(len(self.sets))
                log.warning(f"resuming: {len(done)} of {self.chunk_count} chunks already done")
            else:
                log.warning("nothing to resume (the partial archive is gone) — starting afresh")
        options, workers = self.options, self.workers
        with self._writing(), Progress({s.split: len(s) for s in self.splits}, options.progress) as progress:
            for result in run_chunks(self._chunks(), self.specs, workers, options.backend, options.scheduler, done):
                output = self.sets[result.size]
                output.writers[result.part].add_chunk(result.key, result.crc32, result.nbytes, result.payload)
                if (result.part, result.key, result.start) not in done:
                    self.work.record(result, self.writers)
                split = result.key.removeprefix("X_")
                output.totals.add(result, split, output.parts[result.part].rows[split][0] + result.start)
                if result.size == 0:
                    progress.update(split, result.count)
            self.work.flush(self.writers)
            for writer in self.writers:
                writer.close()
        failed = self.sets[0].totals.failed  # the same images in every set
        self.skipped = [{"split": s.split, "path": s.paths[row], "reason": reason}
                        for s in self.splits for row, reason in sorted(failed[s.split].items())]

    def _chunks(self):
        skip_errors = self.options.on_error == "skip"
        for p, part in enumerate(self.sets[0].parts):
            for images in self.splits:
                first, end = part.rows[images.split]
                key = f"X_{images.split}"
                for start in range(0, end - first, CHUNK_SIZE):
                    files = tuple(images.source.image(path)
                                  for path in images.paths[first + start:min(first + start + CHUNK_SIZE, end)])
                    yield Chunk(key, start, files, tuple(_destination(output.writers[p], key, start)
                                                         for output in self.sets), part=p, skip_errors=skip_errors)


    def drop_failed(self) -> None:
        """Rewrite the archives of every set without the rows of unreadable images, in one
        sequential copy each (no blank image ever reaches an output); the splits, parts, writers
        and row CRCs follow."""
        failed = self.sets[0].totals.failed  # the same images in every set
        if not any(failed.values()):
            return
        keep = {s.split: np.array([r for r in range(len(s)) if r not in failed[s.split]], dtype=np.int64)
                for s in self.splits}
        splits = [s.take(keep[s.split]) for s in self.splits]
        compacted = output_sets(dataclasses.replace(self.plan, splits=tuple(splits)), self.options)
        if not self.options.compress:  # one size at a time: each copy replaces its archives before the next
            self._check_space(max(output.archive_bytes for output in compacted), self.options,
                              f"a copy of the archive without the {sum(map(len, failed.values()))} unreadable images")
        for output, compact in zip(self.sets, compacted, strict=True):
            self._copy_kept_rows(output, compact.parts, keep, splits)
        self.splits = splits

    def _copy_kept_rows(self, output: OutputSet, parts: list[ArchivePart], keep: dict[str, np.ndarray],
                        splits) -> None:
        """Copy the rows ``keep`` names of ``output``'s archives into new archives cut into ``parts``,
        which then replace them; ``output`` takes the new parts, writers and row CRCs."""
        spec, failed = output.spec, output.totals.failed
        row_bytes = int(np.prod(spec.stored_shape(1)))
        writer_class = DeflatedNpzWriter if self.options.compress else StoredNpzWriter
        with self._writing():
            writers: list[ArchiveWriter] = [writer_class(self.work.partial(p.file_name) + ".compact",
                                                         _array_specs(p, spec), _small_arrays(p, splits))
                                            for p in parts]
            for writer in writers:
                self._stack.callback(writer.abort)
            for images in self.splits:
                split, key = images.split, f"X_{images.split}"
                rows = ((row, data) for row, data in _stored_rows([w.path for w in output.writers], output.parts,
                                                                  split, row_bytes) if row not in failed[split])
                for part, writer in zip(parts, writers, strict=True):
                    start, end = part.rows[split]
                    for first in range(start, end, CHUNK_SIZE):
                        data = b"".join(next(rows)[1] for _ in range(min(CHUNK_SIZE, end - first)))
                        kept = keep[split][first:first + len(data) // row_bytes]
                        writer.add_rows(key, data, crc32_of_parts(output.totals.row_crcs[split][kept], row_bytes))
            for writer in output.writers:
                os.remove(writer.path)
            for part, writer in zip(parts, writers, strict=True):
                writer.close()
                os.replace(writer.path, self.work.partial(part.file_name))
                writer.path = self.work.partial(part.file_name)
        output.totals.row_crcs = {split: output.totals.row_crcs[split][rows] for split, rows in keep.items()}
        output.parts, output.writers = parts, writers

    def describe(self) -> None:
        """Write each set's metadata CSV, manifest and (for shards) index into the work folder."""
        with self._writing():
            files = [self._describe_files(output) for output in self.sets]
            sizes = [{"size": output.size, "name": output.names.name, "fast": output.options.fast, "files": set_files}
                     for output, set_files in zip(self.sets, files, strict=True)] if len(self.sets) > 1 else None
            for output, set_files in zip(self.sets, files, strict=True):
                describe.write_json(self._manifest(output, set_files, sizes), self.work.partial(output.names.manifest))
        self.outputs = [name for output in self.sets for name in output.file_names(bool(self.options.shard_size))]

    def _describe_files(self, output: OutputSet) -> dict:
        """Write a set's metadata CSV (and shard index); the manifest's ``files`` of the set."""
        plan, names, work = self.plan, output.names, self.work
        describe.write_metadata_csv(describe.metadata_table(plan.subset, plan.classes, self.splits),
                                    work.partial(names.metadata))
        archives = [describe.file_record(Path(w.path), p.file_name, w.sha256)
                    | {"rows": {k: list(v) for k, v in p.rows.items()}}
                    for p, w in zip(output.parts, output.writers, strict=True)]
        files: dict[str, object] = {"metadata": describe.file_record(Path(work.partial(names.metadata)),
                                                                      names.metadata)}
        if not self.options.shard_size:
            files["archive"] = {k: v for k, v in archives[0].items() if k != "rows"}
        else:
            files["shards"] = archives
            describe.write_json({"name": names.name, "manifest": names.manifest, "metadata": names.metadata,
                                 "shards": archives}, work.partial(names.index))
            files["index"] = names.index
        return files

    def _manifest(self, output: OutputSet, files: dict, sizes: list[dict] | None) -> dict:
        """A set's manifest (its format is in ``describe.py``); ``sizes``: every set of a build of
        several sizes, with its files."""
        from . import __version__

        plan, totals = self.plan, output.totals
        seconds = time.perf_counter() - self.started
        images = sum(len(s) for s in self.splits)
        train_pixels = len(self.splits[0]) * output.spec.crop_size * output.spec.crop_size
        per_class = {s.split: {"images": len(s), "per_class": np.bincount(s.labelled, minlength=len(
            plan.subset.labels)).tolist()} for s in self.splits}
        return {
            "manifest_version": describe.MANIFEST_VERSION,
            "tool": "imagenet-subset",
            "tool_version": __version__,
            "name": output.names.name,
            "options": output.options.output_options(),
            "classes": describe.class_records(plan.subset, plan.classes),
            "subset_source": _shareable(plan.subset.source),
            "input": plan.input,
            "splits": per_class,
            "X_train_stats": describe.channel_statistics(totals.sums["train"], totals.squares["train"], train_pixels),
            "files": files,
            **({"sizes": sizes} if sizes else {}),
            "skipped": self.skipped,
            "build": {"seconds": round(seconds, 3),
                      "images_per_second": round(images / seconds, 1) if seconds else None,
                      "workers": self.options.workers, "backend": self.options.backend,
                      "resumed": self.work.resumed,
                      "finished_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")},
            "sources": {s.split: describe.split_sources(s, totals.row_crcs[s.split]) for s in self.splits},
        }

    def commit(self) -> None:
        """Rename the finished outputs over the final paths: all of them, or none.

        An earlier output at a final path is first hard-linked (or copied) into the
        work folder, so that if a later rename fails, or a Ctrl-C or SIGTERM stops the
        renames halfway, every earlier file is put back. An earlier archive set that
        this one supersedes (another shard count, shards for one archive, or the other
        way) is moved into the work folder the same way, so no stale shard stays beside
        the new set.
        """
        replaced: list[tuple[Path, Path]] = []  # (the earlier output kept, its final path)
        created: list[tuple[Path, Path]] = []
        with self._writing():
            try:
                for stale in (path for output in self.sets for path in output.names.archive_files_in(self.out_dir)):
                    if stale.name not in self.outputs:
                        kept = Path(self.work.partial(stale.name) + ".previous")
                        replaced.append((kept, stale))
                        os.replace(stale, kept)
                for name in self.outputs:
                    final, kept = self.out_dir / name, Path(self.work.partial(name) + ".previous")
                    earlier = final.is_file()
                    if earlier:
                        try:
                            os.link(final, kept)
                        except OSError:
                            shutil.copy2(final, kept)
                    (replaced if earlier else created).append((kept, final))  # before: a signal may follow it
                    os.replace(self.work.partial(name), final)
            except BaseException:
                for kept, final in replaced:
                    if kept.exists():  # (a stale file is listed before it is moved: a signal may follow)
                        os.replace(kept, final)
                for _, final in created:
                    if final.is_file():  # ours (not something in the way)
                        os.remove(final)
                raise
        self.committed = True

    def result(self) -> BuildResult:
        """What the build wrote (after ``commit``), with its notes: the first size's outputs, and
        the other sizes' in ``other_sizes``."""
        notes = tuple(note for images in self.splits for note in images.notes) + self.plan.notes
        if self.skipped:
            notes += (f"left out {len(self.skipped)} unreadable images (listed in the manifest): "
                      + shown([f"{s['path']} ({s['reason']})" for s in self.skipped]),)
        warned_rows = self.sets[0].totals.warned  # the same images in every set
        warned = [f"{s.split}/{s.paths[row]} ({warning})"
                  for s in self.splits for row, warning in sorted(warned_rows[s.split].items())]
        if warned:
            notes += (f"{len(warned)} images gave a warning and were packed: {shown(warned)}",)
        seconds = time.perf_counter() - self.started
        results = [self._set_result(output, seconds) for output in self.sets]
        return dataclasses.replace(results[0], notes=notes, other_sizes=tuple(results[1:]))

    def _set_result(self, output: OutputSet, seconds: float) -> BuildResult:
        archive, names = self.archive_path(output), output.names
        return BuildResult(names.name, archive, self.out_dir / names.metadata, self.out_dir / names.manifest,
                           {s.split: len(s) for s in self.splits}, len(self.plan.subset.labels),
                           sum((self.out_dir / p.file_name).stat().st_size for p in output.parts),
                           describe.sha256_of_file(archive) if self.options.shard_size else output.writers[0].sha256,
                           seconds, (), tuple(self.out_dir / p.file_name for p in output.parts),
                           {s.split: s.label_source for s in self.splits},
                           size=output.size if len(self.sets) > 1 else None)

    def _check_space(self, needed: int, options: BuildOptions, what: str) -> None:
        free = shutil.disk_usage(self.out_dir).free
        if not options.compress and needed > free:
            raise UserError(f"--out_dir {self.out_dir} has {_size(free)} free but {what} needs {_size(needed)}; "
                            "free some space, choose another folder, or add --compress")

    def _leave_work_folder(self, kind, error, traceback) -> None:
        """Close the writers; remove the work folder, or keep it for ``--resume`` with every finished
        chunk journaled."""
        keep = not self.committed and (self.options.resume or isinstance(error, Interrupted))
        if keep:
            with contextlib.suppress(OSError, ValueError):
                self.work.flush(self.writers)
        self.work.stop_flushing()
        for writer in self.writers:
            writer.abort()
        if keep:
            self.work.release()
        else:
            self.work.remove()


def _worker_count(options: BuildOptions, specs: tuple[TransformSpec, ...], chunks: int) -> int:
    """How many workers to run: as asked (all cores by default), but no more than there are
    chunks, ``WORKERS_PER_CORE`` per core (local processes) or fit in the memory available."""
    cores = default_workers()
    asked = cores if options.workers is None else options.workers
    local = options.backend == "local"  # Dask workers run on other machines, with their own memory
    need = memory_per_worker(specs)
    shared, per_process = available_memory() if local else (None, None)
    several = bool(options.sizes and len(options.sizes) > 1)
    sizes = (f"--sizes {','.join(options.sizes or ())}" if several
             else f"--resize_size {options.resize_size} --crop_size {options.crop_size}")
    smaller = "smaller or fewer --sizes" if several else "a smaller --crop_size"
    if per_process is not None and need > per_process:
        raise UserError(f"{sizes} needs about {_size(need)} of memory per worker, but a process may map only "
                        f"{_size(max(per_process, 0))} more (ulimit -v); use {smaller} or raise the limit")
    if shared is not None and need > shared:
        raise UserError(f"{sizes} needs about {_size(need)} of memory per worker, but only {_size(shared)} is "
                        f"available; use {smaller} or free memory")
    workers = max(1, min(asked, chunks, WORKERS_PER_CORE * cores if local else asked))  # more would only wait
    if local and asked > WORKERS_PER_CORE * cores:
        log.warning(f"note: --workers {asked} capped at {workers}: at most {WORKERS_PER_CORE} per core ({cores} cores) "
                    f"and one per chunk of {CHUNK_SIZE} images ({chunks} chunks)")
    if shared is not None and workers * need > shared:
        fit = max(1, shared // need)
        if options.workers is not None:
            raise UserError(f"--workers {asked} would need about {_size(workers * need)} of memory ({_size(need)} "
                            f"each) but only {_size(shared)} is available; use --workers {fit} or fewer")
        log.warning(f"note: running {fit} workers instead of {workers}: each needs about {_size(need)} of memory "
                    f"and {_size(shared)} is available")
        workers = fit
    return workers


def _destination(writer: ArchiveWriter, key: str, start: int) -> WriteInPlace | SendDeflated:
    """Where a chunk's rows from row ``start`` of ``key`` go in ``writer``'s archive: in place (a
    stored archive), or back to the parent (a compressed one)."""
    offset = writer.rows_at(key, start)
    return SendDeflated() if offset is None else WriteInPlace(writer.path, offset)


def _stored_rows(paths: list[str], parts: list[ArchivePart], split: str, row_bytes: int):
    """The rows of ``X_<split>`` across the closed archives ``paths``, in order: ``(row, bytes)``."""
    for path, part in zip(paths, parts, strict=True):
        start, end = part.rows[split]
        if start == end:
            continue
        with zipfile.ZipFile(path) as archive, archive.open(f"X_{split}.npy") as member:
            version = np.lib.format.read_magic(member)
            (np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0)(member)
            for row in range(start, end):
                yield row, member.read(row_bytes)


def _shareable(source: str) -> str:
    """A class list's source without the folders it was read from (the manifest is meant to be shared)."""
    return source if source.startswith(("built-in:", "--", "recipe")) else Path(source).name
