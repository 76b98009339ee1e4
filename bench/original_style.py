"""Case (b) of the benchmark: the original script's way, one process, one image at a time.

    python bench/original_style.py ROWS.json OUT.npz

ROWS.json is what ``benchmark.py`` writes of its subset: ``{"train": {"paths": [...],
"labels": [...], "ids": [...]}, "val": {...}}``, absolute image paths in the row
order the packer packs. For each split: a preallocated (N, 224, 224, 3) uint8
array, filled image by image with ``Image.open(p).convert('RGB')`` ->
torchvision's ``Resize(256)`` + ``CenterCrop(224)`` done with Pillow ->
``np.array``; then one ``np.savez`` (uncompressed, no fsync) of the six arrays.

The benchmark times it as a whole process (spawn to exit) beside the packer's
whole-process runs, and samples its peak memory, which grows with the output
since every pixel is held until the end; it then checks that its arrays equal
the packer's (``same_arrays``).

Self-contained on purpose (Pillow and numpy, no ``packer`` import): the baseline
shares no code with what it is compared against. The original script imported
torch and torchvision as well, which takes longer than these imports.
"""
import json
import sys

import numpy as np
from PIL import Image

RESIZE, CROP = 256, 224


def resize_center_crop(image: Image.Image) -> Image.Image:
    """torchvision ``Resize(256)`` then ``CenterCrop(224)`` on a PIL image."""
    width, height = image.size
    if width <= height:
        new_width, new_height = RESIZE, int(RESIZE * height / width)
    else:
        new_width, new_height = int(RESIZE * width / height), RESIZE
    if (new_width, new_height) != (width, height):
        image = image.resize((new_width, new_height), Image.BILINEAR)
    top = int(round((new_height - CROP) / 2.0))
    left = int(round((new_width - CROP) / 2.0))
    return image.crop((left, top, left + CROP, top + CROP))


def main(manifest_path: str, out_path: str) -> None:
    with open(manifest_path) as f:
        manifest = json.load(f)
    arrays = {}
    for split in ("train", "val"):
        paths = manifest[split]["paths"]
        images = np.empty((len(paths), CROP, CROP, 3), dtype=np.uint8)
        for i, path in enumerate(paths):
            images[i] = np.array(resize_center_crop(Image.open(path).convert("RGB")))
        arrays[f"X_{split}"] = images
        arrays[f"y_{split}"] = np.array(manifest[split]["labels"], dtype=np.int32)
        arrays[f"{split}_id"] = np.array(manifest[split]["ids"], dtype=np.int32)
    np.savez(out_path, **arrays)


if __name__ == "__main__":
    main(*sys.argv[1:3])
