"""Builds from an image-URL list, end to end: ``--urls`` (download, then pack), the ``download``
command, choosing classes in a list, resume after a second run / SIGKILL / Ctrl-C, the folder lock,
recipes that re-download, and the one-line errors of bad input.

The images are served by a misbehaving HTTP server on 127.0.0.1 (tests/urlserver.py) that counts
the requests of every path. Expectations are computed here, independently of the package: the
trying order by a pure-Python splitmix64 of each image's line number, the val choice by BLAKE2b of
``"<seed>/val/<image_id>"``, file contents and SHA-256s from the bytes the server was given, rows
of the archive by the torchvision rule (helpers.reference_transform).
"""
import csv
import gzip
import hashlib
import io
import json
import os
import re
import signal
import subprocess
import tarfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from helpers import PYTHON, REPO, assert_one_error_line, reference_transform, run_main, subprocess_env
from PIL import Image
from urlserver import Body, Redirect, Status, UrlServer

from packer import BuildOptions, UserError
from packer.api import build
from packer.download import folder_lock
from packer.recipe import check_recipe

TENCH, GOLDFISH, JELLYFISH = "n01440764", "n01443537", "n01910747"
CHIHUAHUA, SPANIEL, SHIH_TZU = "n02085620", "n02085782", "n02086240"
OUTSIDE = "n09999901"  # not among ImageNet's 1,000 nor in the packaged WordNet names
WORDS = {TENCH: "tench, Tinca tinca", GOLDFISH: "goldfish, Carassius auratus"}

# small outputs keep the builds fast; rows are still checked against the torchvision rule
RESIZE, CROP = 40, 32
FAST = ["--resize_size", str(RESIZE), "--crop_size", str(CROP), "--workers", "1", "--quiet"]
API = {"resize_size": RESIZE, "crop_size": CROP, "workers": 1, "progress": False}
ATTEMPT_COLUMNS = ["image_id", "wnid", "line", "url", "status", "http_code", "bytes", "sha256", "seconds", "tries"]
IMAGE_COLUMNS = ["split", "path", "image_id", "wnid", "line", "url", "sha256", "bytes"]
INTERRUPTED = ("imagenet-subset: interrupted; nothing was written at the output paths (earlier outputs are "
               "untouched); run the same command again to continue")


# --------------------------------------------------------------------------- images and lists

def encoded(seed: int, size=(48, 40), fmt: str = "JPEG") -> bytes:
    """A noise picture (numpy random array) saved by Pillow: different bytes for every seed."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return out.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Img:
    """One line of a served list: what the server answers at its URL and what the download makes of it."""

    image_id: str
    line: int
    url: str
    data: bytes | None  # the body of a 200 answer (None: no image body)
    status: str  # what one fetch of it gives: ok, http_404, not_an_image, ...
    http_code: int | None

    @property
    def wnid(self) -> str:
        return self.image_id[:9]

    @property
    def ext(self) -> str:
        return ".png" if self.data is not None and self.data[:4] == b"\x89PNG" else ".jpg"

    @property
    def sha(self) -> str:
        return sha(self.data) if self.data is not None else ""


@dataclass
class Served:
    """A URL list on disk, every line of it served by ``server``."""

    server: UrlServer
    path: Path
    images: dict[str, Img] = field(default_factory=dict)  # image_id -> Img, in line order

    def of(self, *wnids: str) -> list[Img]:
        return [img for img in self.images.values() if img.wnid in wnids]

    def path_of(self, img: Img) -> str:
        return img.url.split(str(self.server.port), 1)[1]


def ok(seed: int, **kw):
    return ("ok", encoded(seed, **kw))


def serve_list(server: UrlServer, path: Path, rows: list, fmt: str = "fall11") -> Served:
    """Write the list ``rows`` at ``path`` and serve every image of it.

    A row is ``(image_id, answer)``, or a plain string (a malformed line, written as it is). An
    answer is ``("ok", bytes)``, an urlserver behaviour with the status it gives
    (``(Status(404), "http_404")``), or ``("dup", image_id)``: the bytes of that earlier row.
    ``fmt``: ``fall11`` (``<id><TAB><url>``), ``csv`` (header ``image_id,url,title``: line 1)
    or ``tsv_wnid`` (header ``wnid<TAB>url``: the image id is then ``<wnid>_<line>``).
    """
    served = Served(server, path)
    lines = {"fall11": [], "csv": ["image_id,url,title"], "tsv_wnid": ["wnid\turl"]}[fmt]
    for row in rows:
        if isinstance(row, str):
            lines.append(row)
            continue
        image_id, (kind, value) = row
        line = len(lines) + 1
        listed_id = f"{image_id[:9]}_{line}" if fmt == "tsv_wnid" else image_id
        if kind == "dup":
            kind, value = "ok", served.images[value].data
        if kind == "ok":
            ext = ".png" if value[:4] == b"\x89PNG" else ".jpg"
            url = server.route(f"/img/{image_id}{ext}", Body(value, "image/png" if ext == ".png" else "image/jpeg"))
            img = Img(listed_id, line, url, value, "ok", 200)
        else:
            behaviour, status = kind, value
            url = server.route(f"/img/{image_id}.jpg", behaviour)
            body = getattr(behaviour, "data", None)
            code = 302 if isinstance(behaviour, Redirect) else getattr(behaviour, "code", 200)
            img = Img(listed_id, line, url, body, status, code)
        served.images[listed_id] = img
        lines.append({"fall11": f"{image_id}\t{url}", "csv": f"{image_id},{url},a title",
                      "tsv_wnid": f"{image_id[:9]}\t{url}"}[fmt])
    path.write_text("".join(f"{line}\n" for line in lines))
    return served


def pets(server: UrlServer, folder: Path) -> Served:
    """``pets.txt``: 8 tench, goldfish and Chihuahua images, interleaved class by class (lines 1-3
    are image 1 of each), with 404s among them (2 tench, 2 goldfish, 1 Chihuahua), a PNG
    (goldfish 1) and a malformed line (line 4)."""
    fails = {TENCH: {3, 6}, GOLDFISH: {2, 7}, CHIHUAHUA: {1}}
    rows: list = []
    for k in range(1, 9):
        for n, wnid in enumerate((TENCH, GOLDFISH, CHIHUAHUA)):
            image_id = f"{wnid}_{k}"
            if k in fails[wnid]:
                rows.append((image_id, (Status(404), "http_404")))
            elif (wnid, k) == (GOLDFISH, 1):
                rows.append((image_id, ("ok", encoded(100 * k + n, size=(40, 44), fmt="PNG"))))
            else:
                rows.append((image_id, ok(100 * k + n)))
        if k == 1:
            rows.append("a line that is not <wnid>_<n><TAB><url>")
    return serve_list(server, folder / "pets.txt", rows)


# --------------------------------------------------------------------------- expectations

M64 = (1 << 64) - 1


def trying_key(line: int, seed: int) -> int:
    """splitmix64(line + seed * 0x9E3779B97F4A7C15), as the URL list module documents it."""
    z = (line + seed * 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


@dataclass
class Expected:
    """What the download of one label should do: tried (in trying order), kept (rank order), val."""

    tried: list[Img]
    kept: list[Img]
    val: set[str]
    statuses: dict[str, str]  # image_id -> status of its attempt


def expect_label(candidates: list[Img], need: int, val: int, seed: int) -> Expected:
    """The first ``need`` distinct working candidates in trying order; the ``val`` (scaled when
    short) of them with the smallest BLAKE2b of ``<seed>/val/<image_id>`` go to val."""
    order = sorted(candidates, key=lambda img: trying_key(img.line, seed))
    tried, kept, statuses, seen = [], [], {}, set()
    for img in order:
        if len(kept) == need:
            break
        tried.append(img)
        if img.status == "ok" and img.sha in seen:
            statuses[img.image_id] = "duplicate"
        else:
            statuses[img.image_id] = img.status
            if img.status == "ok":
                kept.append(img)
                seen.add(img.sha)
    count = val if len(kept) >= need else round(val * len(kept) / need) if need else 0
    by_key = sorted(kept, key=lambda img: hashlib.blake2b(f"{seed}/val/{img.image_id}".encode(),
                                                            digest_size=8).digest())
    return Expected(tried, kept, {img.image_id for img in by_key[:count]}, statuses)


def expected_rows(labels: list[Expected]) -> list[dict]:
    """images.csv: train rows then val rows, each in line order."""
    rows = []
    for label in labels:
        for img in label.kept:
            split = "val" if img.image_id in label.val else "train"
            rows.append({"split": split, "path": f"{split}/{img.wnid}/{img.image_id}{img.ext}",
                         "image_id": img.image_id, "wnid": img.wnid, "line": str(img.line), "url": img.url,
                         "sha256": img.sha, "bytes": str(len(img.data))})
    return sorted(rows, key=lambda row: (row["split"] != "train", int(row["line"])))


def status_counts(labels: list[Expected]) -> str:
    """The ``this run:`` part of the downloaded line: statuses by count (descending), then name."""
    counts = Counter(status for label in labels for status in label.statuses.values())
    return ", ".join(f"{status} {n}" for status, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def downloaded_line(kept: int, labels: int, reused: int, this_run: str) -> re.Pattern:
    return re.compile(re.escape(f"downloaded: {kept} images kept for {labels} labels ({reused} from an earlier "
                                f"run); this run: {this_run}; ") + r"\d+\.\d MB in \d+\.\d s")


# --------------------------------------------------------------------------- reading outputs

def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def attempts(folder: Path) -> list[dict]:
    with open(folder / "downloads.csv", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ATTEMPT_COLUMNS
        return list(reader)


def files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {key: z[key] for key in z.files}


def manifest(path: Path) -> dict:
    return json.loads(path.read_text())


def split_rows(rows: list[dict], split: str, label_of: dict[str, int]):
    """(image_ids, ids, labels) of ``split``'s rows of an images.csv, in row order."""
    chosen = [row for row in rows if row["split"] == split]
    return ([row["image_id"] for row in chosen], np.array([int(row["line"]) for row in chosen], np.int32),
            np.array([label_of[row["wnid"]] for row in chosen], np.int32))


