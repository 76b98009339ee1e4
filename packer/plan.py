"""Plan a build: decide every row of the archive without decoding an image.

    find_tree -> choose the classes -> list and label the images of each split
      -> sampling (per class, holdout, rest) -> notes on what the metadata CSV
      will leave empty and which file would fill it

The result is a ``BuildPlan`` (``options.py``): the subset, the images of each
split in row order with their labels and ids, and the class facts the label
files give. ``execute.py`` packs it.
"""
import re
from dataclasses import dataclass
from pathlib import Path

from .options import BuildOptions, BuildPlan
from .sampling import apply_sampling
from .subset import (
    Label,
    SubsetList,
    check_classes_present,
    classes_by_name,
    classes_by_search,
    label_images,
    labels_grouped_by,
    labels_under,
    read_subset_list,
)
from .tree import (
    ClassInfo,
    SplitImages,
    Tree,
    class_table,
    class_table_gaps,
    find_tree,
    list_train_images,
    list_val_images,
    names_to_match,
    train_classes,
)


def _input_description(tree: Tree, splits: list[SplitImages]) -> dict:
    found = {kind: getattr(tree, kind).name if getattr(tree, kind) else None
             for kind in ("train_cls", "synset_mapping", "val_solution", "val_annotations", "map_clsloc",
                          "val_ground_truth")}
    return {"train_order": splits[0].label_source, "val_labels": splits[1].label_source, "label_files": found}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


@dataclass(frozen=True)
class _Chosen:
    """The labels chosen (``rest`` not yet added), the tree's classes no label or ``rest`` may take,
    the manifest's record of the hierarchy used (None without one), and notes."""

    subset: SubsetList
    kept_out: frozenset[str] = frozenset()
    hierarchy: dict | None = None
    notes: tuple[str, ...] = ()


def _choose_by_hierarchy(options: BuildOptions, tree: Tree, folders: list[str]) -> _Chosen:
    """``--under`` / ``--group_by``, with the manifest's record of the hierarchy used."""
    from .hierarchy import load_hierarchy

    hierarchy = load_hierarchy(options.wordnet, options.hierarchy)
    under, exclude = options.under or (), options.exclude or ()
    if options.group_by:
        choice = labels_grouped_by(hierarchy, options.group_by, under, exclude, options.overlap, folders,
                                   str(tree.train))
        default_name, how = "grouped_" + _slug(options.group_by), f"--group_by {options.group_by}"
    else:
        choice = labels_under(hierarchy, under, exclude, folders, str(tree.train))
        default_name, how = "under_" + _slug("_".join(under)), f"--under {','.join(under)}"
    if exclude:
        how += f" --exclude {','.join(exclude)}"
    name = Path(options.subset_name).stem if options.subset_name else default_name  # inside --out_dir
    record = {"source": hierarchy.source, "sha256": hierarchy.sha256, **choice.resolved,
              "group_by": options.group_by, "overlap": options.overlap}
    return _Chosen(SubsetList(name, choice.labels, how), choice.taken_away, record, choice.notes)


def _choose_subset(options: BuildOptions, tree: Tree, classes: dict[str, ClassInfo], folders: list[str]) -> _Chosen:
    if options.under or options.group_by:
        return _choose_by_hierarchy(options, tree, folders)
    if options.classes or options.search:
        names = names_to_match(classes)
        if options.classes:  # among the tree's classes, named by its files or the built-in table
            files = " / ".join(p.name for p in (tree.synset_mapping, tree.map_clsloc) if p)
            source = f"the classes of {tree.train} (named by {files or 'the built-in class table'})"
            in_tree = {wnid: names.get(wnid, "") for wnid in folders}
            wnids = classes_by_name(list(options.classes), in_tree, source)
            default_name, how = "custom", f"--classes {','.join(options.classes)}"
        else:
            search = str(options.search)
            wnids = classes_by_search(search, names, folders, str(tree.train))
            default_name = "search_" + _slug(search)
            how = f"--search {search}"
        name = Path(options.subset_name).stem if options.subset_name else default_name  # inside --out_dir
        return _Chosen(SubsetList(name, tuple(Label(w, (w,)) for w in wnids), how))
    return _Chosen(read_subset_list(options.subset_name or "imagenet30"))


def plan_build(options: BuildOptions) -> BuildPlan:
    """Read the tree and the class list and decide every row of the archive."""
    tree = find_tree(options.data_dir, options.devkit_dir, options.index_folder)
    classes = class_table(tree)
    folders = train_classes(tree)
    chosen = _choose_subset(options, tree, classes, folders)
    subset = chosen.subset.with_rest() if options.rest is not None else chosen.subset
    check_classes_present(subset, folders, str(tree.train))
    listed = [w for w in folders if w not in chosen.kept_out] if options.rest is not None else list(subset.wnids)
    train = label_images(list_train_images(tree, listed), subset)
    val = label_images(list_val_images(tree, listed), subset)
    rest_label = len(subset.labels) - 1 if options.rest is not None else None
    splits, notes = apply_sampling(train, val, [label.name for label in subset.labels], rest_label, options)
    notes = list(chosen.notes) + notes + class_table_gaps(tree, classes, subset.single_classes())
    description = _input_description(tree, splits)
    if chosen.hierarchy is not None:
        description["hierarchy"] = chosen.hierarchy
    return BuildPlan(subset.name, subset, tuple(splits), classes, description, tuple(notes))
