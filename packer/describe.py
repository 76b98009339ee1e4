"""Describe a subset: the metadata CSV written beside the archive.

``<name>_cls_metadata.csv`` (comma-separated, ``\\n`` line ends, one row per label
in label order) has the columns:

==================  ===========================================================
subset_label        the label (``y_train``/``y_val`` value), 0-based list position
WNID                the class id, e.g. ``n01440764``
human_label         name from LOC_synset_mapping.txt or map_clsloc.txt
original_label      ILSVRC CLS-LOC id (1-1000) from map_clsloc.txt
imagenet_index      0-999 position among the sorted 1000 classes (model outputs)
num_train_images    images of this label packed into ``X_train``
num_val_images      images of this label packed into ``X_val``
==================  ===========================================================

A cell the tree's label files say nothing about is left empty.
"""
import numpy as np
import pandas as pd

from .subset import SubsetList
from .tree import ClassInfo

METADATA_COLUMNS = ["subset_label", "WNID", "human_label", "original_label", "imagenet_index",
                    "num_train_images", "num_val_images"]


def metadata_table(subset: SubsetList, classes: dict[str, ClassInfo],
                   y_train: np.ndarray, y_val: np.ndarray) -> pd.DataFrame:
    """One row per label of ``subset``, with the counts of images actually packed."""
    unknown = ClassInfo(None, None, None)
    info = [classes.get(w, unknown) for w in subset.wnids]
    n = len(subset.wnids)
    return pd.DataFrame({
        "subset_label": np.arange(n),
        "WNID": list(subset.wnids),
        "human_label": pd.array([c.human_label for c in info], dtype="string"),
        "original_label": pd.array([c.original_label for c in info], dtype="Int64"),
        "imagenet_index": pd.array([c.imagenet_index for c in info], dtype="Int64"),
        "num_train_images": np.bincount(y_train, minlength=n),
        "num_val_images": np.bincount(y_val, minlength=n),
    }, columns=METADATA_COLUMNS)


def write_metadata_csv(table: pd.DataFrame, path) -> None:
    table.to_csv(path, index=False, lineterminator="\n")
