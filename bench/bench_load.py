"""Benchmark of loading for training: ``packer.batches`` and ``packer.torch.loader`` against ImageFolder.

    python bench/bench_load.py                           # real photos from ../shared/imagen, work dir in /tmp
    python bench/bench_load.py --repeats 5 --wait_quiet 5 --work_dir /tmp/bench-load

Needs torch and torchvision in the running interpreter for the ImageFolder and ``packer.torch`` rows;
without torchvision the ImageFolder rows say "not measured: torchvision not installed" (without torch,
the ``packer.torch`` rows too), the ``packer.batches`` rows are measured all the same, and the script
exits 0.

The data (``benchmark.default_subset``): a Kaggle-layout tree of ``--classes`` x ``--train_per_class``
train images (default 10 x 270 = 2,700, no val), symlinks to the photos of ``--images`` in cycle,
packed by ``main.py`` with ``--workers`` workers (default 256/224, channels last, stored); and, for
memory, a big archive of ``--classes`` x ``--big_train_per_class`` rows (default 20,000, 3.0 GB) packed
the same way from a second tree (0: no big archive). ImageFolder reads the tree's ``train/`` folder.

Each case is one shuffled epoch of the train split in a fresh process (``python -c``; the imports and
the making of the dataset and loader untimed), timed from ``iter()`` (worker start-up included) to
the last batch; the loop reads one value per 4 KiB page of each batch ``X`` (so a batch is mapped in
the consuming process, as a training step would have it; no computation):

  (IF) torchvision ``ImageFolder`` + ``Resize(256)``, ``CenterCrop(224)``, ``ToTensor()``,
       ``Normalize`` (ImageNet's mean and std) in a ``DataLoader(batch_size, shuffle=True,
       num_workers=--workers)``, seeded;
  (PT) ``packer.torch.loader(archive, "train", batch_size, num_workers=--workers, normalize="imagenet",
       prefetch=--prefetch)``:
       float32 NCHW tensors, normalized as (IF), the like-for-like comparison;
  (PU) ``packer.torch.loader(..., dtype="uint8")``: the same DataLoader delivering uint8 NCHW tensors
       (normalizing left to the training step, e.g. on the GPU; warm only);
  (BU) ``packer.batches(archive, dtype="uint8", prefetch=--prefetch)`` in-process: the stored bytes (NHWC);
  (BF) ``packer.batches(archive, normalize="imagenet", layout="nchw")`` in-process: what (PT) yields;
  (BH) ``packer.batches(archive, normalize="imagenet")``: the same in the default layout (NHWC; warm only).

Page cache: "warm", every file of the case read once just before (untimed); "cold", every file's pages
written back and dropped with ``posix_fadvise(POSIX_FADV_DONTNEED)`` just before (the archive; for (IF)
every photo the tree's symlinks point to). The share of the files' pages resident just before the
epoch is checked with ``mincore`` and reported. The tree cycles over the photos of ``--images``, so in a
cold (IF) epoch only the first reading of each photo comes from the disk (1,000 of 2,700 with
../shared/imagen): the cold ImageFolder figure is a best case for ImageFolder.

Memory, in the process that iterates (and its DataLoader workers): the baseline is its RSS just before
``iter()`` (after the imports and the loader's making), and each worker's RSS when it starts (its
``worker_init_fn``, set on the loader; it also resets the worker's peak). Reported: the kernel's peak
RSS (``VmHWM``, reset with ``/proc/self/clear_refs`` at the baseline) above the baseline, exact for one
process, summed over the processes for a DataLoader (an upper bound of the tree's peak; not told
when workers exited before the end of the epoch, as (IF)'s do); the peak of the tree's RSS sum above
the baseline sum, and of its PSS sum above the process's PSS before ``iter()`` (shared memory, e.g. a
batch passed from a worker, counted once), sampled every ~20 ms (``bench_measure.TreeMemorySampler``;
not told when an epoch is too short to see every process), the largest over the rounds. Judged against
the bound of issue #16, one batch (``--batch_size`` rows of the delivered dtype) times (``--prefetch``
+ 2): the kernel's peak for ``packer.batches``, the sampled RSS sum for a DataLoader (``packer.torch.loader``
is given the same ``prefetch``; ImageFolder's DataLoader reads ``prefetch_factor`` 2 batches ahead per
worker). A consumer that reads each batch at once keeps
the read-ahead nearly empty, so (PT), (BU) and (BF) are also run, for memory, with a consumer that
sleeps ``--step_ms`` (100) per batch (a training step that leaves the cores to the loader): the
read-ahead fills up, the worst case for the bound.

Cases (all the above: warm, cold, (PT), (BU), (BF) on the big archive, and the sleeping consumer on
both archives) are alternated (order reversed every other round), medians of ``--repeats`` rounds,
after one untimed epoch of each kind; a case during which other processes used more than
``benchmark.BUSY_CORES`` cores is run again up to ``--retry_busy`` times, keeping the quietest.
Reported, all from the same run: images/s, the ratio to (IF) with the same page cache (issue #16: (PT)
>= 10x warm, >= 3x cold), per round and by CPU time too, the memory against the bound at both archive
sizes; and where the time goes, measured once: the stages of a batch in-process (best of 5), the
``packer.torch`` loader's two stages as it runs (a worker's read into a shared buffer, the training
process's float32 formatting), and one (IF) image.

The archives are removed at the end (``--keep`` keeps them), and so is the work dir when this run made
it. The tables go to stdout and to ``<results_dir>/load.md``, ``latest.md`` and ``load.json``.
"""
import argparse
import ctypes
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

