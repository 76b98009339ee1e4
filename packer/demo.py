"""A small synthetic ILSVRC tree in the Kaggle layout, for ``imagenet-subset demo`` and benchmarks.

``write_sample_tree(root, ...)`` writes::

    root/LOC_synset_mapping.txt                 the classes, sorted by WNID
    root/LOC_val_solution.csv                   val labels
    root/ILSVRC/ImageSets/CLS-LOC/train_cls.txt train list, sorted, 1-based ids
    root/ILSVRC/ImageSets/CLS-LOC/val.txt
    root/ILSVRC/Data/CLS-LOC/train/<wnid>/<wnid>_<n>.JPEG
    root/ILSVRC/Data/CLS-LOC/val/ILSVRC2012_val_XXXXXXXX.JPEG  (classes interleaved)

and returns the ``Data/CLS-LOC`` folder. Images are synthetic photos of
ImageNet-like sizes, with the real quirks in the first class (a grayscale
JPEG, a CMYK JPEG, a PNG named ``.JPEG``, a tiny image), or links to real
JPEGs when ``photos`` is given.
"""
import os
from pathlib import Path

import numpy as np
from PIL import Image

IMAGENETTE = {
    "n01440764": "tench, Tinca tinca",
    "n02102040": "English springer, English springer spaniel",
    "n02979186": "cassette player",
    "n03000684": "chain saw, chainsaw",
    "n03028079": "church, church building",
    "n03394916": "French horn, horn",
    "n03417042": "garbage truck, dustcart",
    "n03425413": "gas pump, gasoline pump, petrol pump, island dispenser",
    "n03445777": "golf ball",
    "n03888257": "parachute, chute",
}
OTHER_CLASSES = {
    "n01443537": "goldfish, Carassius auratus",
    "n01484850": "great white shark, white shark, man-eater, man-eating shark, Carcharodon carcharias",
}
PHOTO_SIZES = [(500, 375), (375, 500), (500, 333), (500, 500), (640, 480), (333, 500), (800, 600), (1024, 683)]


def synthetic_photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A random RGB picture with smooth shapes and fine grain, so that it decodes like a photo."""
    small_w, small_h = max(1, width // 4), max(1, height // 4)
    y, x = np.mgrid[0:small_h, 0:small_w].astype(np.float32)
    picture = np.empty((small_h, small_w, 3), dtype=np.float32)
    for channel in range(3):
        a, b, c = rng.uniform(-1, 1, 3)
        picture[..., channel] = 128 + 60 * np.sin(a * x / 10 + b * y / 12 + c * 6)
    for _ in range(4):
        cx, cy, r = rng.uniform(0, small_w), rng.uniform(0, small_h), rng.uniform(3, max(small_w, small_h) / 3)
        picture += np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))[..., None] * rng.uniform(-120, 120, 3)
    picture += rng.normal(0, 10, picture.shape)
    small = Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8))
    return small.resize((width, height), Image.Resampling.BICUBIC)


def _write_image(path: Path, rng: np.random.Generator, index: int, quirks: bool, photos: list[Path] | None) -> None:
    if photos:
        os.symlink(os.path.abspath(photos[index % len(photos)]), path)
        return
    width, height = PHOTO_SIZES[index % len(PHOTO_SIZES)]
    quirk = index if quirks else -1
    if quirk == 3:
        width, height = 60, 40
    picture = synthetic_photo(rng, width, height)
    if quirk == 0:
        picture.convert("L").save(path, "JPEG", quality=90)
    elif quirk == 1:
        picture.convert("CMYK").save(path, "JPEG", quality=90)
    elif quirk == 2:
        picture.save(path, "PNG")
    else:
        picture.save(path, "JPEG", quality=90)


def write_sample_tree(root: str | Path, classes: dict[str, str] | None = None, train_per_class: int = 20,
                      val_per_class: int = 5, seed: int = 0, photos: list[Path] | None = None) -> Path:
    """Write the tree described in the module docstring under ``root``; return its data_dir."""
    root = Path(root)
    classes = dict(sorted((classes or {**IMAGENETTE, **OTHER_CLASSES}).items()))
    rng = np.random.default_rng(seed)
    data_dir = root / "ILSVRC" / "Data" / "CLS-LOC"
    image_sets = root / "ILSVRC" / "ImageSets" / "CLS-LOC"
    for folder in (data_dir / "val", image_sets):
        folder.mkdir(parents=True, exist_ok=True)
    (root / "LOC_synset_mapping.txt").write_text("".join(f"{w} {name}\n" for w, name in classes.items()))

    train_lines, image_index = [], 0
    for class_number, wnid in enumerate(classes):
        (data_dir / "train" / wnid).mkdir(parents=True, exist_ok=True)
        for n in range(train_per_class):
            stem = f"{wnid}_{n + 1}"
            _write_image(data_dir / "train" / wnid / f"{stem}.JPEG", rng, image_index, class_number == 0 and n < 4,
                         photos)
            train_lines.append(f"{wnid}/{stem}")
            image_index += 1
    train_lines.sort()
    (image_sets / "train_cls.txt").write_text("".join(f"{line} {i}\n" for i, line in enumerate(train_lines, 1)))

    val_classes = [w for w in classes for _ in range(val_per_class)]
    rng.shuffle(val_classes)
    solution = ["ImageId,PredictionString\n"]
    for number, wnid in enumerate(val_classes, start=1):
        name = f"ILSVRC2012_val_{number:08d}"
        _write_image(data_dir / "val" / f"{name}.JPEG", rng, image_index, False, photos)
        solution.append(f"{name},{wnid} 10 20 200 220\n")
        image_index += 1
    (root / "LOC_val_solution.csv").write_text("".join(solution))
    numbers = range(1, len(val_classes) + 1)
    (image_sets / "val.txt").write_text("".join(f"ILSVRC2012_val_{n:08d} {n}\n" for n in numbers))
    return data_dir
