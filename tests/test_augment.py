"""Batched augmentation: per-sample parameters, exact geometry, reproducible from the seed."""

import pytest
import torch

from vitkit.data.augment import (
    COLOUR_OPS,
    AugmentedBatches,
    AugmentedMaskBatches,
    AugmentParams,
    BatchAugment,
    augment_stream,
    resize_uint8,
)
from vitkit.data.datasets.builtin import load_digits
from vitkit.data.transforms import batch_mixing

EVERYTHING = BatchAugment(
    8, crop_scale=(0.5, 1.0), rotate=20, translate=0.1, shear=10, zoom=(0.8, 1.2), flip=True, colour_ops=2, erase=0.5
)


def _images(count=16, size=8):
    return load_digits().train.images[:count] if size == 8 else torch.randint(0, 256, (count, 3, size, size)).byte()


def _scaled(images):
    return (images.float() / 255 - 0.5) / 0.5


def test_every_sample_gets_its_own_parameters():
    params = EVERYTHING.sample(64, torch.Generator().manual_seed(0))
    assert params.matrix.shape == (64, 2, 3)
    assert len({tuple(m.flatten().tolist()) for m in params.matrix}) == 64
    assert set(params.ops.flatten().tolist()) == set(range(len(COLOUR_OPS)))
    erased = (params.erase[:, 2] > 0).float().mean().item()
    assert 0.3 < erased < 0.7  # erase=0.5


def test_identity_parameters_give_the_input_back():
    images = _images(4, size=12)
    out = BatchAugment(12).apply(images, AugmentParams.identity(4, colour_ops=0))
    torch.testing.assert_close(out, _scaled(images), atol=1e-5, rtol=0)


def test_flip_and_quarter_turn_land_on_exact_pixels():
    images = _images(4, size=12)
    flip = AugmentParams.identity(4)
    flip.matrix[:, 0, 0] = -1.0
    torch.testing.assert_close(BatchAugment(12).apply(images, flip), _scaled(images).flip(-1), atol=1e-5, rtol=0)
    turn = AugmentParams.identity(4)
    turn.matrix[:, :, :2] = torch.tensor([[0.0, -1.0], [1.0, 0.0]])
    expected = torch.rot90(_scaled(images), k=1, dims=(-2, -1))
    out = BatchAugment(12).apply(images, turn)
    assert min((out - expected).abs().max(), (out - torch.rot90(expected, 2, (-2, -1))).abs().max()) < 1e-5


def test_erasing_blacks_out_the_box_and_nothing_else():
    images = torch.full((1, 1, 10, 10), 255, dtype=torch.uint8)
    params = AugmentParams.identity(1)
    params = AugmentParams(params.matrix, params.ops, params.signs, torch.tensor([[0.2, 0.3, 0.5, 0.9]]))
    out = BatchAugment(10).apply(images, params)[0, 0]
    assert (out[2:5, 3:9] == -1).all() and (out == -1).sum() == 3 * 6
    assert torch.allclose(out[(out != -1)], torch.tensor(1.0), atol=1e-5)


@pytest.mark.parametrize("name", ["invert", "brightness"])
def test_colour_operations(name):
    images = _images(2, size=12)
    params = AugmentParams.identity(2, colour_ops=1)
    params.ops[:] = COLOUR_OPS.index(name)
    params.signs[:] = -1.0
    out = BatchAugment(12, colour_ops=1, magnitude=30).apply(images, params)
    x = images.float() / 255
    expected = 1 - x if name == "invert" else x * (1 - 0.9)
    torch.testing.assert_close(out, (expected - 0.5) / 0.5, atol=1e-5, rtol=0)


