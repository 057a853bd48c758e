"""Pretrained weights by name, from a loopback Hub and a loopback Google bucket (tests/loopback.py)
that serve repos written by timm's and transformers' own save code: the peers load through the
same server, and vitkit must give their logits."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from loopback import LoopbackServer, configure_hub_env
from PIL import Image
from timm.models import save_for_hf
from transformers import ViTConfig as HFConfig
from transformers import ViTForImageClassification, ViTImageProcessor

import vitkit
import vitkit.cli.main
from vitkit.interop.download import DownloadError
from vitkit.interop.npz import save_npz

TIMM_REPO = "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"  # the default tag of vit_tiny_patch16_224


def images(size=224, count=2):
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(1))


def timm_repo(folder, *, safetensors=True):
    """A random-weight ViT-Ti/16 written by timm's own hub writer."""
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, weight_init="skip")
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(std=0.05)
    save_for_hf(model, str(folder), safe_serialization=safetensors)
    return folder


@pytest.fixture(scope="module")
def served(hub, tmp_path_factory):
    """The loopback hub with a timm repo (.bin only, as save_for_hf writes by default) and a
    transformers repo (save_pretrained + ViTImageProcessor)."""
    root = tmp_path_factory.mktemp("repos")
    hub.add_repo(TIMM_REPO, timm_repo(root / "timm", safetensors=False))
    config = HFConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        image_size=32,
        patch_size=8,
        layer_norm_eps=1e-12,
        num_labels=3,
        id2label={0: "apple", 1: "pear", 2: "plum"},
        label2id={"apple": 0, "pear": 1, "plum": 2},
    )
    torch.manual_seed(0)
    peer = ViTForImageClassification(config)
    peer.save_pretrained(root / "hf")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root / "hf")
    hub.add_repo("google/vit-tiny-test", root / "hf")
    return hub


def test_timm_and_vitkit_give_the_same_logits_by_name_tag_and_hub_id(served):
    peer = timm.create_model("vit_tiny_patch16_224", pretrained=True).eval()  # timm itself, through the server
    assert any(r.path.startswith(f"/{TIMM_REPO}/resolve/") for r in served.requests)
    with torch.no_grad():
        expected = peer(images())
        for model in (
            vitkit.create_model("vit_tiny_patch16_224", pretrained=True),
            vitkit.create_model("Ti/16", pretrained="augreg_in21k_ft_in1k"),
            vitkit.load_model("vit_tiny_patch16_224.augreg_in21k_ft_in1k").model,
            vitkit.load_model(f"hf-hub:{TIMM_REPO}@main").model,
        ):
            assert (model.eval()(images()) - expected).abs().max().item() <= 1e-4
    model, preprocess, names = vitkit.load_model("vit_tiny_patch16_224")
    assert names[285] == "Egyptian cat" and preprocess.interpolation == "bicubic"
    assert preprocess.resize_shorter == 248 and preprocess.img_size == (224, 224)  # crop_pct 0.9


def test_fine_tuning_a_pretrained_model_resamples_and_replaces_the_head(served):
    model = vitkit.create_model("vit_tiny_patch16_224", pretrained=True, num_classes=10, img_size=384)
    assert model.pos_embed.shape == (1, 577, 192) and torch.count_nonzero(model.head.weight) == 0


def test_a_transformers_repo_loads_with_its_labels_and_preprocessing(served):
    peer = ViTForImageClassification.from_pretrained("google/vit-tiny-test").eval()
    model, preprocess, names = vitkit.load_model("hf-hub:google/vit-tiny-test")
    assert names == ["apple", "pear", "plum"]
    assert preprocess.resize_shorter is None and preprocess.interpolation == "bilinear"  # ViTImageProcessor squashes
    with torch.no_grad():
        assert (model(images(32)) - peer(images(32)).logits).abs().max().item() <= 1e-4


def test_hub_errors_say_what_is_wrong(served):
    with pytest.raises(ValueError, match="no such repo"):
        vitkit.load_model("hf-hub:nobody/nothing")
    with pytest.raises(ValueError, match="ORG/REPO"):
        vitkit.load_model("hf-hub:just-a-name")
    with pytest.raises(ValueError, match="no revision"):
        vitkit.load_model("hf-hub:google/vit-tiny-test@v9")


