"""Inspect a built archive: ``info`` (headers and manifest only) and ``verify`` (check everything).

``info`` never reads pixel data, so it is instant whatever the archive's size.

``verify`` checks, and reports each failure on its own line:

1. the manifest ``<name>_cls.manifest.json`` is there and readable;
2. the archive's size and SHA-256 equal the manifest's; on a mismatch, the
   rows whose pixels no longer match their recorded CRC-32 are named;
3. the ZIP structure: the expected keys, dtypes (uint8 images, int32 labels
   and ids) and shapes ((N, crop, crop, 3), (N,), (N,));
4. labels within range, ids unique within each split, per-split and per-class
   counts equal to the manifest;
5. the metadata CSV's SHA-256 equals the manifest's.
"""
import json
import zlib
from pathlib import Path

import numpy as np

from .describe import sha256_of_file
from .errors import UserError
from .load import array_headers, load, metadata_path_of


def manifest_path_of(archive: str | Path) -> Path:
    """``out/x_cls.manifest.json`` for ``out/x_cls.npz``."""
    archive = Path(archive)
    return archive.with_name(archive.name.removesuffix(".npz") + ".manifest.json")


def read_manifest(path: str | Path) -> dict:
    """The manifest at ``path``; ``UserError`` names a missing or unreadable one."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise UserError(f"no manifest at {path}; it is written beside the archive by every build") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is not a readable manifest ({exc}); rebuild the archive") from None
    if not isinstance(manifest, dict) or manifest.get("tool") != "imagenet-subset":
        raise UserError(f"{path} is not an imagenet-subset manifest")
    return manifest


def _split_names(headers) -> list[str]:
    return [key[2:] for key in headers if key.startswith("X_")]


def info(path: str | Path) -> str:
    """A readable summary of an archive from its headers, manifest and metadata CSV."""
    path = Path(path)
    headers = array_headers(path)
    manifest_path = manifest_path_of(path)
    manifest = read_manifest(manifest_path) if manifest_path.is_file() else None
    size = path.stat().st_size
    compressed = any(h.compressed for h in headers.values())
    lines = [f"{path}  {size / 1e6:,.1f} MB  {'deflated' if compressed else 'stored (memory-mappable)'}"]
    if manifest:
        options, build = manifest["options"], manifest["build"]
        splits = ", ".join(f"{s['images']} {name}" for name, s in manifest["splits"].items())
        lines.append(f"built by {manifest['tool']} {manifest['tool_version']} at {build['finished_utc']}: "
                     f"{splits} images, {len(manifest['classes'])} classes, {build['images_per_second']} images/s")
        lines.append(f"options: resize {options['resize_size']}, crop {options['crop_size']}, "
                     f"{'fast' if options['fast'] else 'exact'}, {'compressed' if options['compress'] else 'stored'}")
        lines.append(f"sha256: {manifest['files']['archive']['sha256']} (from the manifest; run verify to check)")
        stats = manifest.get("X_train_stats")
        if stats and stats["mean"][0] is not None:
            lines.append(f"X_train mean {stats['mean']}  std {stats['std']}")
    else:
        lines.append(f"no manifest ({manifest_path.name} not found)")
    lines.append("arrays:")
    for key, header in headers.items():
        lines.append(f"  {key:<12} {str(header.dtype):<7} {header.shape}")
    csv = metadata_path_of(path)
    if csv.is_file():
        import pandas as pd

        table = pd.read_csv(csv, dtype={"human_label": "string"})
        lines.append("classes:")
        lines += ["  " + line for line in table.astype(object).fillna("").to_string(index=False).splitlines()]
    return "\n".join(lines)


def _damaged_rows(path: Path, manifest: dict) -> list[str]:
    """Sources of the rows whose pixels no longer match the manifest's CRC-32."""
    data = load(path)
    damaged = []
    for split, sources in manifest["sources"].items():
        images = data.arrays.get(f"X_{split}")
        if images is None or len(images) != len(sources["row_crc32"]):
            continue
        for row, expected in enumerate(sources["row_crc32"]):
            if zlib.crc32(np.ascontiguousarray(images[row])) != expected:
                damaged.append(f"X_{split} row {row} ({sources['paths'][row]})")
    return damaged


