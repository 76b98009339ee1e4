"""Download the chosen images of a URL list into a folder the packer reads as a tree.

``download(request, out_dir, options)`` fetches, for every label of the
request, candidates in their trying order (``urllist.py``) until the label has
``need`` working images or its candidates run out. At most ``need - kept``
candidates of a label are in flight at once, so the images kept are the first
``need`` that work, in trying order, whatever the timing (a duplicate found
later displaces the later-ranked of the two). The folder::

    DIR/train/<wnid>/<image_id>.<jpg|png>   a kept train image, bytes as received
    DIR/val/<wnid>/<image_id>.<jpg|png>     a kept val image
    DIR/downloads.csv      every attempt, one row each, appended as it ends
    DIR/images.csv         the kept images of the last complete run (see below)
    DIR/LOC_synset_mapping.txt   the words naming the classes (``write_class_names``)
    DIR/.partial/          bodies being received (removed at the end)
    DIR/.download.lock     held while a run is going on

``downloads.csv`` has one row per attempt (and one more, ``duplicate``, for a
kept image later displaced by an earlier-ranked copy of its bytes); columns:
``image_id, wnid, line, url, status, http_code, bytes, sha256, seconds,
tries`` (``status`` in ``STATUSES``; ``http_code`` the
last HTTP status seen, empty when none; ``bytes`` and ``sha256`` of the body
received, empty when none; ``seconds`` of all tries; ``tries`` how many).

``images.csv`` columns: ``split, path, image_id, wnid, line, url, sha256,
bytes``; one row per kept image, train rows then val rows, each in ``line``
order; ``path`` relative to ``DIR``. The packer takes the rows, labels and ids
(``line``) of ``DIR`` from it (``tree.py``); it is replaced atomically at the
end of a run.

An image is kept when: the answer is HTTP 200 after at most ``MAX_REDIRECTS``
redirects, none to a ``photo_unavailable`` page; the body is complete (as long
as its Content-Length) and at most ``max_bytes``; Pillow opens it as JPEG or PNG
and decodes it fully; its short side is at least ``min_size``; its SHA-256 is
not a known placeholder's (``packer/data/placeholder_sha256.txt`` and
``reject_sha256``); and no earlier image of its label has the same bytes.
Bodies are written to ``.partial/`` and renamed into place once verified.

Retries: a timeout, a reset or refused connection, a cut-short body, HTTP 408,
429 and 5xx are tried again up to ``retries`` times, after ``backoff * 2**k``
seconds plus up to as much again of jitter (or the ``Retry-After`` the server
asked for, up to ``MAX_RETRY_AFTER``); other failures are final. On the next run
in the same folder the final failures (``PERMANENT``) and the kept images are
not fetched again; the others are.
"""
import contextlib
import csv
import fcntl
import hashlib
import os
import queue
import random
import shutil
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from .errors import UserError
from .labelfiles import names_from_synset_mapping
from .options import BuildOptions
from .progress import PLAIN_SECONDS, is_terminal
from .sampling import class_order
from .tree import DOWNLOADED_EXTENSIONS, IMAGE_COLUMNS, IMAGES_CSV, LABEL_FILE_PLACES, downloaded_paths
from .urllist import ListedImage

ATTEMPT_COLUMNS = ("image_id", "wnid", "line", "url", "status", "http_code", "bytes", "sha256", "seconds", "tries")
DOWNLOADS_CSV = "downloads.csv"
PARTIAL_DIR = ".partial"
LOCK_FILE = ".download.lock"
MAX_REDIRECTS = 5
MAX_PIXELS = 50_000_000  # an image larger than this is too_large (ImageNet's are well under 1 megapixel)
MAX_RETRY_AFTER = 60.0
PLACEHOLDER_MARK = "photo_unavailable"
STATUSES = ("ok", "http_<code>", "timeout", "reset", "truncated", "too_large", "not_an_image", "too_small",
            "placeholder", "duplicate", "too_many_redirects", "bad_url", "no_host", "error")
# tried again by a later run (and, but for no_host, within the run): a host name that does not resolve
# may be a resolver's passing failure
TRANSIENT = {"timeout", "reset", "truncated", "http_408", "http_429", "error", "no_host"}  # and http_5xx


