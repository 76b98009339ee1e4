"""Run the image work in parallel: chunks of images in, small results out, in order.

A ``Chunk`` is up to ``CHUNK_SIZE`` consecutive rows of one image array: the
images (each an ``ImageFile``, which says how to get its bytes) and the
destination of the rows, one per size (``TransformSpec``) of the build. A
worker decodes each image once, transforms it to every size, checksums each row
(CRC-32), sums each colour channel and its square (for the mean and standard
deviation, exact integers, no second pass), and either writes the rows straight
to their place in the archive (``WriteInPlace``, stored archives) or returns
them as a deflate segment (``SendDeflated``, compressed ones).
Either way the parent receives a small ``ChunkResult`` per chunk and size, in row
order (a chunk's sizes in order), and never touches pixels when the archive is
uncompressed.

Chunk boundaries depend only on ``CHUNK_SIZE``, never on the worker count, so
the output bytes are the same whatever ``workers`` is.

Locally, ``workers`` processes of a ``concurrent.futures`` pool do the work,
started with ``fork`` on Linux (a worker is ready in milliseconds, with every
module already imported) and ``spawn`` on macOS; at most ``IN_FLIGHT`` chunks
per worker are queued or running, so memory stays flat whatever the number of
images. ``backend="dask"`` sends the chunks to an existing Dask cluster instead
(through joblib's Dask backend; the workers must see the same paths).

With ``skip_errors`` a worker leaves an unreadable image's row zero and
reports it in ``failed``; the caller removes such rows afterwards, so no
blank image ever reaches the final archive. A warning an image raises while it
is decoded (Pillow's ``DecompressionBombWarning`` for an image of more than
``Image.MAX_IMAGE_PIXELS`` pixels, a corrupt EXIF block, ...) is not printed
by the worker: it comes back in ``warned`` with the image's row, and the image
is packed.

Workers ignore SIGINT and SIGHUP: the build process receives them and stops the
workers itself. SIGTERM ends a worker (the pool ends its workers that way when
one of them dies); sent to a whole job it ends the build process too, which
then stops as on Ctrl-C. A worker that runs out of memory ends the build with
a ``UserError`` naming the image it was packing.
"""
import os
import signal
import sys
import tempfile
import threading
import warnings
import zlib
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from typing import BinaryIO, Protocol

import numpy as np
from PIL import Image

from .crc32 import crc32_of_parts
from .errors import STOP_SIGNALS, ImageError, UserError
from .npz import deflate_segment
from .options import CHUNK_SIZE, TransformSpec
from .transform import open_rgb, store_rows, transform_rgb

IN_FLIGHT = 2  # chunks per worker queued or running: keeps every worker busy, memory flat
BLOCKED_WHILE_STARTING = (signal.SIGINT, *STOP_SIGNALS)  # until a new worker has set its own handlers
# What workers ignore, leaving it to the build process. Not SIGTERM: the pool ends its workers with
# it when one of them dies, and a worker that gets one with the build (a whole job stopped) may go.
IGNORED_BY_WORKERS = tuple(s for s in BLOCKED_WHILE_STARTING if s != signal.SIGTERM)


class ImageSource(Protocol):
    """How a worker gets an image: ``name`` for messages, ``open()`` for ``Image.open`` (a path or
    a binary file; an ``ImageError`` if the bytes cannot be had). A worker never needs to know
    which kind it has: an ``ImageFile``, or an ``archives.Member`` read by offset."""

    @property
    def name(self) -> str: ...

    def open(self) -> str | BinaryIO: ...


@dataclass(frozen=True)
class ImageFile:
    """An image in a file (an ``ImageSource``)."""

    path: str

    @property
    def name(self) -> str:
        """What errors and notes call the image."""
        return self.path

    def open(self) -> str:
        """What ``Image.open`` reads the image from (a path here; a binary file for other sources)."""
        return self.path


@dataclass(frozen=True)
class WriteInPlace:
    """A chunk's rows go straight into the archive at ``offset`` (a stored archive)."""

    archive: str
    offset: int


@dataclass(frozen=True)
class SendDeflated:
    """A chunk's rows come back to the parent as a raw deflate segment (a compressed archive)."""


@dataclass(frozen=True)
class Chunk:
    """Rows ``start .. start+len(images)-1`` of image array ``key`` of archive ``part``: the
    images to transform, and where their rows go, one destination per size (in the order of
    the specs the chunk is packed with)."""

    key: str
    start: int
    images: tuple[ImageSource, ...]
    destinations: tuple[WriteInPlace | SendDeflated, ...]
    part: int = 0
    skip_errors: bool = False