def verify(path: str | Path) -> list[str]:
    """Every problem found with the archive at ``path`` (an empty list: all checks hold)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist; build it first or check the path")
    problems = []
    try:
        manifest = read_manifest(manifest_path_of(path))
    except UserError as exc:
        manifest = None
        problems.append(str(exc))
    if manifest:
        expected = manifest["files"]["archive"]
        size = path.stat().st_size
        if size != expected["bytes"]:
            problems.append(f"{path} is {size} bytes but the manifest says {expected['bytes']}: "
                            f"{'truncated' if size < expected['bytes'] else 'extended'}; rebuild or re-download it")
        elif sha256_of_file(path) != expected["sha256"]:
            problems.append(f"{path}: SHA-256 differs from the manifest: the file was changed or damaged")
            try:
                damaged = _damaged_rows(path, manifest)
            except UserError:
                damaged = []
            if damaged:
                problems.append(f"{len(damaged)} image rows differ from their recorded CRC-32: "
                                + ", ".join(damaged[:5]) + (" ..." if len(damaged) > 5 else ""))
    try:
        headers = array_headers(path)
    except UserError as exc:
        return problems + [str(exc)]
    problems += _structure_problems(path, headers, manifest)
    csv = metadata_path_of(path)
    if manifest and csv.is_file() and sha256_of_file(csv) != manifest["files"]["metadata"]["sha256"]:
        problems.append(f"{csv}: SHA-256 differs from the manifest: the file was changed")
    elif manifest and not csv.is_file():
        problems.append(f"{csv} is missing")
    return problems


def _structure_problems(path: Path, headers, manifest: dict | None) -> list[str]:
    problems = []
    splits = _split_names(headers)
    if "train" not in splits or "val" not in splits:
        problems.append(f"{path}: expected arrays X_train and X_val, found {', '.join(headers)}")
    crop = manifest["options"]["crop_size"] if manifest else None
    channels_first = bool(manifest) and manifest["options"].get("layout") == "nchw"
    num_classes = len(manifest["classes"]) if manifest else None
    data = load(path)
    for split in splits:
        x_key, y_key, id_key = f"X_{split}", f"y_{split}", f"{split}_id"
        missing = [k for k in (y_key, id_key) if k not in headers]
        if missing:
            problems.append(f"{path}: {x_key} has no {' or '.join(missing)}")
            continue
        x, y, ids = headers[x_key], headers[y_key], headers[id_key]
        n = x.shape[0]
        side = crop or "S"
        expected, image_shape = ((f"(N, 3, {side}, {side})", x.shape[1:]) if channels_first
                                 else (f"(N, {side}, {side}, 3)", x.shape[1:][::-1]))
        if x.dtype != np.uint8 or len(x.shape) != 4 or image_shape[0] != 3 or (crop and image_shape[1:] != (crop, crop)):
            problems.append(f"{path}: {x_key} is {x.dtype} {x.shape}, expected uint8 {expected}")
        for header in (y, ids):
            if header.dtype != np.int32 or header.shape != (n,):
                problems.append(f"{path}: {header.key} is {header.dtype} {header.shape}, expected int32 ({n},)")
        labels, id_values = np.asarray(data[y_key]), np.asarray(data[id_key])
        if num_classes is not None and labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            problems.append(f"{path}: {y_key} has labels outside 0..{num_classes - 1}")
        if len(np.unique(id_values)) != len(id_values):
            problems.append(f"{path}: {id_key} has repeated ids")
        if manifest and split in manifest["splits"]:
            recorded = manifest["splits"][split]
            if n != recorded["images"]:
                problems.append(f"{path}: {x_key} has {n} images, the manifest says {recorded['images']}")
            elif labels.size == n and np.bincount(labels.clip(0), minlength=len(recorded["per_class"])).tolist() != recorded["per_class"]:
                problems.append(f"{path}: per-class counts of {y_key} differ from the manifest")
    return problems
