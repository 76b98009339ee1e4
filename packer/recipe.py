"""Rebuild an archive from its manifest (a "recipe") on another copy of ImageNet.

ImageNet's terms forbid passing the images on, so a collaborator gets the small
manifest instead and runs ``imagenet-subset build --recipe M.json --data_dir
THEIR/Data/CLS-LOC``. The recipe fixes everything: the options, the classes,
and every row (split, relative path, id, label). The rebuild packs exactly those
files, then compares each row's pixel CRC-32 and the archive's SHA-256 with
the recipe's and names every image that differs.

A recipe is input from someone else, so ``check_recipe`` reads all of it
before any image is looked at or the output folder is touched, and rejects, in
one error, anything a build would not have written. What it reads (the
manifest format is in ``describe.py``):

    name        a file-name stem (it names the outputs): not empty, no ``/``,
                ``\\``, ``:``, ``..`` or control characters
    options     resize_size, crop_size (whole numbers, at least 1), fast,
                compress (true or false); optional resize, layout, shard_size
    classes     a non-empty list, in label order, of {name, wnids}: WNIDs
                (``n`` + 8 digits, each in one class only), or none for the
                ``rest`` label (``"rest": true``)
    sources     ``train`` and ``val``, and ``holdout`` if the build had one, each
                {label_source, paths, ids, labels, row_crc32}: lists of one
                length (the rows); ids 1 to 2**31 - 1, labels 0 to len(classes) - 1,
                CRC-32s 0 to 2**32 - 1
    input, subset_source, files (the SHA-256s compared with the rebuild)
    sizes       (a build of several sizes) two or more {size, name, fast, files}:
                each size as ``--sizes`` writes it, each name the one the build gives
                that size, the recipe's own among them; the rebuild writes every
                size in one pass and compares each archive's SHA-256

Every path must be relative: ``/``-separated parts, none of them empty, ``.``
or ``..``, no backslash, drive (``C:``) or control character. The paths are
looked up under ``--data_dir`` only, in the split's own folder (``SPLIT_FOLDERS``);
the manifest's ``root`` entries are ignored.
"""
import dataclasses
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import numpy as np

from .checking import read_manifest
from .download import DownloadOptions, LabelWork, download, download_folder, read_attempts, write_class_names
from .errors import UserError
from .execute import execute, new_out_dir_removed_on_failure
from .labelfiles import WNID_RE
from .options import (
    BuildOptions,
    BuildPlan,
    BuildResult,
    Layout,
    Resize,
    Size,
    option_fields,
    parse_size,
    shown,
    size_name,
)
from .subset import Label, SubsetList
from .tree import SplitImages, class_table, downloaded_paths, find_tree
from .urllist import IMAGE_ID_RE, ListedImage

SPLIT_FOLDERS = {"train": "train", "val": "val", "holdout": "train"}
"""The splits a recipe may hold, in row-group order, and the folder of ``--data_dir`` holding
each one's images (held-out images are train images)."""

ROW_LISTS = ("paths", "ids", "labels", "row_crc32")
INT32_MAX, UINT32_MAX = 2**31 - 1, 2**32 - 1
_DRIVE_RE = re.compile(r"[A-Za-z]:")
_ABSENT = object()


@dataclass(frozen=True)
class RecipeReport:
    """The rebuild's result and how it compares with the recipe."""

    result: BuildResult
    archive_matches: bool
    metadata_matches: bool
    differing_images: tuple[str, ...]
    differing_archives: tuple[str, ...] = ()  # the archive files (or shard indexes) whose SHA-256 differs

    def summary(self) -> str:
        shown = ", ".join(self.differing_images[:5]) + (" ..." if len(self.differing_images) > 5 else "")
        images = f"{len(self.differing_images)} images differ" + (f": {shown}" if shown else "")
        if not self.result.other_sizes:
            verdict = (f"archive identical to the recipe (sha256 {self.result.sha256})" if self.archive_matches
                       else f"archive DIFFERS from the recipe: {images}"
                       + ("" if shown else " (same pixels, different options or layout)"))
        elif self.archive_matches:
            verdict = f"archives of all {len(self.result.other_sizes) + 1} sizes identical to the recipe"
        else:
            verdict = (f"archives DIFFER from the recipe: {', '.join(self.differing_archives)}"
                       + (f"; at the recipe's own size {images}" if shown else ""))
        csv = "metadata CSV identical" if self.metadata_matches else \
            "metadata CSV differs (this tree's label files give other class names or ids)"
        return f"{self.result.summary()}\n{verdict}; {csv}"


