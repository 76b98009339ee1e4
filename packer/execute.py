"""Pack a planned build into archives on disk, safely.

    parts (one archive, or shards) -> writers in the work folder
      -> run_chunks (local processes or Dask) -> journal -> close
      -> drop unreadable images (--on_error skip) -> metadata CSV, manifest, index
      -> rename every output into place -> remove the work folder

Outputs in ``out_dir``: ``<name>_cls.npz`` (or shards
``<name>_cls-00000-of-0000N.npz`` with at most ``shard_size`` rows of each
split, and ``<name>_cls.index.json`` listing them), ``<name>_cls_metadata.csv``
and ``<name>_cls.manifest.json``. Until the last step everything lives in the
work folder (``workdir.py``), so a failed or interrupted run leaves nothing at
the final paths and never touches an earlier output.
"""
import contextlib
import dataclasses
import datetime
import logging
import math
import os
import shutil
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import describe
from .crc32 import crc32_of_parts
from .errors import Interrupted, UserError
from .npz import ArraySpec, DeflatedNpzWriter, StoredNpzWriter, deflate_segment
from .progress import Progress
from .transform import TransformSpec
from .work import CHUNK_SIZE, Chunk, available_memory, check_dask_scheduler, memory_per_worker, run_chunks
from .workdir import WorkFolder

log = logging.getLogger("packer")
WORKERS_PER_CORE = 4  # more local workers than this only add processes competing for the same cores


@dataclass(frozen=True)
class ArchivePart:
    """One output archive: its file name and the rows ``[start, end)`` of each split it holds."""

    file_name: str
    rows: dict[str, tuple[int, int]]


def _size(nbytes: int) -> str:
    return f"{nbytes / 1e9:.1f} GB" if nbytes >= 1e9 else f"{nbytes / 1e6:.1f} MB"


