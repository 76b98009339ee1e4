"""Throughput of the Dask backend (a LocalCluster of N one-thread workers) against local processes.

    python bench/dask_vs_local.py --images ../shared/imagen [--classes 10 --train_per_class 100] [--repeats 3]

Builds (or reuses, under --work_dir) a Kaggle-layout tree of symlinks to the
given photos (synthetic photos without --images), then packs it alternately
with ``backend="local"`` and ``backend="dask"`` (same worker count), and prints
a markdown table: median seconds and images/s of each, the ratio dask/local,
and whether the two archives are byte-identical. The cluster is started once,
before the timed runs, as a user would keep one running.
"""
import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import packer  # noqa: E402
from packer.demo import IMAGENETTE, OTHER_CLASSES, write_sample_tree  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", help="a folder of JPEGs to link into the tree (default: synthetic photos)")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--train_per_class", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work_dir", default=None)
    args = parser.parse_args()
    from distributed import LocalCluster

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="dask-vs-local-"))
    classes = dict(list({**IMAGENETTE, **OTHER_CLASSES}.items())[:args.classes])
    photos = sorted(Path(args.images).glob("*.jp*g")) if args.images else None
    data_dir = work / "tree" / "ILSVRC" / "Data" / "CLS-LOC"
    if not data_dir.is_dir():
        write_sample_tree(work / "tree", classes, args.train_per_class, 5, photos=photos)
    class_list = work / "list.txt"
    class_list.write_text("".join(f"{w}\n" for w in classes))

    cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, host="127.0.0.1", dashboard_address=None)
    times = {"local": [], "dask": []}
    digests = {}
    try:
        for round_ in range(args.repeats):
            for backend in (("local", "dask") if round_ % 2 == 0 else ("dask", "local")):
                started = time.perf_counter()
                result = packer.build_subset(str(class_list), str(data_dir), out_dir=str(work / backend),
                                             workers=args.workers, progress=False, backend=backend,
                                             scheduler=cluster.scheduler_address if backend == "dask" else None)
                times[backend].append(time.perf_counter() - started)
                digests[backend] = hashlib.sha256(result.archive.read_bytes()).hexdigest()
                images = sum(result.counts.values())
    finally:
        cluster.close()
    local, dask = statistics.median(times["local"]), statistics.median(times["dask"])
    print(f"{images} images, {args.workers} workers, medians of {args.repeats} alternated runs\n")
    print("| backend | seconds | images/s | runs (s) |\n| --- | --- | --- | --- |")
    for name, median in (("local (worker processes)", local), ("dask (LocalCluster)", dask)):
        runs = times["local" if name.startswith("local") else "dask"]
        print(f"| {name} | {median:.2f} | {images / median:.0f} | {', '.join(f'{t:.2f}' for t in runs)} |")
    print(f"\ndask / local throughput: **{local / dask:.2f}** (target >= 0.80); "
          f"byte-identical archives: {digests['local'] == digests['dask']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
