"""Benchmark of downloading from ImageNet's URL lists: fetch throughput, list selection at full scale, end to end.

    python bench/bench_urls.py                               # 1,000 photos from ../shared/imagen; work dir in /tmp
    python bench/bench_urls.py --work_dir /tmp/bench-urls    # keeps (and reuses) the 1.1 GB synthetic list there
    python bench/bench_urls.py --skip_big --delay_ms 100     # fetching only, a slower server

Issue #14's targets, three parts, all in one run:

(1) **Fetch throughput.** A local HTTP server, started by this script in a process of its own
    (``python -c SERVER``: a ``ThreadingHTTPServer`` on 127.0.0.1, HTTP/1.1 keep-alive, listen backlog 256),
    holds every answer back ``--delay_ms`` (50) and then serves the JPEG named by the URL's last path
    segment from ``--images`` (default ``../shared/imagen``: 1,000 real ImageNet photos named
    ``<wnid>_<n>_<label>.jpg``; a folder of other names gets synthetic WNIDs), from memory after its
    first read. ``--labels`` (200) labels of ``--per_label`` (5) photos each (1,000 images; each WNID's
    own photos when the names have enough) become ``packer.download.LabelWork`` lists, each candidate a
    ``packer.urllist.ListedImage(line, image_id, wnid, url)``, ``need`` = all of them, ``val`` = 1. The bench
    process runs ``packer.download.download(labels, folder, DownloadOptions(connections=C, per_host=C,
    progress=False))`` into a fresh folder, C = ``--connections`` (32) and 1: wall time of the call (fetching,
    the SHA-256, the full validation decode, the moves to train/ and val/ and ``images.csv``: all part of a
    download), images/s = kept images / seconds. Every run must keep every image (status ``ok``), else the
    benchmark fails. One untimed run at C first (server cache, bytecode); then ``--repeats`` (3) rounds of
    both, alternated (order reversed every other round), medians; a run during which other processes used
    more than ``benchmark.BUSY_CORES`` cores is run again (``--retry_busy``; not the one-connection case, which
    waits on the server's delay 95% of the time and takes a minute), keeping the quietest. Reported
    with the latency limit C / delay (640/s at 32, 20/s at 1), the ratio of the two in the same run, CPU
    ms per image of the client (the bench process: all download threads) and of the server (its process,
    psutil), the server's count of TCP connections used (keep-alive reuse), and the other load (the
    machine's busy CPU minus the client's and the server's, ``bench_measure.CpuMeter``).
    Targets: >= 400 images/s at 32 connections; <= 20/s at 1 (the contrast: one connection is latency-bound);
    judged only at 50 ms and 32 connections.

(2) **List selection at full scale.** A synthetic ``fall11_urls.txt``: ``--lines`` (14,197,122, as
    ImageNet's) lines ``<wnid>_<n><TAB><url>`` over ``--wnids`` (21,841) WNIDs in WNID order, lognormal
    class sizes clipped at 8x their median (median ~420 lines, largest ~3,300), 88% Flickr-style URLs
    (``http://farm7.static.flickr.com/2146/2229542389_c6b85e2f4a.jpg``) and 12% other hosts; ~1.08 GB,
    written in blocks of 1M lines (about 15 s), kept in the work dir and reused when its description file
    matches and the file has that many lines. In a fresh subprocess each (``python -c SELECT``),
    ``scan_url_list`` then ``select_from_url_list`` of ``--select`` (200) WNIDs drawn at random from the
    list: (a) alone; (b) with a rest pool (``rest_from`` = every other WNID of the list,
    ``rest_candidates`` = ``--rest_candidates``, 50,000); (c) as (a) from the same list in a gzip-compressed
    tar (level 6, ~0.3 GB, cached likewise; ``--skip_tgz`` skips it), as ImageNet shipped it
    (``imagenet_fall11_urls.tgz``): decompressed as read, in both passes. Every case must find every listed
    image of the 200 WNIDs. Reported: the seconds of each call inside the subprocess (interpreter and imports
    apart), the subprocess's whole wall time, and its peak memory as the kernel counts it (``VmHWM``; the RSS
    after imports and the peak after the scan given apart; not ``ru_maxrss``, which Linux carries over
    ``exec`` from the forking bench process, here the generator's memory), warm page cache (each file read
    once before). ``--big_repeats`` (1) rounds, alternated. Targets: scan + select <= 30 s and peak <= 1 GB
    (10^9 bytes), for (a) and (b).

(3) **Download + pack end to end**, the command line of the README,
    ``main.py --urls LIST --subset_name CLASSES --train_per_class 4 --val_per_class 1 --download_dir D
    --out_dir O --workers 2`` (``--train_per_class`` is ``--per_label`` - 1), as a whole process
    (``bench_measure.run_timed``: spawn to exit, peak RSS of the process tree), against the same delaying
    server. LIST holds the photos of (1) in fall11 format, their URLs spread round-robin over the server's
    four addresses 127.0.0.1-127.0.0.4 (the default ``--per_host`` 8 then leaves the default 32
    connections usable, as Flickr's many hosts do); CLASSES names the labels' WNIDs one a line. Fresh D and
    O each round, ``--repeats`` rounds after one untimed run. From the process's own lines: the download's
    seconds (``downloaded: ... in X s``: ``download()`` alone) and the build's (``NAME: ... -> NAME_cls.npz
    (...) in X s``: from the start of ``packer.api.build``, so the list, the download and the packing); the
    difference is reading and choosing from the list, planning and packing; the whole process minus the build
    is the start-up (interpreter, imports). The archive's row counts are checked. When ``main.py`` has no
    ``--urls``, this part says so and is not measured.

Results: the tables to stdout and to ``<results_dir>/urls.md``, ``latest.md`` and ``urls.json``
(``benchmark.write_results``). The work dir, when this run made it, is removed at the end (``--keep``
keeps it); the download folders always are.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

import bench_measure as bm  # noqa: E402
import bench_trees as bt  # noqa: E402
import benchmark as bench  # noqa: E402

log = bench.log
MIB = bm.MIB
PY = sys.executable
TARGETS = {"fetch_many_ips": 400.0, "fetch_one_ips": 20.0, "select_seconds": 30.0, "select_peak_bytes": 1e9}
E2E_HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4")
LIST_VERSION = 2  # of the synthetic list's generator: a cached list of another version is written again
LIST_NAME = "fall11_like_urls.txt"

# The server, in a process of its own: argv = folder, delay in ms, addresses to listen on. Prints
# {address: port} once listening; serves until its stdin closes. GET /_stats: requests and connections.
SERVER = r'''
import http.server, json, os, sys, threading, time, urllib.parse
root, delay, addresses = sys.argv[1], float(sys.argv[2]) / 1000, sys.argv[3:]
cache, lock, stats = {}, threading.Lock(), {"requests": 0, "connections": 0, "missing": 0}

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: urllib3 reuses its connections
    disable_nagle_algorithm = True  # else the body waits on the ACK of the headers (Nagle + delayed ACK)

    def do_GET(self):
        if self.path == "/_stats":
            with lock:
                return self._send(200, json.dumps(stats).encode(), "application/json")
        time.sleep(delay)
        name = os.path.basename(urllib.parse.unquote(urllib.parse.urlsplit(self.path).path))
        body = cache.get(name)
        if body is None:
            try:
                with open(os.path.join(root, name), "rb") as f:
                    body = cache[name] = f.read()
            except OSError:
                pass
        with lock:
            stats["requests"] += 1
            if not getattr(self, "counted", False):  # one handler per connection
                self.counted = True
                stats["connections"] += 1
            if body is None:
                stats["missing"] += 1
        if body is None:
            return self._send(404, b"not found", "text/plain")
        self._send(200, body, "image/jpeg")

    def _send(self, code, body, kind):
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # 32 connections opened at once must not overflow the listen backlog

servers = [Server((address, 0), Handler) for address in addresses]
for server in servers:
    threading.Thread(target=server.serve_forever, daemon=True).start()
print(json.dumps({a: s.server_address[1] for a, s in zip(addresses, servers)}), flush=True)
sys.stdin.read()
'''

# One selection in a fresh process: argv = list, file of WNIDs, seed, rest_candidates (0: no rest pool).
SELECT = r'''
import json, resource, sys, time
started = time.perf_counter()
from packer.urllist import scan_url_list, select_from_url_list

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

path, wnid_file, seed, rest = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
with open(wnid_file) as f:
    wnids = set(f.read().split())
imported, after_imports = time.perf_counter(), status("VmRSS")
scanned = scan_url_list(path)
scanned_at, hwm_scan = time.perf_counter(), status("VmHWM")
rest_from = set(scanned.counts) - wnids if rest else set()
selection = select_from_url_list(scanned, wnids, seed, rest_from, rest)
done = time.perf_counter()
print(json.dumps({
    "imports": imported - started, "scan": scanned_at - imported, "select": done - scanned_at,
    "lines": scanned.lines, "malformed": scanned.malformed, "listed_wnids": len(scanned.counts),
    "selected_wnids": sum(1 for images in selection.by_wnid.values() if images),
    "selected_images": sum(len(images) for images in selection.by_wnid.values()),
    "rest_images": len(selection.rest), "rss_after_imports": after_imports, "hwm_scan": hwm_scan,
    "hwm": status("VmHWM"), "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
'''


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**MISSED**"


# --------------------------------------------------------------------------- the server

class Server:
    """The delaying image server, a subprocess (ended by its pid at the end)."""

    def __init__(self, root: Path, delay_ms: float, addresses=E2E_HOSTS):
        self.proc = subprocess.Popen([PY, "-c", SERVER, str(root), str(delay_ms), *addresses],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"bench_urls: the image server did not start (exit code {self.proc.wait()})")
        self.ports = json.loads(line)
        self.process = psutil.Process(self.proc.pid)

    def url(self, name: str, address: str = "127.0.0.1") -> str:
        return f"http://{address}:{self.ports[address]}/{urllib.parse.quote(name)}"

    def cpu(self) -> float:
        """CPU seconds the server has used so far."""
        t = self.process.cpu_times()
        return t.user + t.system

    def stats(self) -> dict:
        with urllib.request.urlopen(self.url("_stats"), timeout=10) as answer:
            return json.loads(answer.read())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class ServerLoad:
    """The server's CPU and request counts over a measured stretch."""

    def __init__(self, server: Server):
        self.server = server

    def __enter__(self):
        self.cpu, self.counts = self.server.cpu(), self.server.stats()
        return self

    def __exit__(self, *exc):
        self.cpu = self.server.cpu() - self.cpu
        after = self.server.stats()
        self.counts = {key: after[key] - self.counts[key] for key in after}
        return False


