"""Read an image-URL list (ImageNet's ``fall11_urls.txt`` and the like), streaming.

Formats, told apart by the first line:

* ``fall11_urls.txt`` style: one image per line, ``<wnid>_<n><TAB><url>``
  (``n01440764_10026	http://farm1.static.flickr.com/...jpg``); no header.
* CSV or TSV with a header naming the columns: ``url`` and ``image_id``
  (``<wnid>_<n>``) or ``wnid`` (the image id is then ``<wnid>_<line>``);
  other columns are ignored. Comma- or tab-separated, as the header is.

A list may be gzip-compressed (``.gz``) or a gzip-compressed tar holding the
list as its first file (``.tgz``, ``.tar.gz``, as ImageNet shipped
``imagenet_fall11_urls.tgz``); it is decompressed as it is read, never to disk.
Lines are bytes as stored; an id or URL that is not ASCII-clean UTF-8 is read
with replacement characters.

An image's **line** is its 1-based line number in the list (the header counts
as line 1 in a CSV/TSV, each row is one line): unique and stable, it is the
image's ``train_id`` or ``val_id``. An image id listed on several lines is
taken from the first. A line that has no ``<wnid>_<n>`` id or no ``http(s)://`` URL is
skipped and counted (``UrlList.malformed``, its first one kept for the
message); a list whose first 1,000 data lines are all such is not a URL list,
an error.

**Order of trying.** Each line has a key, ``splitmix64(line + seed *
0x9E3779B97F4A7C15)``; a label's candidates are tried in ascending key
order, so the order is a seeded random permutation that is the same on every
machine and does not depend on which other lines are in the list. The
``rest`` label's candidates are the lines of the other classes with the
smallest keys (``rest_candidates`` many), chosen in the same pass without
holding the list in memory.
"""
import csv
import gzip
import re
import tarfile
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import UserError
from .labelfiles import WNID_RE

IMAGE_ID_RE = re.compile(r"n[0-9]{8}_[0-9]+")  # <wnid>_<n>
_IMAGE_ID_BYTES = re.compile(IMAGE_ID_RE.pattern.encode())  # the same, for lines read as bytes
_GOLDEN = 0x9E3779B97F4A7C15
_MASK = (1 << 64) - 1
SNIFF_LINES = 1000  # data lines read before a list with no usable line is called not a URL list


@dataclass(frozen=True)
class ListedImage:
    """One line of a URL list: its 1-based ``line`` number, ``image_id`` (``<wnid>_<n>``),
    ``wnid`` and ``url``."""

    line: int
    image_id: str
    wnid: str
    url: str


@dataclass
class UrlList:
    """What one pass over a list found: images per WNID, lines, skipped lines."""

    path: Path
    counts: Counter = field(default_factory=Counter)
    lines: int = 0
    malformed: int = 0
    first_malformed: int | None = None
    counting: bool = True  # False: a second pass, that reads only the lines it wants

    @property
    def wnids(self) -> list[str]:
        """The WNIDs with at least one image, sorted."""
        return sorted(self.counts)

    def skipped_note(self) -> list[str]:
        if not self.malformed:
            return []
        return [f"{self.path}: {self.malformed} lines without a <wnid>_<n> id and an http(s) URL were skipped "
                f"(the first: line {self.first_malformed})"]


def line_keys(lines: np.ndarray, seed: int) -> np.ndarray:
    """The trying-order key of each of ``lines`` (see the module docstring), uint64."""
    with np.errstate(over="ignore"):
        z = lines.astype(np.uint64) + np.uint64((seed * _GOLDEN) & _MASK)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def line_key(line: int, seed: int) -> int:
    return int(line_keys(np.array([line], dtype=np.uint64), seed)[0])


def _open_lines(path: Path) -> Iterator[bytes]:
    """The list's lines as bytes (decompressed as read)."""
    try:
        with open(path, "rb") as probe:
            magic = probe.read(2)
    except OSError as exc:
        raise UserError(f"--urls {path}: {exc.strerror or exc}; pass a readable URL list "
                        "(fall11_urls.txt, or a CSV/TSV with image_id and url columns)") from None
    name = path.name.lower()
    try:
        if magic == b"\x1f\x8b" and name.endswith((".tgz", ".tar.gz")):
            with tarfile.open(path, mode="r|gz") as tar:
                for member in tar:
                    if member.isfile():
                        stream = tar.extractfile(member)
                        assert stream is not None
                        yield from stream
                        return
            raise UserError(f"--urls {path} holds no file; pass the list itself or the .tgz it came in")
        opened = gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb", buffering=1 << 20)
        with opened as lines:
            yield from lines
    except (OSError, EOFError, tarfile.TarError, gzip.BadGzipFile, zlib.error) as exc:
        raise UserError(f"--urls {path} is damaged ({exc}); download it again") from None


