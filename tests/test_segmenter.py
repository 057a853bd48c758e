"""The segmenter: a ViT backbone with Segmenter's linear or mask-transformer decoder."""

import pytest
import torch
import torch.nn.functional as F

import vitkit
from conftest import tiny_vit
from vitkit.models.segmenter import DECODERS, LinearDecoder, Segmenter, sliding_window_logits


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("size", [(32, 32), (45, 70), (20, 28)])
def test_logits_come_out_at_the_input_size_whatever_it_is(decoder, size):
    model = Segmenter(tiny_vit(), num_classes=5, decoder=decoder).eval()
    logits = model(torch.randn(2, 3, *size))
    assert logits.shape == (2, 5, *size) and torch.isfinite(logits).all()


def test_the_linear_decoder_classifies_each_patch_token_and_upsamples_bilinearly():
    model = Segmenter(tiny_vit(), num_classes=3).eval()
    images = torch.randn(2, 3, 32, 32)
    tokens = model.backbone.forward_features(images)[:, model.backbone.config.num_prefix_tokens :]
    by_hand = (tokens @ model.decoder.head.weight.T + model.decoder.head.bias).transpose(1, 2).reshape(2, 3, 8, 8)
    torch.testing.assert_close(model.patch_logits(images), by_hand)
    upsampled = F.interpolate(by_hand, size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(model(images), upsampled)


def test_the_mask_transformer_compares_normalised_patch_and_class_embeddings():
    model = Segmenter(tiny_vit(), num_classes=4, decoder="mask", decoder_depth=1).eval()
    decoder = model.decoder
    captured = {}
    decoder.mask_norm.register_forward_hook(lambda module, inputs, output: captured.setdefault("masks", inputs[0]))
    model(torch.randn(2, 3, 32, 32))
    masks = captured["masks"]
    assert masks.shape == (2, 64, 4)
    assert masks.abs().max() <= 1 + 1e-5  # cosine similarities
    assert len(decoder.blocks) == 1 and decoder.class_embed.shape == (1, 4, 32)


def test_a_segmenter_learns_where_the_squares_are():
    torch.manual_seed(0)
    images, masks = torch.zeros(8, 3, 32, 32), torch.zeros(8, 32, 32, dtype=torch.long)
    # a bright square (class 1) somewhere, a dim one (class 2) elsewhere; predicting background
    # everywhere scores 0.69
    for index in range(8):
        top, left = torch.randint(0, 16, (2,)).tolist()
        images[index, :, top : top + 16, left : left + 16] = 1.0
        masks[index, top : top + 16, left : left + 16] = 1
        bottom_row = 0 if top >= 8 else 24
        images[index, :, bottom_row : bottom_row + 8, 0:8] = 0.5
        masks[index, bottom_row : bottom_row + 8, 0:8] = 2
    for decoder in DECODERS:
        model = Segmenter(tiny_vit(), num_classes=3, decoder=decoder)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        losses = []
        for _ in range(80):
            loss = F.cross_entropy(model(images), masks)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        accuracy = (model.eval()(images).argmax(1) == masks).float().mean()
        assert losses[-1] < 0.5 * losses[0] and accuracy > 0.85, (decoder, losses[0], losses[-1], accuracy)


def test_what_cannot_be_a_segmenter_is_refused():
    with pytest.raises(ValueError, match="unknown decoder 'setr'; choose one of linear, mask"):
        Segmenter(tiny_vit(), num_classes=3, decoder="setr")
    with pytest.raises(ValueError, match="at least 2 classes"):
        Segmenter(tiny_vit(), num_classes=1)
    with pytest.raises(ValueError, match="no gradient for 2 classes; use decoder='linear'"):
        Segmenter(tiny_vit(), num_classes=2, decoder="mask")


def test_sliding_windows_average_to_the_whole_image_answer_of_a_local_model():
    local = torch.nn.Conv2d(3, 4, kernel_size=1)  # each pixel's logits depend on that pixel alone
    images = torch.randn(2, 3, 50, 37)
    with torch.no_grad():
        for crop, stride in ((16, 8), (16, 16), (20, 7), (64, 32)):
            torch.testing.assert_close(sliding_window_logits(local, images, crop=crop, stride=stride), local(images))


def test_sliding_windows_cover_an_image_larger_than_the_crop_with_crop_sized_inputs():
    seen = []

    def model(window):
        seen.append(tuple(window.shape[-2:]))
        return window[:, :1]

    sliding_window_logits(model, torch.randn(1, 3, 40, 70), crop=32, stride=16)
    assert set(seen) == {(32, 32)} and len(seen) == 2 * 4  # rows at 0, 8; columns at 0, 16, 32, 38
    with pytest.raises(ValueError, match=r"stride must be in 1\.\.crop"):
        sliding_window_logits(model, torch.randn(1, 3, 8, 8), crop=4, stride=5)


def test_create_segmenter_builds_on_any_weight_source_with_a_new_decoder(tmp_path):
    backbone = tiny_vit()
    vitkit.save_model(tmp_path / "encoder", backbone)
    architecture = dict(img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=4, mlp_dim=64)  # tiny_vit's
    segmenter = vitkit.create_segmenter(
        "Ti/16", num_classes=4, weights=tmp_path / "encoder", decoder="mask", **architecture
    )
    assert segmenter.backbone.config.num_classes == 0
    for key, value in backbone.state_dict().items():
        if not key.startswith("head."):
            assert torch.equal(segmenter.backbone.state_dict()[key], value), key
    assert segmenter.eval()(torch.randn(1, 3, 40, 24)).shape == (1, 4, 40, 24)
    scratch = vitkit.create_segmenter("Ti/16", num_classes=3, img_size=32, patch_size=8, depth=1)
    assert isinstance(scratch.decoder, LinearDecoder) and scratch(torch.randn(1, 3, 32, 32)).shape == (1, 3, 32, 32)
