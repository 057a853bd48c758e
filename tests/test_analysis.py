"""The §4.5 analysis: the math on hand-made cases, the figures from a model trained on real data."""

import itertools
import json
import math

import pytest
import torch
from PIL import Image

import vitkit
from conftest import PAPER_VIT, tiny_vit
from vitkit import analysis, load_model, save_model
from vitkit.cli.main import main
from vitkit.train import resolve_config, train


def uniform(tokens, heads=1, batch=1):
    return torch.full((batch, heads, tokens, tokens), 1.0 / tokens)


def identity(tokens, heads=1, batch=1):
    return torch.eye(tokens).expand(batch, heads, tokens, tokens)


# ---------------------------------------------------------------- rollout
def test_rollout_of_identity_attention_stays_on_each_token():
    grid = (3, 4)
    attentions = [identity(1 + 12, heads=2)] * 3
    # The class token only ever attends to itself: nothing flows in from the patches.
    cls = analysis.attention_rollout(attentions, num_prefix_tokens=1, grid=grid)
    assert cls.shape == (1, 3, 4) and torch.count_nonzero(cls) == 0
    # Average pooling reads every patch once: each patch gets 1/N.
    avg = analysis.attention_rollout(attentions, num_prefix_tokens=1, grid=grid, pool="avg")
    torch.testing.assert_close(avg, torch.full((1, 3, 4), 1 / 12))


def test_rollout_mixes_in_the_residual_and_multiplies_layers_first_to_last():
    torch.manual_seed(0)
    tokens, heads = 5, 3
    attentions = [torch.randn(1, heads, tokens, tokens).softmax(-1) for _ in range(2)]
    # By hand: ½(mean over heads) + ½I per layer (the rows of both already sum to one), then
    # layer 2 × layer 1.
    per_layer = [0.5 * a[0].mean(0) + 0.5 * torch.eye(tokens) for a in attentions]
    expected = (per_layer[1] @ per_layer[0])[0, 1:].reshape(2, 2)
    got = analysis.attention_rollout(attentions, num_prefix_tokens=1, grid=(2, 2))[0]
    torch.testing.assert_close(got, expected)


# ---------------------------------------------------------------- attention distance
def test_a_head_that_attends_only_to_itself_has_distance_zero():
    distances = analysis.mean_attention_distance(
        [identity(1 + 16, heads=2, batch=3)], num_prefix_tokens=1, grid=(4, 4), patch_pixels=16
    )
    assert distances.shape == (1, 2) and torch.count_nonzero(distances) == 0


def test_a_uniform_head_scores_the_mean_pairwise_patch_distance():
    grid, pixels = (3, 5), 8
    centres = [(r * pixels, c * pixels) for r in range(grid[0]) for c in range(grid[1])]
    brute_force = sum(math.dist(a, b) for a, b in itertools.product(centres, centres)) / len(centres) ** 2
    # With a class token the uniform head also looks at it; that share has no place and is left out.
    for prefix in (0, 1):
        tokens = prefix + grid[0] * grid[1]
        distances = analysis.mean_attention_distance(
            [uniform(tokens), identity(tokens)], num_prefix_tokens=prefix, grid=grid, patch_pixels=pixels
        )
        assert distances[0, 0].item() == pytest.approx(brute_force, rel=1e-5)
        assert distances[1, 0].item() == 0


def test_attention_to_the_neighbour_on_the_right_is_one_patch_away():
    grid, pixels = (2, 2), 16
    weights = torch.zeros(1, 1, 4, 4)
    for query, key in ((0, 1), (1, 0), (2, 3), (3, 2)):
        weights[0, 0, query, key] = 1.0
    distances = analysis.mean_attention_distance([weights], num_prefix_tokens=0, grid=grid, patch_pixels=pixels)
    assert distances.item() == pytest.approx(16.0)