# --------------------------------------------------------------------------- the photos and labels

@dataclass(frozen=True)
class Photo:
    name: str  # the file name in --images: the URL's last path segment
    wnid: str
    image_id: str
    size: int


PHOTO_NAME = re.compile(r"^(n\d{8})_(\d+)")


def photo_labels(images: str, labels: int, per_label: int) -> tuple[list[tuple[str, list[Photo]]], str]:
    """``labels`` labels of ``per_label`` distinct photos each, and how they were chosen: each WNID's own
    photos when the file names (``<wnid>_<n>...``) have enough, else synthetic WNIDs over the photos in cycle."""
    photos = bt.photos_in(images)
    by_wnid: dict[str, list[Photo]] = {}
    for path in photos:
        match = PHOTO_NAME.match(path.name)
        if match:
            by_wnid.setdefault(match[1], []).append(
                Photo(path.name, match[1], f"{match[1]}_{match[2]}", path.stat().st_size))
    full = [wnid for wnid, found in sorted(by_wnid.items()) if len(found) >= per_label]
    if len(full) >= labels:
        chosen = [(wnid, by_wnid[wnid][:per_label]) for wnid in full[:labels]]
        return chosen, f"the first {labels} WNIDs of {images} with {per_label} photos each, their own photos"
    if per_label > len(photos):
        raise SystemExit(f"bench_urls: --per_label {per_label} is more than the {len(photos)} photos of {images}")
    chosen = []
    for k in range(labels):
        wnid = f"n9{k:07d}"
        picked = [photos[(k * per_label + j) % len(photos)] for j in range(per_label)]
        chosen.append((wnid, [Photo(p.name, wnid, f"{wnid}_{k * per_label + j + 1}", p.stat().st_size)
                              for j, p in enumerate(picked)]))
    return chosen, f"{len(photos)} photos of {images} in cycle under {labels} synthetic WNIDs"


