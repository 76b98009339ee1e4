"""Benchmark of imagenet-subset: the packer end to end against the original one-process loop.

    python bench/benchmark.py --images /work/shared/imagen      # real photos, 10 x (260 + 10) images
    python bench/benchmark.py                                   # synthetic photos instead
    python bench/benchmark.py --data_dir ILSVRC/Data/CLS-LOC    # an existing tree (first --classes classes)
    python bench/benchmark.py --big   [--images DIR]            # flat memory: a >4 GiB output next to a ~400 MB one
    python bench/benchmark.py --listing                         # discovery + listing on a full-size (empty) tree

Default mode measures, in one run, cases alternated round-robin (order reversed
every other round), medians over ``--repeats``:

  (a) the packer CLI (``python main.py``) as a whole process, 1 worker and ``--workers``
  (b) the original-script-style loop as a whole process (``bench/original_style.py``)
  (c) the bare single-core transform loop, in-process, no writing (the per-core ceiling)
  (d) Pillow decode alone, in-process
  (e) ``--fast`` end to end, and the fast transform loop per core; max/mean |fast - exact|
  (f) start-up: process spawn to the first chunk submitted (``bench/startup_probe.py``)
  (g) the packer's fixed cost: the whole process on one chunk of images
  plus the machine's ceiling: ``--workers`` bare loops at once in separate processes

Peak memory is of the whole process tree (parent + worker processes), sampled every
~20 ms. The table goes to stdout and to ``<results_dir>/latest.md`` (and
``<mode>.md`` / ``<mode>.json``); ``bench/results/`` is git-ignored.
"""
import argparse
import contextlib
import filecmp
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

import bench_measure as bm  # noqa: E402
import bench_trees as bt  # noqa: E402
from PIL import Image  # noqa: E402

PY = sys.executable
MAIN = str(REPO / "main.py")  # set by use_packer()
PACKER = {"dir": str(REPO), "description": ""}
PROBE = str(BENCH_DIR / "startup_probe.py")
ORIGINAL = str(BENCH_DIR / "original_style.py")
BARE_LOOP = str(BENCH_DIR / "bare_loop.py")
TINY_IMAGES = 32  # the fixed-cost case: one chunk
BUSY_CORES = 0.25  # a run during which other processes used more than this is "busy" (see --retry_busy)
MIB = bm.MIB


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def use_packer(args, work_dir: Path) -> None:
    """Benchmark the packer in the working tree (default), ``--packer_dir``, or ``--packer_rev`` exported
    with ``git archive`` (a fixed snapshot while others edit the tree). Sets ``PYTHONPATH`` for the
    subprocesses and imports the packer functions the benchmark itself uses."""
    global MAIN, TransformSpec, transform_image, find_tree, list_train_images, list_val_images, train_classes
    global read_subset_list
    if args.packer_rev:
        sha = bm._git(str(REPO), "rev-parse", args.packer_rev)
        if not sha:
            raise SystemExit(f"benchmark: unknown git revision {args.packer_rev!r}")
        folder = work_dir / f"packer-{sha[:10]}"
        if not (folder / "main.py").exists():
            folder.mkdir(parents=True, exist_ok=True)
            archive = subprocess.run(["git", "-C", str(REPO), "archive", sha, "main.py", "packer"],
                                     capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
        packer_dir, description = folder, f"git {sha[:10]} (`{args.packer_rev}`, exported to {folder})"
    else:
        packer_dir = Path(args.packer_dir or REPO).resolve()
        commit = bm._git(str(packer_dir), "rev-parse", "--short", "HEAD")
        dirty = bm._git(str(packer_dir), "status", "--porcelain", "--", "packer", "main.py")
        description = f"working tree {packer_dir} at git {commit or '?'}" + (
            " + uncommitted changes in packer/" if dirty else "")
    MAIN = str(packer_dir / "main.py")
    sys.path.insert(0, str(packer_dir))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(packer_dir), *filter(None, [os.environ.get("PYTHONPATH")])])
    import packer
    from packer.subset import read_subset_list
    from packer.transform import TransformSpec, transform_image
    from packer.tree import find_tree, list_train_images, list_val_images, train_classes
    if not Path(packer.__file__).resolve().is_relative_to(packer_dir):
        raise SystemExit(f"benchmark: imported packer from {packer.__file__}, not from {packer_dir}")
    PACKER.update({"dir": str(packer_dir), "description": description})


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# --------------------------------------------------------------------------- the tree and its images

class Subset:
    """The tree, the class list file and the images the packer will pack (absolute paths, row order)."""

    def __init__(self, data_dir: Path, list_path: Path, description: str, cwd: str):
        self.data_dir, self.list_path, self.description, self.cwd = data_dir, list_path, description, cwd
        tree = find_tree(data_dir)
        subset = read_subset_list(str(list_path))
        wnids = list(subset.wnids)
        position = {w: i for i, w in enumerate(wnids)}
        self.splits = {}
        for images in (list_train_images(tree, wnids), list_val_images(tree, wnids)):
            self.splits[images.split] = {
                "paths": [images.source.image(p).path for p in images.paths],  # an extracted tree: files
                "labels": [position[w] for w in images.wnids],
                "ids": [int(i) for i in images.ids],
            }
        self.name = subset.name
        self.paths = self.splits["train"]["paths"] + self.splits["val"]["paths"]

    def __len__(self) -> int:
        return len(self.paths)

    def cli_args(self, out_dir: Path, workers: int, fast: bool = False) -> list[str]:
        return (["--subset_name", str(self.list_path), "--data_dir", str(self.data_dir), "--out_dir", str(out_dir),
                 "--workers", str(workers), "--quiet"] + (["--fast"] if fast else []))

    def archive(self, out_dir: Path) -> Path:
        return out_dir / f"{self.name}_cls.npz"