def user_agent() -> str:
    from . import __version__

    return f"imagenet-subset/{__version__} (research dataset download; urllib3)"


def is_final(status: str) -> bool:
    """Whether a run in the same folder takes ``status`` as it is (not fetched again): not for a
    transient failure, nor a duplicate (its twin may since have been displaced)."""
    return status not in TRANSIENT and status != "duplicate" and not status.startswith("http_5")


def builtin_placeholders() -> frozenset[str]:
    """The SHA-256 digests of known placeholder images, from ``packer/data/placeholder_sha256.txt``."""
    text = resources.files("packer.data").joinpath("placeholder_sha256.txt").read_text()
    return sha256_digests(text, "packer/data/placeholder_sha256.txt")


def read_sha256_list(path: str | os.PathLike) -> frozenset[str]:
    """A ``--reject_sha256`` file (``sha256_digests``)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise UserError(f"--reject_sha256 {path}: {exc.strerror or exc}; pass a file of SHA-256 digests, "
                        "one per line") from None
    return sha256_digests(text, f"--reject_sha256 {path}")


def sha256_digests(text: str, source: str) -> frozenset[str]:
    """One hex SHA-256 per line, anything after it ignored; blank and ``#`` lines skipped."""
    digests = set()
    for number, line in enumerate(text.splitlines(), start=1):
        word = line.split()[0].lower() if line.split() else ""
        if not word or word.startswith("#"):
            continue
        if len(word) != 64 or any(c not in "0123456789abcdef" for c in word):
            raise UserError(f"{source}, line {number}: {word[:70]!r} is not a hex SHA-256; "
                            "write one 64-digit digest per line")
        digests.add(word)
    return frozenset(digests)


@dataclass(frozen=True)
class DownloadOptions:
    """How to fetch: connections in all and per host, timeouts (seconds), retries, size limits."""

    connections: int = 32
    per_host: int = 8
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    retries: int = 3
    backoff: float = 1.0
    max_bytes: int = 20 << 20
    min_size: int = 32
    reject_sha256: frozenset[str] = frozenset()
    progress: bool = True

    @classmethod
    def of(cls, options: BuildOptions) -> "DownloadOptions":
        """How to fetch, from a build's options (``--reject_sha256`` read and checked here)."""
        rejected = read_sha256_list(options.reject_sha256) if options.reject_sha256 else frozenset()
        return cls(connections=options.connections, per_host=options.per_host,
                   connect_timeout=min(10.0, options.timeout), read_timeout=float(options.timeout),
                   max_bytes=options.max_bytes, min_size=options.min_size, reject_sha256=rejected,
                   progress=options.progress)


def download_folder(options: BuildOptions, name: str) -> Path:
    """Where a build named ``name`` downloads: ``--download_dir``, or ``<out_dir>/<name>_images``."""
    return Path(options.download_dir or os.path.join(options.out_dir, f"{name}_images"))


@dataclass
class Attempt:
    """One row of ``downloads.csv`` (see the module docstring)."""

    image_id: str
    wnid: str
    line: int
    url: str
    status: str
    http_code: int | None = None
    bytes: int | None = None
    sha256: str = ""
    seconds: float = 0.0
    tries: int = 1
    extension: str = ""  # of a kept body: ".jpg" or ".png" (not a column)
    body: Path | None = None  # a verified body, in .partial/ until it is kept (not a column)

    def row(self) -> list:
        return [self.image_id, self.wnid, self.line, self.url, self.status,
                "" if self.http_code is None else self.http_code, "" if self.bytes is None else self.bytes,
                self.sha256, f"{self.seconds:.3f}", self.tries]


