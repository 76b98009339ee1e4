"""The fast layer: options and the command line made from them, output names, the journal, the
writers' shared interface, sampling. No image is decoded here (``pytest -m "not slow"``)."""
import dataclasses
import json
import zlib

import numpy as np
import pytest

from packer import BuildOptions, OutputNames, UserError
from packer.cli import _given, build_parser
from packer.npz import ArraySpec, DeflatedNpzWriter, StoredNpzWriter
from packer.options import option_fields
from packer.sampling import apply_sampling
from packer.tree import SplitImages
from packer.work import ChunkResult
from packer.workdir import WorkFolder

# --------------------------------------------------------------------------- options


def test_every_option_is_a_keyword_with_help_and_a_flag():
    parser = build_parser()
    flags = {action.dest: action.option_strings for action in parser._actions}
    for option, _ in option_fields():
        assert option.kw_only and option.metadata["help"], option.name
        assert flags[option.name] == [option.metadata["flag"] or f"--{option.name}"]
    with pytest.raises(TypeError):
        BuildOptions("imagenet30", "data")  # keyword-only: no option can be swapped by position


def test_the_command_line_gives_the_options_the_api_gives():
    argv = ["--subset_name", "x", "--data_dir", "d", "--crop_size", "64", "--resize_size", "72", "--quiet",
            "--classes", "goldfish, tench", "--train_per_class", "5", "--seed", "-3", "--layout", "nchw",
            "--backend", "local", "--shard_size", "10"]
    args = build_parser().parse_args(argv)
    from_cli = BuildOptions(**{option.name: getattr(args, option.name) for option, _ in option_fields()})
    assert from_cli == BuildOptions(subset_name="x", data_dir="d", crop_size=64, resize_size=72, progress=False,
                                    classes=("goldfish", "tench"), train_per_class=5, seed=-3, layout="nchw",
                                    shard_size=10)
    assert _given(argv) == {"subset_name", "data_dir", "crop_size", "resize_size", "progress", "classes",
                            "train_per_class", "seed", "layout", "backend", "shard_size"}


@pytest.mark.parametrize("options, message", [
    ({"crop_size": 0}, "--crop_size 0 must be a positive whole number of pixels"),
    ({"resize_size": 2.5}, "--resize_size 2.5 must be a positive whole number of pixels"),
    ({"train_per_class": -1}, "--train_per_class -1 must be a whole number of images, 0 or more"),
    ({"seed": "7"}, "--seed '7' must be a whole number"),
    ({"workers": 0}, "--workers 0 must be a whole number of at least 1"),
    ({"shard_size": True}, "--shard_size True must be a whole number of rows, at least 1"),
    ({"resize": "stretch"}, "--resize 'stretch' must be one of: crop, squash"),
    ({"on_error": "ignore"}, "--on_error 'ignore' must be one of: fail, skip"),
    ({"fast": "yes"}, "--fast 'yes' must be true or false"),
    ({"crop_size": 300}, "--crop_size 300 is larger than --resize_size 256; the crop must fit inside the resized image"),
    ({"fast": True, "resize": "squash"}, "--fast applies to --resize crop only; drop --fast or use --resize crop"),
    ({"classes": "a", "search": "b"}, "--classes and --search each choose the classes; use one of them (--under may "
                                      "narrow --group_by)"),
    ({"search": "b", "under": "dog"}, "--search and --under each choose the classes; use one of them (--under may "
                                      "narrow --group_by)"),
    ({"under": " , "}, "--under ' , ' must name synsets, as \"dog\" or \"dog,cat\""),
    ({"exclude": "toy dog"}, "--exclude removes classes from --under or --group_by; give one of them"),
    ({"overlap": "first", "under": "dog"}, "--overlap applies to --group_by; drop it or give --group_by"),
    ({"group_by": "level:x"}, "--group_by level:x: the level is a whole number of edges below the root, as level:3"),
    ({"group_by": " "}, "--group_by needs synset names, as \"dog,cat\", or level:N"),
    ({"rest_val": 3}, "--rest_val needs --rest N (the number of rest train images)"),
    ({"backend": "dask"}, "--backend dask needs --scheduler tcp://HOST:PORT (the address of a running Dask scheduler)"),
    ({"progress": "no"}, "progress 'no' must be true or false"),
    ({"classes": {"tench", "goldfish"}}, "--classes {'tench', 'goldfish'} must name classes, as \"goldfish,tench\" "
                                         "or a list of names in label order"),
    ({"classes": 5}, "--classes 5 must name classes, as \"goldfish,tench\" or a list of names in label order"),
    ({"classes": ","}, "--classes () must name classes, as \"goldfish,tench\" or a list of names in label order"),
    ({"classes": ["tench", 1]}, "--classes ('tench', 1) must name classes, as \"goldfish,tench\" or a list of names "
                                "in label order"),
    ({"search": " "}, "--search needs a text, such as dog"),
])
def test_every_option_is_checked_once_when_the_options_are_made(options, message):
    if options.get("classes") == {"tench", "goldfish"}:  # a set's order, hence the message, varies: sort it
        options = {"classes": {"tench", "goldfish"}}
        with pytest.raises(UserError, match=r"--classes \{'.*'\} must name classes"):
            BuildOptions(**options)
        return
    with pytest.raises(UserError) as info:
        BuildOptions(**options)
    assert str(info.value) == message
    with pytest.raises(UserError):  # also when changed later: a new value is checked the same way
        dataclasses.replace(BuildOptions(), **options)