import bench_measure as bm  # noqa: E402
import benchmark as bench  # noqa: E402

log = bench.log
MIB = bm.MIB
TARGETS = {"warm": 10.0, "cold": 3.0}
PAGE = os.sysconf("SC_PAGE_SIZE")
BIG_FREE_FACTOR = 1.5  # the big archive is built only with this times its size free

# One epoch in a fresh process: the spec (JSON) as argv[1], one JSON line on stdout.
EPOCH_CHILD = r"""
import gc, json, os, resource, sys, time
spec = json.loads(sys.argv[1])
sys.path.insert(0, spec["bench_dir"])
import bench_measure as bm
import psutil

PAGE = os.sysconf("SC_PAGE_SIZE")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # torchvision's, as packer's "imagenet"

def rss(pid="self"):
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE

def status(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return None

def pss(pid="self"):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None

def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False

def worker_started(worker_id):
    record = {"pid": os.getpid(), "rss": rss(), "reset": reset_peak()}
    with open(os.path.join(spec["init_dir"], f"{os.getpid()}.json"), "w") as f:
        f.write(json.dumps(record))

def cpu_now():
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

kind = spec["kind"]
if kind == "folder":
    import torch
    from torchvision import datasets, transforms
    transform = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                                    transforms.Normalize(MEAN, STD)])
    data = datasets.ImageFolder(spec["path"], transform=transform)
    loader = torch.utils.data.DataLoader(data, batch_size=spec["batch_size"], shuffle=True,
                                         num_workers=spec["workers"], worker_init_fn=worker_started,
                                         generator=torch.Generator().manual_seed(spec["seed"]))
elif kind == "torch":
    import torch
    import packer.torch
    loader = packer.torch.loader(spec["path"], "train", batch_size=spec["batch_size"], num_workers=spec["workers"],
                                 seed=spec["seed"], prefetch=spec["prefetch"], **spec["options"])
    loader.worker_init_fn = worker_started  # measurement only: the workers' baselines
else:
    import packer
    loader = packer.batches(spec["path"], "train", batch_size=spec["batch_size"], seed=spec["seed"], epoch=0,
                            prefetch=spec["prefetch"], **spec["options"])

gc.collect()
base_rss, base_pss = rss(), pss()
reset = reset_peak()
cpu_before = cpu_now()
sampler = bm.TreeMemorySampler(os.getpid(), refresh=0.05)
sampler.start()
images, first, shape, dtype, touched = 0, None, None, None, 0.0
started = time.perf_counter()
for X, y in loader:
    flat = X.reshape(-1)
    touched += float(flat[::max(1, PAGE // X.itemsize)].sum())
    images += len(X)
    if first is None:
        first = time.perf_counter() - started
        shape, dtype = list(X.shape), str(X.dtype)
    if spec["step"]:
        time.sleep(spec["step"])  # a training step that leaves the cores to the loader
seconds = time.perf_counter() - started
sampler.stop()
peak_self = status("self", "VmHWM") if reset else None
workers = []
for name in sorted(os.listdir(spec["init_dir"])):
    with open(os.path.join(spec["init_dir"], name)) as f:
        record = json.load(f)
    try:
        proc = psutil.Process(record["pid"])
        times = proc.cpu_times()
        record["cpu"] = times.user + times.system
        record["peak"] = status(record["pid"], "VmHWM") if record["reset"] else None
        record["alive"] = True
    except (psutil.Error, OSError, TypeError):
        record.update(cpu=None, peak=None, alive=False)
    workers.append(record)
cpu = cpu_now() - cpu_before + sum(w["cpu"] or 0.0 for w in workers)
worker_base = sum(w["rss"] for w in workers)
peaks = [peak_self] + [w["peak"] if w["alive"] else None for w in workers]  # None: a worker exited
seen = sampler.max_processes >= 1 + len(workers)
print(json.dumps({
    "images": images, "seconds": seconds, "first_batch": first, "shape": shape, "dtype": dtype, "cpu": cpu,
    "base_rss": base_rss, "base_pss": base_pss, "workers": len(workers), "worker_base_rss": worker_base,
    "workers_alive": sum(w["alive"] for w in workers),
    "hwm_above": (sum(p - b for p, b in zip(peaks, [base_rss] + [w["rss"] for w in workers]))
                  if None not in peaks else None),
    # None: the sampler never saw every process at once (an epoch shorter than its refresh)
    "tree_rss_above": sampler.peak_rss - base_rss - worker_base if seen else None,
    "tree_pss_above": sampler.peak_pss - base_pss if seen and base_pss is not None else None,
    "processes": sampler.max_processes, "touched": touched,
}))
"""

