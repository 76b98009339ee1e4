"""Build a subset from Python: plan it (``plan.py``), then pack it (``execute.py``).

    result = build_subset("imagenet30", data_dir="ILSVRC/Data/CLS-LOC", workers=8)
    result = build(BuildOptions(subset_name="imagenet30", data_dir="ILSVRC/Data/CLS-LOC"))
    result = build(BuildOptions(subset_name="hotdog", urls="fall11_urls.txt", rest=5000))   # download, then pack

With ``urls``, the chosen images are first downloaded (``plan_download``, then
``download.py``) into ``download_dir`` (default ``<out_dir>/<name>_images``),
a folder the packer then reads as a tree.
"""
import dataclasses
import time
from pathlib import Path

from .download import DownloadOptions, DownloadResult, download, download_folder, write_class_names
from .execute import execute, new_out_dir_removed_on_failure
from .options import BuildOptions, BuildResult
from .plan import DownloadPlan, plan_build, plan_download


def build(options: BuildOptions) -> BuildResult:
    """Plan and pack a build: ``<out_dir>/<name>_cls.npz``, its metadata CSV and its manifest
    (from a URL list: download first, and the result's ``downloaded`` says how that went)."""
    started = time.perf_counter()
    if not options.urls:
        with new_out_dir_removed_on_failure(options):  # planning may start the archive index in it
            return execute(plan_build(options), options, started)
    plan, folder, downloaded = download_images(options)
    # the folder is packed with the labels chosen in the list (its own names could differ), and the
    # rest label's val images as downloaded
    options = dataclasses.replace(options, data_dir=str(folder), rest_val=plan.rest_val)
    with new_out_dir_removed_on_failure(options):
        result = execute(plan_build(options, plan.chosen), options, started)
    return dataclasses.replace(result, downloaded=tuple(downloaded.summary_lines()))


def build_subset(subset_name: str, data_dir: str, **options) -> BuildResult:
    """``build`` with the options as keywords (every ``BuildOptions`` field, e.g. ``workers=8``)."""
    return build(BuildOptions(subset_name=subset_name, data_dir=data_dir, **options))


def download_images(options: BuildOptions) -> tuple[DownloadPlan, Path, DownloadResult]:
    """Download the images ``options`` choose in the URL list ``options.urls`` (see the module
    docstring); the plan, the folder they are in, and how the download went."""
    fetching = DownloadOptions.of(options)  # a bad --reject_sha256 fails before the list is read
    plan = plan_download(options)
    folder = download_folder(options, plan.name)
    result = download(plan.labels, folder, fetching, options.seed)
    result.notes = plan.notes
    wnids = {row["wnid"] for row in result.rows} | {wnid for label in plan.labels for wnid in label.wnids}
    write_class_names(folder, {wnid: plan.names[wnid] for wnid in wnids if plan.names.get(wnid)})
    return plan, folder, result
