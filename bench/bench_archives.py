"""Benchmark of packing from ImageNet's archives, read by offset, against the extracted folders.

    python bench/bench_archives.py                      # real photos from ../shared/imagen, work dir in /tmp
    python bench/bench_archives.py --images DIR --classes 100 --repeats 5 --work_dir /tmp/bench-archives

Measures, in one run:

  (1) packing the same subset (``--classes`` classes, default options 256/224, ``--workers``)
      from ``ILSVRC2012_img_train.tar`` + ``ILSVRC2012_img_val.tar`` and from the extracted
      ``train/`` + ``val/`` folders of the same images, as whole processes (``main.py``,
      ``benchmark.case_packer``), alternated (order reversed every other round), medians of
      ``--repeats``; time ratio (tars / folders) and peak memory of the process tree. Both trees
      hold the real photos of ``--images`` (``<wnid>_<n>_<label>.jpg``) whose WNID is one of
      ILSVRC's 1,000: each photo is a train image ``<wnid>/<wnid>_<n>.JPEG`` and also a val image
      ``ILSVRC2012_val_XXXXXXXX.JPEG``, numbered with one of its class's val numbers in the
      built-in labels, so both trees are labelled by the packaged tables. A first untimed build of
      each warms the page cache and keeps the tars' member index (``<out_dir>/.archive_index``),
      as any build after the first finds it. Checks: X_train, X_val, y_train, y_val, val_id equal;
      train_id from the tar numbered as ILSVRC's ``train_cls.txt`` (the folders, with no
      ``train_cls.txt``, are numbered by their own listing, so their train_id differs by design).
  (2) listing on full-size archives: a SPARSE ``ILSVRC2012_img_train.tar`` of the 1,000 class
      tars of the built-in table, each of the real train tar's average size per image
      (~147 GB apparent), where the ``--listed`` (10) classes hold their real image count of
      tiny members and the other 990 are holes; and an ``ILSVRC2012_img_val.tar`` of 50,000 tiny
      members. In a fresh process (imports untimed): ``find_tree(dir, index_dir=...)`` then
      ``list_train_images`` (or ``list_val_images``) of the 10 classes, the first time (no index;
      the archive's pages dropped from the page cache with ``posix_fadvise``, and again with them
      cached) and with the index the first listing kept.

The big files are removed at the end; so is the work dir when it was created by this run
(``--keep`` keeps both). The table goes to stdout and to ``<results_dir>/archives.md``,
``latest.md`` and ``archives.json``.
"""
import json
import os
import shutil
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

import bench_measure as bm  # noqa: E402
import bench_trees as bt  # noqa: E402
import benchmark as bench  # noqa: E402

log = bench.log
MIB = bm.MIB
TRAIN_TAR, VAL_TAR = "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"
BYTES_PER_TRAIN_IMAGE = 115_000  # the real train tar: 147,897,477,120 bytes / 1,281,167 images
TINY = b"\xff\xd8\xff\xe0tiny"  # a tiny member's bytes (never decoded: listing only)
MTIME = 1_339_000_000  # fixed member times: the same archive bytes every run
FREE_BYTES_NEEDED = 2 << 30  # real disk use is ~0.5 GB; the big train tar is sparse
TARGETS = {"pack_ratio": 1.10, "train_first_s": 2.0, "train_indexed_s": 0.2}

# In a fresh process, imports untimed: discovery and listing of ``wnids`` in one split.
LIST_CHILD = """
import json, sys, time
from packer.tree import find_tree, list_train_images, list_val_images
split, data_dir, index_dir, *wnids = sys.argv[1:]
started = time.perf_counter()
tree = find_tree(data_dir, index_dir=index_dir)
found = time.perf_counter()
images = (list_train_images if split == "train" else list_val_images)(tree, wnids)
done = time.perf_counter()
print(json.dumps({"find_tree": found - started, "list": done - found, "seconds": done - started,
                  "images": len(images.paths), "ids": [int(i) for i in images.ids],
                  "label_source": images.label_source}))
"""


def _round_up(n: int, block: int = 512) -> int:
    return (n + block - 1) // block * block


def _tar_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, MTIME, 0o644
    return info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")


def _member(name: str, data: bytes) -> bytes:
    """One tar member: header, then its bytes padded to 512."""
    return _tar_header(name, len(data)) + data + bytes(_round_up(len(data)) - len(data))


def _tar_bytes(members) -> bytes:
    """A whole tar in memory (members as (name, bytes)), with its two end-of-archive blocks."""
    return b"".join(_member(name, data) for name, data in members) + bytes(1024)


