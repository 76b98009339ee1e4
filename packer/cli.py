"""Command line: parse arguments, call the API, turn ``UserError`` into one line and an exit code.

    imagenet-subset [build] --subset_name NAME --data_dir DIR [options]
    imagenet-subset build --recipe MANIFEST.json --data_dir DIR
    imagenet-subset info FILE.npz
    imagenet-subset verify FILE.npz
    imagenet-subset preview FILE.npz -o grid.png [--split S] [--per_class N] [--classes A,B]
    imagenet-subset bench-load FILE.npz [--split S] [--batch_size N] [--workers N]
    imagenet-subset demo [--dir DIR] [--out_dir DIR]
    imagenet-subset download --urls LIST --out_dir DIR [choosing options]
    imagenet-subset --urls LIST [--download_dir DIR] [options]
"""
import argparse
import logging
import os
import signal
import sys
import tempfile
import threading
import types
import typing
from pathlib import Path

from .errors import STOP_SIGNALS, Interrupted, UserError
from .options import CHOOSING, GENERAL, HIERARCHY, SCALE, URLS, BuildOptions, option_fields

PROG = "imagenet-subset"
COMMANDS = """commands:
  build (default)   pack a subset: imagenet-subset --subset_name imagenet30 --data_dir ILSVRC/Data/CLS-LOC
                    or rebuild one from a manifest: imagenet-subset build --recipe X_cls.manifest.json --data_dir ...
  info FILE.npz     summary from the headers and the manifest (instant)
  verify FILE.npz   recompute checksums and check the structure; exit 0 only if all holds
  preview FILE.npz  draw a contact sheet: imagenet-subset preview FILE.npz -o grid.png
  classes           list the classes of a tree (WNID, counts, name): imagenet-subset classes --data_dir ... --search dog
  download          fetch the chosen images of a URL list: imagenet-subset download --urls fall11_urls.txt --out_dir D
                    (or download and pack at once: imagenet-subset --urls fall11_urls.txt --subset_name ...)
  bench-load FILE.npz  time a shuffled epoch of training batches read from the archive
  demo              write a small synthetic ILSVRC tree and pack it (no ImageNet needed)
run "imagenet-subset COMMAND --help" for a command's options"""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is a one-line ``UserError`` (exit code 1) like every other bad input."""

    def error(self, message: str):
        raise UserError(f"{message} (see {self.prog} --help)")


def _whole_number(minimum: int | None):
    """An argparse type: a whole number of at least ``minimum`` (None: any)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} must be at least {minimum}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    """The build's command line: one option per ``BuildOptions`` field, with its help text, then
    the options of the command line alone (--recipe, --version, and two kept for compatibility)."""
    parser = _Parser(
        prog=PROG, description="Pack a subset of a local ImageNet (ILSVRC CLS-LOC) into a NumPy .npz archive.",
        epilog=COMMANDS, formatter_class=argparse.RawDescriptionHelpFormatter)
    groups = {GENERAL: parser, CHOOSING: parser.add_argument_group(CHOOSING),
              HIERARCHY: parser.add_argument_group(HIERARCHY), URLS: parser.add_argument_group(URLS),
              SCALE: parser.add_argument_group(SCALE)}
    for option, kind in option_fields():
        _add_option(groups[option.metadata["group"]], option, kind)
    parser.add_argument("--recipe", metavar="MANIFEST.json",
                        help="rebuild the archive a manifest describes from --data_dir, and compare (other options "
                             "that shape the output come from the recipe)")
    parser.add_argument("--max_ram", type=float, help="accepted for compatibility; memory stays flat without it")
    parser.add_argument("--concatenate", action="store_true",
                        help="accepted for compatibility; one file is always written")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    return parser


