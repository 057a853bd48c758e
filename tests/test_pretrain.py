"""Self-supervised pre-training: masked patch prediction's targets and corruption, MAE's
masking and target, and that both learn on real digits and hand their encoder to fine-tuning."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY, model_args_flags, run_until_checkpoint
from vitkit import create_model
from vitkit.cli.main import main
from vitkit.data.datasets.builtin import load_digits
from vitkit.data.datasets.image_datasets import collate_skipping_broken, preprocess_in_memory
from vitkit.data.transforms import eval_transform
from vitkit.pretrain import MaskedAutoencoder, MaskedPatchPrediction, mpp_corruption, patch_color_classes, patchify
from vitkit.pretrain.mae import unpatchify
from vitkit.pretrain.masking import KEPT, MASKED, RANDOM, UNTOUCHED
from vitkit.train import resolve_config, resume_run, train
from vitkit.train.objectives import build_objective
from vitkit.train.run import build_model


def encoder(**overrides):
    settings = dict(num_classes=0, img_size=8, in_chans=1, **TINY)
    settings.update(overrides)
    return create_model("Ti/16", **settings)


def pretrain_config(tmp_path, objective, **overrides):
    settings = {
        "data": "digits",
        "img_size": 8,
        "model_args": TINY,
        "epochs": 4,
        "batch_size": 64,
        "lr": 3e-3,
        "warmup_epochs": 0.2,
        "decoder_dim": 32,
        "decoder_depth": 1,
        "decoder_heads": 2,
        "out": str(tmp_path / objective),
        "checkpoint_every": 5,
        "crop_scale": None,
    }
    settings.update(overrides)
    return resolve_config(preset=f"{objective}-demo", overrides=settings)


# ------------------------------------------------------------------ masked patch prediction
def test_colour_classes_are_the_3_bit_mean_colour_of_each_patch():
    # RGB: patch 0 mean (0.3, 0.6, 0.99) → bins (2, 4, 7) → 2·64 + 4·8 + 7 = 167; 512 classes.
    pixels = torch.zeros(1, 3, 4, 8)
    pixels[0, :, :, :4] = torch.tensor([0.3, 0.6, 0.99])[:, None, None]
    pixels[0, 0, :, 4:] = torch.tensor([[0.0, 1.0, 0.0, 1.0]] * 4)  # red mean 0.5 → bin 4, others 0
    classes = patch_color_classes(pixels * 2 - 1, stride=4)  # model inputs are in [-1, 1]
    assert classes.tolist() == [[167, 4 * 64]]
    # One channel: 8 gray levels; 1.0 (white) falls in the top bin, not a ninth.
    gray = torch.tensor([0.0, 0.124, 0.126, 0.5, 0.874, 0.876, 1.0]).reshape(1, 1, 1, 7)
    assert patch_color_classes(gray * 2 - 1, stride=1).tolist() == [[0, 0, 1, 4, 6, 7, 7]]


@pytest.mark.parametrize("num_tokens", [16, 196])
def test_corruption_has_the_papers_proportions_in_every_image(num_tokens):
    kinds = mpp_corruption(500, num_tokens)
    corrupted = round(num_tokens / 2)
    counts = {kind: (kinds == kind).sum(dim=1) for kind in (UNTOUCHED, MASKED, RANDOM, KEPT)}
    assert (counts[UNTOUCHED] == num_tokens - corrupted).all()
    assert (counts[MASKED] == round(0.8 * corrupted)).all()
    assert (counts[RANDOM] == round(0.1 * corrupted)).all()
    assert (counts[MASKED] + counts[RANDOM] + counts[KEPT] == corrupted).all()
    # Which patches are hit is uniform over positions (500 images: 0.5 ± 0.07 at 3 sigma).
    rate = (kinds != UNTOUCHED).float().mean(dim=0)
    assert (rate - 0.5).abs().max() < 0.07


def test_mpp_replaces_the_chosen_embeddings_and_predicts_only_corrupted_patches(monkeypatch):
    model = MaskedPatchPrediction(encoder())
    images = torch.rand(4, 1, 8, 8) * 2 - 1
    seen = {}
    original_add = model.encoder.add_positions

    def spy(patches, grid):
        seen["patches"] = patches.detach().clone()
        return original_add(patches, grid)

    monkeypatch.setattr(model.encoder, "add_positions", spy)
    torch.manual_seed(1)
    kinds = mpp_corruption(4, 16)
    torch.manual_seed(1)
    output = model(images)
    clean, _ = model.encoder.embed_patches(images)
    fed = seen["patches"]
    assert torch.equal(fed[kinds == MASKED], model.mask_token[0].expand(int((kinds == MASKED).sum()), -1))
    assert torch.equal(fed[kinds == UNTOUCHED], clean[kinds == UNTOUCHED])
    assert torch.equal(fed[kinds == KEPT], clean[kinds == KEPT])
    # A random patch comes from the batch's embeddings (here: never the mask token).
    donors = clean.reshape(-1, clean.shape[-1])
    for row in fed[kinds == RANDOM]:
        assert (donors == row).all(dim=1).any()
    # The zero-initialised head predicts uniformly over the 8 gray levels.
    assert output.loss.item() == pytest.approx(torch.log(torch.tensor(8.0)).item(), abs=1e-5)


# ------------------------------------------------------------------ masked autoencoder
def test_mae_encoder_sees_only_a_quarter_of_the_patches():
    model = MaskedAutoencoder(encoder(), decoder_dim=16, decoder_depth=1, decoder_heads=2)
    lengths = []
    model.encoder.blocks[0].register_forward_hook(lambda m, args, out: lengths.append(args[0].shape[1]))
    predicted, hidden, grid = model.forward_masked(torch.rand(3, 1, 8, 8))
    assert lengths == [1 + 4]  # class token + 4 of 16 patches
    assert predicted.shape == (3, 16, 4) and grid == (4, 4)
    assert (hidden.sum(dim=1) == 12).all()


def test_mae_target_and_patch_order():
    images = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    patches = patchify(images, 2)
    assert patches.shape == (2, 6, 12)
    # Patch 1 is rows 0-1, columns 2-3; pixels in (row, column, channel) order.
    assert patches[0, 1, :3].tolist() == images[0, :, 0, 2].tolist()
    assert torch.equal(unpatchify(patches, 2, (2, 3), 3), images)
    target = MaskedAutoencoder(encoder(), decoder_dim=16, decoder_depth=1, decoder_heads=2).target(
        torch.rand(2, 1, 8, 8)
    )
    assert target.mean(dim=-1).abs().max() < 1e-5
    assert (target.var(dim=-1) - 1).abs().max() < 1e-3


def test_mae_refuses_models_it_cannot_mask():
    with pytest.raises(ValueError, match="hybrid"):
        MaskedAutoencoder(create_model("R26+S/32", num_classes=0, img_size=64))
    with pytest.raises(ValueError, match="relative"):
        MaskedAutoencoder(encoder(pos_embed="relative"))


# ------------------------------------------------------------------ end to end on digits
def _initial_held_out_loss(config):
    torch.manual_seed(config.seed)
    model = build_model(config, num_classes=0, in_chans=1)
    model.set_image_size(8)
    objective = build_objective(config, model, num_classes=10, device=torch.device("cpu"), precision="fp32")
    held_out = preprocess_in_memory(load_digits().val, eval_transform(8, 1))
    loader = torch.utils.data.DataLoader(held_out, batch_size=256, collate_fn=collate_skipping_broken)
    return objective.held_out_metrics(objective.module, loader).metrics["val_loss"]


@pytest.fixture(scope="module", params=["mpp", "mae"])
def pretrained(request, tmp_path_factory):
    config = pretrain_config(tmp_path_factory.mktemp("pretrain"), request.param, precision="fp32")
    return config, train(config, progress=False)


def test_pretraining_lowers_its_held_out_loss(pretrained):
    config, summary = pretrained
    before = _initial_held_out_loss(config)
    after = summary.final_metrics["val_loss"]
    assert after < 0.85 * before, (before, after)
    run_dir = Path(summary.run_dir)
    document = json.loads((run_dir / "config.json").read_text())
    assert document["vit"]["num_classes"] == 0 and document["class_names"] == []
    assert (run_dir / "curves.png").is_file()
    assert (run_dir / "reconstructions.png").is_file() == (config.objective == "mae")


@pytest.mark.slow
def test_fine_tuning_starts_from_the_pretrained_encoder(pretrained, tmp_path):
    _, summary = pretrained
    config = resolve_config(
        preset="demo",
        overrides={
            "data": "digits",
            "img_size": 8,
            "model_args": TINY,
            "init": summary.run_dir,
            "epochs": 4,
            "batch_size": 64,
            "lr": 3e-3,
            "out": str(tmp_path / "ft"),
        },
    )
    model = build_model(config, num_classes=10, in_chans=1)
    model.set_image_size(8)
    encoder_weights = load_file(str(Path(summary.run_dir) / "model.safetensors"))
    for name, value in model.state_dict().items():
        if not name.startswith("head."):
            assert torch.equal(value, encoder_weights[name]), name
    assert model.head.weight.abs().sum() == 0  # the new zero head
    # Pre-trained on the same 1,437 digits it does not beat scratch here (benchmarks/ measure
    # the real case: many unlabeled images); it must still learn: chance is 0.1.
    assert train(config, progress=False).final_top1 > 0.25


@pytest.mark.slow
def test_pretraining_resumes_exactly(tmp_path):
    # --deterministic: with PyTorch's default CPU kernels, 4 of 20 uninterrupted runs on an AVX2 EPYC
    # already differed from the first in one optimiser moment (0 of 20 with it)
    settings = {"epochs": 6, "deterministic": True}  # 6 epochs: time to stop it mid-run
    full = train(pretrain_config(tmp_path / "a", "mpp", **settings), progress=False)
    stopped = run_until_checkpoint(pretrain_config(tmp_path / "b", "mpp", **settings), min_step=27)
    resumed = resume_run(stopped, progress=False)
    a = load_file(str(Path(full.run_dir) / "checkpoint.safetensors"))
    b = load_file(str(Path(resumed.run_dir) / "checkpoint.safetensors"))
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_pretrain_from_the_cli(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["pretrain", "--objective", "mae", "--data", "digits", "--img-size", "8", "--epochs", "1", "--quiet"]
    args += ["--model-args", *model_args_flags(TINY), "--decoder-dim", "16", "--decoder-depth", "1"]
    args += ["--decoder-heads", "2", "--out", str(out)]
    assert main(args) == 0
    assert "mae pre-training, held-out loss" in capsys.readouterr().out
    assert json.loads((out / "train_config.json").read_text())["preset"] == "mae-demo"
    assert main(["pretrain", "--data", "digits"]) == 2
    assert "--objective mpp or --objective mae" in capsys.readouterr().err


def test_pretraining_on_a_flat_folder_of_unlabeled_images(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    images = load_digits().train.images[:200, 0].numpy()
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, pixels in enumerate(images):
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "run"
    args = ["pretrain", "--objective", "mpp", "--data", str(folder), "--in-chans", "1", "--img-size", "8"]
    args += ["--epochs", "1", "--batch-size", "32", "--quiet", "--out", str(out), "--model-args"]
    args += model_args_flags(TINY)
    assert main(args) == 0
    capsys.readouterr()
    # Classification still needs classes; an encoder has no classifier to evaluate.
    assert main(["train", "--data", str(folder), "--epochs", "1"]) == 2
    assert "no class sub-folders" in capsys.readouterr().err
    assert main(["eval", str(out)]) == 2
    assert "no classifier" in capsys.readouterr().err


def test_mae_always_hides_a_patch_and_checks_its_decoder():
    model = MaskedAutoencoder(encoder(img_size=4), mask_ratio=0.1, decoder_dim=16, decoder_depth=1, decoder_heads=2)
    _, hidden, _ = model.forward_masked(torch.rand(2, 1, 4, 4))
    assert (hidden.sum(dim=1) == 1).all()  # 4 patches at 10 %: one hidden, not none
    assert torch.isfinite(model(torch.rand(2, 1, 4, 4)).loss)
    with pytest.raises(ValueError, match="--decoder-dim 18 must be divisible by --decoder-heads 4"):
        MaskedAutoencoder(encoder(), decoder_dim=18, decoder_heads=4)