@dataclass(frozen=True)
class ChunkResult:
    """What a worker reports of a chunk: the CRC-32 of each row and of all its bytes,
    per-channel sums of values and of squares, and the deflate segment of the bytes
    when they were not written in place."""

    key: str
    start: int
    row_crcs: tuple[int, ...]
    crc32: int
    nbytes: int
    channel_sums: tuple[int, ...]  # red, green, blue
    channel_squares: tuple[int, ...]
    payload: bytes | None = None
    part: int = 0
    failed: tuple[tuple[int, str], ...] = ()  # (row, reason) of images left out (of every size)
    warned: tuple[tuple[int, str], ...] = ()  # (row, warning) of images packed despite a warning
    size: int = 0  # which of the build's sizes these rows are

    @property
    def count(self) -> int:
        return len(self.row_crcs)


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written


def pack_chunk(chunk: Chunk, specs: tuple[TransformSpec, ...]) -> tuple[ChunkResult, ...]:
    """Decode each image of the chunk once and transform it to every size of ``specs``; checksum
    each size's rows, and write or deflate them. One result per size, in the order of ``specs``."""
    name = chunk.images[0].name if chunk.images else ""
    try:
        rows = [np.empty((len(chunk.images), spec.crop_size, spec.crop_size, 3), dtype=np.uint8) for spec in specs]
        failed, warned = [], []
        for i, image in enumerate(chunk.images):
            name = image.name
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    decoded = open_rgb(image.open(), name)
                    for spec, size_rows in zip(specs, rows, strict=True):
                        size_rows[i] = transform_rgb(decoded, spec)
                warned += [(chunk.start + i, _warning_text(w.message)) for w in caught]
            except ImageError as exc:
                if not chunk.skip_errors:
                    raise
                for size_rows in rows:
                    size_rows[i] = 0
                failed.append((chunk.start + i, exc.reason))
        return tuple(_finished_rows(chunk, size, spec, size_rows, tuple(failed), tuple(warned))
                     for size, (spec, size_rows) in enumerate(zip(specs, rows, strict=True)))
    except MemoryError:
        spec = max(specs, key=lambda spec: spec.crop_size)
        sizes = " in each size" if len(specs) > 1 else ""
        raise UserError(f"out of memory while packing {name} (a worker holds {CHUNK_SIZE} images of "
                        f"{spec.crop_size}x{spec.crop_size}{sizes} at a time); use fewer --workers or a smaller "
                        f"{'--crop_size' if len(specs) == 1 else 'or fewer --sizes'}, or free memory") from None


def _finished_rows(chunk: Chunk, size: int, spec: TransformSpec, rows: np.ndarray, failed: tuple,
                   warned: tuple) -> ChunkResult:
    """One size's transformed rows of a chunk: summed (X_train only), stored in the archive's
    layout, checksummed, and written in place or deflated."""
    sums, squares = channel_sums(rows) if chunk.key == "X_train" else ((0, 0, 0), (0, 0, 0))  # stats of X_train
    rows = store_rows(rows, spec)
    data = rows.data.cast("B")
    row_crcs = tuple(zlib.crc32(row.data) for row in rows)
    destination, payload = chunk.destinations[size], None
    if isinstance(destination, SendDeflated):
        payload = deflate_segment(data)
    else:
        fd = os.open(destination.archive, os.O_WRONLY)
        try:
            _pwrite_all(fd, data, destination.offset)
        finally:
            os.close(fd)
    crc = crc32_of_parts(row_crcs, rows[0].nbytes) if len(rows) else 0
    return ChunkResult(chunk.key, chunk.start, row_crcs, crc, len(data), sums, squares, payload, chunk.part,
                       failed, warned, size)


def _warning_text(message: Warning | str) -> str:
    """A warning raised while decoding an image, as a short note (Pillow's bomb warning in plain words)."""
    if isinstance(message, Image.DecompressionBombWarning):
        pixels = next((int(word.strip("(")) for word in str(message).split() if word.strip("(").isdigit()), 0)
        return f"{pixels:,} pixels, above Pillow's decompression-bomb warning limit of {Image.MAX_IMAGE_PIXELS:,}"
    return str(message)