# --------------------------------------------------------------------------- (1) the same photos, two forms

def ilsvrc_photos(images_dir: Path) -> tuple[dict[str, list[tuple[str, Path]]], int]:
    """WNID -> [(stem ``<wnid>_<n>``, photo)] of the photos whose WNID is among ILSVRC's 1,000
    (sorted by WNID), and how many photos were left out."""
    from packer.labelfiles import builtin_classes

    table = builtin_classes()
    by_class: dict[str, list[tuple[str, Path]]] = {}
    left_out = 0
    for photo in bt.photos_in(images_dir):
        wnid, number = photo.stem.split("_")[:2]
        if wnid in table and number.isdigit():
            by_class.setdefault(wnid, []).append((f"{wnid}_{number}", photo))
        else:
            left_out += 1
    return dict(sorted(by_class.items())), left_out


def val_numbers(by_class: dict[str, list]) -> dict[str, list[int]]:
    """For each class, as many of its val image numbers (in the built-in labels) as it has photos."""
    from packer.labelfiles import builtin_val_labels

    numbers: dict[str, list[int]] = {}
    for number, wnid in sorted(builtin_val_labels().items()):
        numbers.setdefault(wnid, []).append(number)
    return {wnid: numbers[wnid][:len(photos)] for wnid, photos in by_class.items()}


def pack_trees(folder: Path, images_dir: Path) -> tuple[Path, Path, dict]:
    """The extracted tree (``train/<wnid>/``, flat ``val/``, copies of the photos) and the folder of
    the two tars holding the same bytes under the same names; (extracted, archives, facts). Cached
    by ``bench_trees``' marker. Both sit three levels down, so the label-file search (the data dir
    and its three parents) stays inside the work dir."""
    by_class, left_out = ilsvrc_photos(images_dir)
    numbers = val_numbers(by_class)
    params = {"kind": "archives-pack", "photos": {w: [str(p) for _, p in v] for w, v in by_class.items()}}
    extracted, archives = folder / "trees" / "extracted", folder / "trees" / "archives"
    facts = {"classes": len(by_class), "photos": sum(map(len, by_class.values())), "left_out": left_out,
             "stems": {w: [s for s, _ in v] for w, v in by_class.items()}}
    if bt._cached(folder, params):
        return extracted, archives, facts
    bt._fresh(folder)
    (extracted / "val").mkdir(parents=True)
    archives.mkdir(parents=True)
    val_members = []
    with open(archives / TRAIN_TAR, "wb") as train_tar:
        for wnid, photos in by_class.items():
            (extracted / "train" / wnid).mkdir(parents=True)
            class_members = []
            for (stem, photo), number in zip(photos, numbers[wnid], strict=True):
                data = photo.read_bytes()
                (extracted / "train" / wnid / f"{stem}.JPEG").write_bytes(data)
                val_name = f"ILSVRC2012_val_{number:08d}.JPEG"
                (extracted / "val" / val_name).write_bytes(data)
                class_members.append((f"{stem}.JPEG", data))
                val_members.append((number, val_name, data))
            train_tar.write(_member(f"{wnid}.tar", _tar_bytes(class_members)))
        train_tar.write(bytes(1024))
    val_members.sort()
    (archives / VAL_TAR).write_bytes(_tar_bytes((name, data) for _, name, data in val_members))
    bt._mark(folder, params)
    return extracted, archives, facts


def expected_train_ids(stems: dict[str, list[str]], wnids: list[str]) -> list[int]:
    """The ids ILSVRC's train_cls.txt gives the images ``stems`` of ``wnids``: classes in WNID order,
    each numbered after all the images of the classes before it, images in name order."""
    from packer.labelfiles import builtin_classes

    table = builtin_classes()
    before, total = {}, 0
    for wnid in sorted(table):
        before[wnid], total = total, total + table[wnid].train_images
    return [before[w] + n for w in sorted(wnids) for n, _ in enumerate(sorted(stems[w]), start=1)]


def compare_outputs(folders: Path, tars: Path, expected_ids: list[int]) -> dict:
    a, b = bench.open_arrays(folders), bench.open_arrays(tars)
    checks = {key: bool(key in a and key in b and a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]))
              for key in ("X_train", "X_val", "y_train", "y_val", "val_id")}
    checks["identical"] = all(checks.values())
    checks["train_id_tar_as_train_cls"] = bool(np.array_equal(b["train_id"], np.array(expected_ids)))
    checks["train_id_equal"] = bool(np.array_equal(a["train_id"], b["train_id"]))
    checks["rows"] = {"train": int(len(a["X_train"])), "val": int(len(a["X_val"]))}
    return checks