def read_url_list(path: str | Path, found: UrlList | None = None, wnids: set[str] | None = None,
                  lines: set[int] | None = None) -> Iterator[ListedImage]:
    """The well-formed images of the list, in line order: all, or those of ``wnids`` and those on
    ``lines``; counts of every line go to ``found`` as it is read."""
    path = Path(path)
    found = found if found is not None else UrlList(path)
    raw_lines = _open_lines(path)
    header = next(raw_lines, b"")
    columns = _header_columns(header)
    wanted = None if wnids is None else {wnid.encode() for wnid in wnids}
    if not found.counting and wanted is None:
        raise ValueError("a pass that does not count must say which WNIDs it wants")
    entries = (_plain_entries(path, _chain(header, raw_lines), found, wanted, lines or set()) if columns is None
               else _table_entries(path, raw_lines, columns, found, wanted, lines or set()))
    for number, image_id, wnid, url in entries:
        yield ListedImage(number, image_id.decode(), wnid.decode(), url.decode("utf-8", "replace"))


def _chain(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest


def _is_url(url: bytes) -> bool:
    return url[:7].lower() == b"http://" or url[:8].lower() == b"https://"


Entries = Iterator[tuple[int, bytes, bytes, bytes]]  # (line, image_id, wnid, url) of the wanted lines


def _plain_entries(path: Path, lines: Iterator[bytes], found: UrlList, wanted: set[bytes] | None,
                   on_lines: set[int]) -> Entries:
    counts: Counter = Counter()
    number = 0
    try:
        for number, raw in enumerate(lines, start=1):  # noqa: B007 (number: counted below)
            if not found.counting and raw[:9] not in wanted and number not in on_lines:  # type: ignore[operator]
                continue
            image_id, tab, url = raw.partition(b"\t")
            url = url.strip()
            if tab and _IMAGE_ID_BYTES.fullmatch(image_id) and _is_url(url):
                wnid = image_id[:9]
                counts[wnid] += 1
                if wanted is None or wnid in wanted or number in on_lines:
                    yield number, image_id, wnid, url
            elif raw.strip():
                _note_malformed(path, found, number, not counts)
    finally:
        found.lines = number
        found.counts.update({wnid.decode(): n for wnid, n in counts.items()})
    _check_holds_urls(path, found)


def _check_holds_urls(path: Path, found: UrlList) -> None:
    """After a counting pass: a list with no well-formed line is not a URL list."""
    if found.counting and not found.counts:
        if found.malformed:
            raise _not_a_list(path, found)
        raise UserError(f"--urls {path} holds no image URLs; pass ImageNet's fall11_urls.txt, or a CSV/TSV with "
                        "image_id (or wnid) and url")


def _header_columns(header: bytes) -> tuple[str, dict[str, int]] | None:
    """(delimiter, column name -> position) when the first line is a CSV/TSV header with a ``url`` column."""
    text = header.decode("utf-8", "replace").strip().lstrip("\ufeff")
    delimiter = "\t" if "\t" in text else ","
    names = [name.strip().lower() for name in text.split(delimiter)]
    if "url" not in names or not ({"image_id", "wnid"} & set(names)):
        return None
    return delimiter, {name: i for i, name in enumerate(names)}


def _note_malformed(path: Path, found: UrlList, number: int, none_good_yet: bool) -> None:
    """Count a line that is neither blank nor an image (the first ``SNIFF_LINES`` such lines with
    no good one before them: not a URL list)."""
    found.malformed += 1
    if found.first_malformed is None:
        found.first_malformed = number
    if found.malformed == SNIFF_LINES and none_good_yet and found.counting:
        raise _not_a_list(path, found)


def _not_a_list(path: Path, found: UrlList) -> UserError:
    return UserError(f"--urls {path}: none of its first {found.malformed} lines is <wnid>_<n><TAB><url> or a "
                     "CSV/TSV row with image_id (or wnid) and url; pass ImageNet's fall11_urls.txt or such a table")


def _table_entries(path: Path, lines: Iterator[bytes], columns: tuple[str, dict[str, int]], found: UrlList,
                   wanted: set[bytes] | None, on_lines: set[int]) -> Entries:
    delimiter, position = columns
    url_at, id_at, wnid_at = position["url"], position.get("image_id"), position.get("wnid")
    found.lines = 1
    for number, raw in enumerate(lines, start=2):  # a row per physical line, so line numbers stay true
        found.lines = number
        try:
            row = next(csv.reader([raw.decode("utf-8", "replace")], delimiter=delimiter), [])
        except csv.Error:  # e.g. a quote left open: this line only is malformed
            row = [raw.decode("utf-8", "replace")]
        cells = [cell.strip() for cell in row]
        url = cells[url_at] if url_at < len(cells) else ""
        image_id = cells[id_at] if id_at is not None and id_at < len(cells) else ""
        wnid = cells[wnid_at] if wnid_at is not None and wnid_at < len(cells) else image_id[:9]
        if id_at is None and WNID_RE.fullmatch(wnid):
            image_id = f"{wnid}_{number}"
        encoded = image_id.encode("utf-8", "replace")
        if _IMAGE_ID_BYTES.fullmatch(encoded) and image_id[:9] == wnid and _is_url(url.encode("utf-8", "replace")):
            found.counts[wnid] += 1
            if wanted is None or wnid.encode() in wanted or number in on_lines:
                yield number, encoded, wnid.encode(), url.encode()
        elif any(cells):
            _note_malformed(path, found, number, not found.counts)
    _check_holds_urls(path, found)


def scan_url_list(path: str | Path) -> UrlList:
    """One pass over the list: images per WNID, lines, skipped lines."""
    found = UrlList(Path(path))
    for _ in read_url_list(path, found, wnids=set()):
        pass
    return found


@dataclass(frozen=True)
class Selection:
    """The candidates of one selection pass: per WNID of ``wnids``, its images in trying order;
    and the ``rest`` pool's, in trying order (at most the ``rest_candidates`` asked)."""

    by_wnid: dict[str, list[ListedImage]]
    rest: list[ListedImage]


def in_trying_order(images: list[ListedImage], seed: int) -> list[ListedImage]:
    """``images`` sorted by their keys (see the module docstring)."""
    keys = line_keys(np.array([image.line for image in images], dtype=np.uint64), seed)
    return [images[i] for i in np.argsort(keys, kind="stable")]


def _lowest_key_lines(lines: int, take: int, seed: int, block: int = 1 << 20) -> list[int]:
    """The ``take`` line numbers of ``1 .. lines`` with the smallest keys, found a block of lines at
    a time (memory: ``take + block`` keys, whatever the list's length)."""
    best_lines, best_keys = np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.uint64)
    for start in range(1, lines + 1, block):
        numbers = np.concatenate([best_lines, np.arange(start, min(start + block, lines + 1), dtype=np.uint64)])
        keys = np.concatenate([best_keys, line_keys(numbers[len(best_lines):], seed)])
        if len(keys) > take:
            kept = np.argpartition(keys, take - 1)[:take] if take else np.zeros(0, dtype=np.int64)
            numbers, keys = numbers[kept], keys[kept]
        best_lines, best_keys = numbers, keys
    return best_lines.astype(np.int64).tolist()