def test_output_options_are_what_the_manifest_records():
    options = BuildOptions(crop_size=64, resize_size=72, train_per_class=5, seed=2)
    assert options.output_options() == {
        "resize_size": 72, "crop_size": 64, "resize": "crop",
        "resize_rule": "torchvision Resize(resize_size) + CenterCrop(crop_size), bilinear (Pillow)",
        "layout": "nhwc", "fast": False, "compress": False, "chunk_size": 32, "shard_size": None, "on_error": "fail",
        "sampling": {"train_per_class": 5, "val_per_class": None, "holdout_per_class": 0, "rest": None,
                     "rest_val": None, "seed": 2, "balance": "labels"}}


# --------------------------------------------------------------------------- names

def test_output_names():
    names = OutputNames("imagenet30")
    assert (names.archive, names.shard(2, 26), names.index, names.metadata, names.manifest, names.work_folder) == (
        "imagenet30_cls.npz", "imagenet30_cls-00002-of-00026.npz", "imagenet30_cls.index.json",
        "imagenet30_cls_metadata.csv", "imagenet30_cls.manifest.json", ".imagenet30_cls.work")


@pytest.mark.parametrize("path", ["out/my-set_cls.npz", "my-set_cls-00002-of-00026.npz", "/a/my-set_cls.index.json"])
def test_output_names_of_any_output(path):
    assert OutputNames.of(path) == OutputNames("my-set")


# --------------------------------------------------------------------------- the journal

def _result(start: int, failed=(), warned=()) -> ChunkResult:
    return ChunkResult("X_train", start, (1, 2), 77, 2 * 48, (1, 2, 3), (4, 5, 6), part=0, failed=failed,
                       warned=warned)


class _Writer:
    flushed = 0

    def flush(self):
        self.flushed += 1


def test_journal_keeps_finished_chunks_for_resume(tmp_path):
    options = {"crop_size": 224}
    work = WorkFolder(tmp_path, OutputNames("x"), "fingerprint", options, resume=False)
    writer = _Writer()
    work.record(_result(0), [writer])
    work.record(_result(32, failed=((33, "truncated"),), warned=((40, "1,728 pixels"),)), [writer])
    work.flush([writer])
    work.release()
    assert writer.flushed >= 1  # rows are flushed before a chunk is journaled
    assert json.loads((tmp_path / ".x_cls.work" / "plan.json").read_text()) == {"fingerprint": "fingerprint",
                                                                                 "options": options}
    again = WorkFolder(tmp_path, OutputNames("x"), "fingerprint", options, resume=True)
    assert again.resumed and again.resume_state is None
    assert again.finished_chunks(1) == {(0, "X_train", 0): (_result(0),),
                                        (0, "X_train", 32): (_result(32, ((33, "truncated"),),
                                                                     ((40, "1,728 pixels"),)),)}
    again.remove()
    assert not (tmp_path / ".x_cls.work").exists()


