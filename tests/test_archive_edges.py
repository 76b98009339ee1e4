"""Edge cases of reading ImageNet's archives that the review of issue #12 found: symlinked
archives, tar names extraction would normalise, hard links, old GNU headers, a zip comment holding
the end-record signature, archives laid out otherwise, a devkit archive as --devkit_dir, where the
index is kept (and not kept), and shards and --compress from archives.

The trees, archives and expectations are those of test_archives.py (imported from it, with its
module fixtures ``data`` and ``reference``, which the tests then name as arguments).
"""
# ruff: noqa: F811
import io
import os
import re
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from archive_helpers import DEVKIT, TRAIN_TAR, VAL_TAR, patch_tar_header, write_devkit, write_train_tar, write_val_tar
from helpers import photo, read_npz, run_main, sha256
from test_archives import (  # noqa: F401  (data and reference are fixtures)
    VAL,
    VAL_IDS,
    assert_fails,
    cli,
    data,
    pack,
    reference,
)

from packer import BuildOptions, UserError
from packer import build as packer_build
from packer.archives import scan_tar, scan_zip
from packer.execute import new_out_dir_removed_on_failure


def test_an_archive_given_through_a_symlink_finds_its_neighbours_beside_the_link(data, reference, tmp_path):
    store, downloads = tmp_path / "store", tmp_path / "downloads"
    store.mkdir()
    downloads.mkdir()
    os.symlink(data.tars / TRAIN_TAR, store / "train-2012.tar")
    os.symlink(store / "train-2012.tar", downloads / TRAIN_TAR)
    os.symlink(data.tars / VAL_TAR, downloads / VAL_TAR)
    assert pack(data, downloads / TRAIN_TAR, tmp_path / "out").sha256 == reference.sha256


def _tar(members: list[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]], fmt=tarfile.GNU_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        for member in members:
            info, content = member if isinstance(member, tuple) else (member, b"")
            tar.addfile(info, io.BytesIO(content) if content else None)
    return buffer.getvalue()