# Where the time of a batch goes, measured once: JSON spec as argv[1], one JSON line on stdout.
STAGES_CHILD = r"""
import json, statistics, sys, time
import numpy as np
spec = json.loads(sys.argv[1])
import packer

def best(f, n=5):
    times = []
    for i in range(n):
        started = time.perf_counter()
        f(i)
        times.append(time.perf_counter() - started)
    return min(times)

def epoch(**options):  # the row reader and the batch format of packer.batches (fields of what it returns)
    made = packer.batches(spec["path"], "train", batch_size=spec["batch_size"], **options)
    return made.rows, made.format

rows, _ = epoch(dtype="uint8")
size = min(spec["batch_size"], len(rows))
order = np.random.default_rng(0).permutation(len(rows))
chunks = [order[(i * size) % max(1, len(rows) - size + 1):][:size] for i in range(5)]
stored = rows.read(chunks[0])
out = {"batch": size, "read": best(lambda i: rows.read(chunks[i]))}
for name, options in (("uint8_nchw", {"dtype": "uint8", "layout": "nchw"}),
                      ("float32_nchw", {"normalize": "imagenet", "layout": "nchw"}),
                      ("float32_nhwc", {"normalize": "imagenet", "layout": "nhwc"})):
    fmt = epoch(**options)[1]
    out[name] = best(lambda i: fmt.apply(stored, rows.layout))
try:
    import torch
    import torch.utils.data
    import packer.torch
except ImportError:
    torch = None
if torch is not None:
    # packer.torch.loader(normalize="imagenet") as it runs, its second epoch: in its workers, the
    # reading of a batch (uint8, the loader's layout) into a shared buffer; in this process, the
    # float32 formatting of a batch from that buffer. Workers are forked, so the wrapped functions
    # are theirs too; they write their times into shared memory, a row per worker.
    import packer.torch as pt
    workers = spec["workers"]
    worker_times = torch.zeros((max(1, workers), 64), dtype=torch.float64).share_memory_()
    worker_counts = torch.zeros(max(1, workers), dtype=torch.int64).share_memory_()
    read_formatted, formatted, main_times = pt.read_formatted, pt.ArchiveDataset.formatted, []

    def timed_read(*args, **options):
        started = time.perf_counter()
        result = read_formatted(*args, **options)
        info = torch.utils.data.get_worker_info()
        slot = info.id if info is not None else 0
        if int(worker_counts[slot]) < worker_times.shape[1]:
            worker_times[slot, int(worker_counts[slot])] = time.perf_counter() - started
            worker_counts[slot] += 1
        return result

    def timed_formatted(self, *args, **options):
        started = time.perf_counter()
        result = formatted(self, *args, **options)
        main_times.append(time.perf_counter() - started)
        return result

    pt.read_formatted, pt.ArchiveDataset.formatted = timed_read, timed_formatted
    made = pt.loader(spec["path"], "train", batch_size=size, num_workers=workers, normalize="imagenet")
    for _ in made:
        pass
    worker_counts.zero_()
    main_times.clear()
    for _ in made:
        pass
    times = [float(worker_times[w, i]) for w in range(len(worker_counts)) for i in range(int(worker_counts[w]))]
    out["worker_read"] = statistics.median(times) if times else None
    out["main_format"] = statistics.median(main_times) if main_times else None
    out["loader_workers"] = workers
if spec.get("folder"):
    try:
        from torchvision import datasets, transforms
    except ImportError:
        datasets = None
    if datasets is not None:
        transform = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                                        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
        folder = datasets.ImageFolder(spec["folder"], transform=transform)
        picks = np.random.default_rng(0).permutation(len(folder))[:min(64, len(folder))].tolist()
        folder[picks[0]]
        started = time.perf_counter()
        for i in picks:
            folder[i]
        out["folder_image"] = (time.perf_counter() - started) / len(picks)
print(json.dumps(out))
"""


# --------------------------------------------------------------------------- page cache

def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    return libc