def default_subset(args, work_dir: Path) -> Subset:
    if args.data_dir:
        data_dir = Path(args.data_dir).resolve()
        tree = find_tree(data_dir)
        if args.subset_name:
            wnids = list(read_subset_list(args.subset_name).wnids)
        else:
            wnids = train_classes(tree)[:args.classes]
        list_path = bt.write_subset_list(work_dir / "lists" / "bench_subset.txt", wnids)
        return Subset(data_dir, list_path, f"existing tree {data_dir}, {len(wnids)} classes", os.getcwd())
    if args.images:
        photos = bt.photos_in(args.images)
        folder = work_dir / "tree-photos"
        log(f"tree: {args.classes} classes x ({args.train_per_class} train + {args.val_per_class} val), "
            f"symlinks to {len(photos)} photos from {args.images}")
        data_dir = bt.photo_tree(folder, photos, args.classes, args.train_per_class, args.val_per_class)
        kind = f"real photos from {args.images} ({len(photos)} distinct, symlinked in cycle)"
    else:
        folder = work_dir / "tree-synthetic"
        log(f"tree: {args.classes} classes x ({args.train_per_class} train + {args.val_per_class} val), synthetic")
        data_dir = bt.synthetic_tree(folder, args.classes, args.train_per_class, args.val_per_class)
        kind = "synthetic photos of ImageNet-like sizes (write_sample_tree, with its grayscale/CMYK/PNG/tiny quirks)"
    wnids = list(bt.class_names(args.classes))
    list_path = bt.write_subset_list(work_dir / "lists" / "bench_subset.txt", wnids)
    description = (f"Kaggle-layout tree, {args.classes} classes x ({args.train_per_class} train + "
                   f"{args.val_per_class} val); {kind}")
    return Subset(data_dir, list_path, description, str(work_dir))


def warm_up(subset: Subset) -> None:
    """Read every image once (page cache) and import the packer once (bytecode cache)."""
    for path in subset.paths:
        with open(path, "rb") as f:
            while f.read(1 << 20):
                pass
    bm.run_timed([PY, "-c", "import packer.cli, PIL.Image, numpy, joblib, pandas, tqdm"], sample=False)


# --------------------------------------------------------------------------- the cases

def _process_case(result: bm.RunResult, output: Path) -> dict:
    return {"seconds": result.seconds, "cpu": result.cpu, "other": result.other_cores, "rss": result.peak_rss_mib,
            "pss": result.peak_pss_mib, "processes": result.processes, "output": output.stat().st_size / MIB,
            "lingering": result.lingering, "lingered": result.lingered_seconds}


def _remove_files(folder: Path) -> None:
    for path in folder.iterdir() if folder.is_dir() else ():
        if path.is_file():
            path.unlink()


def case_packer(subset: Subset, out_dir: Path, workers: int, fast: bool = False, over_previous: bool = False) -> dict:
    """The packer as a whole process; its previous output is removed first (untimed) unless ``over_previous``."""
    if not over_previous:
        _remove_files(out_dir)
    result = bm.run_timed([PY, MAIN, *subset.cli_args(out_dir, workers, fast)], cwd=subset.cwd)
    return _process_case(result, subset.archive(out_dir))


def case_original(subset: Subset, manifest: Path, out_path: Path) -> dict:
    """The original-style loop as a whole process; its previous output is removed first (untimed)."""
    out_path.unlink(missing_ok=True)
    result = bm.run_timed([PY, ORIGINAL, str(manifest), str(out_path)], cwd=subset.cwd)
    return _process_case(result, out_path)


def case_loop(paths: list[str], spec) -> dict:
    with bm.CpuMeter() as meter:
        for path in paths:
            transform_image(path, spec)
    return {"seconds": meter.seconds, "cpu": meter.cpu_self, "other": meter.other_cores}


def case_decode(paths: list[str]) -> dict:
    with bm.CpuMeter() as meter:
        for path in paths:
            Image.open(path).convert("RGB")  # convert() loads (decodes) the image
    return {"seconds": meter.seconds, "cpu": meter.cpu_self, "other": meter.other_cores}


