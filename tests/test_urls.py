"""packer.urllist (URL lists: formats, line numbers, malformed lines, trying order, the rest pool) and
packer.download (statuses, retries, what is kept and where, downloads.csv, images.csv, resume, the lock).

Downloads go to a misbehaving HTTP server on 127.0.0.1 started by the test (tests/urlserver.py), which
counts the requests of every path. Expectations are computed here: trying-order keys by a pure-Python
splitmix64, val choices by hashlib's BLAKE2b, file contents from the bytes the server was given.
"""
import csv
import gzip
import hashlib
import io
import os
import re
import socket
import tarfile
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image
from urlserver import Body, CutShort, FailFirst, Redirect, Reset, Stall, Status, UrlServer

from packer import UserError
from packer.download import (
    ATTEMPT_COLUMNS,
    IMAGE_COLUMNS,
    Attempt,
    DownloadOptions,
    LabelWork,
    check_image,
    download,
    folder_lock,
    read_attempts,
    read_sha256_list,
    split_kept,
    write_class_names,
)
from packer.urllist import (
    ListedImage,
    UrlList,
    line_key,
    line_keys,
    read_url_list,
    scan_url_list,
    select_from_url_list,
)

W1, W2, W3, W4, W5, W6 = "n01440764", "n01443537", "n01484850", "n01491361", "n01494475", "n01496331"
MASK = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


# --------------------------------------------------------------------------- helpers