def assert_rows_transform(X: np.ndarray, folder: Path, rows: list[dict], split: str) -> None:
    paths = [folder / row["path"] for row in rows if row["split"] == split]
    assert X.shape == (len(paths), CROP, CROP, 3)
    for i, path in enumerate(paths):
        assert np.array_equal(X[i], reference_transform(path, RESIZE, CROP)), f"{split} row {i} is not {path}"


def outputs(out: Path, name: str) -> list[Path]:
    return [out / f"{name}_cls.npz", out / f"{name}_cls_metadata.csv", out / f"{name}_cls.manifest.json"]


@pytest.fixture
def server():
    with UrlServer() as running:
        yield running
        assert running.errors == []


# --------------------------------------------------------------------------- 1. a build from a list

def test_urls_build_downloads_a_tree_and_packs_it_as_data_dir_would(server, tmp_path, capsys):
    """--urls with --classes in a given order: the download folder's layout and records, the
    archive's rows, ids, labels, the manifest's origins, the printed lines; and packing the folder
    itself with --data_dir gives the same bytes."""
    served = pets(server, tmp_path)
    out = tmp_path / "out"
    code, stdout, err = run_main(["--urls", served.path, "--classes", "goldfish,tench", "--train_per_class", 3,
                                  "--val_per_class", 2, "--out_dir", out, *FAST], capsys)
    assert code == 0, err
    assert err == ""
    labels = [expect_label(served.of(wnid), 5, 2, seed=0) for wnid in (GOLDFISH, TENCH)]
    rows = expected_rows(labels)
    folder = out / "custom_images"
    lines = stdout.splitlines()
    assert downloaded_line(10, 2, 0, status_counts(labels)).fullmatch(lines[0]), lines[0]
    assert lines[1] == (f"note: {served.path}: 1 lines without a <wnid>_<n> id and an http(s) URL were skipped "
                        "(the first: line 4)")
    assert lines[2].startswith(f"custom: 6 train, 4 val images, 2 classes -> {out / 'custom_cls.npz'} (")
    assert lines[3:] == ["labels: train from images.csv (downloaded from a URL list); val from images.csv "
                         "(downloaded from a URL list)", f"metadata: {out / 'custom_cls_metadata.csv'}"]
    assert sorted(p.name for p in out.iterdir()) == ["custom_cls.manifest.json", "custom_cls.npz",
                                                     "custom_cls_metadata.csv", "custom_images"]

    # the folder: kept images as received, one row each in images.csv, every attempt in downloads.csv
    assert files_under(folder) == sorted([".download.lock", "LOC_synset_mapping.txt", "downloads.csv", "images.csv"]
                                         + [row["path"] for row in rows])
    assert {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_dir()} == {
        "train", "val", f"train/{TENCH}", f"train/{GOLDFISH}", f"val/{TENCH}", f"val/{GOLDFISH}"}
    assert read_csv(folder / "images.csv") == rows
    assert (folder / "images.csv").read_text().splitlines()[0] == ",".join(IMAGE_COLUMNS)
    for row in rows:
        assert (folder / row["path"]).read_bytes() == served.images[row["image_id"]].data
    assert any(row["path"].endswith(".png") for row in rows)  # goldfish 1, a PNG, is kept as .png
    tried = [img for label in labels for img in label.tried]
    assert sorted((a["image_id"], a["wnid"], a["line"], a["url"], a["status"], a["http_code"], a["bytes"],
                   a["sha256"], a["tries"]) for a in attempts(folder)) == sorted(
        (img.image_id, img.wnid, str(img.line), img.url, img.status, str(img.http_code),
         str(len(img.data)) if img.status == "ok" else "", img.sha if img.status == "ok" else "", "1")
        for img in tried)
    assert (folder / "LOC_synset_mapping.txt").read_text() == f"{TENCH} {WORDS[TENCH]}\n{GOLDFISH} {WORDS[GOLDFISH]}\n"
    assert server.counts() == {served.path_of(img): 1 for img in tried}  # nothing but the tried, each once

    # the archive: rows in line order, ids the line numbers, labels in the order of --classes
    data = load(out / "custom_cls.npz")
    label_of = {GOLDFISH: 0, TENCH: 1}
    for split in ("train", "val"):
        image_ids, ids, ys = split_rows(rows, split, label_of)
        assert data[f"{split}_id"].tolist() == ids.tolist()
        assert data[f"y_{split}"].tolist() == ys.tolist()
        assert_rows_transform(data[f"X_{split}"], folder, rows, split)
        sources = manifest(out / "custom_cls.manifest.json")["sources"][split]
        assert sources["ids"] == ids.tolist()
        assert sources["image_ids"] == image_ids
        assert sources["urls"] == [served.images[i].url for i in image_ids]
        assert sources["sha256"] == [sha((folder / row["path"]).read_bytes()) for row in rows if row["split"] == split]
        assert sources["paths"] == [row["path"].split("/", 1)[1] for row in rows if row["split"] == split]
    assert len(set(data["train_id"]) | set(data["val_id"])) == 10  # no image in both splits
    assert [row["WNID"] for row in read_csv(out / "custom_cls_metadata.csv")] == [GOLDFISH, TENCH]

    # the folder is a tree: --data_dir with the same choosing options packs the same bytes
    again = tmp_path / "again"
    code, _, err = run_main(["--data_dir", folder, "--classes", "goldfish,tench", "--train_per_class", 3,
                             "--val_per_class", 2, "--out_dir", again, *FAST], capsys)
    assert code == 0, err
    assert (again / "custom_cls.npz").read_bytes() == (out / "custom_cls.npz").read_bytes()
    assert (again / "custom_cls_metadata.csv").read_bytes() == (out / "custom_cls_metadata.csv").read_bytes()
    assert manifest(again / "custom_cls.manifest.json")["sources"] == manifest(out / "custom_cls.manifest.json")[
        "sources"]