def resident_share(paths: list[Path]) -> float | None:
    """The share of the files' pages in the page cache (``mincore``), None where it cannot be told."""
    try:
        libc = _libc()
    except (OSError, AttributeError):
        return None
    total = resident = 0
    for path in paths:
        size = os.path.getsize(path)
        if not size:
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            address = libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
            if address in (None, ctypes.c_void_p(-1).value):
                return None
            pages = (size + PAGE - 1) // PAGE
            vector = (ctypes.c_ubyte * pages)()
            failed = libc.mincore(address, size, vector)
            libc.munmap(address, size)
            if failed:
                return None
            total += pages
            resident += sum(v & 1 for v in vector)
        finally:
            os.close(fd)
    return resident / total if total else None


def drop_pages(paths: list[Path]) -> None:
    """Write back and drop these files' pages from the page cache (not the machine's whole cache)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_through(paths: list[Path]) -> None:
    for path in paths:
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass


# --------------------------------------------------------------------------- the cases

def probe(module: str) -> tuple[bool, str]:
    """Whether ``import <module>`` works in this interpreter: (True, its version) or (False, why not)."""
    proc = subprocess.run([bench.PY, "-c", f"import {module}; print({module}.__version__)"], capture_output=True,
                          text=True)
    if proc.returncode == 0:
        return True, f"{module} {proc.stdout.strip()}"
    last = (proc.stderr.strip().splitlines() or ["?"])[-1]
    if "ModuleNotFoundError" in last:
        return False, f"{last.split(' ')[-1].strip(chr(39))} not installed"
    return False, f"{module} fails to import ({last[:160]})"


def case_table(big: bool, step: float) -> dict[str, dict]:
    """Case key -> label, loader kind, options, archive ("small"/"big"), page cache, the consumer's sleep
    per batch (``step``, seconds), what it needs."""
    folder = {"kind": "folder", "needs": "torchvision",
              "label": "(IF) ImageFolder + Resize/CenterCrop/ToTensor/Normalize, DataLoader"}
    loader = {"kind": "torch", "needs": "torch", "options": {"normalize": "imagenet"},
              "label": "(PT) `packer.torch.loader(normalize=\"imagenet\")`, DataLoader"}
    loader_uint8 = {"kind": "torch", "needs": "torch", "options": {"dtype": "uint8"},
                    "label": "(PU) `packer.torch.loader(dtype=\"uint8\")`, DataLoader (NCHW)"}
    uint8 = {"kind": "batches", "options": {"dtype": "uint8"},
             "label": "(BU) `packer.batches(dtype=\"uint8\")`, in-process"}
    nchw = {"kind": "batches", "options": {"normalize": "imagenet", "layout": "nchw"},
            "label": "(BF) `packer.batches(normalize=\"imagenet\", layout=\"nchw\")`, in-process"}
    nhwc = {"kind": "batches", "options": {"normalize": "imagenet"},
            "label": "(BH) `packer.batches(normalize=\"imagenet\")` (NHWC), in-process"}
    table = {}
    for cache in ("warm", "cold"):
        for name, case in (("IF", folder), ("PT", loader), ("PU", loader_uint8), ("BU", uint8), ("BF", nchw),
                           ("BH", nhwc)):
            if name in ("PU", "BH") and cache == "cold":
                continue
            table[f"{name}_{cache}"] = {**case, "archive": "small", "cache": cache, "name": name, "step": 0.0}
    memory = (("PT", loader), ("BU", uint8), ("BF", nchw))
    if big:
        for name, case in memory:
            table[f"{name}_big"] = {**case, "archive": "big", "cache": "warm", "name": name, "step": 0.0}
    if step > 0:
        for archive in ("small", "big") if big else ("small",):
            for name, case in memory:
                table[f"{name}_{'big' if archive == 'big' else 'small'}_slow"] = {
                    **case, "archive": archive, "cache": "warm", "name": name, "step": step}
    return table


def files_of(case: dict, data: dict) -> list[Path]:
    """The files a case reads: the archive, or every photo the tree's symlinks point to."""
    if case["kind"] == "folder":
        return data["photos"]
    return [data["archives"][case["archive"]]]


def run_epoch(args, case: dict, data: dict, work_dir: Path) -> dict:
    """One epoch of ``case`` in a fresh process after preparing the page cache (untimed)."""
    files = files_of(case, data)
    if case["cache"] == "cold":
        drop_pages(files)
    else:
        read_through(files)
    resident = resident_share(files)
    init_dir = work_dir / "worker-init"
    shutil.rmtree(init_dir, ignore_errors=True)
    init_dir.mkdir(parents=True)
    path = data["folder"] if case["kind"] == "folder" else data["archives"][case["archive"]]
    spec = {"kind": case["kind"], "path": str(path), "batch_size": args.batch_size, "workers": args.workers,
            "prefetch": args.prefetch, "seed": args.seed, "options": case.get("options", {}), "step": case["step"],
            "bench_dir": str(BENCH_DIR), "init_dir": str(init_dir)}
    result = bm.run_timed([bench.PY, "-c", EPOCH_CHILD, json.dumps(spec)], cwd=str(work_dir), sample=False)
    child = json.loads(result.stdout.strip().splitlines()[-1])
    return {**child, "resident": resident, "other": result.other_cores, "process_seconds": result.seconds}


