"""open_weights and what comes with weights: preprocessing, class names, the pretrained table, the
transformers pipeline on folders vitkit writes, file modes, and weights that do not fit."""

import json
import os
import stat

import numpy as np
import pytest
import safetensors.torch
import timm
import torch
from PIL import Image
from timm.models import save_for_hf
from transformers import pipeline

import vitkit
import vitkit.cli.main
from conftest import logged, tiny_vit
from vitkit.data.transforms import Preprocessing
from vitkit.interop import convert, list_pretrained, open_weights, save_hf, save_model
from vitkit.interop.npz import save_npz
from vitkit.interop.pretrained import find_pretrained, imagenet1k_class_names
from vitkit.models import list_models
from vitkit.train.checkpoint import save_checkpoint


def photo(height, width, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def write_checkpoint(path, model):
    """A training checkpoint as the loop writes it (model, optimiser, RNG)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    save_checkpoint(path, model=model, optimizer=optimizer, scheduler=scheduler, ema=None, progress={})


def test_centre_crop_follows_timms_crop_pct_and_reads_old_folders():
    assert Preprocessing.centre_crop(224, 3, 0.9).resize_shorter == 248  # floor(224 / 0.9), as timm
    assert Preprocessing.centre_crop(224, 3, 0.875).resize_shorter == 256
    old = Preprocessing.from_dict({"img_size": [16, 16], "in_chans": 1, "crop_fraction": 1.0, "mean": 0.5, "std": 0.5})
    assert old == Preprocessing((16, 16), 1, resize_shorter=16, mean=(0.5,), std=(0.5,))
    assert Preprocessing.from_dict(old.to_dict()) == old
    image = old(photo(40, 30))
    assert image.shape == (1, 16, 16) and image.min() >= -1.0 and image.max() <= 1.0


@pytest.mark.parametrize(
    "preprocessing",
    [
        Preprocessing.centre_crop(32, 3, 0.875, interpolation="bicubic"),
        Preprocessing(32),
        Preprocessing.centre_crop(32),
    ],
    ids=["timm-like crop", "squash", "vitkit's own"],
)
def test_transformers_pipeline_on_a_converted_folder_gives_vitkits_probabilities(preprocessing, tmp_path):
    model = tiny_vit(num_classes=5, patch_size=8).eval()
    with torch.no_grad():
        model.head.weight.normal_(std=0.5)
    names = ["cat", "dog", "bird", "fish", "frog"]
    save_model(tmp_path / "run", model, class_names=names, preprocessing=preprocessing)
    convert(tmp_path / "run", tmp_path / "hf", to="hf", metrics={"held-out final top1": "90.00 %"})
    classify = pipeline("image-classification", model=str(tmp_path / "hf"), top_k=5)
    loaded = vitkit.load_model(tmp_path / "hf")  # back again: the same preprocessing
    assert loaded.preprocess == preprocessing
    for size in [(32, 32), (50, 80), (97, 41), (33, 64)]:  # square, and odd and even crop margins
        image = photo(*size)
        with torch.no_grad():
            ours = model(preprocessing(image).unsqueeze(0)).softmax(-1)[0]
        theirs = {answer["label"]: answer["score"] for answer in classify(image)}
        assert max(abs(ours[i].item() - theirs[name]) for i, name in enumerate(names)) <= 1e-4
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "pipeline_tag: image-classification" in card and "90.00 %" in card


def test_a_gray_model_converts_with_a_warning_that_the_pipeline_cannot_run_it(tmp_path, caplog):
    model = tiny_vit(in_chans=1)
    with logged(caplog, "pipeline"):
        save_hf(tmp_path / "hf", model)
    assert not (tmp_path / "hf" / "preprocessor_config.json").exists()
    assert vitkit.load_model(tmp_path / "hf").model.config.in_chans == 1


def test_files_vitkit_writes_are_readable_by_others(tmp_path):
    previous = os.umask(0o022)
    try:
        model = tiny_vit()
        save_model(tmp_path / "model", model)
        save_hf(tmp_path / "hf", model)
        write_checkpoint(tmp_path / "checkpoint.safetensors", model)
    finally:
        os.umask(previous)
    written = [*(tmp_path / "model").iterdir(), *(tmp_path / "hf").iterdir(), tmp_path / "checkpoint.safetensors"]
    assert len(written) == 7
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_a_training_checkpoint_loads_as_weights(tmp_path):
    model = tiny_vit()
    write_checkpoint(tmp_path / "checkpoint.safetensors", model)
    again = tiny_vit()
    torch.nn.init.zeros_(again.blocks[0].attn.qkv.weight)
    report = vitkit.load_weights(again, tmp_path / "checkpoint.safetensors")
    assert not report.missing and not report.unexpected
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True))


def test_weights_that_do_not_fit_never_load_silently(tmp_path, capsys):
    torch.save({"encoder.weight": torch.zeros(3, 3), "decoder.bias": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"cannot load .*other.pth.*tensors are not in them"):
        vitkit.load_weights(tiny_vit(), tmp_path / "other.pth")
    with pytest.raises(ValueError, match="cannot load"):
        vitkit.create_model("Ti/16", weights=tmp_path / "other.pth")
    code = vitkit.cli.main.main(
        ["convert", str(tmp_path / "other.pth"), str(tmp_path / "out"), "--to", "vitkit", "--architecture", "Ti/16"]
    )
    assert code == 2 and "cannot load" in capsys.readouterr().err and not (tmp_path / "out").exists()
    save_model(tmp_path / "model", tiny_vit())
    code = vitkit.cli.main.main(
        ["convert", str(tmp_path / "model"), str(tmp_path / "b16"), "--to", "vitkit", "--architecture", "B/16"]
    )
    assert code == 2 and "drop --architecture" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["Ti/16", "R26+S/32"])
def test_a_google_npz_says_what_architecture_it_holds(name, tmp_path):
    ours = vitkit.create_model(name, num_classes=7, img_size=64 if "+" not in name else 96).eval()
    save_npz(tmp_path / "vit.npz", ours.state_dict(), ours.config.num_heads)
    weights = open_weights(tmp_path / "vit.npz")
    assert weights.config.replace(norm_eps=ours.config.norm_eps) == ours.config
    loaded = vitkit.load_model(tmp_path / "vit.npz").model
    images = torch.randn(2, 3, *ours.config.img_size)
    with torch.no_grad():
        assert torch.equal(loaded(images), ours(images))


def test_a_timm_hub_folder_loads_with_timms_logits_and_preprocessing(tmp_path):
    peer = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=1000).eval()
    save_for_hf(peer, str(tmp_path / "repo"), safe_serialization=True)
    model, preprocess, names = vitkit.load_model(tmp_path / "repo")
    assert names[0] == "tench, Tinca tinca" and len(names) == 1000
    expected = timm.data.resolve_data_config({}, model=peer)
    assert preprocess.interpolation == expected["interpolation"]
    assert preprocess.resize_shorter == int(224 / expected["crop_pct"]) and preprocess.mean == expected["mean"]
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert (model(images) - peer(images)).abs().max().item() <= 1e-4


def test_the_pretrained_table_is_consistent():
    rows = list_pretrained()
    timm_rows = [r for r in rows if not r.name.startswith(("google:", "hf-hub:"))]
    assert len(timm_rows) == 35 and all(r.architecture in list_models() for r in timm_rows)
    for arch in {r.architecture for r in timm_rows}:
        assert sum(r.default for r in timm_rows if r.architecture == arch) == 1, arch
        assert vitkit.get_config(arch).img_size[0] == find_pretrained(arch).img_size
    assert find_pretrained("B/16").name == "vit_base_patch16_224.augreg2_in21k_ft_in1k"  # timm's default
    assert find_pretrained("vit_base_patch16_224", "augreg_in1k").top1 == 79.15
    assert all(r.source.startswith(("hf-hub:", "google:")) for r in rows)
    with pytest.raises(ValueError, match="did you mean 'vit_base_patch16_224'"):
        find_pretrained("vit_bas_patch16_224")
    with pytest.raises(ValueError, match="augreg_in21k_ft_in1k"):
        find_pretrained("vit_tiny_patch16_224.augreg_in21k_ft")


def test_imagenet_class_names_ship_with_the_package():
    names = imagenet1k_class_names()
    assert len(names) == 1000 and names[0] == "tench, Tinca tinca" and names[-1].startswith("toilet tissue")
    assert names[134] == names[517] == "crane"  # the bird and the machine: key on the index


def test_an_unknown_name_or_missing_path_says_so(tmp_path):
    with pytest.raises(ValueError, match="did you mean"):
        vitkit.load_model("vit_small_patch16_22")
    with pytest.raises(ValueError, match="its tags are augreg_in21k_ft_in1k, augreg_in1k"):
        vitkit.load_model("vit_small_patch16_224.augreg_in1")
    with pytest.raises(ValueError, match="does not exist"):
        vitkit.load_model(tmp_path / "run-that-never-was")
    with pytest.raises(ValueError, match="does not exist"):
        vitkit.load_model(tmp_path / "nothing.safetensors")
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="not a vitkit model config"):
        vitkit.load_model(tmp_path / "cfg")


def test_eval_maps_data_classes_to_the_models_by_name_or_imagenet_id(tmp_path, capsys):
    from vitkit.interop.pretrained import imagenet1k_synsets

    model = tiny_vit(num_classes=1000)
    save_model(tmp_path / "in1k", model, class_names=imagenet1k_class_names())
    save_model(tmp_path / "animals", tiny_vit(num_classes=3), class_names=["cat", "dog", "bird"])
    for folder, classes in (("imagenet", imagenet1k_synsets()[3:5]), ("subset", ["bird", "cat"]), ("bad", ["fish"])):
        for split in ("train", "val"):  # ImageNet's own layout
            for name in classes:
                (tmp_path / folder / split / name).mkdir(parents=True)
                for i in range(3):
                    photo(40, 40, seed=i).save(tmp_path / folder / split / name / f"{i}.png")
    main = vitkit.cli.main.main
    assert main(["eval", str(tmp_path / "in1k"), "--data", str(tmp_path / "imagenet"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 6 and set(result["per_class"]) == set(imagenet1k_class_names())
    assert main(["eval", str(tmp_path / "animals"), "--data", str(tmp_path / "subset"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 6
    assert main(["eval", str(tmp_path / "animals"), "--data", str(tmp_path / "bad")]) == 2
    assert "fish is not among them" in capsys.readouterr().err


def test_class_names_from_a_file_and_predict_errors(tmp_path, capsys):
    save_model(tmp_path / "model", tiny_vit(num_classes=3))
    (tmp_path / "names.txt").write_text("cat\ndog\nbird\n")
    assert vitkit.load_model(tmp_path / "model", class_names=tmp_path / "names.txt").class_names == [
        "cat",
        "dog",
        "bird",
    ]
    (tmp_path / "two.txt").write_text("cat\ndog\n")
    with pytest.raises(ValueError, match="holds 2 class names but the model has 3"):
        vitkit.load_model(tmp_path / "model", class_names=tmp_path / "two.txt")
    photo(40, 40).save(tmp_path / "a.png")
    (tmp_path / "empty").mkdir()
    main = vitkit.cli.main.main
    assert main(["predict", str(tmp_path / "model"), str(tmp_path / "empty")]) == 2
    assert "no image files" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stopped:  # argparse refuses it, naming the flag
        main(["predict", str(tmp_path / "model"), str(tmp_path / "a.png"), "--top-k", "0"])
    assert stopped.value.code == 2 and "--top-k: must be at least 1, got 0" in capsys.readouterr().err
    args = ["predict", str(tmp_path / "model"), str(tmp_path / "a.png"), "--class-names", str(tmp_path / "names.txt")]
    assert main(args) == 0 and capsys.readouterr().out.split()[1] in ("cat", "dog", "bird")


def test_transformers_pipeline_scores_a_converted_multi_label_model_with_sigmoids(tmp_path):
    model = tiny_vit(num_classes=3, patch_size=8).eval()
    with torch.no_grad():
        model.head.weight.normal_(std=0.5)
    names = ["car", "person", "bicycle"]
    save_model(tmp_path / "run", model, class_names=names, threshold=0.4)
    convert(tmp_path / "run", tmp_path / "hf", to="hf")
    classify = pipeline("image-classification", model=str(tmp_path / "hf"), top_k=3)
    image = photo(40, 40)
    with torch.no_grad():
        ours = model(Preprocessing.centre_crop(32)(image).unsqueeze(0)).sigmoid()[0]
    theirs = {answer["label"]: answer["score"] for answer in classify(image)}
    assert max(abs(ours[i].item() - theirs[name]) for i, name in enumerate(names)) <= 1e-4
    assert abs(sum(theirs.values()) - 1) > 0.01  # sigmoids, not a softmax


# ------------------------------------------------------------------ weights that cannot be right
def _hf_folder(folder, **changes):
    """A transformers ViT folder written by save_pretrained (tiny), with ``changes`` to its weights."""
    from transformers import ViTConfig as HFConfig
    from transformers import ViTForImageClassification

    config = HFConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32)
    peer = ViTForImageClassification(config)
    with torch.no_grad():
        for name, change in changes.items():
            change(peer.get_parameter(name))
    peer.save_pretrained(folder)
    return folder


def test_weights_holding_nan_or_inf_are_refused_naming_the_tensor_unless_allowed(tmp_path, capsys, monkeypatch, caplog):
    monkeypatch.setenv("VITKIT_ALLOW_NONFINITE", "0")  # restored after the test: the CLI flag sets it
    model = tiny_vit()
    with torch.no_grad():
        model.blocks[1].mlp.fc2.bias[3] = float("inf")
    save_model(tmp_path / "vitkit", model)
    nan_query = {"vit.layers.0.attention.q_proj.weight": lambda p: p[0, :2].fill_(float("nan"))}
    _hf_folder(tmp_path / "hf", **nan_query)
    with pytest.raises(ValueError, match=r"blocks\.1\.mlp\.fc2\.bias \(1 of 32 values\).*--allow-nonfinite"):
        vitkit.load_model(tmp_path / "vitkit")
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.qkv\.weight \(2 of 3,072 values\)"):
        open_weights(tmp_path / "hf")
    with logged(caplog, r"NON-FINITE.*blocks\.1\.mlp\.fc2\.bias"):
        loaded = vitkit.load_model(tmp_path / "vitkit", allow_nonfinite=True)
    assert loaded.model.blocks[1].mlp.fc2.bias.isinf().sum() == 1
    out = str(tmp_path / "out")
    assert vitkit.cli.main.main(["convert", str(tmp_path / "hf"), out, "--to", "vitkit"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("vitkit: error:") and "qkv.weight" in error and error.count("\n") == 1
    with logged(caplog, "LOADING NON-FINITE WEIGHTS"):  # the CLI prints it as "vitkit: warning:"
        assert vitkit.cli.main.main(["convert", str(tmp_path / "hf"), out, "--to", "vitkit", "--allow-nonfinite"]) == 0


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.uint8])
def test_integer_or_bool_tensors_where_floats_belong_are_refused(dtype, tmp_path, capsys):
    model = tiny_vit()
    state = model.state_dict()
    state["pos_embed"] = state["pos_embed"].to(dtype)
    torch.save(state, tmp_path / "weights.pth")
    with pytest.raises(ValueError, match=rf"pos_embed is {str(dtype).removeprefix('torch.')} where"):
        open_weights(tmp_path / "weights.pth", architecture=model.config, allow_nonfinite=True)
    weights = _hf_folder(tmp_path / "hf") / "model.safetensors"
    tensors = safetensors.torch.load_file(weights)
    tensors["vit.embeddings.cls_token"] = tensors["vit.embeddings.cls_token"].to(dtype)
    safetensors.torch.save_file(tensors, weights)
    photo(40, 40).save(tmp_path / "a.png")
    assert vitkit.cli.main.main(["predict", str(tmp_path / "hf"), str(tmp_path / "a.png")]) == 2
    assert f"cls_token is {str(dtype).removeprefix('torch.')} where" in capsys.readouterr().err


# ------------------------------------------------------------------ configs checked before anything is allocated
def _edit_config(folder, change):
    path = folder / "config.json"
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))
    return folder


def test_a_config_too_large_to_be_meant_is_refused_before_allocating(tmp_path, monkeypatch):
    monkeypatch.delenv("VITKIT_MAX_PARAMS", raising=False)
    claims = {"hidden_size": 1_000_000, "num_hidden_layers": 10_000}
    huge = _edit_config(_hf_folder(tmp_path / "hf"), lambda c: c.update(claims))
    with pytest.raises(ValueError, match=r"would hold 4e\+16 numbers .* over the limit of 2e\+09"):
        vitkit.load_model(huge)  # built first, it would ask for petabytes; refused in well under a second
    timm_size = {"pretrained_cfg": {"input_size": [3, 65536, 65536]}, "architecture": "vit_tiny_patch16_224"}
    (tmp_path / "timm").mkdir()
    (tmp_path / "timm" / "config.json").write_text(json.dumps(timm_size))
    safetensors.torch.save_file({"x": torch.zeros(1)}, tmp_path / "timm" / "model.safetensors")
    with pytest.raises(ValueError, match=r"largest tensor is pos_embed \(1, 16777217, 192\)"):
        vitkit.load_model(tmp_path / "timm")
    config = vitkit.get_config("Ti/16")
    assert vitkit.models.parameter_count(config) == sum(p.numel() for p in vitkit.create_model("Ti/16").parameters())
    with pytest.raises(ValueError, match="over the limit of 1e\\+06"):
        vitkit.models.VisionTransformer(config, max_params=1_000_000)
    monkeypatch.setenv("VITKIT_MAX_PARAMS", "1e6")
    with pytest.raises(ValueError, match=r"VITKIT_MAX_PARAMS=\.\.\."):
        vitkit.create_model("Ti/16")
    monkeypatch.setenv("VITKIT_MAX_PARAMS", "6e6")  # Ti/16 holds 5.7 million
    assert vitkit.create_model("Ti/16").config == config


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.pop("hidden_size"), "config.json has no hidden_size"),
        (lambda c: c.update(id2label=["cat", "dog"]), "id2label must map class indices to names"),
        (lambda c: c.update(image_size=32.5), r"image_size must be an integer ≥ 1, got 32\.5"),
        (lambda c: c.update(num_attention_heads="2"), "num_attention_heads must be an integer"),
    ],
)
def test_a_malformed_transformers_config_names_its_field(change, message, tmp_path, capsys):
    folder = _edit_config(_hf_folder(tmp_path / "hf"), change)
    with pytest.raises(ValueError, match=message):
        open_weights(folder)
    photo(40, 40).save(tmp_path / "a.png")
    assert vitkit.cli.main.main(["predict", str(folder), str(tmp_path / "a.png")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("vitkit: error:") and error.count("\n") == 1


def test_a_missing_query_tensor_or_a_zero_std_is_refused_naming_it(tmp_path):
    folder = _hf_folder(tmp_path / "hf")
    tensors = safetensors.torch.load_file(folder / "model.safetensors")
    del tensors["vit.encoder.layer.0.attention.attention.query.weight"]
    safetensors.torch.save_file(tensors, folder / "model.safetensors")
    with pytest.raises(ValueError, match=r"no vit\.encoder\.layer\.0\.attention\.attention\.query\.weight"):
        open_weights(folder)
    peer = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10)
    peer.pretrained_cfg = {**peer.pretrained_cfg, "std": (0.0, 0.0, 0.0)}
    save_for_hf(peer, str(tmp_path / "timm"), safe_serialization=True)
    with pytest.raises(ValueError, match=r"std must be finite and above 0, got \(0\.0, 0\.0, 0\.0\)"):
        vitkit.load_model(tmp_path / "timm")
    with pytest.raises(ValueError, match="std must be finite and above 0"):
        Preprocessing(img_size=32, std=(0.5, 0.0, 0.5))