def run_pack(args, work_dir: Path) -> dict:
    log(f"(1) trees from {args.images}: extracted folders and the two tars (cached in {work_dir / 'pack'})")
    extracted, archives, facts = pack_trees(work_dir / "pack", Path(args.images))
    wnids = list(facts["stems"])[:args.classes]
    list_path = bt.write_subset_list(work_dir / "lists" / "archives_subset.txt", wnids)
    folders = bench.Subset(extracted, list_path, "extracted folders", str(work_dir))
    tars = bench.Subset.__new__(bench.Subset)
    tars.data_dir, tars.list_path, tars.cwd, tars.name = archives, list_path, str(work_dir), folders.name
    subsets = {"folders": folders, "tars": tars}
    out = {name: work_dir / "out" / name for name in subsets}
    log(f"{len(folders):,} images ({len(wnids)} classes); warming the page cache, one untimed build of each "
        "(the tars' keeps their member index)")
    bench.warm_up(folders)
    for tar in (TRAIN_TAR, VAL_TAR):
        with open(archives / tar, "rb") as f:
            while f.read(1 << 24):
                pass
    for name, subset in subsets.items():
        shutil.rmtree(out[name], ignore_errors=True)
        out[name].mkdir(parents=True)
        bench.case_packer(subset, out[name], args.workers)
    if args.wait_quiet > 0:
        load = bm.wait_for_quiet(args.wait_quiet * 60, log=log)
        log(f"starting; machine load over the last 30 s: {load:.2f} cores")
    runs: dict[str, list[dict]] = {name: [] for name in subsets}
    for r in range(args.repeats):
        for name in (list(subsets) if r % 2 == 0 else list(reversed(subsets))):
            result = None
            for attempt in range(args.retry_busy + 1):  # noqa: B007 (attempt: reported below)
                os.sync()  # untimed: no run pays for the writeback of another's output
                tried = bench.case_packer(subsets[name], out[name], args.workers)
                if result is None or tried["other"] < result["other"]:
                    result = tried
                if result["other"] <= bench.BUSY_CORES:
                    break
            result["attempts"] = attempt + 1
            runs[name].append(result)
            log(f"round {r + 1}/{args.repeats} {name}: {result['seconds']:.2f} s, peak {result['rss']:.0f} MiB, "
                f"other load {result['other']:.2f} cores")
    checks = compare_outputs(folders.archive(out["folders"]), tars.archive(out["tars"]),
                             expected_train_ids(facts["stems"], wnids))
    seconds = {name: bench._stat(r) for name, r in runs.items()}
    key = {
        "time_ratio": seconds["tars"] / seconds["folders"],
        "seconds": seconds,
        "images_per_second": {name: len(folders) / s for name, s in seconds.items()},
        "peak_rss_mib": {name: bench._peak(r, "rss") for name, r in runs.items()},
        "peak_pss_mib": {name: bench._peak(r, "pss") for name, r in runs.items()},
        "cpu_ms_per_image": {name: bench._stat(r, "cpu") / len(folders) * 1000 for name, r in runs.items()},
        "other_load": {name: bench._stat(r, "other") for name, r in runs.items()},
        "reruns": sum(x["attempts"] - 1 for r in runs.values() for x in r),
    }
    if not args.keep:
        shutil.rmtree(work_dir / "out", ignore_errors=True)
    return {"images": len(folders), "train": checks["rows"]["train"], "val": checks["rows"]["val"],
            "classes": len(wnids), "tree": {k: v for k, v in facts.items() if k != "stems"},
            "tar_bytes": {t: (archives / t).stat().st_size for t in (TRAIN_TAR, VAL_TAR)},
            "runs": runs, "checks": checks, "key": key}


# --------------------------------------------------------------------------- (2) full-size archives

