"""imagenet-subset: pack a chosen subset of a local ImageNet into NumPy ``.npz`` archives.

    import packer
    result = packer.build_subset("imagenet30", data_dir="ILSVRC/Data/CLS-LOC")
    data = packer.load(result.archive)          # data.X_train, data.y_train, ..., data.classes
"""
from .build import BuildOptions, BuildResult, build, build_subset
from .errors import ImageError, UserError
from .load import Subset, load

__version__ = "0.1.0"

__all__ = ["BuildOptions", "BuildResult", "ImageError", "Subset", "UserError", "build", "build_subset",
           "load", "__version__"]
