"""Rebuild an archive from its manifest (a "recipe") on another copy of ImageNet.

ImageNet's terms forbid passing the images on, so a collaborator gets the small
manifest instead and runs ``imagenet-subset build --recipe M.json --data_dir
THEIR/Data/CLS-LOC``. The recipe fixes everything: the options, the classes,
and every row (split, relative path, id, label). The rebuild packs exactly those
files, then compares each row's pixel CRC-32 and the archive's SHA-256 with
the recipe's and names every image that differs.
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .build import BuildOptions, BuildPlan, BuildResult
from .execute import execute
from .errors import UserError
from .subset import Label, SubsetList
from .tree import SplitImages, class_table, find_tree
from .verify import read_manifest


@dataclass(frozen=True)
class RecipeReport:
    """The rebuild's result and how it compares with the recipe."""

    result: BuildResult
    archive_matches: bool
    metadata_matches: bool
    differing_images: tuple[str, ...]

    def summary(self) -> str:
        if self.archive_matches:
            verdict = f"identical to the recipe (sha256 {self.result.sha256})"
        else:
            shown = ", ".join(self.differing_images[:5]) + (" ..." if len(self.differing_images) > 5 else "")
            verdict = (f"DIFFERS from the recipe: {len(self.differing_images)} images differ"
                       + (f": {shown}" if shown else " (same pixels, different options or layout)"))
        csv = "metadata CSV identical" if self.metadata_matches else \
            "metadata CSV differs (this tree's label files give other class names or ids)"
        return f"{self.result.summary()}\narchive {verdict}; {csv}"


def plan_from_recipe(recipe: dict, data_dir: str, devkit_dir: str | None = None) -> BuildPlan:
    """The recipe's rows, found under ``data_dir``; every missing image is named."""
    tree = find_tree(data_dir, devkit_dir)
    labels_of_recipe = tuple(Label(c["name"], tuple(c["wnids"]), c.get("rest", False)) for c in recipe["classes"])
    subset = SubsetList(recipe["name"], labels_of_recipe, recipe.get("subset_source", "recipe"))
    splits, missing = [], []
    for split, sources in recipe["sources"].items():
        root = tree.data_dir / sources["root"]
        missing += [f"{sources['root']}/{p}" for p in sources["paths"] if not (root / p).is_file()]
        labels = np.array(sources["labels"], dtype=np.int32)
        splits.append(SplitImages(split, root, list(sources["paths"]), [subset.labels[i].name for i in labels],
                                  np.array(sources["ids"], dtype=np.int32), sources["label_source"], labels))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise UserError(f"{len(missing)} images of the recipe are missing from {tree.data_dir}: {shown}; "
                        "this copy of ImageNet lacks them")
    return BuildPlan(recipe["name"], subset, tuple(splits), class_table(tree), recipe["input"])


def rebuild_from_recipe(recipe_path: str | Path, data_dir: str, devkit_dir: str | None = None,
                        out_dir: str = "out_files", workers: int | None = None, progress: bool = True,
                        backend: str = "local", scheduler: str | None = None) -> RecipeReport:
    """Build the recipe's archive from ``data_dir`` and compare it with the recipe."""
    recipe = read_manifest(recipe_path)
    try:
        options = recipe["options"]
        plan = plan_from_recipe(recipe, data_dir, devkit_dir)
        build_options = BuildOptions(recipe["name"], str(data_dir), devkit_dir, out_dir, options["resize_size"],
                                     options["crop_size"], options["fast"], options["compress"], workers, progress,
                                     options.get("resize", "crop"), options.get("layout", "nhwc"),
                                     shard_size=options.get("shard_size"), backend=backend, scheduler=scheduler)
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{recipe_path} is not a complete recipe ({exc!r} is missing or wrong); "
                        "use the manifest.json written by a build") from None
    result = execute(plan, build_options)
    rebuilt = read_manifest(result.manifest)
    differing = tuple(
        f"{sources['root']}/{path}"
        for split, sources in recipe["sources"].items()
        for path, theirs, ours in zip(sources["paths"], sources["row_crc32"], rebuilt["sources"][split]["row_crc32"])
        if theirs != ours
    )
    archive_sha = recipe["files"]["archive"]["sha256"] if "archive" in recipe["files"] else \
        [s["sha256"] for s in recipe["files"]["shards"]]
    rebuilt_sha = result.sha256 if "archive" in recipe["files"] else [s["sha256"] for s in rebuilt["files"]["shards"]]
    return RecipeReport(result, rebuilt_sha == archive_sha,
                        rebuilt["files"]["metadata"]["sha256"] == recipe["files"]["metadata"]["sha256"], differing)
