"""The WordNet is-a hierarchy over ImageNet's classes: load it, resolve names in it, walk it.

Files, in ImageNet's own formats:

``words.txt``
    ``WNID<TAB>names`` per line, the names comma-separated synonyms, e.g.
    ``n02084071<TAB>dog, domestic dog, Canis familiaris``.
``wordnet.is_a.txt``
    ``PARENT CHILD`` per line (space-separated): CHILD is a kind of PARENT.

The package ships the part of them that covers the 1,000 ILSVRC classes, in
``packer/data/wordnet_words.txt`` and ``packer/data/wordnet_is_a.txt`` (with
WordNet 3.0's license beside them): the 1,000 classes, their 860 ancestors,
the 1,937 edges among those 1,860 synsets, one root (``n00001740`` entity).
``--wordnet DIR`` reads a user's full ``words.txt`` and ``wordnet.is_a.txt``
from DIR instead (82,115 synsets, for classes outside the 1,000), and
``--hierarchy FILE`` takes the edges from another ``PARENT CHILD`` list, such
as BREEDS' calibrated one, whose nodes need not be WNIDs: a node is named by
``node_names.txt`` beside that file when there is one (``ID<TAB>names``, as
BREEDS publishes its names), else by the words file, else by its id.

The hierarchy is a DAG, not a tree: a synset may have several parents (38 of
the 1,000 classes have more than one: 37 have two, tank has three). ``descendants(node)`` holds the node itself. A
node's depth is the number of edges on the shortest path to it from a root
(entity: 0), so "the ancestor at depth N" of a class may be more than one
synset. Everything here is plain dicts and sets: loading the packaged files
takes about 25 ms, and only builds that use the hierarchy load it.
"""
import difflib
import functools
import hashlib
import os
from collections import deque
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .errors import UserError
from .options import shown

BUILTIN_SOURCE = "built-in WordNet 3.0 hierarchy of the 1,000 ILSVRC classes"
NODE_NAMES = "node_names.txt"  # beside a --hierarchy file: names of its nodes, as BREEDS publishes them


@dataclass(frozen=True)
class Hierarchy:
    """Names and is-a edges; ``sha256`` identifies the files read (recorded in manifests)."""

    names: dict[str, str]
    parents: dict[str, tuple[str, ...]]
    children: dict[str, tuple[str, ...]]
    source: str
    sha256: str
    depths: dict[str, int]  # node -> edges on the shortest path from a root

    @property
    def roots(self) -> list[str]:
        """The nodes without a parent, sorted."""
        return sorted(node for node in self.children if node not in self.parents)

    def name(self, node: str) -> str:
        """The first of a node's names (its id when the words file has none)."""
        return self.names.get(node, node).split(",")[0].strip() or node

    def descendants(self, node: str) -> set[str]:
        """``node`` and every node below it."""
        return _reachable(node, self.children)

    def ancestors(self, node: str) -> set[str]:
        """``node`` and every node above it."""
        return _reachable(node, self.parents)

    def depth(self, node: str) -> int | None:
        """Edges on the shortest path from a root to ``node``; None for a node not in the hierarchy."""
        return self.depths.get(node)

    def path_to_root(self, node: str) -> list[str]:
        """One shortest path from a root down to ``node`` (its first parent at each step up)."""
        path = [node]
        while path[-1] in self.parents:
            depth = self.depth(path[-1])
            parents = self.parents[path[-1]]
            path.append(next((p for p in parents if depth is not None and self.depth(p) == depth - 1), parents[0]))
        return path[::-1]

    def shown_path(self, node: str) -> str:
        """``entity > ... > dog`` for messages and listings."""
        return " > ".join(self.name(n) for n in self.path_to_root(node))

    def resolve(self, text: str, flag: str, useful: set[str] | None = None) -> str:
        """The node ``text`` names: a node id, else a synset one of whose names it is (any case),
        else one whose names contain it. Among several, those with a class of ``useful`` below
        them are preferred, then those whose first name it is; still several is an error listing
        each with its path to the root (``crane``: the bird and the machine)."""
        text = text.strip()
        if text in self.children or text in self.parents or text in self.names:
            return text
        lowered = text.lower()
        exact = [n for n, names in self.names.items() if lowered in (s.strip().lower() for s in names.split(","))]
        found = exact or [n for n, names in self.names.items() if lowered in names.lower()]
        if useful is not None and len(found) > 1:
            found = [n for n in found if self.descendants(n) & useful] or found
        if len(found) > 1:  # "cat" is the first name of cat (true cat), a later one of big cat
            found = [n for n in found if self.name(n).lower() == lowered] or found
        if len(found) == 1:
            return found[0]
        if found:
            described = [f"{n} ({self.shown_path(n)})" for n in sorted(found)]
            raise UserError(f"{flag}: '{text}' is ambiguous: {shown(described, 6)}; use the WNID or a more precise "
                            "name")
        close = difflib.get_close_matches(lowered, {s.strip().lower() for names in self.names.values()
                                                    for s in names.split(",")}, n=3)
        hint = f"; close names: {', '.join(close)}" if close else ""
        if self.source == BUILTIN_SOURCE:
            hint += ("; it holds the 1,000 classes and their ancestors: for other synsets pass --wordnet DIR with "
                     "ImageNet's full words.txt and wordnet.is_a.txt")
        raise UserError(f"{flag}: no synset named '{text}' in the {self.source}{hint}")