@pytest.mark.parametrize("fmt", ["csv", "tsv_wnid"])
def test_table_lists_number_the_header_as_line_one(server, tmp_path, fmt):
    """A CSV with image_id (and an extra column) or a TSV with wnid only: ids are line numbers
    counting the header as line 1; with only a wnid column the image id is ``<wnid>_<line>``."""
    rows = [(f"{wnid}_{k}", ok(10 * k + n) if (k + n) % 4 else (Status(410), "http_410"))
            for k in range(1, 6) for n, wnid in enumerate((TENCH, GOLDFISH))]
    served = serve_list(server, tmp_path / f"list.{fmt}", rows, fmt)
    assert min(img.line for img in served.images.values()) == 2
    result = build(BuildOptions(urls=str(served.path), classes=(TENCH, GOLDFISH), train_per_class=2,
                                val_per_class=1, out_dir=str(tmp_path / "out"), **API))
    labels = [expect_label(served.of(wnid), 3, 1, seed=0) for wnid in (TENCH, GOLDFISH)]
    expected = expected_rows(labels)
    folder = tmp_path / "out" / "custom_images"
    assert read_csv(folder / "images.csv") == expected
    if fmt == "tsv_wnid":
        assert all(row["image_id"] == f"{row['wnid']}_{row['line']}" for row in expected)
    assert len(result.downloaded) == 1
    assert downloaded_line(6, 2, 0, status_counts(labels)).fullmatch(result.downloaded[0])
    data = load(result.archive)
    for split in ("train", "val"):
        image_ids, ids, ys = split_rows(expected, split, {TENCH: 0, GOLDFISH: 1})
        assert data[f"{split}_id"].tolist() == ids.tolist()
        assert data[f"y_{split}"].tolist() == ys.tolist()
        assert manifest(result.manifest)["sources"][split]["image_ids"] == image_ids


def test_compressed_lists_build_the_same_archive(server, tmp_path):
    """The list gzipped, and as the first file of a .tgz (as ImageNet shipped it): the same images,
    ids and bytes as the plain list."""
    served = pets(server, tmp_path)
    text = served.path.read_bytes()
    gz = tmp_path / "pets.txt.gz"
    gz.write_bytes(gzip.compress(text))
    tgz = tmp_path / "imagenet_fall11_urls.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        member = tarfile.TarInfo("fall11_urls.txt")
        member.size = len(text)
        tar.addfile(member, io.BytesIO(text))
    archives = []
    for i, path in enumerate((served.path, gz, tgz)):
        result = build(BuildOptions(urls=str(path), classes=("tench", "goldfish"), train_per_class=2, val_per_class=1,
                                    out_dir=str(tmp_path / f"out{i}"), **API))
        archives.append(result.archive.read_bytes())
        expected = expected_rows([expect_label(served.of(wnid), 3, 1, 0) for wnid in (TENCH, GOLDFISH)])
        assert read_csv(tmp_path / f"out{i}" / "custom_images" / "images.csv") == expected
    assert archives[0] == archives[1] == archives[2]


# --------------------------------------------------------------------------- 2. choosing

def test_subset_name_file_names_the_outputs_and_orders_the_labels(server, tmp_path, capsys):
    served = pets(server, tmp_path)
    class_list = tmp_path / "mine.txt"
    class_list.write_text(f"{CHIHUAHUA}\n{TENCH}\n")
    out = tmp_path / "out"
    code, stdout, err = run_main(["--urls", served.path, "--subset_name", class_list, "--train_per_class", 2,
                                  "--val_per_class", 1, "--out_dir", out, *FAST], capsys)
    assert code == 0, err
    labels = [expect_label(served.of(wnid), 3, 1, seed=0) for wnid in (CHIHUAHUA, TENCH)]
    expected = expected_rows(labels)
    assert sorted(p.name for p in out.iterdir()) == ["mine_cls.manifest.json", "mine_cls.npz",
                                                     "mine_cls_metadata.csv", "mine_images"]
    assert read_csv(out / "mine_images" / "images.csv") == expected
    assert (out / "mine_images" / "LOC_synset_mapping.txt").read_text() == (f"{TENCH} {WORDS[TENCH]}\n"
                                                                           f"{CHIHUAHUA} Chihuahua\n")
    data = load(out / "mine_cls.npz")
    for split in ("train", "val"):
        _, ids, ys = split_rows(expected, split, {CHIHUAHUA: 0, TENCH: 1})
        assert (data[f"{split}_id"].tolist(), data[f"y_{split}"].tolist()) == (ids.tolist(), ys.tolist())
    assert [(row["subset_label"], row["WNID"], row["num_train_images"], row["num_val_images"])
            for row in read_csv(out / "mine_cls_metadata.csv")] == [("0", CHIHUAHUA, "2", "1"), ("1", TENCH, "2", "1")]
    assert stdout.splitlines()[2].startswith("mine: 4 train, 2 val images, 2 classes")


def test_search_chooses_the_listed_classes_whose_names_match(server, tmp_path):
    rows = [(f"{wnid}_{k}", ok(10 * k + n)) for k in range(1, 4)
            for n, wnid in enumerate((TENCH, JELLYFISH, GOLDFISH, CHIHUAHUA))]
    served = serve_list(server, tmp_path / "list.txt", rows)
    result = build(BuildOptions(urls=str(served.path), search="fish", train_per_class=1, val_per_class=1,
                                out_dir=str(tmp_path / "out"), **API))
    assert result.archive == tmp_path / "out" / "search_fish_cls.npz"
    labels = [expect_label(served.of(wnid), 2, 1, seed=0) for wnid in (GOLDFISH, JELLYFISH)]  # WNID order
    expected = expected_rows(labels)
    folder = tmp_path / "out" / "search_fish_images"
    assert read_csv(folder / "images.csv") == expected
    assert sorted(p.name for p in (folder / "train").iterdir()) == [GOLDFISH, JELLYFISH]
    data = load(result.archive)
    for split in ("train", "val"):
        _, ids, ys = split_rows(expected, split, {GOLDFISH: 0, JELLYFISH: 1})
        assert (data[f"{split}_id"].tolist(), data[f"y_{split}"].tolist()) == (ids.tolist(), ys.tolist())
    assert set(server.counts()) == {served.path_of(img) for label in labels for img in label.tried}


def test_rest_takes_images_of_the_other_classes_of_the_list(server, tmp_path):
    """--rest 4 with N=2, M=1: a last label ``rest`` of 4 + round(4 * 1 / 2) = 6 images, the first
    that work among the lines of the list's other classes (one outside the 1,000) in trying order."""
    wnids = (TENCH, GOLDFISH, CHIHUAHUA, SPANIEL, OUTSIDE)
    rows = [(f"{wnid}_{k}", ok(10 * k + n) if (k * 7 + n) % 5 else (Status(404), "http_404"))
            for k in range(1, 7) for n, wnid in enumerate(wnids)]
    served = serve_list(server, tmp_path / "list.txt", rows)
    result = build(BuildOptions(urls=str(served.path), classes=("goldfish", "tench"), train_per_class=2,
                                val_per_class=1, rest=4, out_dir=str(tmp_path / "out"), **API))
    labels = [expect_label(served.of(GOLDFISH), 3, 1, 0), expect_label(served.of(TENCH), 3, 1, 0),
              expect_label(served.of(CHIHUAHUA, SPANIEL, OUTSIDE), 6, 2, 0)]
    assert {img.wnid for img in labels[2].kept} == {CHIHUAHUA, SPANIEL, OUTSIDE}  # the pool is mixed
    expected = expected_rows(labels)
    folder = tmp_path / "out" / "custom_images"
    assert read_csv(folder / "images.csv") == expected
    rest = {img.image_id for img in labels[2].kept}
    data = load(result.archive)
    for split in ("train", "val"):
        chosen = [row for row in expected if row["split"] == split]
        assert data[f"{split}_id"].tolist() == [int(row["line"]) for row in chosen]
        assert data[f"y_{split}"].tolist() == [2 if row["image_id"] in rest else [GOLDFISH, TENCH].index(row["wnid"])
                                               for row in chosen]
    assert (np.bincount(data["y_train"]).tolist(), np.bincount(data["y_val"]).tolist()) == ([2, 2, 4], [1, 1, 2])
    metadata = read_csv(result.metadata)
    assert [(row["subset_label"], row["WNID"], row["human_label"], row["num_train_images"], row["num_val_images"])
            for row in metadata] == [("0", GOLDFISH, WORDS[GOLDFISH], "2", "1"), ("1", TENCH, WORDS[TENCH], "2", "1"),
                                     ("2", "", "rest", "4", "2")]
    assert downloaded_line(12, 3, 0, status_counts(labels)).fullmatch(result.downloaded[0])


