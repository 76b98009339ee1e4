"""Build a subset from Python: plan it (``plan.py``), then pack it (``execute.py``).

    result = build_subset("imagenet30", data_dir="ILSVRC/Data/CLS-LOC", workers=8)
    result = build(BuildOptions(subset_name="imagenet30", data_dir="ILSVRC/Data/CLS-LOC"))
"""
import time

from .execute import execute, new_out_dir_removed_on_failure
from .options import BuildOptions, BuildResult
from .plan import plan_build


def build(options: BuildOptions) -> BuildResult:
    """Plan and pack a build: ``<out_dir>/<name>_cls.npz``, its metadata CSV and its manifest."""
    started = time.perf_counter()
    with new_out_dir_removed_on_failure(options):  # planning may start the archive index in it
        return execute(plan_build(options), options, started)


def build_subset(subset_name: str, data_dir: str, **options) -> BuildResult:
    """``build`` with the options as keywords (every ``BuildOptions`` field, e.g. ``workers=8``)."""
    return build(BuildOptions(subset_name=subset_name, data_dir=data_dir, **options))
