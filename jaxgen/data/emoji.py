"""Emoji images rendered from Noto Color Emoji, and the shift/scale augmentation of small images.

The font (Debian's fonts-noto-color-emoji) is found at config.data.font_file, else
<source_dir or $JAXGEN_DATA_DIR>/emoji/NotoColorEmoji.ttf, else the Debian install path. Every
single code point of the font's character map whose Unicode category is "So" (other symbol) and
that has a Unicode name becomes one image (~1,375): CBDT colour fonts only render at their bitmap
size (109) with embedded_color=True, so each glyph is drawn at 109 px on a transparent canvas,
cropped to its bounding box, centred in a square, resized (Lanczos) to fit inside the image with a
margin of size/16 px, and composited on white. Captions are the lowercased Unicode names.

`shift_scale` augments a batch per example (two batched matrix products: the map is separable):
zoom by a factor in [1 - s, 1 + s] about the centre and
shift by up to +-m pixels, bilinear, white outside the image; the factors come from the rng it is
given (the kind draws it from (seed, host, step)).
"""

import functools
import os
import pathlib
import unicodedata

import numpy as np
from fontTools.ttLib import TTFont
from PIL import Image, ImageDraw, ImageFont

from jaxgen.config import ConfigDict
from jaxgen.data import raw
from jaxgen.data.errors import DataError

FONT_NAME = "NotoColorEmoji.ttf"
DEBIAN_FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
_BITMAP_SIZE = 109  # the only size at which Pillow renders the font's CBDT bitmaps
_CANVAS = 160


def find_font(data_config: ConfigDict) -> str:
    """The font file to render; DataError naming what was tried when there is none."""
    if data_config.font_file:
        path = os.path.expanduser(data_config.font_file)
        if not os.path.isfile(path):
            raise DataError(f"{path}: emoji font file not found (config.data.font_file)")
        return path
    candidates = [
        pathlib.Path(folder).expanduser() / "emoji" / FONT_NAME
        for folder in (data_config.source_dir, os.environ.get(raw.DATA_DIR_ENV, ""))
        if folder
    ] + [pathlib.Path(DEBIAN_FONT)]
    for path in candidates:
        if path.is_file():
            return os.fspath(path)
    raise DataError(
        f"{FONT_NAME}: emoji font not found in {', '.join(map(str, candidates))} (install "
        "fonts-noto-color-emoji or set config.data.font_file)"
    )


@functools.lru_cache(maxsize=4)
def render(font_file: str, size: int) -> tuple[np.ndarray, tuple[str, ...]]:
    """uint8 RGB images [n, size, size, 3] on white and the emoji's lowercased Unicode names."""
    try:
        font = ImageFont.truetype(font_file, _BITMAP_SIZE)
        cmap = TTFont(font_file).getBestCmap()
    except Exception as e:  # Pillow raises OSError, fontTools anything for a bad file
        raise DataError(f"{font_file}: cannot read the emoji font: {e}") from e
    code_points = [
        c
        for c in sorted(cmap)
        if unicodedata.category(chr(c)) == "So" and unicodedata.name(chr(c), "")
    ]
    margin = max(1, size // 16)
    images, names = [], []
    for c in code_points:
        canvas = Image.new("RGBA", (_CANVAS, _CANVAS), (255, 255, 255, 0))
        ImageDraw.Draw(canvas).text((0, 0), chr(c), font=font, embedded_color=True)
        box = canvas.getbbox()
        if box is None:
            continue  # no glyph drawn
        glyph = canvas.crop(box)
        scale = (size - 2 * margin) / max(glyph.size)
        width, height = (max(1, round(side * scale)) for side in glyph.size)
        glyph = glyph.resize((width, height), Image.Resampling.LANCZOS)
        image = Image.new("RGBA", (size, size), (255, 255, 255, 255))
        image.alpha_composite(glyph, ((size - width) // 2, (size - height) // 2))
        images.append(np.asarray(image.convert("RGB"), np.uint8))
        names.append(unicodedata.name(chr(c)).lower())
    if not images:
        raise DataError(f"{font_file}: no emoji glyphs rendered")
    return np.stack(images), tuple(names)


def _tent_weights(source: np.ndarray, size: int) -> np.ndarray:
    """Bilinear weights [b, n, size] of reading positions `source` [b, n] from `size` pixels:
    max(0, 1 - |source - j|); a position off the image puts weight on no pixel."""
    return np.maximum(0.0, 1.0 - np.abs(source[:, :, None] - np.arange(size)[None, None, :]))


def shift_scale(
    images: np.ndarray, rng: np.random.Generator, max_shift: float, max_scale: float
) -> np.ndarray:
    """float32 images [b, H, W, C] in [-1, 1], each zoomed and shifted (white fill).

    Output pixel (y, x) reads input ((y - cy - dy) / s + cy, (x - cx - dx) / s + cx), bilinear,
    white where it falls off the image. The map is separable, so it is two batched matrix
    products on (image - 1), whose off-image value is 0: out = Wy (image - 1) Wx^T + 1.
    """
    b, height, width, channels = images.shape
    scale = rng.uniform(1 - max_scale, 1 + max_scale, (b, 1))
    dy, dx = (rng.uniform(-max_shift, max_shift, (b, 1)) for _ in range(2))
    cy, cx = (height - 1) / 2, (width - 1) / 2
    rows = _tent_weights((np.arange(height)[None] - cy - dy) / scale + cy, height)  # [b, H, H]
    cols = _tent_weights((np.arange(width)[None] - cx - dx) / scale + cx, width)  # [b, W, W]
    centred = (images - np.float32(1.0)).reshape(b, height, width * channels)
    h = np.matmul(rows.astype(np.float32), centred).reshape(b, height, width, channels)
    h = np.matmul(cols.astype(np.float32)[:, None], h)  # [b, 1, W, W] @ [b, H, W, C]
    return (h + np.float32(1.0)).astype(np.float32)
