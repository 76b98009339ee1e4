"""Choose the classes: read a class list, or pick classes by name, and label each image.

A class list is a text file; blank lines and ``#`` comments are ignored. Each
remaining line is one label, in order (the first line is label 0):

- ``n01440764`` — one class (text after the WNID is ignored, so
  ``n01440764 tench`` works);
- ``dog: n02085620 n02085782 n02086240`` — a label group: the name, a colon,
  then WNIDs; every image of those classes gets this one label.

``--subset_name NAME`` is resolved in this order:

1. a path to an existing file (``my_classes.txt``, ``lists/birds.txt``);
2. ``./aux_files/NAME.txt`` (a user's own list works as in the original script);
3. the lists shipped with the package (``builtin_list_names()``).

When none matches, a folder, and a name that looks like a path (it has a path
separator or ends in ``.txt``), each get an error saying so.

``classes_by_name`` picks classes from the human labels of the tree's mapping
file instead: a name matches a class when it equals one of the class's
comma-separated synonyms (case-insensitive), otherwise when it is part of one;
an ambiguous or unknown name is an error listing the candidates.
``classes_by_search`` takes every class the tree holds whose human label
contains a text: the build's ``--search`` and ``imagenet-subset classes
--search`` both use it, so they agree.
"""
import difflib
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import UserError
from .labelfiles import WNID_RE
from .options import shown
from .tree import SplitImages

if TYPE_CHECKING:
    from .hierarchy import Hierarchy

REST = "rest"


@dataclass(frozen=True)
class Label:
    """One output label: a class (``name`` is its WNID), a group of classes, or ``rest``."""

    name: str
    wnids: tuple[str, ...]
    is_rest: bool = False


@dataclass(frozen=True)
class SubsetList:
    """A named, ordered list of labels: ``labels[i]`` is label ``i``."""

    name: str
    labels: tuple[Label, ...]
    source: str

    @property
    def wnids(self) -> tuple[str, ...]:
        """Every listed WNID, in label order."""
        return tuple(w for label in self.labels for w in label.wnids)

    def single_classes(self) -> list[str]:
        """The WNIDs of the labels that are one class each (not groups, not ``rest``), in label order."""
        return [label.wnids[0] for label in self.labels if label.wnids == (label.name,)]

    def label_of(self) -> dict[str, int]:
        """WNID -> label number, for the listed classes."""
        return {w: i for i, label in enumerate(self.labels) for w in label.wnids}

    def with_rest(self) -> "SubsetList":
        """This list with a final ``rest`` label for images of every class not listed."""
        return replace(self, labels=self.labels + (Label(REST, (), is_rest=True),))


def builtin_list_names() -> list[str]:
    """Names of the lists shipped with the package."""
    return sorted(p.name[:-4] for p in resources.files("packer.lists").iterdir() if p.name.endswith(".txt"))


def parse_class_list(text: str, source: str) -> list[Label]:
    """The labels of a class-list text, in order; every malformed or repeated WNID is reported at once."""
    labels, malformed, repeated = [], [], []
    first_line: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        content = line.split("#", 1)[0].strip()
        if not content:
            continue
        group, colon, members = content.partition(":")
        if WNID_RE.fullmatch(content.split()[0].rstrip(":")) or not colon:  # a class line; the rest is ignored
            name, tokens = None, [content.split()[0].rstrip(":")]
        else:
            name, tokens = group.strip(), members.split()
            if not tokens:
                malformed.append(f"line {number} '{content}' (a group needs WNIDs after the colon)")
        good = []
        for wnid in tokens:
            if not WNID_RE.fullmatch(wnid):
                malformed.append(f"line {number} '{wnid}'")
            elif wnid in first_line:
                repeated.append(f"{wnid} (lines {first_line[wnid]} and {number})")
            else:
                first_line[wnid] = number
                good.append(wnid)
        if good:
            labels.append(Label(name or good[0], tuple(good)))
    problems = []
    if malformed:
        problems.append("malformed WNIDs (a WNID is 'n' and 8 digits): " + ", ".join(malformed))
    if repeated:
        problems.append("repeated WNIDs: " + ", ".join(repeated))
    if problems:
        raise UserError(f"{source}: " + "; ".join(problems))
    if not labels:
        raise UserError(f"{source}: no WNIDs listed; put one WNID per line, such as n01440764")
    return labels


