"""Inspect a built archive: ``info`` (headers and manifest only) and ``verify`` (check everything).

``info`` never reads pixel data, so it is instant whatever the archive's size.

``verify`` checks, and reports each failure on its own line:

1. the manifest ``<name>_cls.manifest.json`` is there and readable;
2. the archive's size and SHA-256 equal the manifest's; on a mismatch, the
   rows whose pixels no longer match their recorded CRC-32 are named, and so
   is an image array that cannot be read to its end;
3. the ZIP structure: the expected keys, dtypes (uint8 images, int32 labels
   and ids) and shapes ((N, crop, crop, 3), or (N, 3, crop, crop) with layout
   nchw; (N,); (N,));
4. labels within range, ids unique within each split, per-split and per-class
   counts equal to the manifest;
5. the metadata CSV's SHA-256 equals the manifest's.

What it reads: the SHA-256 reads every byte of the file, decompressing nothing;
the structure comes from the headers; the counts from the label and id arrays
alone. Image rows are read (and, in a compressed archive, decompressed) only
when the SHA-256 differs, to name the damaged rows.

A manifest written by a newer imagenet-subset (a ``manifest_version`` above
``MANIFEST_VERSION``) is refused with a ``UserError`` by every reader of
manifests (``info``, ``verify``, ``build --recipe``); one without a
``manifest_version`` is version 1.
"""
import json
import zlib
from pathlib import Path

import numpy as np

from .describe import MANIFEST_VERSION, sha256_of_file
from .errors import UserError
from .loading import ArrayHeader, array_headers, iter_rows, read_arrays, refuse_other_outputs, shard_paths
from .options import OutputNames, shown


class UnreadableManifest(UserError):
    """A manifest that is missing, is not JSON, or was not written by imagenet-subset. ``verify``
    reports it as a problem and goes on with the checks that need no manifest."""


def read_manifest(path: str | Path) -> dict:
    """The manifest at ``path``. ``UnreadableManifest`` names a missing or unreadable one; a
    ``UserError`` refuses one of a newer ``manifest_version`` than this tool reads."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise UnreadableManifest(f"no manifest at {path}; it is written beside the archive by every build") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnreadableManifest(f"{path} is not a readable manifest ({exc}); rebuild the archive") from None
    if not isinstance(manifest, dict) or manifest.get("tool") != "imagenet-subset":
        raise UnreadableManifest(f"{path} is not an imagenet-subset manifest")
    version = manifest.get("manifest_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise UnreadableManifest(f"{path}: manifest_version {version!r} is not a version number; rebuild the archive")
    if version > MANIFEST_VERSION:
        raise UserError(f"{path} is a version {version} manifest, newer than this imagenet-subset reads "
                        f"(version {MANIFEST_VERSION}); update imagenet-subset to read it")
    lacking = [key for key, kind in (("options", dict), ("classes", list), ("splits", dict), ("files", dict),
                                     ("sources", dict)) if not isinstance(manifest.get(key), kind)]
    if lacking or not isinstance(manifest["files"].get("metadata"), dict):
        raise UnreadableManifest(f"{path} lacks {', '.join(lacking or ['files.metadata'])}: it is not a complete "
                                 "manifest; rebuild the archive")
    return manifest


def _split_names(headers) -> list[str]:
    return [key[2:] for key in headers if key.startswith("X_")]


def info(path: str | Path) -> str:
    """A readable summary of an archive from its headers, manifest and metadata CSV."""
    path = Path(path)
    shards = shard_paths(path) if OutputNames.is_index(path) else None
    headers = array_headers(shards[0] if shards else path)
    manifest_path = OutputNames.sibling(path, "manifest")
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
        transform = (f"squash to {options['crop_size']}" if options.get("resize") == "squash"
                     else f"resize {options['resize_size']}, crop {options['crop_size']}")
        lines.append(f"options: {transform}, {'fast' if options['fast'] else 'exact'}, "
                     f"{'compressed' if options['compress'] else 'stored'}")
        if manifest.get("sizes"):
            lines.append(f"sizes: the same pass wrote {len(manifest['sizes'])} sizes of these images: "
                         + ", ".join(f"{_called_by(entry['files'])} ({entry['size']}){_since(path, entry)}"
                                     for entry in manifest["sizes"]))
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
    csv = OutputNames.sibling(path, "metadata")
    if csv.is_file():
        import pandas as pd

        table = pd.read_csv(csv, dtype={"human_label": "string"})
        lines.append("classes:")
        lines += ["  " + line for line in table.astype(object).fillna("").to_string(index=False).splitlines()]
    return "\n".join(lines)


def _since(path: Path, entry: dict) -> str:
    """``""`` when the build of a ``sizes`` entry beside ``path`` is still the one the pass wrote
    (its manifest records the same archive SHA-256s), else what became of it."""
    manifest = path.with_name(OutputNames(entry["name"]).manifest)
    try:
        files = read_manifest(manifest)["files"]
    except (UserError, KeyError, TypeError, AttributeError):  # (UnreadableManifest is a UserError)
        return " [missing]"
    recorded = [record.get("sha256") for record in entry["files"].get("shards", [entry["files"].get("archive", {})])]
    now = [record.get("sha256") for record in files.get("shards", [files.get("archive", {})])]
    return "" if recorded == now else " [since replaced by another build]"


def _called_by(files: dict) -> str:
    """The file a build is opened by, from its manifest's ``files``: the archive or the shard index."""
    return files["index"] if "index" in files else files["archive"]["file"]