def plan_parts(name: str, splits, shard_size: int | None) -> list[ArchivePart]:
    """One archive, or shards of at most ``shard_size`` rows of each split."""
    if not shard_size:
        return [ArchivePart(f"{name}_cls.npz", {s.split: (0, len(s)) for s in splits})]
    count = max(1, math.ceil(max(len(s) for s in splits) / shard_size))
    return [ArchivePart(f"{name}_cls-{i:05d}-of-{count:05d}.npz",
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


def _chunks(parts: list[ArchivePart], splits, writers, skip_errors: bool):
    for p, (part, writer) in enumerate(zip(parts, writers)):
        for images in splits:
            first, end = part.rows[images.split]
            key, root = f"X_{images.split}", str(images.root)
            for start in range(0, end - first, CHUNK_SIZE):
                paths = tuple(os.path.join(root, path)
                              for path in images.paths[first + start:min(first + start + CHUNK_SIZE, end)])
                target = (None, 0) if writer.compressed else (writer.path, writer.pixel_offset(key, start))
                yield Chunk(key, start, paths, *target, part=p, skip_errors=skip_errors)


@dataclass
class _Totals:
    """What the parent accumulates from the chunk results, per split (global rows)."""

    row_crcs: dict[str, np.ndarray]
    sums: dict[str, np.ndarray]
    squares: dict[str, np.ndarray]
    failed: dict[str, dict[int, str]]  # split -> {row: reason}
    warned: dict[str, dict[int, str]]  # split -> {row: warning} of images packed despite a warning


def _run(parts, splits, writers, work: WorkFolder, spec: TransformSpec, options, done: dict) -> _Totals:
    """Feed the chunks to the workers and the results to the writers and the journal."""
    totals = _Totals({s.split: np.zeros(len(s), dtype=np.uint32) for s in splits},
                     {s.split: np.zeros(3, dtype=np.uint64) for s in splits},
                     {s.split: np.zeros(3, dtype=np.uint64) for s in splits}, {s.split: {} for s in splits},
                     {s.split: {} for s in splits})
    chunks = _chunks(parts, splits, writers, options.on_error == "skip")
    with Progress({images.split: len(images) for images in splits}, options.progress) as progress:
        for result in run_chunks(chunks, spec, options.workers, options.backend, options.scheduler, done):
            writers[result.part].add_chunk(result.key, result.crc32, result.nbytes, result.payload)
            if (result.part, result.key, result.start) not in done:
                work.record(result, writers)
            split = result.key.removeprefix("X_")
            first = parts[result.part].rows[split][0] + result.start
            totals.row_crcs[split][first:first + result.count] = result.row_crcs
            totals.sums[split] += np.array(result.channel_sums, dtype=np.uint64)
            totals.squares[split] += np.array(result.channel_squares, dtype=np.uint64)
            for row, _, reason in result.failed:
                totals.failed[split][parts[result.part].rows[split][0] + row] = reason
            for row, warning in result.warned:
                totals.warned[split][parts[result.part].rows[split][0] + row] = warning
            progress.update(split, result.count)
        work.flush(writers)
    return totals


def _chunk_count(parts: list[ArchivePart]) -> int:
    return sum(math.ceil((end - start) / CHUNK_SIZE) for part in parts for start, end in part.rows.values())


def _worker_count(options, spec: TransformSpec, chunks: int) -> int:
    """How many workers to run: as asked (all cores by default), but no more than there are
    chunks, ``WORKERS_PER_CORE`` per core (local processes) or fit in the memory available."""
    from .build import default_workers

    cores = default_workers()
    asked = cores if options.workers is None else options.workers
    if not isinstance(asked, int) or asked < 1:
        raise UserError(f"--workers {asked!r} must be a whole number of at least 1")
    local = options.backend == "local"  # Dask workers run on other machines, with their own memory
    need = memory_per_worker(spec)
    shared, per_process = available_memory() if local else (None, None)
    sizes = f"--resize_size {spec.resize_size} --crop_size {spec.crop_size}"
    if per_process is not None and need > per_process:
        raise UserError(f"{sizes} needs about {_size(need)} of memory per worker, but a process may map only "
                        f"{_size(max(per_process, 0))} more (ulimit -v); use a smaller --crop_size or raise the limit")
    if shared is not None and need > shared:
        raise UserError(f"{sizes} needs about {_size(need)} of memory per worker, but only {_size(shared)} is "
                        "available; use a smaller --crop_size or free memory")
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


def _stored_rows(paths: list[str], parts: list[ArchivePart], split: str, row_bytes: int):
    """The rows of ``X_<split>`` across the closed archives ``paths``, in order: ``(row, bytes)``."""
    for path, part in zip(paths, parts):
        start, end = part.rows[split]
        if start == end:
            continue
        with zipfile.ZipFile(path) as archive, archive.open(f"X_{split}.npy") as member:
            version = np.lib.format.read_magic(member)
            (np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0)(member)
            for row in range(start, end):
                yield row, member.read(row_bytes)


def _without_failed(name: str, parts, splits, writers, totals: _Totals, work: WorkFolder, spec, options):
    """Rewrite the archives without the rows of unreadable images (one sequential copy).

    Returns the new parts, splits and (closed) writers; ``totals.row_crcs`` is updated.
    """
    keep = {s.split: np.array([r for r in range(len(s)) if r not in totals.failed[s.split]], dtype=np.int64)
            for s in splits}
    new_splits = [s.take(keep[s.split]) for s in splits]
    new_parts = plan_parts(name, new_splits, options.shard_size)
    writer_class = type(writers[0])
    new_writers = [writer_class(work.partial(p.file_name) + ".compact", _array_specs(p, spec),
                                _small_arrays(p, new_splits)) for p in new_parts]
    row_bytes = int(np.prod(spec.stored_shape(1)))
    old_paths = [w.path for w in writers]
    for images in splits:
        split, key = images.split, f"X_{images.split}"
        failed = totals.failed[split]
        source = ((row, data) for row, data in _stored_rows(old_paths, parts, split, row_bytes) if row not in failed)
        for part, writer in zip(new_parts, new_writers):
            start, end = part.rows[split]
            for first in range(start, end, CHUNK_SIZE):
                data = b"".join(next(source)[1] for _ in range(min(CHUNK_SIZE, end - first)))
                crc = crc32_of_parts(totals.row_crcs[split][keep[split][first:first + len(data) // row_bytes]], row_bytes)
                if writer.compressed:
                    writer.add_chunk(key, crc, len(data), deflate_segment(data))
                else:
                    writer.write_rows(key, first - start, data)
                    writer.add_chunk(key, crc, len(data))
    for writer in writers:
        os.remove(writer.path)
    for part, writer in zip(new_parts, new_writers):
        writer.close()
        os.replace(writer.path, work.partial(part.file_name))
        writer.path = work.partial(part.file_name)
    totals.row_crcs = {split: totals.row_crcs[split][rows] for split, rows in keep.items()}
    return new_parts, new_splits, new_writers


def execute(plan, options, started: float | None = None):
    """Pack the images of ``plan`` with ``options``; see the module docstring for the guarantees."""
    from .build import check_options

    started = time.perf_counter() if started is None else started
    spec = check_options(options)
    out_dir = Path(options.out_dir)
    created = _make_folder(out_dir)
    try:
        return _execute(plan, options, spec, out_dir, started)
    except BaseException:
        for folder in created:  # deepest first; only those this build made and left empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def _make_folder(out_dir: Path) -> list[Path]:
    """Create ``out_dir`` as needed; the folders created, deepest first."""
    missing = [folder for folder in (out_dir, *out_dir.parents) if not folder.exists()]
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out_dir {out_dir} is a file, not a folder; choose a folder (it is created if missing)")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"cannot create --out_dir {out_dir}: part of that path is a file; choose a folder") from None
    except OSError as exc:
        raise UserError(f"cannot create --out_dir {out_dir}: {exc.strerror}; choose a writable folder") from None
    return missing


def _execute(plan, options, spec: TransformSpec, out_dir: Path, started: float):
    from .build import BuildResult

    splits = list(plan.splits)
    parts = plan_parts(plan.name, splits, options.shard_size)
    needed = sum(s.nbytes for part in parts for s in _array_specs(part, spec))
    free = shutil.disk_usage(out_dir).free
    if not options.compress and needed > free:
        raise UserError(f"--out_dir {out_dir} has {_size(free)} free but the archive needs {_size(needed)}; "
                        "free some space, choose another folder, or add --compress")
    chunk_count = _chunk_count(parts)
    options = dataclasses.replace(options, workers=_worker_count(options, spec, chunk_count))
    if options.backend == "dask":
        check_dask_scheduler(options.scheduler)
    output_options = options.output_options()
    work = WorkFolder(out_dir, plan.name, describe.plan_fingerprint(plan, output_options), output_options,
                      options.resume)
    if work.resume_state:
        log.warning(work.resume_state)
    finished, stopped_by = False, None
    writers = []
    try:
        writer_class = DeflatedNpzWriter if options.compress else StoredNpzWriter
        for part in parts:
            writers.append(writer_class(work.partial(part.file_name), _array_specs(part, spec),
                                        _small_arrays(part, splits), resume=work.resumed,
                                        hash_after_close=options.backend == "dask"))
        done = {}
        if work.resumed:
            if all(writer.kept_rows for writer in writers):
                done = work.finished_chunks()
                log.warning(f"resuming: {len(done)} of {chunk_count} chunks already done")
            else:
                log.warning("nothing to resume (the partial archive is gone) — starting afresh")
        totals = _run(parts, splits, writers, work, spec, options, done)
        for writer in writers:
            writer.close()
        skipped = [{"split": s.split, "path": s.paths[row], "reason": reason}
                   for s in splits for row, reason in sorted(totals.failed[s.split].items())]
        warned = [f"{s.split}/{s.paths[row]} ({warning})"
                  for s in splits for row, warning in sorted(totals.warned[s.split].items())]
        if skipped:
            parts, splits, writers = _without_failed(plan.name, parts, splits, writers, totals, work, spec, options)
        outputs = _describe(plan, options, splits, parts, writers, totals, work, spec, skipped, started)
        _move_into_place(outputs, work, out_dir)
        finished = True
    except OSError as exc:
        named = [str(f) for f in (exc.filename2, exc.filename) if f and ".work" not in str(f)]
        target = named[0] if named else out_dir / (f"{plan.name}_cls.index.json" if options.shard_size else parts[0].file_name)
        raise UserError(f"writing {target} failed: {exc.strerror or exc}; free space or fix permissions and "
                        "run again (earlier outputs are untouched)") from None
    except BaseException as exc:
        stopped_by = exc
        raise
    finally:
        # --resume, SIGTERM or SIGHUP: keep the work folder, with every finished chunk journaled
        keep = not finished and (options.resume or isinstance(stopped_by, Interrupted))
        if keep:
            with contextlib.suppress(OSError, ValueError):
                work.flush(writers)
        work.stop_flushing()
        for writer in writers:
            writer.abort()
        if keep:
            work.release()
        else:
            work.remove()
    notes = tuple(note for images in splits for note in images.notes) + plan.notes
    if skipped:
        notes += (f"left out {len(skipped)} unreadable images (listed in the manifest): "
                  + ", ".join(f"{s['path']} ({s['reason']})" for s in skipped[:3])
                  + (" ..." if len(skipped) > 3 else ""),)
    if warned:
        notes += (f"{len(warned)} images gave a warning and were packed: " + ", ".join(warned[:3])
                  + (" ..." if len(warned) > 3 else ""),)
    archive = out_dir / (f"{plan.name}_cls.index.json" if options.shard_size else parts[0].file_name)
    return BuildResult(plan.name, archive, out_dir / f"{plan.name}_cls_metadata.csv",
                       out_dir / f"{plan.name}_cls.manifest.json", {s.split: len(s) for s in splits},
                       len(plan.subset.labels), sum((out_dir / p.file_name).stat().st_size for p in parts),
                       describe.sha256_of_file(archive) if options.shard_size else writers[0].sha256,
                       time.perf_counter() - started, notes, tuple(out_dir / p.file_name for p in parts))


def _move_into_place(file_names: list[str], work: WorkFolder, out_dir: Path) -> None:
    """Rename the finished outputs over the final paths: all of them, or none.

    An earlier output at a final path is first hard-linked (or copied) into the
    work folder, so that if a later rename fails every earlier file is put back.
    """
    replaced, created = [], []
    try:
        for name in file_names:
            final, kept = out_dir / name, Path(work.partial(name) + ".previous")
            if final.is_file():
                try:
                    os.link(final, kept)
                except OSError:
                    shutil.copy2(final, kept)
                replaced.append((kept, final))
            else:
                created.append(final)
            os.replace(work.partial(name), final)
    except OSError:
        for kept, final in replaced:
            os.replace(kept, final)
        for final in created:
            if final.exists():
                os.remove(final)
        raise


def _shareable(source: str) -> str:
    """A class list's source without the folders it was read from (the manifest is meant to be shared)."""
    return source if source.startswith(("built-in:", "--", "recipe")) else Path(source).name


def _describe(plan, options, splits, parts, writers, totals, work, spec, skipped, started) -> list[str]:
    """Write the metadata CSV, the manifest and (for shards) the index; returns all output file names."""
    from . import __version__

    name = plan.name
    metadata_name, manifest_name, index_name = (f"{name}_cls_metadata.csv", f"{name}_cls.manifest.json",
                                                f"{name}_cls.index.json")
    describe.write_metadata_csv(describe.metadata_table(plan.subset, plan.classes, splits), work.partial(metadata_name))
    archives = [describe.file_record(Path(w.path), p.file_name, w.sha256) | {"rows": {k: list(v) for k, v in p.rows.items()}}
                for p, w in zip(parts, writers)]
    files = {"metadata": describe.file_record(Path(work.partial(metadata_name)), metadata_name)}
    outputs = [p.file_name for p in parts] + [metadata_name, manifest_name]
    if not options.shard_size:
        files["archive"] = {k: v for k, v in archives[0].items() if k != "rows"}
    else:
        files["shards"] = archives
        describe.write_json({"name": name, "manifest": manifest_name, "metadata": metadata_name, "shards": archives},
                            work.partial(index_name))
        files["index"] = index_name
        outputs.append(index_name)
    seconds = time.perf_counter() - started
    images = sum(len(s) for s in splits)
    train_pixels = len(splits[0]) * spec.crop_size * spec.crop_size
    manifest = {
        "manifest_version": describe.MANIFEST_VERSION,
        "tool": "imagenet-subset",
        "tool_version": __version__,
        "name": name,
        "options": options.output_options(),
        "classes": describe.class_records(plan.subset, plan.classes),
        "subset_source": _shareable(plan.subset.source),
        "input": plan.input,
        "splits": {s.split: {"images": len(s), "per_class": np.bincount(s.labels, minlength=len(plan.subset.labels)).tolist()}
                   for s in splits},
        "X_train_stats": describe.channel_statistics(totals.sums["train"], totals.squares["train"], train_pixels),
        "files": files,
        "skipped": skipped,
        "build": {"seconds": round(seconds, 3), "images_per_second": round(images / seconds, 1) if seconds else None,
                  "workers": options.workers, "backend": options.backend, "resumed": work.resumed,
                  "finished_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")},
        "sources": {s.split: describe.split_sources(s, totals.row_crcs[s.split]) for s in splits},
    }
    describe.write_json(manifest, work.partial(manifest_name))
    return outputs