def _reachable(node: str, edges: dict[str, tuple[str, ...]]) -> set[str]:
    """``node`` and every node reached from it along ``edges`` (to children, or to parents)."""
    found, stack = {node}, [node]
    while stack:
        for other in edges.get(stack.pop(), ()):
            if other not in found:
                found.add(other)
                stack.append(other)
    return found


def _read(path, what: str, expected: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist; pass {expected}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {what} {path}: {getattr(exc, 'strerror', None) or exc}") from None


def parse_words(text: str, source: str) -> dict[str, str]:
    """``words.txt``: node -> names."""
    names = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        node, tab, words = line.partition("\t")
        if not tab or not node.strip():
            raise UserError(f"{source}:{number}: expected 'WNID<TAB>names'; fix or replace the file")
        names[node.strip()] = words.strip()
    return names


def parse_edges(text: str, source: str) -> list[tuple[str, str]]:
    """``wordnet.is_a.txt`` (or another ``PARENT CHILD`` list): the edges, in file order."""
    edges = []
    for number, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[0] == parts[1]:
            raise UserError(f"{source}:{number}: expected 'PARENT CHILD' (two different ids); fix or replace the file")
        edges.append((parts[0], parts[1]))
    return edges


def _cycle(children: dict[str, tuple[str, ...]]) -> str | None:
    """A node on a cycle, if the edges have one."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in children:
        if start in state:
            continue
        stack = [(start, iter(children.get(start, ())))]
        state[start] = 1
        while stack:
            node, remaining = stack[-1]
            child = next(remaining, None)
            if child is None:
                state[node] = 2
                stack.pop()
            elif state.get(child) == 1:
                return child
            elif child not in state:
                state[child] = 1
                stack.append((child, iter(children.get(child, ()))))
    return None


def _shortest_depths(children: dict[str, tuple[str, ...]], roots: list[str]) -> dict[str, int]:
    depths: dict[str, int] = {}
    queue = deque((root, 0) for root in roots)
    while queue:
        node, depth = queue.popleft()
        if node not in depths:
            depths[node] = depth
            queue.extend((child, depth + 1) for child in children.get(node, ()))
    return depths


def hierarchy_from(words: list[tuple[str, str]], edges_text: str, source: str, edges_source: str) -> Hierarchy:
    """A ``Hierarchy`` from the texts of words files, ``(text, where)`` (a later file's names win),
    and of an edge list (see the module docstring)."""
    names = {}
    for words_text, words_source in words:
        names.update(parse_words(words_text, words_source))
    parents: dict[str, list[str]] = {}
    children: dict[str, list[str]] = {}
    for parent, child in parse_edges(edges_text, edges_source):
        if parent not in parents.get(child, []):
            parents.setdefault(child, []).append(parent)
            children.setdefault(parent, []).append(child)
    for child in parents:
        children.setdefault(child, [])
    frozen_children = {node: tuple(sorted(kids)) for node, kids in children.items()}
    looped = _cycle(frozen_children)
    if looped is not None:
        raise UserError(f"{edges_source}: the edges make a cycle through {looped}; an is-a hierarchy has none")
    digest = hashlib.sha256(b"\0".join(text.encode() for text, _ in words) + b"\0" + edges_text.encode()).hexdigest()
    roots = sorted(node for node in frozen_children if node not in parents)
    return Hierarchy(names, {c: tuple(p) for c, p in parents.items()}, frozen_children, source, digest,
                     _shortest_depths(frozen_children, roots))


def load_hierarchy(wordnet_dir: str | None = None, hierarchy_file: str | None = None) -> Hierarchy:
    """The packaged hierarchy, or ``wordnet_dir``'s ``words.txt`` and ``wordnet.is_a.txt``; with
    ``hierarchy_file``, its edges instead of the is-a ones. Files are read again when they change."""
    def state(path: str) -> tuple:
        try:
            stat = os.stat(path)
            return os.path.abspath(path), stat.st_size, stat.st_mtime_ns
        except OSError:
            return os.path.abspath(path), None, None

    files = ([os.path.join(wordnet_dir, "words.txt"), os.path.join(wordnet_dir, "wordnet.is_a.txt")]
             if wordnet_dir is not None else [])
    if hierarchy_file is not None:
        files += [hierarchy_file, os.path.join(os.path.dirname(hierarchy_file), NODE_NAMES)]
    return _load_hierarchy(wordnet_dir, hierarchy_file, tuple(state(f) for f in files))


@functools.cache
def _load_hierarchy(wordnet_dir: str | None, hierarchy_file: str | None, _files: tuple) -> Hierarchy:
    if wordnet_dir is None:
        data = resources.files("packer.data")
        words_text = data.joinpath("wordnet_words.txt").read_text(encoding="utf-8")
        edges_text = data.joinpath("wordnet_is_a.txt").read_text(encoding="utf-8")
        words_source, edges_source, source = "wordnet_words.txt", "wordnet_is_a.txt", BUILTIN_SOURCE
    else:
        folder = Path(wordnet_dir)
        if not folder.is_dir():
            raise UserError(f"--wordnet {folder} is not a folder; pass the folder holding ImageNet's words.txt and "
                            "wordnet.is_a.txt")
        words_source, edges_source = str(folder / "words.txt"), str(folder / "wordnet.is_a.txt")
        words_text = _read(words_source, "--wordnet file", "ImageNet's words.txt (WNID<TAB>names lines)")
        edges_text = _read(edges_source, "--wordnet file", "ImageNet's wordnet.is_a.txt (PARENT CHILD lines)")
        source = f"WordNet hierarchy in {Path(os.path.abspath(folder)).name}/"
    words = [(words_text, words_source)]
    if hierarchy_file is not None:
        edges_source = str(hierarchy_file)
        edges_text = _read(hierarchy_file, "--hierarchy", "a PARENT CHILD edge list, one edge per line")
        source = f"hierarchy {os.path.basename(hierarchy_file)}"
        node_names = Path(hierarchy_file).with_name(NODE_NAMES)
        if node_names.is_file():  # the hierarchy's own names for its nodes win
            words.append((_read(node_names, "--hierarchy names", "ID<TAB>names lines"), str(node_names)))
    return hierarchy_from(words, edges_text, source, edges_source)


def outline(hierarchy: Hierarchy, counts: dict[str, tuple[int, int]], start: list[str] | None = None,
            depth: int | None = None) -> list[str]:
    """The part of the hierarchy above the classes of ``counts`` (WNID -> (train, val) images), as
    indented lines from ``start`` (default: the roots) down ``depth`` levels (default: all), each
    synset with its classes and images summed up the tree (a class counted once, however many
    paths lead to it). A synset under several shown parents appears under each, marked
    ``[also under ...]``; classes the hierarchy lacks are listed last."""
    below: dict[str, frozenset[str]] = {}  # node -> the classes of counts at or below it

    def classes_below(top: str) -> frozenset[str]:
        stack = [(top, False)]  # walked without recursion: an edge list may be deep
        while stack:
            node, children_done = stack.pop()
            if node in below:
                continue
            kids = hierarchy.children.get(node, ())
            if children_done:
                below[node] = frozenset({node} & counts.keys()).union(*(below[k] for k in kids))
            else:
                stack.append((node, True))
                stack.extend((kid, False) for kid in kids if kid not in below)
        return below[top]

    lines: list[str] = []
    todo: list[tuple[str, int, str | None]] = [(node, 0, None) for node in reversed(start or hierarchy.roots)]
    while todo:
        node, level, parent = todo.pop()
        classes = classes_below(node)
        if not classes:
            continue
        train, val = sum(counts[w][0] for w in classes), sum(counts[w][1] for w in classes)
        others = [hierarchy.name(p) for p in hierarchy.parents.get(node, ()) if p != parent and classes_below(p)]
        also = f"  [also under {', '.join(others)}]" if parent is not None and others else ""
        what = f"{train} train, {val} val" if node in counts and len(classes) == 1 else \
            f"{len(classes)} {'class' if len(classes) == 1 else 'classes'}, {train} train, {val} val"
        lines.append(f"{'  ' * level}{hierarchy.name(node)} ({node}): {what}{also}")
        if depth is None or level < depth:
            kids = sorted(hierarchy.children.get(node, ()), key=lambda c: (hierarchy.name(c).lower(), c))
            todo.extend((kid, level + 1, node) for kid in reversed(kids))
    outside = sorted(w for w in counts if w not in hierarchy.parents and w not in hierarchy.children)
    if outside:
        lines.append(f"not in the {hierarchy.source}: {', '.join(outside)}")
    return lines