@dataclass
class LabelWork:
    """What to fetch for one label: its candidates in trying order, how many working images it
    needs, and how many of those go to val (see ``split_kept``); then the dispatcher's count of
    candidates started and in flight, and the images kept."""

    name: str
    candidates: list[ListedImage]
    need: int
    val: int = 0
    wnids: tuple[str, ...] = ()  # the label's classes (a folder is made for each, kept images or not)
    every: bool = False  # try every candidate (need is their count): never short, val is min(val, kept)
    tried: int = 0  # candidates started
    in_flight: int = 0
    kept: dict[int, Attempt] = field(default_factory=dict)  # rank in candidates -> the kept attempt

    @property
    def missing(self) -> int:
        return self.need - len(self.kept) - self.in_flight


@dataclass
class DownloadResult:
    """What a download run did: the kept images per label (rank order), the count of each
    status this run, the images taken from an earlier run, and labels left short."""

    labels: list[LabelWork]
    statuses: Counter
    reused: int
    bytes: int
    seconds: float
    rows: list[dict]  # images.csv
    notes: tuple[str, ...] = ()

    @property
    def short(self) -> list[str]:
        """The labels that got fewer working images than they needed (not those trying every URL)."""
        return [label.name for label in self.labels if len(label.kept) < label.need and not label.every]

    def summary_lines(self) -> list[str]:
        kept = sum(len(label.kept) for label in self.labels)
        counts = ", ".join(f"{status} {count}" for status, count in sorted(self.statuses.items(),
                                                                          key=lambda kv: (-kv[1], kv[0])))
        lines = [f"downloaded: {kept} images kept for {len(self.labels)} labels "
                 f"({self.reused} from an earlier run); this run: {counts or 'nothing fetched'}; "
                 f"{self.bytes / 1e6:.1f} MB in {self.seconds:.1f} s"]
        lines += [f"note: {note}" for note in self.notes]
        repeated = Counter(row["sha256"] for row in self.rows)
        for digest, count in repeated.most_common(3):
            if count > 1:  # one label never keeps the same bytes twice: these came for several labels
                lines.append(f"note: the same file ({digest}) was kept for {count} URLs of different labels; if it "
                             "is a placeholder, add that SHA-256 to a --reject_sha256 file and run again")
        if self.short:
            lines.append(f"{len(self.short)} labels ran out of URLs to try and kept what they got: "
                         f"{', '.join(self.short[:8])}{' ...' if len(self.short) > 8 else ''}")
        return lines


# --------------------------------------------------------------------------- one image

