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
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .describe import sha256_of_file
from .errors import UserError
from .load import array_headers, load, metadata_path_of, output_stem, shard_paths


def manifest_path_of(archive: str | Path) -> Path:
    """``out/x_cls.manifest.json`` for ``out/x_cls.npz`` (or a shard, or the index)."""
    stem = output_stem(archive)
    return stem.with_name(stem.name + ".manifest.json")


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
    shards = shard_paths(path) if path.name.endswith(".index.json") else None
    headers = array_headers(shards[0] if shards else path)
    manifest_path = manifest_path_of(path)
    manifest = read_manifest(manifest_path) if manifest_path.is_file() else None
    size = sum(p.stat().st_size for p in shards) if shards else path.stat().st_size
    compressed = any(h.compressed for h in headers.values())
    kind = f"{len(shards)} shards, " if shards else ""
    lines = [f"{path}  {size / 1e6:,.1f} MB  {kind}{'deflated' if compressed else 'stored (memory-mappable)'}"]
    if manifest:
        options, build = manifest["options"], manifest["build"]
        splits = ", ".join(f"{s['images']} {name}" for name, s in manifest["splits"].items())
        lines.append(f"built by {manifest['tool']} {manifest['tool_version']} at {build['finished_utc']}: "
                     f"{splits} images, {len(manifest['classes'])} classes, {build['images_per_second']} images/s")
        lines.append(f"options: resize {options['resize_size']}, crop {options['crop_size']}, "
                     f"{'fast' if options['fast'] else 'exact'}, {'compressed' if options['compress'] else 'stored'}")
        for record in manifest["files"].get("shards", [manifest["files"].get("archive")]):
            lines.append(f"sha256: {record['sha256']}  {record['file']} (from the manifest; run verify to check)")
        stats = manifest.get("X_train_stats")
        if stats and stats["mean"][0] is not None:
            lines.append(f"X_train mean {stats['mean']}  std {stats['std']}")
    else:
        lines.append(f"no manifest ({manifest_path.name} not found)")
    lines.append("arrays" + (" (first shard):" if shards else ":"))
    for key, header in headers.items():
        lines.append(f"  {key:<12} {str(header.dtype):<7} {header.shape}")
    csv = metadata_path_of(path)
    if csv.is_file():
        import pandas as pd

        table = pd.read_csv(csv, dtype={"human_label": "string"})
        lines.append("classes:")
        lines += ["  " + line for line in table.astype(object).fillna("").to_string(index=False).splitlines()]
    return "\n".join(lines)


def _damaged_rows(path: Path, manifest: dict, first_rows: dict[str, int]) -> list[str]:
    """Sources of the rows of ``path`` whose pixels no longer match the manifest's CRC-32."""
    data = load(path)
    damaged = []
    for split, sources in manifest["sources"].items():
        images = data.arrays.get(f"X_{split}")
        first = first_rows.get(split, 0)
        if images is None or first + len(images) > len(sources["row_crc32"]):
            continue
        for row in range(len(images)):
            if zlib.crc32(np.ascontiguousarray(images[row])) != sources["row_crc32"][first + row]:
                damaged.append(f"X_{split} row {first + row} ({sources['paths'][first + row]})")
    return damaged


def _archives_of(path: Path, manifest: dict | None) -> list[tuple[Path, dict | None]]:
    """The archive files to check, each with its manifest record (None without a manifest)."""
    shards = manifest["files"].get("shards") if manifest else None
    if path.name.endswith(".index.json"):
        records = shards or [None] * len(shard_paths(path))
        return list(zip(shard_paths(path), records))
    if shards:
        return [(path, next((r for r in shards if r["file"] == path.name), None))]
    return [(path, manifest["files"]["archive"] if manifest else None)]