def test_under_dog_takes_the_dog_classes_of_the_list(server, tmp_path):
    """--under dog with the packaged hierarchy: one label per dog class of the list, in WNID order,
    named under_dog; the fish are the rest pool."""
    wnids = (TENCH, SHIH_TZU, GOLDFISH, CHIHUAHUA, SPANIEL)
    rows = [(f"{wnid}_{k}", ok(10 * k + n)) for k in range(1, 5) for n, wnid in enumerate(wnids)]
    served = serve_list(server, tmp_path / "list.txt", rows)
    result = build(BuildOptions(urls=str(served.path), under="dog", train_per_class=1, val_per_class=1, rest=2,
                                rest_val=1, out_dir=str(tmp_path / "out"), **API))
    assert result.archive == tmp_path / "out" / "under_dog_cls.npz"
    dogs = [CHIHUAHUA, SPANIEL, SHIH_TZU]
    labels = [expect_label(served.of(wnid), 2, 1, 0) for wnid in dogs] + [
        expect_label(served.of(TENCH, GOLDFISH), 3, 1, 0)]
    expected = expected_rows(labels)
    assert read_csv(tmp_path / "out" / "under_dog_images" / "images.csv") == expected
    rest = {img.image_id for img in labels[3].kept}
    data = load(result.archive)
    for split in ("train", "val"):
        chosen = [row for row in expected if row["split"] == split]
        assert data[f"{split}_id"].tolist() == [int(row["line"]) for row in chosen]
        assert data[f"y_{split}"].tolist() == [3 if row["image_id"] in rest else dogs.index(row["wnid"])
                                               for row in chosen]
    recorded = manifest(result.manifest)
    assert [entry["wnids"] for entry in recorded["classes"]] == [[w] for w in dogs] + [[]]
    assert recorded["input"]["hierarchy"]["under"] == [{"name": "dog", "wnid": "n02084071"}]


def test_a_class_absent_from_the_list_is_one_error_line_naming_the_list(server, tmp_path, capsys):
    served = pets(server, tmp_path)
    out = tmp_path / "out"
    code, stdout, err = run_main(["--urls", served.path, "--classes", f"tench,{SPANIEL}", "--out_dir", out, *FAST],
                                 capsys)
    assert code == 1 and stdout == ""
    assert assert_one_error_line(err) == (f"imagenet-subset: error: --classes: {SPANIEL} is not in the classes of the "
                                          f"URL list {served.path} (named by the packaged WordNet names)")
    class_list = tmp_path / "mine.txt"
    class_list.write_text(f"{TENCH}\n{SPANIEL}\n{SHIH_TZU}\n")
    code, stdout, err = run_main(["--urls", served.path, "--subset_name", class_list, "--out_dir", out, *FAST], capsys)
    assert code == 1 and stdout == ""
    assert assert_one_error_line(err) == (f"imagenet-subset: error: {class_list}: 2 WNIDs are not in the URL list "
                                          f"{served.path}: {SPANIEL}, {SHIH_TZU}; remove them from the list or use a "
                                          "URL list that has them")
    assert not out.exists()
    assert server.counts() == {}


@pytest.mark.parametrize("choosing", [["--subset_name", "LIST"], ["--search", "shark"], ["--under", "cat"]],
                         ids=["subset_name", "search", "under"])
def test_choosing_errors_for_a_url_list_give_advice_that_applies_to_it(server, tmp_path, capsys, choosing):
    served = pets(server, tmp_path)
    class_list = tmp_path / "mine.txt"
    class_list.write_text(f"{TENCH}\n{SPANIEL}\n")
    choosing = [str(class_list) if arg == "LIST" else arg for arg in choosing]
    code, _, err = run_main(["--urls", served.path, *choosing, "--out_dir", tmp_path / "out", *FAST], capsys)
    assert code == 1
    line = assert_one_error_line(err, served.path)
    assert "--data_dir" not in line


def test_a_label_whose_urls_all_fail_is_left_empty_and_the_summary_says_so(server, tmp_path, capsys):
    rows = []
    for k in range(1, 5):
        rows.append((f"{TENCH}_{k}", ok(k)))
        rows.append((f"{GOLDFISH}_{k}", (Status(404), "http_404") if k % 2 else (Status(403), "http_403")))
    served = serve_list(server, tmp_path / "list.txt", rows)
    out = tmp_path / "out"
    code, stdout, err = run_main(["--urls", served.path, "--classes", "tench,goldfish", "--train_per_class", 2,
                                  "--val_per_class", 1, "--out_dir", out, *FAST], capsys)
    assert code == 0, err
    lines = stdout.splitlines()
    assert downloaded_line(3, 2, 0, "ok 3, http_403 2, http_404 2").fullmatch(lines[0]), lines[0]
    assert lines[1] == f"1 labels ran out of URLs to try and kept what they got: {GOLDFISH}"
    assert lines[2].startswith("custom: 2 train, 1 val images, 2 classes")
    folder = out / "custom_images"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_dir()) == [
        "train", f"train/{TENCH}", f"train/{GOLDFISH}", "val", f"val/{TENCH}", f"val/{GOLDFISH}"]
    assert list((folder / "train" / GOLDFISH).iterdir()) == list((folder / "val" / GOLDFISH).iterdir()) == []
    tench = expect_label(served.of(TENCH), 3, 1, 0)
    assert read_csv(folder / "images.csv") == expected_rows([tench])
    data = load(out / "custom_cls.npz")
    assert (data["y_train"].tolist(), data["y_val"].tolist()) == ([0, 0], [0])
    assert [(row["WNID"], row["num_train_images"], row["num_val_images"])
            for row in read_csv(out / "custom_cls_metadata.csv")] == [(TENCH, "2", "1"), (GOLDFISH, "0", "0")]
    assert server.counts() == {served.path_of(img): 1 for img in tench.tried + served.of(GOLDFISH)}


# --------------------------------------------------------------------------- 3. N + M working images per label

def mixed(server: UrlServer, folder: Path) -> Served:
    """Two classes of 14 candidates each; besides working images: 404, 410, an HTML page, a
    too-small JPEG, a redirect to a photo_unavailable page, a redirect to a working image (kept
    under its listed URL), a body rejected by --reject_sha256, and a copy of an earlier image."""
    server.route("/photo_unavailable.png", Body(encoded(999, fmt="PNG"), "image/png"))
    rows = []
    for n, wnid in enumerate((TENCH, GOLDFISH)):
        target = server.route(f"/moved/{wnid}.jpg", Body(encoded(500 + n)))
        failing = {2: (Status(404), "http_404"), 4: (Status(410), "http_410"),
                   6: (Body(b"<html>no such photo</html>", "text/html"), "not_an_image"),
                   8: (Body(encoded(600 + n, size=(24, 20))), "too_small"),
                   9: (Redirect("/photo_unavailable.png"), "placeholder"),
                   11: (Body(encoded(700 + n)), "placeholder")}  # its SHA-256 is in --reject_sha256
        for k in range(1, 15):
            image_id = f"{wnid}_{k}"
            if k in failing:
                rows.append((image_id, failing[k]))
            elif k == 12:
                rows.append((image_id, (Redirect(target), "ok")))
            elif k == 13:
                rows.append((image_id, ("dup", f"{wnid}_1")))
            else:
                rows.append((image_id, ok(40 * k + n)))
    served = serve_list(server, folder / "mixed.txt", rows)
    for n, wnid in enumerate((TENCH, GOLDFISH)):  # the redirected ones are the moved image's bytes
        moved = served.images[f"{wnid}_12"]
        moved.data, moved.http_code = encoded(500 + n), 200
    return served