def test_the_seed_reproduces_a_batch_bit_exactly():
    images = _images()
    a = EVERYTHING(images, torch.Generator().manual_seed(3))
    b = EVERYTHING(images, torch.Generator().manual_seed(3))
    c = EVERYTHING(images, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_a_sample_is_augmented_alike_whatever_the_batch_split():
    data = load_digits().train
    batches = AugmentedBatches(data.images[:16], data.labels[:16], EVERYTHING, seed=0)
    batches.set_epoch(2)
    whole = next(batches.batches(list(range(16)), 16, torch.device("cpu")))
    halves = list(batches.batches(list(range(16)), 8, torch.device("cpu")))
    assert torch.equal(whole[0], torch.cat([h[0] for h in halves]))
    assert torch.equal(whole[1], data.labels[:16])
    batches.set_epoch(3)  # another epoch, other parameters
    assert not torch.equal(whole[0], next(batches.batches(list(range(16)), 16, torch.device("cpu")))[0])


def test_wrongly_sized_images_are_refused():
    with pytest.raises(ValueError, match="expected uint8 images of 8×8"):
        AugmentedBatches(torch.zeros(2, 1, 9, 9, dtype=torch.uint8), torch.zeros(2), EVERYTHING, seed=0)


def test_resizing_once_keeps_the_range_and_averages():
    images = torch.zeros(3, 1, 28, 28, dtype=torch.uint8)
    images[:, :, :, 14:] = 255
    small = resize_uint8(images, 14)
    assert small.shape == (3, 1, 14, 14) and small.dtype == torch.uint8
    assert small[0, 0, 0, 0] == 0 and small[0, 0, 0, -1] == 255
    assert resize_uint8(images, 28) is images


@pytest.mark.parametrize("mixup, cutmix", [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_mixed_labels_sum_to_one(mixup, cutmix):
    mixing = batch_mixing(10, mixup, cutmix)
    _, labels = mixing(torch.randn(8, 1, 8, 8), torch.arange(8))
    assert labels.shape == (8, 10)
    torch.testing.assert_close(labels.sum(dim=1), torch.ones(8))
    assert ((labels > 0).sum(dim=1) <= 2).all() and (labels.max(dim=1).values < 1).all()  # two classes mixed


def test_a_stream_resumed_mid_epoch_is_augmented_as_the_whole_stream():
    data = load_digits().train
    stream = [(data.images[i : i + 4], data.labels[i : i + 4], []) for i in range(0, 24, 4)]
    stream.insert(2, (None, None, ["broken.png"]))  # a batch of unreadable files passes through
    cpu = torch.device("cpu")
    whole = list(augment_stream(stream, EVERYTHING, key=(0, 1, 0), device=cpu))
    resumed = list(augment_stream(stream[3:], EVERYTHING, key=(0, 1, 0), device=cpu, first=3))
    assert whole[2] == (None, None, ["broken.png"])
    assert all(torch.equal(a[0], b[0]) for a, b in zip(whole[3:], resumed, strict=True))
    assert not torch.equal(whole[0][0], whole[1][0][:4])


def _coded(masks):
    """Images whose every pixel says its class: class k is the gray level 20 k."""
    return (masks * 20).to(torch.uint8)[:, None]


def test_image_and_mask_stay_aligned_pixel_for_pixel_under_maps_of_the_pixel_grid():
    torch.manual_seed(0)
    masks = torch.randint(0, 11, (4, 12, 12))
    params = AugmentParams.identity(4)
    quarter_turn = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0]])
    params.matrix[0] = torch.tensor([[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # flip
    params.matrix[1] = quarter_turn
    params.matrix[2] = quarter_turn @ torch.tensor([[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    params.matrix[3] = torch.tensor([[1.0, 0.0, 2 * 3 / 12], [0.0, 1.0, 0.0]])  # three pixels across
    augment = BatchAugment(12)
    images = augment.apply(_coded(masks), params)
    warped = augment.apply_to_masks(masks, params)
    inside = warped != 255
    expected = _scaled(_coded(warped.clamp(max=10)))[:, 0]
    torch.testing.assert_close(images[:, 0][inside], expected[inside], atol=1e-5, rtol=0)
    assert torch.equal(warped[0], masks[0].flip(-1)) and torch.equal(warped[1], masks[1].rot90(1, (0, 1)))
    assert (~inside[3]).sum() == 3 * 12 and inside[:3].all()  # the shift leaves three columns empty


def test_random_augmentation_moves_masks_with_their_images():
    torch.manual_seed(1)
    masks = torch.zeros(16, 32, 32, dtype=torch.long)
    masks[:, 8:24, 8:24] = 3  # a square of class 3 on background 0
    augment = BatchAugment(32, crop_scale=(0.5, 1.0), rotate=30, translate=0.1, zoom=(0.8, 1.2), flip=True)
    params = augment.sample(16, torch.Generator().manual_seed(0))
    images = augment.apply(_coded(masks), params)
    warped = augment.apply_to_masks(masks, params)
    assert set(warped.unique().tolist()) <= {0, 3, 255} and (warped == 255).any()  # some grids leave the frame
    # bilinear blending only softens edges: above half the square's gray (60) the image says class 3
    # where the mask does (a misaligned mask, from other parameters, agrees on ~73 % of the pixels)
    square, inside = images[:, 0] > _scaled(torch.tensor(30)), warped != 255
    assert (square == (warped == 3))[inside].float().mean() > 0.995


def test_segmentation_batches_keep_every_mask_on_its_image_in_any_batch_size():
    masks = torch.zeros(12, 32, 32, dtype=torch.uint8)
    for index in range(12):
        masks[index, 4 + index : 20 + index, 6:22] = 1 + index % 3
    augment = BatchAugment(32, crop_scale=(0.6, 1.0), rotate=20, zoom=(0.9, 1.1), flip=True)
    served = AugmentedMaskBatches(_coded(masks.long()), masks, augment, seed=0)
    served.set_epoch(2)
    whole = list(served.batches(range(12), 12, torch.device("cpu")))
    pieces = list(served.batches(range(12), 5, torch.device("cpu")))
    images, warped, _ = whole[0]
    assert torch.equal(torch.cat([p[1] for p in pieces]), warped)  # a sample's draw is its own
    inside = warped != 255
    expected = _scaled(_coded(warped.clamp(max=3)))[:, 0]
    near = (images[:, 0] - expected).abs() < 0.2  # bilinear edges aside, the image says the mask's class
    assert near[inside].float().mean() > 0.97
