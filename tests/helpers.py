"""Builders for small ILSVRC CLS-LOC trees, written independently of ``packer/demo.py``.

``write_tree`` is the one place tests build trees (``kaggle_tree`` and
``plain_tree`` are its usual calls): the Kaggle layout or a plain
``train/`` + ``val/`` one, val flat or sorted into class folders, with or
without ``train_cls.txt``, ``val.txt``, ``LOC_synset_mapping.txt``,
``LOC_val_solution.csv`` and val annotations. By default every image has its
own uniform colour, so a row of ``X_train`` or ``X_val`` tells which file it
came from; ``Images`` asks for photo-like pictures (``photo``) of given sizes
instead. ``reference_transform`` is the torchvision rule written out from its
definition, for comparing rows.
"""
import hashlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
PREFIX = "imagenet-subset: error:"

# Sizes used for the images of built trees: small, both orientations and a square.
TREE_SIZES = [(48, 36), (36, 48), (40, 40), (60, 32)]


# --------------------------------------------------------------------------- images

def reference_transform(path, resize=256, crop=224) -> np.ndarray:
    """torchvision's default loader + Resize(resize) + CenterCrop(crop), written out."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    if w <= h:
        new_w, new_h = resize, int(resize * h / w)
    else:
        new_w, new_h = int(resize * w / h), resize
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.BILINEAR)
    top = int(round((new_h - crop) / 2.0))
    left = int(round((new_w - crop) / 2.0))
    return np.asarray(img.crop((left, top, left + crop, top + crop)))


def photo(width: int, height: int, seed: int, *, cell: int = 16, extra: int = 0, resample=Image.BICUBIC,
          blur: float = 2) -> Image.Image:
    """A smooth, photo-like RGB picture, different for every seed: noise on a coarse grid (one
    point per ``cell`` pixels, plus ``extra``, at least 2 each way) upscaled with ``resample``,
    then blurred with radius ``blur`` (0: not blurred). The styles in use are the defaults,
    ``COARSE`` and ``SOFT``."""
    rng = np.random.default_rng(seed)
    grid = (max(2, height // cell + extra), max(2, width // cell + extra), 3)
    picture = Image.fromarray(rng.integers(0, 256, grid, dtype=np.uint8)).resize((width, height), resample)
    return picture.filter(ImageFilter.GaussianBlur(blur)) if blur else picture


# photo() styles: unblurred bilinear noise on an 8-pixel grid; gently blurred noise on a 12-pixel grid.
COARSE = {"cell": 8, "extra": 2, "resample": Image.BILINEAR, "blur": 0}
SOFT = {"cell": 12, "blur": 1.5}


def noise(width: int, height: int, seed: int, channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (height, width, channels) if channels > 1 else (height, width)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def colour(k: int) -> tuple[int, int, int]:
    """The k-th of 343 well separated colours (channels 10, 45, ..., 220)."""
    assert 0 <= k < 343
    return (10 + 35 * (k % 7), 10 + 35 * ((k // 7) % 7), 10 + 35 * (k // 49))


def save_image(path: Path, image: Image.Image, fmt: str = "JPEG", quality: int = 95) -> None:
    """Saves ``image`` at ``path`` (folders made as needed); ``quality`` applies to JPEG only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, fmt, **({"quality": quality} if fmt == "JPEG" else {}))


def save_uniform(path: Path, rgb, size=(48, 36), fmt="JPEG") -> None:
    save_image(path, Image.new("RGB", size, tuple(rgb)), fmt)


def decoded_colour(path: Path) -> tuple[int, int, int]:
    """The colour a uniform image decodes to (JPEG may shift it by a unit or two)."""
    pixels = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3)
    assert (pixels == pixels[0]).all(), f"{path} does not decode to a uniform colour"
    return tuple(int(v) for v in pixels[0])


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --------------------------------------------------------------------------- trees

def wnid(n: int) -> str:
    return f"n{n:08d}"