def _vitkit(args, env):
    return subprocess.run(
        [sys.executable, "-m", "vitkit.cli.main", *args], env=env, capture_output=True, text=True, timeout=300
    )


def test_the_cli_by_name_online_then_offline_from_the_cache(tmp_path):
    """A server of its own, so it can be stopped: predict by name downloads into a fresh cache;
    with the server gone and HF_HUB_OFFLINE=1 the cache answers; an empty cache says what to do."""
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 200, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    server = LoopbackServer()
    server.add_repo(TIMM_REPO, timm_repo(tmp_path / "repo"))
    command = ["predict", "vit_tiny_patch16_224", str(tmp_path / "a.png"), "--top-k", "3", "--json"]
    with server:
        online = _vitkit(command, configure_hub_env(dict(os.environ), server.url, tmp_path / "hf"))
    assert online.returncode == 0, online.stderr
    top = json.loads(online.stdout)[0]["top"]
    assert len(top) == 3 and all(name in vitkit.interop.pretrained.imagenet1k_class_names() for name, _ in top)
    offline = _vitkit(command, configure_hub_env(dict(os.environ), server.url, tmp_path / "hf", offline=True))
    assert offline.returncode == 0, offline.stderr
    assert json.loads(offline.stdout)[0]["top"] == top
    empty = _vitkit(command, configure_hub_env(dict(os.environ), server.url, tmp_path / "empty", offline=True))
    assert empty.returncode == 2
    assert "not in the Hugging Face cache" in empty.stderr and "hf download" in empty.stderr
    assert "Traceback" not in empty.stderr