def sparse_train_tar(path: Path, listed: list[str], seed: int = 0) -> int:
    """The sparse train tar described in the module docstring; returns how many members the
    listed classes hold."""
    from packer.labelfiles import builtin_classes

    table = builtin_classes()
    rng = np.random.default_rng(seed)
    members = 0
    with open(path, "wb") as f:
        position = 0
        for wnid in sorted(table):
            count = table[wnid].train_images
            size = _round_up(count * BYTES_PER_TRAIN_IMAGE)
            header = _tar_header(f"{wnid}.tar", size)
            f.seek(position)
            f.write(header)
            if wnid in listed:
                numbers = np.sort(rng.choice(np.arange(1, max(60_000, 2 * count)), size=count, replace=False))
                inner = _tar_bytes((f"{wnid}_{k}.JPEG", TINY) for k in numbers)
                assert len(inner) <= size
                f.write(inner)  # then a hole up to the class tar's size
                members += count
            position += len(header) + size
        f.seek(position)
        f.write(bytes(1024))
    return members


def val_tar(path: Path, images: int = 50_000) -> None:
    with open(path, "wb") as f:
        for start in range(1, images + 1, 5000):
            f.write(b"".join(_member(f"ILSVRC2012_val_{n:08d}.JPEG", TINY)
                             for n in range(start, min(images + 1, start + 5000))))
        f.write(bytes(1024))