@dataclass
class FakeTree:
    """A tree on disk and what it holds.

    ``train`` lists every train image of every class as ``(wnid, relative path)``
    in sorted-path order (the order of train_cls.txt, whose ids are 1-based
    positions in this list); ``val`` maps the val image number to its WNID.
    """

    root: Path
    data_dir: Path
    train: list[tuple[str, str]]
    val: dict[int, str]
    colours: dict[Path, tuple[int, int, int]] = field(default_factory=dict)

    @property
    def train_dir(self) -> Path:
        return self.data_dir / "train"

    @property
    def val_dir(self) -> Path:
        return self.data_dir / "val"

    def val_path(self, number: int) -> Path:
        """The val image file of ``number`` (flat or sorted layout)."""
        name = f"ILSVRC2012_val_{number:08d}.JPEG"
        flat = self.val_dir / name
        return flat if flat.exists() else self.val_dir / self.val[number] / name

    def expected_train(self, class_list: list[str]):
        """(paths, labels, ids) of the train rows for ``class_list``, in row order."""
        rows = [(self.train_dir / rel, class_list.index(w), i)
                for i, (w, rel) in enumerate(self.train, start=1) if w in class_list]
        return [r[0] for r in rows], np.array([r[1] for r in rows], np.int32), np.array([r[2] for r in rows], np.int32)

    def expected_val(self, class_list: list[str]):
        """(paths, labels, ids) of the val rows for ``class_list``, in image-number order."""
        rows = [(self.val_path(n), class_list.index(w), n) for n, w in sorted(self.val.items()) if w in class_list]
        return [r[0] for r in rows], np.array([r[1] for r in rows], np.int32), np.array([r[2] for r in rows], np.int32)


@dataclass(frozen=True)
class Images:
    """What the images of a tree look like.

    Images are numbered k = ``first``, ``first`` + 1, ... in the order they are written.
    Image k has size ``sizes[k % len(sizes)]`` and is the uniform ``colour(k)``, or with
    ``photo`` set, ``photo(width, height, seed=k, **photo)``; it is saved as a JPEG of
    ``quality``. With ``val_from``, val image n is not counted: its size is
    ``sizes[n % len(sizes)]`` and its seed (or colour) ``val_from + n``. With ``repeat``,
    every image is image ``first`` (a tree of copies of one picture).
    """

    sizes: tuple = tuple(TREE_SIZES)
    photo: dict | None = None
    quality: int = 95
    first: int = 0
    val_from: int | None = None
    repeat: bool = False


UNIFORM = Images()


class TreeWriter:
    """Writes tree parts, image after image as ``images`` describes (by default each image gets
    the next well separated colour, kept in ``colours``)."""

    def __init__(self, images: Images = UNIFORM):
        self.images = images
        self.next = images.first
        self.colours: dict[Path, tuple[int, int, int]] = {}

    def image(self, path: Path, number: int | None = None) -> None:
        """The next image, at ``path``; ``number``: that of a val image."""
        spec = self.images
        if number is not None and spec.val_from is not None:
            k, seed = number, spec.val_from + number
        else:
            k = seed = self.next
            self.next += not spec.repeat
        size = spec.sizes[k % len(spec.sizes)]
        if spec.photo is None:
            self.colours[path] = colour(seed)
            picture = Image.new("RGB", size, colour(seed))
        else:
            picture = photo(*size, seed=seed, **spec.photo)
        save_image(path, picture, quality=spec.quality)

    def train(self, data_dir: Path, counts: dict[str, int], in_id_order: bool = False) -> list[tuple[str, str]]:
        """``counts[wnid]`` images named ``<wnid>_<k>.JPEG``, k = 1..n, written class by class or, with
        ``in_id_order``, in sorted-path order (that of the ids); returns sorted (wnid, rel)."""
        rows = []
        for w, n in counts.items():
            (data_dir / "train" / w).mkdir(parents=True, exist_ok=True)
            rows += [(w, f"{w}/{w}_{k}.JPEG") for k in range(1, n + 1)]
        rows_sorted = sorted(rows, key=lambda r: r[1])
        for _, rel in rows_sorted if in_id_order else rows:
            self.image(data_dir / "train" / rel)
        return rows_sorted

    def val_flat(self, data_dir: Path, labels: dict[int, str]) -> None:
        (data_dir / "val").mkdir(parents=True, exist_ok=True)
        for number in labels:
            self.image(data_dir / "val" / f"ILSVRC2012_val_{number:08d}.JPEG", number)

    def val_sorted(self, data_dir: Path, labels: dict[int, str]) -> None:
        (data_dir / "val").mkdir(parents=True, exist_ok=True)
        for number, w in labels.items():
            self.image(data_dir / "val" / w / f"ILSVRC2012_val_{number:08d}.JPEG", number)


