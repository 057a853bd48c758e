"""Explanations (rollout, gradient-weighted relevance, Grad-CAM) and their measured faithfulness."""

import pytest
import torch

import vitkit
from conftest import randomize_head, tiny_vit
from vitkit.analysis import METHODS, explanation_maps, faithfulness, perturbation_curves, random_maps


def marker_images(count, seed):
    """16×16 noise with one 4×4 marker patch at a random place: +2 for class 0, -2 for class 1.
    Only the marker tells the classes apart, so it is the right answer for any explanation."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(count, 1, 16, 16, generator=generator) * 0.3
    labels = torch.randint(0, 2, (count,), generator=generator)
    places = torch.randint(0, 16, (count,), generator=generator)
    for image, label, place in zip(images, labels, places, strict=True):
        row, col = divmod(place.item(), 4)
        image[0, 4 * row : 4 * row + 4, 4 * col : 4 * col + 4] = 2.0 if label == 0 else -2.0
    return images, labels, places


@pytest.fixture(scope="module")
def marker_model():
    """A 1-block ViT set by hand so that its answer is known: the class-0 logit is (nearly
    linearly) the summed brightness of the patches, class 1 the opposite, so the marker patch
    decides. Token channel 0 holds a patch's mean brightness; a large constant in channels 1–2
    keeps every LayerNorm close to linear; the class token attends to all tokens evenly (q = k
    = 0) and reads channel 0 (v); the MLP adds nothing."""
    model = vitkit.create_model(
        "Ti/16", img_size=16, patch_size=4, in_chans=1, num_classes=2, embed_dim=4, depth=1, num_heads=1, mlp_dim=4
    )
    offset = torch.tensor([0.0, 8.0, -8.0, 0.0])
    block = model.blocks[0]
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
        for norm in (block.norm1, block.norm2, model.norm):
            norm.weight.fill_(1.0)
        model.patch_embed.proj.weight[0] = 1 / 16
        model.patch_embed.proj.bias.copy_(offset)
        model.cls_token[0, 0].copy_(offset)
        block.attn.qkv.weight[8, 0] = 1.0  # v channel 0 ← input channel 0 (rows 0-3 q, 4-7 k)
        block.attn.proj.weight.copy_(torch.eye(4))
        model.head.weight[:, 0] = torch.tensor([5000.0, -5000.0])  # the marker alone: ~10 logits
    return model.eval()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("pool", ["token", "avg"])
def test_maps_cover_the_patch_grid_in_unit_range(method, pool):
    model = randomize_head(tiny_vit(pool=pool, class_token=pool == "token", dynamic_img_size=True)).eval()
    maps = explanation_maps(model, torch.randn(3, 3, 32, 48), method)
    assert maps.shape == (3, 8, 12)
    assert maps.min() >= 0 and torch.allclose(maps.flatten(1).max(dim=1).values, torch.ones(3))


def test_class_specific_maps_find_the_marker_that_decides_the_class(marker_model):
    images, labels, places = marker_images(64, seed=1)
    with torch.no_grad():
        assert (marker_model(images).argmax(dim=1) == labels).all()

    def found(method, target=None):
        top = explanation_maps(marker_model, images, method, target).flatten(1).argmax(dim=1)
        return (top == places).float().mean().item()

    assert found("relevance") == found("gradcam") == 1.0
    # Asked about the other class, they point at the noise that speaks for it, never at the marker.
    assert found("relevance", 1 - labels) == found("gradcam", 1 - labels) == 0.0
    # The class token attends evenly, so rollout (class-agnostic) cannot tell: every patch ties.
    assert explanation_maps(marker_model, images, "rollout").flatten(1).std(dim=1).max() < 1e-6


def test_class_specific_methods_beat_a_random_order(marker_model):
    images, labels, _ = marker_images(64, seed=1)
    control = faithfulness(marker_model, images, random_maps(64, (4, 4)), labels)
    for method in ("relevance", "gradcam"):
        measured = faithfulness(marker_model, images, explanation_maps(marker_model, images, method), labels)
        assert measured.deletion_auc < control.deletion_auc - 0.1, method
        assert measured.insertion_auc > control.insertion_auc + 0.1, method


def test_curves_start_and_end_where_the_definitions_say(marker_model):
    images, labels, _ = marker_images(4, seed=2)
    maps = random_maps(4, (4, 4), seed=3)
    deletion, insertion = perturbation_curves(marker_model, images, maps, labels, steps=4)
    assert deletion.shape == insertion.shape == (4, 5)
    with torch.no_grad():
        original = marker_model(images).softmax(dim=1).gather(1, labels[:, None])[:, 0]
        blank = marker_model(torch.zeros_like(images)).softmax(dim=1).gather(1, labels[:, None])[:, 0]
    torch.testing.assert_close(deletion[:, 0], original)
    torch.testing.assert_close(insertion[:, -1], original)
    torch.testing.assert_close(deletion[:, -1], blank)
    torch.testing.assert_close(insertion[:, 0], blank)


def test_a_target_out_of_range_is_refused():
    with pytest.raises(ValueError, match="out of range"):
        explanation_maps(tiny_vit().eval(), torch.randn(1, 3, 32, 32), "relevance", target=10)
    with pytest.raises(ValueError, match="unknown explanation 'lime'"):
        explanation_maps(tiny_vit().eval(), torch.randn(1, 3, 32, 32), "lime")


def test_tied_patches_are_taken_in_a_random_order_not_row_by_row(marker_model):
    images, labels, _ = marker_images(8, seed=4)
    ties = torch.zeros(8, 4, 4)
    row_by_row = torch.arange(16.0).flip(0).expand(8, 16).reshape(8, 4, 4)  # the first patch highest
    deletion, _ = perturbation_curves(marker_model, images, ties, labels)
    in_raster_order, _ = perturbation_curves(marker_model, images, row_by_row, labels)
    assert not torch.equal(deletion, in_raster_order)
