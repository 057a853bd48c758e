"""Segmentation masks as files: a class index per pixel, and the class names and colours beside them.

A mask is a PNG of class indices: a gray (``L``) image holds them as values, a palette (``P``)
image as palette indices (as VOC's are drawn), and an RGB image as colours, which a colour map
(``classes.json``) turns into indices. 255 marks pixels to ignore.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .images import DEFAULT_MAX_ASPECT, DEFAULT_MAX_PIXELS, UnreadableImage, check_size

#: the index of pixels that count for nothing (borders, unlabelled): mmsegmentation's and VOC's
IGNORE_INDEX = 255


class MaskError(ValueError):
    """A mask or class file that cannot be used; the message names it and says what to do."""


@dataclass(frozen=True)
class SegmentationClasses:
    """The classes of a segmentation set, and their colours (RGB) where the set gives them."""

    names: list[str]
    colours: list[tuple[int, int, int]] | None = None

    def palette(self) -> list[tuple[int, int, int]]:
        """A colour per class for masks and overlays: the set's own, else :func:`default_colours`."""
        return self.colours or default_colours(len(self.names))


def default_colours(count: int) -> list[tuple[int, int, int]]:
    """``count`` distinct colours, the first black (the background): the bits of each class index
    spread over the high bits of R, G and B in turn, as PASCAL VOC draws its masks, so a mask
    drawn with them looks like the masks users know."""
    colours = []
    for index in range(count):
        red = green = blue = 0
        for bit in range(8):
            red |= ((index >> (3 * bit)) & 1) << (7 - bit)
            green |= ((index >> (3 * bit + 1)) & 1) << (7 - bit)
            blue |= ((index >> (3 * bit + 2)) & 1) << (7 - bit)
        colours.append((red, green, blue))
    return colours


def read_classes(folder: Path) -> SegmentationClasses | None:
    """``folder/classes.json`` (a list of names, or of ``{"name": ..., "color": [r, g, b]}``) or
    ``folder/classes.txt`` (one name per line); None when the folder has neither. Names must be
    distinct, and at most 255 (a mask holds indices 0-254; 255 is ignored)."""
    classes = _read_classes(folder)
    if classes is not None:
        path = folder / ("classes.json" if (folder / "classes.json").is_file() else "classes.txt")
        repeated = sorted({name for name in classes.names if classes.names.count(name) > 1})
        if repeated:
            raise MaskError(f"{path} names {repeated[0]!r} more than once; every class needs a name of its own")
        if len(classes.names) > IGNORE_INDEX:
            raise MaskError(f"{path} lists {len(classes.names)} classes; a mask holds at most {IGNORE_INDEX} (0-254)")
    return classes


def _read_classes(folder: Path) -> SegmentationClasses | None:
    json_path, text_path = folder / "classes.json", folder / "classes.txt"
    if json_path.is_file():
        try:
            entries = json.loads(json_path.read_text())
        except (OSError, ValueError) as error:
            raise MaskError(f"{json_path} is not readable JSON: {error}") from error
        if not isinstance(entries, list) or not entries:
            raise MaskError(f"{json_path} must hold a list of class names or of {{'name', 'color'}} entries")
        if all(isinstance(entry, str) for entry in entries):
            return SegmentationClasses(list(entries))
        try:
            names = [str(entry["name"]) for entry in entries]
            colours = [_colour(entry["color"]) for entry in entries]
        except (KeyError, TypeError, ValueError) as error:
            raise MaskError(
                f"{json_path}: every entry needs a name and a color [r, g, b] of 0-255 ({error!r})"
            ) from error
        return SegmentationClasses(names, colours)
    if text_path.is_file():
        names = [line.strip() for line in text_path.read_text().splitlines() if line.strip()]
        if not names:
            raise MaskError(f"{text_path} lists no class; write one class name per line")
        return SegmentationClasses(names)
    return None


def _colour(value: object) -> tuple[int, int, int]:
    if not isinstance(value, list) or len(value) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in value):
        raise ValueError(f"{value!r} is not [r, g, b]")
    return value[0], value[1], value[2]