def test_each_label_keeps_the_first_n_plus_m_that_work_in_seeded_order(server, tmp_path, capsys):
    served = mixed(server, tmp_path)
    rejected = tmp_path / "rejected.txt"
    rejected.write_text(f"# placeholders\n{sha(encoded(700))}  tench 11\n{sha(encoded(701)).upper()}\n\n")

    def run(out: Path, seed: int) -> tuple[list[Expected], Path]:
        code, _, err = run_main(["--urls", served.path, "--classes", "tench,goldfish", "--train_per_class", 4,
                                 "--val_per_class", 2, "--seed", seed, "--reject_sha256", rejected, "--out_dir", out,
                                 *FAST], capsys)
        assert code == 0, err
        labels = [expect_label(served.of(wnid), 6, 2, seed) for wnid in (TENCH, GOLDFISH)]
        folder = out / "custom_images"
        assert read_csv(folder / "images.csv") == expected_rows(labels)
        # the last row of each image (a kept image displaced by an earlier-ranked copy that ended
        # after it has an ok row, then a duplicate one)
        last = {a["image_id"]: (a["status"], a["http_code"]) for a in attempts(folder)}
        assert last == {img.image_id: (label.statuses[img.image_id], str(img.http_code) if img.http_code else "")
                        for label in labels for img in label.tried}
        return labels, out

    first, out0 = run(tmp_path / "seed0", 0)
    tried_statuses = {status for label in first for status in label.statuses.values()}
    assert len(tried_statuses) >= 5, tried_statuses  # the failures are really among the tried ones
    assert all(len(label.kept) == 6 for label in first)
    assert len(load(out0 / "custom_cls.npz")["train_id"]) == 8
    # the same command into a fresh folder: the same images, the same bytes
    _, out_again = run(tmp_path / "seed0_again", 0)
    assert (out_again / "custom_cls.npz").read_bytes() == (out0 / "custom_cls.npz").read_bytes()
    assert ((out_again / "custom_images" / "images.csv").read_bytes()
            == (out0 / "custom_images" / "images.csv").read_bytes())
    # another seed, another choice
    other, out7 = run(tmp_path / "seed7", 7)
    assert [{img.image_id for img in label.kept} for label in other] != [
        {img.image_id for img in label.kept} for label in first]
    assert (out7 / "custom_cls.npz").read_bytes() != (out0 / "custom_cls.npz").read_bytes()


def test_val_per_class_without_train_per_class_keeps_m_val_images(server, tmp_path):
    """Every URL is tried without --train_per_class; M of the working ones are val."""
    served = pets(server, tmp_path)  # 6 of the 8 goldfish and of the 8 tench URLs work
    result = build(BuildOptions(urls=str(served.path), classes=("goldfish", "tench"), val_per_class=2,
                                out_dir=str(tmp_path / "out"), **API))
    data = load(result.archive)
    assert (np.bincount(data["y_train"]).tolist(), np.bincount(data["y_val"]).tolist()) == ([4, 4], [2, 2])


def test_trying_every_url_does_not_report_labels_as_short(server, tmp_path, capsys):
    served = pets(server, tmp_path)
    code, stdout, err = run_main(["--urls", served.path, "--classes", "goldfish,tench", "--out_dir", tmp_path / "out",
                                  *FAST], capsys)
    assert code == 0, err
    assert read_csv(tmp_path / "out" / "custom_images" / "images.csv") == expected_rows(
        [expect_label(served.of(wnid), 8, 0, 0) for wnid in (GOLDFISH, TENCH)])  # all 12 that work, in train
    assert "ran out of URLs" not in stdout


def test_balance_classes_spreads_the_downloaded_images_over_a_groups_classes(server, tmp_path):
    rows = [(f"{wnid}_{k}", ok(10 * k + n)) for k in range(1, 9)
            for n, wnid in enumerate((TENCH, GOLDFISH, CHIHUAHUA, SPANIEL))]
    served = serve_list(server, tmp_path / "list.txt", rows)  # 8 working images for each class
    result = build(BuildOptions(urls=str(served.path), group_by="cyprinid,dog", balance="classes", train_per_class=4,
                                val_per_class=2, out_dir=str(tmp_path / "out"), **API))
    recorded = manifest(result.manifest)
    assert [entry["wnids"] for entry in recorded["classes"]] == [[TENCH, GOLDFISH], [CHIHUAHUA, SPANIEL]]
    for split, per_class in (("train", 2), ("val", 1)):
        wnids = Counter(image_id[:9] for image_id in recorded["sources"][split]["image_ids"])
        assert wnids == {wnid: per_class for wnid in (TENCH, GOLDFISH, CHIHUAHUA, SPANIEL)}, split


# --------------------------------------------------------------------------- 4. resume, the lock

def test_a_rerun_asking_for_more_fetches_only_what_is_missing(server, tmp_path, capsys):
    """N=2, M=1, then N=3, M=2 in the same folder: the second run fetches only candidates the first
    did not try, and its folder and archive equal a fresh run's; then N=1, M=1 fetches nothing."""
    served = pets(server, tmp_path)

    def run(out: Path, n: int, m: int) -> None:
        code, _, err = run_main(["--urls", served.path, "--classes", "goldfish,tench", "--train_per_class", n,
                                 "--val_per_class", m, "--out_dir", out, *FAST], capsys)
        assert code == 0, err

    run(tmp_path / "out", 2, 1)
    before = [expect_label(served.of(wnid), 3, 1, 0) for wnid in (GOLDFISH, TENCH)]
    server.reset_counts()
    run(tmp_path / "out", 3, 2)
    after = [expect_label(served.of(wnid), 5, 2, 0) for wnid in (GOLDFISH, TENCH)]
    assert server.counts() == {served.path_of(img): 1 for b, a in zip(before, after, strict=True)
                               for img in a.tried if img not in b.tried}
    assert read_csv(tmp_path / "out" / "custom_images" / "images.csv") == expected_rows(after)
    run(tmp_path / "fresh", 3, 2)
    assert (tmp_path / "out" / "custom_cls.npz").read_bytes() == (tmp_path / "fresh" / "custom_cls.npz").read_bytes()
    server.reset_counts()
    run(tmp_path / "out", 1, 1)
    assert server.counts() == {}
    assert read_csv(tmp_path / "out" / "custom_images" / "images.csv") == expected_rows(
        [expect_label(served.of(wnid), 2, 1, 0) for wnid in (GOLDFISH, TENCH)])


def test_a_second_run_fetches_nothing_and_writes_the_same_outputs(server, tmp_path, capsys):
    served = pets(server, tmp_path)
    out = tmp_path / "out"
    argv = ["--urls", served.path, "--classes", "goldfish,tench", "--train_per_class", 3, "--val_per_class", 2,
            "--out_dir", out, *FAST]
    code, first, err = run_main(argv, capsys)
    assert code == 0, err
    labels = [expect_label(served.of(wnid), 5, 2, 0) for wnid in (GOLDFISH, TENCH)]
    assert any(img.status == "http_404" for label in labels for img in label.tried)  # 404s to remember
    folder = out / "custom_images"
    before = {path: (folder / path).read_bytes() for path in files_under(folder)}
    archive, metadata = (out / "custom_cls.npz").read_bytes(), (out / "custom_cls_metadata.csv").read_bytes()
    server.reset_counts()
    code, second, err = run_main(argv, capsys)
    assert code == 0, err
    assert server.counts() == {}
    assert downloaded_line(10, 2, 10, "nothing fetched").fullmatch(second.splitlines()[0]), second
    assert {path: (folder / path).read_bytes() for path in files_under(folder)} == before  # downloads.csv too
    assert (out / "custom_cls.npz").read_bytes() == archive
    assert (out / "custom_cls_metadata.csv").read_bytes() == metadata
    assert first.splitlines()[1:2] == second.splitlines()[1:2]  # the skipped-line note


def test_a_download_into_a_folder_in_use_is_refused(server, tmp_path, capsys):
    served = pets(server, tmp_path)
    folder = tmp_path / "images"
    out = tmp_path / "out"
    expected = (f"imagenet-subset: error: {folder} is in use by another download (pid {os.getpid()}); wait for it "
                "to end, or download into another folder")
    with folder_lock(folder):
        code, stdout, err = run_main(["--urls", served.path, "--classes", "tench", "--train_per_class", 2,
                                      "--download_dir", folder, "--out_dir", out, *FAST], capsys)
        assert (code, stdout) == (1, "")
        assert assert_one_error_line(err) == expected
        code, stdout, err = run_main(["download", "--urls", served.path, "--classes", "tench", "--train_per_class", 2,
                                      "--out_dir", folder, "--quiet"], capsys)
        assert (code, stdout) == (1, "")
        assert assert_one_error_line(err) == expected
    assert server.counts() == {}
    assert not out.exists()
    assert files_under(folder) == [".download.lock"]
    code, _, err = run_main(["--urls", served.path, "--classes", "tench", "--train_per_class", 2,
                             "--download_dir", folder, "--out_dir", out, *FAST], capsys)
    assert code == 0, err  # the lock is free again