class _Fetcher:
    """Fetches one URL into ``partial`` and says what came of it (thread-safe: one urllib3
    PoolManager, which keeps a connection pool per host)."""

    def __init__(self, options: DownloadOptions, partial: Path):
        import urllib3

        self.urllib3 = urllib3
        self.options = options
        self.partial = partial
        self.placeholders = builtin_placeholders() | options.reject_sha256
        self.http = urllib3.PoolManager(
            num_pools=max(64, options.connections * 2), maxsize=options.per_host, block=False,
            headers={"User-Agent": user_agent(), "Accept": "image/jpeg,image/png,image/*;q=0.8,*/*;q=0.1",
                     "Accept-Encoding": "identity"},
            timeout=urllib3.Timeout(connect=options.connect_timeout, read=options.read_timeout),
            retries=False)

    def __call__(self, image: ListedImage, stop: threading.Event) -> Attempt:
        started = time.monotonic()
        attempt = Attempt(image.image_id, image.wnid, image.line, image.url, "error", tries=0)
        for try_number in range(self.options.retries + 1):
            attempt.tries = try_number + 1
            wait_for = self._try(image, attempt)
            if wait_for is None or try_number == self.options.retries or stop.is_set():
                break
            delay = wait_for if wait_for > 0 else self.options.backoff * 2 ** try_number * (1 + random.random())
            if stop.wait(min(delay, MAX_RETRY_AFTER)):
                break
        attempt.seconds = time.monotonic() - started
        return attempt

    def _try(self, image: ListedImage, attempt: Attempt) -> float | None:
        """One try; sets ``attempt``'s outcome. Returns None when it is final, else how long to
        wait before the next try (0: the usual backoff)."""
        exceptions = self.urllib3.exceptions
        attempt.http_code, attempt.bytes, attempt.sha256, attempt.body = None, None, "", None
        url = image.url
        try:
            for _ in range(MAX_REDIRECTS + 1):
                if PLACEHOLDER_MARK in url.lower():
                    attempt.status = "placeholder"
                    return None
                response = self.http.request("GET", url, preload_content=False, redirect=False)
                attempt.http_code = response.status
                if response.status in (301, 302, 303, 307, 308) and response.headers.get("Location"):
                    url = urljoin(url, response.headers["Location"])
                    response.close()  # its body is not read: a slow or endless one cannot hold the fetch
                    continue
                break
            else:
                attempt.status = "too_many_redirects"
                return None
            with contextlib.closing(response):
                return self._receive(response, image, attempt)
        except exceptions.LocationValueError:
            attempt.status = "bad_url"
        except exceptions.NameResolutionError:
            attempt.status = "no_host"
        except exceptions.NewConnectionError:  # refused (a subclass of ConnectTimeoutError in urllib3 2)
            attempt.status = "reset"
            return 0.0
        except (exceptions.ConnectTimeoutError, exceptions.ReadTimeoutError, TimeoutError):
            attempt.status = "timeout"
            return 0.0
        except (exceptions.ProtocolError, ConnectionError) as exc:
            attempt.status = "truncated" if _is_cut_short(exc) else "reset"
            return 0.0
        except exceptions.HTTPError:
            attempt.status = "error"
            return 0.0
        return None

    def _receive(self, response, image: ListedImage, attempt: Attempt) -> float | None:
        status = response.status
        if status != 200:
            attempt.status = f"http_{status}"
            if status == 429 or status == 408 or status >= 500:
                return _retry_after(response.headers.get("Retry-After"))
            return None
        announced = response.headers.get("Content-Length")
        if announced and announced.isdigit() and int(announced) > self.options.max_bytes:
            attempt.status = "too_large"
            return None
        body: Path | None = self.partial / f"{image.image_id}.{threading.get_ident()}.part"
        assert body is not None
        digest, size = hashlib.sha256(), 0
        try:
            with open(body, "wb") as out:
                for block in response.stream(1 << 16, decode_content=False):  # the bytes as sent
                    size += len(block)
                    if size > self.options.max_bytes:
                        attempt.status, attempt.bytes = "too_large", size
                        return None
                    digest.update(block)
                    out.write(block)
            attempt.bytes, attempt.sha256 = size, digest.hexdigest()
            if announced and announced.isdigit() and size != int(announced):
                attempt.status = "truncated"
                return 0.0
            if attempt.sha256 in self.placeholders:
                attempt.status = "placeholder"
                return None
            attempt.status, attempt.extension = check_image(body, self.options.min_size)
            if attempt.status == "ok":
                attempt.body, body = body, None
            return None
        finally:
            if body is not None:
                body.unlink(missing_ok=True)


def _is_cut_short(exc: BaseException) -> bool:
    import urllib3

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, urllib3.exceptions.IncompleteRead) or "IncompleteRead" in type(seen).__name__:
            return True
        seen = seen.__cause__ or seen.__context__ or (seen.args[1] if len(seen.args) > 1
                                                      and isinstance(seen.args[1], BaseException) else None)
    return False


def _retry_after(value: str | None) -> float:
    """Seconds a ``Retry-After`` header asks for (0 when absent or unreadable: the usual backoff)."""
    if value and value.strip().isdigit():
        return float(value.strip())
    if value:
        from email.utils import parsedate_to_datetime

        with contextlib.suppress(TypeError, ValueError):
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    return 0.0


def check_image(path: Path, min_size: int) -> tuple[str, str]:
    """(status, extension) of a received body: ``ok`` and ``.jpg``/``.png`` when Pillow decodes
    it fully as JPEG or PNG with a short side of at least ``min_size`` and at most ``MAX_PIXELS``
    pixels (``too_large`` beyond)."""
    from PIL import Image

    try:
        with Image.open(path, formats=("JPEG", "PNG")) as image:
            if min(image.size) < min_size:
                return "too_small", ""
            if image.size[0] * image.size[1] > MAX_PIXELS:  # a few KB can decode to gigabytes
                return "too_large", ""
            if image.format == "JPEG":
                image.draft(image.mode, (min_size, min_size))  # every byte still decoded, at a smaller scale
            image.load()
            return "ok", ".jpg" if image.format == "JPEG" else ".png"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return "not_an_image", ""