def _add_option(group, option, kind) -> None:
    """The command-line flag of one ``BuildOptions`` field, by its type: a boolean is a switch, a
    ``Literal`` a choice, a whole number is checked against the field's minimum."""
    meta = option.metadata
    allowed = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
    choices = next((typing.get_args(a) for a in allowed if typing.get_origin(a) is typing.Literal), None)
    flag = meta["flag"] or f"--{option.name}"
    if bool in allowed:  # a switch; one whose flag is not its name turns the option off (--quiet)
        action = "store_false" if meta["flag"] else "store_true"
        group.add_argument(flag, dest=option.name, action=action, default=option.default, help=meta["help"])
    elif choices is not None:
        group.add_argument(flag, dest=option.name, choices=choices, default=option.default, help=meta["help"])
    else:
        kind_of_value = _whole_number(meta["minimum"]) if int in allowed else str
        group.add_argument(flag, dest=option.name, type=kind_of_value, default=option.default, metavar=meta["metavar"],
                           help=meta["help"])


def _given(argv: list[str]) -> set[str]:
    """The options ``argv`` sets explicitly (an option given with its default value counts)."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def _build(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.max_ram is not None or args.concatenate:
        print(f"{PROG}: note: --max_ram and --concatenate are no longer needed: memory stays flat "
              "and one file is always written", file=sys.stderr)
    if args.recipe:
        return _rebuild(args, argv)
    if args.sizes:  # (the API can only refuse values other than the default or the first size)
        clashing = [f"--{name}" for name in ("resize_size", "crop_size", "resize") if name in _given(argv)]
        if clashing:
            raise UserError(f"{', '.join(clashing)} and --sizes both set the size; give every size in --sizes (as "
                            f"--sizes {args.sizes.split(',')[0].strip()},...) and drop {', '.join(clashing)}")
    if args.urls and "data_dir" in _given(argv):
        raise UserError(f"--urls {args.urls} and --data_dir {args.data_dir} each say where the images are; give one "
                        "(--download_dir says where the downloaded ones go)")
    from .api import build

    result = build(BuildOptions(**{option.name: getattr(args, option.name) for option, _ in option_fields()}))
    for line in result.downloaded:
        print(line)
    for note in result.notes:
        print(f"{PROG}: note: {note}", file=sys.stderr)
    print(result.summary())
    print(result.labels_line())
    print(f"metadata: {', '.join(str(r.metadata) for r in (result, *result.other_sizes))}")
    return 0


def _rebuild(args: argparse.Namespace, argv: list[str]) -> int:
    """``build --recipe``: every option that shapes the archive comes from the recipe."""
    from .recipe import rebuild_from_recipe

    given = _given(argv)
    fixed = [f"--{option.name}" for option, _ in option_fields() if option.metadata["shapes_output"]
             and option.name in given]
    if fixed:
        allowed = [option.metadata["flag"] or f"--{option.name}" for option, _ in option_fields()
                   if not option.metadata["shapes_output"]]
        raise UserError(f"{', '.join(fixed)}: the recipe {args.recipe} fixes the options that shape the archive; "
                        f"drop them (beside --recipe give only {', '.join(allowed)})")
    report = rebuild_from_recipe(args.recipe, args.data_dir, **{
        option.name: getattr(args, option.name) for option, _ in option_fields()
        if not option.metadata["shapes_output"] and option.name != "data_dir"})
    print(report.summary())
    print(report.result.labels_line())
    return 0 if report.archive_matches else 1


def _download(argv: list[str]) -> int:
    """``download``: fetch the chosen images of a URL list into a folder, as a tree to pack later."""
    parser = _Parser(prog=f"{PROG} download", description="Download the chosen images of an image-URL list into "
                     "--out_dir, laid out as a tree the packer reads (pack it with --data_dir OUT_DIR).")
    parser.add_argument("--out_dir", required=True, help="the folder to download into (a second run there fetches "
                                                          "only what is missing)")
    groups = {CHOOSING: parser.add_argument_group(CHOOSING), HIERARCHY: parser.add_argument_group(HIERARCHY),
              URLS: parser.add_argument_group(URLS)}
    for option, kind in option_fields():
        group = option.metadata["group"]
        if option.name in ("subset_name", "progress") or (group in groups and option.name != "download_dir"):
            _add_option(groups.get(group, parser), option, kind)
    args = parser.parse_args(argv)
    if not args.urls:
        raise UserError("download needs --urls LIST (fall11_urls.txt, or a CSV/TSV with image_id and url)")
    from .api import download_images

    chosen = {option.name: getattr(args, option.name) for option, _ in option_fields() if hasattr(args, option.name)}
    _, folder, result = download_images(BuildOptions(**chosen, download_dir=args.out_dir))
    for line in result.summary_lines():
        print(line)
    print(f"images: {folder} ({len(result.rows)} kept; record of every attempt: {folder / 'downloads.csv'}); pack "
          f"them with: {PROG} --data_dir {folder} ...")
    return 0


def _demo(argv: list[str]) -> int:
    parser = _Parser(prog=f"{PROG} demo",
                                     description="Write a small synthetic ILSVRC tree (Kaggle layout) and pack it.")
    parser.add_argument("--dir", help="where to write the tree (default: a temporary folder, removed afterwards)")
    parser.add_argument("--out_dir", default="out_files", help="output folder (default: out_files)")
    parser.add_argument("--workers", type=_whole_number(1), help="worker processes (default: all cores)")
    args = parser.parse_args(argv)
    from .api import build
    from .demo import IMAGENETTE, write_sample_tree
    from .loading import load

    if args.dir and Path(args.dir).exists() and (not Path(args.dir).is_dir() or any(Path(args.dir).iterdir())):
        raise UserError(f"--dir {args.dir} is not an empty folder; the demo writes a whole tree there, so give a new "
                        "or empty folder")
    with tempfile.TemporaryDirectory(prefix="imagenet-subset-demo-") as scratch:
        root = Path(args.dir or scratch)
        data_dir = write_sample_tree(root)
        class_list = root / "demo.txt"
        class_list.write_text("".join(f"{wnid}\n" for wnid in IMAGENETTE))
        where = f"at {root}" if args.dir else "in a temporary folder (removed at the end; --dir DIR keeps it)"
        print(f"wrote a synthetic ILSVRC tree {where}: 12 classes, 20 train + 5 val images each")
        result = build(BuildOptions(subset_name=str(class_list), data_dir=str(data_dir), out_dir=args.out_dir,
                                    workers=args.workers))
        for note in result.notes:
            print(f"{PROG}: note: {note}", file=sys.stderr)
        print(result.summary())
        data = load(result.archive)
        for key, array in data.arrays.items():
            print(f"  {key:<8} {str(array.dtype):<6} {array.shape}")
        print(f"metadata: {result.metadata}")
        if data.classes is not None:
            print(data.classes.astype(object).fillna("").to_string(index=False))
    return 0


def _info(argv: list[str]) -> int:
    parser = _Parser(prog=f"{PROG} info", description="Summarise an archive from its headers and manifest.")
    parser.add_argument("archive", help="a *_cls.npz file")
    from .checking import info

    print(info(parser.parse_args(argv).archive))
    return 0


def _bench_load(argv: list[str]) -> int:
    parser = _Parser(prog=f"{PROG} bench-load",
                     description="Time one full shuffled epoch of batches read from an archive (and of a PyTorch "
                                 "DataLoader when torch is installed).")
    parser.add_argument("archive", help="a *_cls.npz file or a shard index (*_cls.index.json)")
    parser.add_argument("--split", default="train", help="train (default), val or holdout")
    parser.add_argument("--batch_size", type=_whole_number(1), default=256, help="rows per batch (default: 256)")
    parser.add_argument("--workers", type=_whole_number(0), default=None,
                        help="DataLoader worker processes (default: up to 4, one per core)")
    args = parser.parse_args(argv)
    from .batching import batches, timed_epoch

    def epoch(**options):
        return batches(args.archive, args.split, args.batch_size, **options)

    print(timed_epoch("batches, uint8 nhwc", epoch()).line())
    print(timed_epoch("batches, float32 normalized nchw", epoch(normalize="imagenet", layout="nchw")).line())
    try:
        from .torch import loader
    except ImportError:
        print("torch DataLoader: not timed, torch is not installed (pip install 'imagenet-subset[torch]')")
        return 0
    data = loader(args.archive, args.split, args.batch_size, shuffle=True, num_workers=args.workers,
                  normalize="imagenet")
    print(timed_epoch(f"torch DataLoader, {data.num_workers} workers, float32 normalized nchw", data).line())
    return 0


def _verify(argv: list[str]) -> int:
    parser = _Parser(prog=f"{PROG} verify",
                                     description="Recompute the checksums and check the structure of an archive.")
    parser.add_argument("archive", help="a *_cls.npz file (its manifest must be beside it)")
    from .checking import verify

    archive = parser.parse_args(argv).archive
    problems = verify(archive)
    for problem in problems:
        print(f"FAIL: {problem}")
    count = f"{len(problems)} problem{'' if len(problems) == 1 else 's'}"
    print(f"{archive}: {'OK, all checks hold' if not problems else count}")
    return 0 if not problems else 1


def _preview(argv: list[str]) -> int:
    parser = _Parser(prog=f"{PROG} preview", description="Draw a contact sheet of an archive.")
    parser.add_argument("archive", help="a *_cls.npz file")
    parser.add_argument("-o", "--output", default="preview.png", help="image to write (default: preview.png)")
    parser.add_argument("--split", default="train", help="split to show (default: train)")
    parser.add_argument("--per_class", type=_whole_number(1), default=8, help="images per class (default: 8)")
    parser.add_argument("--classes", help="comma-separated labels or WNIDs to show (default: the first 30 classes)")
    args = parser.parse_args(argv)
    from .preview import write_preview

    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    output = write_preview(args.archive, args.output, split=args.split, per_class=args.per_class, classes=classes)
    print(f"wrote {output}")
    return 0


def _classes(argv: list[str]) -> int:
    parser = _Parser(prog=f"{PROG} classes",
                                     description="List the classes a tree holds: WNID, image counts, name.")
    for option, kind in option_fields():
        if option.name in ("data_dir", "devkit_dir", "out_dir", "index_dir", "under", "wordnet", "hierarchy"):
            _add_option(parser, option, kind)
    parser.add_argument("--search", help="only classes whose name contains this text (each shown with its path "
                                         "in the WordNet hierarchy)")
    parser.add_argument("--tree", action="store_true", help="show the WordNet hierarchy above the tree's classes, "
                                                             "with classes and images summed up the tree")
    parser.add_argument("--depth", type=_whole_number(0), help="with --tree: levels shown below the top (default: all)")
    args = parser.parse_args(argv)
    if args.depth is not None and not args.tree:
        raise UserError("--depth applies to --tree; add --tree or drop --depth")
    if (args.wordnet or args.hierarchy) and not (args.tree or args.search or args.under):
        raise UserError("--wordnet and --hierarchy apply to --tree, --search and --under; add one or drop them")
    from .subset import classes_by_search, labels_under
    from .tree import class_table, find_tree, image_counts, names_to_match, train_classes

    where = BuildOptions(data_dir=args.data_dir, devkit_dir=args.devkit_dir, out_dir=args.out_dir,
                         index_dir=args.index_dir, under=args.under, wordnet=args.wordnet, hierarchy=args.hierarchy)
    # a listing keeps archive member lists only where asked, or where a build already keeps them
    index = where.index_folder if args.index_dir or os.path.isdir(where.index_folder) else None
    tree = find_tree(where.data_dir, where.devkit_dir, index)
    names = class_table(tree)
    wnids = train_classes(tree)
    hierarchy, start = None, []
    if args.tree or args.search or where.under:
        from .hierarchy import load_hierarchy, outline

        hierarchy = load_hierarchy(where.wordnet, where.hierarchy)
    if where.under and hierarchy is not None:
        chosen = labels_under(hierarchy, where.under, (), wnids, str(tree.train))
        wnids = [label.name for label in chosen.labels]
        start = [pair["wnid"] for pair in chosen.resolved["under"]]  # where --tree starts
    if args.search:
        wnids = classes_by_search(args.search, names_to_match(names), wnids, str(tree.train))
    counts = image_counts(tree, wnids)
    if args.tree and hierarchy is not None:
        print("\n".join(outline(hierarchy, counts, start, args.depth)))
        return 0
    print(f"{'WNID':<10} {'train':>6} {'val':>5}  human_label")
    for wnid in wnids:
        label = names[wnid].human_label if wnid in names else ""
        path = ""
        if args.search and hierarchy is not None and wnid in hierarchy.parents:
            path = f"  [{' > '.join(hierarchy.name(n) for n in hierarchy.path_to_root(wnid)[:-1])}]"
        print(f"{wnid:<10} {counts[wnid][0]:>6} {counts[wnid][1]:>5}  {label or ''}{path}")
    print(f"{len(wnids)} classes, {sum(c[0] for c in counts.values())} train and "
          f"{sum(c[1] for c in counts.values())} val images")
    return 0


COMMAND_HANDLERS = {"demo": _demo, "info": _info, "verify": _verify, "preview": _preview, "classes": _classes,
                    "bench-load": _bench_load, "download": _download}


def main(argv: list[str] | None = None) -> int:
    _import_numpy_with_ctrl_c_blocked()
    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv[0] if argv[:1] and argv[0] in COMMAND_HANDLERS else "build"
    try:
        with _notes_on_stderr(), _stop_signals_interrupt():
            if command != "build":
                return COMMAND_HANDLERS[command](argv[1:])
            return _build(argv[1:] if argv[:1] == ["build"] else argv)
    except UserError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except MemoryError:
        print(f"{PROG}: error: out of memory; use fewer --workers or a smaller --crop_size (or --sizes), or free "
              "memory", file=sys.stderr)
        return 1
    except BrokenPipeError:  # output piped into e.g. head, which stopped reading
        sys.stdout = open(os.devnull, "w")
        return 0
    except Interrupted as exc:
        hint = ("; run the same command with --resume to continue" if command == "build"
                else "; run the same command to continue the download" if command == "download" else "")
        print(f"{PROG}: interrupted ({exc.signal_name}){hint}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        resumable = "--resume" in argv or "--urls" in argv  # a download always continues where it stopped
        print(f"{PROG}: interrupted; nothing was written at the output paths (earlier outputs are untouched)"
              + ("; run the same command again to continue" if resumable else ""), file=sys.stderr)
        return 130


def _import_numpy_with_ctrl_c_blocked() -> None:
    """numpy's BLAS starts threads when numpy is imported. Started with SIGINT blocked they keep it
    blocked, so a Ctrl-C always reaches the main thread, which stops the workers at once (a BLAS
    thread taking it would leave the main thread waiting). A change to the whole process's signal
    mask, so done here, by the command line, and never by ``import packer``."""
    if "numpy" in sys.modules or not hasattr(signal, "pthread_sigmask"):
        return
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        import numpy  # noqa: F401
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


class _notes_on_stderr:
    """While the command runs, the package's log messages go to stderr as ``imagenet-subset: <message>``."""

    def __enter__(self):
        self.logger = logging.getLogger("packer")
        self.handler = logging.StreamHandler(sys.stderr)
        self.handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
        self.saved = self.logger.level, self.logger.propagate
        self.logger.addHandler(self.handler)
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self.handler)
        self.logger.level, self.logger.propagate = self.saved


class _stop_signals_interrupt:
    """While the command runs, SIGTERM and SIGHUP (``kill``, a batch scheduler, a container stop, a
    closed terminal) raise ``Interrupted`` in the main thread, so the build stops as on Ctrl-C."""

    def __enter__(self):
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            for number in STOP_SIGNALS:
                self.previous[number] = signal.signal(number, self._raise)
        return self

    @staticmethod
    def _raise(number, frame):
        raise Interrupted(number)

    def __exit__(self, *exc):
        for number, handler in self.previous.items():
            signal.signal(number, handler)


if __name__ == "__main__":
    sys.exit(main())
