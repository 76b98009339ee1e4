"""Transform one image: torchvision's ``Resize(256)`` + ``CenterCrop(224)``, in Pillow alone.

The exact rule (``fast=False``, the default), byte for byte what torchvision
computes on a PIL image loaded by its default loader:

1. ``Image.open(path).convert('RGB')`` (grayscale, CMYK, palette and PNG files
   named ``.JPEG`` all go through Pillow's conversion; EXIF orientation is not
   applied, as torchvision does not apply it).
2. Resize so the short side is ``resize_size`` and the long side is
   ``int(resize_size * long / short)``, with Pillow's bilinear filter (always
   antialiased in Pillow); an image already that size is left as it is.
3. Crop ``crop_size`` x ``crop_size`` at ``top = int(round((h - crop) / 2.0))``,
   ``left = int(round((w - crop) / 2.0))`` (Python's round: halves to even).

``resize="squash"`` instead resizes the whole image to ``crop_size`` x
``crop_size`` with Pillow's box filter and no crop (as the Downsampled ImageNet
32x32 and 64x64 sets were made); ``resize_size`` is then unused.

``fast=True`` resizes only the source window that survives the crop, straight
to ``crop_size`` x ``crop_size`` (Pillow's ``resize(box=...)``): the same filter
on the same geometry, so pixels stay within 1 of the exact rule, at a
fraction of the work for large photos.

The result is a C-contiguous ``uint8`` array of shape (crop, crop, 3), rows top
to bottom, RGB. ``layout`` ("nhwc" or "nchw") says how the archive stores it;
``store_rows`` turns a batch into that layout.
"""
import os
from typing import BinaryIO

import numpy as np
from PIL import Image

from .errors import ImageError
from .options import TransformSpec


def resized_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) after scaling the short side to ``short_side``, as torchvision does."""
    if width <= height:
        return short_side, int(short_side * height / width)
    return int(short_side * width / height), short_side


def center_crop_box(width: int, height: int, crop: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of torchvision's center crop of a width x height image."""
    top = int(round((height - crop) / 2.0))
    left = int(round((width - crop) / 2.0))
    return left, top, left + crop, top + crop


def open_rgb(image: str | BinaryIO, name: str | None = None) -> Image.Image:
    """Decode ``image`` (a path, or a binary file open at the image's first byte) fully and return
    it in RGB mode; an ``ImageError`` names ``name`` (by default the path) and what is wrong."""
    name = name or str(image)
    try:
        with Image.open(image) as opened:
            opened.load()
            return opened if opened.mode == "RGB" else opened.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        reason = (str(exc) or type(exc).__name__).replace(name, os.path.basename(name))
        raise ImageError(name, reason) from None


def transform_rgb(image: Image.Image, spec: TransformSpec) -> np.ndarray:
    """Resize and center-crop (or squash) an RGB image by ``spec``; returns (crop, crop, 3) uint8."""
    if spec.resize == "squash":
        return np.asarray(image.resize((spec.crop_size, spec.crop_size), Image.Resampling.BOX))
    width, height = image.size
    new_width, new_height = resized_size(width, height, spec.resize_size)
    left, top, right, bottom = center_crop_box(new_width, new_height, spec.crop_size)
    if spec.fast:
        sx, sy = width / new_width, height / new_height
        window = (left * sx, top * sy, right * sx, bottom * sy)
        result = image.resize((spec.crop_size, spec.crop_size), Image.Resampling.BILINEAR, box=window)
    else:
        if (new_width, new_height) != (width, height):
            image = image.resize((new_width, new_height), Image.Resampling.BILINEAR)
        result = image.crop((left, top, right, bottom))
    return np.asarray(result)


def transform_image(image: str | BinaryIO, spec: TransformSpec, name: str | None = None) -> np.ndarray:
    """Open ``image`` (a path or a binary file; ``name`` names it in errors) and apply ``spec``: the
    whole per-image work of the packer."""
    return transform_rgb(open_rgb(image, name), spec)


def store_rows(rows: np.ndarray, spec: TransformSpec) -> np.ndarray:
    """(n, crop, crop, 3) rows in the archive's layout, C-contiguous."""
    return np.ascontiguousarray(rows.transpose(0, 3, 1, 2)) if spec.layout == "nchw" else rows
