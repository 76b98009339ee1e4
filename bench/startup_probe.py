"""Case (f) of the benchmark: the packer's start-up, from process spawn to the first chunk of work.

    python bench/startup_probe.py [packer CLI options]

Runs ``packer.cli.main`` with those options, with ``packer.work.run_chunks``
replaced by a probe that takes the first chunk from the chunk iterator and stops
the run there: it raises through the build, whose clean-up removes its work
folder (and an ``--out_dir`` it created), so nothing is left behind and no image
is opened. Prints one JSON line on stdout, all times ``time.monotonic()`` (one
clock for every process on Linux, so the benchmark subtracts its spawn time)::

    {"t_main": ..., "t_imported": ..., "t_first_chunk": ..., "stages": {"find_tree": s, ...}}

``t_imported`` follows ``import packer.cli`` (what ``main.py`` imports first); the
build's own modules are imported after it, as a real run imports them, so their
import time counts towards the first chunk. ``stages`` are the seconds spent in
the planning functions (``plan_build``, ``find_tree``, ``list_train_images``, ...)
where the packer's modules call them. The benchmark reports the interpreter's
start, the imports, and the rest up to the first chunk, with the stages; its
``--listing`` mode runs this probe alone on a full-size tree. Exit code 3 if
``packer.work.run_chunks`` is not found (the packer changed shape); the run's
own exit code (4 if that is 0) if it ended before the first chunk.
"""
import time

T_MAIN = time.monotonic()

import importlib  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

import packer.cli  # noqa: E402

T_IMPORTED = time.monotonic()
STAGES = ("plan_build", "find_tree", "class_table", "train_classes", "read_subset_list", "check_classes_present",
          "list_train_images", "list_val_images", "label_images", "apply_sampling")
# The module that runs a build and imports the others; packer.build in revisions before packer.api.
BUILD_MODULES = ("packer.api", "packer.build")
stages: dict[str, float] = {}
first_chunk: dict[str, float] = {}


class FirstChunk(BaseException):
    """Raised through the build (whose clean-up removes what it wrote) to stop the run."""


def _timed(name, function):
    def wrapper(*args, **kwargs):
        started = time.monotonic()
        try:
            return function(*args, **kwargs)
        finally:
            stages[name] = stages.get(name, 0.0) + time.monotonic() - started
    return wrapper


def _probe_run_chunks(chunks, *args, **kwargs):
    next(iter(chunks), None)
    first_chunk["t"] = time.monotonic()
    raise FirstChunk
    yield  # a generator, like the function it replaces


def _in_this_packer(name: str) -> bool:
    """Whether module ``name`` exists in the packer being measured (not in another copy that an
    editable install also puts on the path)."""
    spec = importlib.util.find_spec(name)
    return bool(spec and spec.origin and spec.origin.startswith(os.path.dirname(packer.__file__) + os.sep))


def _patch() -> int:
    """Replace ``run_chunks`` wherever the packer refers to it (its own module included, for modules
    imported later) and wrap the pipeline stages where they are called from (not where defined,
    so nested calls are not counted twice). Returns the number of places ``run_chunks`` was replaced."""
    build_module = next((name for name in BUILD_MODULES if _in_this_packer(name)), None)
    if build_module:
        importlib.import_module(build_module)
    work = importlib.import_module("packer.work")
    original = getattr(work, "run_chunks", None)
    if original is None:
        return 0
    replaced = 0
    for name, module in list(sys.modules.items()):
        if not (name == "packer" or name.startswith("packer.")) or module is None:
            continue
        if getattr(module, "run_chunks", None) is original:
            module.run_chunks = _probe_run_chunks
            replaced += 1
        for stage in STAGES:
            function = getattr(module, stage, None)
            if callable(function) and getattr(function, "__module__", name) != name:
                setattr(module, stage, _timed(stage, function))
    return replaced


def main(argv: list[str]) -> int:
    if _patch() < 1:
        print("startup_probe: packer.work.run_chunks not found", file=sys.stderr)
        return 3
    try:
        code = packer.cli.main(argv)
    except FirstChunk:
        code = 0
    if "t" not in first_chunk:
        print(f"startup_probe: the run ended (code {code}) before a chunk was submitted", file=sys.stderr)
        return code or 4
    print(json.dumps({"t_main": T_MAIN, "t_imported": T_IMPORTED, "t_first_chunk": first_chunk["t"],
                      "stages": stages}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