def label_work(chosen, url_of, val: int = 1):
    """The ``LabelWork`` list of the chosen photos; ``url_of(photo, index)`` their URLs."""
    from packer.download import LabelWork
    from packer.urllist import ListedImage

    works, line = [], 0
    for wnid, photos in chosen:
        candidates = []
        for photo in photos:
            line += 1
            candidates.append(ListedImage(line, photo.image_id, wnid, url_of(photo, line - 1)))
        works.append(LabelWork(wnid, candidates, need=len(photos), val=min(val, len(photos) - 1)))
    return works


# --------------------------------------------------------------------------- (1) fetch throughput

def fetch_once(chosen, server: Server, folder: Path, connections: int) -> dict:
    """One ``download()`` into a fresh ``folder`` (removed afterwards, untimed)."""
    from packer.download import DownloadOptions, download

    shutil.rmtree(folder, ignore_errors=True)
    labels = label_work(chosen, lambda photo, i: server.url(photo.name))
    images = sum(label.need for label in labels)
    options = DownloadOptions(connections=connections, per_host=connections, progress=False)
    os.sync()
    with ServerLoad(server) as load, bm.CpuMeter() as meter:
        result = download(labels, folder, options, seed=0)
    kept = sum(len(label.kept) for label in labels)
    if kept != images or dict(result.statuses) != {"ok": images}:
        raise SystemExit(f"bench_urls: {connections} connection(s) kept {kept} of {images} images "
                         f"(statuses {dict(result.statuses)}); the server or the download is broken")
    shutil.rmtree(folder, ignore_errors=True)
    other = max(0.0, meter.other_cores * meter.seconds - load.cpu) / meter.seconds
    return {"seconds": meter.seconds, "images": kept, "ips": kept / meter.seconds, "cpu": meter.cpu_self,
            "server_cpu": load.cpu, "other": other, "bytes": result.bytes,
            "requests": load.counts["requests"], "connections": load.counts["connections"]}


def measure_fetch(args, chosen, server: Server, work_dir: Path) -> dict:
    folder = work_dir / "fetch"
    many = args.connections
    log(f"(1) fetch: {sum(len(p) for _, p in chosen):,} images; one untimed run at {many} connections")
    fetch_once(chosen, server, folder, many)
    runs = {many: [], 1: []}
    for r in range(args.repeats):
        for connections in ([many, 1] if r % 2 == 0 else [1, many]):
            # one connection is latency-bound (other load hardly matters) and takes a minute: not rerun
            result = bench.quietest_run(lambda c=connections: fetch_once(chosen, server, folder, c),
                                        args.retry_busy if connections > 1 else 0,
                                        f"(1) round {r + 1} {connections} connection(s)", log)
            runs[connections].append(result)
            log(f"(1) round {r + 1}/{args.repeats}, {connections} connection(s): {result['seconds']:.2f} s, "
                f"{result['ips']:.0f} images/s, {result['connections']} TCP connections, "
                f"other load {result['other']:.2f} cores")
    return runs


# --------------------------------------------------------------------------- (2) the big list

def count_lines(path: Path) -> int:
    lines = 0
    with open(path, "rb", buffering=0) as f:
        while block := f.read(1 << 24):
            lines += block.count(b"\n")
    return lines


def class_sizes(rng, wnids: int, lines: int) -> np.ndarray:
    """Lines per WNID, summing to ``lines``: lognormal weights clipped at 8x their median (at full scale a
    median class of ~420 lines, the largest ~3,300; ImageNet-21k averages 650)."""
    weights = np.minimum(rng.lognormal(0.0, 1.0, wnids), 8.0)
    return rng.multinomial(lines, weights / weights.sum())


