import math

import pytest
import torch
import torch.nn.functional as F

import vitkit
from conftest import randomize_head, tiny_vit
from vitkit.models.vit import Attention, _attention_weights, attention

POS_KINDS = ["none", "learn", "learn2d", "relative", "sincos2d"]


def images(batch=2, size=32, chans=3):
    return torch.randn(batch, chans, size, size)


@pytest.mark.parametrize("pos_embed", POS_KINDS)
@pytest.mark.parametrize("relative", [False, True])
def test_fused_and_explicit_attention_agree(pos_embed, relative):
    attn = Attention(32, 4, relative_tokens=17 if relative else None).eval()
    if relative:
        torch.nn.init.normal_(attn.rel_pos.table)
    x = torch.randn(3, 17, 32)
    fused = attn(x)
    explicit, weights = attn(x, return_attention=True)
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)
    assert weights.shape == (3, 4, 17, 17)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 4, 17))


def test_explicit_attention_gradients_agree_with_the_fused_kernel():
    """The explicit path scales and biases the logits in place; autograd must still give the
    fused kernel's gradients for q, k, v and the bias."""
    inputs = [torch.randn(2, 3, 17, 8, requires_grad=True) for _ in range(3)]
    bias = torch.randn(3, 17, 17, requires_grad=True)
    grads = []
    for attend in (
        lambda q, k, v, b: F.scaled_dot_product_attention(q, k, v, attn_mask=b),
        lambda q, k, v, b: _attention_weights(q, k, b, 8**-0.5) @ v,
    ):
        attend(*inputs, bias).square().sum().backward()
        grads.append([t.grad.clone() for t in (*inputs, bias)])
        for t in (*inputs, bias):
            t.grad = None
    for fused, explicit in zip(*grads, strict=True):
        torch.testing.assert_close(explicit, fused, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pos_embed", POS_KINDS)
def test_model_logits_equal_on_both_attention_paths(pos_embed):
    model = randomize_head(tiny_vit(pos_embed=pos_embed)).eval()
    x = images()
    tokens = model._embed(x)
    explicit = tokens
    for block in model.blocks:
        explicit, _ = block(explicit, return_attention=True)
    torch.testing.assert_close(model.forward_head(model.norm(explicit)), model(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pos_embed", POS_KINDS)
@pytest.mark.parametrize("pool", ["token", "avg"])
def test_gradients_reach_every_parameter(pos_embed, pool):
    model = randomize_head(tiny_vit(pos_embed=pos_embed, pool=pool, representation_size=16))
    model(images()).square().mean().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert param.grad.abs().sum() > 0, name


def test_gradients_reach_every_parameter_of_a_hybrid():
    model = randomize_head(
        vitkit.create_model("R26+S/32", num_classes=3, img_size=64, embed_dim=32, depth=1, num_heads=2, mlp_dim=32)
    )
    model(images(size=64)).square().mean().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def shuffle_patches(x, patch, perm):
    B, C, H, W = x.shape
    g = H // patch
    p = x.reshape(B, C, g, patch, g, patch).permute(0, 2, 4, 1, 3, 5).reshape(B, g * g, C, patch, patch)
    p = p[:, perm]
    return p.reshape(B, g, g, C, patch, patch).permute(0, 3, 1, 4, 2, 5).reshape(B, C, H, W)


@pytest.mark.parametrize("pos_embed", POS_KINDS)
def test_only_position_embeddings_make_the_model_see_patch_order(pos_embed):
    model = randomize_head(tiny_vit(pos_embed=pos_embed)).eval()
    x = images()
    shuffled = shuffle_patches(x, 4, torch.randperm(64))
    changed = (model(x) - model(shuffled)).abs().max().item()
    if pos_embed == "none":
        assert changed < 1e-5  # a bag of patches: order cannot matter
    else:
        assert changed > 1e-3


def test_learn_has_a_class_token_row():
    model = tiny_vit()
    assert model.pos_embed.shape == (1, 1 + 64, 32)
    assert model.pos_embed2d is None


def test_learn2d_concatenates_row_and_column_embeddings():
    model = tiny_vit(pos_embed="learn2d")
    zeros = torch.zeros(1, 65, 32)
    assert model.pos_embed is None
    pos = model.pos_embed2d(zeros, (8, 8))[0]
    assert torch.equal(pos[0], torch.zeros(32))  # the class token gets none
    grid = pos[1:].reshape(8, 8, 32)
    assert torch.equal(grid[3, 0, :16], grid[3, 7, :16])  # same row → same Y half
    assert torch.equal(grid[0, 5, 16:], grid[6, 5, 16:])  # same column → same X half
    assert not torch.equal(grid[0, 0, :16], grid[1, 0, :16])


def test_sincos2d_is_fixed_and_not_saved():
    model = tiny_vit(pos_embed="sincos2d")
    assert model.pos_embed is None and list(model.pos_embed2d.parameters()) == []
    assert not any("pos_embed" in k for k in model.state_dict())
    table = model.pos_embed2d.table
    assert table.shape == (64, 32)
    assert len({tuple(row.tolist()) for row in table}) == 64  # every patch distinct


def test_relative_logits_follow_the_documented_formula():
    model = tiny_vit(pos_embed="relative")
    rel = model.blocks[0].attn.rel_pos
    q = torch.randn(2, 4, 65, 8)
    bias = rel(q)
    T = 65
    for i, j in [(0, 0), (3, 10), (64, 2), (10, 3)]:
        expected = (q[:, :, i] * rel.table[i - j + T - 1]).sum(-1) / math.sqrt(8)
        torch.testing.assert_close(bias[:, :, i, j], expected)


def test_relative_cannot_change_resolution():
    model = tiny_vit(pos_embed="relative")
    with pytest.raises(ValueError, match="relative position embeddings"):
        model.set_image_size(64)


def test_gap_uses_the_mean_of_patch_tokens():
    model = tiny_vit(pool="avg", class_token=False)
    assert model.cls_token is None
    feats = model.forward_features(images())
    assert feats.shape == (2, 64, 32)
    torch.testing.assert_close(model.forward_head(feats, pre_logits=True), feats.mean(1))


def test_initialisation_follows_the_jax_reference():
    model = vitkit.create_model("S/16", representation_size=384)
    assert torch.count_nonzero(model.head.weight) == 0 and torch.count_nonzero(model.head.bias) == 0
    assert torch.count_nonzero(model.cls_token) == 0
    assert abs(model.pos_embed.std().item() - 0.02) < 1e-3
    block = model.blocks[0]
    assert 0 < block.mlp.fc1.bias.abs().max() < 1e-4
    assert torch.count_nonzero(block.attn.qkv.bias) == 0
    fc1 = block.mlp.fc1.weight
    bound = math.sqrt(6 / sum(fc1.shape))
    assert fc1.abs().max() <= bound and abs(fc1.std().item() - bound / math.sqrt(3)) < 0.05 * bound


def test_each_part_resets_its_own_parameters():
    model = vitkit.create_model("Ti/16", pos_embed="relative", img_size=32)
    block = model.blocks[0]
    parts = (block.attn, block.mlp, block.attn.rel_pos, model.patch_embed, tiny_vit(pos_embed="learn2d").pos_embed2d)
    for part in parts:
        for param in part.parameters():
            torch.nn.init.constant_(param, 7.0)
        part.reset_parameters()
        assert all((param != 7.0).any() for param in part.parameters()), type(part).__name__
    dim = block.attn.proj.in_features
    qkv_bound = math.sqrt(6 / (2 * dim))  # bounded as one D×D matrix, not as the fused 3D×D
    assert block.attn.qkv.weight.abs().max() <= qkv_bound
    assert block.attn.qkv.weight.abs().max() > math.sqrt(6 / (4 * dim))
    assert abs(block.attn.rel_pos.table.std().item() - 0.02) < 3e-3
    conv = model.patch_embed.proj.weight
    assert abs(conv.std().item() - math.sqrt(1 / conv[0].numel())) < 0.1 * math.sqrt(1 / conv[0].numel())


def test_reset_classifier_gives_a_zero_head_and_drops_the_pretraining_layer():
    model = vitkit.create_model("Ti/16", representation_size=192)
    model.reset_classifier(5)
    assert isinstance(model.pre_logits, torch.nn.Identity)
    assert model.head.weight.shape == (5, 192) and torch.count_nonzero(model.head.weight) == 0
    assert model.config.num_classes == 5 and model.config.representation_size is None
    kept = vitkit.create_model("Ti/16", representation_size=96)
    kept.reset_classifier(3, keep_pre_logits=True)
    assert kept.head.weight.shape == (3, 96)
    kept.reset_classifier(0)
    assert isinstance(kept.head, torch.nn.Identity)


def test_forward_intermediates():
    """timm's contract: (final, outputs) or the outputs alone; maps (NCHW) or patch tokens (NLC),
    prefix tokens apart."""
    model = tiny_vit(depth=4).eval()
    x = images()
    final, maps = model.forward_intermediates(x)
    torch.testing.assert_close(final, model.forward_features(x))
    assert len(maps) == 4 and all(m.shape == (2, 32, 8, 8) for m in maps)
    tokens = model.forward_intermediates(x, [-1], norm=True, output_fmt="NLC", intermediates_only=True)
    torch.testing.assert_close(tokens[0], model.forward_features(x)[:, 1:])
    last_two = model.forward_intermediates(x, 2, intermediates_only=True)
    assert len(last_two) == 2
    torch.testing.assert_close(last_two[1], maps[3])
    torch.testing.assert_close(
        maps[1].flatten(2).transpose(1, 2),
        model.forward_intermediates(x, [1], output_fmt="NLC", intermediates_only=True)[0],
    )
    (pair,) = model.forward_intermediates(x, [0], return_prefix_tokens=True, intermediates_only=True)
    assert pair[0].shape == (2, 32, 8, 8) and pair[1].shape == (2, 1, 32)
    early, _ = model.forward_intermediates(x, [1], stop_early=True)
    torch.testing.assert_close(early, model.norm(model.blocks[1](model.blocks[0](model._embed(x)))))
    with pytest.raises(ValueError, match="block index 4 is out of range"):
        model.forward_intermediates(x, [4])
    with pytest.raises(ValueError, match="output_fmt is 'NCHW' or 'NLC'"):
        model.forward_intermediates(x, output_fmt="NHWC")


def test_pruned_to_what_the_intermediates_need():
    model = tiny_vit(depth=4).eval()
    x = images()
    wanted = model.forward_intermediates(x, [1], intermediates_only=True)
    assert model.prune_intermediate_layers([1], prune_norm=True) == [1]
    assert len(model.blocks) == 2 and model.num_classes == 0 and isinstance(model.norm, torch.nn.Identity)
    torch.testing.assert_close(model.forward_intermediates(x, [1], intermediates_only=True), wanted)
    assert [f["module"] for f in model.feature_info] == ["blocks.0", "blocks.1"]
    assert model.feature_info[0]["num_chs"] == 32 and model.feature_info[0]["reduction"] == 4


def test_attention_maps_for_every_block():
    model = tiny_vit(depth=3).eval()
    maps = model.attention_maps(images())
    assert len(maps) == 3 and maps[0].shape == (2, 4, 65, 65)


def test_set_image_size_resamples_and_matches_dynamic_size():
    x = images(size=48)
    dynamic = tiny_vit(dynamic_img_size=True).eval()
    out_dynamic = dynamic(x)
    fixed = tiny_vit().eval()
    fixed.load_state_dict(dynamic.state_dict())
    fixed.set_image_size(48)
    assert fixed.pos_embed.shape == (1, 1 + 144, 32)
    assert fixed.config.img_size == (48, 48)
    torch.testing.assert_close(fixed(x), out_dynamic)


def test_set_image_size_non_square():
    model = tiny_vit(pos_embed="learn2d")
    model.set_image_size((32, 48))
    assert model.pos_embed2d.row.shape == (8, 16) and model.pos_embed2d.col.shape == (12, 16)
    assert model(torch.randn(2, 3, 32, 48)).shape == (2, 10)


def test_set_image_size_to_the_same_size_changes_nothing():
    model = tiny_vit()
    before = model.pos_embed.detach().clone()
    model.set_image_size(32)
    assert torch.equal(model.pos_embed, before)


def test_dynamic_padding_accepts_any_size():
    model = tiny_vit(dynamic_img_pad=True).eval()
    x = images(size=30)
    padded = torch.nn.functional.pad(x, (0, 2, 0, 2))
    torch.testing.assert_close(model(x), model(padded))
    assert model.forward_intermediates(x, 1, intermediates_only=True)[0].shape == (2, 32, 8, 8)


def test_grayscale_input():
    model = tiny_vit(in_chans=1)
    assert model(images(chans=1)).shape == (2, 10)


def test_seed_makes_models_and_training_passes_reproducible():
    def run():
        torch.manual_seed(123)
        model = randomize_head(tiny_vit(dropout=0.1, attn_dropout=0.1, drop_path=0.2)).train()
        return model, model(images())

    (m1, y1), (m2, y2) = run(), run()
    for (n, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items(), strict=True):
        assert torch.equal(a, b), n
    assert torch.equal(y1, y2)


def test_stochastic_depth_grows_linearly_and_is_off_in_eval():
    model = tiny_vit(depth=5, drop_path=0.4)
    assert [b.drop_path.p for b in model.blocks] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    model.eval()
    x = images()
    assert torch.equal(model(x), model(x))


def test_config_round_trips_through_json():
    model = tiny_vit(pos_embed="learn2d", pool="avg", representation_size=16, hybrid_layers=())
    text = model.config.to_json()
    config = vitkit.ViTConfig.from_json(text)
    assert config == model.config
    rebuilt = vitkit.VisionTransformer(config)
    rebuilt.load_state_dict(model.state_dict())


def test_default_path_compiles_without_graph_breaks():
    explanation = torch._dynamo.explain(tiny_vit().eval())(images())
    assert explanation.graph_break_count == 0, explanation.break_reasons


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_inference_agrees_with_eager(dtype):
    """Compiled graphs take the fused attention kernel in bf16 too (measured faster under inductor),
    so the two paths differ by rounding only: 1e-4 in fp32, 3 % of the logit scale in bf16."""
    model = randomize_head(tiny_vit()).eval().to(dtype)
    x = images(batch=3).to(dtype)
    with torch.inference_mode():
        eager = model(x).float()
        compiled = torch.compile(model)(x).float()
    tolerance = 1e-4 if dtype == torch.float32 else 0.03 * eager.abs().max().item()
    assert (compiled - eager).abs().max().item() <= tolerance


def test_grad_checkpointing_gives_the_same_gradients():
    model = randomize_head(tiny_vit(drop_path=0.0)).train()
    x = torch.randn(4, 3, 32, 32)
    grads = []
    for enabled in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enabled)
        model(x).square().sum().backward()
        grads.append({name: p.grad.clone() for name, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], msg=name)


@pytest.mark.parametrize("kernel", ["sdpa", "explicit"])
@pytest.mark.parametrize("query_chunk", [0, 3])
def test_each_attention_kernel_gives_the_same_logits_in_fp32_and_bf16(kernel, query_chunk):
    model = randomize_head(tiny_vit()).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reference = model(x)
        model.set_attention_kernel(kernel, query_chunk)
        assert model.attention_kernel == (kernel, query_chunk)
        forced = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x).float()
    torch.testing.assert_close(forced, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(low, reference, atol=5e-2, rtol=5e-2)


def test_an_unknown_attention_kernel_is_refused():
    with pytest.raises(ValueError, match="unknown attention kernel 'flash'; choose one of sdpa, explicit"):
        tiny_vit().set_attention_kernel("flash")


@pytest.mark.parametrize(("tokens", "query_chunk"), [(2 * 64 + 37, 64), (1025, 0)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_inference_attention_in_query_chunks_equals_the_whole(tokens, query_chunk, with_bias):
    """Without autograd the explicit kernel takes a chunk of queries at a time (64 at
    1,025 tokens by default), so the N × N weights never exist at once; the result is the same,
    bit for bit. The first case has three chunks, the last one short."""
    q, k, v = (torch.randn(1, 2, tokens, 16).bfloat16() for _ in range(3))
    bias = torch.randn(1, 2, tokens, tokens).bfloat16() if with_bias else None
    whole = attention(q, k, v, bias, 0.0, "explicit", query_chunk)  # autograd on: one piece
    with torch.no_grad():
        chunked = attention(q, k, v, bias, 0.0, "explicit", query_chunk)
    assert torch.equal(whole, chunked)
