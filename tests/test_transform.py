"""The per-image transform against torchvision's rule, written out independently in helpers.py."""
import numpy as np
import pytest
from PIL import Image, ImageOps

from helpers import noise, photo, reference_transform
from packer.errors import ImageError, UserError
from packer.options import BuildOptions
from packer.transform import TransformSpec, transform_image

EXACT = TransformSpec()

SIZES = [(257, 256), (256, 257), (255, 1000), (1000, 255), (80, 60), (60, 80), (1, 1), (3, 500), (500, 3),
         (224, 224), (256, 256), (291, 256), (289, 256), (2000, 1500), (333, 517), (517, 333), (101, 99),
         (999, 777), (225, 224), (224, 225), (500, 375), (375, 500)]


def _save(tmp_path, array_or_image, name, fmt=None, **kw):
    img = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
    path = tmp_path / name
    img.save(path, fmt, **kw)
    return path


def _check(path, spec=EXACT):
    got = transform_image(str(path), spec)
    want = reference_transform(path, spec.resize_size, spec.crop_size)
    assert got.dtype == np.uint8
    assert got.shape == (spec.crop_size, spec.crop_size, 3)
    assert got.flags["C_CONTIGUOUS"]
    assert np.array_equal(got, want)
    return got


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_exact_on_noise_png(tmp_path, size):
    w, h = size
    _check(_save(tmp_path, noise(w, h, seed=w * 1000 + h), "x.png"))


@pytest.mark.parametrize("size", [(500, 375), (375, 500), (80, 60), (1000, 255), (333, 517)],
                         ids=lambda s: f"{s[0]}x{s[1]}")
def test_exact_on_jpeg_photo(tmp_path, size):
    _check(_save(tmp_path, photo(*size, seed=size[0]), "x.JPEG", "JPEG", quality=90))


@pytest.mark.parametrize("size", [(72, 72), (73, 72), (100, 80), (80, 100), (500, 375), (1, 1), (64, 64), (30, 500)],
                         ids=lambda s: f"{s[0]}x{s[1]}")
def test_exact_other_sizes(tmp_path, size):
    spec = TransformSpec(resize_size=72, crop_size=64)
    _check(_save(tmp_path, noise(*size, seed=size[0] + 7 * size[1]), "x.png"), spec)


def _mode_image(mode):
    rgb = noise(90, 70, seed=5)
    if mode == "I;16":
        return Image.fromarray((noise(90, 70, seed=6, channels=1).astype(np.uint16) * 257).astype(np.uint16))
    if mode == "RGBA":
        return Image.fromarray(np.dstack([rgb, noise(90, 70, seed=7, channels=1)]), "RGBA")
    if mode == "P-transparent":
        img = Image.fromarray(rgb).convert("P")
        img.info["transparency"] = 3
        return img
    return Image.fromarray(rgb).convert(mode)


@pytest.mark.parametrize("mode,fmt", [("L", "JPEG"), ("L", "PNG"), ("CMYK", "JPEG"), ("RGBA", "PNG"), ("P", "PNG"),
                                      ("P-transparent", "PNG"), ("LA", "PNG"), ("I;16", "PNG"), ("1", "PNG"),
                                      ("P", "GIF")])
def test_exact_on_modes(tmp_path, mode, fmt):
    img = _mode_image(mode)
    path = _save(tmp_path, img, f"x.{fmt.lower()}", fmt)
    with Image.open(path) as reopened:
        assert reopened.mode == ("P" if mode == "P-transparent" else mode)
    _check(path)


def test_png_named_jpeg_is_decoded_as_png(tmp_path):
    array = noise(300, 200, seed=11)
    as_jpeg = _save(tmp_path, array, "ILSVRC2012_val_00000001.JPEG", "PNG")
    as_png = _save(tmp_path, array, "same.png", "PNG")
    got = _check(as_jpeg)
    assert np.array_equal(got, transform_image(str(as_png), EXACT))
    # 300x200 -> 384x256, crop at left 80, top 16: compare with the reference on the array itself
    assert np.array_equal(got, reference_transform(as_png))


def test_exif_orientation_is_not_applied(tmp_path):
    img = Image.fromarray(noise(320, 240, seed=3))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    path = tmp_path / "rotated.JPEG"
    img.save(path, "JPEG", quality=95, exif=exif)
    with Image.open(path) as check:
        assert check.getexif()[0x0112] == 6
        rotated = ImageOps.exif_transpose(check)
        assert rotated.size == (240, 320)
        rotated_path = tmp_path / "rotated.png"
        rotated.save(rotated_path)
    got = _check(path)  # equals the unrotated decode
    assert not np.array_equal(got, reference_transform(rotated_path))


# -- values that can be worked out by hand --------------------------------------

@pytest.mark.parametrize("size", [(1, 1), (300, 200), (80, 60), (60, 80), (224, 224), (3, 500), (2000, 1500)],
                         ids=lambda s: f"{s[0]}x{s[1]}")
def test_uniform_colour_stays_that_colour(tmp_path, size):
    path = tmp_path / "u.png"
    Image.new("RGB", size, (12, 200, 77)).save(path)
    got = transform_image(str(path), EXACT)
    assert np.array_equal(got, np.broadcast_to(np.array([12, 200, 77], np.uint8), (224, 224, 3)))


def test_uniform_grayscale_jpeg(tmp_path):
    path = tmp_path / "g.JPEG"
    Image.new("L", (120, 90), 77).save(path, "JPEG", quality=95)
    assert np.array_equal(transform_image(str(path), EXACT), np.full((224, 224, 3), 77, np.uint8))


