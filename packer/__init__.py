"""imagenet-subset: pack a chosen subset of a local ImageNet into NumPy ``.npz`` archives.

    import packer
    result = packer.build_subset("imagenet30", data_dir="ILSVRC/Data/CLS-LOC")
    data = packer.load(result.archive)          # data.X_train, data.y_train, ..., data.classes
"""
import signal as _signal
import sys as _sys

if "numpy" not in _sys.modules and hasattr(_signal, "pthread_sigmask"):
    # numpy's BLAS starts threads when imported; started with SIGINT blocked they keep it
    # blocked, so a Ctrl-C always goes to the main thread (see work._local_results).
    _mask = _signal.pthread_sigmask(_signal.SIG_BLOCK, {_signal.SIGINT})
    try:
        import numpy  # noqa: F401
    finally:
        _signal.pthread_sigmask(_signal.SIG_SETMASK, _mask)

from .build import BuildOptions, BuildPlan, BuildResult, build, build_subset, plan_build
from .errors import ImageError, UserError
from .load import ShardedArray, Subset, load
from .preview import contact_sheet, write_preview
from .recipe import rebuild_from_recipe
from .verify import info, verify

__version__ = "0.1.0"

__all__ = ["BuildOptions", "BuildPlan", "BuildResult", "ImageError", "ShardedArray", "Subset", "UserError", "build",
           "build_subset", "contact_sheet", "info", "load", "plan_build", "rebuild_from_recipe", "verify",
           "write_preview", "__version__"]