def is_safe_image_path(path) -> bool:
    """Whether ``path`` names a file inside whatever folder it is joined to (symlinks aside): a
    string of printable characters, ``/``-separated parts none of which is empty, ``.`` or ``..``,
    no backslash, no drive such as ``C:``."""
    return (isinstance(path, str) and path.isprintable() and "\\" not in path and not _DRIVE_RE.match(path)
            and all(part not in ("", ".", "..") for part in path.split("/")))


def _is_file_stem(name) -> bool:
    return (isinstance(name, str) and name != "" and name.isprintable()
            and not any(text in name for text in ("/", "\\", ":", "..")))


def _is_whole(value, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _entry(document, *keys):
    """``document[keys[0]][keys[1]]...`` (a key is an object's name or a list's index), or
    ``_ABSENT`` where a level is missing."""
    for key in keys:
        if isinstance(document, dict) and key in document:
            document = document[key]
        elif isinstance(document, list) and isinstance(key, int) and key < len(document):
            document = document[key]
        else:
            return _ABSENT
    return document


def _where(keys) -> str:
    """``sources.train.paths``, ``classes[2].name``."""
    return "".join(f"[{key}]" if isinstance(key, int) else f".{key}" for key in keys).lstrip(".")


def _shown(value) -> str:
    """A value as one short line: its repr (which escapes newlines and other control characters)."""
    if value is _ABSENT:
        return "missing"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _listed(what: str, entries: list[str]) -> list[str]:
    """``["<count> <what>: <first five entries> and N more"]``, or nothing for no entries."""
    return [f"{len(entries)} {what}: {shown(entries, 5)}"] if entries else []


def _entry_problems(recipe: dict) -> list[str]:
    """``where value (expected)`` of every entry, other than the rows themselves, missing or not
    of the kind a build writes."""
    positive = (lambda v: _is_whole(v, 1, INT32_MAX), "a whole number of at least 1")
    flag = (lambda v: isinstance(v, bool), "true or false")
    text = (lambda v: isinstance(v, str), "a text")
    Check = tuple[typing.Callable[[object], bool], str]  # (is the value right, what is expected)
    required: dict[tuple[str | int, ...], Check] = {
        ("name",): (_is_file_stem, "a file-name stem: not empty, no /, \\, :, .. or control characters"),
        ("options", "resize_size"): positive, ("options", "crop_size"): positive,
        ("options", "fast"): flag, ("options", "compress"): flag,
        ("input",): (lambda v: isinstance(v, dict), "an object"),
        ("classes",): (lambda v: isinstance(v, list) and v != [], "a non-empty list of classes"),
        ("sources", "train"): (lambda v: isinstance(v, dict), "the train rows"),
        ("sources", "val"): (lambda v: isinstance(v, dict), "the val rows"),
        ("files", "metadata", "sha256"): text,
    }
    optional: dict[tuple[str | int, ...], Check] = {
        ("options", "resize"): (lambda v: v in get_args(Resize), " or ".join(map(repr, get_args(Resize)))),
        ("options", "layout"): (lambda v: v in get_args(Layout), " or ".join(map(repr, get_args(Layout)))),
        ("options", "shard_size"): (lambda v: v is None or positive[0](v), "null or " + positive[1]),
        ("subset_source",): text,
        ("sources", "holdout"): (lambda v: isinstance(v, dict), "the holdout rows"),
    }
    if _entry(recipe, "options", "shard_size") in (None, _ABSENT):
        required["files", "archive", "sha256"] = text
    else:
        required["files", "shards"] = (lambda v: isinstance(v, list) and v != []
                                       and all(isinstance(_entry(shard, "sha256"), str) for shard in v),
                                       "a list of {sha256}, one per shard")
    for i in range(len(recipe["classes"]) if isinstance(recipe.get("classes"), list) else 0):
        required["classes", i, "name"] = text
        optional["classes", i, "rest"] = flag
    for split in SPLIT_FOLDERS:
        if isinstance(_entry(recipe, "sources", split), dict):
            required["sources", split, "label_source"] = text
            for key in ROW_LISTS:
                required["sources", split, key] = (lambda v: isinstance(v, list), "a list")
    wrong = []
    for keys, (is_right, expected) in (required | optional).items():
        value = _entry(recipe, *keys)
        if (value is not _ABSENT or keys in required) and not is_right(value):
            wrong.append(f"{_where(keys)} {_shown(value)} ({expected})")
    return _listed("entries missing or not as a build writes them", wrong)


def _row_problems(recipe: dict) -> list[str]:
    """The splits' rows: unknown splits, lists of different lengths, unsafe paths, ids, labels
    and CRC-32s out of range (lists that are not lists are ``_entry_problems``')."""
    sources: dict = recipe["sources"] if isinstance(recipe.get("sources"), dict) else {}
    classes: list | None = recipe["classes"] if isinstance(recipe.get("classes"), list) else None
    unknown = [_shown(split) for split in sources if split not in SPLIT_FOLDERS]
    uneven, paths, ids, labels, crcs = [], [], [], [], []
    for split in SPLIT_FOLDERS:
        rows = {key: _entry(sources, split, key) for key in ROW_LISTS}
        rows = {key: value for key, value in rows.items() if isinstance(value, list)}
        if len({len(value) for value in rows.values()}) > 1:
            uneven.append(f"{split} ({', '.join(f'{len(value)} {key}' for key, value in rows.items())})")
        paths += [f"{split}: {_shown(path)}" for path in rows.get("paths", []) if not is_safe_image_path(path)]
        ids += [f"{split} row {row}: {_shown(value)}" for row, value in enumerate(rows.get("ids", []))
                if not _is_whole(value, 1, INT32_MAX)]
        if classes:
            labels += [f"{split} row {row}: {_shown(value)}" for row, value in enumerate(rows.get("labels", []))
                       if not _is_whole(value, 0, len(classes) - 1)]
        crcs += [f"{split} row {row}: {_shown(value)}" for row, value in enumerate(rows.get("row_crc32", []))
                 if not _is_whole(value, 0, UINT32_MAX)]
    return (_listed("unknown splits (a recipe holds train, val and holdout rows)", unknown)
            + _listed("splits whose paths, ids, labels and row_crc32 differ in length", uneven)
            + _listed("unsafe image paths in the recipe (only relative paths inside --data_dir are allowed)", paths)
            + _listed(f"ids that are not whole numbers from 1 to {INT32_MAX}", ids)
            + _listed(f"labels outside 0..{len(classes or ()) - 1} (one per class)", labels)
            + _listed(f"row_crc32 values that are not whole numbers from 0 to {UINT32_MAX}", crcs))


def _class_problems(recipe: dict) -> list[str]:
    """Classes whose WNIDs are malformed, missing (other than the rest label's) or repeated."""
    classes: list = recipe["classes"] if isinstance(recipe.get("classes"), list) else []
    malformed, repeated = [], []
    first_class: dict[str, int] = {}
    for i, record in enumerate(classes):
        wnids = _entry(record, "wnids")
        is_rest = _entry(record, "rest") is True
        valid = isinstance(wnids, list) and all(isinstance(w, str) and WNID_RE.fullmatch(w) for w in wnids)
        if not valid or (wnids == []) != is_rest:
            malformed.append(f"class {i} {_shown(wnids)}")
            continue
        for wnid in wnids:
            if wnid in first_class:
                repeated.append(f"{wnid} (classes {first_class[wnid]} and {i})")
            first_class.setdefault(wnid, i)
    return (_listed("classes without valid WNIDs (a WNID is 'n' and 8 digits; only the rest label has none)", malformed)
            + _listed("WNIDs in more than one class", repeated))


def _size_problems(recipe: dict) -> list[str]:
    """A several-size build's ``sizes``: two or more {size, name, fast, files}, each size as
    ``--sizes`` writes it, each name the one the build gives that size (so a rebuild writes no
    other file names), ``fast`` as one build gives it (false for a squash, one value for the
    crops), the recipe's own set among them with its options' size and fast and its files."""
    sizes = recipe.get("sizes", _ABSENT)
    if sizes is _ABSENT:
        return []
    if not isinstance(sizes, list) or len(sizes) < 2:
        return [f"sizes {_shown(sizes)} (a list of two or more sizes)"]
    first, shards = _entry(sizes, 0, "name"), _entry(recipe, "options", "shard_size") not in (None, _ABSENT)
    options = recipe["options"]
    own_size = Size(options["resize_size"], options["crop_size"], options.get("resize", "crop")).text
    crops_fast = {entry["fast"] for entry in sizes if isinstance(entry, dict) and isinstance(entry.get("fast"), bool)
                  and not str(entry.get("size")).startswith("squash:")}
    wrong = [] if len(crops_fast) <= 1 else ["sizes (fast differs between the crop sizes; one build gives them one)"]
    for i, entry in enumerate(sizes):
        text = _entry(entry, "size")
        try:
            size = parse_size(text) if isinstance(text, str) else None
        except UserError:
            size = None
        if size is None or size.text != text:
            wrong.append(f"sizes[{i}].size {_shown(text)} (R/C or squash:S, as --sizes writes it)")
            continue
        name = _entry(entry, "name")
        if i == 0 and not _is_file_stem(name):
            wrong.append(f"sizes[0].name {_shown(name)} (a file-name stem)")
        elif _is_file_stem(first) and name != size_name(first, size, i == 0):
            wrong.append(f"sizes[{i}].name {_shown(name)} ({size_name(first, size, i == 0)!r})")
        elif name == recipe["name"] and text != own_size:
            wrong.append(f"sizes[{i}].size {_shown(text)} ({own_size!r}, the size of the recipe's options)")
        elif name == recipe["name"] and _entry(entry, "files") != recipe["files"]:
            wrong.append(f"sizes[{i}].files (the recipe's own files)")
        fast = _entry(entry, "fast")
        if not isinstance(fast, bool) or (fast and size.resize == "squash") or (
                name == recipe["name"] and fast != options["fast"]):
            expected = "false for a squash" if size.resize == "squash" else (
                "the recipe's options.fast" if name == recipe["name"] else "true or false")
            wrong.append(f"sizes[{i}].fast {_shown(fast)} ({expected})")
        hashes = ([_entry(shard, "sha256") for shard in _entry(entry, "files", "shards")]
                  if shards and isinstance(_entry(entry, "files", "shards"), list)
                  else [_entry(entry, "files", "archive", "sha256")] if not shards else [None])
        if not all(isinstance(h, str) for h in hashes):
            wrong.append(f"sizes[{i}].files ({'a list of {sha256}, one per shard' if shards else 'archive.sha256'})")
    if recipe["name"] not in [_entry(entry, "name") for entry in sizes]:
        wrong.append(f"sizes (no size named {_shown(recipe['name'])}, the recipe's own)")
    return _listed("sizes not as a build writes them", wrong)


def from_url_list(recipe: dict) -> bool:
    """Whether the recipe's images were downloaded from a URL list (its rows have urls)."""
    return any(isinstance(rows, dict) and "urls" in rows for rows in recipe["sources"].values())


_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_URL_RE = re.compile(r"https?://[\x21-\x7e]+")


def _origin_problems(recipe: dict) -> list[str]:
    """A recipe from a URL list: every split's rows have an image_id (``<wnid>_<n>``), an http(s)
    URL (printable ASCII) and a SHA-256, and each path is ``<wnid>/<image_id>.jpg`` or ``.png``,
    where the download puts that image (so no other file can be read or written)."""
    if not from_url_list(recipe):
        return []
    wrong = []
    for split, rows in recipe["sources"].items():
        columns = [rows.get(key) for key in ("paths", "image_ids", "urls", "sha256")]
        if not all(isinstance(column, list) and len(column) == len(columns[0]) for column in columns):
            wrong.append(f"{split}: image_ids, urls and sha256 must be lists as long as paths")
            continue
        for row, (path, image_id, url, digest) in enumerate(zip(*columns, strict=True)):
            if not (isinstance(image_id, str) and IMAGE_ID_RE.fullmatch(image_id) and isinstance(url, str)
                    and _URL_RE.fullmatch(url) and isinstance(digest, str) and _SHA256_RE.fullmatch(digest)
                    and path in downloaded_paths(image_id)):
                wrong.append(f"{split} row {row}: {_shown(image_id)} {_shown(url)}")
    return _listed("downloaded images without a <wnid>_<n> image_id, an http(s) URL, a SHA-256 and the path "
                   "the download gives them", wrong)


def fetch_recipe_images(recipe: dict, folder: Path, fetching: DownloadOptions) -> None:
    """Download exactly the images of a recipe from a URL list into ``folder`` (as ``download``
    lays them out, each in its recipe split; held-out ones in train/); every one must come back
    with the SHA-256 the recipe records, else one error names those that did not."""
    by_wnid: dict[str, list[ListedImage]] = {}
    split_of, expected = {}, {}
    for split, rows in recipe["sources"].items():
        for image_id, line, url, digest in zip(rows["image_ids"], rows["ids"], rows["urls"], rows["sha256"],
                                               strict=True):
            by_wnid.setdefault(image_id[:9], []).append(ListedImage(line, image_id, image_id[:9], url))
            split_of[image_id], expected[image_id] = ("val" if split == "val" else "train"), digest
    labels = [LabelWork(wnid, sorted(images, key=lambda image: image.line), len(images), wnids=(wnid,))
              for wnid, images in sorted(by_wnid.items())]
    result = download(labels, folder, fetching, split_of=split_of)
    write_class_names(folder, {entry["wnids"][0]: entry["human_label"] for entry in recipe["classes"]
                               if len(entry["wnids"]) == 1 and entry.get("human_label")})
    kept = {row["image_id"]: row["sha256"] for row in result.rows}
    attempts = read_attempts(folder)
    failed = [f"{image_id} ({attempts[image_id].status if image_id in attempts else 'not tried'})"
              if image_id not in kept else f"{image_id} (other bytes than the recipe's)"
              for image_id in expected if kept.get(image_id) != expected[image_id]]
    if failed:
        raise UserError(f"{len(failed)} of the recipe's {len(expected)} images could not be downloaded as they were: "
                        f"{shown(failed, 5)}; every attempt is in {folder / 'downloads.csv'}; ask the sender for "
                        "the images, or build a new subset from the URL list")


def check_recipe(recipe: dict, source: str) -> None:
    """Raise one ``UserError``, naming ``source`` (the manifest file), that lists everything in
    ``recipe`` a build would not have written (see the module docstring). Reads only the recipe."""
    if not isinstance(recipe, dict):
        raise UserError(f"{source} is not an imagenet-subset manifest")
    problems = _entry_problems(recipe) + _class_problems(recipe) + _row_problems(recipe)
    if not _entry_problems(recipe):
        problems += _size_problems(recipe) + _origin_problems(recipe)
    if problems:
        raise UserError(f"{source}: {'; '.join(problems)}; ask the sender for the manifest written by the build")


def plan_from_recipe(recipe: dict, data_dir: str, devkit_dir: str | None = None,
                     index_dir: str | None = None) -> BuildPlan:
    """The rows of a recipe that ``check_recipe`` passed, found in ``data_dir`` (folders or archives:
    the paths are the same); every missing image is named."""
    tree = find_tree(data_dir, devkit_dir, index_dir)
    labels_of_recipe = tuple(Label(c["name"], tuple(c["wnids"]), c.get("rest", False)) for c in recipe["classes"])
    subset = SubsetList(recipe["name"], labels_of_recipe, recipe.get("subset_source", "recipe"))
    splits, missing = [], []
    for split, folder in SPLIT_FOLDERS.items():
        if split not in recipe["sources"]:
            continue
        sources, images = recipe["sources"][split], tree.train if folder == "train" else tree.val
        missing += [f"{folder}/{p}" for p in sources["paths"] if not images.has(p)]
        labels = np.array(sources["labels"], dtype=np.int32)
        origins = ({key: list(sources[key]) for key in ("image_ids", "urls", "sha256")} if "urls" in sources
                   else None)
        splits.append(SplitImages(split, images, list(sources["paths"]), [subset.labels[i].name for i in labels],
                                  np.array(sources["ids"], dtype=np.int32), sources["label_source"], labels,
                                  origins=origins))
    if missing:
        raise UserError(f"{len(missing)} images of the recipe are missing from {tree.data_dir}: {shown(missing, 5)}; "
                        "this copy of ImageNet lacks them")
    return BuildPlan(recipe["name"], subset, tuple(splits), class_table(tree), recipe["input"])


def rebuild_from_recipe(recipe_path: str | Path, data_dir: str, **options) -> RecipeReport:
    """Build the recipe's archive from ``data_dir`` and compare it with the recipe. ``options``
    are the ``BuildOptions`` that do not shape the archive (``devkit_dir``, ``out_dir``,
    ``index_dir``, ``workers``, ``progress``, ``backend``, ``scheduler``, ``resume``: ``resume``
    continues an interrupted rebuild, as ``--resume`` does for any build); the others come from
    the recipe. The recipe of one size of a several-size build rebuilds every size of it, in one
    pass, and compares each archive with the one the recipe records."""
    recipe = read_manifest(recipe_path)
    check_recipe(recipe, str(recipe_path))
    fixed = {field.name for field, _ in option_fields() if field.metadata["shapes_output"]}
    if fixed & set(options):
        raise UserError(f"{', '.join(sorted(fixed & set(options)))}: the recipe {recipe_path} fixes the options "
                        "that shape the archive; leave them out")
    recorded, sizes = recipe["options"], recipe.get("sizes")
    size_options = {"resize_size": recorded["resize_size"], "crop_size": recorded["crop_size"],
                    "resize": recorded.get("resize", "crop"), "fast": recorded["fast"]}
    if sizes:
        size_options = {"sizes": tuple(entry["size"] for entry in sizes),
                        "fast": any(entry["fast"] for entry in sizes)}
    name = sizes[0]["name"] if sizes else recipe["name"]
    build_options = BuildOptions(subset_name=name, data_dir=str(data_dir), layout=recorded.get("layout", "nhwc"),
                                 compress=recorded["compress"], shard_size=recorded.get("shard_size"),
                                 **size_options, **options)
    with new_out_dir_removed_on_failure(build_options):  # planning may start the archive index in it
        if from_url_list(recipe):
            folder = download_folder(build_options, name)
            # the recipe's SHA-256 decides: no local --min_size may refuse the bytes it names
            fetch_recipe_images(recipe, folder, dataclasses.replace(DownloadOptions.of(build_options), min_size=1))
            build_options = dataclasses.replace(build_options, data_dir=str(folder))
        plan = plan_from_recipe(recipe, build_options.data_dir, build_options.devkit_dir, build_options.index_folder)
        result = execute(dataclasses.replace(plan, name=name), build_options)
    own = next(r for r in (result, *result.other_sizes) if r.name == recipe["name"])
    rebuilt = read_manifest(own.manifest)
    differing = tuple(
        f"{SPLIT_FOLDERS[images.split]}/{path}"
        for images in plan.splits
        for path, theirs, ours in zip(images.paths, recipe["sources"][images.split]["row_crc32"],
                                      rebuilt["sources"][images.split]["row_crc32"], strict=True)
        if theirs != ours
    )
    recorded_files = {entry["name"]: entry["files"] for entry in sizes} if sizes else {name: recipe["files"]}
    sharded = bool(build_options.shard_size)
    differing_archives = tuple(r.archive.name for r in (result, *result.other_sizes)
                               if _archive_hashes(recorded_files[r.name], sharded)
                               != _archive_hashes(read_manifest(r.manifest)["files"], sharded))
    return RecipeReport(result, not differing_archives,
                        rebuilt["files"]["metadata"]["sha256"] == recipe["files"]["metadata"]["sha256"], differing,
                        differing_archives)


def _archive_hashes(files: dict, sharded: bool) -> list[str]:
    """The SHA-256 of the archive, or of each shard (``sharded``), that a manifest's ``files``
    records (entries ``check_recipe`` has checked)."""
    return [shard["sha256"] for shard in files["shards"]] if sharded else [files["archive"]["sha256"]]
