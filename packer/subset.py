"""Choose the subset: read a class list and give each selected image its label.

A class list is a text file with one WNID per line, e.g. ``n01440764``; blank
lines and ``#`` comments are ignored, as is anything after the WNID on its line
(so ``n01440764 tench`` works). Label ``i`` is the WNID on the i-th listed line.

``--subset_name NAME`` is resolved in this order:

1. a path to an existing file (``my_classes.txt``, ``lists/birds.txt``);
2. ``./aux_files/NAME.txt`` (a user's own list works as in the original script);
3. the lists shipped with the package: ``imagenet30``, ``imagenet100``,
   ``imagenette``, ``imagewoof``.
"""
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import numpy as np

from .errors import UserError
from .labelfiles import WNID_RE
from .tree import SplitImages


@dataclass(frozen=True)
class SubsetList:
    """A named, ordered class list: ``wnids[i]`` gets label ``i``."""

    name: str
    wnids: tuple[str, ...]
    source: str


def builtin_list_names() -> list[str]:
    """Names of the lists shipped with the package."""
    return sorted(p.name[:-4] for p in resources.files("packer.lists").iterdir() if p.name.endswith(".txt"))


def parse_wnid_list(text: str, source: str) -> list[str]:
    """The WNIDs of a class-list text, in order; every malformed or repeated one is reported at once."""
    wnids, malformed, first_line, repeated = [], [], {}, []
    for number, line in enumerate(text.splitlines(), start=1):
        token = line.split("#", 1)[0].split()
        if not token:
            continue
        wnid = token[0]
        if not WNID_RE.fullmatch(wnid):
            malformed.append(f"line {number} '{wnid}'")
        elif wnid in first_line:
            repeated.append(f"{wnid} (lines {first_line[wnid]} and {number})")
        else:
            first_line[wnid] = number
            wnids.append(wnid)
    problems = []
    if malformed:
        problems.append("malformed WNIDs (a WNID is 'n' and 8 digits): " + ", ".join(malformed))
    if repeated:
        problems.append("repeated WNIDs: " + ", ".join(repeated))
    if problems:
        raise UserError(f"{source}: " + "; ".join(problems))
    if not wnids:
        raise UserError(f"{source}: no WNIDs listed; put one WNID per line, such as n01440764")
    return wnids


def read_subset_list(name_or_path: str, aux_dir: str | Path = "aux_files") -> SubsetList:
    """Resolve ``--subset_name`` (file path, ``aux_files/NAME.txt``, or built-in) and parse it."""
    path = Path(name_or_path)
    candidates = [path] if path.suffix or path.parent != Path(".") else []
    candidates.append(Path(aux_dir) / f"{name_or_path}.txt")
    for candidate in candidates:
        if candidate.is_file():
            try:
                text = candidate.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise UserError(f"cannot read class list {candidate}: {exc}") from None
            return SubsetList(candidate.stem, tuple(parse_wnid_list(text, str(candidate))), str(candidate))
    if name_or_path in builtin_list_names():
        text = resources.files("packer.lists").joinpath(f"{name_or_path}.txt").read_text(encoding="utf-8")
        return SubsetList(name_or_path, tuple(parse_wnid_list(text, f"built-in list {name_or_path}")),
                          f"built-in:{name_or_path}")
    raise UserError(f"unknown --subset_name '{name_or_path}': no such file, no {Path(aux_dir) / (name_or_path + '.txt')}, "
                    f"and no built-in list of that name (built-ins: {', '.join(builtin_list_names())})")


def check_classes_present(subset: SubsetList, train_classes: list[str], train_dir: Path) -> None:
    """Every listed WNID must have a ``train/<wnid>`` folder; all absent ones are named."""
    present = set(train_classes)
    absent = [w for w in subset.wnids if w not in present]
    if absent:
        raise UserError(f"{subset.source}: {len(absent)} WNIDs have no folder in {train_dir}: {', '.join(absent)}; "
                        "remove them from the list or point --data_dir at a tree that has them")


def label_images(images: SplitImages, subset: SubsetList) -> SplitImages:
    """``images`` with ``labels`` set: the position of each image's WNID in the list (int32)."""
    position = {wnid: i for i, wnid in enumerate(subset.wnids)}
    labels = np.fromiter((position[w] for w in images.wnids), dtype=np.int32, count=len(images))
    return replace(images, labels=labels)