def write_big_list(path: Path, lines: int, wnids: int, seed: int = 14) -> dict:
    """The synthetic fall11-style list (see the module docstring), and its description."""
    rng = np.random.default_rng(seed)
    numbers = np.sort(rng.choice(np.arange(1_000_000, 15_000_000), wnids, replace=False))
    names = [f"n{n:08d}" for n in numbers.tolist()]
    sizes = class_sizes(rng, wnids, lines)
    owner = np.repeat(np.arange(wnids, dtype=np.int32), sizes)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    hosts = [f"www.{word}{i}.{tld}" for i, (word, tld) in enumerate(
        zip(rng.choice(["photos", "images", "pics", "gallery", "users", "static", "media"], 4000).tolist(),
            rng.choice(["com", "org", "net", "edu", "de", "co.uk", "fr", "jp"], 4000).tolist(), strict=True))]
    paths = ["images", "gallery/albums", "~user/pictures", "wp-content/uploads/2008/07", "photos/large", "img"]
    temporary = path.with_name(path.name + ".tmp")
    block = 1 << 20
    with open(temporary, "wb") as out:
        for a in range(0, lines, block):
            b = min(lines, a + block)
            who = owner[a:b]
            k = np.arange(a, b) - starts[who]
            n = (1 + k * 17 + rng.integers(0, 17, b - a)).tolist()
            farm, server = rng.integers(1, 10, b - a).tolist(), rng.integers(1, 4000, b - a).tolist()
            photo, secret = rng.integers(10**8, 5 * 10**9, b - a).tolist(), rng.integers(0, 1 << 40, b - a).tolist()
            other = (rng.random(b - a) < 0.12).tolist()
            host, where = rng.integers(0, len(hosts), b - a).tolist(), rng.integers(0, len(paths), b - a).tolist()
            text = "".join(
                f"{names[w]}_{i}\thttp://{hosts[h]}/{paths[d]}/{p}.jpg\n" if o else
                f"{names[w]}_{i}\thttp://farm{f}.static.flickr.com/{s}/{p}_{c:010x}.jpg\n"
                for w, i, f, s, p, c, o, h, d in zip(who.tolist(), n, farm, server, photo, secret, other, host, where,
                                                     strict=True))
            out.write(text.encode())
    os.replace(temporary, path)
    return {"version": LIST_VERSION, "seed": seed, "lines": lines, "wnids": wnids,
            "listed_wnids": int(np.count_nonzero(sizes)), "bytes": path.stat().st_size,
            "largest_class": int(sizes.max()), "median_class": float(np.median(sizes)),
            "names": names, "sizes": sizes.tolist()}


def big_list(args, work_dir: Path) -> tuple[Path, dict, float, bool]:
    """The list in ``work_dir/urls`` (written, or reused), its description, seconds to write it, reused?"""
    folder = work_dir / "urls"
    folder.mkdir(parents=True, exist_ok=True)
    path, described = folder / LIST_NAME, folder / (LIST_NAME + ".json")
    want = {"version": LIST_VERSION, "lines": args.lines, "wnids": args.wnids}
    if path.is_file() and described.is_file():
        meta = json.loads(described.read_text())
        if all(meta.get(k) == v for k, v in want.items()) and meta.get("bytes") == path.stat().st_size:
            log(f"(2) checking the cached list {path}")
            if count_lines(path) == args.lines:
                log(f"(2) reusing {path} ({meta['bytes'] / 1e9:.2f} GB)")
                return path, meta, meta.get("write_seconds", float("nan")), True
    log(f"(2) writing a {args.lines:,}-line list over {args.wnids:,} WNIDs to {path}")
    started = time.perf_counter()
    meta = write_big_list(path, args.lines, args.wnids)
    meta["write_seconds"] = time.perf_counter() - started
    described.write_text(json.dumps(meta))
    log(f"(2) wrote {meta['bytes'] / 1e9:.2f} GB in {meta['write_seconds']:.0f} s")
    return path, meta, meta["write_seconds"], False


def big_tgz(path: Path, meta: dict, fresh_list: bool) -> tuple[Path, dict]:
    """The list as ImageNet shipped it, a gzip-compressed tar holding ``fall11_urls.txt`` (level 6), next to
    it: written, or reused when the list was and its description matches."""
    tgz = path.with_suffix(".tgz")
    described = tgz.with_name(tgz.name + ".json")
    want = {"version": LIST_VERSION, "lines": meta["lines"], "source_bytes": meta["bytes"]}
    if not fresh_list and tgz.is_file() and described.is_file():
        tgz_meta = json.loads(described.read_text())
        if all(tgz_meta.get(k) == v for k, v in want.items()) and tgz_meta.get("bytes") == tgz.stat().st_size:
            log(f"(2) reusing {tgz} ({tgz_meta['bytes'] / 1e9:.2f} GB)")
            return tgz, {**tgz_meta, "reused": True}
    log(f"(2) compressing the list to {tgz}")
    started = time.perf_counter()
    temporary = tgz.with_name(tgz.name + ".tmp")
    with tarfile.open(temporary, "w:gz", compresslevel=6) as tar:
        tar.add(path, arcname="fall11_urls.txt")
    os.replace(temporary, tgz)
    tgz_meta = {**want, "bytes": tgz.stat().st_size, "write_seconds": time.perf_counter() - started}
    described.write_text(json.dumps(tgz_meta))
    log(f"(2) wrote {tgz_meta['bytes'] / 1e9:.2f} GB in {tgz_meta['write_seconds']:.0f} s")
    return tgz, {**tgz_meta, "reused": False}


def read_file(path: Path) -> None:
    with open(path, "rb", buffering=0) as f:
        while f.read(1 << 24):
            pass


def select_once(path: Path, rest: int, seed: int, cwd: Path, wnid_file: Path) -> dict:
    result = bm.run_timed([PY, "-c", SELECT, str(path), str(wnid_file), str(seed), str(rest)], cwd=str(cwd))
    inside = json.loads(result.stdout.strip().splitlines()[-1])
    return {**inside, "seconds": inside["scan"] + inside["select"], "process": result.seconds, "cpu": result.cpu,
            "other": result.other_cores, "sampled_rss": result.peak_rss_mib}