# --------------------------------------------------------------------------- 5. the download command

def test_download_command_fills_a_folder_that_data_dir_packs(server, tmp_path, capsys):
    served = pets(server, tmp_path)
    folder = tmp_path / "downloaded"
    code, stdout, err = run_main(["download", "--urls", served.path, "--classes", "goldfish,tench",
                                  "--train_per_class", 3, "--val_per_class", 2, "--out_dir", folder, "--quiet"], capsys)
    assert code == 0, err
    assert err == ""
    labels = [expect_label(served.of(wnid), 5, 2, 0) for wnid in (GOLDFISH, TENCH)]
    rows = expected_rows(labels)
    lines = stdout.splitlines()
    assert len(lines) == 3
    assert downloaded_line(10, 2, 0, status_counts(labels)).fullmatch(lines[0]), lines[0]
    assert lines[1] == (f"note: {served.path}: 1 lines without a <wnid>_<n> id and an http(s) URL were skipped "
                        "(the first: line 4)")
    assert lines[2] == (f"images: {folder} (10 kept; record of every attempt: {folder / 'downloads.csv'}); pack them "
                        f"with: imagenet-subset --data_dir {folder} ...")
    assert files_under(folder) == sorted([".download.lock", "LOC_synset_mapping.txt", "downloads.csv", "images.csv"]
                                         + [row["path"] for row in rows])
    assert read_csv(folder / "images.csv") == rows
    assert len(attempts(folder)) == sum(len(label.tried) for label in labels)
    # packing it equals the build that downloads and packs at once
    code, _, err = run_main(["--data_dir", folder, "--classes", "goldfish,tench", "--out_dir", tmp_path / "packed",
                             *FAST], capsys)
    assert code == 0, err
    code, _, err = run_main(["--urls", served.path, "--classes", "goldfish,tench", "--train_per_class", 3,
                             "--val_per_class", 2, "--out_dir", tmp_path / "built", *FAST], capsys)
    assert code == 0, err
    assert ((tmp_path / "packed" / "custom_cls.npz").read_bytes()
            == (tmp_path / "built" / "custom_cls.npz").read_bytes())
    assert ((tmp_path / "built" / "custom_images" / "images.csv").read_bytes()
            == (folder / "images.csv").read_bytes())
    data = load(tmp_path / "packed" / "custom_cls.npz")
    assert data["train_id"].tolist() == split_rows(rows, "train", {GOLDFISH: 0, TENCH: 1})[1].tolist()


# --------------------------------------------------------------------------- 6. recipes

@pytest.fixture
def recipe_build(server, tmp_path):
    """A build from a list with a held-out image per label and a rest label (Chihuahuas): 4 images
    (2 train, 1 held out, 1 val) for each of the 3 labels; (served list, its result)."""
    served = pets(server, tmp_path)
    result = build(BuildOptions(urls=str(served.path), classes=("goldfish", "tench"), train_per_class=2,
                                holdout_per_class=1, val_per_class=1, rest=2, out_dir=str(tmp_path / "out"), **API))
    data = load(result.archive)
    assert [np.bincount(data[f"y_{split}"]).tolist() for split in ("train", "holdout", "val")] == [[2, 2, 2], [1, 1, 1],
                                                                                                  [1, 1, 1]]
    return served, result


def test_recipe_from_a_url_list_downloads_exactly_its_images_again(server, tmp_path, capsys, recipe_build):
    served, result = recipe_build
    recipe = manifest(result.manifest)
    kept = [image_id for split in ("train", "val", "holdout") for image_id in recipe["sources"][split]["image_ids"]]
    assert len(kept) == 12
    server.reset_counts()
    again, folder = tmp_path / "again", tmp_path / "again_images"
    code, stdout, err = run_main(["build", "--recipe", result.manifest, "--out_dir", again, "--download_dir", folder,
                                  "--workers", 1, "--quiet"], capsys)
    assert code == 0, err
    assert f"archive identical to the recipe (sha256 {result.sha256}); metadata CSV identical" in stdout.splitlines()
    assert server.counts() == {served.path_of(served.images[image_id]): 1 for image_id in kept}
    assert (again / "custom_cls.npz").read_bytes() == result.archive.read_bytes()
    assert (folder / "images.csv").read_bytes() == (tmp_path / "out" / "custom_images" / "images.csv").read_bytes()
    assert sorted(a["image_id"] for a in attempts(folder)) == sorted(kept)
    assert files_under(folder) == files_under(tmp_path / "out" / "custom_images")
    # into the build's own folder: everything is there already, nothing is fetched
    server.reset_counts()
    code, stdout, err = run_main(["build", "--recipe", result.manifest, "--out_dir", tmp_path / "third",
                                  "--download_dir", tmp_path / "out" / "custom_images", "--workers", 1, "--quiet"],
                                 capsys)
    assert code == 0, err
    assert f"archive identical to the recipe (sha256 {result.sha256}); metadata CSV identical" in stdout.splitlines()
    assert server.counts() == {}


def test_recipe_rebuild_names_the_images_that_changed_and_writes_nothing(server, tmp_path, capsys, recipe_build):
    served, result = recipe_build
    recipe = manifest(result.manifest)
    changed = served.images[recipe["sources"]["train"]["image_ids"][1]]
    gone = served.images[recipe["sources"]["val"]["image_ids"][0]]
    server.route(served.path_of(changed), Body(encoded(4242)))  # another picture at the same URL
    server.route(served.path_of(gone), Status(404))
    again, folder = tmp_path / "again", tmp_path / "again_images"
    code, stdout, err = run_main(["build", "--recipe", result.manifest, "--out_dir", again, "--download_dir", folder,
                                  "--workers", 1, "--quiet"], capsys)
    assert (code, stdout) == (1, "")
    assert assert_one_error_line(err) == (
        f"imagenet-subset: error: 2 of the recipe's 12 images could not be downloaded as they were: "
        f"{changed.image_id} (other bytes than the recipe's), {gone.image_id} (http_404); every attempt is in "
        f"{folder / 'downloads.csv'}; ask the sender for the images, or build a new subset from the URL list")
    assert not again.exists()  # the run made it, and removed it: nothing at the output paths
    assert {(a["image_id"], a["status"]) for a in attempts(folder)} >= {(changed.image_id, "ok"),
                                                                        (gone.image_id, "http_404")}
    # the same without --download_dir: the images go in the out_dir, the outputs are still not written
    code, _, err = run_main(["build", "--recipe", result.manifest, "--out_dir", again, "--workers", 1, "--quiet"],
                            capsys)
    assert code == 1
    assert_one_error_line(err, f"{again / 'custom_images' / 'downloads.csv'}")
    assert [path for path in outputs(again, "custom") if path.exists()] == []
    assert (again / "custom_images" / "downloads.csv").is_file()  # the message points at a file that is there


def _tamper(recipe: dict, split: str, key: str, value) -> dict:
    tampered = json.loads(json.dumps(recipe))
    tampered["sources"][split][key][0] = value
    return tampered