def test_journal_line_cut_short_is_redone(tmp_path):
    work = WorkFolder(tmp_path, OutputNames("x"), "f", {}, resume=False)
    work.record(_result(0), [_Writer()])
    work.flush([_Writer()])
    work.release()
    with open(tmp_path / ".x_cls.work" / "journal.jsonl", "a") as journal:
        journal.write('{"part": 0, "key": "X_tr')  # the machine went down mid-line
    again = WorkFolder(tmp_path, OutputNames("x"), "f", {}, resume=True)
    assert list(again.finished_chunks(1)) == [(0, "X_train", 0)]
    again.remove()


def test_a_second_build_of_the_same_output_is_refused(tmp_path):
    first = WorkFolder(tmp_path, OutputNames("x"), "f", {}, resume=False)
    with pytest.raises(UserError, match=r"another build is writing .*\.x_cls\.work right now; wait for it or stop it"):
        WorkFolder(tmp_path, OutputNames("x"), "f", {}, resume=False)
    first.remove()


# --------------------------------------------------------------------------- the writers' interface

@pytest.mark.parametrize("writer_class", [StoredNpzWriter, DeflatedNpzWriter])
def test_both_writers_take_rows_through_the_same_interface(tmp_path, writer_class):
    rows = np.random.default_rng(1).integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
    specs = [ArraySpec("X_train", "|u1", rows.shape), ArraySpec("y_train", "<i4", (5,))]
    path = tmp_path / "a.npz"
    writer = writer_class(str(path), specs, {"y_train": np.arange(5, dtype=np.int32)})
    assert (writer.rows_at("X_train", 2) is None) == (writer_class is DeflatedNpzWriter)
    writer.add_rows("X_train", rows[:3].tobytes(), zlib.crc32(rows[:3].tobytes()))
    writer.add_rows("X_train", rows[3:].tobytes(), zlib.crc32(rows[3:].tobytes()))
    writer.close()
    with np.load(path) as z:
        assert z.files == ["X_train", "y_train"]
        assert np.array_equal(z["X_train"], rows) and z["y_train"].tolist() == [0, 1, 2, 3, 4]


# --------------------------------------------------------------------------- sampling

def _split(split: str, labels: list[int]) -> SplitImages:
    paths = [f"n0000000{label}/img_{i}.JPEG" for i, label in enumerate(labels)]
    return SplitImages(split, None, paths, [p.split("/")[0] for p in paths], np.arange(1, len(labels) + 1,
                                                                                        dtype=np.int32),
                       "test", np.array(labels, dtype=np.int32))


def test_sampling_takes_the_lowest_ranks_per_label_in_row_order():
    train, val = _split("train", [0] * 10 + [1] * 3), _split("val", [0, 1, 0, 1])
    splits, notes = apply_sampling(train, val, ["a", "b"], None,
                                   BuildOptions(train_per_class=4, val_per_class=1, seed=5))
    more, _ = apply_sampling(train, val, ["a", "b"], None, BuildOptions(train_per_class=6, val_per_class=1, seed=5))
    assert [len(s) for s in splits] == [7, 2]
    assert splits[0].ids.tolist() == sorted(splits[0].ids.tolist())  # original order kept
    assert set(splits[0].ids.tolist()) < set(more[0].ids.tolist())  # asking for more only adds images
    assert notes == ["train: 1 labels have fewer images than asked and kept all: b (3 of 4)"]
    other_seed, _ = apply_sampling(train, val, ["a", "b"], None, BuildOptions(train_per_class=4, seed=6))
    assert other_seed[0].ids.tolist() != splits[0].ids.tolist()