def select_from_url_list(scanned: UrlList, wnids: set[str], seed: int,
                         rest_from: set[str] | frozenset[str] = frozenset(), rest_candidates: int = 0) -> Selection:
    """Stream the list ``scanned`` describes once more, keeping the images of ``wnids``, and the
    ``rest_candidates`` images of the classes ``rest_from`` that come first in trying order."""
    by_wnid: dict[str, list[ListedImage]] = {wnid: [] for wnid in wnids}
    rest_from = set(rest_from) - set(wnids)
    rest_lines: set[int] = set()
    if rest_from and rest_candidates:
        # the lines with the smallest keys, enough of them that rest_candidates are of rest classes
        # whatever the other lines' keys: a set of line numbers, not the lines themselves
        others = scanned.lines - sum(scanned.counts[wnid] for wnid in rest_from)
        rest_lines = set(_lowest_key_lines(scanned.lines, min(scanned.lines, rest_candidates + others), seed))
    rest: list[ListedImage] = []
    seen: set[str] = set()  # an image id listed again (a table may repeat one) is the first one's
    for image in read_url_list(scanned.path, UrlList(scanned.path, counting=False), wnids, rest_lines):
        if image.image_id in seen:
            continue
        seen.add(image.image_id)
        if image.wnid in by_wnid:
            by_wnid[image.wnid].append(image)
        elif image.line in rest_lines and image.wnid in rest_from:
            rest.append(image)
    return Selection({wnid: in_trying_order(images, seed) for wnid, images in by_wnid.items()},
                     in_trying_order(rest, seed)[:rest_candidates])
