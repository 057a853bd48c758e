"""Every numeric setting is checked before work starts: one line naming the setting, exit status 2."""

import math

import pytest

import vitkit
from conftest import tiny_vit
from vitkit.cli import main as cli
from vitkit.train import ConfigError, TrainConfig, resolve_config

TINY = ["--model-args", "patch_size=2", "embed_dim=32", "depth=2", "num_heads=2", "mlp_dim=64"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("values") / "model"
    network = tiny_vit(img_size=8, in_chans=1, patch_size=2)
    vitkit.save_model(folder, network, class_names=[str(i) for i in range(10)])
    return str(folder)


def run_cli(argv, capsys):
    """(exit status, the last stderr line): argparse exits, vitkit's own errors return 2."""
    try:
        status = cli.main(argv)
    except SystemExit as exit:
        status = exit.code
    return status, capsys.readouterr().err.strip().splitlines()[-1]


TRAIN = [
    (["--lr", "inf"], "--lr"),
    (["--weight-decay", "-1"], "--weight-decay"),
    (["--weight-decay", "nan"], "--weight-decay"),
    (["--betas", "0.9", "1.0"], "--betas"),
    (["--betas", "-0.1", "0.999"], "--betas"),
    (["--optimizer", "sgd", "--momentum", "1"], "--momentum"),
    (["--optimizer", "sgd", "--momentum", "nan"], "--momentum"),
    (["--mixup", "nan"], "--mixup"),
    (["--mixup", "inf"], "--mixup"),
    (["--epochs", "inf"], "--epochs"),
    (["--warmup-epochs", "inf"], "--warmup-epochs"),
    (["--model-args", "patch_size=0"], "patch_size"),
    (["--model-args", "num_heads=0"], "num_heads"),
]


@pytest.mark.parametrize(("flags", "named"), TRAIN, ids=[" ".join(f) for f, _ in TRAIN])
def test_a_training_setting_out_of_range_is_refused_naming_it(flags, named, tmp_path, capsys):
    argv = ["train", "--data", "digits", "--img-size", "8", *TINY, "--steps", "1", "--out", str(tmp_path / "r")]
    status, line = run_cli([*argv, *flags], capsys)
    assert status == 2
    assert line.startswith("vitkit: error:") and named in line
    assert not (tmp_path / "r").exists()  # refused before any work


def test_a_config_file_and_the_python_api_fail_as_the_flag_does(tmp_path):
    (tmp_path / "c.yaml").write_text("lr: .inf\n")
    with pytest.raises(ConfigError, match="--lr must be a finite number"):
        resolve_config(file=tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match="--lr must be a finite number"):
        TrainConfig(lr=math.inf)


def test_a_resolution_whose_activations_cannot_fit_is_refused_with_the_estimate(tmp_path, capsys):
    # The demo model has 7-pixel patches: 4,200 px is 360,000 tokens a block, batch 256. Learned
    # positions: its relative ones would first make a model too large to build (another refusal).
    argv = ["train", "--data", "digits", "--img-size", "4200", "--model-args", "pos_embed=learn"]
    argv += ["--out", str(tmp_path / "r"), "--quiet"]
    status, line = run_cli(argv, capsys)
    assert status == 2
    assert "--img-size 4200 cannot fit" in line and "GB of activations" in line and "tokens" in line


def test_a_size_the_patches_do_not_divide_is_named_as_given(tmp_path, capsys):
    # the hybrid's stride is 4 × the patch: 64 px, which divides neither 160 nor the registry's 224
    argv = ["train", "--data", "digits", "--img-size", "160", "--model-args", "hybrid_layers=[1]", "patch_size=16"]
    status, line = run_cli([*argv, "--out", str(tmp_path / "r"), "--quiet"], capsys)
    assert status == 2 and "image size (160, 160) is not divisible by the patch size 64" in line


def test_the_activation_estimate_is_a_lower_bound_of_what_autograd_keeps():
    import torch

    from vitkit.train.memory import activation_bytes

    model = tiny_vit(img_size=32).train()
    storages = {}

    def keep(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        model(torch.randn(4, 3, 32, 32)).sum()
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept = sum(n for ptr, n in storages.items() if ptr not in weights)
    estimate, _ = activation_bytes(
        model.config, tokens=65, batch=4, bytes_per_value=4, attention_weights=False, grad_checkpointing=False
    )
    assert 0 < estimate <= kept


def cli_cases(model):
    return [
        (["eval", model, "--data", "digits", "--batch-size", "0"], "--batch-size"),
        (["inspect", model, "--data", "digits", "--out", "x", "--count", "0"], "--count"),
        (["inspect", model, "--data", "digits", "--out", "x", "--count", "-1"], "--count"),
        (["inspect", model, "--data", "digits", "--out", "x", "--distance-images", "0"], "--distance-images"),
        (["benchmark", "--reps", "0"], "--reps"),
        (["benchmark", "--batch", "0"], "--batch"),
        (["fewshot", model, "--data", "digits", "--shots", "0"], "--shots"),
        (["fewshot", model, "--data", "digits", "--shots", "-1"], "--shots"),
        (["fewshot", model, "--data", "digits", "--seeds", "0"], "--seeds"),
        (["fewshot", model, "--data", "digits", "--l2", "nan"], "--l2"),
        (["linear-probe", model, "--data", "digits", "--train-images", "0"], "--train-images"),
        (["linear-probe", model, "--data", "digits", "--c", "0"], "--c"),
        (["serve", model, "--port", "99999"], "--port"),
        (["serve", model, "--max-upload-mb", "nan"], "--max-upload-mb"),
    ]


CLI_IDS = [
    "eval --batch-size 0",
    "inspect --count 0",
    "inspect --count -1",
    "inspect --distance-images 0",
    "benchmark --reps 0",
    "benchmark --batch 0",
    "fewshot --shots 0",
    "fewshot --shots -1",
    "fewshot --seeds 0",
    "fewshot --l2 nan",
    "linear-probe --train-images 0",
    "linear-probe --c 0",
    "serve --port 99999",
    "serve --max-upload-mb nan",
]


@pytest.mark.parametrize("case", range(len(CLI_IDS)), ids=CLI_IDS)
def test_a_command_setting_out_of_range_is_refused_naming_it(case, model, capsys):
    argv, named = cli_cases(model)[case]
    status, line = run_cli(argv, capsys)
    assert status == 2
    assert "error:" in line and f"argument {named}" in line


def test_the_library_refuses_what_the_flags_refuse(model):
    loaded = vitkit.load_model(model)
    from vitkit.probe import fewshot_evaluate, linear_probe

    with pytest.raises(ValueError, match="train_images must be at least 1"):
        linear_probe(loaded, "digits", train_images=0)
    with pytest.raises(ValueError, match="shots per class"):
        fewshot_evaluate(loaded, "digits", shots=[0])
    with pytest.raises(ValueError, match="at least one seed"):
        fewshot_evaluate(loaded, "digits", shots=[1], seeds=[])