def case_parallel_loops(manifest: Path, workers: int, cwd: str) -> dict:
    """``workers`` bare loops at once, one process each on 1/workers of the images: the machine's ceiling."""
    with bm.CpuMeter() as meter:
        procs = [subprocess.Popen([PY, BARE_LOOP, str(manifest), str(i), str(workers)], cwd=cwd,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(workers)]
        outputs = [p.communicate() for p in procs]
    for proc, (out, err) in zip(procs, outputs):
        if proc.returncode:
            raise bm.CommandFailed(f"bare_loop.py exited with {proc.returncode}:\n{err[-3000:]}")
    loops = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    return {"seconds": max(x["seconds"] for x in loops), "cpu": sum(x["cpu"] for x in loops),
            "other": meter.other_cores, "process_seconds": meter.seconds}


def case_startup(subset: Subset, out_dir: Path, workers: int) -> dict:
    """Spawn to first chunk submitted, through bench/startup_probe.py (no image is opened)."""
    spawned = time.monotonic()
    result = bm.run_timed([PY, PROBE, *subset.cli_args(out_dir, workers)], cwd=subset.cwd, sample=False)
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    return {"seconds": probe["t_first_chunk"] - spawned, "other": result.other_cores, "interpreter": probe["t_main"] - spawned,
            "imports": probe["t_imported"] - probe["t_main"], "stages": probe["stages"],
            "after_imports": probe["t_first_chunk"] - probe["t_imported"], "process": result.seconds}


def open_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a stored (uncompressed) .npz as read-only memory maps (own reader, not packer.load)."""
    arrays = {}
    with zipfile.ZipFile(path) as archive, open(path, "rb") as f:
        for info in archive.infolist():
            if info.compress_type != zipfile.ZIP_STORED:
                with archive.open(info) as member:
                    arrays[info.filename.removesuffix(".npy")] = np.lib.format.read_array(member)
                continue
            f.seek(info.header_offset + 26)
            name_length, extra_length = struct.unpack("<HH", f.read(4))
            f.seek(info.header_offset + 30 + name_length + extra_length)
            version = np.lib.format.read_magic(f)
            shape, fortran, dtype = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                     else np.lib.format.read_array_header_2_0)(f)
            arrays[info.filename.removesuffix(".npy")] = (
                np.memmap(path, dtype=dtype, mode="r", offset=f.tell(), shape=shape,
                          order="F" if fortran else "C") if 0 not in shape else np.empty(shape, dtype))
    return arrays


def compare_archives(path_a: Path, path_b: Path, keys=("X_train", "X_val"), rows: int = 256) -> dict:
    """max |a - b|, mean |a - b| and share of differing values over the image arrays, chunk by chunk."""
    total = differing = abs_sum = max_diff = 0
    a, b = open_arrays(path_a), open_arrays(path_b)
    for key in keys:
        x, y = a[key], b[key]
        if x.shape != y.shape:
            return {"error": f"{key}: shapes {x.shape} vs {y.shape}"}
        for start in range(0, len(x), rows):
            d = np.abs(x[start:start + rows].astype(np.int16) - y[start:start + rows].astype(np.int16))
            max_diff = max(max_diff, int(d.max(initial=0)))
            abs_sum += int(d.sum(dtype=np.int64))
            differing += int(np.count_nonzero(d))
            total += d.size
    return {"max": max_diff, "mean": abs_sum / total if total else 0.0,
            "differing": differing / total if total else 0.0}


def same_arrays(path_a: Path, path_b: Path) -> bool:
    a, b = open_arrays(path_a), open_arrays(path_b)
    return sorted(a) == sorted(b) and all(a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a)


def run_default(args, work_dir: Path) -> tuple[str, dict]:
    workers = args.workers
    subset = default_subset(args, work_dir)
    n = len(subset)
    log(f"{n} images ({len(subset.splits['train']['paths'])} train, {len(subset.splits['val']['paths'])} val); "
        f"warming the page cache")
    warm_up(subset)
    if args.wait_quiet > 0:
        load = bm.wait_for_quiet(args.wait_quiet * 60, log=log)
        log(f"starting; machine load over the last 30 s: {load:.2f} cores")
    out = {name: work_dir / "out" / name for name in ("packer1", "packerN", "packerR", "fastN", "original", "probe")}
    for folder in out.values():
        folder.mkdir(parents=True, exist_ok=True)
    manifest = work_dir / "manifest.json"
    manifest.write_text(json.dumps(subset.splits))
    original_npz = out["original"] / "original_style.npz"
    exact, fast = TransformSpec(), TransformSpec(fast=True)
    tiny_data = bt.photo_tree(work_dir / "tree-tiny", [Path(p).resolve() for p in subset.paths[:TINY_IMAGES]],
                              1, TINY_IMAGES - 2, 2)
    tiny = Subset(tiny_data, bt.write_subset_list(work_dir / "lists" / "tiny.txt", list(bt.class_names(1))),
                  "", str(work_dir))
    out["tiny1"], out["tinyN"] = work_dir / "out" / "tiny1", work_dir / "out" / "tinyN"

    cases = {
        "a1": lambda: case_packer(subset, out["packer1"], 1),
        "aN": lambda: case_packer(subset, out["packerN"], workers),
        "aR": lambda: case_packer(subset, out["packerR"], workers, over_previous=True),
        "b": lambda: case_original(subset, manifest, original_npz),
        "c": lambda: case_loop(subset.paths, exact),
        "cN": lambda: case_parallel_loops(manifest, workers, subset.cwd),
        "d": lambda: case_decode(subset.paths),
        "eN": lambda: case_packer(subset, out["fastN"], workers, fast=True),
        "e1": lambda: case_loop(subset.paths, fast),
        "f": lambda: case_startup(subset, out["probe"], workers),
        "g1": lambda: case_packer(tiny, out["tiny1"], 1),
        "gN": lambda: case_packer(tiny, out["tinyN"], workers),
    }
    runs = {name: [] for name in cases}
    for r in range(args.repeats):
        order = list(cases) if r % 2 == 0 else list(reversed(cases))
        for name in order:
            result = None
            for attempt in range(args.retry_busy + 1):
                if attempt:
                    log(f"round {r + 1}/{args.repeats} {name}: busy machine ({result['other']:.2f} cores), "
                        f"running it again ({attempt}/{args.retry_busy})")
                os.sync()  # untimed: no case pays for the writeback of another's output
                attempt_result = cases[name]()
                attempt_result["attempts"] = attempt + 1
                if result is None or attempt_result.get("other", 0.0) < result.get("other", 0.0):
                    result = attempt_result
                if result.get("other", 0.0) <= BUSY_CORES:
                    break
            result["attempts"] = attempt + 1
            runs[name].append(result)
            log(f"round {r + 1}/{args.repeats} {name}: {result['seconds']:.2f} s"
                + (f", other load {result['other']:.2f} cores" if "other" in result else ""))

    log("comparing outputs")
    checks = {
        "fast_vs_exact": compare_archives(subset.archive(out["packerN"]), subset.archive(out["fastN"])),
        "workers_identical": filecmp.cmp(subset.archive(out["packer1"]), subset.archive(out["packerN"]),
                                         shallow=False),
        "original_identical": same_arrays(original_npz, subset.archive(out["packerN"])),
    }
    report, data = default_report(args, subset, runs, checks, len(tiny))
    if not args.keep:
        shutil.rmtree(work_dir / "out", ignore_errors=True)
        manifest.unlink(missing_ok=True)
    return report, data


def _stat(runs: list[dict], key: str = "seconds") -> float:
    return bm.median([r[key] for r in runs])


def _peak(runs: list[dict], key: str) -> float:
    return max(r[key] for r in runs) if runs and key in runs[0] else float("nan")


def default_report(args, subset: Subset, runs: dict, checks: dict, tiny_n: int) -> tuple[str, dict]:
    n, w = len(subset), args.workers
    count = {name: (tiny_n if name.startswith("g") else n) for name in runs}
    speed = {name: count[name] / _stat(r) for name, r in runs.items() if name != "f"}
    b = speed["b"]
    labels = {
        "a1": "(a) packer `main.py`, 1 worker, whole process",
        "aN": f"(a) packer `main.py`, {w} workers, whole process",
        "aR": "(a) the same, rebuilding over its previous output",
        "b": "(b) original-style loop, 1 process (`bench/original_style.py`)",
        "c": "(c) bare transform loop, 1 core, in-process, no writing",
        "cN": f"(c) {w} bare loops at once, 1 process each on 1/{w} of the images: machine ceiling",
        "d": "(d) Pillow decode only (`open().convert('RGB')`), 1 core",
        "eN": f"(e) packer `main.py --fast`, {w} workers, whole process",
        "e1": "(e) fast transform loop, 1 core, in-process",
        "f": "(f) start-up: spawn to first chunk submitted",
        "g1": f"(g) fixed cost: packer on {tiny_n} images, 1 worker, whole process",
        "gN": f"(g) fixed cost: packer on {tiny_n} images, {w} workers, whole process",
    }
    efficiency = {"a1": speed["a1"] / speed["c"], "aN": speed["aN"] / (w * speed["c"]),
                  "cN": speed["cN"] / (w * speed["c"]), "eN": speed["eN"] / (w * speed["e1"])}
    rows = []
    for name, label in labels.items():
        r = runs[name]
        no_rate = name in ("f", "g1", "gN")
        rows.append([
            label, "–" if name == "f" else bm.fmt(count[name]), bm.fmt(_stat(r)),
            "–" if no_rate else bm.fmt(speed[name], 0), "–" if no_rate else f"{speed[name] / b:.2f}x",
            bm.fmt(efficiency.get(name)), bm.fmt(_peak(r, "rss"), 0), bm.fmt(_peak(r, "pss"), 0),
            bm.fmt(_peak(r, "output"), 0), "–" if name == "f" else bm.fmt(_stat(r, "cpu") / count[name] * 1000),
            bm.fmt(_stat(r, "other")), ", ".join(f"{x['seconds']:.2f}" for x in r),
        ])
    header = ["case", "images", "seconds (median)", "images/s", "ratio to (b)", "parallel eff.", "peak MiB (RSS sum)",
              "peak MiB (PSS)", "output MiB", "CPU ms/image", "other load (cores)", f"runs (s), {args.repeats} rounds"]
    startup = runs["f"]
    stages = {}
    for r in startup:
        for k, v in r["stages"].items():
            stages.setdefault(k, []).append(v)
    stage_text = ", ".join(f"{k} {bm.median(v) * 1000:.0f} ms" for k, v in stages.items() if bm.median(v) >= 0.0005)
    diff = checks["fast_vs_exact"]
    peak_all = max(_peak(runs[k], "rss") for k in ("a1", "aN", "aR", "eN", "g1", "gN"))
    cpu_per_image = {name: _stat(r, "cpu") / count[name] for name, r in runs.items() if name != "f"}
    all_other = [x.get("other", 0.0) for r in runs.values() for x in r]
    median_other = bm.median(all_other)
    # A two-term model of the whole-process time: fixed cost (g) + images x per-image time.
    fixed = _stat(runs["gN"]) - tiny_n / (w * speed["c"])
    per_image = (_stat(runs["aN"]) - _stat(runs["gN"])) / (n - tiny_n) if n > tiny_n else float("nan")
    ideal_per_image = 1 / (w * speed["c"])
    key = {
        "speedup_vs_original": speed["aN"] / b,
        "parallel_efficiency": efficiency["aN"],
        "machine_ceiling": efficiency["cN"],
        "share_of_ceiling": speed["aN"] / speed["cN"],
        "startup_s": _stat(startup),
        "fixed_cost_s": fixed, "fixed_cost_1_worker_s": _stat(runs["g1"]) - tiny_n / speed["c"],
        "per_image_ms": per_image * 1000, "ideal_per_image_ms": ideal_per_image * 1000,
        "peak_rss_mib": peak_all,
        "fast_speedup_per_core": speed["e1"] / speed["c"],
        "fast_speedup_end_to_end": speed["eN"] / speed["aN"],
        "fast_max_diff": diff.get("max"), "fast_mean_diff": diff.get("mean"),
        "cpu_efficiency": cpu_per_image["c"] / cpu_per_image["aN"],
        "median_other_load": median_other, "max_other_load": max(all_other),
    }

    def verdict(ok: bool) -> str:
        return "**met**" if ok else "**MISSED**"

    lines = [
        "# imagenet-subset benchmark (default mode)", "",
        f"Tree: {subset.description}. Subset: {len(subset.splits['train']['paths'])} train + "
        f"{len(subset.splits['val']['paths'])} val = {n:,} images. Workers: {w}. "
        f"Medians of {args.repeats} rounds, cases alternated round-robin (order reversed every other round), "
        f"warm page cache; a run during which other processes used more than {BUSY_CORES} cores was run again up to "
        f"{args.retry_busy} time(s), keeping the quietest ({sum(x.get('attempts', 1) - 1 for r in runs.values() for x in r)} "
        "reruns).", "",
        bm.markdown_table(header, rows), "",
        *([f"**Warning: the machine was busy** (other processes used {median_other:.2f} cores in the median case, "
           f"up to {max(all_other):.2f}): wall-time ratios, parallel ones above all, are lower than on a quiet "
           "machine; the CPU figures are less affected. `--wait_quiet MINUTES` waits for a quiet moment.", ""]
          if median_other > 0.25 else []),
        "## Key figures", "",
        f"- packer ({w} workers) / original-style loop: **{key['speedup_vs_original']:.2f}x** (target >= 2.0: "
        f"{verdict(key['speedup_vs_original'] >= 2.0)})",
        f"- parallel efficiency, (a, {w} workers) / ({w} x (c)): **{key['parallel_efficiency']:.2f}** "
        f"(target >= 0.90: {verdict(key['parallel_efficiency'] >= 0.90)}); 1 worker / (c): {efficiency['a1']:.2f}; "
        f"the machine itself gives {w} independent loops {key['machine_ceiling']:.2f} (its ceiling), so the packer "
        f"reaches {key['share_of_ceiling']:.2f} of what {w} processes can do here",
        f"- where the time goes ({w} workers): fixed cost {key['fixed_cost_s']:.2f} s per run ((g) minus its "
        f"images' ideal time; {key['fixed_cost_1_worker_s']:.2f} s with 1 worker) + {key['per_image_ms']:.2f} ms per "
        f"image, against {key['ideal_per_image_ms']:.2f} ms per image for {w} x (c); the fixed cost alone is "
        f"{key['fixed_cost_s'] / _stat(runs['aN']) * 100:.0f}% of the {n:,}-image run",
        f"- rebuilding over an existing output (kept until the new one is complete): {speed['aR']:.0f} images/s, "
        f"{speed['aR'] / b:.2f}x (b); the other cases remove their previous output first, untimed, so their writes "
        "reuse the memory it freed, as the original-style loop's `np.savez` does when it truncates its file; here "
        f"new page-cache memory is allocated, {cpu_per_image['aR'] * 1000 - cpu_per_image['aN'] * 1000:+.2f} ms "
        "CPU per image",
        f"- start-up, spawn to first chunk: **{key['startup_s']:.2f} s** (target < 1 s: "
        f"{verdict(key['startup_s'] < 1.0)}); interpreter {bm.median([r['interpreter'] for r in startup]) * 1000:.0f} ms, "
        f"imports {bm.median([r['imports'] for r in startup]) * 1000:.0f} ms, then to first chunk "
        f"{bm.median([r['after_imports'] for r in startup]) * 1000:.0f} ms ({stage_text})",
        f"- peak memory of the packer's process tree: **{peak_all:.0f} MiB** RSS sum (target <= 500: "
        f"{verdict(peak_all <= 500)}); the original-style process: {_peak(runs['b'], 'rss'):.0f} MiB",
        f"- `--fast`: {key['fast_speedup_per_core']:.2f}x per core ((e) loop / (c)), "
        f"{key['fast_speedup_end_to_end']:.2f}x end to end; |fast - exact| over all {n:,} images: "
        f"max **{diff.get('max')}**, mean **{diff.get('mean', float('nan')):.4f}**, "
        f"{diff.get('differing', float('nan')) * 100:.1f}% of values differ",
        f"- CPU per image: packer {w} workers {cpu_per_image['aN'] * 1000:.2f} ms, 1 worker "
        f"{cpu_per_image['a1'] * 1000:.2f} ms, original-style {cpu_per_image['b'] * 1000:.2f} ms, bare loop (c) "
        f"{cpu_per_image['c'] * 1000:.2f} ms: CPU efficiency (c)/(a, {w} workers) = **{key['cpu_efficiency']:.2f}** "
        "(less sensitive to other load than wall time; the wall-time efficiency cannot exceed it by much)",
        f"- Pillow decode alone is {speed['d'] / speed['c']:.2f}x the speed of decode + transform "
        f"({100 * speed['c'] / speed['d']:.0f}% of the per-image time is decoding)",
        f"- processes outliving the packer ({w} workers; not in its wall time, their CPU is counted): "
        f"{max(x.get('lingering', 0) for x in runs['aN'])}, for up to "
        f"{max(x.get('lingered', 0.0) for x in runs['aN']):.2f} s",
        f"- output bytes identical with 1 and {w} workers: {checks['workers_identical']}; "
        f"arrays identical to the original-style loop's np.savez: {checks['original_identical']}",
        "",
        "Notes: (a), (b), (e-packer), (g) are whole processes, each started with its previous output removed "
        "(untimed; except the rebuild case) and after an untimed `sync`, timed from spawn to exit (interpreter start-up, "
        "imports, listing, pool start, the archive's fsync and the metadata all included; the original-style loop "
        "does not fsync; descendants that outlive the process are not waited for). (c), (d), (e-loop) run in the benchmark process; (c, machine ceiling) times the loops "
        "only, from the slowest process. CPU ms/image: user+system CPU of the process and all its descendants "
        "(for in-process loops, of the benchmark process), divided by the images. Other load: CPU the rest of the "
        "machine used during the case (busy time from /proc/stat minus ours, incl. steal), in cores. Peak memory: "
        "psutil over the process and all its descendants, RSS every ~20 ms, PSS every ~100 ms; RSS sum counts "
        "shared pages once per process (upper bound), PSS splits them.",
        "", "## Machine", "", bm.machine_markdown(bm.machine_info(PACKER['description'])), "",
    ]
    data = {"mode": "default", "images": n, "workers": w, "runs": runs, "checks": checks, "key": key,
            "images_per_second": speed}
    return "\n".join(lines), data


# --------------------------------------------------------------------------- --big

def run_big(args, work_dir: Path) -> tuple[str, dict]:
    photos = bt.photos_in(args.images) if args.images else bt.synthetic_pool(work_dir / "pool")
    folder = work_dir / "tree-big"
    log(f"big tree: {args.big_classes} classes x ({args.big_train_per_class} train + {args.big_val_per_class} val), "
        f"symlinks to {len(photos)} photos")
    data_dir = bt.photo_tree(folder, photos, args.big_classes, args.big_train_per_class, args.big_val_per_class)
    wnids = list(bt.class_names(args.big_classes))
    small_classes = max(1, args.big_classes // 10)
    subsets = {
        "small": Subset(data_dir, bt.write_subset_list(work_dir / "lists" / "big_small.txt", wnids[:small_classes]),
                        "", str(work_dir)),
        "big": Subset(data_dir, bt.write_subset_list(work_dir / "lists" / "big_all.txt", wnids), "", str(work_dir)),
    }
    warm_up(subsets["big"])
    rows, data = [], {"mode": "big", "runs": {}}
    for name, subset in subsets.items():
        out_dir = work_dir / "out-big" / name
        out_dir.mkdir(parents=True, exist_ok=True)
        log(f"{name}: {len(subset):,} images, {args.workers} workers")
        result = case_packer(subset, out_dir, args.workers)
        log(f"{name}: {result['seconds']:.1f} s, peak {result['rss']:.0f} MiB; checking the archive")
        check = check_archive(subset, subset.archive(out_dir))
        archive_bytes = subset.archive(out_dir).stat().st_size
        data["runs"][name] = {**result, "images": len(subset), "bytes": archive_bytes, "check": check}
        rows.append([f"{name}: {len(set(subset.splits['train']['labels']))} classes",
                     bm.fmt(len(subset)), bm.fmt(result["seconds"], 1), bm.fmt(len(subset) / result["seconds"], 0),
                     bm.fmt(result["rss"], 0), bm.fmt(result["pss"], 0), result["processes"],
                     f"{archive_bytes / MIB:,.0f} MiB ({archive_bytes / 1e9:.2f} GB)",
                     bm.fmt(result["cpu"] / len(subset) * 1000), bm.fmt(result["other"]), check])
        if not args.keep:
            shutil.rmtree(out_dir, ignore_errors=True)
    peak = max(r["rss"] for r in data["runs"].values())
    header = ["subset", "images", "seconds", "images/s", "peak MiB (RSS sum)", "peak MiB (PSS)", "processes",
              "output", "CPU ms/image", "other load (cores)", "archive check"]
    small, big = data["runs"]["small"], data["runs"]["big"]
    lines = [
        "# imagenet-subset benchmark (--big: flat memory)", "",
        f"Tree: {args.big_classes} classes x ({args.big_train_per_class} train + {args.big_val_per_class} val) "
        f"symlinks to {len(photos)} {'photos from ' + args.images if args.images else 'synthetic JPEGs'}. "
        f"`main.py --workers {args.workers}`, whole process, peak over the process tree sampled every ~20 ms.", "",
        bm.markdown_table(header, rows), "",
        f"- peak memory: small {small['rss']:.0f} MiB, big {big['rss']:.0f} MiB for "
        f"{big['bytes'] / small['bytes']:.1f}x the output (target <= 500 MiB for both: "
        f"{'**met**' if peak <= 500 else '**MISSED**'})",
        "- archive check: `zipfile` reads every member and verifies its CRC-32 (ZIP64 past 4 GiB); "
        "the first and last row of each image array equal `transform_image` of their file.",
        "", "## Machine", "", bm.machine_markdown(bm.machine_info(PACKER['description'])), "",
    ]
    data["key"] = {"peak_rss_mib_small": small["rss"], "peak_rss_mib_big": big["rss"],
                   "output_gb_small": small["bytes"] / 1e9, "output_gb_big": big["bytes"] / 1e9}
    return "\n".join(lines), data


def check_archive(subset: Subset, path: Path) -> str:
    """CRC of every member through zipfile, and first/last rows against the transform."""
    problems = []
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            crc = 0
            with archive.open(info) as member:  # zipfile raises BadZipFile on a CRC mismatch at the end
                while chunk := member.read(1 << 24):
                    crc = zlib.crc32(chunk, crc)
            if crc != info.CRC:
                problems.append(f"{info.filename} CRC")
    data = open_arrays(path)
    for split, images in subset.splits.items():
        x = data[f"X_{split}"]
        for row in sorted({0, len(images["paths"]) - 1}) if images["paths"] else ():
            if not np.array_equal(x[row], transform_image(images["paths"][row], TransformSpec())):
                problems.append(f"X_{split}[{row}]")
        if not np.array_equal(data[f"{split}_id"], np.array(images["ids"], dtype=np.int32)):
            problems.append(f"{split}_id")
    return "ok" if not problems else "FAILED: " + ", ".join(problems)


# --------------------------------------------------------------------------- --listing

def run_listing(args, work_dir: Path) -> tuple[str, dict]:
    folder = work_dir / "tree-listing"
    started = time.perf_counter()
    log(f"listing tree: {args.listing_classes} classes, {args.listing_images:,} empty train files, "
        f"{args.listing_val:,} val files (cached under {folder})")
    data_dir, train_cls = bt.listing_tree(folder, args.listing_classes, args.listing_images, args.listing_val)
    made = time.perf_counter() - started
    log(f"listing tree ready in {made:.1f} s")
    select = list(bt.class_names(args.listing_classes))[:args.listing_select]
    list_path = bt.write_subset_list(work_dir / "lists" / "listing.txt", select)
    subset = Subset.__new__(Subset)
    subset.data_dir, subset.list_path, subset.cwd, subset.name = data_dir, list_path, str(work_dir), "listing"
    out_dir = work_dir / "out-listing"
    out_dir.mkdir(parents=True, exist_ok=True)
    disabled = train_cls.with_name(train_cls.name + ".disabled")
    runs = {"with": [], "without": []}
    try:
        for r in range(args.repeats):
            for variant in (("with", "without") if r % 2 == 0 else ("without", "with")):
                if variant == "without":
                    train_cls.rename(disabled)
                try:
                    result = case_startup(subset, out_dir, args.workers)
                finally:
                    if disabled.exists():
                        disabled.rename(train_cls)
                runs[variant].append(result)
                log(f"round {r + 1}/{args.repeats} {variant} train_cls.txt: {result['seconds']:.2f} s")
    finally:
        if disabled.exists() and not train_cls.exists():
            disabled.rename(train_cls)
    header = ["variant", "seconds (median)", "runs (s)", "interpreter + imports", "find_tree", "list_train_images",
              "list_val_images", "class_table", "rest", "other load (cores)"]
    rows = []
    for variant, r in runs.items():
        stages = {k: bm.median([x["stages"].get(k, 0.0) for x in r]) for k in
                  ("find_tree", "list_train_images", "list_val_images", "class_table")}
        total, head = _stat(r), bm.median([x["interpreter"] + x["imports"] for x in r])
        rest = bm.median([x["seconds"] - x["interpreter"] - x["imports"]
                          - sum(x["stages"].get(k, 0.0) for k in stages) for x in r])
        rows.append([f"{variant} train_cls.txt", f"**{total:.2f}**", ", ".join(f"{x['seconds']:.2f}" for x in r),
                     f"{head:.2f}", *(f"{v:.2f}" for v in stages.values()), f"{rest:.2f}",
                     bm.fmt(bm.median([x.get("other", 0.0) for x in r]))])
    with_s, without_s = _stat(runs["with"]), _stat(runs["without"])
    lines = [
        "# imagenet-subset benchmark (--listing: full-size tree)", "",
        f"Tree: {args.listing_classes:,} class folders, {args.listing_images:,} empty train files, matching "
        f"`train_cls.txt` ({args.listing_images:,} lines), {args.listing_val:,} flat val files with "
        f"`LOC_val_solution.csv`, `LOC_synset_mapping.txt` (built in {made:.1f} s"
        f"{' (cached)' if made < 5 else ''}). Selecting {len(select)} classes; time from spawn of "
        f"`main.py` to the first chunk submitted (discovery, train and val listing, labels, metadata, archive "
        f"layout; no image opened), through `bench/startup_probe.py`. Medians of {args.repeats}, alternated; "
        "warm dentry and page cache (a cold first listing reads the directories from disk and is slower). "
        "Stage columns: medians of the seconds spent in those functions.", "",
        bm.markdown_table(header, rows), "",
        f"- with train_cls.txt: **{with_s:.2f} s**, without: **{without_s:.2f} s** (target < 10 s: "
        f"{'**met**' if max(with_s, without_s) < 10 else '**MISSED**'})",
        "", "## Machine", "", bm.machine_markdown(bm.machine_info(PACKER['description'])), "",
    ]
    data = {"mode": "listing", "runs": runs, "key": {"with_train_cls_s": with_s, "without_train_cls_s": without_s}}
    if args.cleanup_listing:
        shutil.rmtree(folder, ignore_errors=True)
    return "\n".join(lines), data


# --------------------------------------------------------------------------- main

@contextlib.contextmanager
def bench_work_dir(args, name: str):
    """The work dir of benchmark ``name``: ``--work_dir``, or a new folder in /tmp removed at the end
    (unless ``--keep``), with the packer to measure set up in it (``use_packer``)."""
    made_here = args.work_dir is None
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix=f"imagenet-subset-bench-{name}-", dir="/tmp")).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    use_packer(args, work_dir)
    log(f"{name}, work dir {work_dir}, packer: {PACKER['description']}")
    try:
        yield work_dir
    finally:
        if made_here and not args.keep:
            shutil.rmtree(work_dir, ignore_errors=True)


def write_results(results_dir: str, name: str, text: str, data: dict, started: float) -> None:
    """``text`` (a benchmark's tables) with the wall time since ``started``, printed and written to
    ``<results_dir>/<name>.md`` and ``latest.md``; ``data`` to ``<name>.json``."""
    text += (f"\nBenchmark wall time: {time.perf_counter() - started:.0f} s, "
             f"finished {time.strftime('%Y-%m-%d %H:%M:%S')}.\n")
    results = Path(results_dir)
    results.mkdir(parents=True, exist_ok=True)
    for file_name in ("latest.md", f"{name}.md"):
        (results / file_name).write_text(text)
    (results / f"{name}.json").write_text(json.dumps(data, indent=1, default=str))
    print(text)
    log(f"wrote {results / (name + '.md')} and {results / (name + '.json')}")


def quietest_run(run, retry_busy: int, what: str = "", log=None) -> dict:
    """``run()`` (a dict with ``other``: the other processes' cores during it), again up to
    ``retry_busy`` times while that was more than ``BUSY_CORES``; the quietest run, with
    ``attempts``."""
    result = None
    for attempt in range(retry_busy + 1):
        if attempt and log is not None:
            log(f"{what}: busy machine ({result['other']:.2f} cores), running it again ({attempt}/{retry_busy})")
        tried = run()
        if result is None or tried["other"] < result["other"]:
            result = tried
        if result["other"] <= BUSY_CORES:
            break
    result["attempts"] = attempt + 1
    return result


def script_parser(doc: str, images_use: str) -> argparse.ArgumentParser:
    """The parser of a benchmark script that reads real photos: its docstring's first paragraph as
    the description and the rest as the epilog, and ``--images`` (``images_use``: what they are for)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], epilog=doc.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", default=str(REPO.parent / "shared" / "imagen"),
                   help=f"{images_use} (default: ../shared/imagen)")
    return p


def add_shared_options(p: argparse.ArgumentParser) -> None:
    """The options every benchmark script takes: retries and waiting on a shared machine, and
    which packer to measure."""
    p.add_argument("--retry_busy", type=int, default=1, metavar="N",
                   help="run a timed case again (up to N times, keeping the quietest run) when other processes used "
                        f"more than {BUSY_CORES} cores during it (default: 1)")
    p.add_argument("--wait_quiet", type=float, default=0, metavar="MINUTES",
                   help="on a shared machine: before the timed runs, wait up to this long for a 30 s window with "
                        "less than 0.3 cores busy (default: 0, start at once)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--packer_dir", help="benchmark the packer (main.py + packer/) in this folder (default: this repo)")
    which.add_argument("--packer_rev", help="benchmark this git revision of the repo, exported to the work dir")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    source = p.add_mutually_exclusive_group()
    source.add_argument("--data_dir", help="an existing ILSVRC tree (the folder holding train/ and val/)")
    source.add_argument("--images", help="a folder of JPEGs: build a tree of symlinks to them, in cycle")
    p.add_argument("--subset_name", help="with --data_dir: the class list to pack (default: first --classes classes)")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--train_per_class", type=int, default=260)
    p.add_argument("--val_per_class", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=default_workers(), help="the 'all workers' count (default: all cores)")
    p.add_argument("--work_dir", help="trees and outputs (default: a new folder in the temp dir); trees are cached there")
    p.add_argument("--results_dir", default=str(BENCH_DIR / "results"))
    p.add_argument("--keep", action="store_true", help="keep the archives written under --work_dir")
    add_shared_options(p)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--big", action="store_true", help="flat memory: a >4 GiB output next to a ~400 MB one")
    mode.add_argument("--listing", action="store_true", help="discovery + listing time on a full-size tree")
    p.add_argument("--big_classes", type=int, default=100)
    p.add_argument("--big_train_per_class", type=int, default=290)
    p.add_argument("--big_val_per_class", type=int, default=2)
    p.add_argument("--listing_classes", type=int, default=1000)
    p.add_argument("--listing_images", type=int, default=1_281_167)
    p.add_argument("--listing_val", type=int, default=50_000)
    p.add_argument("--listing_select", type=int, default=10)
    p.add_argument("--cleanup_listing", action="store_true", help="remove the listing tree afterwards")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.workers < 1 or args.classes < 1:
        p.error("--repeats, --workers and --classes must be at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="imagenet-subset-bench-")).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    mode = "big" if args.big else "listing" if args.listing else "default"
    use_packer(args, work_dir)
    log(f"mode {mode}, work dir {work_dir}, packer: {PACKER['description']}")
    started = time.perf_counter()
    runner = {"default": run_default, "big": run_big, "listing": run_listing}[mode]
    report, data = runner(args, work_dir)
    write_results(args.results_dir, mode, report, data, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
