"""Case (f) of the benchmark: the packer's start-up, up to the first chunk handed to the workers.

    python bench/startup_probe.py [packer CLI options]

Runs ``packer.cli.main`` with those options, but replaces ``packer.work.run_chunks``
(in every packer module that imported it) with a probe that takes the first chunk from the chunk iterator and stops the run
there (through ``build``'s clean-up, so no partial file is left). No image is
opened. Prints one JSON line on stdout, all times ``time.monotonic()`` (one
clock for every process on Linux, so the parent can subtract its spawn time)::

    {"t_main": ..., "t_imported": ..., "t_first_chunk": ..., "stages": {"find_tree": s, ...}}

``stages`` are the seconds spent in the pipeline functions (``find_tree``,
``list_train_images``, ...) where the packer's modules call them. Exit code 3 if
no caller of ``packer.work.run_chunks`` is found (the packer changed shape).
"""
import time

T_MAIN = time.monotonic()

import importlib  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402

import packer.cli  # noqa: E402

T_IMPORTED = time.monotonic()
STAGES = ("plan_build", "find_tree", "read_subset_list", "check_classes_present", "train_classes", "list_train_images",
          "list_val_images", "label_images", "labels_of", "class_table", "metadata_table")
stages: dict[str, float] = {}
first_chunk: dict[str, float] = {}


class FirstChunk(BaseException):
    """Raised through ``build`` (its ``finally`` removes the temporary files) to stop the run."""


def _timed(name, function):
    def wrapper(*args, **kwargs):
        started = time.monotonic()
        try:
            return function(*args, **kwargs)
        finally:
            stages[name] = stages.get(name, 0.0) + time.monotonic() - started
    return wrapper


def _probe_run_chunks(chunks, *args, **kwargs):
    chunk = next(iter(chunks), None)
    first_chunk["t"] = time.monotonic()
    first_chunk["images"] = len(getattr(chunk, "paths", ())) if chunk is not None else 0
    raise FirstChunk
    yield  # a generator, like the function it replaces


def _patch() -> int:
    """Replace ``run_chunks`` wherever the packer refers to it (its own module included, for modules
    imported later) and wrap the pipeline stages where they are called from (not where defined,
    so nested calls are not counted twice). Returns the number of places ``run_chunks`` was replaced."""
    work = importlib.import_module("packer.work")
    original = getattr(work, "run_chunks", None)
    if original is None:
        return 0
    replaced = 0
    for name, module in list(sys.modules.items()):
        if not (name == "packer" or name.startswith("packer.")) or module is None:
            continue
        if getattr(module, "run_chunks", None) is original:
            setattr(module, "run_chunks", _probe_run_chunks)
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
                      "first_chunk_images": first_chunk["images"], "stages": stages}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