def measure_select(args, work_dir: Path) -> dict:
    path, meta, write_seconds, reused = big_list(args, work_dir)
    rng = np.random.default_rng(args.select_seed)
    present = [name for name, size in zip(meta["names"], meta["sizes"], strict=True) if size]
    chosen = sorted(rng.choice(present, min(args.select, len(present)), replace=False).tolist())
    wnid_file = work_dir / "lists" / "select_wnids.txt"
    wnid_file.parent.mkdir(parents=True, exist_ok=True)
    wnid_file.write_text("".join(f"{w}\n" for w in chosen))
    size_of = dict(zip(meta["names"], meta["sizes"], strict=True))
    expected = sum(size_of[w] for w in chosen)
    cases = {"plain": (path, 0), "rest": (path, args.rest_candidates)}
    tgz_meta = None
    if not args.skip_tgz:
        tgz, tgz_meta = big_tgz(path, meta, not reused)
        cases["tgz"] = (tgz, 0)
    log("(2) reading the list once (page cache)")
    for listed, _ in cases.values():
        read_file(listed)
    runs = {name: [] for name in cases}
    for r in range(args.big_repeats):
        for name in (list(cases) if r % 2 == 0 else list(reversed(cases))):
            result = bench.quietest_run(lambda n=name: select_once(*cases[n], 0, work_dir, wnid_file),
                                        args.retry_busy, f"(2) round {r + 1} {name}", log)
            if result["selected_images"] != expected or result["lines"] != args.lines:
                raise SystemExit(f"bench_urls: selection found {result['selected_images']} images over "
                                 f"{result['lines']} lines; the list holds {expected} over {args.lines}")
            runs[name].append(result)
            log(f"(2) round {r + 1}/{args.big_repeats} {name}: scan {result['scan']:.1f} s + select "
                f"{result['select']:.1f} s, peak {result['hwm'] / MIB:.0f} MiB, other load {result['other']:.2f}")
    meta = {k: v for k, v in meta.items() if k not in ("names", "sizes")}
    return {"path": str(path), "meta": meta, "write_seconds": write_seconds, "reused": reused, "wnids": chosen,
            "expected_images": expected, "tgz": tgz_meta,
            "cases": {name: {"list": str(listed), "rest_candidates": rest} for name, (listed, rest) in cases.items()},
            "runs": runs}


# --------------------------------------------------------------------------- (3) end to end

def has_urls_option() -> bool:
    help_text = subprocess.run([PY, bench.MAIN, "--help"], capture_output=True, text=True).stdout
    return "--urls" in help_text


DOWNLOADED = re.compile(r"downloaded: .* in ([0-9.]+) s")
BUILT = re.compile(r" -> \S+\.npz .* in ([0-9.]+) s")


def e2e_once(args, chosen, server: Server, work_dir: Path, list_path: Path, class_path: Path) -> dict:
    download_dir, out_dir = work_dir / "e2e" / "download", work_dir / "e2e" / "out"
    for folder in (download_dir, out_dir):
        shutil.rmtree(folder, ignore_errors=True)
    out_dir.mkdir(parents=True)
    cmd = [PY, bench.MAIN, "--urls", str(list_path), "--subset_name", str(class_path),
           "--train_per_class", str(args.per_label - 1), "--val_per_class", "1",
           "--download_dir", str(download_dir), "--out_dir", str(out_dir), "--workers", str(args.workers)]
    os.sync()
    with ServerLoad(server) as load:
        result = bm.run_timed(cmd, cwd=str(work_dir))
    archive = out_dir / f"{class_path.stem}_cls.npz"
    arrays = bench.open_arrays(archive)
    rows = {split: len(arrays[f"X_{split}"]) for split in ("train", "val")}
    del arrays
    archive_mib = archive.stat().st_size / MIB
    labels = len(chosen)
    if rows != {"train": labels * (args.per_label - 1), "val": labels}:
        raise SystemExit(f"bench_urls: the end-to-end archive holds {rows}, not {labels} labels x "
                         f"({args.per_label - 1} train + 1 val)")
    output = result.stdout + "\n" + result.stderr
    found, packed = DOWNLOADED.findall(output), BUILT.findall(output)
    downloaded, build = (float(found[-1]) if found else None), (float(packed[-1]) if packed else None)
    other = max(0.0, result.other_cores * result.seconds - load.cpu) / result.seconds
    images = rows["train"] + rows["val"]
    shutil.rmtree(work_dir / "e2e", ignore_errors=True)
    return {"seconds": result.seconds, "images": images, "ips": images / result.seconds, "download": downloaded,
            "build": build, "pack": build - downloaded if downloaded is not None and build is not None else None,
            "rest": result.seconds - build if build is not None else None,
            "cpu": result.cpu,
            "server_cpu": load.cpu, "other": other, "rss": result.peak_rss_mib, "pss": result.peak_pss_mib,
            "processes": result.processes, "requests": load.counts["requests"],
            "connections": load.counts["connections"], "archive_mib": archive_mib,
            "output_tail": (result.stdout + result.stderr)[-2000:]}


