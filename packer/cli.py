"""Command line: parse arguments, call the API, turn ``UserError`` into one line and an exit code.

    imagenet-subset [build] --subset_name NAME --data_dir DIR [options]
    imagenet-subset build --recipe MANIFEST.json --data_dir DIR
    imagenet-subset info FILE.npz
    imagenet-subset verify FILE.npz
    imagenet-subset preview FILE.npz -o grid.png [--split S] [--per_class N] [--classes A,B]
    imagenet-subset demo [--dir DIR] [--out_dir DIR]
"""
import argparse
import logging
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path

from .build import BuildOptions, build
from .errors import Interrupted, UserError

PROG = "imagenet-subset"
COMMANDS = """commands:
  build (default)   pack a subset: imagenet-subset --subset_name imagenet30 --data_dir ILSVRC/Data/CLS-LOC
                    or rebuild one from a manifest: imagenet-subset build --recipe X_cls.manifest.json --data_dir ...
  info FILE.npz     summary from the headers and the manifest (instant)
  verify FILE.npz   recompute checksums and check the structure; exit 0 only if all holds
  preview FILE.npz  draw a contact sheet: imagenet-subset preview FILE.npz -o grid.png
  classes           list the classes of a tree (WNID, counts, name): imagenet-subset classes --data_dir ... --search dog
  demo              write a small synthetic ILSVRC tree and pack it (no ImageNet needed)
run "imagenet-subset COMMAND --help" for a command's options"""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is a one-line ``UserError`` (exit code 1) like every other bad input."""

    def error(self, message: str):
        raise UserError(f"{message} (see {self.prog} --help)")


def _whole_number(minimum: int):
    """An argparse type: a whole number of at least ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} must be at least {minimum}")
        return value
    return parse


_count = _whole_number(0)
_positive_int = _whole_number(1)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG, description="Pack a subset of a local ImageNet (ILSVRC CLS-LOC) into a NumPy .npz archive.",
        epilog=COMMANDS, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subset_name",
                        help="built-in list (imagenet30, imagenet100, imagenette, imagewoof, hotdog), "
                             "aux_files/NAME.txt, or a path to a class-list file (default: imagenet30); with "
                             "--classes or --search, the output name")
    parser.add_argument("--data_dir", default="./Data/CLS-LOC",
                        help="folder holding train/ and val/ (default: ./Data/CLS-LOC)")
    parser.add_argument("--devkit_dir", help="folder with map_clsloc.txt and the val ground truth, if not found beside the data")
    parser.add_argument("--out_dir", default="out_files", help="output folder (default: out_files)")
    parser.add_argument("--resize_size", type=_positive_int, default=256, help="short side after resizing (default: 256)")
    parser.add_argument("--crop_size", type=_positive_int, default=224, help="side of the center crop (default: 224)")
    parser.add_argument("--resize", choices=["crop", "squash"], default="crop",
                        help="crop: short side to --resize_size then center crop (default); squash: whole image "
                             "to --crop_size square with a box filter, no crop")
    parser.add_argument("--layout", choices=["nhwc", "nchw"], default="nhwc",
                        help="store images channels last (default) or channels first")
    parser.add_argument("--fast", action="store_true",
                        help="resize only the window kept by the crop: faster, pixels within 1 of exact")
    parser.add_argument("--compress", action="store_true", help="deflate the archive members (smaller, slower, not memory-mappable)")
    parser.add_argument("--workers", type=_positive_int, help="worker processes (default: all cores)")
    choose = parser.add_argument_group("choosing classes and images")
    choose.add_argument("--classes", help="comma-separated class names or WNIDs from the tree's mapping file, "
                                          "e.g. \"goldfish,tench\" (instead of --subset_name)")
    choose.add_argument("--search", help="every class whose name contains this text, e.g. dog")
    choose.add_argument("--train_per_class", type=_count, help="at most N train images per label (seeded choice)")
    choose.add_argument("--val_per_class", type=_count, help="at most M val images per label (seeded choice)")
    choose.add_argument("--holdout_per_class", type=_count, default=0,
                        help="move K train images per label to X_holdout/y_holdout/holdout_id")
    choose.add_argument("--rest", type=_count, help="add a final label 'rest' with N train images from all other classes")
    choose.add_argument("--rest_val", type=_count, help="val images of 'rest' (default: proportional to --rest)")
    choose.add_argument("--seed", type=int, default=0, help="seed of every random choice (default: 0)")
    run = parser.add_argument_group("running at scale")
    run.add_argument("--on_error", choices=["fail", "skip"], default="fail",
                     help="an unreadable image stops the run (fail, default) or is left out and listed (skip)")
    run.add_argument("--resume", action="store_true",
                     help="continue an interrupted run of the same build, redoing only unfinished chunks")
    run.add_argument("--shard_size", type=_positive_int,
                     help="write shards NAME_cls-00000-of-0000N.npz of at most N rows per split, plus an index")
    run.add_argument("--backend", choices=["local", "dask"], default="local",
                     help="local processes (default) or an existing Dask cluster (needs --scheduler)")
    run.add_argument("--scheduler", metavar="tcp://HOST:PORT", help="address of the Dask scheduler")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--recipe", metavar="MANIFEST.json",
                        help="rebuild the archive a manifest describes from --data_dir, and compare (other options "
                             "that shape the output come from the recipe)")
    parser.add_argument("--max_ram", type=float, help="accepted for compatibility; memory stays flat without it")
    parser.add_argument("--concatenate", action="store_true", help="accepted for compatibility; one file is always written")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    return parser


