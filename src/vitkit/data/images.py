"""Reading image files of any common mode into 8-bit gray or RGB."""

from __future__ import annotations

import io
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
    """More pixels than PIL's guard against decompression bombs allows (``Image.MAX_IMAGE_PIXELS``)."""


def load_image(source: str | Path | bytes, in_chans: int = 3) -> Image.Image:
    """Open an image file (or its bytes), turn it upright as its EXIF orientation says (phone
    photos), and convert it to the model's channels. Raises :class:`UnreadableImage` (an
    ``OSError``) naming the source if it is not a readable image, :class:`ImageTooLarge` for a
    decompression bomb."""
    name = "the uploaded image" if isinstance(source, bytes) else str(source)
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            image.load()
            return convert_image(ImageOps.exif_transpose(image), in_chans)
    except Image.DecompressionBombError as error:
        raise ImageTooLarge(f"cannot read image {name}: {error}") from error
    except UnidentifiedImageError as error:
        raise UnreadableImage(f"cannot read image {name}: not an image, or in a format PIL cannot read") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise UnreadableImage(f"cannot read image {name}: {error}") from error