def measure_e2e(args, chosen, server: Server, work_dir: Path) -> dict:
    if not has_urls_option():
        log("(3) main.py has no --urls option yet: end to end not measured")
        return {"measured": False, "why": "`main.py --help` has no `--urls` option"}
    list_path, class_path = work_dir / "lists" / "e2e_urls.txt", work_dir / "lists" / "e2e_classes.txt"
    list_path.parent.mkdir(parents=True, exist_ok=True)
    lines, index = [], 0
    for _, photos in chosen:
        for photo in photos:
            lines.append(f"{photo.image_id}\t{server.url(photo.name, E2E_HOSTS[index % len(E2E_HOSTS)])}\n")
            index += 1
    list_path.write_text("".join(lines))
    class_path.write_text("".join(f"{wnid}\n" for wnid, _ in chosen))
    log(f"(3) end to end: {index:,} images; one untimed run")
    e2e_once(args, chosen, server, work_dir, list_path, class_path)
    runs = []
    for r in range(args.repeats):
        result = bench.quietest_run(lambda: e2e_once(args, chosen, server, work_dir, list_path, class_path),
                                    args.retry_busy, f"(3) round {r + 1}", log)
        runs.append(result)
        log(f"(3) round {r + 1}/{args.repeats}: {result['seconds']:.2f} s (download "
            f"{bm.fmt(result['download'])} s), {result['ips']:.0f} images/s, other load {result['other']:.2f}")
    return {"measured": True, "runs": runs, "list": str(list_path), "classes": str(class_path),
            "command": f"main.py --urls LIST --subset_name CLASSES --train_per_class {args.per_label - 1} "
                       f"--val_per_class 1 --download_dir D --out_dir O --workers {args.workers}"}


# --------------------------------------------------------------------------- the report