def test_check_recipe_refuses_tampered_origins(server, tmp_path, capsys, recipe_build):
    _, result = recipe_build
    recipe = manifest(result.manifest)
    check_recipe(recipe, "m.json")  # the build's own passes
    image_id, url = recipe["sources"]["train"]["image_ids"][0], recipe["sources"]["train"]["urls"][0]
    head = ("m.json: 1 downloaded images without a <wnid>_<n> image_id, an http(s) URL, a SHA-256 and the path the "
            "download gives them: ")
    tail = "; ask the sender for the manifest written by the build"
    cases = [
        (_tamper(recipe, "train", "paths", f"{image_id[:9]}/{image_id}_x.jpg"), f"train row 0: {image_id!r} {url!r}"),
        (_tamper(recipe, "train", "paths", f"{GOLDFISH}/{GOLDFISH}_99.jpg" if image_id[:9] != GOLDFISH
                 else f"{TENCH}/{TENCH}_99.jpg"), f"train row 0: {image_id!r} {url!r}"),
        (_tamper(recipe, "val", "urls", "file:///etc/passwd"),
         f"val row 0: {recipe['sources']['val']['image_ids'][0]!r} 'file:///etc/passwd'"),
        (_tamper(recipe, "holdout", "sha256", "0" * 63),
         f"holdout row 0: {recipe['sources']['holdout']['image_ids'][0]!r} "
         f"{recipe['sources']['holdout']['urls'][0]!r}"),
        (_tamper(recipe, "train", "image_ids", "n0144_1"), f"train row 0: 'n0144_1' {url!r}"),
    ]
    for tampered, problem in cases:
        with pytest.raises(UserError) as raised:
            check_recipe(tampered, "m.json")
        assert str(raised.value) == head + problem + tail
    short = json.loads(json.dumps(recipe))
    del short["sources"]["val"]["sha256"][-1]
    with pytest.raises(UserError) as raised:
        check_recipe(short, "m.json")
    assert str(raised.value) == head + "val: image_ids, urls and sha256 must be lists as long as paths" + tail
    # through the command line: one line, nothing fetched, nothing written
    server.reset_counts()
    bad = tmp_path / "bad.manifest.json"
    bad.write_text(json.dumps(cases[2][0]))
    code, stdout, err = run_main(["build", "--recipe", bad, "--out_dir", tmp_path / "again", "--workers", 1,
                                  "--quiet"], capsys)
    assert (code, stdout) == (1, "")
    message = f"{head.replace('m.json', str(bad))}{cases[2][1]}{tail}"
    assert assert_one_error_line(err) == f"imagenet-subset: error: {message}"
    assert server.counts() == {}
    assert not (tmp_path / "again").exists()


# --------------------------------------------------------------------------- 7. bad input

def test_bad_input_is_one_error_line(server, tmp_path, capsys):
    served = pets(server, tmp_path)
    out = tmp_path / "out"
    not_a_list = tmp_path / "classes.txt"
    not_a_list.write_text(f"{TENCH}\n{GOLDFISH}\n\n{CHIHUAHUA} some words\n\n")  # blank lines are not counted
    table = tmp_path / "table.csv"
    table.write_text("image_id,url\nn01440764_1,ftp://example.org/1.jpg\nfoo,http://127.0.0.1:1/x.jpg\n\n")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    rejected = tmp_path / "rejected.txt"
    rejected.write_text(f"{'a' * 64}\n# fine\n{'b' * 63}  one digit short\n")
    missing = tmp_path / "nowhere" / "fall11_urls.txt"
    cases = [
        (["--urls", missing], f"--urls {missing}: No such file or directory; pass a readable URL list "
                              "(fall11_urls.txt, or a CSV/TSV with image_id and url columns)"),
        (["--urls", served.path, "--data_dir", tmp_path],
         f"--urls {served.path} and --data_dir {tmp_path} each say where the images are; give one (--download_dir "
         "says where the downloaded ones go)"),
        (["--urls", served.path, "--reject_sha256", rejected],
         f"--reject_sha256 {rejected}, line 3: '{'b' * 63}' is not a hex SHA-256; write one 64-digit digest per line"),
        (["--urls", served.path, "--connections", 0],
         "argument --connections: '0' must be at least 1 (see imagenet-subset --help)"),
        (["--urls", not_a_list], f"--urls {not_a_list}: none of its first 3 lines is <wnid>_<n><TAB><url> or a "
                                 "CSV/TSV row with image_id (or wnid) and url; pass ImageNet's fall11_urls.txt or "
                                 "such a table"),
        (["--urls", table], f"--urls {table}: none of its first 2 lines is <wnid>_<n><TAB><url> or a "
                            "CSV/TSV row with image_id (or wnid) and url; pass ImageNet's fall11_urls.txt or "
                            "such a table"),
        (["--urls", empty], f"--urls {empty} holds no image URLs; pass ImageNet's fall11_urls.txt, or a CSV/TSV with "
                            "image_id (or wnid) and url"),
    ]
    for argv, message in cases:
        for command in ([], ["download"]):
            if command and "--data_dir" in argv:
                continue  # the download command has no --data_dir
            code, stdout, err = run_main([*command, *argv, "--classes", "tench", "--out_dir", out,
                                          *(FAST if not command else ["--quiet"])], capsys)
            assert (code, stdout) == (1, ""), (argv, err)
            if command:
                message = message.replace("(see imagenet-subset --help)", "(see imagenet-subset download --help)")
            assert assert_one_error_line(err) == f"imagenet-subset: error: {message}"
    assert not out.exists()
    assert server.counts() == {}
    with pytest.raises(UserError, match=r"^--connections 0 must be a whole number of connections, at least 1$"):
        BuildOptions(urls=str(served.path), connections=0)


# --------------------------------------------------------------------------- signals (subprocesses)

def slow_list(server: UrlServer, folder: Path, delay: float) -> Served:
    """Two classes of 24 candidates (every fifth a 404), each answer ``delay`` seconds late."""
    rows = []
    for k in range(1, 25):
        for n, wnid in enumerate((TENCH, GOLDFISH)):
            rows.append((f"{wnid}_{k}", (Status(404), "http_404") if k % 5 == 0 else ok(10 * k + n)))
    served = serve_list(server, folder / "slow.txt", rows)
    for img in served.images.values():
        server.routes[served.path_of(img)].delay = delay
    return served


def slow_argv(served: Served, out: Path) -> list[str]:
    return [PYTHON, "main.py", "--urls", str(served.path), "--classes", "tench,goldfish", "--train_per_class", "12",
            "--val_per_class", "3", "--connections", "2", "--out_dir", str(out), *FAST]


def recorded_attempts(folder: Path) -> int:
    """Complete attempt lines in ``folder``'s downloads.csv so far (a running download appends them)."""
    try:
        return max(0, (folder / "downloads.csv").read_bytes().count(b"\n") - 1)
    except FileNotFoundError:
        return 0


def start_and_wait_for_attempts(argv: list[str], folder: Path, rows: int) -> subprocess.Popen:
    """Start ``argv`` from the repository root in a session of its own; return once ``folder``'s
    downloads.csv records ``rows`` attempts (the download is then under way)."""
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=subprocess_env(),
                            start_new_session=True)
    started = time.monotonic()
    try:
        while recorded_attempts(folder) < rows:
            assert proc.poll() is None, f"the build ended before {rows} attempts: {proc.stderr.read()!r}"
            assert time.monotonic() - started < 60, f"no {rows} attempts after 60 s"
            time.sleep(0.01)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    return proc


@pytest.mark.slow
def test_rerun_after_sigkill_fetches_nothing_kept_again_and_gives_the_uninterrupted_archive(server, tmp_path):
    served = slow_list(server, tmp_path, delay=0.2)
    out = tmp_path / "out"
    folder = out / "custom_images"
    proc = start_and_wait_for_attempts(slow_argv(served, out), folder, rows=8)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    proc.stdout.close()
    proc.stderr.close()
    recorded = attempts(folder)
    final = {a["url"] for a in recorded if a["status"] in ("ok", "http_404")}
    assert len(final) >= 8
    assert not (out / "custom_cls.npz").exists()
    assert len({a["image_id"] for a in recorded}) < 30  # killed mid-download
    rerun = subprocess.run(slow_argv(served, out), cwd=REPO, capture_output=True, text=True, timeout=120,
                           env=subprocess_env())
    assert rerun.returncode == 0, rerun.stderr
    kept_before = sum(a["status"] == "ok" for a in recorded)
    assert re.match(rf"downloaded: 30 images kept for 2 labels \({kept_before} from an earlier run\)", rerun.stdout)
    counts = server.counts()
    for url in final:  # kept images and 404s recorded before the kill: fetched once, by the killed run
        assert counts[url.split(str(server.port), 1)[1]] == 1, url
    labels = [expect_label(served.of(wnid), 15, 3, 0) for wnid in (TENCH, GOLDFISH)]
    assert read_csv(folder / "images.csv") == expected_rows(labels)
    # the uninterrupted run (no delays now) writes the same archive
    for behaviour in server.routes.values():
        behaviour.delay = 0
    reference = build(BuildOptions(urls=str(served.path), classes=("tench", "goldfish"), train_per_class=12,
                                   val_per_class=3, out_dir=str(tmp_path / "reference"), **API))
    assert (out / "custom_cls.npz").read_bytes() == reference.archive.read_bytes()
    assert (out / "custom_cls_metadata.csv").read_bytes() == reference.metadata.read_bytes()