# --------------------------------------------------------------------------- the record

def read_attempts(folder: Path) -> dict[str, Attempt]:
    """The last attempt of each image_id in ``folder/downloads.csv`` ({} without one)."""
    path = folder / DOWNLOADS_CSV
    if not path.is_file():
        return {}
    last: dict[str, Attempt] = {}
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        # one row per line, each parsed alone: a line cut inside a quoted URL by a killed run
        # spoils only itself
        rows = (_csv_cells(line) for line in f)
        header = next(rows, None)
        if header is None:
            return {}
        if tuple(header) != ATTEMPT_COLUMNS:
            raise UserError(f"{path} is not a download record of imagenet-subset (columns {','.join(header)[:80]}); "
                            "pass another folder for the download")
        for row in rows:
            if len(row) != len(ATTEMPT_COLUMNS):  # a line cut short by a killed run
                continue
            try:
                attempt = Attempt(row[0], row[1], int(row[2]), row[3], row[4],
                                  int(row[5]) if row[5] else None, int(row[6]) if row[6] else None, row[7],
                                  float(row[8]), int(row[9]))
            except ValueError:
                continue
            last[attempt.image_id] = attempt
    return last


def _csv_cells(line: str) -> list[str]:
    """One CSV line's cells ([] for a line ``csv`` cannot read, e.g. one cut inside quotes)."""
    try:
        return next(csv.reader([line]), [])
    except csv.Error:
        return []


@contextlib.contextmanager
def _attempt_log(folder: Path) -> Iterator[Callable[[Attempt], None]]:
    path = folder / DOWNLOADS_CSV
    new = not path.is_file() or path.stat().st_size == 0
    with _open_in_folder(path, "a") as f:
        if not new:  # a run killed mid-line left no line end: start a fresh line
            with open(path, "rb") as check:
                check.seek(-1, os.SEEK_END)
                if check.read(1) != b"\n":
                    f.write("\n")
        writer = csv.writer(f, lineterminator="\n")
        if new:
            writer.writerow(ATTEMPT_COLUMNS)

        def log(attempt: Attempt) -> None:
            writer.writerow(attempt.row())
            f.flush()  # in the kernel's hands: a killed run loses no finished attempt

        yield log


