"""MNIST digits on canvases: a segmentation set whose masks match its images pixel for pixel."""

import pytest
import torch

from vitkit.data.datasets.builtin import load_digits
from vitkit.data.datasets.canvases import CANVAS_CLASSES, digit_canvases, digit_regions


@pytest.fixture(scope="module")
def digits():
    # scikit-learn's 8×8 digits, scaled up: real digits, and quick to load
    train = load_digits().train
    images = torch.nn.functional.interpolate(train.images.float(), size=(28, 28), mode="nearest").byte()
    return images, train.labels


def test_every_bright_pixel_lies_in_its_digits_region_and_every_region_holds_its_digit(digits):
    images, labels = digits
    canvases = digit_canvases(images, labels, 40, size=64, per_canvas=(2, 3), seed=1)
    assert canvases.images.shape == (40, 1, 64, 64) and canvases.masks.shape == (40, 64, 64)
    assert int(canvases.masks.max()) <= len(CANVAS_CLASSES) - 1
    assert ((canvases.images[:, 0] > 0) <= (canvases.masks > 0)).all()  # no ink on the background
    # each labelled region is one pasted digit: its class is that digit's label + 1
    present = [set(canvases.masks[i].unique().tolist()) - {0} for i in range(40)]
    assert all(1 <= len(classes) <= 3 for classes in present) and sum(map(len, present)) > 60


def test_a_pasted_digit_keeps_its_pixels_and_is_labelled_its_class_plus_one(digits):
    images, labels = digits
    canvases = digit_canvases(images[:1], labels[:1], 3, per_canvas=(1, 1), seed=0)
    region = digit_regions(images[:1])[0]
    for image, mask in zip(canvases.images, canvases.masks, strict=True):
        assert set(mask.unique().tolist()) == {0, int(labels[0]) + 1}
        assert int((mask > 0).sum()) == int(region.sum())
        assert int(image.sum()) == int((images[0, 0] * region).sum())  # the digit's own pixels, moved


def test_a_region_is_the_stroke_grown_by_the_dilation(digits):
    images, _ = digits
    strokes = images[:5, 0] >= 64
    assert torch.equal(digit_regions(images[:5], dilation=0), strokes)
    grown = digit_regions(images[:5], dilation=1)
    assert (strokes <= grown).all() and grown.sum() > strokes.sum()


def test_the_same_seed_gives_the_same_canvases_and_another_seed_others(digits):
    images, labels = digits
    first, again = (digit_canvases(images, labels, 8, seed=3) for _ in range(2))
    other = digit_canvases(images, labels, 8, seed=4)
    assert torch.equal(first.images, again.images) and torch.equal(first.masks, again.masks)
    assert not torch.equal(first.masks, other.masks)


def test_a_canvas_smaller_than_a_digit_is_refused(digits):
    images, labels = digits
    with pytest.raises(ValueError, match="a canvas of 20 px cannot hold a 28×28 digit; use size >= 28"):
        digit_canvases(images, labels, 1, size=20)