def report(args, m: dict) -> tuple[str, dict]:
    med, many = bm.median, args.connections
    lines = ["# imagenet-subset benchmark (URL lists: fetching, selecting, end to end)", ""]
    key: dict = {}
    fetch = m["fetch"]
    images = fetch[many][0]["images"]
    delay = args.delay_ms / 1000
    ips = {c: med([r["ips"] for r in runs]) for c, runs in fetch.items()}
    secs = {c: med([r["seconds"] for r in runs]) for c, runs in fetch.items()}
    limit = {c: c / delay for c in fetch}
    key.update({"fetch_many_connections": many, "fetch_many_ips": ips[many], "fetch_one_ips": ips[1],
                "fetch_ratio": ips[many] / ips[1], "fetch_many_limit_ips": limit[many],
                "fetch_one_limit_ips": limit[1], "fetch_many_of_limit": ips[many] / limit[many],
                "fetch_many_client_cpu_ms": med([r["cpu"] / r["images"] * 1000 for r in fetch[many]]),
                "fetch_many_server_cpu_ms": med([r["server_cpu"] / r["images"] * 1000 for r in fetch[many]])})
    rows = []
    for c in (many, 1):
        runs = fetch[c]
        rows.append([f"`DownloadOptions(connections={c}, per_host={c})`", bm.fmt(images), bm.fmt(secs[c]),
                     f"**{ips[c]:,.0f}**", f"{ips[c] / ips[1]:.1f}×", f"{limit[c]:,.0f} ({ips[c] / limit[c]:.0%})",
                     bm.fmt(med([r["cpu"] / r["images"] * 1000 for r in runs])),
                     bm.fmt(med([r["server_cpu"] / r["images"] * 1000 for r in runs])),
                     bm.fmt(med([r["connections"] for r in runs]), 0), bm.fmt(med([r["other"] for r in runs])),
                     ", ".join(f"{r['ips']:.0f}" for r in runs)])
    mb = med([r["bytes"] for r in fetch[many]]) / 1e6
    lines += [
        "## (1) Fetch throughput", "",
        f"Photos: {m['photos']}; {images:,} images ({mb:.0f} MB), `need` = all of them. Server: "
        f"`ThreadingHTTPServer` in its own process on 127.0.0.1, every answer held back {args.delay_ms:g} ms. "
        f"`packer.download.download()` in the bench process into a fresh folder (validation, the moves to "
        f"train/val and `images.csv` included); medians of {args.repeats} rounds, alternated, after one untimed "
        f"run; busy runs at {many} connections redone up to {args.retry_busy} time(s) (not at 1 connection: "
        "latency-bound). CPU ms/image: the client (the bench process, "
        "all threads) and the server process; other load excludes both.", "",
        bm.markdown_table(["case", "images", "seconds (median)", "images/s", "× 1 connection",
                           "latency limit (images/s)", "client CPU ms/image", "server CPU ms/image",
                           "TCP connections", "other load (cores)", "runs (images/s)"], rows), ""]
    as_set = args.delay_ms == 50 and many == 32  # the setting issue #14's fetch targets are for
    key["fetch_targets_apply"] = as_set

    def fetch_verdict(ok: bool) -> str:
        return verdict(ok) if as_set else "n/a (set for 50 ms and 32 connections)"

    key_lines = [
        f"- (1) {many} connections: **{ips[many]:,.0f} images/s** ({ips[many] / limit[many]:.0%} of the latency "
        f"limit {limit[many]:,.0f}/s; target >= {TARGETS['fetch_many_ips']:.0f}: "
        f"{fetch_verdict(ips[many] >= TARGETS['fetch_many_ips'])}); 1 connection: **{ips[1]:.1f} images/s** "
        f"(limit {limit[1]:.0f}/s; target <= {TARGETS['fetch_one_ips']:.0f}: "
        f"{fetch_verdict(ips[1] <= TARGETS['fetch_one_ips'])}); ratio **{ips[many] / ips[1]:.1f}×** in the same run"]

    sel = m.get("select")
    if sel is None:
        lines += ["## (2) List selection at full scale", "", "Not measured (`--skip_big`).", ""]
        key_lines.append("- (2) list selection: not measured (`--skip_big`)")
    else:
        meta = sel["meta"]
        names = {"plain": f"(a) {len(sel['wnids'])} WNIDs", "rest": f"(b) {len(sel['wnids'])} WNIDs + rest pool "
                 f"({args.rest_candidates:,} candidates from the other {meta['listed_wnids'] - len(sel['wnids']):,})"}
        if sel["tgz"]:
            names["tgz"] = f"(c) {len(sel['wnids'])} WNIDs, the list as `.tgz` ({sel['tgz']['bytes'] / 1e9:.2f} GB)"
        rows = []
        for name, runs in sel["runs"].items():
            s = {k: med([r[k] for r in runs]) for k in ("scan", "select", "seconds", "process", "other")}
            hwm = max(r["hwm"] for r in runs)
            key[f"select_{name}_seconds"] = s["seconds"]
            key[f"select_{name}_scan_seconds"], key[f"select_{name}_select_seconds"] = s["scan"], s["select"]
            key[f"select_{name}_peak_mib"] = hwm / MIB
            key[f"select_{name}_peak_scan_mib"] = max(r["hwm_scan"] for r in runs) / MIB
            key[f"select_{name}_after_imports_mib"] = med([r["rss_after_imports"] for r in runs]) / MIB
            rows.append([names[name], bm.fmt(s["scan"]), bm.fmt(s["select"]), f"**{s['seconds']:.2f}**",
                         bm.fmt(s["process"]), f"**{hwm / MIB:,.0f}**",
                         bm.fmt(max(r["hwm_scan"] for r in runs) / MIB, 0),
                         bm.fmt(med([r["rss_after_imports"] for r in runs]) / MIB, 0),
                         bm.fmt(runs[0]["selected_images"]), bm.fmt(runs[0]["rest_images"]), bm.fmt(s["other"]),
                         f"{meta['lines'] / s['scan'] / 1e6:.2f}"])
        lines += [
            "## (2) List selection at full scale", "",
            f"A synthetic `fall11_urls.txt`: {meta['lines']:,} lines over {meta['listed_wnids']:,} WNIDs "
            f"({meta['bytes'] / 1e9:.2f} GB; classes of median {meta['median_class']:.0f} and at most "
            f"{meta['largest_class']:,} lines; "
            + (f"reused from the work dir, written in {sel['write_seconds']:.0f} s before" if sel["reused"]
               else f"written in {sel['write_seconds']:.0f} s") + "), warm page cache"
            + (f"; (c) reads the same list from a gzip-compressed tar (level 6, "
               f"{sel['tgz']['bytes'] / 1e9:.2f} GB), as ImageNet shipped it, decompressed as read in both passes"
               if sel["tgz"] else "") + ". "
            f"Each case in a fresh `python -c` process: `scan_url_list` then `select_from_url_list` of "
            f"{len(sel['wnids'])} random WNIDs ({sel['expected_images']:,} listed images); seconds inside the "
            f"process (apart from the interpreter and imports), peak memory = the kernel's `VmHWM` of the "
            f"process (its RSS after the imports apart; not `ru_maxrss`, which Linux carries over `exec` from the "
            f"forking bench process); {args.big_repeats} round(s), alternated.", "",
            bm.markdown_table(["case", "scan_url_list (s)", "select_from_url_list (s)", "scan + select (s)",
                               "whole process (s)", "peak MiB (VmHWM)", "peak after the scan (MiB)",
                               "RSS after imports (MiB)", "selected images", "rest pool", "other load (cores)",
                               "scan M lines/s"], rows), ""]
        worst_s = max(key["select_plain_seconds"], key["select_rest_seconds"])
        worst_peak = max(key["select_plain_peak_mib"], key["select_rest_peak_mib"]) * MIB
        key.update({"select_lines": meta["lines"], "select_list_gb": meta["bytes"] / 1e9})
        tgz_note = ""
        if sel["tgz"]:
            slower = key["select_tgz_seconds"] / key["select_plain_seconds"]
            tgz_note = (f"; from the `.tgz`: {key['select_tgz_seconds']:.1f} s, peak "
                        f"{key['select_tgz_peak_mib']:,.0f} MiB ({slower:.2f}× the plain list's time)")
        key_lines.append(
            f"- (2) selecting {len(sel['wnids'])} WNIDs from {meta['lines']:,} lines: "
            f"**{key['select_plain_seconds']:.1f} s**, "
            f"peak **{key['select_plain_peak_mib']:,.0f} MiB**; with the rest pool: "
            f"**{key['select_rest_seconds']:.1f} s**, peak **{key['select_rest_peak_mib']:,.0f} MiB** (targets "
            f"<= {TARGETS['select_seconds']:.0f} s: {verdict(worst_s <= TARGETS['select_seconds'])}; <= 1 GB: "
            f"{verdict(worst_peak <= TARGETS['select_peak_bytes'])}){tgz_note}")

    e2e = m.get("e2e") or {"measured": False, "why": "`--skip_e2e`"}
    lines += ["## (3) Download + pack, end to end", ""]
    if not e2e["measured"]:
        lines += [f"Not measured: {e2e['why']}.", ""]
        key_lines.append(f"- (3) end to end: not measured ({e2e['why']})")
        key["e2e_measured"] = False
    else:
        runs = e2e["runs"]
        s = {k: med([r[k] for r in runs]) for k in ("seconds", "ips", "download", "pack", "rest", "other", "cpu")}
        n = runs[0]["images"]
        key.update({"e2e_measured": True, "e2e_seconds": s["seconds"], "e2e_ips": s["ips"],
                    "e2e_download_seconds": s["download"], "e2e_list_plan_pack_seconds": s["pack"],
                    "e2e_startup_seconds": s["rest"],
                    "e2e_download_ips": n / s["download"] if s["download"] else None,
                    "e2e_peak_rss_mib": max(r["rss"] for r in runs)})
        rows = [[f"`{e2e['command']}`", bm.fmt(n), f"**{s['seconds']:.2f}**", f"**{s['ips']:,.0f}**",
                 bm.fmt(s["download"]), bm.fmt(n / s["download"], 0) if s["download"] else "–", bm.fmt(s["pack"]),
                 bm.fmt(s["rest"]),
                 bm.fmt(max(r["rss"] for r in runs), 0), bm.fmt(max(r["pss"] for r in runs), 0),
                 bm.fmt(s["cpu"] / n * 1000), bm.fmt(med([r["connections"] for r in runs]), 0), bm.fmt(s["other"]),
                 ", ".join(f"{r['seconds']:.2f}" for r in runs)]]
        lines += [
            f"The photos of (1) as a fall11-format list, their URLs round-robin over {', '.join(E2E_HOSTS)} "
            f"(one server process, {args.delay_ms:g} ms per answer); the {len(m['chosen'])} WNIDs one a line. "
            f"`main.py` as a whole process, fresh download and output folders, medians of {args.repeats} rounds "
            "after one untimed run. From the process's own lines: download seconds (`downloaded: ... in X s`, "
            "`download()` alone) and build seconds (`NAME: ... -> NAME_cls.npz (...) in X s`, from the start of "
            "`packer.api.build`; both printed to 0.1 s); list, plan, pack = build - download (reading and "
            "choosing from the list, planning, packing, metadata); start-up = whole process - build (interpreter, "
            "imports, options).", "",
            bm.markdown_table(["command", "images", "seconds (median)", "images/s", "download (s)",
                               "download images/s", "list, plan, pack (s)", "start-up (s)", "peak MiB (RSS sum)",
                               "peak MiB (PSS)", "CPU ms/image", "TCP connections", "other load (cores)",
                               "runs (s)"], rows), ""]
        key_lines.append(f"- (3) end to end, {n:,} images: **{s['seconds']:.2f} s** ({s['ips']:,.0f} images/s; "
                         f"download {bm.fmt(s['download'])} s, list + plan + pack {bm.fmt(s['pack'])} s, start-up "
                         f"{bm.fmt(s['rest'])} s)")
    lines += ["## Key figures", "", *key_lines, "",
              "## Machine", "", bm.machine_markdown(bm.machine_info(bench.PACKER["description"])), ""]
    data = {"mode": "urls", "photos": m["photos"], "images": images, "delay_ms": args.delay_ms,
            "connections": many, "repeats": args.repeats, "fetch": {str(c): runs for c, runs in fetch.items()},
            "select": sel, "e2e": e2e, "key": key}
    return "\n".join(lines), data


