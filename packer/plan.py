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

from .download import LabelWork
from .labelfiles import builtin_classes
from .options import BuildOptions, BuildPlan
from .sampling import apply_sampling, class_order, class_quotas
from .subset import (
    REST,
    TREE_ADVICE,
    URL_LIST_ADVICE,
    Advice,
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
from .urllist import in_trying_order, scan_url_list, select_from_url_list


def _input_description(tree: Tree, splits: list[SplitImages]) -> dict:
    found = {kind: getattr(tree, kind).name if getattr(tree, kind) else None
             for kind in ("train_cls", "synset_mapping", "val_solution", "val_annotations", "map_clsloc",
                          "val_ground_truth")}
    return {"train_order": splits[0].label_source, "val_labels": splits[1].label_source, "label_files": found}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


@dataclass(frozen=True)
class ClassesOnOffer:
    """What choosing looks at: the classes that have images (sorted WNIDs), the names ``--classes``
    and ``--search`` match, where the classes are and what named them (for messages)."""

    present: list[str]
    names: dict[str, str]
    where: str
    named_by: str
    advice: Advice = TREE_ADVICE


def classes_of_tree(tree: Tree, classes: dict[str, ClassInfo]) -> ClassesOnOffer:
    files = " / ".join(p.name for p in (tree.synset_mapping, tree.map_clsloc) if p)
    return ClassesOnOffer(train_classes(tree), names_to_match(classes), str(tree.train),
                          files or "the built-in class table")


@dataclass(frozen=True)
class Choice:
    """The labels chosen (``rest`` not yet added), the classes on offer no label or ``rest`` may
    take, the manifest's record of the hierarchy used (None without one), and notes."""

    subset: SubsetList
    kept_out: frozenset[str] = frozenset()
    hierarchy: dict | None = None
    notes: tuple[str, ...] = ()


def _choose_by_hierarchy(options: BuildOptions, offer: ClassesOnOffer) -> Choice:
    """``--under`` / ``--group_by``, with the manifest's record of the hierarchy used."""
    from .hierarchy import load_hierarchy

    hierarchy = load_hierarchy(options.wordnet, options.hierarchy)
    under, exclude = options.under or (), options.exclude or ()
    if options.group_by:
        choice = labels_grouped_by(hierarchy, options.group_by, under, exclude, options.overlap, offer.present,
                                   offer.where, offer.advice)
        default_name, how = "grouped_" + _slug(options.group_by), f"--group_by {options.group_by}"
    else:
        choice = labels_under(hierarchy, under, exclude, offer.present, offer.where, offer.advice)
        default_name, how = "under_" + _slug("_".join(under)), f"--under {','.join(under)}"
    if exclude:
        how += f" --exclude {','.join(exclude)}"
    name = Path(options.subset_name).stem if options.subset_name else default_name  # inside --out_dir
    record = {"source": hierarchy.source, "sha256": hierarchy.sha256, **choice.resolved,
              "group_by": options.group_by, "overlap": options.overlap}
    return Choice(SubsetList(name, choice.labels, how), choice.taken_away, record, choice.notes)


def choose_subset(options: BuildOptions, offer: ClassesOnOffer) -> Choice:
    """The labels the choosing options make of the classes on offer."""
    if options.under or options.group_by:
        return _choose_by_hierarchy(options, offer)
    if options.classes or options.search:
        if options.classes:  # among the classes on offer, by the names they go by
            source = f"the classes of {offer.where} (named by {offer.named_by})"
            on_offer = {wnid: offer.names.get(wnid, "") for wnid in offer.present}
            wnids = classes_by_name(list(options.classes), on_offer, source)
            default_name, how = "custom", f"--classes {','.join(options.classes)}"
        else:
            search = str(options.search)
            wnids = classes_by_search(search, offer.names, offer.present, offer.where, offer.advice)
            default_name = "search_" + _slug(search)
            how = f"--search {search}"
        name = Path(options.subset_name).stem if options.subset_name else default_name  # inside --out_dir
        return Choice(SubsetList(name, tuple(Label(w, (w,)) for w in wnids), how))
    return Choice(read_subset_list(options.subset_name or "imagenet30"))


def plan_build(options: BuildOptions, chosen: Choice | None = None) -> BuildPlan:
    """Read the tree and the class list and decide every row of the archive (with the labels
    ``chosen`` already, as for a folder downloaded from a URL list, else chosen among the tree's)."""
    tree = find_tree(options.data_dir, options.devkit_dir, options.index_folder)
    classes = class_table(tree)
    offer = classes_of_tree(tree, classes)
    chosen = chosen or choose_subset(options, offer)
    subset = chosen.subset.with_rest() if options.rest is not None else chosen.subset
    check_classes_present(subset, offer.present, offer.where)
    listed = [w for w in offer.present if w not in chosen.kept_out] if options.rest is not None else list(subset.wnids)
    train = label_images(list_train_images(tree, listed), subset)
    val = label_images(list_val_images(tree, listed), subset)
    rest_label = len(subset.labels) - 1 if options.rest is not None else None
    splits, notes = apply_sampling(train, val, [label.name for label in subset.labels], rest_label, options)
    notes = list(chosen.notes) + notes + class_table_gaps(tree, classes, subset.single_classes())
    description = _input_description(tree, splits)
    if chosen.hierarchy is not None:
        description["hierarchy"] = chosen.hierarchy
    return BuildPlan(subset.name, subset, tuple(splits), classes, description, tuple(notes))


@dataclass(frozen=True)
class DownloadPlan:
    """What a build from a URL list downloads: each label's work (``download.py``), the words
    naming the classes (written beside the images as ``LOC_synset_mapping.txt``), and notes."""

    labels: list[LabelWork]
    names: dict[str, str]
    notes: tuple[str, ...]
    chosen: Choice  # the labels, which the packing of the downloaded folder keeps
    rest_val: int | None  # the rest label's val images (None: no rest)

    @property
    def name(self) -> str:
        return self.chosen.subset.name


def names_for_url_lists(options: BuildOptions) -> tuple[dict[str, str], dict[str, str], str]:
    """For a URL list: WNID -> names ``--classes`` and ``--search`` match (the built-in class
    table's for the 1,000 classes, else the words), WNID -> words (of ``--wordnet``'s
    ``words.txt``, or the packaged ones), and what named them."""
    from .hierarchy import load_hierarchy

    words = load_hierarchy(options.wordnet, options.hierarchy).names
    table = {wnid: ClassInfo(known.human_label, known.clsloc_id, None) for wnid, known in builtin_classes().items()}
    named_by = f"{Path(options.wordnet).name}/words.txt" if options.wordnet else "the packaged WordNet names"
    return {**words, **names_to_match(table)}, words, named_by


def _label_work(label: Label, by_wnid: dict[str, list], options: BuildOptions) -> list[LabelWork]:
    """What to download for one label: N + K + M working images (``--train_per_class``,
    ``--holdout_per_class``, ``--val_per_class``) from its candidates in trying order, M of them
    for val; with ``--balance classes``, a group's classes each get their share (``class_quotas``
    over their URLs, train and val apart, as the packer spreads them); without
    ``--train_per_class``, every URL, M of the working ones for val."""
    val = options.val_per_class or 0
    candidates = [image for wnid in label.wnids for image in by_wnid[wnid]]
    if len(label.wnids) > 1:
        candidates = in_trying_order(candidates, options.seed)
    if options.train_per_class is None:
        return [LabelWork(label.name, candidates, len(candidates), val, wnids=label.wnids, every=True)]
    train = options.train_per_class + options.holdout_per_class
    if options.balance == "classes" and len(label.wnids) > 1:
        available = {wnid: len(by_wnid[wnid]) for wnid in label.wnids}
        train_share = class_quotas(available, train, class_order(label.wnids, options.seed, "train"))
        val_share = class_quotas({wnid: available[wnid] - train_share[wnid] for wnid in label.wnids}, val,
                                 class_order(label.wnids, options.seed, "val"))
        return [LabelWork(wnid, by_wnid[wnid], train_share[wnid] + val_share[wnid], val_share[wnid], wnids=(wnid,))
                for wnid in label.wnids]
    return [LabelWork(label.name, candidates, train + val, val, wnids=label.wnids)]


def plan_download(options: BuildOptions) -> DownloadPlan:
    """Choose the labels in the URL list ``options.urls`` as ``plan_build`` does in a tree (the
    classes on offer are those with URLs), and each label's candidates in trying order and how
    many must work (``_label_work``); ``rest`` needs ``--rest`` + ``--rest_val`` (by default
    ``--rest`` times M / N, rounded, when both are given, else none)."""
    assert options.urls is not None
    scanned = scan_url_list(options.urls)
    names, words, named_by = names_for_url_lists(options)
    offer = ClassesOnOffer(scanned.wnids, names, f"the URL list {options.urls}", named_by, URL_LIST_ADVICE)
    chosen = choose_subset(options, offer)
    check_classes_present(chosen.subset, offer.present, offer.where, offer.advice)
    wanted = set(chosen.subset.wnids)
    rest_from = (set(offer.present) - wanted - chosen.kept_out) if options.rest is not None else set()
    rest_need = rest_val = 0
    if options.rest is not None:
        rest_val = options.rest_val if options.rest_val is not None else (
            round(options.rest * options.val_per_class / options.train_per_class)
            if options.val_per_class is not None and options.train_per_class else 0)
        rest_need = options.rest + options.holdout_per_class + rest_val
    # rest candidates: enough for most of them failing (old URL lists lose over half their images)
    selection = select_from_url_list(scanned, wanted, options.seed, rest_from, 10 * rest_need + 100)
    labels = []
    for label in chosen.subset.labels:
        labels += _label_work(label, selection.by_wnid, options)
    if options.rest is not None:
        labels.append(LabelWork(REST, selection.rest, rest_need, rest_val))
    return DownloadPlan(labels, words, tuple(chosen.notes) + tuple(scanned.skipped_note()),
                        chosen, rest_val if options.rest is not None else None)
