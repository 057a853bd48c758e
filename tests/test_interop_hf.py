"""Hugging Face transformers ViT folders ↔ vitkit, checked against transformers itself."""

import json

import pytest
import torch
from transformers import ViTConfig as HFConfig
from transformers import ViTForImageClassification

import vitkit
from vitkit.interop import save_hf

# ViT-Ti/16 and ViT-S/16 as transformers configs (eps 1e-6 as in Google's converted models).
SIZES = {"Ti/16": (192, 3, 768), "S/16": (384, 6, 1536)}


def hf_model(name, image_size=224, num_labels=5, eps=1e-6):
    dim, heads, mlp = SIZES[name]
    config = HFConfig(
        hidden_size=dim,
        num_hidden_layers=12,
        num_attention_heads=heads,
        intermediate_size=mlp,
        image_size=image_size,
        patch_size=16,
        layer_norm_eps=eps,
        num_labels=num_labels,
        id2label={i: f"class_{i}" for i in range(num_labels)},
        label2id={f"class_{i}": i for i in range(num_labels)},
    )
    torch.manual_seed(0)
    return ViTForImageClassification(config).eval()


def images(size=224):
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", list(SIZES))
def test_a_transformers_folder_loads_with_transformers_logits(name, tmp_path):
    peer = hf_model(name)
    peer.save_pretrained(tmp_path / "hf")
    model, _, class_names = vitkit.load_model(tmp_path / "hf")
    assert class_names == [f"class_{i}" for i in range(5)] and model.config.norm_eps == 1e-6
    with torch.no_grad():
        difference = (model(images()) - peer(images()).logits).abs().max().item()
    assert difference <= 1e-4


@pytest.mark.parametrize("name", list(SIZES))
def test_vitkit_models_load_in_transformers(name, tmp_path):
    torch.manual_seed(2)
    ours = vitkit.create_model(name, num_classes=4).eval()
    with torch.no_grad():
        ours.head.weight.normal_(std=0.02)
    save_hf(tmp_path / "out", ours, ["a", "b", "c", "d"])
    peer = ViTForImageClassification.from_pretrained(tmp_path / "out").eval()
    assert peer.config.id2label[2] == "c" and peer.config.layer_norm_eps == 1e-6
    with torch.no_grad():
        assert (ours(images()) - peer(images()).logits).abs().max().item() <= 1e-4


def test_layer_norm_eps_of_transformers_default_is_honoured(tmp_path):
    peer = hf_model("Ti/16", eps=1e-12)
    peer.save_pretrained(tmp_path / "hf")
    model = vitkit.load_model(tmp_path / "hf").model
    assert model.config.norm_eps == 1e-12
    with torch.no_grad():
        assert (model(images()) - peer(images()).logits).abs().max().item() <= 1e-4


def test_resolution_change_224_to_384_matches_transformers_interpolation(tmp_path):
    peer = hf_model("Ti/16")
    peer.save_pretrained(tmp_path / "hf")
    ours = vitkit.create_model("Ti/16", num_classes=5, img_size=384, norm_eps=1e-6, pos_embed_interp="bicubic")
    report = vitkit.load_weights(ours.eval(), tmp_path / "hf")
    assert "pos_embed" in report.adapted
    with torch.no_grad():
        theirs = peer(images(384), interpolate_pos_encoding=True).logits
        ours_logits = ours(images(384))
    # transformers interpolates bicubic without antialiasing and with its own sampling offsets, so
    # the two resamplings differ slightly; the logits agree to the resampling's precision.
    assert (ours_logits - theirs).abs().max().item() < 5e-2


def test_models_transformers_cannot_hold_are_refused(tmp_path):
    with pytest.raises(ValueError, match="learned 1-D position embeddings"):
        save_hf(tmp_path, vitkit.create_model("Ti/16", pos_embed="sincos2d"))
    with pytest.raises(ValueError, match="re-head it first"):
        save_hf(tmp_path, vitkit.create_model("Ti/16", representation_size=192))


def test_pooler_is_kept_only_when_asked(tmp_path):
    from transformers import ViTModel

    dim, heads, mlp = SIZES["Ti/16"]
    config = HFConfig(
        hidden_size=dim, num_hidden_layers=2, num_attention_heads=heads, intermediate_size=mlp, layer_norm_eps=1e-6
    )
    torch.manual_seed(0)
    peer = ViTModel(config, add_pooling_layer=True).eval()
    peer.save_pretrained(tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "vit"
    model = vitkit.load_model(tmp_path / "hf", keep_pre_logits=True).model
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(images()), pre_logits=True)
        torch.testing.assert_close(pooled, peer(images()).pooler_output, atol=1e-4, rtol=1e-4)
    assert isinstance(vitkit.load_model(tmp_path / "hf").model.pre_logits, torch.nn.Identity)


def test_convert_timm_file_to_vitkit_to_transformers_keeps_the_logits(tmp_path):
    import timm
    from safetensors.torch import save_file

    from vitkit.cli.main import main

    torch.manual_seed(0)
    peer = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3).eval()
    with torch.no_grad():
        peer.head.weight.normal_(std=0.02)
    weights = str(tmp_path / "timm.safetensors")
    save_file(peer.state_dict(), weights)
    assert main(["convert", weights, str(tmp_path / "vk"), "--to", "vitkit", "--architecture", "Ti/16"]) == 0
    assert main(["convert", str(tmp_path / "vk"), str(tmp_path / "hf"), "--to", "hf"]) == 0
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "back.safetensors"), "--to", "timm"]) == 0
    hf = ViTForImageClassification.from_pretrained(tmp_path / "hf").eval()
    back = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3).eval()
    from safetensors.torch import load_file

    back.load_state_dict(load_file(str(tmp_path / "back.safetensors")))
    with torch.no_grad():
        expected = peer(images())
        assert (hf(images()).logits - expected).abs().max().item() <= 1e-4
        assert (back(images()) - expected).abs().max().item() <= 1e-4


def test_convert_needs_an_architecture_for_a_bare_file(tmp_path, capsys):
    from safetensors.torch import save_file

    from vitkit.cli.main import main

    save_file(vitkit.create_model("Ti/16").state_dict(), str(tmp_path / "w.safetensors"))
    assert main(["convert", str(tmp_path / "w.safetensors"), str(tmp_path / "out"), "--to", "hf"]) == 2
    assert "name one with --architecture" in capsys.readouterr().err