def run_case(args, case: dict, data: dict, work_dir: Path) -> dict:
    """``run_epoch``, again (up to ``--retry_busy`` times) while other processes were busy, keeping the quietest."""
    return bench.quietest_run(lambda: run_epoch(args, case, data, work_dir), args.retry_busy)


def build(args, work_dir: Path, train_per_class: int, what: str) -> tuple[bench.Subset, Path]:
    """A tree of ``--classes`` x ``train_per_class`` symlinks (``benchmark.default_subset``), packed by ``main.py``."""
    options = argparse.Namespace(**{**vars(args), "train_per_class": train_per_class, "val_per_class": 0})
    subset = bench.default_subset(options, work_dir)
    out = work_dir / "out"
    out.mkdir(parents=True, exist_ok=True)
    log(f"packing the {what} archive: {len(subset):,} images, {args.workers} workers")
    result = bench.case_packer(subset, out, args.workers)
    log(f"packed in {result['seconds']:.1f} s: {subset.archive(out)} ({result['output']:.0f} MiB)")
    return subset, subset.archive(out)


def measure(args, work_dir: Path) -> dict:
    availability = {"torch": probe("torch"), "torchvision": probe("torchvision")}
    for name, (ok, text) in availability.items():
        log(f"{name}: {text}" if ok else f"{name}: not measured: {text}")
    subset, archive = build(args, work_dir, args.train_per_class, "small")
    folder = subset.data_dir / "train"
    photos = sorted({Path(p).resolve() for p in subset.paths})
    data = {"folder": folder, "photos": photos, "archives": {"small": archive}}
    header = bench.open_arrays(archive)["X_train"]
    row_shape, rows = tuple(header.shape[1:]), int(header.shape[0])
    del header
    big_note = None
    if args.big_train_per_class:
        need = args.classes * args.big_train_per_class * math.prod(row_shape)
        free = shutil.disk_usage(work_dir).free
        if free < BIG_FREE_FACTOR * need:
            big_note = (f"not measured: {work_dir} has {free / 2**30:.1f} GiB free, the big archive needs "
                        f"{need / 2**30:.1f} GiB (x{BIG_FREE_FACTOR})")
            log(f"big archive {big_note}")
        else:
            _, data["archives"]["big"] = build(args, work_dir / "big", args.big_train_per_class, "big")
    else:
        big_note = "not measured: --big_train_per_class 0"
    big_rows = int(bench.open_arrays(data["archives"]["big"])["X_train"].shape[0]) if "big" in data["archives"] else 0
    table = case_table("big" in data["archives"], args.step_ms / 1000)
    skipped = {key: availability[case["needs"]][1] for key, case in table.items()
               if case.get("needs") and not availability[case["needs"]][0]}
    timed = [key for key in table if key not in skipped]
    log(f"{rows:,} rows of {row_shape} ({archive.stat().st_size / MIB:,.0f} MiB)"
        + (f", big archive {big_rows:,} rows ({data['archives']['big'].stat().st_size / MIB:,.0f} MiB)" if big_rows
           else "") + f"; {len(timed)} cases, {len(skipped)} not measured; one untimed epoch of each kind")
    for key in dict.fromkeys(f"{table[k]['name']}_warm" for k in timed):
        run_epoch(args, table[key], data, work_dir)
    if args.wait_quiet > 0:
        load = bm.wait_for_quiet(args.wait_quiet * 60, log=log)
        log(f"starting; machine load over the last 30 s: {load:.2f} cores")
    runs: dict[str, list[dict]] = {key: [] for key in timed}
    for r in range(args.repeats):
        for key in (timed if r % 2 == 0 else list(reversed(timed))):
            result = run_case(args, table[key], data, work_dir)
            runs[key].append(result)
            log(f"round {r + 1}/{args.repeats} {key}: {result['images']} images in {result['seconds']:.2f} s "
                f"({result['images'] / result['seconds']:,.0f}/s), first batch {result['first_batch']:.2f} s, "
                f"peak +{(result['hwm_above'] or result['tree_rss_above'] or 0) / MIB:.0f} MiB, "
                f"resident {100 * (result['resident'] or 0):.0f}%, "
                f"other load {result['other']:.2f} cores")
    log("where the time goes (one process, once)")
    spec = {"path": str(archive), "batch_size": args.batch_size, "workers": args.workers,
            "folder": str(folder) if availability["torchvision"][0] else None}
    read_through([archive, *photos])
    stages = json.loads(bm.run_timed([bench.PY, "-c", STAGES_CHILD, json.dumps(spec)], cwd=str(work_dir),
                                     sample=False).stdout.strip().splitlines()[-1])
    sizes = {name: path.stat().st_size for name, path in data["archives"].items()}
    if not args.keep:
        shutil.rmtree(work_dir / "out", ignore_errors=True)
        shutil.rmtree(work_dir / "big" / "out", ignore_errors=True)
    return {"subset": subset, "rows": rows, "big_rows": big_rows, "row_shape": row_shape, "sizes": sizes,
            "photos": len(photos), "table": table, "runs": runs, "skipped": skipped, "big_note": big_note,
            "availability": availability, "stages": stages}


