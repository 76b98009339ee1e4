"""The work folder of a run: partial files, a journal of finished chunks, a lock.

Every build keeps its unfinished outputs in ``<out_dir>/.<name>_cls.work/``::

    lock                 held (flock) by the running build; a second one is refused
    plan.json            {"fingerprint": SHA-256 of what is being built (options and every
                         row), "options": the options that shape the bytes}
    journal.jsonl        one JSON line per finished chunk and size, appended in row order
    segments/            deflate segments of finished chunks (--compress only)
    <file>.partial       the archives, CSV and manifest being written

A chunk is written to the journal only after its rows are flushed to disk, so
after any interruption (Ctrl-C, SIGTERM, SIGKILL, a lost machine) ``--resume``
redoes only the chunks that are not in the journal. A run whose plan differs
from the folder's starts afresh, and ``resume_state`` says why. A build of several
sizes keeps every size's files in the first size's folder, and holds the lock of
each other size's folder (``name_held``) while it runs. Flushing runs in a background
thread (``os.fsync`` releases the GIL), so the parent keeps feeding the workers. The folder is removed when the
outputs are in place, and when a run without ``--resume`` is stopped cleanly.
"""
import contextlib
import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from .errors import UserError
from .options import OutputNames
from .work import ChunkResult

FLUSH_SECONDS = 1.0