# (width, height, resize, crop) -> the source window (top, left) kept with no resize at all.
# 257: (257-224)/2 = 16.5 -> 16 and 289: 32.5 -> 32 (halves go to even); 291: 33.5 -> 34; 259: 17.5 -> 18.
NO_RESIZE = [((224, 224, 224, 224), (0, 0)), ((240, 224, 224, 224), (0, 8)), ((256, 256, 256, 224), (16, 16)), ((257, 256, 256, 224), (16, 16)),
             ((256, 257, 256, 224), (16, 16)), ((289, 256, 256, 224), (16, 32)), ((291, 256, 256, 224), (16, 34)),
             ((259, 256, 256, 224), (16, 18)), ((256, 291, 256, 224), (34, 16)), ((72, 72, 72, 64), (4, 4)),
             ((73, 72, 72, 64), (4, 4)), ((75, 72, 72, 64), (4, 6)), ((72, 77, 72, 64), (6, 4))]


@pytest.mark.parametrize("case,window", NO_RESIZE, ids=lambda v: "x".join(map(str, v)))
def test_no_resize_is_a_plain_crop(tmp_path, case, window):
    w, h, resize, crop = case
    top, left = window
    src = noise(w, h, seed=w + h)
    path = _save(tmp_path, src, "x.png")
    got = transform_image(str(path), TransformSpec(resize, crop))
    assert np.array_equal(got, src[top:top + crop, left:left + crop])


def test_input_already_at_size_is_unchanged(tmp_path):
    src = noise(224, 224, seed=42)
    path = _save(tmp_path, src, "x.png")
    assert np.array_equal(transform_image(str(path), TransformSpec(224, 224)), src)
    # with the default Resize(256) a 224x224 image is upscaled first, as torchvision does
    assert not np.array_equal(transform_image(str(path), EXACT), src)


def test_resize_truncates_the_long_side(tmp_path):
    # 3 wide, 5 tall, every row one value: resized to 256 x int(256*5/3) = 256 x 426 (not 427),
    # then rows from top = round((426-224)/2) = 101. Columns stay identical, so each output row
    # is the matching row of a 1-pixel-wide column resized to height 426.
    column = np.array([0, 60, 120, 180, 250], np.uint8)
    src = np.repeat(column[:, None, None], 3, axis=1).repeat(3, axis=2)
    got = transform_image(str(_save(tmp_path, src, "x.png")), EXACT)

    def expected(height):
        tall = np.asarray(Image.fromarray(column[:, None]).resize((1, height), Image.BILINEAR))[:, 0]
        top = int(round((height - 224) / 2.0))
        return np.broadcast_to(tall[top:top + 224, None, None], (224, 224, 3))

    assert np.array_equal(got, expected(426))
    assert not np.array_equal(expected(426), expected(427))  # the check can tell the two apart


# -- --fast ---------------------------------------------------------------------

FAST_SIZES = [(500, 375), (375, 500), (640, 480), (1000, 255), (255, 1000), (80, 60), (60, 80), (2000, 1500),
              (333, 500), (1024, 683)]


def test_fast_is_within_one_of_exact(tmp_path):
    differs = []
    for w, h in FAST_SIZES:
        path = tmp_path / f"p{w}x{h}.png"
        photo(w, h, seed=w * 7 + h).save(path)
        exact = transform_image(str(path), EXACT)
        fast = transform_image(str(path), TransformSpec(fast=True))
        assert fast.dtype == np.uint8 and fast.shape == (224, 224, 3)
        diff = np.abs(exact.astype(int) - fast.astype(int))
        assert diff.max() <= 1, (w, h, diff.max())
        differs.append(bool(diff.any()))
    # --fast is really a different computation (checked: it is, for most of these sizes)
    assert any(differs)


@pytest.mark.parametrize("size", [(224, 224), (256, 256), (291, 256)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_fast_equals_exact_without_resize(tmp_path, size):
    path = _save(tmp_path, noise(*size, seed=9), "x.png")
    assert np.array_equal(transform_image(str(path), TransformSpec(fast=True)), transform_image(str(path), EXACT))


def test_fast_other_sizes(tmp_path):
    path = tmp_path / "p.png"
    photo(500, 375, seed=1).save(path)
    spec = TransformSpec(72, 64, fast=True)
    fast = transform_image(str(path), spec)
    exact = reference_transform(path, 72, 64)
    assert fast.shape == (64, 64, 3)
    assert np.abs(fast.astype(int) - exact.astype(int)).max() <= 1


# -- bad input ------------------------------------------------------------------

def test_options_reject_crop_larger_than_resize():
    with pytest.raises(UserError, match="--crop_size 101 is larger than --resize_size 100; the crop must fit inside "
                                        "the resized image"):
        BuildOptions(resize_size=100, crop_size=101)


def _corrupt_files(tmp_path):
    good = tmp_path / "good.JPEG"
    Image.fromarray(noise(200, 150, seed=1)).save(good, "JPEG", quality=90)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.JPEG"
    truncated.write_bytes(data[: len(data) // 2])
    empty = tmp_path / "empty.JPEG"
    empty.write_bytes(b"")
    text = tmp_path / "text.JPEG"
    text.write_text("this is not an image\n")
    return [truncated, empty, text]


def test_bad_images_raise_image_error_naming_the_file(tmp_path):
    for path in _corrupt_files(tmp_path):
        with pytest.raises(ImageError) as info:
            transform_image(str(path), EXACT)
        assert isinstance(info.value, UserError)
        assert info.value.path == str(path)
        message = str(info.value)
        assert message.startswith(f"cannot read image {path}: ")
        assert "\n" not in message


def test_missing_file_raises_image_error(tmp_path):
    with pytest.raises(ImageError) as info:
        transform_image(str(tmp_path / "nope.JPEG"), EXACT)
    assert str(tmp_path / "nope.JPEG") in str(info.value)
