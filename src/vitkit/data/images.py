"""Reading image files of any common mode into 8-bit gray or RGB."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _to_8bit(image: Image.Image) -> Image.Image:
    """16- and 32-bit gray ("I;16", "I", "F") → "L", scaled by the range their type can hold."""
    array = np.asarray(image)
    if image.mode == "F":
        array = np.clip(array, 0.0, 1.0) * 255.0 if array.max() <= 1.0 else np.clip(array, 0, 255)
    else:
        top = 65535 if image.mode.startswith("I;16") or array.max() > 255 else 255
        array = array.astype(np.float64) * (255.0 / top)
    return Image.fromarray(np.round(array).astype(np.uint8))


def convert_image(image: Image.Image, in_chans: int) -> Image.Image:
    """Any PIL mode → "L" (in_chans 1) or "RGB" (in_chans 3).

    Palette images go through RGBA so transparency is honoured; transparent pixels become
    black, as on the canvas most datasets were drawn on. CMYK and YCbCr use PIL's conversion.
    """
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        image = _to_8bit(image)
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        canvas = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(canvas, image.convert("RGBA"))
    return image.convert("L" if in_chans == 1 else "RGB")


class UnreadableImage(OSError):
    """Not an image, or a corrupt or truncated one; the message names the source."""


class ImageTooLarge(UnreadableImage):
    """More pixels than the reader's ``max_pixels`` (or PIL's own guard against decompression
    bombs, ``Image.MAX_IMAGE_PIXELS``) allows; found from the header, before decoding."""


class ImageTooElongated(UnreadableImage):
    """One side more than ``max_aspect`` times the other: a centre crop would keep a sliver of it."""


#: pixels an image may have before it is decoded (50 megapixels: 8,660 × 5,774; an 8-bit RGB
#: decode takes 3 bytes a pixel). Below PIL's own decompression-bomb threshold
#: (``Image.MAX_IMAGE_PIXELS``, 89.5 M pixels, where it warns; it refuses at twice that).
DEFAULT_MAX_PIXELS = 50_000_000
#: the longest side may be this many times the shortest (a panorama is 2–6, a long receipt ~10)
DEFAULT_MAX_ASPECT = 20.0


def check_size(size: tuple[int, int], name: str, max_pixels: int, max_aspect: float) -> None:
    """Refuse an image of ``size`` (width, height) from its header: :class:`ImageTooLarge` past
    ``max_pixels``, :class:`ImageTooElongated` past ``max_aspect``."""
    width, height = size
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"cannot read image {name}: {width}×{height} is {width * height:,} pixels, over the limit of "
            f"{max_pixels:,} pixels (--max-pixels)"
        )
    if max(width, height) > max_aspect * max(1, min(width, height)):
        raise ImageTooElongated(
            f"cannot read image {name}: {width}×{height} has an aspect ratio over the limit of {max_aspect:g}:1"
        )


def load_image(
    source: str | Path | bytes,
    in_chans: int = 3,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_aspect: float = DEFAULT_MAX_ASPECT,
    min_side: int | None = None,
) -> Image.Image:
    """Open an image file (or its bytes), turn it upright as its EXIF orientation says (phone
    photos), and convert it to the model's channels.

    Its size is checked from the header before anything is decoded (see :func:`check_size`), so
    the memory it takes follows ``max_pixels`` (a few bytes a pixel), whatever the file. With ``min_side``
    (the shortest side the caller will resize it to), a JPEG at least twice as large again is
    decoded at 1/2, 1/4 or 1/8 scale by libjpeg, and any other image at least twice as large again
    is averaged down by a whole factor (``Image.reduce``), its short side still ≥ 2 × ``min_side``.

    Raises :class:`UnreadableImage` (an ``OSError``) naming the source if it is not a readable
    image, :class:`ImageTooLarge` or :class:`ImageTooElongated` past the limits."""
    name = "the uploaded image" if isinstance(source, bytes) else str(source)
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            check_size(image.size, name, max_pixels, max_aspect)
            if min_side is not None:
                # twice the size needed, so the resize after it still filters (as Image.thumbnail does)
                scale = 2 * min_side / max(1, min(image.size))
                image.draft(None, (math.ceil(image.width * scale), math.ceil(image.height * scale)))
            image.load()
            if min_side is not None and (factor := min(image.size) // (2 * min_side)) > 1:
                # any other format: averaged down by a whole factor, so that a decoded picture waiting
                # for the model holds what the resize needs, not 50 megapixels
                image = image.reduce(factor)
            ImageOps.exif_transpose(image, in_place=True)
            return convert_image(image, in_chans)
    except UnreadableImage:
        raise
    except Image.DecompressionBombError as error:
        raise ImageTooLarge(f"cannot read image {name}: {error}") from error
    except UnidentifiedImageError as error:
        raise UnreadableImage(f"cannot read image {name}: not an image, or in a format PIL cannot read") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise UnreadableImage(f"cannot read image {name}: {error}") from error
