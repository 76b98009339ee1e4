"""ILSVRC trees for ``bench/benchmark.py``, cached under the work dir.

- ``photo_tree``: Kaggle layout (``packer.demo.write_sample_tree``) whose images
  are symlinks to real photos, used in cycle (``--images DIR``, and ``--big``).
- ``synthetic_tree``: the same layout with synthetic photos of ImageNet-like
  sizes and the real quirks (grayscale, CMYK, PNG named .JPEG, tiny image).
- ``synthetic_pool``: a few synthetic JPEGs to symlink from when no photos are given.
- ``listing_tree``: the shape of the full ILSVRC train set (1,000 class folders,
  1,281,167 *empty* files, a matching ``train_cls.txt``) plus a flat val folder
  (empty files) with ``LOC_val_solution.csv``: for timing discovery and listing only.

A tree is reused when its folder holds a ``.bench-tree.json`` with the same
parameters; otherwise it is rebuilt.
"""
import json
import os
import shutil
from pathlib import Path

import numpy as np

# packer.demo is imported inside the functions: benchmark.py chooses which packer first.

MARKER = ".bench-tree.json"


def class_names(n: int) -> dict[str, str]:
    """``n`` WNIDs: the 10 imagenette ones first, then made-up ones (n9xxxxxxx)."""
    from packer.demo import IMAGENETTE

    classes = dict(list(IMAGENETTE.items())[:n])
    i = 0
    while len(classes) < n:
        classes[f"n{90000000 + i:08d}"] = f"bench class {i}"
        i += 1
    return classes


def _cached(folder: Path, params: dict) -> bool:
    marker = folder / MARKER
    try:
        return json.loads(marker.read_text()) == params
    except (OSError, ValueError):
        return False


def _fresh(folder: Path) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)


def _mark(folder: Path, params: dict) -> None:
    (folder / MARKER).write_text(json.dumps(params))


def photos_in(images_dir: str | Path) -> list[Path]:
    photos = sorted(p for p in Path(images_dir).iterdir() if p.suffix.lower() in (".jpg", ".jpeg") and p.is_file())
    if not photos:
        raise SystemExit(f"benchmark: no .jpg/.jpeg files in {images_dir}")
    return photos


def photo_tree(folder: Path, photos: list[Path], classes: int, train: int, val: int) -> Path:
    """Kaggle-layout tree of symlinks to ``photos`` (in cycle); returns its data_dir."""
    from packer.demo import write_sample_tree

    params = {"kind": "photos", "photos": [str(p.resolve()) for p in photos], "classes": classes,
              "train": train, "val": val}
    data_dir = folder / "ILSVRC" / "Data" / "CLS-LOC"
    if not _cached(folder, params):
        _fresh(folder)
        write_sample_tree(folder, class_names(classes), train, val, photos=[p.resolve() for p in photos])
        _mark(folder, params)
    return data_dir


def synthetic_tree(folder: Path, classes: int, train: int, val: int) -> Path:
    """Kaggle-layout tree of synthetic photos (``write_sample_tree`` without photos); returns its data_dir."""
    from packer.demo import write_sample_tree

    params = {"kind": "synthetic", "classes": classes, "train": train, "val": val}
    data_dir = folder / "ILSVRC" / "Data" / "CLS-LOC"
    if not _cached(folder, params):
        _fresh(folder)
        write_sample_tree(folder, class_names(classes), train, val)
        _mark(folder, params)
    return data_dir


def synthetic_pool(folder: Path, count: int = 200) -> list[Path]:
    """``count`` synthetic JPEGs of ImageNet-like sizes to symlink from."""
    from packer.demo import PHOTO_SIZES, synthetic_photo

    params = {"kind": "pool", "count": count}
    if not _cached(folder, params):
        _fresh(folder)
        rng = np.random.default_rng(1)
        for i in range(count):
            width, height = PHOTO_SIZES[i % len(PHOTO_SIZES)]
            synthetic_photo(rng, width, height).save(folder / f"pool_{i:04d}.jpg", "JPEG", quality=90)
        _mark(folder, params)
    return sorted(folder.glob("pool_*.jpg"))


def write_subset_list(path: Path, wnids: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{w}\n" for w in wnids))
    return path


def _touch_all(paths) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    for path in paths:
        os.close(os.open(path, flags, 0o644))


def listing_tree(folder: Path, classes: int = 1000, images: int = 1_281_167, val_images: int = 50_000,
                 seed: int = 0) -> tuple[Path, Path]:
    """A tree shaped like the full ILSVRC train set, with empty files; returns (data_dir, train_cls.txt).

    Class folders get ``images // classes`` files each, the first ``images % classes``
    one more; stems are ``<wnid>_<k>`` with sparse ``k`` as in the real set.
    ``train_cls.txt`` lists them sorted by path with 1-based ids; val holds
    ``val_images`` flat ``ILSVRC2012_val_XXXXXXXX.JPEG`` files labelled in
    ``LOC_val_solution.csv``; ``LOC_synset_mapping.txt`` names the classes.
    """
    params = {"kind": "listing", "classes": classes, "images": images, "val": val_images, "seed": seed}
    data_dir = folder / "ILSVRC" / "Data" / "CLS-LOC"
    train_cls = folder / "ILSVRC" / "ImageSets" / "CLS-LOC" / "train_cls.txt"
    if _cached(folder, params):
        disabled = train_cls.with_name(train_cls.name + ".disabled")
        if disabled.exists() and not train_cls.exists():  # an interrupted "without train_cls.txt" run
            disabled.rename(train_cls)
        return data_dir, train_cls
    _fresh(folder)
    rng = np.random.default_rng(seed)
    names = dict(sorted(class_names(classes).items()))
    per_class, extra = divmod(images, classes)
    lines = []
    for i, wnid in enumerate(names):
        count = per_class + (1 if i < extra else 0)
        class_dir = data_dir / "train" / wnid
        class_dir.mkdir(parents=True)
        numbers = np.sort(rng.choice(np.arange(1, max(60_000, 2 * count)), size=count, replace=False))
        stems = [f"{wnid}_{k}" for k in numbers]
        _touch_all(str(class_dir / f"{stem}.JPEG") for stem in stems)
        lines += [f"{wnid}/{stem}" for stem in stems]
    lines.sort()
    train_cls.parent.mkdir(parents=True, exist_ok=True)
    with open(train_cls, "w") as f:
        f.writelines(f"{line} {i}\n" for i, line in enumerate(lines, 1))
    val_dir = data_dir / "val"
    val_dir.mkdir(parents=True)
    _touch_all(str(val_dir / f"ILSVRC2012_val_{n:08d}.JPEG") for n in range(1, val_images + 1))
    wnids = list(names)
    labels = rng.integers(0, len(wnids), size=val_images)
    with open(folder / "LOC_val_solution.csv", "w") as f:
        f.write("ImageId,PredictionString\n")
        f.writelines(f"ILSVRC2012_val_{n:08d},{wnids[c]} 10 20 200 220\n" for n, c in enumerate(labels, 1))
    (folder / "LOC_synset_mapping.txt").write_text("".join(f"{w} {name}\n" for w, name in names.items()))
    _mark(folder, params)
    return data_dir, train_cls
