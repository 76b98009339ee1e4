"""Reading built outputs: the manifest's version and its spec, and what ``verify``, ``preview`` and
``packer.load`` read of an archive.

A compressed archive's image members are large once decompressed (224 x 224 x 3 bytes a row)
while its label and id members are tiny, so the bytes zipfile decompresses (counted by wrapping
its zlib) tell whether an image member was read, and how far.
"""
import json
import re
import shutil
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import C, SUBSET, assert_one_error_line, build, kaggle_tree, read_npz, run_main, write_list
from packer import describe
from packer.errors import UserError
from packer.loading import array_headers, load
from packer.preview import LABEL_WIDTH, contact_sheet
from packer.recipe import rebuild_from_recipe
from packer.checking import info, read_manifest, verify

ROW_BYTES = 224 * 224 * 3
THUMB, GAP = 112, 4
# Train rows in path order: A (label 1) rows 0-10, B (label 2) rows 11-13, C (label 0) rows 14-17.
FIRST_TRAIN_ROW = {1: 0, 2: 11, 0: 14}


@pytest.fixture(scope="module")
def built(module_tmp_path_factory):
    """The subset C, A, B (18 train and 8 val rows) stored, compressed, and compressed in shards of 8."""
    root = module_tmp_path_factory.mktemp("reading")
    tree = kaggle_tree(root / "kaggle")
    class_list = write_list(root / "mine.txt", SUBSET)
    return {"tree": tree, "class_list": class_list,
            "stored": build(class_list, tree.data_dir, root / "stored"),
            "compressed": build(class_list, tree.data_dir, root / "compressed", compress=True),
            "shards": build(class_list, tree.data_dir, root / "shards", compress=True, shard_size=8)}


@pytest.fixture(scope="module")
def varied(module_tmp_path_factory):
    """A build with every optional manifest entry: holdout, shards, a skipped image, a group, rest."""
    root = module_tmp_path_factory.mktemp("varied")
    tree = kaggle_tree(root / "kaggle")
    (tree.train_dir / tree.train[0][1]).write_bytes(b"not an image")
    class_list = root / "groups.txt"
    class_list.write_text(f"pair: {SUBSET[0]} {SUBSET[1]}\n{SUBSET[2]}\n")
    return build(class_list, tree.data_dir, root / "out", holdout_per_class=1, shard_size=8, on_error="skip",
                 rest=2)


