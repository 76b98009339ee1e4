"""Benchmark of choosing by the WordNet hierarchy: whole commands, start-up included.

    python bench/bench_hierarchy.py [--repeats 7] [--work_dir DIR]

Writes a tree of the 1,000 ILSVRC classes (one 8x8 image each, an empty
``val/``) and times, as whole processes (Python start-up, imports and the
packaged hierarchy's loading included), medians of ``--repeats``:

  (1) ``imagenet-subset classes --data_dir TREE``: the listing with no hierarchy (the baseline);
  (2) ``imagenet-subset classes --tree --data_dir TREE``: the hierarchy over all 1,000 classes;
  (3) planning ``--under entity`` (all 1,000 classes, one label each) through the API;
  (4) planning ``--group_by "dog,cat,frog,turtle,bird,primate,fish,crab,insect"``.

Target (issue #13): (2) and (3) under 0.3 s. The table goes to stdout and to
``<results_dir>/hierarchy.md``.
"""
import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent

PLAN = ("from packer import BuildOptions; from packer.plan import plan_build; "
        "plan_build(BuildOptions(data_dir={tree!r}, out_dir={out!r}, {choice}))")


def write_tree(root: Path) -> Path:
    """``root/train/<wnid>/<wnid>_1.JPEG`` for the 1,000 classes of the packaged table, and ``root/val/``."""
    from packer.labelfiles import builtin_classes

    image = Image.new("RGB", (8, 8), (90, 120, 150))
    for wnid in builtin_classes():
        (root / "train" / wnid).mkdir(parents=True, exist_ok=True)
        image.save(root / "train" / wnid / f"{wnid}_1.JPEG")
    (root / "val").mkdir(exist_ok=True)
    return root


def seconds(command: list[str], repeats: int) -> float:
    """Median wall time of ``command`` run ``repeats`` times (after one untimed run)."""
    subprocess.run(command, check=True, capture_output=True)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--work_dir", help="where the tree goes (default: a new temporary folder)")
    parser.add_argument("--results_dir", default=str(BENCH_DIR / "results"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(args.work_dir or scratch)
        tree, out = write_tree(work / "tree"), work / "out"
        cli = [str(Path(sys.executable).parent / "imagenet-subset")]  # the console script of this environment
        cases = [
            ("classes (no hierarchy)", cli + ["classes", "--data_dir", str(tree), "--out_dir", str(out)]),
            ("classes --tree (1,000 classes)", cli + ["classes", "--tree", "--data_dir", str(tree), "--out_dir",
                                                      str(out)]),
            ("plan --under entity", [sys.executable, "-c", PLAN.format(tree=str(tree), out=str(out),
                                                                       choice="under='entity'")]),
            ("plan --group_by (Restricted ImageNet's 9)", [sys.executable, "-c", PLAN.format(
                tree=str(tree), out=str(out), choice="group_by='dog,cat,frog,turtle,bird,primate,fish,crab,insect'")]),
        ]
        rows = [(name, seconds(command, args.repeats)) for name, command in cases]
    lines = ["| case | seconds (median, start-up included) | target |", "| --- | --- | --- |"]
    lines += [f"| {name} | {value:.3f} | {'≤ 0.3' if 'tree' in name or 'entity' in name else ''} |"
              for name, value in rows]
    table = "\n".join(lines)
    print(table)
    Path(args.results_dir).mkdir(parents=True, exist_ok=True)
    (Path(args.results_dir) / "hierarchy.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
