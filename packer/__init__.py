"""imagenet-subset: pack a chosen subset of a local ImageNet into NumPy ``.npz`` archives.

    import packer
    result = packer.build_subset("imagenet30", data_dir="ILSVRC/Data/CLS-LOC")
    data = packer.load(result.archive)          # data.X_train, data.y_train, ..., data.classes
    for X, y in packer.batches(result.archive, batch_size=256, epoch=0): ...   # training batches

The names below are imported when first used, so ``import packer`` is quick and
imports neither numpy nor Pillow until a function needs them.
"""
import importlib

__version__ = "0.1.0"

_MODULE_OF = {
    "BuildOptions": "options", "BuildPlan": "options", "BuildResult": "options", "OutputNames": "options",
    "ImageError": "errors", "UserError": "errors",
    "build": "api", "build_subset": "api", "plan_build": "plan",
    "ShardedArray": "loading", "Subset": "loading", "load": "loading",
    "contact_sheet": "preview", "write_preview": "preview",
    "rebuild_from_recipe": "recipe",
    "info": "checking", "verify": "checking",
    "batches": "batching",
}

__all__ = sorted(_MODULE_OF) + ["__version__"]


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'packer' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
    globals()[name] = value  # a function named like its module (load, verify) replaces the module here
    return value


def __dir__() -> list[str]:
    return __all__