# --------------------------------------------------------------------------- report

def batch_bytes(args, m: dict, case: dict) -> int:
    """One full batch of what ``case`` delivers: uint8 for (BU), float32 otherwise."""
    itemsize = 1 if case.get("options", {}).get("dtype") == "uint8" else 4
    return args.batch_size * math.prod(m["row_shape"]) * itemsize


def key_figures(args, m: dict) -> dict:
    runs, table = m["runs"], m["table"]
    rate = {key: bm.median([x["images"] / x["seconds"] for x in r]) for key, r in runs.items()}
    cpu = {key: bm.median([x["cpu"] / x["images"] * 1000 for x in r]) for key, r in runs.items()}
    ratios, per_round, cpu_ratios = {}, {}, {}
    for key in runs:
        base = f"IF_{table[key]['cache']}"
        if table[key]["name"] != "IF" and table[key]["archive"] == "small" and not table[key]["step"] and base in runs:
            ratios[key] = rate[key] / rate[base]
            cpu_ratios[key] = cpu[base] / cpu[key]
            per_round[key] = [x["images"] / x["seconds"] / (b["images"] / b["seconds"])
                              for x, b in zip(runs[key], runs[base], strict=True)]
    memory = {}
    for key, r in runs.items():
        case = table[key]
        bound = batch_bytes(args, m, case) * (args.prefetch + 2)
        figures = {name: max((x[name] for x in r if x[name] is not None), default=None)
                   for name in ("hwm_above", "tree_rss_above", "tree_pss_above")}
        judged = figures["hwm_above"] if case["kind"] == "batches" else figures["tree_rss_above"]
        memory[key] = {**figures, "bound": bound, "batch": batch_bytes(args, m, case),
                       "within": None if case["name"] == "IF" or judged is None else judged < bound,
                       "judged": judged}
    return {"images_per_second": rate, "ratio": ratios, "ratio_per_round": per_round, "cpu_ratio": cpu_ratios,
            "memory": memory,
            "seconds": {key: bm.median([x["seconds"] for x in r]) for key, r in runs.items()},
            "first_batch": {key: bm.median([x["first_batch"] for x in r]) for key, r in runs.items()},
            "cpu_ms_per_image": cpu,
            "other_load": {key: bm.median([x["other"] for x in r]) for key, r in runs.items()},
            "reruns": sum(x["attempts"] - 1 for r in runs.values() for x in r)}


def _largest(values: list) -> float | None:
    return max(values) if values and None not in values else None