def drop_from_page_cache(path: Path) -> None:
    """Write back and drop this file's pages only (not the machine's whole cache)."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def list_once(split: str, data_dir: Path, index_dir: Path, wnids: list[str], cwd: Path) -> dict:
    result = bm.run_timed([sys.executable, "-c", LIST_CHILD, split, str(data_dir), str(index_dir), *wnids],
                          cwd=str(cwd))
    child = json.loads(result.stdout.strip().splitlines()[-1])
    return {**child, "process_seconds": result.seconds, "rss": result.peak_rss_mib, "other": result.other_cores}


def run_listing(args, work_dir: Path) -> dict:
    from packer.labelfiles import builtin_classes, builtin_val_labels

    folder = work_dir / "full"
    free = shutil.disk_usage(work_dir).free
    if free < FREE_BYTES_NEEDED:
        raise SystemExit(f"bench_archives: {work_dir} has {free / 2**30:.1f} GiB free; need "
                         f"{FREE_BYTES_NEEDED / 2**30:.0f} GiB (the big train tar is sparse)")
    listed = list(bt.class_names(args.listed))  # the imagenette classes first: all among ILSVRC's 1,000
    table = builtin_classes()
    if any(w not in table for w in listed):
        raise SystemExit(f"bench_archives: --listed {args.listed}: pick at most 10 (the imagenette classes)")
    # Each archive beside an empty folder for the other split, three levels down (see pack_trees).
    dirs = {"train": folder / "dirs" / "train_tar", "val": folder / "dirs" / "val_tar"}
    shutil.rmtree(folder, ignore_errors=True)
    for split, data_dir in dirs.items():
        (data_dir / ("val" if split == "train" else "train")).mkdir(parents=True)
    tars = {"train": dirs["train"] / TRAIN_TAR, "val": dirs["val"] / VAL_TAR}
    log(f"(2) full-size archives in {folder} ({free / 2**30:.0f} GiB free)")
    started = time.perf_counter()
    members = sparse_train_tar(tars["train"], listed)
    val_tar(tars["val"])
    made = time.perf_counter() - started
    sizes = {split: {"apparent": path.stat().st_size, "on_disk": path.stat().st_blocks * 512}
             for split, path in tars.items()}
    log(f"sparse train tar: {sizes['train']['apparent'] / 1e9:.1f} GB apparent, "
        f"{sizes['train']['on_disk'] / MIB:.0f} MiB on disk; val tar {sizes['val']['apparent'] / MIB:.0f} MiB; "
        f"made in {made:.1f} s")
    if sizes["train"]["on_disk"] > FREE_BYTES_NEEDED // 2:
        raise SystemExit(f"bench_archives: {work_dir}'s file system does not keep the train tar sparse")
    expected = {"train": members, "val": sum(1 for w in builtin_val_labels().values() if w in listed)}
    runs: dict[str, dict[str, list]] = {}
    try:
        for split in ("train", "val"):
            runs[split] = {"first_cold": [], "indexed": [], "first_warm": []}
            index_dir = folder / f"index-{split}"
            for r in range(args.repeats):
                for variant in ("first_cold", "indexed", "first_warm"):
                    if variant != "indexed":
                        shutil.rmtree(index_dir, ignore_errors=True)
                    if variant == "first_cold":
                        drop_from_page_cache(tars[split])
                    result = list_once(split, dirs[split], index_dir, listed, work_dir)
                    if result["images"] != expected[split]:
                        raise SystemExit(f"bench_archives: {split} listing gave {result['images']} images, "
                                         f"expected {expected[split]}")
                    runs[split][variant].append(result)
                    log(f"round {r + 1}/{args.repeats} {split} {variant}: {result['seconds']:.3f} s "
                        f"(find_tree {result['find_tree']:.3f}, list {result['list']:.3f}), "
                        f"peak {result['rss']:.0f} MiB")
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    first_ids = runs["train"]["first_cold"][0]["ids"]
    ids_ok = all(x["ids"] == first_ids for v in runs["train"].values() for x in v)
    for split_runs in runs.values():
        for variant_runs in split_runs.values():
            for x in variant_runs:
                x.pop("ids")
    key = {split: {variant: bench._stat(r) for variant, r in split_runs.items()} for split, split_runs in runs.items()}
    return {"listed": listed, "members_listed": members, "val_members": 50_000, "sizes": sizes, "made_s": made,
            "expected_images": expected, "ids_same_every_run": ids_ok, "runs": runs, "key": key}


# --------------------------------------------------------------------------- report

def report(args, pack: dict, listing: dict) -> tuple[str, dict]:
    k, checks = pack["key"], pack["checks"]
    lk = listing["key"]

    def verdict(ok: bool) -> str:
        return "**met**" if ok else "**MISSED**"

    def runs_text(r: list[dict]) -> str:
        return ", ".join(f"{x['seconds']:.2f}" for x in r)

    pack_rows = [[label, bm.fmt(pack["images"]), bm.fmt(k["seconds"][name]),
                  bm.fmt(k["images_per_second"][name], 0),
                  f"{k['seconds'][name] / k['seconds']['folders']:.2f}x", bm.fmt(k["peak_rss_mib"][name], 0),
                  bm.fmt(k["peak_pss_mib"][name], 0), bm.fmt(k["cpu_ms_per_image"][name]),
                  bm.fmt(k["other_load"][name]), runs_text(pack["runs"][name])]
                 for name, label in (("folders", "extracted `train/` + `val/`"),
                                     ("tars", f"`{TRAIN_TAR}` + `{VAL_TAR}`"))]
    listing_rows = []
    for split, what in (("train", f"{TRAIN_TAR} (sparse, {listing['sizes']['train']['apparent'] / 1e9:.0f} GB)"),
                        ("val", f"{VAL_TAR} (50,000 tiny members)")):
        for variant, label in (("first_cold", "first, no index, archive's pages dropped"),
                               ("first_warm", "first, no index, archive's pages cached"),
                               ("indexed", "with the index")):
            r = listing["runs"][split][variant]
            listing_rows.append([what, label, f"**{bm.median([x['seconds'] for x in r]):.3f}**",
                                 f"{bm.median([x['find_tree'] for x in r]):.3f}",
                                 f"{bm.median([x['list'] for x in r]):.3f}", bm.fmt(max(x["rss"] for x in r), 0),
                                 ", ".join(f"{x['seconds']:.3f}" for x in r)])
    train_first, train_indexed = lk["train"]["first_cold"], lk["train"]["indexed"]
    lines = [
        "# imagenet-subset benchmark (archives)", "",
        "## (1) Packing from the tars against the extracted folders", "",
        f"{pack['tree']['photos']:,} real photos of {pack['tree']['classes']} ILSVRC classes from {args.images} "
        f"({pack['tree']['left_out']} photos of other WNIDs left out), each a train image and a val image; the same "
        f"bytes as extracted folders and as the two tars ({pack['tar_bytes'][TRAIN_TAR] / MIB:.0f} + "
        f"{pack['tar_bytes'][VAL_TAR] / MIB:.0f} MiB). Subset: {pack['classes']} classes, {pack['train']} train + "
        f"{pack['val']} val images, default 256/224, {args.workers} workers, `main.py` as a whole process, medians of "
        f"{args.repeats} alternated rounds after one untimed build of each (warm page cache; the tars' member index "
        f"kept by that build); a run during which other processes used more than {bench.BUSY_CORES} cores was run "
        f"again up to {args.retry_busy} time(s), keeping the quietest ({k['reruns']} reruns).", "",
        bm.markdown_table(["source", "images", "seconds (median)", "images/s", "time ratio", "peak MiB (RSS sum)",
                           "peak MiB (PSS)", "CPU ms/image", "other load (cores)", "runs (s)"], pack_rows), "",
        f"- time, tars / folders: **{k['time_ratio']:.2f}x** (target <= {TARGETS['pack_ratio']:.2f}x: "
        f"{verdict(k['time_ratio'] <= TARGETS['pack_ratio'])})",
        f"- X_train, X_val, y_train, y_val, val_id identical: **{checks['identical']}** "
        f"({', '.join(f'{key} {checks[key]}' for key in ('X_train', 'X_val', 'y_train', 'y_val', 'val_id'))}); "
        f"train_id from the tar numbered as ILSVRC's train_cls.txt: {checks['train_id_tar_as_train_cls']} (the "
        f"folders, without train_cls.txt, number by their own listing: equal to the tar's: "
        f"{checks['train_id_equal']})",
        "", "## (2) Listing on full-size archives", "",
        f"`find_tree(dir, index_dir=...)` then `list_train_images` / `list_val_images` of {len(listing['listed'])} "
        f"classes, in a fresh process (imports untimed), medians of {args.repeats}. Train: a sparse {TRAIN_TAR} "
        f"of the 1,000 class tars of the built-in table, {BYTES_PER_TRAIN_IMAGE:,} bytes per image "
        f"({listing['sizes']['train']['apparent'] / 1e9:.1f} GB apparent, "
        f"{listing['sizes']['train']['on_disk'] / MIB:.0f} MiB on disk); the {len(listing['listed'])} listed classes "
        f"hold their real image count of tiny members ({listing['members_listed']:,}), the other "
        f"{1000 - len(listing['listed'])} are holes. Val: {VAL_TAR} of 50,000 tiny members "
        f"({listing['expected_images']['val']} of them in the listed classes). 'Pages dropped': the archive's "
        "pages were written back and dropped with posix_fadvise before the run (its headers are then read from "
        "the disk; on a sparse file only the headers are real blocks).", "",
        bm.markdown_table(["archive", "listing", "seconds (median)", "find_tree", "list", "peak MiB (RSS)", "runs (s)"],
                          listing_rows), "",
        f"- train, 10 classes, first listing: **{train_first:.2f} s** (pages dropped; target <= "
        f"{TARGETS['train_first_s']} s: {verdict(train_first <= TARGETS['train_first_s'])}), "
        f"{lk['train']['first_warm']:.2f} s with the pages cached; with the index: **{train_indexed:.3f} s** "
        f"(target <= {TARGETS['train_indexed_s']} s: {verdict(train_indexed <= TARGETS['train_indexed_s'])})",
        f"- val, 50,000 members: first listing {lk['val']['first_cold']:.2f} s (pages dropped), "
        f"{lk['val']['first_warm']:.2f} s (cached); with the index {lk['val']['indexed']:.3f} s",
        f"- train ids the same in every listing: {listing['ids_same_every_run']}",
        "", "## Machine", "", bm.machine_markdown(bm.machine_info(bench.PACKER["description"])), "",
    ]
    data = {"mode": "archives", "workers": args.workers, "pack": pack, "listing": listing,
            "key": {"pack_time_ratio": k["time_ratio"], "pack_identical": checks["identical"],
                    "pack_peak_rss_mib": k["peak_rss_mib"], "pack_peak_pss_mib": k["peak_pss_mib"],
                    "train_first_s": train_first, "train_first_warm_s": lk["train"]["first_warm"],
                    "train_indexed_s": train_indexed, "val_first_s": lk["val"]["first_cold"],
                    "val_first_warm_s": lk["val"]["first_warm"], "val_indexed_s": lk["val"]["indexed"]}}
    return "\n".join(lines), data


# --------------------------------------------------------------------------- main

def parse_args(argv=None):
    p = bench.script_parser(__doc__, "real photos named <wnid>_<n>_<label>.jpg")
    p.add_argument("--classes", type=int, default=100, help="classes packed in (1) (default: 100)")
    p.add_argument("--listed", type=int, default=10, help="classes listed in (2), at most 10 (default: 10)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--work_dir", help="trees, archives and outputs (default: a new folder in /tmp, removed at the end)")
    p.add_argument("--results_dir", default=str(BENCH_DIR / "results"))
    p.add_argument("--keep", action="store_true", help="keep the outputs, the big archives and the work dir")
    bench.add_shared_options(p)
    args = p.parse_args(argv)
    if min(args.repeats, args.workers, args.classes, args.listed) < 1 or args.listed > 10:
        p.error("--repeats, --workers, --classes, --listed must be at least 1, --listed at most 10")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    with bench.bench_work_dir(args, "archives") as work_dir:
        pack = run_pack(args, work_dir)
        listing = run_listing(args, work_dir)
    text, data = report(args, pack, listing)
    bench.write_results(args.results_dir, "archives", text, data, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