class WorkFolder:
    """A locked work folder; see the module docstring."""

    def __init__(self, out_dir: Path, names: OutputNames, fingerprint: str, options: dict, resume: bool):
        """Lock the work folder of the build ``names`` name; keep its contents only if ``resume`` and its
        ``fingerprint`` matches. ``options`` (the options that shape the bytes) are kept beside
        the fingerprint, to say which changed when a later ``--resume`` cannot resume.

        ``resume_state`` is then None, or a sentence for the user: why there is nothing to
        resume, or that an interrupted run of the same build is being discarded.
        """
        self.path = out_dir / names.work_folder
        self.resumed = False
        self._lock = _locked(self.path, out_dir)
        previous = self._read_plan()
        resumable = previous is not None and previous.get("fingerprint") == fingerprint
        interrupted = resumable and (self.path / "journal.jsonl").is_file()
        if resume and resumable:
            self.resumed = True
            self.resume_state = None
        else:
            self.resume_state = (_why_not_resumable(previous, options, self.path) if resume else
                                 "a previous run of this build was interrupted; add --resume to continue it "
                                 "(starting afresh)" if interrupted else None)
            for entry in self.path.iterdir():
                if entry.name != "lock":
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
            (self.path / "plan.json").write_text(json.dumps({"fingerprint": fingerprint, "options": options},
                                                            default=str) + "\n")
        (self.path / "segments").mkdir(exist_ok=True)
        self._pending: list[ChunkResult] = []
        self._last_flush = time.monotonic()
        self._flusher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")
        self._flushing: Future | None = None

    def _read_plan(self) -> dict | None:
        try:
            return json.loads((self.path / "plan.json").read_text())
        except (OSError, ValueError):
            return None

    def partial(self, file_name: str) -> str:
        """Where the unfinished version of output ``file_name`` lives."""
        return str(self.path / f"{file_name}.partial")

    def finished_chunks(self, sizes: int) -> dict:
        """Results of the chunks an earlier run finished for all ``sizes`` sizes: ``(part, key, start) ->
        (ChunkResult of size 0, of size 1, ...)``. A chunk with a size missing is left to be redone."""
        done: dict[tuple[int, str, int], dict[int, ChunkResult]] = {}
        journal = self.path / "journal.jsonl"
        if not self.resumed or not journal.is_file():
            return {}
        with open(journal, encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    break  # a line cut short by the interruption: that chunk is redone
                segment = self.path / "segments" / record["segment"] if record["segment"] else None
                if segment is not None and not segment.is_file():
                    continue
                result = ChunkResult(record["key"], record["start"], tuple(record["row_crcs"]), record["crc32"],
                                     record["nbytes"], tuple(record["sums"]), tuple(record["squares"]),
                                     segment.read_bytes() if segment else None, record["part"],
                                     tuple(tuple(f) for f in record["failed"]),
                                     tuple(tuple(w) for w in record.get("warned", ())), record.get("size", 0))
                done.setdefault((result.part, result.key, result.start), {})[result.size] = result
        return {chunk: tuple(results[size] for size in range(sizes))
                for chunk, results in done.items() if len(results) == sizes}

    def record(self, result: ChunkResult, writers) -> None:
        """Note a finished chunk; every second flush the archives, then the journal (in the background)."""
        self._pending.append(result)
        if time.monotonic() - self._last_flush >= FLUSH_SECONDS and (self._flushing is None or self._flushing.done()):
            self._wait_for_flush()
            self._flushing = self._flusher.submit(self._write_journal, writers, self._pending)
            self._pending = []
            self._last_flush = time.monotonic()

    def flush(self, writers) -> None:
        """Flush everything recorded so far, and wait for it."""
        self._wait_for_flush()
        if self._pending:
            self._write_journal(writers, self._pending)
            self._pending = []

    def _wait_for_flush(self) -> None:
        if self._flushing is not None:
            self._flushing.result()  # re-raises an error of the background flush
            self._flushing = None

    def _write_journal(self, writers, results: list[ChunkResult]) -> None:
        for writer in writers:
            writer.flush()
        lines = []
        for r in results:
            segment = None
            if r.payload is not None:
                segment = f"{r.part}-{r.key}-{r.start}" + (f"-{r.size}" if r.size else "") + ".deflate"
                with open(self.path / "segments" / segment, "wb") as f:
                    f.write(r.payload)
                    os.fsync(f.fileno())
            lines.append(json.dumps({"part": r.part, "key": r.key, "start": r.start, "row_crcs": list(r.row_crcs),
                                     "crc32": r.crc32, "nbytes": r.nbytes, "sums": list(r.channel_sums),
                                     "squares": list(r.channel_squares), "segment": segment,
                                     "failed": [list(f) for f in r.failed],
                                     "warned": [list(w) for w in r.warned], "size": r.size}) + "\n")
        with open(self.path / "journal.jsonl", "a", encoding="utf-8") as journal:
            journal.write("".join(lines))
            journal.flush()
            os.fsync(journal.fileno())

    def stop_flushing(self) -> None:
        """Wait for a background flush to end (before the archives are closed)."""
        try:
            self._wait_for_flush()
        except (OSError, ValueError):
            pass  # the run is ending anyway; its own error is the one reported
        self._flusher.shutdown()

    def remove(self) -> None:
        """Delete the folder (after success, or when a run without --resume stops)."""
        self.stop_flushing()
        self._lock.close()
        shutil.rmtree(self.path, ignore_errors=True)

    def release(self) -> None:
        """Unlock, keeping the folder for a later ``--resume``."""
        self.stop_flushing()
        self._lock.close()


def _locked(folder: Path, out_dir: Path):
    """The lock file of work folder ``folder`` (made as needed), held; refused while another build holds it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = open(folder / "lock", "w")
    except OSError as exc:
        raise UserError(f"cannot write to --out_dir {out_dir}: {exc.strerror}; choose a writable folder") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise UserError(f"another build is writing {folder} right now; wait for it or stop it") from None
    return lock


@contextlib.contextmanager
def name_held(out_dir: Path, names: OutputNames) -> Iterator[None]:
    """Hold the lock of build ``names``'s work folder without using the folder, so that no build of
    that name runs meanwhile (the other sizes of a build, whose files its own work folder holds);
    the folder goes again unless an interrupted build of that name left its work there."""
    folder = out_dir / names.work_folder
    lock = _locked(folder, out_dir)
    try:
        yield
    finally:
        lock.close()
        if [entry.name for entry in folder.iterdir()] == ["lock"]:
            shutil.rmtree(folder, ignore_errors=True)


def _flat(options: dict) -> dict:
    """Nested option groups (``sampling``) flattened into one level."""
    flat = {}
    for key, value in options.items():
        flat.update(_flat(value) if isinstance(value, dict) else {key: value})
    return flat


def _why_not_resumable(previous: dict | None, options: dict, folder: Path) -> str:
    """Why ``--resume`` starts afresh, for a folder whose plan was ``previous``."""
    if previous is None:
        return f"nothing to resume (no interrupted run of this build in {folder}) — starting afresh"
    before, now = _flat(previous.get("options", {})), _flat(json.loads(json.dumps(options, default=str)))
    changed = [f"{key} {before.get(key)!r} -> {now.get(key)!r}" for key in dict.fromkeys([*now, *before])
               if before.get(key) != now.get(key)]
    reason = "options changed: " + ", ".join(changed) if changed else "the classes or images changed"
    return f"nothing to resume ({reason}) — starting afresh"