def _file(name: str, content: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(content)
    return info, content


def test_tar_names_are_placed_as_extraction_places_them_and_hard_links_are_files(tmp_path):
    link = tarfile.TarInfo("copy.JPEG")
    link.type, link.linkname = tarfile.LNKTYPE, "././a.JPEG"
    symlink = tarfile.TarInfo("elsewhere.JPEG")
    symlink.type, symlink.linkname = tarfile.SYMTYPE, "a.JPEG"
    path = tmp_path / "t.tar"
    path.write_bytes(_tar([_file("././a.JPEG", b"first"), _file("/abs/b.JPEG", b"second"), link, symlink]))
    members = list(scan_tar(str(path)))
    assert [m.path for m in members] == ["a.JPEG", "abs/b.JPEG", "copy.JPEG"]
    assert [m.read() for m in members] == [b"first", b"second", b"first"]


def test_an_old_gnu_header_keeps_its_name_whatever_lies_where_ustar_keeps_a_prefix(tmp_path):
    path = tmp_path / "t.tar"
    path.write_bytes(_tar([_file("n01440764_1.JPEG", b"pixels")], fmt=tarfile.GNU_FORMAT))
    assert path.read_bytes()[257:265] == b"ustar  \0"  # old GNU magic: bytes 345.. hold times, not a prefix
    patch_tar_header(path, 0, slice(345, 357), b"14000000000\0")
    assert [m.path for m in scan_tar(str(path))] == ["n01440764_1.JPEG"]


def test_a_zip_whose_comment_holds_the_end_record_signature(tmp_path):
    path = tmp_path / "c.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("ILSVRC/Data/CLS-LOC/val/ILSVRC2012_val_00000028.JPEG", b"jpeg bytes")
        z.comment = b"made with PK\x05\x06 in its comment" + bytes(30)
    members = list(scan_zip(str(path)))
    assert [(m.path, m.read()) for m in members] == [("ILSVRC/Data/CLS-LOC/val/ILSVRC2012_val_00000028.JPEG",
                                                      b"jpeg bytes")]


def test_a_val_tar_holding_its_images_in_a_folder_is_refused(data, tmp_path, capsys):
    folder = tmp_path / "tars"
    write_val_tar(folder / VAL_TAR, {f"val/{name}": content for name, content in data.val.items()})
    os.symlink(data.tars / TRAIN_TAR, folder / TRAIN_TAR)
    assert_fails(cli(data, folder, tmp_path / "out"), capsys, tmp_path / "out",
                 f"{folder / VAL_TAR} holds no val images (ILSVRC2012_val_XXXXXXXX.JPEG files at its top); its "
                 "files are in val/; pass the archive as ImageNet distributes it, or extract it")


def test_a_zip_without_val_images_is_refused(data, tmp_path, capsys):
    path = tmp_path / "zip" / data.zip.name
    path.parent.mkdir()
    with zipfile.ZipFile(data.zip) as source, zipfile.ZipFile(path, "w") as target:
        for info in source.infolist():
            if "/val/" not in info.filename:
                target.writestr(info, source.read(info))
    assert_fails(cli(data, path, tmp_path / "out"), capsys, tmp_path / "out",
                 f"{path}:ILSVRC/Data/CLS-LOC/val holds no val images (val images); pass the archive as ImageNet "
                 "distributes it, or extract it")


def test_a_devkit_archive_as_devkit_dir(data, tmp_path):
    labels = dict(VAL)
    labels[28], labels[293] = labels[293], labels[28]  # swap two, so the devkit visibly decides
    devkit = write_devkit(tmp_path / "devkits" / DEVKIT, labels, filler=1000)
    result = pack(data, data.tars, tmp_path / "out", devkit_dir=devkit)
    assert result.label_sources["val"] == "ILSVRC2012_validation_ground_truth.txt with the built-in class table"
    z = read_npz(result.archive)
    assert z["val_id"].tolist() == VAL_IDS
    assert z["y_val"].tolist()[:4] == [1, 0, 0, 0]  # image 28 is now the tench (label 1), 293 a foxhound (0)


def test_classes_keeps_no_index_unless_asked_or_already_kept(data, tmp_path, capsys, monkeypatch):
    cwd = tmp_path / "here"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    code, out, err = run_main(["classes", "--data_dir", data.tars], capsys)
    assert code == 0, err
    assert list(cwd.iterdir()) == []  # no out_files/ made by a listing
    pack(data, data.tars, cwd / "out_files")  # a build keeps the index where it writes
    kept = sorted(p.name for p in (cwd / "out_files" / ".archive_index").iterdir())
    code, out2, err = run_main(["classes", "--data_dir", data.tars], capsys)
    assert code == 0 and out2 == out
    assert sorted(p.name for p in (cwd / "out_files" / ".archive_index").iterdir()) == kept
    code, _, err = run_main(["classes", "--data_dir", data.tars, "--index_dir", tmp_path / "mine"], capsys)
    assert code == 0, err
    assert len(list((tmp_path / "mine").iterdir())) == 2  # one folder per tar


def _fail_inside(options: BuildOptions, make) -> None:
    with pytest.raises(RuntimeError), new_out_dir_removed_on_failure(options):
        make()
        raise RuntimeError("the build failed")


def _lists(folder: Path) -> None:
    (folder / "ILSVRC2012_img_val.tar.0123456789ab").mkdir(parents=True)
    (folder / "ILSVRC2012_img_val.tar.0123456789ab" / "archive.json").write_text("{}")


@pytest.mark.parametrize("index_in_out_dir", [True, False])
def test_a_failed_build_removes_a_new_out_dir_holding_only_an_index(tmp_path, index_in_out_dir):
    out = tmp_path / "new" / "out"
    index = out if index_in_out_dir else out / ".archive_index"
    _fail_inside(BuildOptions(out_dir=str(out), index_dir=str(index)), lambda: _lists(index))
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("index_in_out_dir", [True, False])
def test_a_failed_build_keeps_a_new_out_dir_holding_its_work_for_resume(tmp_path, index_in_out_dir):
    out = tmp_path / "out"
    index = out if index_in_out_dir else out / ".archive_index"

    def work_and_index():
        _lists(index)
        (out / ".mine_cls.work").mkdir()
        (out / ".mine_cls.work" / "plan.json").write_text("{}")

    _fail_inside(BuildOptions(out_dir=str(out), index_dir=str(index)), work_and_index)
    assert (out / ".mine_cls.work" / "plan.json").read_text() == "{}"
    assert (index / "ILSVRC2012_img_val.tar.0123456789ab" / "archive.json").exists()


def test_shards_and_compression_from_the_archives_equal_those_from_the_zip(data, tmp_path):
    """The tars and the Kaggle zip (whose train_cls.txt carries the tars' ids) give the same bytes
    with --shard_size and with --compress."""
    for options in ({"shard_size": 4}, {"compress": True}):
        from_tars = pack(data, data.tars, tmp_path / "tars", **options)
        from_zip = pack(data, data.zip, tmp_path / "zip", **options)
        assert [sha256(p) for p in from_tars.archives] == [sha256(p) for p in from_zip.archives]
        assert len(from_tars.archives) == (5 if "shard_size" in options else 1)  # 18 train rows in shards of 4
        z = read_npz(from_tars.archives[-1] if "compress" in options else from_tars.archives[0])
        assert z["X_train"].dtype == np.uint8


def _jpeg(seed: int) -> bytes:
    buffer = io.BytesIO()
    photo(40, 30, seed).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def test_resume_continues_a_build_from_the_archives(tmp_path, caplog):
    """A build from the tars that stops at a damaged image keeps its finished chunks with --resume;
    once the archive is repaired (so its member lists are made again), --resume finishes it, and
    the archive is the one a clean build gives."""
    tench = "n01440764"
    good = [(f"{tench}_{k}.JPEG", _jpeg(k)) for k in range(1, 71)]  # 70 rows: three chunks of 32
    broken = [(name, b"not a jpeg" if k == 69 else content) for k, (name, content) in enumerate(good)]
    folder, clean = tmp_path / "tars", tmp_path / "clean"
    write_val_tar(folder / VAL_TAR, {"ILSVRC2012_val_00000293.JPEG": _jpeg(0)})  # image 293 is a tench
    write_val_tar(clean / VAL_TAR, {"ILSVRC2012_val_00000293.JPEG": _jpeg(0)})
    write_train_tar(folder / TRAIN_TAR, {tench: broken})
    write_train_tar(clean / TRAIN_TAR, {tench: good})
    class_list = tmp_path / "tench.txt"
    class_list.write_text(tench + "\n")
    out = tmp_path / "out"
    options = {"resize_size": 32, "crop_size": 24, "workers": 1, "progress": False}
    with pytest.raises(UserError, match="cannot read image"):
        packer_build(BuildOptions(subset_name=str(class_list), data_dir=str(folder), out_dir=str(out), resume=True,
                                  **options))
    work = out / ".tench_cls.work"
    assert work.is_dir() and not (out / "tench_cls.npz").exists()
    write_train_tar(folder / TRAIN_TAR, {tench: good})  # repaired: new size and mtime
    caplog.set_level("INFO", logger="packer")
    resumed = packer_build(BuildOptions(subset_name=str(class_list), data_dir=str(folder), out_dir=str(out),
                                        resume=True, **options))
    reference = packer_build(BuildOptions(subset_name=str(class_list), data_dir=str(clean),
                                          out_dir=str(tmp_path / "reference"), **options))
    assert resumed.sha256 == reference.sha256
    assert not work.exists()
    assert any(re.fullmatch(r"resuming: [12] of 4 chunks already done", r.getMessage()) for r in caplog.records), \
        [r.getMessage() for r in caplog.records]
