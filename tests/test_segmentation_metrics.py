"""mIoU, per-class IoU, pixel and mean class accuracy, against a computation written independently."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vitkit.train.segmentation import SegmentationScores, segmentation_loss


def _by_hand(predicted, truth, num_classes, ignore=255):
    """Per class with numpy over the whole set: the definitions as mmsegmentation states them."""
    kept = truth != ignore
    p, t = predicted[kept], truth[kept]
    ious, accs = [], []
    for c in range(num_classes):
        inter = np.sum((p == c) & (t == c))
        union = np.sum(p == c) + np.sum(t == c) - inter
        area = np.sum(t == c)
        ious.append(inter / union if union else np.nan)
        accs.append(inter / area if area else np.nan)
    return np.nanmean(ious), np.sum(p == t) / p.size, np.nanmean(accs), ious


def test_scores_summed_over_batches_match_the_definitions():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 5, size=(6, 20, 24))
    truth[rng.random(truth.shape) < 0.1] = 255
    truth[truth == 3] = 0  # class 3 is never true ...
    predicted = np.where(
        rng.random(truth.shape) < 0.7, np.where(truth == 255, 0, truth), rng.integers(0, 5, truth.shape)
    )
    predicted[predicted == 4] = 1  # ... and class 4 is never predicted
    scores = SegmentationScores(num_classes=6)  # class 5: neither: left out of every mean
    for batch in np.array_split(np.arange(6), [2, 5]):  # batches of 2, 3 and 1 images
        scores.add(torch.from_numpy(predicted[batch]), torch.from_numpy(truth[batch]))
    miou, pixel, mean_acc, ious = _by_hand(predicted, truth, 6)
    assert scores.mean_iou == pytest.approx(miou)
    assert scores.pixel_accuracy == pytest.approx(pixel)
    assert scores.mean_accuracy == pytest.approx(mean_acc)
    assert math.isnan(scores.per_class_iou[5]) and scores.per_class_iou[3] == 0.0
    np.testing.assert_allclose(scores.per_class_iou[:5], ious[:5])
    document = json.loads(json.dumps(scores.to_dict([str(c) for c in range(6)])))
    assert document["per_class_iou"]["5"] is None and document["mean_iou"] == pytest.approx(miou)


def test_a_perfect_prediction_scores_one_and_ignored_pixels_count_nowhere():
    truth = torch.tensor([[[0, 1, 255], [1, 1, 255]]])
    scores = SegmentationScores(num_classes=2)
    scores.add(torch.tensor([[[0, 1, 0], [1, 1, 0]]]), truth)  # wrong only where ignored
    assert scores.mean_iou == 1.0 and scores.pixel_accuracy == 1.0 and int(scores.confusion.sum()) == 4


def test_the_loss_ignores_ignored_pixels_and_dice_rewards_overlap():
    torch.manual_seed(0)
    masks = torch.randint(0, 3, (2, 8, 8))
    logits = torch.randn(2, 3, 8, 8)
    ignored = masks.clone()
    ignored[:, :4] = 255
    expected = F.cross_entropy(logits[:, :, 4:], masks[:, 4:])
    torch.testing.assert_close(segmentation_loss(logits, ignored), expected)
    perfect = F.one_hot(masks, 3).permute(0, 3, 1, 2).float() * 50
    assert segmentation_loss(perfect, masks, dice=1.0) < 1e-3  # Dice and cross-entropy both near 0
    wrong = perfect.roll(1, dims=1)
    assert segmentation_loss(wrong, masks, dice=1.0) > segmentation_loss(wrong, masks) + 0.9  # Dice near 1