def read_subset_list(name_or_path: str, aux_dir: str | Path = "aux_files") -> SubsetList:
    """Resolve ``--subset_name`` (file path, ``aux_files/NAME.txt``, or built-in) and parse it."""
    for candidate in (Path(name_or_path), Path(aux_dir) / f"{name_or_path}.txt"):
        if candidate.is_file():
            try:
                text = candidate.read_text(encoding="utf-8-sig")  # a byte-order mark is not part of line 1
            except (OSError, UnicodeDecodeError) as exc:
                raise UserError(f"cannot read class list {candidate}: {exc}") from None
            return SubsetList(candidate.stem, tuple(parse_class_list(text, str(candidate))), str(candidate))
    if name_or_path in builtin_list_names():
        text = resources.files("packer.lists").joinpath(f"{name_or_path}.txt").read_text(encoding="utf-8")
        return SubsetList(name_or_path, tuple(parse_class_list(text, f"built-in list {name_or_path}")),
                          f"built-in:{name_or_path}")
    builtins = ", ".join(builtin_list_names())
    if Path(name_or_path).is_dir():
        raise UserError(f"--subset_name {name_or_path} is a folder; pass a class-list file or a built-in list name "
                        f"({builtins})")
    if Path(name_or_path).name != name_or_path or name_or_path.endswith(".txt"):  # a path, not a list name
        raise UserError(f"class list file {name_or_path} does not exist; check the path, or pass a built-in list "
                        f"name ({builtins})")
    raise UserError(f"unknown --subset_name '{name_or_path}': no such file, no "
                    f"{Path(aux_dir) / (name_or_path + '.txt')}, and no built-in list of that name "
                    f"(built-ins: {builtins})")


def _synonyms(human_label: str) -> list[str]:
    return [s.strip().lower() for s in human_label.split(",") if s.strip()]


def _described(wnids: list[str], names: dict[str, str]) -> str:
    return shown([f"{w} ({names[w]})" for w in wnids], 8)


def classes_by_name(requested: list[str], names: dict[str, str], source: str) -> list[str]:
    """WNIDs for ``requested`` names (or WNIDs), in the order given; see the module docstring."""
    chosen = []
    for item in requested:
        text = item.strip().lower()
        if WNID_RE.fullmatch(item.strip()):
            if item.strip() not in names:
                raise UserError(f"--classes: {item.strip()} is not in {source}")
            chosen.append(item.strip())
            continue
        if not any(names.values()):
            raise UserError(f"--classes: '{item}' is a name, but none of {source} has a name (they are not among "
                            "ImageNet's 1000 and no LOC_synset_mapping.txt or map_clsloc.txt names them); pass "
                            "WNIDs, or --devkit_dir DIR")
        exact = [w for w, name in names.items() if text in _synonyms(name)]
        matches = exact or [w for w, name in names.items() if text in name.lower()]
        if len(matches) == 1:
            chosen.append(matches[0])
        elif matches:
            raise UserError(f"--classes: '{item}' is ambiguous: {_described(matches, names)}; "
                            "use a more precise name or the WNID")
        else:
            close = difflib.get_close_matches(text, [s for n in names.values() for s in _synonyms(n)], n=5)
            hint = f"; close names: {', '.join(close)}" if close else ""
            raise UserError(f"--classes: no class named '{item}' in {source}{hint}")
    repeated = sorted({w for w in chosen if chosen.count(w) > 1})
    if repeated:
        raise UserError(f"--classes: these classes were named twice: {_described(repeated, names)}")
    return chosen


@dataclass(frozen=True)
class Advice:
    """What an error of choosing tells the user to do: how to list the classes on offer, with their
    names and in the hierarchy, and how to offer other classes."""

    listing: str
    outline: str
    elsewhere: str
    names: str
    absent: str  # how a class without images is said to be missing
    names_from: str  # the files that name the classes


TREE_ADVICE = Advice("imagenet-subset classes --data_dir DIR lists the classes and their names",
                     "imagenet-subset classes --tree --data_dir DIR shows what the tree holds",
                     "point --data_dir at a tree that has them", "pass --devkit_dir DIR", "have no folder in",
                     "LOC_synset_mapping.txt or map_clsloc.txt")
URL_LIST_ADVICE = Advice("the list's classes are the WNIDs of its image ids; names come from --wordnet DIR's "
                         "words.txt, or the packaged names of the 1,000 classes",
                         "pass --wordnet DIR (ImageNet's full words.txt and wordnet.is_a.txt) to see classes "
                         "outside the 1,000",
                         "use a URL list that has them",
                         "pass --wordnet DIR (ImageNet's full words.txt and wordnet.is_a.txt)", "are not in",
                         "words.txt")