def read_mask(path: Path, classes: SegmentationClasses | None = None) -> np.ndarray:
    """The class index of every pixel of the mask file ``path`` ``(H, W)`` uint8: gray values and
    palette indices as they are, RGB colours through ``classes``' colour map."""
    with Image.open(path) as image:
        try:  # from the header, before anything is decoded
            check_size(image.size, str(path), DEFAULT_MAX_PIXELS, DEFAULT_MAX_ASPECT)
        except UnreadableImage as error:
            raise MaskError(str(error).replace("image", "mask", 1)) from error
        if image.mode in ("L", "P"):
            return np.asarray(image, dtype=np.uint8).copy()
        if image.mode not in ("RGB", "RGBA"):
            raise MaskError(f"mask {path} is a {image.mode} image; save masks as gray, palette or RGB PNGs")
        if classes is None or classes.colours is None:
            raise MaskError(
                f"mask {path} is an RGB image but no colour map says which colour is which class; give "
                "classes.json with a color per class, or save the masks as class indices (gray or palette PNG)"
            )
        pixels = np.asarray(image.convert("RGB"), dtype=np.uint32)
    packed = (pixels[..., 0] << 16) | (pixels[..., 1] << 8) | pixels[..., 2]
    lookup = {(r << 16) | (g << 8) | b: index for index, (r, g, b) in enumerate(classes.colours)}
    indices = np.full(packed.shape, IGNORE_INDEX, dtype=np.uint8)
    for colour in np.unique(packed):
        if int(colour) not in lookup:
            rgb = (int(colour) >> 16, (int(colour) >> 8) & 255, int(colour) & 255)
            raise MaskError(f"mask {path} holds the colour {list(rgb)}, which classes.json does not list")
        indices[packed == colour] = lookup[int(colour)]
    return indices


def check_mask(
    mask: np.ndarray, path: Path, num_classes: int, image_size: tuple[int, int], ignore_index: int = IGNORE_INDEX
) -> None:
    """Refuse a mask whose size is not its image's ``(width, height)`` or whose values name a class
    the set does not have (``ignore_index`` excepted)."""
    height, width = mask.shape
    if (width, height) != image_size:
        raise MaskError(
            f"mask {path} is {width}×{height} but its image is {image_size[0]}×{image_size[1]}; "
            "a mask must have its image's size"
        )
    values = np.unique(mask)
    wrong = values[(values >= num_classes) & (values != ignore_index)]
    if wrong.size:
        raise MaskError(
            f"mask {path} holds class {int(wrong[0])} but the set has {num_classes} classes (0-{num_classes - 1}, "
            f"and {ignore_index} to ignore); fix the mask, list every class in classes.txt, or set --ignore-index"
        )


def colour_mask(mask: np.ndarray, colours: list[tuple[int, int, int]]) -> np.ndarray:
    """A mask ``(H, W)`` of class indices drawn in the classes' colours ``(H, W, 3)`` uint8
    (ignored pixels, and any index without a colour, white)."""
    table = np.full((256, 3), 255, dtype=np.uint8)
    table[: len(colours)] = np.asarray(colours, dtype=np.uint8).reshape(-1, 3)
    return table[mask]


def mask_overlay(
    image: np.ndarray, mask: np.ndarray, colours: list[tuple[int, int, int]], opacity: float = 0.5
) -> np.ndarray:
    """The image ``(H, W, 3)`` uint8 with its mask drawn over it at ``opacity``; the background
    (class 0) is left clear. Blended in float32, a few bytes a pixel (large photos come here)."""
    alpha = np.where(mask[..., None] == 0, np.float32(0), np.float32(opacity))
    blended = image * (1 - alpha) + colour_mask(mask, colours) * alpha
    return np.round(blended, out=blended).astype(np.uint8)


def palette_png(mask: np.ndarray, colours: list[tuple[int, int, int]]) -> Image.Image:
    """A mask as a palette PNG image: each pixel's value is its class index (what
    :func:`read_mask` reads back) and the palette shows the classes' colours."""
    image = Image.fromarray(mask.astype(np.uint8), mode="P")
    palette = [channel for colour in colours for channel in colour]
    image.putpalette(palette + [255] * (768 - len(palette)))  # all 256 entries: index 255 stays 255
    return image