def report(args, m: dict) -> tuple[str, dict]:
    k, runs, table = key_figures(args, m), m["runs"], m["table"]

    def verdict(ok: bool) -> str:
        return "**met**" if ok else "**MISSED**"

    def mib(value) -> str:
        return "–" if value is None else f"{value / MIB:,.0f}"

    def resident(r: list[dict]) -> str:
        shares = [x["resident"] for x in r if x["resident"] is not None]
        low, high = (f"{100 * v:.0f}%" for v in (min(shares), max(shares))) if shares else ("?", "?")
        return low if low == high else f"{low}–{high}"

    def data_of(case: dict) -> str:
        if case["kind"] == "folder":
            return f"tree, {m['rows']:,} JPEGs"
        return f"{m['rows']:,} rows" if case["archive"] == "small" else f"{m['big_rows']:,} rows (big)"

    def consumer(case: dict) -> str:
        return f"sleeps {case['step'] * 1000:.0f} ms per batch" if case["step"] else "reads each batch"

    rows = []
    for key, case in table.items():
        if case["step"]:
            continue
        if key in m["skipped"]:
            rows.append([case["label"], data_of(case), case["cache"], f"not measured: {m['skipped'][key]}"]
                        + [""] * 7)
            continue
        r, mem = runs[key], k["memory"][key]
        ratio = k["ratio"].get(key)
        rows.append([
            case["label"], data_of(case), case["cache"], bm.fmt(r[0]["images"]), bm.fmt(k["seconds"][key]),
            f"**{k['images_per_second'][key]:,.0f}**", "1.00x" if case["name"] == "IF" else
            ("–" if ratio is None else f"**{ratio:.1f}x**"), bm.fmt(k["first_batch"][key]),
            bm.fmt(k["cpu_ms_per_image"][key]), mib(mem["judged"]), resident(r),
            bm.fmt(k["other_load"][key]) + " / " + ", ".join(f"{x['seconds']:.2f}" for x in r)])
    header = ["case", "data", "page cache", "images", "seconds (median)", "images/s", "x ImageFolder (same cache)",
              "first batch (s)", "CPU ms/image", "peak RSS above baseline (MiB; see Memory)", "resident before",
              f"other load (cores) / runs (s), {args.repeats} rounds"]
    memory_rows = []
    for name in ("PT", "PU", "BU", "BF"):
        for key, case in table.items():
            if case["name"] != name or case["cache"] != "warm" or key not in runs:
                continue
            mem = k["memory"][key]
            memory_rows.append([case["label"], data_of(case), consumer(case), mib(mem["hwm_above"]),
                                mib(mem["tree_rss_above"]), mib(mem["tree_pss_above"]),
                                f"{mib(mem['bound'])} ({args.prefetch + 2} x {mib(mem['batch'])})",
                                {True: "yes", False: "**NO**", None: "–"}[mem["within"]],
                                f"{k['images_per_second'][key]:,.0f}"])
    memory_header = ["loader", "data", "consumer", "kernel peak RSS (summed over processes)", "RSS sum (sampled)",
                     "PSS sum (sampled)", "bound: batches x MiB", "below the bound", "images/s"]
    lines = [
        "# imagenet-subset benchmark (loading for training)", "",
        f"Tree: {m['subset'].description}; {m['photos']:,} distinct photos. Archive: {m['rows']:,} rows of "
        f"{'x'.join(map(str, m['row_shape']))} uint8 ({m['sizes']['small'] / 1e9:.2f} GB)"
        + (f"; big archive: {m['big_rows']:,} rows ({m['sizes']['big'] / 1e9:.2f} GB)" if "big" in m["sizes"]
           else f"; big archive {m['big_note']}")
        + f". Batch size {args.batch_size}, {args.workers} DataLoader workers, prefetch {args.prefetch}. One "
        "shuffled epoch in a fresh process per case, timed from `iter()` (worker start-up included) to the last batch, "
        "the loop reading one value per 4 KiB page of each batch; warm: the files read just before, cold: their pages "
        f"dropped with `posix_fadvise(DONTNEED)` just before; cases alternated, medians of {args.repeats} rounds after "
        f"one untimed epoch of each kind; a case during which other processes used more than {bench.BUSY_CORES} cores "
        f"was run again up to {args.retry_busy} time(s), keeping the quietest ({k['reruns']} reruns). Memory: above "
        "the baseline of the iterating process (and its workers' at their start), the largest over the rounds; bound: "
        "one batch of the delivered dtype x (prefetch + 2).", "",
        bm.markdown_table(header, rows), "",
        "## Memory", "",
        "Peak above the baseline (MiB), the largest over the rounds, warm page cache; judged against the bound: "
        "the kernel's peak RSS for `packer.batches` (one process), the sampled RSS sum of the process tree for the "
        "DataLoader. A consumer that sleeps per batch (a training step that leaves the cores to the loader) lets the "
        "read-ahead fill up.", "",
        bm.markdown_table(memory_header, memory_rows), "",
        "## Key figures", "",
    ]
    ratio, per_round = k["ratio"], k["ratio_per_round"]

    def ratio_line(cache: str) -> str:
        target = TARGETS[cache]
        main = f"PT_{cache}"
        if main not in ratio:
            why = m["skipped"].get(f"IF_{cache}") or m["skipped"].get(main) or "?"
            return f"- {cache}: not measured ({why})"
        others = ", ".join(f"{table[key]['name']} {ratio[key]:.1f}x" for key in ratio
                           if table[key]["cache"] == cache and key != main)
        return (f"- {cache} page cache, `packer.torch.loader` / ImageFolder, same batch size and workers: "
                f"**{ratio[main]:.2f}x** ({k['images_per_second'][main]:,.0f} / "
                f"{k['images_per_second'][f'IF_{cache}']:,.0f} images/s; target >= {target:.0f}x: "
                f"{verdict(ratio[main] >= target)}); per round " + ", ".join(f"{v:.2f}" for v in per_round[main])
                + f"; by CPU time per image {k['cpu_ratio'][main]:.2f}x"
                + (f"; the other cases: {others}" if others else ""))

    lines += [ratio_line("warm"), ratio_line("cold")]
    for name in ("PT", "PU", "BU", "BF"):
        keys = [key for key, case in table.items() if case["name"] == name and case["cache"] == "warm" and key in runs]
        if not keys:
            continue
        mem = k["memory"]
        small, big = (_largest([mem[key]["judged"] for key in keys if table[key]["archive"] == archive])
                      for archive in ("small", "big"))
        judged = "the process tree's RSS sum, sampled" if name.startswith("P") else "the kernel's peak RSS"
        text = f"{m['rows']:,} rows **{mib(small)} MiB**"
        if big is not None and small is not None:
            text += (f", {m['big_rows']:,} rows **{mib(big)} MiB** ({(big - small) / MIB:+,.0f} MiB for "
                     f"{m['big_rows'] / m['rows']:.1f}x the rows)")
        told = [mem[key]["within"] for key in keys if mem[key]["within"] is not None]
        lines.append(f"- memory, {table[keys[0]]['label']}, largest peak above baseline ({judged}, any consumer): "
                     f"{text}; bound {mib(mem[keys[0]]['bound'])} MiB ({args.prefetch + 2} batches of "
                     f"{mib(mem[keys[0]]['batch'])} MiB): "
                     + (verdict(all(told)) if told else "not told (epochs too short to sample)"))
    s = m["stages"]
    n = s["batch"]

    def ms(name: str) -> str:
        return f"{s[name] * 1000:.1f} ms ({s[name] / n * 1e6:.0f} us/image)" if name in s else "–"

    lines += [
        "", "## Where the time goes", "",
        f"One batch of {n} rows, in one process, best of 5 (rows already in the page cache):", "",
        f"- `ImageRows.read` (pread of the rows in row order): {ms('read')}",
        f"- `BatchFormat.apply`: uint8 to NCHW {ms('uint8_nchw')}; float32 normalized, NCHW {ms('float32_nchw')}; "
        f"float32 normalized, NHWC {ms('float32_nhwc')}",
    ]
    if s.get("worker_read") is not None:
        lines.append(f"- `packer.torch.loader(normalize=\"imagenet\")` as it runs (its second epoch, "
                     f"{s['loader_workers']} workers, medians): a worker reads a batch of uint8 rows into a shared "
                     f"buffer in the loader's layout (NCHW) in {ms('worker_read')}; the training process formats "
                     f"it as float32 in {ms('main_format')}")
    if "folder_image" in s:
        lines.append(f"- ImageFolder, one image (open, decode, Resize, CenterCrop, ToTensor, Normalize), in-process: "
                     f"{s['folder_image'] * 1000:.2f} ms")
    versions = "; ".join(f"{name}: {text}" for name, (ok, text) in m["availability"].items())
    lines += ["", "## Machine", "", bm.machine_markdown({**bm.machine_info(bench.PACKER["description"]),
                                                         "torch / torchvision": versions}), ""]
    data = {"mode": "load", "rows": m["rows"], "big_rows": m["big_rows"], "row_shape": m["row_shape"],
            "archive_bytes": m["sizes"], "photos": m["photos"], "tree": m["subset"].description,
            "batch_size": args.batch_size, "workers": args.workers, "prefetch": args.prefetch, "repeats": args.repeats,
            "cases": {key: {x: v for x, v in case.items()} for key, case in table.items()},
            "not_measured": m["skipped"], "big_note": m["big_note"], "availability": m["availability"],
            "runs": runs, "stages": s, "key": k}
    return "\n".join(lines), data