# ---------------------------------------------------------------- filters and position embeddings
def test_pca_of_filters_recovers_the_patterns_they_are_made_of():
    torch.manual_seed(0)
    model = tiny_vit(embed_dim=64, in_chans=1)
    size = 1 * 4 * 4
    patterns = torch.linalg.qr(torch.randn(size, 2))[0].T  # two orthonormal 4×4 filters
    # Zero-mean, uncorrelated strengths (the first varies 3× more), so the two patterns are
    # exactly the principal axes of these 64 filters rather than nearly so.
    centred = torch.randn(64, 2)
    strength = torch.linalg.qr(centred - centred.mean(dim=0))[0] * torch.tensor([3.0, 1.0])
    with torch.no_grad():
        model.patch_embed.proj.weight.copy_((strength @ patterns + 1e-4 * torch.randn(64, size)).view(64, 1, 4, 4))
    components, explained = analysis.embedding_filters(model, count=28)
    assert components.shape == (16, 1, 4, 4)  # no more components than pixels in a filter
    for index in range(2):
        assert abs(torch.dot(components[index].flatten(), patterns[index])) == pytest.approx(1.0, abs=1e-3)
    assert explained[0] > explained[1] > 0.05 and explained[:2].sum() == pytest.approx(1.0, abs=1e-3)


def test_pos_embed_similarity_of_every_learned_kind():
    for kind in ("learn", "learn2d", "sincos2d"):
        model = tiny_vit(pos_embed=kind)
        if kind != "sincos2d":
            for param in (model.pos_embed,) if kind == "learn" else (model.pos_embed2d.row, model.pos_embed2d.col):
                torch.nn.init.normal_(param)
        similarity = analysis.pos_embed_similarity(model)
        assert similarity.shape == (8, 8, 8, 8)
        diagonal = similarity.reshape(64, 64).diagonal()
        torch.testing.assert_close(diagonal, torch.ones(64), atol=1e-5, rtol=0)


def test_figures_that_do_not_apply_say_why():
    with pytest.raises(analysis.NotApplicable, match="no position embeddings"):
        analysis.pos_embed_similarity(tiny_vit(pos_embed="none"))
    with pytest.raises(analysis.NotApplicable, match="relative"):
        analysis.pos_embed_similarity(tiny_vit(pos_embed="relative"))
    hybrid = vitkit.create_model("R26+S/32", img_size=64, depth=1)
    with pytest.raises(analysis.NotApplicable, match="hybrid"):
        analysis.embedding_filters(hybrid)


def test_attention_maps_leave_the_fused_path_on():
    model = tiny_vit().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
    maps = analysis.attention_maps(model, x)
    assert len(maps) == 2 and maps[0].shape == (2, 4, 65, 65)
    torch.testing.assert_close(maps[1].sum(-1), torch.ones(2, 4, 65))
    with torch.no_grad():
        torch.testing.assert_close(model(x), before)