def default_workers() -> int:
    """The cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def memory_per_worker(specs: tuple[TransformSpec, ...]) -> int:
    """Bytes a worker needs at most, roughly: a chunk's rows of every size, and four times over
    those of one (the rows, their squares as uint16 for the channel sums, and their copy in the
    stored layout or deflated), the largest resized image before its crop (up to a 2:1 aspect
    ratio), and ``WORKER_BASE_BYTES`` for the decoded photo and the interpreter."""
    rows = [CHUNK_SIZE * spec.crop_size * spec.crop_size * 3 for spec in specs]
    resized = max(0 if spec.resize == "squash" else 2 * spec.resize_size * spec.resize_size * 3 for spec in specs)
    return sum(rows) + 3 * max(rows) + resized + WORKER_BASE_BYTES


WORKER_BASE_BYTES = 96 << 20


def available_memory() -> tuple[int | None, int | None]:
    """``(shared, per_process)``: the bytes all processes of this machine (or container) may still
    use together, and the bytes one process forked from this one may still map (``ulimit -v``);
    None where nothing says."""
    shared = []
    try:
        with open("/proc/meminfo") as f:
            shared += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    except OSError:
        pass
    try:
        limit = open("/sys/fs/cgroup/memory.max").read().strip()
        if limit.isdigit():
            shared.append(int(limit) - int(open("/sys/fs/cgroup/memory.current").read()))
    except (OSError, ValueError):
        pass
    per_process = None
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            with open("/proc/self/status") as f:
                mapped = next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:")), 0)
            per_process = soft - mapped
    except (ImportError, OSError, ValueError):
        pass
    return (min(shared) if shared else None), per_process


def channel_sums(rows: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Exact per-channel sums of values and of squared values of (n, h, w, 3) uint8 rows."""
    if rows.size == 0:
        return (0, 0, 0), (0, 0, 0)
    lines = rows.reshape(-1, rows.shape[-2] * 3)  # one image line per row: contiguous and wide
    # summed down the lines, a uint32 total is exact while lines * 255**2 < 2**32
    total = np.uint32 if len(lines) * 255 ** 2 < 2 ** 32 else np.uint64
    squares = lines.astype(np.uint16)
    np.multiply(squares, squares, out=squares)  # 255 ** 2 fits in uint16
    sums = lines.sum(axis=0, dtype=total).reshape(-1, 3).sum(axis=0, dtype=np.uint64)
    square_sums = squares.sum(axis=0, dtype=total).reshape(-1, 3).sum(axis=0, dtype=np.uint64)
    return tuple(int(v) for v in sums), tuple(int(v) for v in square_sums)


def run_chunks(chunks: Iterable[Chunk], specs: tuple[TransformSpec, ...], workers: int, backend: str = "local",
               scheduler: str | None = None, done: dict | None = None) -> Iterator[ChunkResult]:
    """``pack_chunk`` over ``chunks``; results come back in chunk order, each chunk's sizes in
    the order of ``specs``.

    ``done`` maps ``(part, key, start)`` to the results (one per size) of an earlier
    run: those chunks are not redone, their results are yielded in their place.
    ``backend`` is ``"local"`` (worker processes of this machine; in-process when
    ``workers == 1``) or ``"dask"`` (the cluster whose scheduler is ``scheduler``).
    """
    done = done or {}
    chunks = list(chunks) if done else chunks
    todo = (c for c in chunks if (c.part, c.key, c.start) not in done)
    if backend == "dask":
        fresh = _dask_results(todo, specs, workers, scheduler)
    elif workers == 1:
        fresh = (pack_chunk(chunk, specs) for chunk in todo)
    else:
        fresh = _local_results(todo, specs, workers)
    if not done:
        for results in fresh:
            yield from results
        return
    for chunk in chunks:
        key = (chunk.part, chunk.key, chunk.start)
        yield from done[key] if key in done else next(fresh)


def _pool_context():
    """How to start the workers. ``fork`` from a single-threaded process (the command line) on
    Linux: a worker starts in milliseconds with every module already imported. From a process
    running other threads (a notebook, a Dask client) a fork could copy a lock some thread
    holds, so ``forkserver``: a clean process, started here (while ``_stop_signals_held``, so
    that it and the workers it forks start with the stop signals blocked), forks the workers,
    which then import the packer. ``spawn`` on macOS, where fork is unsafe. (The packer runs on
    POSIX systems only: the work folder's lock is ``flock``.)"""
    import multiprocessing

    if sys.platform == "darwin":
        return multiprocessing.get_context("spawn")
    if threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    from multiprocessing import forkserver

    try:
        forkserver.ensure_running()
    except OSError as exc:  # e.g. its socket path under TMPDIR is longer than AF_UNIX allows
        raise UserError(f"cannot start the fork server that starts the workers ({exc.strerror or exc}, socket "
                        f"under {tempfile.gettempdir()}); set TMPDIR to a short path such as /tmp") from None
    return multiprocessing.get_context("forkserver")