# --------------------------------------------------------------------------- main

def parse_args(argv=None):
    p = bench.script_parser(__doc__, "a folder of JPEGs, symlinked in cycle into the trees")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--train_per_class", type=int, default=270, help="rows of the archive per class (default: 270)")
    p.add_argument("--big_train_per_class", type=int, default=2000,
                   help="rows of the big archive per class (default: 2000, 3.0 GB with 10 classes; 0: none)")
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers, and the packer's when packing")
    p.add_argument("--prefetch", type=int, default=2, help="packer.batches' prefetch (default: 2)")
    p.add_argument("--step_ms", type=float, default=100,
                   help="the memory cases' consumer sleeps this long per batch, so the read-ahead fills (default: "
                        "100; 0: no such cases)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--work_dir", help="the trees and the archives (default: a new folder in /tmp, removed at the end)")
    p.add_argument("--results_dir", default=str(BENCH_DIR / "results"))
    p.add_argument("--keep", action="store_true", help="keep the archives (and a work dir made by this run)")
    bench.add_shared_options(p)
    p.set_defaults(data_dir=None, subset_name=None, val_per_class=0)  # benchmark.default_subset: a tree of --images
    args = p.parse_args(argv)
    if min(args.repeats, args.workers, args.classes, args.train_per_class, args.batch_size) < 1 \
            or min(args.big_train_per_class, args.prefetch, args.step_ms) < 0:
        p.error("--repeats, --workers, --classes, --train_per_class, --batch_size must be at least 1, "
                "--big_train_per_class, --prefetch and --step_ms at least 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    with bench.bench_work_dir(args, "load") as work_dir:
        measured = measure(args, work_dir)
    text, data = report(args, measured)
    bench.write_results(args.results_dir, "load", text, data, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