def verify(path: str | Path) -> list[str]:
    """Every problem found with the archive (or sharded set) at ``path``; an empty list: all checks hold."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist; build it first or check the path")
    problems = []
    try:
        manifest = read_manifest(manifest_path_of(path))
    except UserError as exc:
        manifest = None
        problems.append(str(exc))
    archives = _archives_of(path, manifest)
    labels, ids = {}, {}
    complete = True  # every archive's labels and ids could be read
    for archive, record in archives:
        if not archive.is_file():
            problems.append(f"{archive} is missing")
            complete = False
            continue
        first_rows = {split: rows[0] for split, rows in record.get("rows", {}).items()} if record else {}
        if record:
            problems += _checksum_problems(archive, record, manifest, first_rows)
        try:
            headers = array_headers(archive)
        except UserError as exc:
            problems.append(str(exc))
            complete = False
            continue
        problems += _structure_problems(archive, headers, manifest)
        try:
            data = load(archive)
            arrays = {key: np.asarray(data[key]) for key in headers if not key.startswith("X_")}
        except (UserError, zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
            problems.append(f"{archive}: cannot read its arrays ({exc}); the file is damaged, rebuild or re-download it")
            complete = False
            continue
        for split in _split_names(headers):
            if f"y_{split}" in headers and f"{split}_id" in headers:
                labels.setdefault(split, []).append(arrays[f"y_{split}"])
                ids.setdefault(split, []).append(arrays[f"{split}_id"])
    whole_set = len(archives) > 1 or not (manifest and manifest["files"].get("shards"))
    if manifest and whole_set and complete:
        problems += _count_problems(path, manifest, labels, ids)
    csv = metadata_path_of(path)
    if manifest and csv.is_file() and sha256_of_file(csv) != manifest["files"]["metadata"]["sha256"]:
        problems.append(f"{csv}: SHA-256 differs from the manifest: the file was changed")
    elif manifest and not csv.is_file():
        problems.append(f"{csv} is missing")
    return problems


def _checksum_problems(archive: Path, record: dict, manifest: dict, first_rows: dict[str, int]) -> list[str]:
    size = archive.stat().st_size
    if size != record["bytes"]:
        return [f"{archive} is {size} bytes but the manifest says {record['bytes']}: "
                f"{'truncated' if size < record['bytes'] else 'extended'}; rebuild or re-download it"]
    if sha256_of_file(archive) == record["sha256"]:
        return []
    problems = [f"{archive}: SHA-256 differs from the manifest: the file was changed or damaged"]
    try:
        damaged = _damaged_rows(archive, manifest, first_rows)
    except (UserError, zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError):
        damaged = []  # the rows cannot be read back; the SHA-256 problem stands
    if damaged:
        problems.append(f"{len(damaged)} image rows differ from their recorded CRC-32: "
                        + ", ".join(damaged[:5]) + (" ..." if len(damaged) > 5 else ""))
    return problems


def _count_problems(path: Path, manifest: dict, labels: dict, ids: dict) -> list[str]:
    problems = []
    for split, recorded in manifest["splits"].items():
        y = np.concatenate(labels.get(split, [np.zeros(0, np.int32)]))
        split_ids = np.concatenate(ids.get(split, [np.zeros(0, np.int32)]))
        if len(y) != recorded["images"]:
            problems.append(f"{path}: X_{split} has {len(y)} images, the manifest says {recorded['images']}")
        elif y.size and (y.min() < 0 or y.max() >= len(recorded["per_class"])):
            problems.append(f"{path}: y_{split} has labels outside 0..{len(recorded['per_class']) - 1}")
        elif np.bincount(y, minlength=len(recorded["per_class"])).tolist() != recorded["per_class"]:
            problems.append(f"{path}: per-class counts of y_{split} differ from the manifest")
        if len(np.unique(split_ids)) != len(split_ids):
            problems.append(f"{path}: {split}_id has repeated ids")
    return problems


def _structure_problems(path: Path, headers, manifest: dict | None) -> list[str]:
    """Keys, dtypes and shapes of one archive."""
    problems = []
    splits = _split_names(headers)
    if "train" not in splits or "val" not in splits:
        problems.append(f"{path}: expected arrays X_train and X_val, found {', '.join(headers)}")
    crop = manifest["options"]["crop_size"] if manifest else None
    channels_first = bool(manifest) and manifest["options"].get("layout") == "nchw"
    for split in splits:
        x_key, y_key, id_key = f"X_{split}", f"y_{split}", f"{split}_id"
        missing = [k for k in (y_key, id_key) if k not in headers]
        if missing:
            problems.append(f"{path}: {x_key} has no {' or '.join(missing)}")
            continue
        x = headers[x_key]
        side = crop or "S"
        expected, image_shape = ((f"(N, 3, {side}, {side})", x.shape[1:]) if channels_first
                                 else (f"(N, {side}, {side}, 3)", x.shape[1:][::-1]))
        if x.dtype != np.uint8 or len(x.shape) != 4 or image_shape[0] != 3 or (crop and image_shape[1:] != (crop, crop)):
            problems.append(f"{path}: {x_key} is {x.dtype} {x.shape}, expected uint8 {expected}")
        for header in (headers[y_key], headers[id_key]):
            if header.dtype != np.int32 or header.shape != (x.shape[0],):
                problems.append(f"{path}: {header.key} is {header.dtype} {header.shape}, expected int32 ({x.shape[0]},)")
    return problems