# ------------------------------------------------------------------ Google's bucket
@pytest.fixture()
def bucket(hub, tmp_path, monkeypatch):
    """A ViT-Ti (vit_jax layout, written by vitkit's writer, read by timm's loader in
    test_interop_npz) as gs://vit_models/imagenet21k/ViT-Ti_test.npz, and an empty vitkit cache."""
    model = vitkit.create_model("Ti/16", num_classes=5).eval()
    with torch.no_grad():
        model.head.weight.normal_(std=0.1)
    save_npz(tmp_path / "vit.npz", model.state_dict(), model.config.num_heads)
    hub.add_bucket_file("vit_models/imagenet21k/ViT-Ti_test.npz", tmp_path / "vit.npz")
    monkeypatch.setenv("VITKIT_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("VITKIT_GOOGLE_BUCKET_URL", f"{hub.url}/vit_models")
    return model


def test_a_google_file_by_name_downloads_once_with_progress(bucket, hub, capsys):
    loaded = vitkit.load_model("google:imagenet21k/ViT-Ti_test").model
    assert "ViT-Ti_test.npz" in capsys.readouterr().err  # the progress bar
    with torch.no_grad():
        assert torch.equal(loaded(images()), bucket(images()))
    gets = [r for r in hub.requests if r.path.endswith("ViT-Ti_test.npz")]
    vitkit.load_model("google:imagenet21k/ViT-Ti_test.npz")  # from the cache now
    assert len([r for r in hub.requests if r.path.endswith("ViT-Ti_test.npz")]) == len(gets) == 1


def test_a_cut_download_resumes_where_it_stopped(bucket, hub, tmp_path):
    size = (tmp_path / "vit.npz").stat().st_size
    hub.cut_next("vit_models/imagenet21k/ViT-Ti_test.npz", size // 3)
    vitkit.load_model("google:imagenet21k/ViT-Ti_test")
    ranges = [r.range for r in hub.requests if r.path.endswith("ViT-Ti_test.npz")][-2:]
    assert ranges == [None, f"bytes={size // 3}-"]
    cached = tmp_path / "cache" / "google" / "imagenet21k" / "ViT-Ti_test.npz"
    assert cached.read_bytes() == (tmp_path / "vit.npz").read_bytes()


def test_a_corrupted_download_is_detected_and_not_kept(bucket, hub, tmp_path):
    hub.corrupt("vit_models/imagenet21k/ViT-Ti_test.npz", times=1)
    with pytest.raises(DownloadError, match="corrupted"):
        vitkit.load_model("google:imagenet21k/ViT-Ti_test")
    assert not any((tmp_path / "cache").rglob("*.npz*"))
    vitkit.load_model("google:imagenet21k/ViT-Ti_test")  # the next try is clean


def test_google_errors_and_offline(bucket, monkeypatch):
    with pytest.raises(DownloadError, match="does not exist"):
        vitkit.load_model("google:imagenet21k/ViT-Nope")
    monkeypatch.setenv("VITKIT_OFFLINE", "1")
    with pytest.raises(DownloadError, match="not in vitkit's cache"):
        vitkit.load_model("google:imagenet21k/ViT-Ti_test")


def test_fine_tune_a_pretrained_model_on_a_folder_in_one_command(served, tmp_path):
    rng = np.random.default_rng(0)
    for label in ("red", "blue"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(8):
            pixels = rng.integers(0, 80, (40, 40, 3), dtype=np.uint8)
            pixels[..., 0 if label == "red" else 2] += 170
            Image.fromarray(pixels).save(tmp_path / "images" / label / f"{i}.png")
    args = ["train", "--init", "vit_tiny_patch16_224", "--preset", "paper-finetune", "--data", str(tmp_path / "images")]
    args += ["--img-size", "32", "--epochs", "1", "--batch-size", "4", "--accum-steps", "1", "--quiet"]
    assert vitkit.cli.main.main([*args, "--out", str(tmp_path / "run")]) == 0
    document = json.loads((tmp_path / "run" / "config.json").read_text())
    assert document["model_name"] == "vit_tiny_patch16_224 (fine-tuned)" and document["class_names"] == ["blue", "red"]
    tuned = vitkit.load_model(tmp_path / "run").model
    assert tuned.config.embed_dim == 192 and tuned.pos_embed.shape == (1, 5, 192)  # 2×2 patches + class


def test_a_missing_image_is_reported_before_any_download(served, tmp_path, capsys):
    before = len(served.requests)
    assert vitkit.cli.main.main(["predict", "vit_tiny_patch16_224", str(tmp_path / "nothing.jpg")]) == 2
    assert "does not exist" in capsys.readouterr().err and len(served.requests) == before


# ------------------------------------------------------------------ names that leave the cache
def test_a_hub_revision_that_leaves_the_cache_is_refused_and_nothing_is_written_outside_it(tmp_path):
    """A mirror behind HF_ENDPOINT that answers a revision named ``../../../../escape`` as a branch:
    huggingface_hub would write ``refs/<revision>`` four folders up, outside HF_HOME."""
    config = HFConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32)
    ViTForImageClassification(config).save_pretrained(tmp_path / "repo")
    escape = "../../../../escape"
    server = LoopbackServer()
    server.add_repo("org/repo", tmp_path / "repo", branches=(escape,))
    home = tmp_path / "cache" / "hf"
    with server:
        result = _vitkit(
            ["convert", f"hf-hub:org/repo@{escape}", str(tmp_path / "out"), "--to", "vitkit"],
            configure_hub_env(dict(os.environ), server.url, home),
        )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("vitkit: error:") and "not a branch, tag or commit name" in result.stderr
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_relative_to(tmp_path / "repo")]
    assert [p for p in outside if not p.is_relative_to(home)] == []
    assert server.requests == []  # refused before asking: nothing in the cache either


@pytest.mark.parametrize(
    "source", ["hf-hub:org/re po", "hf-hub:org/re..po", "hf-hub:org--x/repo", "hf-hub:org/repo@v 1", "hf-hub:o/r@a/.b"]
)
def test_hub_ids_against_the_hubs_rules_get_one_line_before_any_request(source, hub, tmp_path, capsys):
    before = len(hub.requests)
    assert vitkit.cli.main.main(["convert", source, str(tmp_path / "out"), "--to", "vitkit"]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"vitkit: error: {source!r}") and error.count("\n") == 1
    assert len(hub.requests) == before and not (tmp_path / "out").exists()


def test_a_google_name_that_leaves_the_cache_is_refused_before_anything_is_fetched(bucket, hub, tmp_path):
    hub.add_bucket_file("vit_models/../../escape.npz", tmp_path / "vit.npz")  # a bucket that would answer it
    before = len(hub.requests)
    with pytest.raises(DownloadError, match="outside the cache"):
        vitkit.load_model("google:../../escape")
    assert not (tmp_path / "escape.npz").exists() and len(hub.requests) == before
    vitkit.load_model("google:imagenet21k/./ViT-Ti_test")  # a name that stays inside is normalised
    assert (tmp_path / "cache" / "google" / "imagenet21k" / "ViT-Ti_test.npz").is_file()