# --------------------------------------------------------------------------- main

def parse_args(argv=None):
    p = bench.script_parser(__doc__, "a folder of JPEGs the server serves")
    p.add_argument("--labels", type=int, default=200, help="labels of (1) and (3) (default: 200)")
    p.add_argument("--per_label", type=int, default=5,
                   help="photos per label (default: 5; (3) packs N-1 train + 1 val)")
    p.add_argument("--delay_ms", type=float, default=50.0, help="the server's delay before every answer (default: 50)")
    p.add_argument("--connections", type=int, default=32, help="the many-connections case of (1) (default: 32)")
    p.add_argument("--repeats", type=int, default=3, help="rounds of (1) and (3) (default: 3)")
    p.add_argument("--lines", type=int, default=14_197_122, help="lines of the synthetic list of (2)")
    p.add_argument("--wnids", type=int, default=21_841, help="WNIDs of the synthetic list (default: 21,841)")
    p.add_argument("--select", type=int, default=200, help="WNIDs selected in (2) (default: 200)")
    p.add_argument("--select_seed", type=int, default=0, help="which WNIDs (2) selects")
    p.add_argument("--rest_candidates", type=int, default=50_000, help="(2b)'s rest pool (default: 50,000)")
    p.add_argument("--big_repeats", type=int, default=1, help="rounds of (2) (default: 1)")
    p.add_argument("--skip_big", action="store_true", help="skip (2), the full-scale list")
    p.add_argument("--skip_tgz", action="store_true", help="skip (2c), the list as a .tgz")
    p.add_argument("--skip_e2e", action="store_true", help="skip (3), main.py end to end")
    p.add_argument("--workers", type=int, default=2, help="main.py --workers in (3) (default: 2)")
    p.add_argument("--work_dir", help="the synthetic list (cached there) and the downloads (default: a new folder "
                                      "in /tmp, removed at the end)")
    p.add_argument("--results_dir", default=str(BENCH_DIR / "results"))
    p.add_argument("--keep", action="store_true", help="keep a work dir made by this run")
    bench.add_shared_options(p)
    args = p.parse_args(argv)
    if min(args.labels, args.per_label, args.connections, args.repeats, args.lines, args.wnids, args.select,
           args.big_repeats, args.workers) < 1 or args.delay_ms <= 0 or args.rest_candidates < 0:
        p.error("counts must be at least 1, --delay_ms above 0, --rest_candidates at least 0")
    if args.per_label < 2:
        p.error("--per_label must be at least 2 (one val image per label)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    with bench.bench_work_dir(args, "urls") as work_dir:
        chosen, photos = photo_labels(args.images, args.labels, args.per_label)
        if args.wait_quiet > 0:
            load = bm.wait_for_quiet(args.wait_quiet * 60, log=log)
            log(f"starting; machine load over the last 30 s: {load:.2f} cores")
        server = Server(Path(args.images).resolve(), args.delay_ms)
        try:
            measured = {"photos": photos, "chosen": [wnid for wnid, _ in chosen],
                        "fetch": measure_fetch(args, chosen, server, work_dir)}
            if not args.skip_big:
                measured["select"] = measure_select(args, work_dir)
            if not args.skip_e2e:
                measured["e2e"] = measure_e2e(args, chosen, server, work_dir)
        finally:
            server.close()
    text, data = report(args, measured)
    bench.write_results(args.results_dir, "urls", text, data, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
