"""Draw a contact sheet of an archive: a row per class, the first few images of each.

Each row starts with a label panel (``label  WNID`` and the human label from the
metadata CSV), then ``per_class`` thumbnails of that class's first rows in the
split, in row order. Drawn with Pillow alone.

Only what is shown is read: the split's labels, then the rows drawn (from the
memory map of a stored archive; a compressed one is decompressed up to the last
row drawn, and no further).
"""
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .errors import UserError
from .loading import array_headers, read_arrays, read_class_table, read_rows, shard_paths
from .options import OutputNames

LABEL_WIDTH = 260
GAP = 4
BACKGROUND = (245, 245, 245)
INK = (20, 20, 20)
DEFAULT_MAX_CLASSES = 30


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def _select_labels(wnids: list[str], requested: list[str] | None) -> list[int]:
    if not requested:
        return list(range(min(len(wnids), DEFAULT_MAX_CLASSES)))
    labels = []
    for item in requested:
        if item.isdigit() and int(item) < len(wnids):
            labels.append(int(item))
        elif item in wnids:
            labels.append(wnids.index(item))
        else:
            raise UserError(f"--classes: '{item}' is neither a label (0-{len(wnids) - 1}) nor a WNID of this subset")
    return labels


def contact_sheet(path: str | Path, split: str = "train", per_class: int = 8, classes: list[str] | None = None,
                  thumbnail: int = 112) -> Image.Image:
    """The contact sheet of ``split`` (see the module docstring) as a Pillow RGB image.

    ``classes`` picks rows by label number or WNID (default: the first 30 classes).
    """
    path = Path(path)
    keys = array_headers(shard_paths(path)[0] if OutputNames.is_index(path) else path)
    if f"X_{split}" not in keys:
        splits = ", ".join(k[2:] for k in keys if k.startswith("X_"))
        raise UserError(f"{path} has no split '{split}'; it has: {splits}")
    if per_class < 1 or thumbnail < 8:
        raise UserError("--per_class must be at least 1 and the thumbnail size at least 8 pixels")
    labels = np.asarray(read_arrays(path, [f"y_{split}"])[f"y_{split}"])
    table = read_class_table(path)
    if table is not None:
        wnids = table["WNID"].tolist()
        names = ["" if isinstance(n, float) or n is None or str(n) == "<NA>" else str(n) for n in table["human_label"]]
    else:
        count = int(labels.max()) + 1 if labels.size else 0
        wnids, names = [f"label {i}" for i in range(count)], [""] * count
    rows = _select_labels(wnids, classes)
    if not rows:
        raise UserError(f"{path} has no classes to show")
    shown = {label: np.flatnonzero(labels == label)[:per_class] for label in rows}
    per_class = max(1, min(per_class, max(len(members) for members in shown.values())))  # no wider than needed
    drawn = np.concatenate(list(shown.values()))
    pixels_of = dict(zip(drawn.tolist(), read_rows(path, f"X_{split}", drawn), strict=True))
    font = ImageFont.load_default(size=15)
    small = ImageFont.load_default(size=12)
    row_height = thumbnail + GAP
    sheet = Image.new("RGB", (LABEL_WIDTH + per_class * (thumbnail + GAP) + GAP, len(rows) * row_height + GAP),
                      BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for r, label in enumerate(rows):
        top = GAP + r * row_height
        draw.text((GAP * 2, top + 6), f"{label}  {wnids[label]}", font=font, fill=INK)
        draw.text((GAP * 2, top + 28), _fit(draw, names[label], small, LABEL_WIDTH - 4 * GAP), font=small, fill=INK)
        if not len(shown[label]):
            draw.text((LABEL_WIDTH, top + 6), "(no images)", font=small, fill=INK)
        for c, row in enumerate(shown[label].tolist()):
            pixels = pixels_of[row]
            if pixels.shape[-1] != 3 and pixels.shape[0] == 3:  # stored channels first
                pixels = pixels.transpose(1, 2, 0)
            tile = Image.fromarray(pixels).resize((thumbnail, thumbnail), Image.Resampling.BILINEAR)
            sheet.paste(tile, (LABEL_WIDTH + c * (thumbnail + GAP), top))
    return sheet


def write_preview(path: str | Path, output: str | Path, **options) -> Path:
    """Draw ``contact_sheet(path, **options)`` and save it (format from the extension, e.g. ``.png``)."""
    output = Path(output)
    sheet = contact_sheet(path, **options)
    try:
        sheet.save(output)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot write preview {output}: {exc}") from None
    return output