def classes_by_search(text: str, names: dict[str, str], present: list[str], tree_name: str,
                      advice: Advice = TREE_ADVICE) -> list[str]:
    """WNIDs (sorted) of the classes in ``present`` whose human label in ``names`` contains ``text``
    (case-insensitive). ``present`` is what the tree holds (its ``train/<wnid>`` folders), so a
    mapping file listing more classes than the tree adds none; ``tree_name`` names the tree in errors."""
    if not any(w in names for w in present):
        raise UserError(f"--search needs class names from {advice.names_from}; none found for {tree_name}: "
                        f"{advice.names}")
    found = sorted(w for w in present if w in names and text.lower() in names[w].lower())
    if not found:
        raise UserError(f"--search: no class in {tree_name} has a name containing '{text}'; {advice.listing}")
    return found


def check_classes_present(subset: SubsetList, train_classes: list[str], train_dir: str,
                          advice: Advice = TREE_ADVICE) -> None:
    """Every listed WNID must be on offer (a ``train/<wnid>`` folder); all absent ones are named."""
    present = set(train_classes)
    absent = [w for w in subset.wnids if w not in present]
    if absent:
        raise UserError(f"{subset.source}: {len(absent)} WNIDs {advice.absent} {train_dir}: {', '.join(absent)}; "
                        f"remove them from the list or {advice.elsewhere}")


def label_images(images: SplitImages, subset: SubsetList) -> SplitImages:
    """``images`` with ``labels`` set (int32): the label of each image's WNID; unlisted ones get ``rest``."""
    position = subset.label_of()
    rest = next((i for i, label in enumerate(subset.labels) if label.is_rest), -1)
    labels = np.fromiter((position.get(w, rest) for w in images.wnids), dtype=np.int32, count=len(images))
    if (labels < 0).any():
        raise ValueError("images of unlisted classes need a rest label")
    return replace(images, labels=labels)


# --------------------------------------------------------------------------- the WordNet hierarchy

@dataclass(frozen=True)
class HierarchyChoice:
    """What ``--under`` / ``--group_by`` chose: the labels; the classes of the tree that ``--under``
    and ``--exclude`` took away (kept out of ``rest`` too); what each name resolved to, for the
    manifest (``{"under": [{"name", "wnid"}], "exclude": [...], "groups": [...]}``); notes."""

    labels: tuple[Label, ...]
    taken_away: frozenset[str]
    resolved: dict
    notes: tuple[str, ...] = ()


def _named(pairs: list[tuple[str, str]]) -> list[dict]:
    return [{"name": name, "wnid": synset} for name, synset in pairs]


def _below(hierarchy: "Hierarchy", synsets: list[str], present: set[str]) -> set[str]:
    return set().union(*(hierarchy.descendants(s) for s in synsets)) & present if synsets else set()


def _narrowed(hierarchy: "Hierarchy", under: tuple[str, ...], exclude: tuple[str, ...], present: set[str]):
    """The classes of ``present`` below a synset of ``under`` (all of them without ``under``) and
    none of ``exclude``, each name resolved among the classes it applies to; the classes
    ``exclude`` removed; and the resolutions."""
    under_pairs = [(name, hierarchy.resolve(name, "--under", present)) for name in under]
    classes = _below(hierarchy, [s for _, s in under_pairs], present) if under else set(present)
    exclude_pairs = [(name, hierarchy.resolve(name, "--exclude", classes or present)) for name in exclude]
    excluded = _below(hierarchy, [s for _, s in exclude_pairs], classes)
    return classes - excluded, excluded, {"under": _named(under_pairs), "exclude": _named(exclude_pairs)}


def _narrowing(hierarchy: "Hierarchy", synsets: list[str], present: set[str], under: tuple[str, ...],
               exclude: tuple[str, ...]) -> str:
    """" once --under is applied" (or --exclude, or both) when the tree has classes below
    ``synsets`` that those options took away; "" when it has none at all."""
    if not _below(hierarchy, synsets, present):
        return ""
    flags = [flag for flag, names in (("--under", under), ("--exclude", exclude)) if names]
    return f" once {' and '.join(flags)} {'are' if len(flags) > 1 else 'is'} applied" if flags else ""


def labels_under(hierarchy: "Hierarchy", under: tuple[str, ...], exclude: tuple[str, ...],
                 present: list[str], tree_name: str, advice: Advice = TREE_ADVICE) -> HierarchyChoice:
    """``--under``: one label per class of ``present`` below any synset of ``under`` and none of
    ``exclude`` (a class is below itself), in WNID order."""
    chosen, excluded, resolved = _narrowed(hierarchy, under, exclude, set(present))
    if not chosen:
        synsets = [pair["wnid"] for pair in resolved["under"]]
        named = ", ".join(f"{s} ({hierarchy.name(s)})" for s in synsets)
        raise UserError(f"--under: no class of {tree_name} is below {named}"
                        f"{_narrowing(hierarchy, synsets, set(present), (), exclude)}; {advice.outline}")
    # the classes not under it are the rest pool ("dogs against the rest"); only excluded ones are kept out
    return HierarchyChoice(tuple(Label(w, (w,)) for w in sorted(chosen)), frozenset(excluded), resolved)