def noise(seed: int, width: int, height: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def encoded(seed: int, width: int = 48, height: int = 40, format: str = "JPEG") -> bytes:
    out = io.BytesIO()
    noise(seed, width, height).save(out, format)
    return out.getvalue()


def jpeg(seed: int, width: int = 48, height: int = 40) -> bytes:
    return encoded(seed, width, height, "JPEG")


def png(seed: int, width: int = 40, height: int = 40) -> bytes:
    return encoded(seed, width, height, "PNG")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def mix64(x: int) -> int:
    """splitmix64's output function, on Python ints."""
    z = x & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def key(line: int, seed: int) -> int:
    return mix64(line + seed * GOLDEN)


def listed(line: int, wnid: str, url: str) -> ListedImage:
    return ListedImage(line, f"{wnid}_{line}", wnid, url)


def options(**changes) -> DownloadOptions:
    """Short timeouts and backoff: a whole download test takes about a second at most."""
    settings = {"connect_timeout": 2.0, "read_timeout": 0.5, "retries": 1, "backoff": 0.01, "per_host": 32,
                "progress": False}
    return DownloadOptions(**{**settings, **changes})


def attempt_rows(folder: Path) -> list[list[str]]:
    """downloads.csv rows in file order, without the ``seconds`` column (checked for its format here)."""
    with open(folder / "downloads.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == ATTEMPT_COLUMNS
    seconds = ATTEMPT_COLUMNS.index("seconds")
    for row in rows[1:]:
        assert re.fullmatch(r"\d+\.\d{3}", row[seconds]), row
    return [row[:seconds] + row[seconds + 1:] for row in rows[1:]]


def row(image: ListedImage, status: str, code: int | None = 200, body: bytes | None = None, tries: int = 1,
        size: int | None = None) -> list[str]:
    """An expected downloads.csv row (no ``seconds``): ``body`` the bytes received in full (size and
    SHA-256), or ``size`` alone."""
    size = len(body) if body is not None else size
    return [image.image_id, image.wnid, str(image.line), image.url, status, "" if code is None else str(code),
            "" if size is None else str(size), "" if body is None else sha(body), str(tries)]


def image_rows(folder: Path) -> list[list[str]]:
    with open(folder / "images.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == IMAGE_COLUMNS
    return rows[1:]


def kept_row(split: str, image: ListedImage, body: bytes, extension: str = ".jpg") -> list[str]:
    return [split, f"{split}/{image.wnid}/{image.image_id}{extension}", image.image_id, image.wnid,
            str(image.line), image.url, sha(body), str(len(body))]


def files_under(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (hidden folders too) by relative path, with its bytes; not the record files."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in ("downloads.csv", "images.csv", ".download.lock")}


@pytest.fixture
def server():
    with UrlServer() as running:
        yield running
    assert running.errors == []


# --------------------------------------------------------------------------- trying-order keys

def test_line_keys_are_splitmix64_of_line_plus_seed_times_golden():
    # splitmix64 seeded with 0 gives these first three outputs: mix(1 * GOLDEN), mix(2 * GOLDEN), mix(3 * GOLDEN)
    assert [line_key(0, seed) for seed in (1, 2, 3)] == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]
    lines = np.arange(1, 2001, dtype=np.uint64)
    for seed in (0, 7, 2**40 + 3):
        keys = line_keys(lines, seed)
        assert keys.dtype == np.uint64
        assert keys.tolist() == [key(line, seed) for line in range(1, 2001)]
    assert line_key(123456789, 5) == key(123456789, 5)


# --------------------------------------------------------------------------- list formats

PLAIN = (b"n01440764_10026\thttp://farm1.static.flickr.com/1/a.jpg\r\n"  # 1
         b"n01443537_2\thttps://h.example/b.jpg\n"                         # 2
         b"\n"                                                              # 3 blank: neither image nor malformed
         b"n01440764_7 http://h.example/space.jpg\n"                        # 4 malformed: a space, not a tab
         b"n0144076_1\thttp://h.example/c.jpg\n"                            # 5 malformed: short WNID
         b"n01440764_x\thttp://h.example/d.jpg\n"                           # 6 malformed: no number
         b"n01484850_3\tftp://h.example/e.jpg\n"                            # 7 malformed: not http(s)
         b"n01484850_4\tHTTP://H.example/f.jpg\n"                           # 8
         b"n01484850_5\thttp://h.example/\xff.jpg\n"                        # 9 not UTF-8: a replacement character
         b"n01440764_8\thttp://h.example/g.jpg")                            # 10 no line end

PLAIN_IMAGES = [
    ListedImage(1, "n01440764_10026", W1, "http://farm1.static.flickr.com/1/a.jpg"),
    ListedImage(2, "n01443537_2", W2, "https://h.example/b.jpg"),
    ListedImage(8, "n01484850_4", W3, "HTTP://H.example/f.jpg"),
    ListedImage(9, "n01484850_5", W3, "http://h.example/\ufffd.jpg"),
    ListedImage(10, "n01440764_8", W1, "http://h.example/g.jpg"),
]


def check_plain(path: Path):
    assert list(read_url_list(path)) == PLAIN_IMAGES
    found = scan_url_list(path)
    assert found.path == path
    assert found.counts == Counter({W1: 2, W2: 1, W3: 2})
    assert found.wnids == [W1, W2, W3]
    assert (found.lines, found.malformed, found.first_malformed) == (10, 4, 4)
    assert found.skipped_note() == [f"{path}: 4 lines without a <wnid>_<n> id and an http(s) URL were skipped "
                                    "(the first: line 4)"]


def test_plain_fall11_list(tmp_path):
    path = tmp_path / "fall11_urls.txt"
    path.write_bytes(PLAIN)
    check_plain(path)


def test_a_clean_list_has_no_skipped_note(tmp_path):
    path = tmp_path / "clean.txt"
    path.write_bytes(b"n01440764_1\thttp://h.example/1.jpg\nn01440764_2\thttp://h.example/2.jpg\n")
    found = scan_url_list(path)
    assert (found.lines, found.malformed, found.first_malformed, found.skipped_note()) == (2, 0, None, [])


def test_gzip_list(tmp_path):
    path = tmp_path / "fall11_urls.txt.gz"
    path.write_bytes(gzip.compress(PLAIN))
    check_plain(path)


@pytest.mark.parametrize("name", ["imagenet_fall11_urls.tgz", "urls.tar.gz"])
def test_tgz_holding_the_list_as_its_first_file(tmp_path, name):
    path = tmp_path / name
    with tarfile.open(path, "w:gz") as tar:
        folder = tarfile.TarInfo("fall11")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for member, data in (("fall11/fall11_urls.txt", PLAIN), ("fall11/more.txt", b"n01440764_9\thttp://h/9\n")):
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    check_plain(path)


def test_tgz_with_no_file(tmp_path):
    path = tmp_path / "urls.tgz"
    with tarfile.open(path, "w:gz") as tar:
        folder = tarfile.TarInfo("fall11")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
    with pytest.raises(UserError) as info:
        scan_url_list(path)
    assert str(info.value) == f"--urls {path} holds no file; pass the list itself or the .tgz it came in"


def test_csv_with_image_id_url_and_extra_columns(tmp_path):
    path = tmp_path / "urls.csv"
    path.write_bytes("\ufeffURL,Width,Image_ID\r\n"                     # 1 the header (a BOM, any case)
                     "http://h.example/1.jpg,500,n01440764_7\r\n"        # 2
                     '"http://h.example/a,b.jpg",10,n01443537_3\r\n'    # 3 a quoted URL with a comma
                     ",10,n01443537_4\r\n"                               # 4 malformed: no URL
                     "\r\n"                                              # 5 blank
                     "ftp://h.example/x.jpg,1,n01440764_9\r\n"           # 6 malformed: not http(s)
                     "http://h.example/6.jpg,1,n0144_1\r\n"              # 7 malformed: no <wnid>_<n>
                     "https://h.example/7.jpg,1,n01484850_12,more\r\n"   # 8 a cell more than the header
                     "http://h.example/8.jpg\r\n".encode())              # 9 malformed: no image_id cell
    assert list(read_url_list(path)) == [
        ListedImage(2, "n01440764_7", W1, "http://h.example/1.jpg"),
        ListedImage(3, "n01443537_3", W2, "http://h.example/a,b.jpg"),
        ListedImage(8, "n01484850_12", W3, "https://h.example/7.jpg"),
    ]
    found = scan_url_list(path)
    assert found.counts == Counter({W1: 1, W2: 1, W3: 1})
    assert (found.lines, found.malformed, found.first_malformed) == (9, 4, 4)
    assert found.skipped_note() == [f"{path}: 4 lines without a <wnid>_<n> id and an http(s) URL were skipped "
                                    "(the first: line 4)"]


def test_tsv_with_wnid_and_url_numbers_images_by_line(tmp_path):
    path = tmp_path / "urls.tsv"
    path.write_text("wnid\turl\tnote\n"                  # 1
                    f"{W1}\thttp://h.example/a.jpg\tfish\n"  # 2
                    f"{W2}\thttps://h.example/b.jpg\n"       # 3 no note
                    "N01440764\thttp://h.example/c.jpg\n"    # 4 malformed: not a WNID
                    f"{W1}\tnot a url\n"                      # 5 malformed
                    f"{W3}\thttp://h.example/d.jpg\t\n")     # 6
    assert list(read_url_list(path)) == [
        ListedImage(2, f"{W1}_2", W1, "http://h.example/a.jpg"),
        ListedImage(3, f"{W2}_3", W2, "https://h.example/b.jpg"),
        ListedImage(6, f"{W3}_6", W3, "http://h.example/d.jpg"),
    ]
    found = scan_url_list(path)
    assert (found.lines, found.malformed, found.first_malformed, found.wnids) == (6, 2, 4, [W1, W2, W3])


def test_csv_with_image_id_and_wnid_that_disagree(tmp_path):
    path = tmp_path / "both.csv"
    path.write_text(f"image_id,wnid,url\n{W1}_5,{W2},http://h.example/x.jpg\n{W1}_6,{W1},http://h.example/y.jpg\n")
    assert list(read_url_list(path)) == [ListedImage(3, f"{W1}_6", W1, "http://h.example/y.jpg")]
    found = scan_url_list(path)
    assert (found.lines, found.malformed, found.first_malformed) == (3, 1, 2)


def test_reading_some_wnids_and_some_lines(tmp_path):
    path = tmp_path / "fall11_urls.txt"
    path.write_bytes(PLAIN)
    assert list(read_url_list(path, wnids={W3}, lines={2})) == [PLAIN_IMAGES[1], PLAIN_IMAGES[2], PLAIN_IMAGES[3]]
    # a second pass (not counting) reads only what it is asked for, and must be told what that is
    second = UrlList(path, counting=False)
    assert list(read_url_list(path, second, wnids={W1})) == [PLAIN_IMAGES[0], PLAIN_IMAGES[4]]
    with pytest.raises(ValueError, match="a pass that does not count must say which WNIDs it wants"):
        list(read_url_list(path, UrlList(path, counting=False)))


# --------------------------------------------------------------------------- not a list, no list, damaged

def not_a_list(path: Path, lines: int) -> str:
    return (f"--urls {path}: none of its first {lines} lines is <wnid>_<n><TAB><url> or a CSV/TSV row with "
            "image_id (or wnid) and url; pass ImageNet's fall11_urls.txt or such a table")


def test_a_thousand_garbage_lines_are_not_a_list(tmp_path):
    path = tmp_path / "page.html"
    path.write_text("".join(f"<p>garbage {i}</p>\n" for i in range(1500)) + f"{W1}_1\thttp://h.example/1.jpg\n")
    found = UrlList(path)
    with pytest.raises(UserError) as info:
        list(read_url_list(path, found))
    assert str(info.value) == not_a_list(path, 1000)
    assert found.lines == 1000  # it stopped reading there
    with pytest.raises(UserError) as info:
        scan_url_list(path)
    assert str(info.value) == not_a_list(path, 1000)


def test_999_garbage_lines_then_an_image_are_a_list(tmp_path):
    path = tmp_path / "late.txt"
    path.write_text("garbage\n" * 999 + f"{W1}_1\thttp://h.example/1.jpg\n")
    found = scan_url_list(path)
    assert (found.lines, found.malformed, found.first_malformed, found.counts) == (1000, 999, 1, Counter({W1: 1}))
    assert list(read_url_list(path)) == [ListedImage(1000, f"{W1}_1", W1, "http://h.example/1.jpg")]


def test_a_short_file_of_garbage_is_not_a_list(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello\nworld\nn01440764_1 no url\n")
    with pytest.raises(UserError) as info:
        scan_url_list(path)
    assert str(info.value) == not_a_list(path, 3)
    table = tmp_path / "table.csv"
    table.write_text("image_id,url\nn01440764_1,ftp://h/1.jpg\nfoo,bar\n")
    with pytest.raises(UserError) as info:
        scan_url_list(table)
    assert str(info.value) == not_a_list(table, 2)


def test_a_table_of_a_thousand_garbage_rows_is_not_a_list(tmp_path):
    path = tmp_path / "table.csv"
    path.write_text("image_id,url\n" + "garbage,nothing\n" * 1000 + f"{W1}_1,http://h.example/1.jpg\n")
    with pytest.raises(UserError) as info:
        scan_url_list(path)
    assert str(info.value) == not_a_list(path, 1000)


def test_garbage_with_blank_lines_is_not_a_list(tmp_path):
    path = tmp_path / "page.html"
    path.write_text("<p>garbage</p>\n\n" * 1200)
    with pytest.raises(UserError) as info:
        scan_url_list(path)
    assert str(info.value) == not_a_list(path, 1000)


def test_missing_list(tmp_path):
    path = tmp_path / "nowhere.txt"
    with pytest.raises(UserError) as info:
        scan_url_list(path)
    assert str(info.value) == (f"--urls {path}: No such file or directory; pass a readable URL list "
                               "(fall11_urls.txt, or a CSV/TSV with image_id and url columns)")


def test_truncated_gzip_list(tmp_path):
    path = tmp_path / "fall11_urls.txt.gz"
    whole = gzip.compress(b"".join(b"%s_%d\thttp://h.example/%d.jpg\n" % (W1.encode(), i, i) for i in range(3000)))
    path.write_bytes(whole[:len(whole) // 2])
    with pytest.raises(UserError) as info:
        scan_url_list(path)
    assert str(info.value) == (f"--urls {path} is damaged (Compressed file ended before the end-of-stream marker "
                               "was reached); download it again")


def test_truncated_tgz_list(tmp_path):
    path = tmp_path / "imagenet_fall11_urls.tgz"
    data = b"".join(b"%s_%d\thttp://h.example/%d.jpg\n" % (W1.encode(), i, i) for i in range(3000))
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        info = tarfile.TarInfo("fall11_urls.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    path.write_bytes(out.getvalue()[:len(out.getvalue()) // 2])
    with pytest.raises(UserError) as info:
        scan_url_list(path)
    assert str(info.value) == f"--urls {path} is damaged (unexpected end of data); download it again"


def test_gzip_list_with_damaged_data(tmp_path):
    path = tmp_path / "fall11_urls.txt.gz"
    data = bytearray(gzip.compress(PLAIN))
    data[10] = 0x07  # the first deflate block's header (after gzip's 10 bytes): BFINAL 1, BTYPE 11 (reserved)
    path.write_bytes(bytes(data))
    with pytest.raises(UserError) as info:
        scan_url_list(path)
    assert str(info.value) == (f"--urls {path} is damaged (Error -3 while decompressing data: invalid block type); "
                               "download it again")


# --------------------------------------------------------------------------- selection

def write_random_list(path: Path, wnids: list[str], n: int, seed: int) -> list[ListedImage]:
    """A fall11-style list of ``n`` lines, mostly images of ``wnids``, with malformed and blank lines."""
    rng = np.random.default_rng(seed)
    lines, images = [], []
    for line in range(1, n + 1):
        kind = rng.integers(0, 20)
        if kind == 0:
            lines.append(f"junk line {line}")
        elif kind == 1:
            lines.append("")
        else:
            wnid = wnids[rng.integers(0, len(wnids))]
            image = listed(line, wnid, f"http://h{line % 3}.example/{line}.jpg")
            lines.append(f"{image.image_id}\t{image.url}")
            images.append(image)
    path.write_text("\n".join(lines) + "\n")
    return images


def in_key_order(images: list[ListedImage], seed: int) -> list[ListedImage]:
    return sorted(images, key=lambda image: key(image.line, seed))


def test_selection_keeps_the_chosen_classes_in_trying_order(tmp_path):
    path = tmp_path / "fall11_urls.txt"
    images = write_random_list(path, [W1, W2, W3, W4], 400, seed=1)
    scanned = scan_url_list(path)
    orders = {}
    for seed in (0, 5):
        chosen = select_from_url_list(scanned, {W1, W3, W6}, seed)
        assert set(chosen.by_wnid) == {W1, W3, W6}
        for wnid in (W1, W3):
            expected = in_key_order([image for image in images if image.wnid == wnid], seed)
            assert len(expected) > 50
            assert chosen.by_wnid[wnid] == expected
        assert chosen.by_wnid[W6] == []  # a class with no line in the list
        assert chosen.rest == []
        orders[seed] = chosen.by_wnid[W1]
    assert orders[0] != orders[5]
    assert sorted(orders[0], key=lambda i: i.line) == sorted(orders[5], key=lambda i: i.line)


def test_the_order_of_a_class_does_not_depend_on_other_lines(tmp_path):
    first, second = tmp_path / "first.txt", tmp_path / "second.txt"
    images = write_random_list(first, [W1, W2, W3], 300, seed=2)
    # the same W1 lines on the same line numbers; every other line changed, and more lines after them
    text = first.read_text().split("\n")[:-1]
    changed = [line if line.startswith(W1) else (f"{W4}_{i}\thttp://other.example/{i}.jpg" if i % 3 else "zzz")
               for i, line in enumerate(text, start=1)]
    changed += [f"{W5}_{i}\thttp://other.example/{i}.png" for i in range(301, 500)]
    second.write_text("\n".join(changed) + "\n")
    seed = 11
    one = select_from_url_list(scan_url_list(first), {W1}, seed).by_wnid[W1]
    two = select_from_url_list(scan_url_list(second), {W1}, seed).by_wnid[W1]
    assert one == two == in_key_order([image for image in images if image.wnid == W1], seed)


@pytest.mark.parametrize("seed", [0, 3, 12345])
def test_rest_candidates_are_the_smallest_keys_of_the_rest_classes(tmp_path, seed):
    path = tmp_path / "fall11_urls.txt"
    images = write_random_list(path, [W1, W2, W3, W4, W5], 500, seed=seed + 100)
    scanned = scan_url_list(path)
    rest_from = {W2, W4, W5}
    pool = [image for image in images if image.wnid in rest_from]
    pool_keys = np.array([key(image.line, seed) for image in pool], dtype=np.uint64)
    for wanted in (1, 7, 40, len(pool), len(pool) + 10):
        chosen = select_from_url_list(scanned, {W1, W3}, seed, rest_from=rest_from, rest_candidates=wanted)
        expected = [pool[i] for i in np.argsort(pool_keys)[:wanted]]
        assert chosen.rest == expected
        assert len(chosen.rest) == min(wanted, len(pool))
        assert chosen.by_wnid[W1] == in_key_order([image for image in images if image.wnid == W1], seed)
    # a chosen class named in rest_from too: its images stay with the class, none goes to the rest
    chosen = select_from_url_list(scanned, {W1, W3}, seed, rest_from={W1, W2}, rest_candidates=30)
    assert chosen.rest and {image.wnid for image in chosen.rest} == {W2}
    assert chosen.by_wnid[W1] == in_key_order([image for image in images if image.wnid == W1], seed)


def test_no_rest_without_rest_candidates(tmp_path):
    path = tmp_path / "fall11_urls.txt"
    write_random_list(path, [W1, W2], 50, seed=4)
    assert select_from_url_list(scan_url_list(path), {W1}, 0, rest_from={W2}, rest_candidates=0).rest == []


# --------------------------------------------------------------------------- check_image, --reject_sha256

def test_check_image(tmp_path):
    cases = {
        "photo.jpg": (jpeg(1), ("ok", ".jpg")),
        "photo.png": (png(2), ("ok", ".png")),
        "named_wrong.jpg": (png(3), ("ok", ".png")),  # by its bytes, not its name
        "exactly_min.jpg": (jpeg(4, 32, 90), ("ok", ".jpg")),
        "anim.gif": (encoded(5, 40, 40, "GIF"), ("not_an_image", "")),
        "cut.jpg": (jpeg(6, 64, 64)[:700], ("not_an_image", "")),
        "no_end.jpg": (jpeg(6, 64, 64)[:-2], ("not_an_image", "")),  # all but the end-of-image marker
        "cut.png": (png(7, 64, 64)[:2000], ("not_an_image", "")),
        "text.jpg": (b"this is no image\n" * 20, ("not_an_image", "")),
        "empty.jpg": (b"", ("not_an_image", "")),
        "tiny.png": (png(8, 10, 10), ("too_small", "")),
        "thin.jpg": (jpeg(9, 100, 31), ("too_small", "")),  # the short side counts
    }
    for name, (data, _) in cases.items():
        (tmp_path / name).write_bytes(data)
    assert {name: check_image(tmp_path / name, 32) for name in cases} == {name: want for name, (_, want) in
                                                                         cases.items()}
    assert check_image(tmp_path / "tiny.png", 10) == ("ok", ".png")


def test_read_sha256_list(tmp_path):
    a, b, c = sha(b"a"), sha(b"b"), sha(b"c")
    path = tmp_path / "reject.txt"
    path.write_text(f"# placeholders\n\n{a}  flickr_unavailable.png\n   {b.upper()}\n#{c}\n{a}\n")
    assert read_sha256_list(path) == frozenset({a, b})
    path.write_text("")
    assert read_sha256_list(path) == frozenset()


@pytest.mark.parametrize("line, shown", [("abc123", "'abc123'"), (sha(b"x")[:63] + "g", repr(sha(b"x")[:63] + "g")),
                                         (sha(b"x") + "0", repr(sha(b"x") + "0"))])
def test_read_sha256_list_bad_line(tmp_path, line, shown):
    path = tmp_path / "reject.txt"
    path.write_text(f"# mine\n{sha(b'ok')}\n{line} some note\n")
    with pytest.raises(UserError) as info:
        read_sha256_list(path)
    assert str(info.value) == (f"--reject_sha256 {path}, line 3: {shown} is not a hex SHA-256; "
                               "write one 64-digit digest per line")


def test_read_sha256_list_missing(tmp_path):
    path = tmp_path / "nowhere.txt"
    with pytest.raises(UserError) as info:
        read_sha256_list(path)
    assert str(info.value) == (f"--reject_sha256 {path}: No such file or directory; pass a file of SHA-256 "
                               "digests, one per line")


# --------------------------------------------------------------------------- download: statuses

def test_every_kind_of_answer_ends_with_its_status(server, tmp_path):
    ok_jpg, ok_png, later_ok, redirected, twin = jpeg(1), png(2), jpeg(3), png(4), jpeg(5)
    html, text, tiny, big, placeholder = (b"<html><body>gone</body></html>", b"not a photo\n" * 30, png(6, 10, 10),
                                          jpeg(7, 200, 200), png(8))
    cut, far = jpeg(9), png(12)
    assert len(big) > 6000 and len(cut) > 1000
    routes = [  # (path, behaviour, status, http_code, body received, tries, requests)
        ("/ok.jpg", Body(ok_jpg), "ok", 200, ok_jpg, 1, 1),
        ("/ok.png", Body(ok_png, "image/png"), "ok", 200, ok_png, 1, 1),
        ("/404.jpg", Status(404), "http_404", 404, None, 1, 1),
        ("/410.jpg", Status(410), "http_410", 410, None, 1, 1),
        ("/500-then-ok.jpg", FailFirst(1, Status(500), Body(later_ok)), "ok", 200, later_ok, 2, 2),
        ("/500.jpg", Status(500), "http_500", 500, None, 2, 2),
        ("/stall.jpg", Stall(5), "timeout", None, None, 2, 2),
        ("/stall-in-body.jpg", Stall(5, jpeg(10)[:200]), "timeout", 200, None, 2, 2),
        ("/cut.jpg", CutShort(cut[:600], len(cut)), "truncated", 200, None, 2, 2),
        ("/page.html", Body(html, "text/html"), "not_an_image", 200, html, 1, 1),
        ("/gone.jpg", Redirect("/photo_unavailable.png"), "placeholder", 302, None, 1, 1),
        ("/moved.jpg", Redirect("/new/place.png"), "ok", 200, redirected, 1, 1),
        ("/big.jpg", Body(big), "too_large", 200, None, 1, 1),
        ("/twin-a.jpg", Body(twin), "ok", 200, twin, 1, 1),
        ("/twin-b.jpg", Body(twin, delay=0.3), "duplicate", 200, twin, 1, 1),  # the later-ranked twin
        ("/text.jpg", Body(text), "not_an_image", 200, text, 1, 1),
        ("/reset.jpg", Reset(), "reset", None, None, 2, 2),
        ("/tiny.png", Body(tiny, "image/png"), "too_small", 200, tiny, 1, 1),
        ("/loop.jpg", Redirect("/loop.jpg"), "too_many_redirects", 302, None, 1, 6),
        ("/flickr-placeholder.png", Body(placeholder, "image/png"), "placeholder", 200, placeholder, 1, 1),
        ("/moved-to-nothing.jpg", Redirect("/nothing.jpg"), "http_404", 404, None, 1, 1),
        ("/moved-far.jpg", Redirect(server.url("/far/away.png")), "ok", 200, far, 1, 1),
    ]
    server.route("/photo_unavailable.png", Body(png(11), "image/png"))
    server.route("/new/place.png", Body(redirected, "image/png"))
    server.route("/far/away.png", Body(far, "image/png"))
    candidates = [listed(line, W1, server.route(path, behaviour))
                  for line, (path, behaviour, *_) in enumerate(routes, start=1)]
    unfetchable = [listed(31, W1, "http:///no-host.jpg"), listed(32, W1, server.url("/photo_unavailable.png?id=1"))]
    # the body over the cap without a Content-Length: its size is known once the cap is passed
    unannounced = listed(34, W2, server.route("/big-unannounced.jpg", Body(big, length=False)))
    labels = [LabelWork("fish", candidates + unfetchable, need=30), LabelWork("dog", [unannounced], need=1)]
    result = download(labels, tmp_path / "dl", options(max_bytes=6000, reject_sha256=frozenset({sha(placeholder)})))
    folder = tmp_path / "dl"

    expected = [row(image, status, code, body, tries)
                for image, (_, _, status, code, body, tries, _) in zip(candidates, routes, strict=True)]
    expected += [row(unfetchable[0], "bad_url", None), row(unfetchable[1], "placeholder", None),
                 row(unannounced, "too_large", 200, size=len(big))]
    assert sorted(attempt_rows(folder), key=lambda r: int(r[2])) == expected
    requests = {path: count for path, _, *_, count in routes}
    assert server.counts() == {**requests, "/new/place.png": 1, "/far/away.png": 1, "/nothing.jpg": 1,
                               "/big-unannounced.jpg": 1}
    assert server.count("/photo_unavailable.png") == 0

    kept = [(image, body, ".png" if body.startswith(b"\x89PNG") else ".jpg")  # named by the bytes, not the URL
            for image, (_, _, status, _, body, *_) in zip(candidates, routes, strict=True) if status == "ok"]
    assert [extension for *_, extension in kept] == [".jpg", ".png", ".jpg", ".png", ".jpg", ".png"]
    assert [image.line for image, *_ in kept] == [1, 2, 5, 12, 14, 22]
    assert files_under(folder) == {f"train/{W1}/{image.image_id}{extension}": body for image, body, extension in kept}
    assert image_rows(folder) == [kept_row("train", image, body, extension) for image, body, extension in kept]
    assert not (folder / ".partial").exists()
    assert sorted(p.name for p in folder.iterdir()) == [".download.lock", "downloads.csv", "images.csv", "train",
                                                        "val"]
    assert list((folder / "val").iterdir()) == []

    assert result.statuses == Counter({"ok": 6, "not_an_image": 2, "placeholder": 3, "timeout": 2, "too_large": 2,
                                       "http_404": 2, "http_410": 1, "http_500": 1, "truncated": 1, "duplicate": 1,
                                       "reset": 1, "too_small": 1, "too_many_redirects": 1, "bad_url": 1})
    assert result.short == ["fish", "dog"] and result.reused == 0
    assert [sorted(label.kept) for label in result.labels] == [[0, 1, 4, 11, 13, 21], []]
    assert result.rows == [{"split": "train", "path": f"train/{W1}/{image.image_id}{extension}",
                            "image_id": image.image_id, "wnid": W1, "line": image.line, "url": image.url,
                            "sha256": sha(body), "bytes": len(body)} for image, body, extension in kept]


def test_a_refused_connection_is_a_reset(tmp_path):
    with socket.socket() as free:  # a port nothing listens on: the connection is refused
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    image = listed(1, W1, f"http://127.0.0.1:{port}/refused.jpg")
    result = download([LabelWork("fish", [image], need=1)], tmp_path / "dl", options())
    assert attempt_rows(tmp_path / "dl") == [row(image, "reset", None, tries=2)]  # tried again: transient
    assert result.statuses == Counter({"reset": 1})


# --------------------------------------------------------------------------- download: retries

def test_retries(server, tmp_path):
    later = [jpeg(i) for i in range(4)]
    images = [
        listed(1, W1, server.route("/500-then-ok.jpg", FailFirst(1, Status(500), Body(later[0])))),
        listed(2, W1, server.route("/503-thrice.jpg", FailFirst(3, Status(503), Body(later[1])))),
        listed(3, W1, server.route("/429.jpg", FailFirst(1, Status(429, {"Retry-After": "1"}), Body(later[2])))),
        listed(4, W1, server.route("/408.jpg", FailFirst(1, Status(408), Body(later[3])))),
        listed(5, W1, server.route("/404.jpg", Status(404))),
        listed(6, W1, server.route("/410.jpg", Status(410))),
        listed(7, W1, server.route("/403.jpg", Status(403))),
        listed(8, W1, server.route("/502.jpg", Status(502))),
    ]
    started = time.monotonic()
    result = download([LabelWork("fish", images, need=8)], tmp_path / "dl", options(retries=3))
    elapsed = time.monotonic() - started
    assert elapsed >= 1.0  # the Retry-After
    assert sorted(attempt_rows(tmp_path / "dl"), key=lambda r: int(r[2])) == [
        row(images[0], "ok", 200, later[0], tries=2),
        row(images[1], "ok", 200, later[1], tries=4),
        row(images[2], "ok", 200, later[2], tries=2),
        row(images[3], "ok", 200, later[3], tries=2),
        row(images[4], "http_404", 404),
        row(images[5], "http_410", 410),
        row(images[6], "http_403", 403),
        row(images[7], "http_502", 502, tries=4),
    ]
    assert server.counts() == {"/500-then-ok.jpg": 2, "/503-thrice.jpg": 4, "/429.jpg": 2, "/408.jpg": 2,
                               "/404.jpg": 1, "/410.jpg": 1, "/403.jpg": 1, "/502.jpg": 4}
    with open(tmp_path / "dl" / "downloads.csv", newline="") as f:
        seconds = {r["image_id"]: float(r["seconds"]) for r in csv.DictReader(f)}
    assert seconds[images[2].image_id] >= 1.0  # waited as asked
    assert seconds[images[0].image_id] < 0.5 and seconds[images[4].image_id] < 0.5  # backoff 0.01, no wait
    assert result.statuses == Counter({"ok": 4, "http_404": 1, "http_410": 1, "http_403": 1, "http_502": 1})


# --------------------------------------------------------------------------- download: what is kept

def test_the_first_working_candidates_are_kept_whatever_the_timing(server, tmp_path):
    bodies = [jpeg(20 + i) for i in range(8)]
    behaviours = [
        Body(bodies[0], delay=0.4),   # rank 0: works, slowly
        Status(404),                  # rank 1: fails at once
        Body(bodies[2]),              # rank 2
        Status(500, delay=0.2),       # rank 3: fails slowly (no retry)
        Body(bodies[4]),              # rank 4
        Body(bodies[5]),              # rank 5: not needed
        Body(bodies[6]),              # rank 6: not needed
    ]
    # trying order is the candidates' order, whatever their lines
    images = [listed(line, W1, server.route(f"/{rank}.jpg", behaviour))
              for rank, (line, behaviour) in enumerate(zip([70, 3, 55, 9, 41, 2, 1], behaviours, strict=True))]
    result = download([LabelWork("fish", images, need=3)], tmp_path / "dl", options(retries=0))
    assert sorted(result.labels[0].kept) == [0, 2, 4]
    assert server.counts() == {"/0.jpg": 1, "/1.jpg": 1, "/2.jpg": 1, "/3.jpg": 1, "/4.jpg": 1}
    kept = [(images[rank], bodies[rank]) for rank in (0, 2, 4)]
    assert files_under(tmp_path / "dl") == {f"train/{W1}/{image.image_id}.jpg": body for image, body in kept}
    assert image_rows(tmp_path / "dl") == [kept_row("train", image, body)
                                           for image, body in sorted(kept, key=lambda kb: kb[0].line)]
    assert result.short == []


def test_the_earlier_ranked_twin_is_kept_even_when_the_later_arrives_first(server, tmp_path):
    twin, other, own = jpeg(30), jpeg(31), jpeg(32)
    images = [listed(1, W1, server.route("/a.jpg", Body(twin, delay=0.4))),
              listed(2, W1, server.route("/b.jpg", Body(twin))),
              listed(3, W1, server.route("/c.jpg", Body(other)))]
    # the same bytes in another label are no duplicate there
    dogs = [listed(4, W2, server.route("/d.jpg", Body(twin))), listed(5, W2, server.route("/e.jpg", Body(own)))]
    result = download([LabelWork("fish", images, need=2), LabelWork("dog", dogs, need=2)], tmp_path / "dl",
                      options())
    rows = attempt_rows(tmp_path / "dl")
    fish = [r for r in rows if r[1] == W1]
    # b arrived first and was kept, then displaced by a (recorded again, as a duplicate); c took its place
    assert fish == [row(images[1], "ok", 200, twin), row(images[0], "ok", 200, twin),
                    row(images[1], "duplicate", 200, twin), row(images[2], "ok", 200, other)]
    assert sorted(r for r in rows if r[1] == W2) == sorted([row(dogs[0], "ok", 200, twin),
                                                          row(dogs[1], "ok", 200, own)])
    assert read_attempts(tmp_path / "dl")[images[1].image_id].status == "duplicate"
    assert files_under(tmp_path / "dl") == {f"train/{W1}/{W1}_1.jpg": twin, f"train/{W1}/{W1}_3.jpg": other,
                                            f"train/{W2}/{W2}_4.jpg": twin, f"train/{W2}/{W2}_5.jpg": own}
    assert image_rows(tmp_path / "dl") == [kept_row("train", images[0], twin), kept_row("train", images[2], other),
                                           kept_row("train", dogs[0], twin), kept_row("train", dogs[1], own)]
    assert result.statuses == Counter({"ok": 4, "duplicate": 1})
    assert server.counts() == {"/a.jpg": 1, "/b.jpg": 1, "/c.jpg": 1, "/d.jpg": 1, "/e.jpg": 1}
    assert [line for line in result.summary_lines() if line.startswith("note:")] == [
        f"note: the same file ({sha(twin)}) was kept for 2 URLs of different labels; if it is a placeholder, add "
        "that SHA-256 to a --reject_sha256 file and run again"]


def test_a_later_twin_arriving_later_is_a_duplicate(server, tmp_path):
    twin = jpeg(33)
    images = [listed(1, W1, server.route("/a.jpg", Body(twin))),
              listed(2, W1, server.route("/b.jpg", Body(twin, delay=0.3)))]
    result = download([LabelWork("fish", images, need=2)], tmp_path / "dl", options())
    assert attempt_rows(tmp_path / "dl") == [row(images[0], "ok", 200, twin), row(images[1], "duplicate", 200, twin)]
    assert result.short == ["fish"] and sorted(result.labels[0].kept) == [0]
    assert files_under(tmp_path / "dl") == {f"train/{W1}/{W1}_1.jpg": twin}


# --------------------------------------------------------------------------- download: val

def val_ranks(label: LabelWork, seed: int, count: int) -> set[int]:
    def blake(rank: int) -> bytes:
        return hashlib.blake2b(f"{seed}/val/{label.kept[rank].image_id}".encode(), digest_size=8).digest()

    return set(sorted(label.kept, key=blake)[:count])


def test_val_images_are_chosen_by_blake2b_and_scaled_for_a_short_label(server, tmp_path):
    fish_bodies = [jpeg(40 + i) for i in range(7)]
    fish = [listed(10 + i, W1, server.route(f"/fish{i}.jpg", Body(body))) for i, body in enumerate(fish_bodies)]
    dog_bodies = [png(60 + i) for i in range(3)]
    dogs = [listed(30 - i, W2, server.route(f"/dog{i}.png", Body(body, "image/png")))
            for i, body in enumerate(dog_bodies)]
    dogs.append(listed(40, W2, server.route("/dog-gone.png", Status(404))))
    seed = 9
    labels = [LabelWork("fish", fish, need=6, val=2), LabelWork("dog", dogs, need=5, val=3)]
    result = download(labels, tmp_path / "dl", options(), seed=seed)
    fish_label, dog_label = result.labels
    assert sorted(fish_label.kept) == [0, 1, 2, 3, 4, 5] and sorted(dog_label.kept) == [0, 1, 2]
    fish_val = val_ranks(fish_label, seed, 2)
    dog_val = val_ranks(dog_label, seed, 2)  # 3 of 5 wanted, 3 got: round(3 * 3 / 5) = round(1.8) = 2
    assert split_kept(fish_label, seed) == fish_val and split_kept(dog_label, seed) == dog_val
    assert split_kept(fish_label, seed + 1) == val_ranks(fish_label, seed + 1, 2)

    split = {**{(W1, rank): "val" if rank in fish_val else "train" for rank in range(6)},
             **{(W2, rank): "val" if rank in dog_val else "train" for rank in range(3)}}
    kept = ([(fish[rank], fish_bodies[rank], ".jpg", split[W1, rank]) for rank in range(6)]
            + [(dogs[rank], dog_bodies[rank], ".png", split[W2, rank]) for rank in range(3)])
    assert files_under(tmp_path / "dl") == {f"{where}/{image.wnid}/{image.image_id}{extension}": body
                                            for image, body, extension, where in kept}
    in_order = sorted(kept, key=lambda k: (k[3] != "train", k[0].line))
    assert image_rows(tmp_path / "dl") == [kept_row(where, image, body, extension)
                                           for image, body, extension, where in in_order]
    assert [r[0] for r in image_rows(tmp_path / "dl")] == ["train"] * 5 + ["val"] * 4
    assert result.short == ["dog"]
    assert server.count("/fish6.jpg") == 0


def test_split_kept_scales_val_to_what_the_label_got():
    for need, val, got, count in [(10, 4, 10, 4), (10, 4, 12, 4), (5, 3, 2, 1), (5, 3, 3, 2), (4, 3, 1, 1),
                                  (6, 0, 6, 0), (5, 5, 4, 4), (3, 1, 0, 0), (0, 0, 0, 0)]:
        label = LabelWork("x", [], need=need, val=val)
        label.kept = {rank: Attempt(f"{W1}_{rank}", W1, rank, "http://h/", "ok") for rank in range(0, 3 * got, 3)}
        chosen = split_kept(label, 7)
        assert len(chosen) == count, (need, val, got)
        assert chosen == val_ranks(label, 7, count)


# --------------------------------------------------------------------------- download: resume

def test_a_second_run_fetches_only_what_did_not_end(server, tmp_path):
    a, b, twin_of_a, tiny = jpeg(50), jpeg(51), jpeg(50), png(52, 8, 8)
    images = [listed(1, W1, server.route("/a.jpg", Body(a))),
              listed(2, W1, server.route("/404.jpg", Status(404))),
              listed(3, W1, server.route("/a-again.jpg", Body(twin_of_a, delay=0.2))),
              listed(4, W1, server.route("/500.jpg", Status(500))),
              listed(5, W1, server.route("/b.jpg", Body(b))),
              listed(6, W1, server.route("/410.jpg", Status(410))),
              listed(7, W1, server.route("/tiny.png", Body(tiny, "image/png"))),
              listed(8, W1, server.route("/reset.jpg", Reset()))]
    folder = tmp_path / "dl"
    first = download([LabelWork("fish", images, need=6, val=1)], folder, options(), seed=3)
    first_rows, first_images = attempt_rows(folder), image_rows(folder)
    first_files = files_under(folder)
    assert server.counts() == {"/a.jpg": 1, "/404.jpg": 1, "/a-again.jpg": 1, "/500.jpg": 2, "/b.jpg": 1,
                               "/410.jpg": 1, "/tiny.png": 1, "/reset.jpg": 2}
    assert first.statuses == Counter({"ok": 2, "http_404": 1, "duplicate": 1, "http_500": 1, "http_410": 1,
                                      "too_small": 1, "reset": 1})
    assert len(first_images) == 2

    server.reset_counts()
    second = download([LabelWork("fish", images, need=6, val=1)], folder, options(), seed=3)
    # kept images, final failures and a duplicate whose twin is still kept are not asked for again;
    # the 500 and the reset are
    assert server.counts() == {"/500.jpg": 2, "/reset.jpg": 2}
    assert second.reused == 2
    assert second.statuses == Counter({"http_500": 1, "reset": 1})
    rows = attempt_rows(folder)
    assert rows[:len(first_rows)] == first_rows
    assert sorted(rows[len(first_rows):], key=lambda r: int(r[2])) == [
        row(images[3], "http_500", 500, tries=2), row(images[7], "reset", None, tries=2)]
    assert image_rows(folder) == first_images
    assert files_under(folder) == first_files
    assert second.rows == first.rows
    summary = second.summary_lines()
    assert len(summary) == 2
    assert re.fullmatch(r"downloaded: 2 images kept for 1 labels \(2 from an earlier run\); this run: "
                        r"http_500 1, reset 1; \d+\.\d MB in \d+\.\d s", summary[0]), summary[0]
    assert summary[1] == "1 labels ran out of URLs to try and kept what they got: fish"


def test_a_second_run_with_another_seed_moves_images_between_splits_without_fetching(server, tmp_path):
    bodies = [jpeg(130 + i) for i in range(8)]
    images = [listed(i + 1, W1, server.route(f"/{i}.jpg", Body(body))) for i, body in enumerate(bodies)]
    folder = tmp_path / "dl"
    splits = {}
    for seed in (1, 2):
        result = download([LabelWork("fish", images, need=8, val=3)], folder, options(), seed=seed)
        val = val_ranks(result.labels[0], seed, 3)
        splits[seed] = val
        assert files_under(folder) == {f"{'val' if rank in val else 'train'}/{W1}/{image.image_id}.jpg": body
                                       for rank, (image, body) in enumerate(zip(images, bodies, strict=True))}
        assert image_rows(folder) == (
            [kept_row("train", images[rank], bodies[rank]) for rank in range(8) if rank not in val]
            + [kept_row("val", images[rank], bodies[rank]) for rank in range(8) if rank in val])
    assert splits[1] != splits[2]
    assert result.reused == 8 and result.statuses == Counter()
    assert server.counts() == {f"/{i}.jpg": 1 for i in range(8)}


def test_an_earlier_image_rejected_since_is_dropped_and_replaced(server, tmp_path):
    bodies = [jpeg(140 + i) for i in range(3)]
    images = [listed(i + 1, W1, server.route(f"/{i}.jpg", Body(body))) for i, body in enumerate(bodies)]
    folder = tmp_path / "dl"
    download([LabelWork("fish", images, need=2, val=1)], folder, options(), seed=0)
    assert server.counts() == {"/0.jpg": 1, "/1.jpg": 1}
    first_rows = attempt_rows(folder)
    server.reset_counts()
    rejecting = options(reject_sha256=frozenset({sha(bodies[0])}))
    result = download([LabelWork("fish", images, need=2, val=1)], folder, rejecting, seed=0)
    assert server.counts() == {"/2.jpg": 1}  # the rejected one is not fetched again, the next candidate is
    rows = attempt_rows(folder)
    assert rows[:2] == first_rows
    assert rows[2:] == [row(images[0], "placeholder", 200, bodies[0]), row(images[2], "ok", 200, bodies[2])]
    val = val_ranks(result.labels[0], 0, 1)
    assert sorted(result.labels[0].kept) == [1, 2]
    assert files_under(folder) == {f"{'val' if rank in val else 'train'}/{W1}/{images[rank].image_id}.jpg":
                                   bodies[rank] for rank in (1, 2)}
    assert image_rows(folder) == (
        [kept_row("train", images[rank], bodies[rank]) for rank in (1, 2) if rank not in val]
        + [kept_row("val", images[rank], bodies[rank]) for rank in (1, 2) if rank in val])
    server.reset_counts()
    download([LabelWork("fish", images, need=2, val=1)], folder, rejecting, seed=0)
    assert server.counts() == {} and len(attempt_rows(folder)) == 4


def test_a_half_written_line_of_downloads_csv_is_tolerated(server, tmp_path):
    bodies = {"/a.jpg": jpeg(70), "/b.jpg": jpeg(71), "/c.jpg": jpeg(72)}
    images = [listed(line, W1, server.route(path, Body(body))) for line, (path, body) in
              enumerate(bodies.items(), start=1)]
    images.append(listed(4, W1, server.route("/404.jpg", Status(404))))
    folder = tmp_path / "dl"
    download([LabelWork("fish", images, need=4)], folder, options())
    first_images = image_rows(folder)
    record = folder / "downloads.csv"
    text = record.read_text()
    last = text.rstrip("\n").split("\n")[-1]
    lost = next(image for image in images if last.startswith(image.image_id + ","))
    cut = text[:len(text) - len(last) // 2 - 1]  # a run killed halfway through writing its last line
    record.write_text(cut)
    assert lost.image_id not in read_attempts(folder) and len(read_attempts(folder)) == 3

    server.reset_counts()
    download([LabelWork("fish", images, need=4)], folder, options())
    assert server.counts() == {urlsplit(lost.url).path: 1}  # only the one whose record was cut
    text = record.read_text()
    assert text.startswith(cut + "\n")  # the cut line ended, then the new row
    new = list(csv.reader(io.StringIO(text[len(cut) + 1:])))
    assert len(new) == 1
    assert new[0][:5] == [lost.image_id, W1, str(lost.line), lost.url, "http_404" if lost is images[3] else "ok"]
    assert len(read_attempts(folder)) == 4
    assert image_rows(folder) == first_images

    server.reset_counts()
    download([LabelWork("fish", images, need=4)], folder, options())
    assert server.counts() == {}


def test_a_line_cut_inside_a_quoted_url_hides_no_later_row(server, tmp_path):
    a, comma = jpeg(80), jpeg(81)
    images = [listed(1, W1, server.route("/a.jpg", Body(a))), listed(2, W1, server.route("/b,c.jpg", Body(comma)))]
    folder = tmp_path / "dl"
    download([LabelWork("fish", images[:1], need=1)], folder, options())
    download([LabelWork("fish", images, need=2)], folder, options())
    record = folder / "downloads.csv"
    text = record.read_text()
    assert '"' + images[1].url + '"' in text
    record.write_text(text[:text.index("/b,c.jpg") + 3])  # killed in the middle of the quoted URL
    download([LabelWork("fish", images, need=2)], folder, options())  # fetches b,c again: its record was cut
    server.reset_counts()
    download([LabelWork("fish", images, need=2)], folder, options())
    assert server.counts() == {}


def test_a_stale_partial_body_is_removed_and_never_kept(server, tmp_path):
    fresh, stale = jpeg(90), jpeg(91)
    images = [listed(1, W1, server.route("/a.jpg", Body(fresh))), listed(2, W1, server.route("/404.jpg", Status(404)))]
    folder = tmp_path / "dl"
    # what a killed run leaves: a record with its header only, bodies half received
    (folder / ".partial").mkdir(parents=True)
    (folder / "downloads.csv").write_text(",".join(ATTEMPT_COLUMNS) + "\n")
    for image in images:
        (folder / ".partial" / f"{image.image_id}.140000000000.part").write_bytes(stale)
    result = download([LabelWork("fish", images, need=2)], folder, options())
    assert server.counts() == {"/a.jpg": 1, "/404.jpg": 1}
    assert files_under(folder) == {f"train/{W1}/{W1}_1.jpg": fresh}
    assert not (folder / ".partial").exists()
    assert attempt_rows(folder) == [row(images[0], "ok", 200, fresh), row(images[1], "http_404", 404)] or \
        attempt_rows(folder) == [row(images[1], "http_404", 404), row(images[0], "ok", 200, fresh)]
    assert image_rows(folder) == [kept_row("train", images[0], fresh)]
    assert result.short == ["fish"]


def test_a_kept_image_deleted_or_damaged_by_hand_is_fetched_again(server, tmp_path):
    bodies = [jpeg(100 + i) for i in range(4)]
    images = [listed(i + 1, W1, server.route(f"/{i}.jpg", Body(body))) for i, body in enumerate(bodies)]
    folder = tmp_path / "dl"
    download([LabelWork("fish", images, need=4, val=1)], folder, options(), seed=1)
    first_files, first_images = files_under(folder), image_rows(folder)
    paths = {image.image_id: folder / p for image in images for p in first_files if image.image_id in p}
    paths[images[1].image_id].unlink()
    paths[images[2].image_id].write_bytes(bodies[2][:-10])  # cut short: not the size recorded
    server.reset_counts()
    result = download([LabelWork("fish", images, need=4, val=1)], folder, options(), seed=1)
    assert server.counts() == {"/1.jpg": 1, "/2.jpg": 1}
    assert result.reused == 2
    assert files_under(folder) == first_files
    assert image_rows(folder) == first_images


def test_split_of_places_the_kept_images(server, tmp_path):
    bodies = [jpeg(120 + i) for i in range(3)]
    images = [listed(5 - i, W1, server.route(f"/{i}.jpg", Body(body))) for i, body in enumerate(bodies)]
    split_of = {images[0].image_id: "val", images[1].image_id: "train", images[2].image_id: "val"}
    result = download([LabelWork("fish", images, need=3, val=0)], tmp_path / "dl", options(), split_of=split_of)
    assert files_under(tmp_path / "dl") == {f"{split_of[image.image_id]}/{W1}/{image.image_id}.jpg": body
                                            for image, body in zip(images, bodies, strict=True)}
    assert image_rows(tmp_path / "dl") == [kept_row("train", images[1], bodies[1]),
                                           kept_row("val", images[2], bodies[2]), kept_row("val", images[0], bodies[0])]
    assert [r["split"] for r in result.rows] == ["train", "val", "val"]


def test_every_class_of_a_label_has_its_folders_even_with_nothing_kept(server, tmp_path):
    images = [listed(1, W2, server.route("/404.jpg", Status(404)))]
    result = download([LabelWork("rest", images, need=1, wnids=(W2, W3))], tmp_path / "dl", options())
    folder = tmp_path / "dl"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_dir()) == [
        "train", f"train/{W2}", f"train/{W3}", "val", f"val/{W2}", f"val/{W3}"]
    assert image_rows(folder) == [] and result.rows == [] and result.short == ["rest"]


def test_write_class_names_adds_to_the_mapping(tmp_path):
    write_class_names(tmp_path, {W2: "English setter", W1: "tench, Tinca tinca"})
    assert (tmp_path / "LOC_synset_mapping.txt").read_text() == f"{W1} tench, Tinca tinca\n{W2} English setter\n"
    write_class_names(tmp_path, {W2: "springer", W3: "goldfish"})
    assert (tmp_path / "LOC_synset_mapping.txt").read_text() == (f"{W1} tench, Tinca tinca\n{W2} springer\n"
                                                                   f"{W3} goldfish\n")


# --------------------------------------------------------------------------- download: lock, record

def test_a_folder_in_use_is_refused(server, tmp_path):
    images = [listed(1, W1, server.route("/a.jpg", Body(jpeg(110))))]
    folder = tmp_path / "dl"
    with folder_lock(folder):
        with pytest.raises(UserError) as info:
            download([LabelWork("fish", images, need=1)], folder, options())
        assert str(info.value) == (f"{folder} is in use by another download (pid {os.getpid()}); "
                                   "wait for it to end, or download into another folder")
        assert server.counts() == {}
        assert not (folder / "downloads.csv").exists()
    download([LabelWork("fish", images, need=1)], folder, options())
    assert server.counts() == {"/a.jpg": 1}


def test_a_record_of_something_else_is_refused(server, tmp_path):
    folder = tmp_path / "dl"
    folder.mkdir()
    (folder / "downloads.csv").write_text("name,size\nx,1\n")
    images = [listed(1, W1, server.route("/a.jpg", Body(jpeg(111))))]
    with pytest.raises(UserError) as info:
        download([LabelWork("fish", images, need=1)], folder, options())
    assert str(info.value) == (f"{folder / 'downloads.csv'} is not a download record of imagenet-subset "
                               "(columns name,size); pass another folder for the download")
    assert server.counts() == {}


# --------------------------------------------------------------------------- from a list to a folder

def test_from_a_list_to_a_folder(server, tmp_path):
    """A CSV list of server URLs, selected with a seed, downloaded: the kept images are the first working
    ones in key order, of the chosen class and of the rest pool."""
    rng = np.random.default_rng(5)
    lines, bodies = ["image_id,url,source"], {}
    for line in range(2, 62):
        wnid = (W1, W2, W3)[line % 3]
        path = f"/{wnid}/{line}.jpg"
        if rng.random() < 0.3:
            server.route(path, Status(404))
        else:
            bodies[line] = jpeg(1000 + line)
            server.route(path, Body(bodies[line]))
        lines.append(f"{wnid}_{line},{server.url(path)},flickr")
    path = tmp_path / "urls.csv"
    path.write_text("\n".join(lines) + "\n")
    seed = 4
    scanned = scan_url_list(path)
    chosen = select_from_url_list(scanned, {W1}, seed, rest_from={W2, W3}, rest_candidates=12)
    labels = [LabelWork(W1, chosen.by_wnid[W1], need=5), LabelWork("rest", chosen.rest, need=4)]
    download(labels, tmp_path / "dl", options(), seed=seed)

    def first_working(candidates: list[int], need: int) -> list[int]:
        return [line for line in candidates if line in bodies][:need]

    def wnid(line: int) -> str:
        return (W1, W2, W3)[line % 3]

    in_key_order = sorted(range(2, 62), key=lambda line: key(line, seed))
    pool = [line for line in in_key_order if wnid(line) != W1][:12]
    assert [image.line for image in chosen.rest] == pool
    fish = first_working([line for line in in_key_order if wnid(line) == W1], 5)
    rest = first_working(pool, 4)
    assert len(fish) == 5 and len(rest) == 4
    kept = sorted(fish + rest)
    assert [int(r[4]) for r in image_rows(tmp_path / "dl")] == kept
    assert files_under(tmp_path / "dl") == {f"train/{wnid(n)}/{wnid(n)}_{n}.jpg": bodies[n] for n in kept}


# --------------------------------------------------------------------------- what a review found

def test_a_relative_redirect_with_a_url_in_its_query_is_followed(server, tmp_path):
    body = jpeg(200)
    server.route("/photo.jpg", Body(body))
    image = listed(1, W1, server.route("/moved", Redirect("/photo.jpg?from=http://elsewhere.example/x")))
    download([LabelWork("fish", [image], need=1)], tmp_path / "dl", options())
    assert attempt_rows(tmp_path / "dl") == [row(image, "ok", 200, body)]
    assert (tmp_path / "dl" / "train" / W1 / f"{image.image_id}.jpg").read_bytes() == body


def test_an_image_of_too_many_pixels_is_too_large_before_it_is_decoded(server, tmp_path):
    """A few KB of PNG can decode to gigabytes: over MAX_PIXELS it is refused from its header."""
    buffer = io.BytesIO()
    Image.new("1", (8000, 6300)).save(buffer, "PNG")  # 50.4 megapixels, about 8 KB
    bomb = buffer.getvalue()
    assert len(bomb) < 100_000
    image = listed(1, W1, server.route("/big.png", Body(bomb, "image/png")))
    download([LabelWork("fish", [image], need=1)], tmp_path / "dl", options())
    assert attempt_rows(tmp_path / "dl") == [row(image, "too_large", 200, bomb)]
    assert check_image_of(bomb, tmp_path) == ("too_large", "")


def check_image_of(body: bytes, folder: Path) -> tuple[str, str]:
    path = folder / "body.bin"
    path.write_bytes(body)
    return check_image(path, 32)


def test_a_folder_that_cannot_be_written_is_one_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError) as caught:
        download([LabelWork("fish", [listed(1, W1, "http://127.0.0.1:9/x.jpg")], need=1)], blocker / "dl",
                 options())
    assert str(caught.value) == (f"{blocker / 'dl'}: Not a directory; pass a download folder this run can write "
                                 "to, or free some space, and run the same command again to continue")


def test_a_link_planted_in_the_folder_is_not_followed(tmp_path):
    """A download folder may come from someone else: a symbolic link at the lock or at downloads.csv
    does not make the run write through it."""
    outside = tmp_path / "precious.csv"
    record = ",".join(ATTEMPT_COLUMNS) + "\n"  # read as an empty record: the append is what must not happen
    outside.write_text(record)
    for planted in (".download.lock", "downloads.csv"):
        folder = tmp_path / planted.strip(".")
        folder.mkdir()
        (folder / planted).symlink_to(outside)
        with pytest.raises(UserError) as caught:
            download([LabelWork("fish", [listed(1, W1, "http://127.0.0.1:9/x.jpg")], need=1)], folder, options())
        assert str(caught.value) == (f"{folder / planted}: Too many levels of symbolic links; pass a download "
                                     "folder this run can write to, or free some space, and run the same command "
                                     "again to continue")
        assert outside.read_text() == record


def test_a_table_line_with_an_open_quote_spoils_no_later_line(tmp_path):
    """Each row is read from its own line: a quote left open ends with its line (no later row is
    swallowed, nor a field grown past csv's limit), and line numbers stay the file's."""
    path = tmp_path / "list.csv"
    path.write_text(f'image_id,url\n{W1}_1,"http://h/a.jpg\n{W1}_2,http://h/b.jpg\n{W1}_3,http://h/c.jpg\n')
    found = UrlList(path)
    images = list(read_url_list(path, found))
    assert [(image.line, image.image_id, image.url) for image in images] == [
        (2, f"{W1}_1", "http://h/a.jpg"), (3, f"{W1}_2", "http://h/b.jpg"), (4, f"{W1}_3", "http://h/c.jpg")]
    assert (found.malformed, found.lines) == (0, 4)


def test_an_image_id_on_two_lines_is_taken_from_the_first(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text(f"{W1}_1\thttp://h/a.jpg\n{W1}_2\thttp://h/b.jpg\n{W1}_1\thttp://mirror/a.jpg\n")
    selection = select_from_url_list(scan_url_list(path), {W1}, 0)
    assert sorted((image.line, image.url) for image in selection.by_wnid[W1]) == [(1, "http://h/a.jpg"),
                                                                               (2, "http://h/b.jpg")]


def test_in_a_log_the_download_prints_plain_progress_lines(server, tmp_path, capsys, monkeypatch):
    """stderr not a terminal: no bar, a plain line every PLAIN_SECONDS (here every update) and the last one."""
    import packer.download

    monkeypatch.setattr(packer.download, "PLAIN_SECONDS", 0.0)
    images = [listed(1, W1, server.route("/a.jpg", Body(jpeg(300)))), listed(2, W1, server.route("/x", Status(404)))]
    download([LabelWork("fish", images, need=2)], tmp_path / "dl", options(progress=True))
    lines = capsys.readouterr().err.splitlines()
    assert lines and all(re.fullmatch(r"download: [0-2]/2 images kept, [01] failed, \d+\.\d MB/s", line)
                         for line in lines), lines
    assert re.fullmatch(r"download: 1/2 images kept, 1 failed, \d+\.\d MB/s", lines[-1])