def slow_download_argv(served: Served, folder: Path) -> list[str]:
    return [PYTHON, "main.py", "download", "--urls", str(served.path), "--classes", "tench,goldfish",
            "--train_per_class", "12", "--val_per_class", "3", "--connections", "2", "--out_dir", str(folder),
            "--quiet"]


@pytest.mark.slow
@pytest.mark.parametrize("command, stop, code, last_line", [
    ("build", "SIGINT", 130, INTERRUPTED),
    ("download", "SIGINT", 130, INTERRUPTED),
    ("build", "SIGTERM", 143, "imagenet-subset: interrupted (SIGTERM); run the same command with --resume to continue"),
    ("download", "SIGTERM", 143, "imagenet-subset: interrupted (SIGTERM); run the same command to continue the "
                                 "download"),
], ids=["build-SIGINT", "download-SIGINT", "build-SIGTERM", "download-SIGTERM"])
def test_a_download_stopped_by_a_signal_says_how_to_continue_and_does(server, tmp_path, capsys, command, stop, code,
                                                                     last_line):
    """Ctrl-C (SIGINT to the process group, as a terminal sends it) or SIGTERM mid-download: the exit
    code, one last line saying what to run, nothing at the output paths; what it says continues the
    download without fetching again what was kept or failed for good."""
    served = slow_list(server, tmp_path, delay=0.2)
    out = tmp_path / "out"
    folder = out / "custom_images"
    argv = slow_argv(served, out) if command == "build" else slow_download_argv(served, folder)
    proc = start_and_wait_for_attempts(argv, folder, rows=4)
    os.killpg(proc.pid, getattr(signal, stop))
    sent = time.monotonic()
    try:
        ended = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    waited = time.monotonic() - sent
    stderr = proc.stderr.read().decode()
    stdout = proc.stdout.read().decode()
    proc.stdout.close()
    proc.stderr.close()
    assert ended == code, stderr
    assert stderr.rstrip("\n").split("\n")[-1] == last_line
    assert "Traceback" not in stderr
    assert stdout == ""
    assert waited < 5  # at once, not when the answers in flight end
    assert [path for path in outputs(out, "custom") if path.exists()] == []
    assert not (folder / "images.csv").exists()
    assert not (folder / ".partial").exists() or list((folder / ".partial").iterdir()) == []
    recorded = attempts(folder)
    final = {a["url"] for a in recorded if a["status"] in ("ok", "http_404")}
    assert 4 <= len(recorded) < 30
    # what the line says (no delays now)
    for behaviour in server.routes.values():
        behaviour.delay = 0
    rerun = argv[2:] + (["--resume"] if "--resume" in last_line else [])
    again, stdout, err = run_main(rerun, capsys)
    assert again == 0, err
    kept_before = sum(a["status"] == "ok" for a in recorded)
    assert stdout.startswith(f"downloaded: 30 images kept for 2 labels ({kept_before} from an earlier run)")
    counts = server.counts()
    assert all(counts[url.split(str(server.port), 1)[1]] == 1 for url in final)
    labels = [expect_label(served.of(wnid), 15, 3, 0) for wnid in (TENCH, GOLDFISH)]
    assert read_csv(folder / "images.csv") == expected_rows(labels)


@pytest.mark.slow
def test_a_second_download_process_on_the_same_folder_is_refused(server, tmp_path):
    """Two processes: while one downloads into the folder, a second (the download command) is refused."""
    served = slow_list(server, tmp_path, delay=0.2)
    out = tmp_path / "out"
    folder = out / "custom_images"
    proc = start_and_wait_for_attempts(slow_argv(served, out), folder, rows=2)
    try:
        second = subprocess.run([PYTHON, "main.py", "download", "--urls", str(served.path), "--classes", "tench",
                                 "--out_dir", str(folder), "--quiet"], cwd=REPO, capture_output=True, text=True,
                                timeout=60, env=subprocess_env())
        running = proc.poll() is None
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert running, "the first download ended before the second was refused"
    assert second.returncode == 1
    assert second.stdout == ""
    assert assert_one_error_line(second.stderr) == (
        f"imagenet-subset: error: {folder} is in use by another download (pid {proc.pid}); wait for it to end, "
        "or download into another folder")



# --------------------------------------------------------------------------- what a review found

KIT_FOX = "n02119789"  # the class table names it kit_fox, words.txt "kit fox, Vulpes macrotis"


def test_the_folder_is_packed_with_the_labels_chosen_in_the_list(server, tmp_path, capsys):
    """--classes kit_fox matches the class table's name in the list; the downloaded folder names it
    by its words, and is packed with the labels already chosen (not chosen again by name)."""
    rows = [(f"{KIT_FOX}_{k}", ok(k)) for k in range(1, 4)] + [(f"{TENCH}_{k}", ok(10 + k)) for k in range(1, 4)]
    served = serve_list(server, tmp_path / "list.txt", rows)
    out = tmp_path / "out"
    code, _, err = run_main(["--urls", served.path, "--classes", "kit_fox,tench", "--train_per_class", 2,
                             "--out_dir", out, *FAST], capsys)
    assert code == 0, err
    table = read_csv(out / "custom_cls_metadata.csv")
    assert [(row["WNID"], row["human_label"], row["num_train_images"]) for row in table] == [
        (KIT_FOX, "kit fox, Vulpes macrotis", "2"), (TENCH, "tench, Tinca tinca", "2")]
    assert np.bincount(load(out / "custom_cls.npz")["y_train"]).tolist() == [2, 2]


def test_rest_val_is_packed_as_downloaded_with_a_holdout(server, tmp_path):
    """--rest 4 with N=2, M=2 and K=1: rest gets 4 + 1 + 4 working images, and all 4 val ones are
    packed (the packer's own default would scale them by 4 / 5)."""
    rows = [(f"{TENCH}_{k}", ok(k)) for k in range(1, 7)]
    rows += [(f"{wnid}_{k}", ok(100 + 10 * n + k)) for n, wnid in enumerate((GOLDFISH, JELLYFISH, CHIHUAHUA))
             for k in range(1, 6)]
    served = serve_list(server, tmp_path / "list.txt", rows)
    result = build(BuildOptions(urls=str(served.path), classes=("tench",), train_per_class=2, val_per_class=2,
                                holdout_per_class=1, rest=4, out_dir=str(tmp_path / "out"), **API))
    data = load(result.archive)
    assert np.bincount(data["y_train"]).tolist() == [2, 4]
    assert np.bincount(data["y_val"]).tolist() == [2, 4]
    assert np.bincount(data["y_holdout"]).tolist() == [1, 1]
    assert manifest(result.manifest)["options"]["sampling"]["rest_val"] == 4


def test_images_csv_may_name_only_the_files_a_download_writes(server, tmp_path, capsys):
    """A download folder may come from someone else: a row whose path is not
    <split>/<wnid>/<image_id>.jpg|.png is refused before any file is read."""
    served = pets(server, tmp_path)
    out = tmp_path / "out"
    code, _, err = run_main(["--urls", served.path, "--classes", "tench", "--train_per_class", 2, "--out_dir", out,
                             *FAST], capsys)
    assert code == 0, err
    folder = out / "custom_images"
    text = (folder / "images.csv").read_text()
    first = text.splitlines()[1].split(",")
    for bad_path in (f"train//etc/{first[2]}.jpg", f"train/{TENCH}/../../secret.jpg", f"val/{TENCH}/{first[2]}.jpg"):
        (folder / "images.csv").write_text(text.replace(first[1], bad_path, 1))
        code, _, err = run_main(["--data_dir", folder, "--classes", "tench", "--out_dir", tmp_path / "again", *FAST],
                                capsys)
        assert code == 1
        assert assert_one_error_line(err) == (
            f"imagenet-subset: error: {folder / 'images.csv'}, line 2: not a row of a kept image (split 'train', "
            f"path {bad_path!r}, line {first[4]!r}); download again")