def _copy(result, folder: Path) -> dict[str, Path]:
    """The archive, CSV and manifest of ``result`` copied into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    return {kind: Path(shutil.copy2(getattr(result, kind), folder)) for kind in ("archive", "metadata", "manifest")}


def _rewrite_manifest(path: Path, change) -> None:
    manifest = json.loads(path.read_text(encoding="utf-8"))
    change(manifest)
    describe.write_json(manifest, path)


class _CountingZlib:
    """zlib for zipfile, counting every byte its decompressors give out."""

    def __init__(self):
        self.decompressed = 0

    def __getattr__(self, name):
        return getattr(zlib, name)

    def decompressobj(self, *args):
        return _CountingDecompressor(zlib.decompressobj(*args), self)


class _CountingDecompressor:
    def __init__(self, decompressor, counter: _CountingZlib):
        self._decompressor, self._counter = decompressor, counter

    def __getattr__(self, name):
        return getattr(self._decompressor, name)

    def decompress(self, data, max_length=0):
        out = self._decompressor.decompress(data, max_length)
        self._counter.decompressed += len(out)
        return out

    def flush(self, *args):
        out = self._decompressor.flush(*args)
        self._counter.decompressed += len(out)
        return out


@pytest.fixture
def counted(monkeypatch) -> _CountingZlib:
    counter = _CountingZlib()
    monkeypatch.setattr(zipfile, "zlib", counter)
    return counter


def _small_members_bytes(archive: Path) -> int:
    """Bytes of the label and id members once decompressed (.npy header included)."""
    with zipfile.ZipFile(archive) as z:
        return sum(i.file_size for i in z.infolist() if not i.filename.startswith("X_"))


# What zipfile decompresses beyond what is asked for: a header read takes up to 4 KiB
# (zipfile's MIN_READ_SIZE), and so may the end of each read.
SLACK = 6 * 2 * 4096


# --------------------------------------------------------------------------- the manifest's version

def _readers(files: dict[str, Path], tree, out: Path) -> dict:
    return {
        "info": lambda: info(files["archive"]),
        "verify": lambda: verify(files["archive"]),
        "recipe": lambda: rebuild_from_recipe(files["manifest"], str(tree.data_dir), out_dir=str(out), workers=1,
                                              progress=False),
    }


@pytest.mark.parametrize("reader", ["info", "verify", "recipe"])
def test_a_newer_manifest_is_refused_and_one_without_a_version_is_version_1(built, tmp_path, reader):
    files = _copy(built["stored"], tmp_path / "out")
    read = _readers(files, built["tree"], tmp_path / "rebuilt")[reader]
    _rewrite_manifest(files["manifest"], lambda m: m.update(manifest_version=2))
    with pytest.raises(UserError) as raised:
        read()
    assert str(raised.value) == (f"{files['manifest']} is a version 2 manifest, newer than this imagenet-subset "
                                 "reads (version 1); update imagenet-subset to read it")
    _rewrite_manifest(files["manifest"], lambda m: m.pop("manifest_version"))
    result = read()
    if reader == "verify":
        assert result == []
    elif reader == "recipe":
        assert result.archive_matches and result.metadata_matches
    else:
        assert f"sha256: {built['stored'].sha256}  mine_cls.npz (from the manifest" in result


@pytest.mark.parametrize("command", [["info"], ["verify"], ["build", "--recipe"]])
def test_a_newer_manifest_is_one_error_line(built, tmp_path, capsys, command):
    files = _copy(built["stored"], tmp_path / "out")
    _rewrite_manifest(files["manifest"], lambda m: m.update(manifest_version=7))
    target = files["manifest"] if command[0] == "build" else files["archive"]
    extra = ["--data_dir", built["tree"].data_dir, "--out_dir", tmp_path / "rebuilt"] if command[0] == "build" else []
    code, out, err = run_main([*command, target, *extra], capsys)
    assert code == 1 and out == ""
    assert assert_one_error_line(err) == (f"imagenet-subset: error: {files['manifest']} is a version 7 manifest, "
                                          "newer than this imagenet-subset reads (version 1); update "
                                          "imagenet-subset to read it")
    assert not (tmp_path / "rebuilt").exists()


def test_a_manifest_version_that_is_no_number_is_a_verify_problem(built, tmp_path):
    files = _copy(built["stored"], tmp_path / "out")
    _rewrite_manifest(files["manifest"], lambda m: m.update(manifest_version="two"))
    assert verify(files["archive"]) == [f"{files['manifest']}: manifest_version 'two' is not a version number; "
                                        "rebuild the archive"]
    with pytest.raises(UserError, match=re.escape("manifest_version 'two' is not a version number")):
        read_manifest(files["manifest"])


# --------------------------------------------------------------------------- the manifest's spec

def _spec_entries(indent: int) -> list[tuple[str, str]]:
    """``(section, key)`` of the entries the describe.py docstring lists at ``indent`` spaces, where
    section is the top-level entry they stand under (itself for top-level entries)."""
    spec = describe.__doc__.split("``<name>_cls.manifest.json``", 1)[1]
    entries, section = [], None
    for line in spec.split("\n"):
        match = re.match(r"^( {4}| {6})([A-Za-z_]+)  ", line)
        if match and len(match.group(1)) == 4:
            section = match.group(2)
        if match and len(match.group(1)) == indent:
            entries.append((section, match.group(2)))
    return entries


def _keys_in(value) -> set[str]:
    """Every key of every object in ``value``, at any depth."""
    if isinstance(value, dict):
        return set(value) | {key for item in value.values() for key in _keys_in(item)}
    if isinstance(value, list):
        return {key for item in value for key in _keys_in(item)}
    return set()


def test_the_manifest_spec_lists_every_entry_in_order(built, varied):
    plain = json.loads(built["stored"].manifest.read_text(encoding="utf-8"))
    full = json.loads(varied.manifest.read_text(encoding="utf-8"))
    entries = [key for _, key in _spec_entries(4)]
    assert entries[entries.index("files") + 1] == "sizes"  # written only by a build of several sizes
    assert [key for key in entries if key != "sizes"] == list(plain) == list(full)
    for section in ("options", "files", "build"):
        in_order = list(dict.fromkeys([*plain[section], *full[section]]))
        assert [key for where, key in _spec_entries(6) if where == section] == in_order, section
    assert {where for where, _ in _spec_entries(6)} == {"options", "files", "build"}
    assert set(full["splits"]) == {"train", "val", "holdout"} and full["skipped"] and full["files"]["shards"]
    assert any(record.get("rest") is True for record in full["classes"])
    spec = describe.__doc__.split("``<name>_cls.manifest.json``", 1)[1]
    unnamed = sorted(key for key in _keys_in(plain) | _keys_in(full) if not re.search(rf"\b{key}\b", spec))
    assert unnamed == []


# --------------------------------------------------------------------------- verify reads what it checks

def test_verify_of_a_compressed_archive_decompresses_no_image_row(built, counted):
    archive = built["compressed"].archive
    assert verify(archive) == []
    assert 0 < counted.decompressed <= _small_members_bytes(archive) + SLACK
    assert counted.decompressed < ROW_BYTES


def test_verify_counts_a_compressed_archive_from_its_labels_alone(built, tmp_path, counted):
    files = _copy(built["compressed"], tmp_path / "out")
    _rewrite_manifest(files["manifest"], lambda m: m["splits"]["train"].update(per_class=[4, 10, 4]))
    assert verify(files["archive"]) == [f"{files['archive']}: per-class counts of y_train differ from the manifest"]
    assert counted.decompressed <= _small_members_bytes(files["archive"]) + SLACK


def _break_rows(archive: Path, member: str) -> None:
    """Make the rows of a deflated member undecodable, leaving its .npy header readable: the byte after
    the header's segment (which ends in a sync flush, 00 00 FF FF) becomes 0xFF, a block of the
    reserved type 3."""
    with zipfile.ZipFile(archive) as z:
        info = z.getinfo(member)
    data = bytearray(archive.read_bytes())
    start = info.header_offset + 30 + len(member)
    at = data.index(b"\x00\x00\xff\xff", start, start + info.compress_size) + 4
    data[at] = 0xFF
    archive.write_bytes(bytes(data))


def test_verify_of_a_damaged_compressed_archive_names_the_unreadable_member(built, tmp_path):
    archive = _copy(built["compressed"], tmp_path / "out")["archive"]
    _break_rows(archive, "X_val.npy")
    assert verify(archive) == [
        f"{archive}: SHA-256 differs from the manifest: the file was changed or damaged",
        f"{archive}: X_val.npy cannot be read (Error -3 while decompressing data: invalid block type); the file "
        "is damaged, rebuild or re-download it"]


def test_verify_names_five_damaged_rows_and_counts_the_others(built, tmp_path):
    files = _copy(built["stored"], tmp_path / "out")
    archive = files["archive"]
    paths = json.loads(files["manifest"].read_text(encoding="utf-8"))["sources"]["train"]["paths"]
    offset = array_headers(archive)["X_train"].data_offset
    with open(archive, "r+b") as f:
        for row in (2, 3, 5, 8, 13, 17, 9):
            f.seek(offset + row * ROW_BYTES + 1000)
            f.write(b"\x00\x01")
    damaged = ", ".join(f"X_train row {row} ({paths[row]})" for row in (2, 3, 5, 8, 9))
    assert verify(archive) == [
        f"{archive}: SHA-256 differs from the manifest: the file was changed or damaged",
        f"7 image rows differ from their recorded CRC-32: {damaged} and 2 more"]


# --------------------------------------------------------------------------- preview reads what it draws

def _expected_sheet(archive: Path, labels: list[int], per_class: int) -> np.ndarray:
    """The thumbnails a contact sheet of ``archive``'s train split must hold, from np.load's arrays."""
    arrays = read_npz(archive)
    tiles = {}
    for r, label in enumerate(labels):
        for c, row in enumerate(np.flatnonzero(arrays["y_train"] == label)[:per_class]):
            tile = Image.fromarray(arrays["X_train"][row]).resize((THUMB, THUMB), Image.Resampling.BILINEAR)
            tiles[GAP + r * (THUMB + GAP), LABEL_WIDTH + c * (THUMB + GAP)] = np.asarray(tile)
    return tiles


def _assert_tiles(sheet: Image.Image, tiles: dict) -> None:
    pixels = np.asarray(sheet)
    for (top, left), tile in tiles.items():
        assert np.array_equal(pixels[top:top + THUMB, left:left + THUMB], tile), (top, left)


@pytest.mark.parametrize(("classes", "per_class", "last_row"), [(["1"], 2, 1), (None, 1, FIRST_TRAIN_ROW[0])],
                         ids=["first rows", "one row of each class"])
def test_preview_of_a_compressed_archive_decompresses_up_to_the_last_row_drawn(built, counted, classes, per_class,
                                                                                 last_row):
    stored, compressed = built["stored"].archive, built["compressed"].archive
    reference = contact_sheet(stored, per_class=per_class, classes=classes)
    counted.decompressed = 0
    sheet = contact_sheet(compressed, per_class=per_class, classes=classes)
    read = counted.decompressed
    assert sheet.tobytes() == reference.tobytes()
    labels = [int(c) for c in classes] if classes else [0, 1, 2]
    _assert_tiles(sheet, _expected_sheet(stored, labels, per_class))
    assert (last_row + 1) * ROW_BYTES <= read <= (last_row + 1) * ROW_BYTES + _small_members_bytes(compressed) + SLACK


def test_preview_of_compressed_shards_equals_the_one_archive(built, counted):
    stored, index = built["stored"].archive, built["shards"].archive
    assert index.name == "mine_cls.index.json" and len(built["shards"].archives) == 3
    sheet = contact_sheet(index, per_class=3, classes=["2", C])
    assert sheet.tobytes() == contact_sheet(stored, per_class=3, classes=["2", C]).tobytes()
    _assert_tiles(sheet, _expected_sheet(stored, [2, 0], 3))
    # label 2's rows are 11-13 (shard 1), label 0's first rows 14-16 (shards 1 and 2); shard 0 is passed over
    assert counted.decompressed <= (8 + 1) * ROW_BYTES + 3 * 6 * 2 * 4096 + 1024


# --------------------------------------------------------------------------- rows, arrays, damage

def test_read_rows_and_iter_rows_give_np_load_rows(built):
    from packer.loading import iter_rows, read_arrays, read_rows

    expected = read_npz(built["stored"].archive)
    for kind in ("stored", "compressed", "shards"):
        archive = built[kind].archive
        rows = read_rows(archive, "X_train", [5, 0, 17, 5])
        assert rows.shape == (4, 224, 224, 3) and rows.dtype == np.uint8, kind
        assert np.array_equal(rows, expected["X_train"][[5, 0, 17, 5]]), kind
        assert read_rows(archive, "X_val", []).shape == (0, 224, 224, 3), kind
        with pytest.raises(IndexError, match=re.escape("rows 0..18 out of range for the 18 rows of X_train")):
            read_rows(archive, "X_train", [0, 18])
    for kind in ("stored", "compressed"):
        rows = list(iter_rows(built[kind].archive, "X_val"))
        assert len(rows) == 8 and np.array_equal(np.stack(rows), expected["X_val"]), kind
    only_labels = read_arrays(built["shards"].archive, ["y_val", "val_id"])
    assert list(only_labels) == ["y_val", "val_id"]
    assert np.array_equal(only_labels["y_val"], expected["y_val"]) and only_labels["y_val"].dtype == np.int32
    with pytest.raises(UserError, match=re.escape(f"{built['stored'].archive} has no array X_test; it has: X_train,")):
        read_arrays(built["stored"].archive, ["X_test"])


def test_a_damaged_compressed_member_is_a_user_error(built, tmp_path, capsys):
    archive = _copy(built["compressed"], tmp_path / "out")["archive"]
    _break_rows(archive, "X_train.npy")
    message = (f"{archive}: X_train.npy cannot be read (Error -3 while decompressing data: invalid block type); "
               "the file is damaged, rebuild or re-download it")
    with pytest.raises(UserError) as raised:
        load(archive)
    assert str(raised.value) == message
    code, out, err = run_main(["preview", archive, "-o", tmp_path / "sheet.png", "--classes", "1"], capsys)
    assert code == 1 and out == ""
    assert assert_one_error_line(err) == f"imagenet-subset: error: {message}"
    assert not (tmp_path / "sheet.png").exists()


@pytest.mark.parametrize("command", ["info", "verify", "preview"])
@pytest.mark.parametrize("given", ["manifest", "metadata"])
def test_a_manifest_or_csv_given_for_the_archive_is_named_as_such(built, tmp_path, capsys, command, given):
    stored = built["stored"]
    path = Path(stored.manifest if given == "manifest" else stored.metadata)
    what = "manifest" if given == "manifest" else "metadata CSV"
    expected = (f"imagenet-subset: error: {path} is the {what} of a build, not an archive; pass {stored.archive} "
                "(or its shard index mine_cls.index.json)")
    argv = [command, path] + (["-o", tmp_path / "grid.png"] if command == "preview" else [])
    code, out, err = run_main(argv, capsys)
    assert (code, out) == (1, "")
    assert assert_one_error_line(err) == expected
    with pytest.raises(UserError) as caught:
        load(path)
    assert f"imagenet-subset: error: {caught.value}" == expected