def _damaged_rows(path: Path, manifest: dict, first_rows: dict[str, int]) -> tuple[list[str], list[str]]:
    """The rows of ``path`` whose pixels no longer match the manifest's CRC-32, as ``X_<split> row <n>
    (<source path>)``, and the image arrays that cannot be read to their end. Reads every row."""
    damaged, unreadable = [], []
    headers = array_headers(path)
    for split, sources in manifest["sources"].items():
        key, first = f"X_{split}", first_rows.get(split, 0)
        if key not in headers or first + headers[key].shape[0] > len(sources["row_crc32"]):
            continue
        try:
            for row, pixels in enumerate(iter_rows(path, key), start=first):
                if zlib.crc32(np.ascontiguousarray(pixels).data) != sources["row_crc32"][row]:
                    damaged.append(f"{key} row {row} ({sources['paths'][row]})")
        except UserError as exc:
            unreadable.append(str(exc))
    return damaged, unreadable


def _archives_of(path: Path, manifest: dict | None) -> list[tuple[Path, dict | None]]:
    """The archive files to check, each with its manifest record (None without a manifest)."""
    shards = manifest["files"].get("shards") if manifest else None
    if OutputNames.is_index(path):
        records = shards or [None] * len(shard_paths(path))
        return list(zip(shard_paths(path), records, strict=True))
    if shards:
        return [(path, next((r for r in shards if r["file"] == path.name), None))]
    return [(path, manifest["files"]["archive"] if manifest else None)]


def verify(path: str | Path) -> list[str]:
    """Every problem found with the archive (or sharded set) at ``path``; an empty list: all checks hold."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder; pass an archive (*_cls.npz) or a shard index (*_cls.index.json)")
    if not path.is_file():
        raise UserError(f"{path} does not exist; build it first or check the path")
    refuse_other_outputs(path)
    problems = []
    manifest: dict | None
    try:
        manifest = read_manifest(OutputNames.sibling(path, "manifest"))
    except UnreadableManifest as exc:
        manifest = None
        problems.append(str(exc))
    archives = _archives_of(path, manifest)
    labels: dict[str, list[np.ndarray]] = {}
    ids: dict[str, list[np.ndarray]] = {}
    complete = True  # every archive's labels and ids could be read
    for archive, record in archives:
        if not archive.is_file():
            problems.append(f"{archive} is missing")
            complete = False
            continue
        first_rows = {split: rows[0] for split, rows in record.get("rows", {}).items()} if record else {}
        if record and manifest:
            problems += _checksum_problems(archive, record, manifest, first_rows)
        try:
            headers = array_headers(archive)
        except UserError as exc:
            problems.append(str(exc))
            complete = False
            continue
        problems += _structure_problems(archive, headers, manifest)
        try:
            arrays = read_arrays(archive, [key for key in headers if not key.startswith("X_")])
        except UserError as exc:
            problems.append(str(exc))
            complete = False
            continue
        for split in _split_names(headers):
            if f"y_{split}" in headers and f"{split}_id" in headers:
                labels.setdefault(split, []).append(np.asarray(arrays[f"y_{split}"]))
                ids.setdefault(split, []).append(np.asarray(arrays[f"{split}_id"]))
    whole_set = len(archives) > 1 or not (manifest and manifest["files"].get("shards"))
    if manifest and whole_set and complete:
        problems += _count_problems(path, manifest, labels, ids)
    csv = OutputNames.sibling(path, "metadata")
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
        damaged, unreadable = _damaged_rows(archive, manifest, first_rows)
    except UserError:
        return problems  # the headers cannot be read: reported with the structure
    if damaged:
        problems.append(f"{len(damaged)} image rows differ from their recorded CRC-32: {shown(damaged, 5)}")
    return problems + unreadable


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


def _structure_problems(path: Path, headers: dict[str, ArrayHeader], manifest: dict | None) -> list[str]:
    """Keys, dtypes and shapes of one archive."""
    problems = []
    splits = _split_names(headers)
    if "train" not in splits or "val" not in splits:
        problems.append(f"{path}: expected arrays X_train and X_val, found {', '.join(headers)}")
    options = manifest["options"] if manifest else {}
    crop, channels_first = options.get("crop_size"), options.get("layout") == "nchw"
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
        wrong_side = crop and image_shape[1:] != (crop, crop)
        if x.dtype != np.uint8 or len(x.shape) != 4 or image_shape[0] != 3 or wrong_side:
            problems.append(f"{path}: {x_key} is {x.dtype} {x.shape}, expected uint8 {expected}")
        for header in (headers[y_key], headers[id_key]):
            if header.dtype != np.int32 or header.shape != (x.shape[0],):
                problems.append(f"{path}: {header.key} is {header.dtype} {header.shape}, "
                                f"expected int32 ({x.shape[0]},)")
    return problems