def _local_results(chunks: Iterator[Chunk], specs: tuple[TransformSpec, ...],
                   workers: int) -> Iterator[tuple[ChunkResult, ...]]:
    """``pack_chunk`` on ``workers`` processes, at most ``IN_FLIGHT`` chunks per worker queued."""
    from concurrent.futures import Future, ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    pool, pending = None, deque[Future]()
    try:
        with _stop_signals_held():
            context = _pool_context()
            pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker)
            for chunk in islice(chunks, IN_FLIGHT * workers):
                pending.append(pool.submit(pack_chunk, chunk, specs))
        while pending:
            result = pending.popleft().result()
            for chunk in islice(chunks, 1):
                pending.append(pool.submit(pack_chunk, chunk, specs))
            yield result
    except BrokenProcessPool:
        raise UserError("a worker process died (killed by the system, e.g. out of memory) or could not start; "
                        "run again, with fewer --workers if memory is short") from None
    finally:
        for future in pending:
            future.cancel()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


@contextmanager
def _stop_signals_held() -> Iterator[None]:
    """While the workers start: SIGINT, SIGTERM and SIGHUP wait, then act as they would have.

    They are blocked in this thread, and so in every process started from it (a fork server
    too, and the workers it forks): in a worker one stays pending until its initializer ignores
    it, so a Ctrl-C cannot print a worker's traceback (the build stops the workers). In the
    build, one that another thread takes meanwhile is only recorded: stopping halfway through
    starting a worker would leave a process the pool does not know of, which fails with a
    traceback once the build is gone. On leaving, the signals taken are raised again."""
    held = BLOCKED_WHILE_STARTING
    taken: list[int] = []
    in_main_thread = threading.current_thread() is threading.main_thread()  # handlers are set there only
    previous = {number: signal.signal(number, lambda number, _frame: taken.append(number))
                for number in held} if in_main_thread else {}
    signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, held)  # one pending here is recorded now
        for number, handler in previous.items():
            signal.signal(number, handler)
        for number in dict.fromkeys(taken):
            signal.raise_signal(number)


def _start_worker() -> None:
    """In a local worker: leave Ctrl-C and SIGHUP to the build process (which stops the workers;
    a worker that took them would print a traceback or die unrecorded), and exit as soon as the build process is gone
    (SIGKILLed, say), whether it is the worker's parent or asked a fork server for it."""
    import multiprocessing
    from multiprocessing.connection import wait

    for stop in IGNORED_BY_WORKERS:
        signal.signal(stop, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the build's handler, which a fork copied
    signal.pthread_sigmask(signal.SIG_UNBLOCK, BLOCKED_WHILE_STARTING)
    build = multiprocessing.parent_process()

    def exit_with_build():
        wait([build.sentinel])
        os._exit(1)

    threading.Thread(target=exit_with_build, name="exit-with-build", daemon=True).start()


def check_dask_scheduler(address: str) -> None:
    """Fail early, with the address, when the Dask scheduler cannot be reached."""
    from distributed import Client

    try:
        Client(address).close()
    except (OSError, TimeoutError) as exc:
        raise UserError(f"cannot reach the Dask scheduler at {address} ({exc}); start it or fix --scheduler") from None


def _dask_results(chunks, specs: tuple[TransformSpec, ...], workers: int, scheduler: str | None):
    """``pack_chunk`` on the Dask cluster at ``scheduler``, through joblib's Dask backend."""
    from joblib import Parallel, delayed, parallel_config

    results = None
    with parallel_config(backend="dask", scheduler_host=scheduler), warnings.catch_warnings():
        # joblib warns when a run stops early (Ctrl-C, a bad image) about tasks it dropped
        warnings.filterwarnings("ignore", message=".*adjusting the input task iterator", category=UserWarning)
        parallel = Parallel(n_jobs=workers, return_as="generator", pre_dispatch=f"{IN_FLIGHT}*n_jobs", batch_size=1)
        try:
            results = parallel(delayed(pack_chunk)(chunk, specs) for chunk in chunks)
            yield from results
        finally:
            if results is not None:
                results.close()