_OPEN_FLAGS = {"a": os.O_WRONLY | os.O_CREAT | os.O_APPEND, "a+": os.O_RDWR | os.O_CREAT | os.O_APPEND,
               "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC}


def _open_in_folder(path: Path, mode: str):
    """``open(path, mode)`` (text, UTF-8) that never follows a symbolic link at ``path``: a download
    folder may come from someone else, and a planted link must not make a run write elsewhere."""
    descriptor = os.open(path, _OPEN_FLAGS[mode] | os.O_NOFOLLOW, 0o644)
    return open(descriptor, mode, newline="", encoding="utf-8")


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder/.download.lock``; a second run on the same folder is refused."""
    folder.mkdir(parents=True, exist_ok=True)
    with _open_in_folder(folder / LOCK_FILE, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip()
            raise UserError(f"{folder} is in use by another download{f' (pid {holder})' if holder else ''}; "
                            "wait for it to end, or download into another folder") from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        try:
            yield
        finally:
            lock.truncate(0)


def kept_path(folder: Path, split: str, image_id: str, extension: str) -> Path:
    """Where an image is kept: ``tree.downloaded_paths`` in the split's folder."""
    return folder / split / downloaded_paths(image_id)[DOWNLOADED_EXTENSIONS.index(extension)]


def _find_kept(folder: Path, attempt: Attempt) -> Path | None:
    """Where an earlier run's kept image is (train/ or val/), if it is there whole."""
    for split in ("train", "val"):
        for extension in DOWNLOADED_EXTENSIONS:
            path = kept_path(folder, split, attempt.image_id, extension)
            if path.is_file() and path.stat().st_size == attempt.bytes:
                attempt.extension = extension
                return path
    return None


# --------------------------------------------------------------------------- the run

def _host(url: str) -> str:
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""


class _Run:
    """The dispatcher's state: which candidate to try next, what is in flight, what was kept."""

    def __init__(self, labels: list[LabelWork], earlier: dict[str, Attempt], folder: Path, options: DownloadOptions,
                 placeholders: frozenset[str]):
        self.labels = labels
        self.earlier = earlier
        self.placeholders = placeholders
        self.relabelled: list[Attempt] = []  # earlier images now known as placeholders, to record
        self.labels_open = list(labels)
        self.folder = folder
        self.options = options
        self.per_host: Counter = Counter()
        self.statuses: Counter = Counter()
        self.reused = 0
        self.bytes = 0

    def next_candidates(self) -> Iterator[tuple[LabelWork, int, ListedImage]]:
        """Candidates to start now, one label at a time in turn, within the connection limits."""
        busy = sum(label.in_flight for label in self.labels)
        # the labels that may start a candidate (a label can only return to this list when a fetch
        # of its own ends, which is when this is called again)
        self.labels_open = [label for label in self.labels_open if label.in_flight or label.missing > 0
                            and label.tried < len(label.candidates)]
        progressed = True
        while progressed and busy < self.options.connections:
            progressed = False
            for label in self.labels_open:
                if label.missing <= 0 or label.tried >= len(label.candidates):
                    continue
                rank = label.tried
                image = label.candidates[rank]
                earlier = self.earlier.get(image.image_id)
                if earlier is not None and earlier.url == image.url and self._take_earlier(label, rank, earlier):
                    progressed = True
                    continue
                host = _host(image.url)
                if self.per_host[host] >= self.options.per_host:
                    continue
                label.tried += 1
                label.in_flight += 1
                self.per_host[host] += 1
                busy += 1
                progressed = True
                yield label, rank, image
                if busy >= self.options.connections:
                    return

    def _take_earlier(self, label: LabelWork, rank: int, earlier: Attempt) -> bool:
        """Use an earlier run's outcome for this candidate when it is final (no fetch)."""
        if earlier.status == "ok" and earlier.sha256 in self.placeholders:  # rejected since
            self._drop(earlier)
            earlier.status = "placeholder"
            self.statuses["placeholder"] += 1
            self.relabelled.append(earlier)
            label.tried += 1
            return True
        earlier.line = label.candidates[rank].line  # its id is its line in this list
        if earlier.status == "ok":
            if _find_kept(self.folder, earlier) is None:
                return False
            label.tried += 1
            displaced = self._keep(label, rank, earlier)
            for dropped in (earlier, displaced):  # the same bytes as another image of the label
                if dropped is not None and dropped.status == "duplicate":
                    self.statuses["duplicate"] += 1
                    self.relabelled.append(dropped)
            self.reused += earlier.status == "ok"
            return True
        if earlier.status == "duplicate" and any(kept.sha256 == earlier.sha256 for kept in label.kept.values()):
            label.tried += 1  # its twin is still kept: the same bytes again
            return True
        if is_final(earlier.status):
            label.tried += 1
            return True
        return False

    def finished(self, label: LabelWork, rank: int, image: ListedImage, attempt: Attempt) -> list[Attempt]:
        """Take in a finished fetch; the attempts to record (this one, and a kept one it displaced)."""
        label.in_flight -= 1
        self.per_host[_host(image.url)] -= 1
        self.bytes += attempt.bytes or 0
        displaced = self._keep(label, rank, attempt) if attempt.status == "ok" else None
        self.statuses[attempt.status] += 1
        if displaced is not None:
            self.statuses["ok"] -= 1
            self.statuses["duplicate"] += 1
        return [attempt] + ([displaced] if displaced is not None else [])

    def _keep(self, label: LabelWork, rank: int, attempt: Attempt) -> Attempt | None:
        """Keep ``attempt`` unless an earlier-ranked image of the label has its bytes (it is then a
        ``duplicate``); a later-ranked kept twin is displaced instead, and returned."""
        twin = next((r for r, kept in label.kept.items() if kept.sha256 == attempt.sha256), None)
        if twin is not None and twin < rank:
            self._drop(attempt)
            attempt.status = "duplicate"
            return None
        displaced = label.kept.pop(twin) if twin is not None else None
        if displaced is not None:
            self._drop(displaced)
            displaced.status = "duplicate"
        label.kept[rank] = self._placed(attempt)
        return displaced

    def _placed(self, attempt: Attempt) -> Attempt:
        """Move a verified body from .partial/ to train/<wnid>/ (an earlier run's stays where it is)."""
        if attempt.body is not None:
            target = kept_path(self.folder, "train", attempt.image_id, attempt.extension)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(attempt.body, target)
            attempt.body = None
        return attempt

    def _drop(self, attempt: Attempt) -> None:
        if attempt.body is not None:
            attempt.body.unlink(missing_ok=True)
            attempt.body = None
            return
        found = _find_kept(self.folder, attempt)
        if found is not None:
            found.unlink()


def download(labels: list[LabelWork], folder: str | os.PathLike, options: DownloadOptions, seed: int = 0,
             split_of: dict[str, str] | None = None) -> DownloadResult:
    """Fetch every label's images into ``folder`` (see the module docstring); write ``images.csv``.
    ``split_of`` (image_id -> "train" or "val") places the kept images instead of ``split_kept``.
    A folder or disk that fails (not writable, full) ends the run with one ``UserError``."""
    try:
        return _download(labels, Path(folder), options, seed, split_of)
    except OSError as exc:
        where = exc.filename or folder
        raise UserError(f"{where}: {exc.strerror or exc}; pass a download folder this run can write to, or free "
                        "some space, and run the same command again to continue") from None


def _download(labels: list[LabelWork], folder: Path, options: DownloadOptions, seed: int,
              split_of: dict[str, str] | None) -> DownloadResult:
    started = time.monotonic()
    with folder_lock(folder):
        for split in ("train", "val"):  # a label that keeps nothing still has its class folder
            for wnid in {wnid for label in labels for wnid in label.wnids} | {""}:
                (folder / split / wnid).mkdir(parents=True, exist_ok=True)
        partial = folder / PARTIAL_DIR
        shutil.rmtree(partial, ignore_errors=True)  # bodies of a run that was killed
        partial.mkdir(parents=True)
        fetch = _Fetcher(options, partial)
        run = _Run(labels, read_attempts(folder), folder, options, fetch.placeholders)
        stop = threading.Event()
        total = sum(label.need for label in labels)
        jobs: queue.Queue = queue.Queue()
        results: queue.Queue = queue.Queue()

        def fetcher() -> None:
            while (job := jobs.get()) is not None:
                if stop.is_set():
                    continue
                label, rank, image = job
                try:
                    results.put((label, rank, image, fetch(image, stop)))
                except BaseException as exc:  # handed to the dispatcher
                    results.put((label, rank, image, exc))

        # daemon threads: a Ctrl-C ends the run at once, not when the slowest answer times out
        threads = [threading.Thread(target=fetcher, name=f"download-{n}", daemon=True)
                   for n in range(options.connections)]
        for thread in threads:
            thread.start()
        with _attempt_log(folder) as log, _progress(total, options.progress) as bar:
            running = 0
            try:
                while True:
                    for job in run.next_candidates():
                        jobs.put(job)
                        running += 1
                    while run.relabelled:
                        log(run.relabelled.pop())
                    bar.show(run)
                    if not running:
                        break
                    try:
                        ended = [results.get(timeout=0.5)]
                    except queue.Empty:
                        continue
                    with contextlib.suppress(queue.Empty):  # and all the others that ended meanwhile
                        while True:
                            ended.append(results.get_nowait())
                    for label, rank, image, outcome in ended:
                        running -= 1
                        if isinstance(outcome, BaseException):
                            raise outcome
                        for attempt in run.finished(label, rank, image, outcome):
                            log(attempt)
            finally:
                stop.set()
                for _ in threads:
                    jobs.put(None)
        shutil.rmtree(partial, ignore_errors=True)
        rows = place_splits(labels, folder, seed, split_of)
        write_images_csv(rows, folder / IMAGES_CSV)
    return DownloadResult(labels, run.statuses, run.reused, run.bytes, time.monotonic() - started, rows)


class _progress:
    """How the download goes: one bar on a terminal (kept images of all labels, failed attempts,
    MB/s); in a log, the same as a plain line every ``PLAIN_SECONDS`` and at the end."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.bar = total, enabled, None
        self.started = self.last_line = time.monotonic()
        self.line = ""

    def __enter__(self) -> "_progress":
        if self.enabled and is_terminal(sys.stderr):
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, desc="download", unit="img", dynamic_ncols=True)
        return self

    def show(self, run: _Run) -> None:
        if not self.enabled:
            return
        kept = sum(len(label.kept) for label in run.labels)
        failed = sum(count for status, count in run.statuses.items() if status != "ok")
        rate = run.bytes / max(1e-6, time.monotonic() - self.started) / 1e6
        if self.bar is not None:
            self.bar.update(kept - self.bar.n)
            self.bar.set_postfix_str(f"failed {failed}, {rate:.1f} MB/s", refresh=False)
            return
        self.line = f"download: {kept}/{self.total} images kept, {failed} failed, {rate:.1f} MB/s"
        if time.monotonic() - self.last_line >= PLAIN_SECONDS:
            print(self.line, file=sys.stderr, flush=True)
            self.last_line = time.monotonic()

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.line and self.last_line > self.started:  # a log that had lines: its last one
            print(self.line, file=sys.stderr, flush=True)


def split_kept(label: LabelWork, seed: int) -> set[int]:
    """The ranks of the label's kept images that go to val: ``label.val`` of them (scaled down
    when the label got fewer than it needed, rounding to nearest; at most all it got when it
    tries ``every`` candidate), those with the smallest BLAKE2b of ``"<seed>/val/<image_id>"``."""
    got = len(label.kept)
    if label.every:
        count = min(label.val, got)
    else:
        count = label.val if got >= label.need else round(label.val * got / label.need) if label.need else 0

    rank_of = {attempt.image_id: rank for rank, attempt in label.kept.items()}
    return {rank_of[image_id] for image_id in class_order(rank_of, seed, "val")[:count]}


def place_splits(labels: list[LabelWork], folder: Path, seed: int, split_of: dict[str, str] | None = None
                 ) -> list[dict]:
    """Move each kept image to ``train/`` or ``val/`` as ``split_of`` or else ``split_kept`` says;
    the rows of ``images.csv``."""
    rows = []
    for label in labels:
        to_val = split_kept(label, seed) if split_of is None else set()
        for rank, attempt in label.kept.items():
            split = split_of[attempt.image_id] if split_of is not None else "val" if rank in to_val else "train"
            where = _find_kept(folder, attempt)
            if where is None:
                raise UserError(f"{folder}: the kept image {attempt.image_id} went missing during the download; "
                                "run the download again")
            target = kept_path(folder, split, attempt.image_id, attempt.extension)
            if where != target:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(where, target)
            rows.append({"split": split, "path": target.relative_to(folder).as_posix(), "image_id": attempt.image_id,
                         "wnid": attempt.wnid, "line": attempt.line, "url": attempt.url, "sha256": attempt.sha256,
                         "bytes": attempt.bytes})
    rows.sort(key=lambda row: (row["split"] != "train", row["line"]))
    return rows


def write_images_csv(rows: list[dict], path: Path) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with _open_in_folder(temporary, "w") as f:
        writer = csv.DictWriter(f, IMAGE_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(temporary, path)


def write_class_names(folder: Path, names: dict[str, str]) -> None:
    """Add ``names`` (WNID -> words) to ``folder/LOC_synset_mapping.txt`` (``<wnid> <words>`` lines,
    sorted), so the packer names the downloaded classes."""
    path = folder / LABEL_FILE_PLACES["synset_mapping"][0]
    known = names_from_synset_mapping(path) if path.is_file() else {}
    known.update(names)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with _open_in_folder(temporary, "w") as f:
        f.write("".join(f"{wnid} {words}\n" for wnid, words in sorted(known.items())))
    os.replace(temporary, path)