def write_train_cls(path: Path, train: list[tuple[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{rel.rsplit('.', 1)[0]} {i}\n" for i, (_, rel) in enumerate(train, start=1)))


def write_synset_mapping(path: Path, names: dict[str, str]) -> None:
    path.write_text("".join(f"{w} {names[w]}\n" for w in sorted(names)))


def write_val_solution(path: Path, labels: dict[int, str], boxes=("1 2 30 40", "5 6 20 22")) -> None:
    # Kaggle's file is not sorted by image; rows carry the class once per box.
    rows = [f"ILSVRC2012_val_{n:08d}," + "".join(f"{w} {box} " for box in boxes) + "\n" for n, w in labels.items()]
    path.write_text("ImageId,PredictionString\n" + "".join(reversed(rows)))


def write_map_clsloc(path: Path, classes: dict[str, tuple[int, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{w} {cid} {name}\n" for w, (cid, name) in classes.items()))


def write_ground_truth(path: Path, labels: dict[int, str], ids: dict[str, int], filler: int | None = None) -> None:
    """Line i is the CLS-LOC id of val image i; numbers with no image get ``filler`` (a known id)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    filler = min(ids.values()) if filler is None else filler
    path.write_text("".join(f"{ids[labels[n]] if n in labels else filler}\n" for n in range(1, max(labels) + 1)))


def write_annotations(folder: Path, labels: dict[int, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n, w in labels.items():
        (folder / f"ILSVRC2012_val_{n:08d}.xml").write_text(
            "<annotation>\n\t<folder>val</folder>\n\t<filename>ILSVRC2012_val_%08d</filename>\n"
            "\t<size>\n\t\t<width>48</width>\n\t\t<height>36</height>\n\t\t<depth>3</depth>\n\t</size>\n"
            "\t<object>\n\t\t<name>%s</name>\n\t\t<pose>Unspecified</pose>\n\t\t<truncated>0</truncated>\n"
            "\t\t<difficult>0</difficult>\n\t\t<bndbox>\n\t\t\t<xmin>1</xmin>\n\t\t\t<ymin>2</ymin>\n"
            "\t\t\t<xmax>30</xmax>\n\t\t\t<ymax>30</ymax>\n\t\t</bndbox>\n\t</object>\n</annotation>\n" % (n, w))


# Three classes whose list order (C, A, B) differs from sorted order, plus a class
# (D) left out of most subsets; D sorts between A and B so its images shift ids.
A, B, C, D = wnid(1440764), wnid(2102040), wnid(3000684), wnid(1530575)
NAMES = {A: "tench, Tinca tinca", B: "English springer, English springer spaniel",
         C: "chain saw, chainsaw", D: "brambling, Fringilla montifringilla"}
SUBSET = [C, A, B]
# A has 11 images so that its names sort as _1, _10, _11, _2, ...
TRAIN_COUNTS = {A: 11, B: 3, C: 4, D: 2}
# Val numbers with gaps, classes interleaved, D's images among them.
VAL_LABELS = {1: B, 2: A, 3: D, 4: C, 5: A, 7: B, 8: C, 9: C, 12: A, 13: D}


def write_tree(root: Path, *, counts=None, val=None, kaggle=True, sorted_val=False, names=None,
               train_cls=True, val_txt=True, solution=True, boxes=("1 2 30 40", "5 6 20 22"),
               annotations=False, images: Images = UNIFORM, in_id_order=False) -> FakeTree:
    """A tree at ``root``: ``counts[wnid]`` train images per class and val images ``val``
    (number -> WNID), written as ``images`` says (``in_id_order``: train images numbered in
    sorted-path order rather than class by class; val images follow, in ``val``'s order).

    ``kaggle``: the Kaggle / ILSVRC2017 layout described in the README (data in
    ``root/ILSVRC/Data/CLS-LOC``; ``train_cls.txt``, ``val.txt``, ``LOC_synset_mapping.txt``
    of ``names``, ``LOC_val_solution.csv`` with ``boxes`` per row, and val annotations as
    asked); otherwise just ``root/train`` and ``root/val``, no label files. ``sorted_val``
    puts val images in class folders.
    """
    counts = TRAIN_COUNTS if counts is None else counts
    val = VAL_LABELS if val is None else val
    data_dir = root / "ILSVRC" / "Data" / "CLS-LOC" if kaggle else root
    writer = TreeWriter(images)
    train = writer.train(data_dir, counts, in_id_order)
    (writer.val_sorted if sorted_val else writer.val_flat)(data_dir, val)
    if kaggle:
        sets = root / "ILSVRC" / "ImageSets" / "CLS-LOC"
        if train_cls:
            write_train_cls(sets / "train_cls.txt", train)
        if val_txt:
            sets.mkdir(parents=True, exist_ok=True)
            (sets / "val.txt").write_text("".join(f"ILSVRC2012_val_{n:08d} {n}\n" for n in sorted(val)))
        write_synset_mapping(root / "LOC_synset_mapping.txt", NAMES if names is None else names)
        if solution:
            write_val_solution(root / "LOC_val_solution.csv", val, boxes)
        if annotations:
            write_annotations(root / "ILSVRC" / "Annotations" / "CLS-LOC" / "val", val)
    return FakeTree(root, data_dir, train, dict(val), writer.colours)


def kaggle_tree(root: Path, **options) -> FakeTree:
    """The Kaggle / ILSVRC2017 layout described in the README (``write_tree``'s options)."""
    return write_tree(root, **options)


def plain_tree(data_dir: Path, *, counts=None, val=None, sorted_val=False) -> FakeTree:
    """Just ``train/`` and ``val/`` (flat or sorted into class folders), no label files."""
    return write_tree(data_dir, counts=counts, val=val, kaggle=False, sorted_val=sorted_val)


def write_list(path: Path, wnids) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{w}\n" for w in wnids))
    return path


def uniform_row(rgb, crop=224) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, np.uint8), (crop, crop, 3))


def assert_rows_are(X: np.ndarray, paths: list[Path], crop: int = 224) -> None:
    """Row i of X is the (uniform) image at paths[i], transformed."""
    assert X.shape == (len(paths), crop, crop, 3)
    for i, path in enumerate(paths):
        assert np.array_equal(X[i], uniform_row(decoded_colour(path), crop)), f"row {i} is not {path}"


def run_main(argv, capsys):
    """``packer.cli.main(argv)`` -> (exit code, stdout, stderr)."""
    from packer.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(err: str, *needles) -> str:
    """stderr holds exactly one line, the error, and it names every needle."""
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1, f"expected one line on stderr, got: {err!r}"
    assert lines[0].startswith(PREFIX), lines[0]
    assert "Traceback" not in err
    for needle in needles:
        assert str(needle) in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def subprocess_env() -> dict:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def build(class_list, data_dir, out_dir, **options):
    """``packer.build_subset`` with one worker and no progress bars unless told otherwise."""
    import packer

    options.setdefault("workers", 1)
    options.setdefault("progress", False)
    return packer.build_subset(str(class_list), data_dir=str(data_dir), out_dir=str(out_dir), **options)


KEYS = ["X_train", "y_train", "train_id", "X_val", "y_val", "val_id"]


def read_npz(path) -> dict:
    with np.load(path) as z:
        assert z.files == KEYS
        return {k: z[k] for k in z.files}


def stop_after_journal_records(monkeypatch, records: int):
    """Journal every chunk result at once, and stop the build (as Ctrl-C would) after ``records``
    results (one per chunk and size) are journaled. Returns a function that undoes it."""
    import packer.workdir

    monkeypatch.setattr(packer.workdir, "FLUSH_SECONDS", 0)
    original, done = packer.workdir.WorkFolder.record, []

    def record(self, result, writers):
        original(self, result, writers)
        done.append(result)
        if len(done) == records:
            raise KeyboardInterrupt

    monkeypatch.setattr(packer.workdir.WorkFolder, "record", record)
    return lambda: monkeypatch.setattr(packer.workdir.WorkFolder, "record", original)


def count_packed_chunks(monkeypatch) -> list:
    """The chunks the build packs in this process from now on (workers=1), appended as they are packed."""
    import packer.work

    original, packed = packer.work.pack_chunk, []
    monkeypatch.setattr(packer.work, "pack_chunk", lambda chunk, specs: packed.append(chunk) or original(chunk, specs))
    return packed