def labels_grouped_by(hierarchy: "Hierarchy", group_by: str, under: tuple[str, ...], exclude: tuple[str, ...],
                      overlap: str, present: list[str], tree_name: str, advice: Advice = TREE_ADVICE
                      ) -> HierarchyChoice:
    """``--group_by``: one label per synset (named, in the order given; or every synset ``level:N``
    edges below the root that has a class below it, in WNID order), holding the classes of
    ``present`` below it, narrowed by ``under`` and ``exclude``. A class below two groups is an
    error naming both, unless ``overlap`` is "first" (it goes to the group listed first; for
    ``level:N``, the first in WNID order). Classes below no group are left out (``rest`` takes them)."""
    classes, _, resolved = _narrowed(hierarchy, under, exclude, set(present))
    notes = []
    by_level = group_by.startswith("level:")
    if by_level:
        level = int(group_by[6:])
        synsets = sorted({a for w in classes for a in hierarchy.ancestors(w) if hierarchy.depth(a) == level})
        names = [hierarchy.name(s) for s in synsets]
        names = [f"{n} ({s})" if names.count(n) > 1 else n for n, s in zip(names, synsets, strict=True)]
        if not synsets:
            depths = [d for w in classes if (d := hierarchy.depth(w)) is not None]
            where = (f"the deepest of them is at level {max(depths)}" if depths
                     else f"none of them is in the {hierarchy.source}")
            edges = "edge" if level == 1 else "edges"
            raise UserError(f"--group_by {group_by}: no class of {tree_name} has a synset {level} {edges} below the "
                            f"root above it; {where}")
        unplaced = sorted(w for w in classes if not any(hierarchy.depth(a) == level for a in hierarchy.ancestors(w)))
        if unplaced:
            notes.append(f"--group_by {group_by}: {len(unplaced)} classes have no synset at that level above them "
                         f"(they are nearer the root, or not in the {hierarchy.source}) and are in no group: "
                         f"{shown(unplaced)}")
    else:
        names = [name.strip() for name in group_by.split(",") if name.strip()]
        synsets = [hierarchy.resolve(name, "--group_by", set(present)) for name in names]  # as without narrowing
        repeated = sorted({s for s in synsets if synsets.count(s) > 1})
        if repeated:
            raise UserError(f"--group_by names {', '.join(repeated)} twice; name each synset once")
    members = [_below(hierarchy, [s], classes) for s in synsets]
    empty = [f"{n} ({s}){_narrowing(hierarchy, [s], set(present), under, exclude)}"
             for n, s, m in zip(names, synsets, members, strict=True) if not m]
    if empty and not by_level:
        raise UserError(f"--group_by: no class of {tree_name} is below {', '.join(empty)}; {advice.outline}")
    owner: dict[str, int] = {}
    clashes = []
    for i, group in enumerate(members):
        for wnid in sorted(group):
            if wnid in owner:
                clashes.append(f"{wnid} ({hierarchy.name(wnid)}) is below {names[owner[wnid]]} and {names[i]}")
            else:
                owner[wnid] = i
    if clashes and overlap != "first":
        count = f"{len(clashes)} classes are" if len(clashes) > 1 else "1 class is"
        raise UserError(f"--group_by: {count} below two groups: {shown(clashes, 4)}; "
                        "use --overlap first to give each to the first group listed, or --exclude one side")
    labels = tuple(Label(names[i], tuple(sorted(w for w in owner if owner[w] == i))) for i in range(len(synsets)))
    emptied = [f"{label.name} (all below {names[owner[min(members[i])]]})" for i, label in enumerate(labels)
               if members[i] and not label.wnids and not by_level]
    if emptied:
        raise UserError(f"--group_by: with --overlap first, {', '.join(emptied)} would have no class left; list "
                        "it before the groups that take its classes, or leave it out")
    kept = [(label, synset) for label, synset in zip(labels, synsets, strict=True) if label.wnids]
    resolved["groups"] = _named([(label.name, synset) for label, synset in kept])
    return HierarchyChoice(tuple(label for label, _ in kept), frozenset(set(present) - classes), resolved,
                           tuple(notes))