# ---------------------------------------------------------------- a model trained on real data
@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A small ViT trained on digits at 16 px in 4×4 patches (a 4×4 grid) with random-resized
    crops, long enough for its position embeddings to learn the image's layout (~15 s). Without
    the crops they did not here (neighbours -0.20, far patches 0.00): nothing then ties a
    position to its neighbours."""
    out = tmp_path_factory.mktemp("inspect") / "run"
    config = resolve_config(
        preset="demo",
        overrides={
            "data": "digits",
            "img_size": 16,
            "model_args": {"patch_size": 4, "embed_dim": 64, "depth": 2, "num_heads": 4, "mlp_dim": 128, **PAPER_VIT},
            "epochs": 20,
            "batch_size": 64,
            "lr": 3e-3,
            "warmup_epochs": 1,
            "crop_scale": [0.5, 1.0],
            "precision": "fp32",
            "out": str(out),
        },
    )
    train(config, progress=False)
    return out


def test_neighbouring_patches_have_more_similar_position_embeddings(digits_run):
    # The paper's Fig. 7 (centre): closer patches tend to have more similar position embeddings.
    # Measured for seeds 0-2 after 30 epochs: neighbours 0.34-0.38, three or more patches apart -0.08 to -0.03.
    model = load_model(digits_run).model
    similarity = analysis.pos_embed_similarity(model).reshape(16, 16)
    rows, cols = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    centres = torch.stack([rows.flatten(), cols.flatten()], 1).float()
    distance = torch.cdist(centres, centres)
    neighbours = similarity[distance == 1].mean()
    far = similarity[distance >= 3].mean()
    assert neighbours > far + 0.2, (neighbours, far)


def test_inspect_writes_every_figure_and_a_self_contained_page(digits_run, tmp_path, capsys):
    out = tmp_path / "figures"
    assert main(["inspect", str(digits_run), "--out", str(out), "--count", "5", "--distance-images", "64"]) == 0
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == [
        "attention_distance.png",
        "attention_heads_1.png",
        "attention_heads_2.png",
        "embedding_filters.png",
        "explanations.png",
        "pos_embed_similarity.png",
    ]
    for path in out.glob("*.png"):
        with Image.open(path) as image:
            assert image.size[0] > 200 and image.size[1] > 200
    page = (out / "index.html").read_text()
    assert page.count("data:image/png;base64,") == 6 and "src='attention" not in page
    scores = json.loads((out / "faithfulness.json").read_text())
    assert list(scores) == ["rollout", "relevance", "gradcam", "random"]
    assert all(0 <= s["deletion_auc"] <= 1 and 0 <= s["insertion_auc"] <= 1 for s in scores.values())
    printed = capsys.readouterr().out
    assert "open " in printed and "relevance  deletion" in printed and "Faithfulness of the explanations" in page


def test_inspect_explains_a_chosen_class_by_name(digits_run, tmp_path, capsys):
    out = tmp_path / "figures"
    args = ["inspect", str(digits_run), "--out", str(out), "--count", "2", "--distance-images", "2"]
    assert main([*args, "--class", "7", "--explain", "relevance", "--no-faithfulness"]) == 0
    assert (out / "explanations.png").exists() and not (out / "faithfulness.json").exists()
    assert "the predicted one" not in (out / "index.html").read_text()
    assert main([*args, "--class", "seven"]) == 2
    assert "no class 'seven'" in capsys.readouterr().err


def test_inspect_image_files_and_a_model_without_position_embeddings(tmp_path, capsys):
    model = tiny_vit(pos_embed="none", in_chans=1)
    save_model(tmp_path / "model", model)
    for index in range(2):
        Image.fromarray((torch.rand(32, 32) * 255).byte().numpy()).save(tmp_path / f"image{index}.png")
    out = tmp_path / "figures"
    assert main(["inspect", str(tmp_path / "model"), str(tmp_path / "image0.png"), str(tmp_path / "image1.png"),
                 "--out", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "skipped Position-embedding similarity" in printed and "no position embeddings" in printed
    assert not (out / "pos_embed_similarity.png").exists()
    assert "Not applicable" in (out / "index.html").read_text()


def test_inspect_without_images_or_data_is_a_clear_error(tmp_path, capsys):
    save_model(tmp_path / "model", tiny_vit())
    assert main(["inspect", str(tmp_path / "model"), "--out", str(tmp_path / "figures")]) == 2
    assert "--data" in capsys.readouterr().err


def test_inspect_average_pooled_and_hybrid_models(tmp_path):
    # Without a class token the figures read the mean patch query; a hybrid has no pixel filters.
    pooled = tiny_vit(class_token=False, pool="avg")
    report = analysis.inspect_model(pooled, torch.randn(3, 3, 32, 32), tmp_path / "pooled")
    assert not report.skipped and report.attention_distance.shape == (2, 4)
    hybrid = vitkit.create_model("R26+S/32", img_size=64, depth=1, num_classes=3)
    report = analysis.inspect_model(hybrid, torch.randn(2, 3, 64, 64), tmp_path / "hybrid")
    assert [title for title, _ in report.skipped] == ["Embedding filters (Fig. 7 left)"]
    assert (tmp_path / "hybrid" / "pos_embed_similarity.png").is_file()