# what a recipe fixes; the other options (where to read and write, how to run) may be given beside it
RECIPE_FIXES = ("subset_name", "resize_size", "crop_size", "resize", "layout", "fast", "compress", "classes",
                "search", "train_per_class", "val_per_class", "holdout_per_class", "rest", "rest_val", "seed",
                "on_error", "shard_size")


def _given(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The options ``argv`` sets explicitly (an option given with its default value counts)."""
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def _build(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.max_ram is not None or args.concatenate:
        print(f"{PROG}: note: --max_ram and --concatenate are no longer needed: memory stays flat "
              "and one file is always written", file=sys.stderr)
    if args.recipe:
        from .recipe import rebuild_from_recipe

        fixed = [f"--{name}" for name in RECIPE_FIXES if name in _given(build_parser(), argv)]
        if fixed:
            raise UserError(f"{', '.join(fixed)}: the recipe {args.recipe} fixes the options that shape the archive; "
                            "drop them (beside --recipe give only --data_dir, --devkit_dir, --out_dir, --workers, "
                            "--backend, --scheduler, --resume, --quiet)")

        report = rebuild_from_recipe(args.recipe, args.data_dir, args.devkit_dir, args.out_dir, args.workers,
                                     progress=not args.quiet, backend=args.backend, scheduler=args.scheduler,
                                     resume=args.resume)
        print(report.summary())
        return 0 if report.archive_matches else 1
    classes = tuple(c.strip() for c in args.classes.split(",") if c.strip()) if args.classes else None
    options = BuildOptions(args.subset_name, args.data_dir, args.devkit_dir, args.out_dir, args.resize_size,
                           args.crop_size, args.fast, args.compress, args.workers, not args.quiet, args.resize,
                           args.layout, classes, args.search, args.train_per_class, args.val_per_class,
                           args.holdout_per_class, args.rest, args.rest_val, args.seed, args.on_error, args.resume,
                           args.backend, args.scheduler, args.shard_size)
    result = build(options)
    for note in result.notes:
        print(f"{PROG}: note: {note}", file=sys.stderr)
    print(result.summary())
    print(f"metadata: {result.metadata}")
    return 0


def _demo(argv: list[str]) -> int:
    parser = _Parser(prog=f"{PROG} demo",
                                     description="Write a small synthetic ILSVRC tree (Kaggle layout) and pack it.")
    parser.add_argument("--dir", help="where to write the tree (default: a temporary folder, removed afterwards)")
    parser.add_argument("--out_dir", default="out_files", help="output folder (default: out_files)")
    parser.add_argument("--workers", type=_positive_int, help="worker processes (default: all cores)")
    args = parser.parse_args(argv)
    from .demo import IMAGENETTE, write_sample_tree
    from .load import load

    with tempfile.TemporaryDirectory(prefix="imagenet-subset-demo-") as scratch:
        root = Path(args.dir or scratch)
        data_dir = write_sample_tree(root)
        class_list = root / "demo.txt"
        class_list.write_text("".join(f"{wnid}\n" for wnid in IMAGENETTE))
        where = f"at {root}" if args.dir else "in a temporary folder (removed at the end; --dir DIR keeps it)"
        print(f"wrote a synthetic ILSVRC tree {where}: 12 classes, 20 train + 5 val images each")
        result = build(BuildOptions(str(class_list), str(data_dir), out_dir=args.out_dir, workers=args.workers))
        print(result.summary())
        data = load(result.archive)
        for key, array in data.arrays.items():
            print(f"  {key:<8} {str(array.dtype):<6} {array.shape}")
        print(f"metadata: {result.metadata}")
        print(data.classes.astype(object).fillna("").to_string(index=False))
    return 0


def _info(argv: list[str]) -> int:
    parser = _Parser(prog=f"{PROG} info", description="Summarise an archive from its headers and manifest.")
    parser.add_argument("archive", help="a *_cls.npz file")
    from .verify import info

    print(info(parser.parse_args(argv).archive))
    return 0


def _verify(argv: list[str]) -> int:
    parser = _Parser(prog=f"{PROG} verify",
                                     description="Recompute the checksums and check the structure of an archive.")
    parser.add_argument("archive", help="a *_cls.npz file (its manifest must be beside it)")
    from .verify import verify

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
    parser.add_argument("--per_class", type=_positive_int, default=8, help="images per class (default: 8)")
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
    parser.add_argument("--data_dir", default="./Data/CLS-LOC", help="folder holding train/ and val/")
    parser.add_argument("--devkit_dir", help="folder with map_clsloc.txt, if not found beside the data")
    parser.add_argument("--search", help="only classes whose name contains this text")
    args = parser.parse_args(argv)
    from .subset import classes_by_search
    from .tree import class_table, find_tree, human_labels, image_counts, train_classes

    tree = find_tree(args.data_dir, args.devkit_dir)
    names = class_table(tree)
    wnids = train_classes(tree)
    if args.search:
        wnids = classes_by_search(args.search, human_labels(names), wnids, str(tree.train_dir))
    counts = image_counts(tree, wnids)
    print(f"{'WNID':<10} {'train':>6} {'val':>5}  human_label")
    for wnid in wnids:
        label = names[wnid].human_label if wnid in names else ""
        print(f"{wnid:<10} {counts[wnid][0]:>6} {counts[wnid][1]:>5}  {label or ''}")
    print(f"{len(wnids)} classes, {sum(c[0] for c in counts.values())} train and "
          f"{sum(c[1] for c in counts.values())} val images")
    return 0


COMMAND_HANDLERS = {"demo": _demo, "info": _info, "verify": _verify, "preview": _preview, "classes": _classes}


def main(argv: list[str] | None = None) -> int:
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
        print(f"{PROG}: error: out of memory; use fewer --workers or a smaller --crop_size, or free memory",
              file=sys.stderr)
        return 1
    except BrokenPipeError:  # output piped into e.g. head, which stopped reading
        sys.stdout = open(os.devnull, "w")
        return 0
    except Interrupted as exc:
        hint = "; run the same command with --resume to continue" if command == "build" else ""
        print(f"{PROG}: interrupted ({exc.signal_name}){hint}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        resumable = "--resume" in argv
        print(f"{PROG}: interrupted; nothing was written at the output paths (earlier outputs are untouched)"
              + ("; run the same command again to continue" if resumable else ""), file=sys.stderr)
        return 130


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

    SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))

    def __enter__(self):
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            for number in self.SIGNALS:
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
