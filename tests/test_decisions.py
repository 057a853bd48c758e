"""Kernels and precision chosen by measuring the machine: measured once, cached, forced, and
measured again when the cache is wrong or stale."""

import json
import time
from pathlib import Path

import pytest
import torch

import vitkit
from conftest import digits_config, logged, randomize_head, tiny_vit
from vitkit import decisions
from vitkit.cli.main import main
from vitkit.decisions import decide, decide_attention_for, decide_optimizer, set_up_inference
from vitkit.device import autocast
from vitkit.packed import PackedLinear
from vitkit.train import train

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _measured(monkeypatch, tmp_path):
    """Nothing forced (conftest forces the kernels for every other test), and an empty cache."""
    for variable in decisions.ENVIRONMENT.values():
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("VITKIT_HOME", str(tmp_path / "home"))


CHOICES = ("fast", "slow")


def _sleeps(fast, slow):
    return {"fast": lambda: time.sleep(fast), "slow": lambda: time.sleep(slow)}


def test_the_faster_is_chosen_then_cached_for_this_machine():
    first = decide("attention", "a situation", CHOICES, lambda: _sleeps(0.0, 0.01), CPU)
    assert (first.choice, first.how) == ("fast", "measured")
    assert first.seconds["slow"] > first.seconds["fast"]
    cache = json.loads(decisions.cache_path().read_text())
    assert list(cache) == [decisions.machine_fingerprint(CPU)]
    assert cache[decisions.machine_fingerprint(CPU)]["attention: a situation"]["choice"] == "fast"
    # Now the other is faster, but the cache answers without measuring.
    again = decide("attention", "a situation", CHOICES, lambda: _sleeps(0.01, 0.0), CPU)
    assert (again.choice, again.how) == ("fast", "cached")
    assert "attention for a situation: fast (cached: fast" in str(again)
    # Another situation is measured on its own.
    assert decide("attention", "another situation", CHOICES, lambda: _sleeps(0.01, 0.0), CPU).choice == "slow"


def test_an_environment_variable_forces_a_choice_and_a_wrong_one_says_what_to_use(monkeypatch):
    monkeypatch.setenv("VITKIT_ATTENTION", "slow")
    forced = decide("attention", "x", CHOICES, lambda: _sleeps(0.0, 0.01), CPU)
    assert (forced.choice, forced.how) == ("slow", "set by VITKIT_ATTENTION")
    assert not decisions.cache_path().exists()  # nothing measured, nothing cached
    monkeypatch.setenv("VITKIT_ATTENTION", "flash")
    with pytest.raises(ValueError, match=r"VITKIT_ATTENTION='flash' is not a choice here; use one of fast, slow"):
        decide("attention", "x", CHOICES, lambda: _sleeps(0.0, 0.01), CPU)
    monkeypatch.setenv("VITKIT_OPTIMIZER", "explicit:64")  # a query chunk is an attention choice only
    with pytest.raises(ValueError, match=r"VITKIT_OPTIMIZER='explicit:64' is not a choice here"):
        decide("optimizer", "x", ["foreach", "fused"], lambda: 1 / 0, CPU)


def test_a_cache_with_an_unknown_choice_or_unreadable_is_measured_over(caplog):
    decide("optimizer", "x", CHOICES, lambda: _sleeps(0.0, 0.01), CPU)
    path = decisions.cache_path()
    cache = json.loads(path.read_text())
    cache[decisions.machine_fingerprint(CPU)]["optimizer: x"]["choice"] = "a kernel of another version"
    path.write_text(json.dumps(cache))
    assert decide("optimizer", "x", CHOICES, lambda: _sleeps(0.0, 0.01), CPU).how == "measured"
    path.write_text("{not json")
    with logged(caplog, rf"ignoring {path}: .*measuring again"):
        remeasured = decide("optimizer", "x", CHOICES, lambda: _sleeps(0.0, 0.01), CPU)
    assert remeasured.how == "measured"
    assert json.loads(path.read_text())[decisions.machine_fingerprint(CPU)]["optimizer: x"]["choice"] == "fast"


def test_a_torch_or_vitkit_upgrade_measures_again(monkeypatch):
    decide("attention", "x", CHOICES, lambda: _sleeps(0.0, 0.01), CPU)
    monkeypatch.setattr(torch, "__version__", "99.0.0")
    assert "torch 99.0.0" in decisions.machine_fingerprint(CPU)
    assert decide("attention", "x", CHOICES, lambda: _sleeps(0.0, 0.01), CPU).how == "measured"
    # vitkit's candidates change between versions (a float precision's trial packs its layers now)
    monkeypatch.setattr(decisions, "__version__", "99.1.0")
    assert "vitkit 99.1.0" in decisions.machine_fingerprint(CPU)
    assert decide("attention", "x", CHOICES, lambda: _sleeps(0.0, 0.01), CPU).how == "measured"
    assert len(json.loads(decisions.cache_path().read_text())) == 3  # every version's choices kept


@pytest.mark.parametrize("training", [False, True])
def test_the_attention_trial_times_each_kernel_on_the_models_shapes(training):
    model = tiny_vit()
    decision = decide_attention_for(model, batch=4, img_size=32, dtype=torch.float32, training=training)
    assert set(decision.seconds) == {"sdpa", "explicit"}
    assert decision.choice == min(decision.seconds, key=decision.seconds.get)
    mode = "training" if training else "inference"
    assert decision.situation == f"cpu float32 {mode}, ~128 tokens, heads of 8, ~16 maps"


def test_inference_at_many_tokens_also_times_query_chunks():
    model = tiny_vit(img_size=256, patch_size=8)  # 1,025 tokens: the default chunk is 64 queries
    decision = decide_attention_for(model, batch=1, img_size=256, dtype=torch.float32, training=False)
    assert set(decision.seconds) == {"sdpa", "explicit", "explicit:32", "explicit:128"}


def test_the_optimizer_kernel_is_timed_on_the_models_parameters():
    decision = decide_optimizer(tiny_vit().parameters(), "adamw", CPU)
    assert set(decision.seconds) == {"foreach", "fused"}


def test_auto_inference_precision_is_the_faster_and_sets_its_attention_kernel():
    model = tiny_vit().eval()
    inference = set_up_inference(model, precision="auto", batch=4, img_size=32, device=CPU)
    chosen = inference.decisions
    assert [d.what for d in chosen] == ["precision", "attention", "linear"]
    assert set(chosen[0].seconds) == {"fp32", "bf16"} and chosen[0].situation.endswith("among fp32/bf16")
    assert inference.precision == chosen[0].choice == min(chosen[0].seconds, key=chosen[0].seconds.get)
    assert model.attention_kernel[0] == chosen[1].choice.partition(":")[0]
    assert set(chosen[2].seconds) == {"plain", "packed"} and chosen[2].choice == min(
        chosen[2].seconds, key=chosen[2].seconds.get
    )
    packed = isinstance(inference.model.blocks[0].mlp.fc1, PackedLinear)
    assert (inference.model is model) == (not packed) and packed == (chosen[2].choice == "packed")
    # A precision that is given is kept: only the kernels are chosen.
    inference = set_up_inference(model, precision="bf16", batch=4, img_size=32, device=CPU)
    assert inference.precision == "bf16" and [d.what for d in inference.decisions] == ["attention", "linear"]
    assert all("bfloat16 inference" in decision.situation for decision in inference.decisions)


@pytest.mark.parametrize("linear", ["plain", "packed"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_each_forced_linear_kernel_answers_as_the_float_model(monkeypatch, linear, precision):
    model = randomize_head(tiny_vit()).eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = model(images)
    monkeypatch.setenv("VITKIT_LINEAR", linear)
    inference = set_up_inference(model, precision=precision, batch=3, img_size=32, device=CPU)
    assert (inference.decisions[-1].choice, inference.decisions[-1].how) == (linear, "set by VITKIT_LINEAR")
    assert isinstance(inference.model.blocks[0].attn.qkv, PackedLinear) == (linear == "packed")
    with torch.no_grad(), autocast(CPU, precision):
        logits = inference.model(images).float()
        again = inference.model(images).float()
    assert torch.equal(logits, again)  # a given choice gives the same bits every time
    tolerance = 1e-5 if precision == "fp32" else 0.05
    assert (logits - expected).abs().max() <= tolerance * expected.abs().max()


def test_a_machine_without_packing_has_plain_linear_layers_only(monkeypatch):
    monkeypatch.setattr(decisions, "packing_runs", lambda device, dtype: False)
    model = tiny_vit().eval()
    decision = set_up_inference(model, precision="fp32", batch=3, img_size=32, device=CPU).decisions[-1]
    assert (decision.choice, decision.how) == ("plain", "the only choice here")
    monkeypatch.setenv("VITKIT_LINEAR", "packed")
    with pytest.raises(ValueError, match="VITKIT_LINEAR='packed' is not a choice here; use one of plain"):
        set_up_inference(model, precision="fp32", batch=3, img_size=32, device=CPU)


def test_auto_may_choose_int8_where_the_caller_can_run_it():
    model = randomize_head(tiny_vit()).eval()
    inference = set_up_inference(model, precision="auto", batch=4, img_size=32, device=CPU, int8=True)
    decision = inference.decisions[0]
    assert set(decision.seconds) == {"fp32", "bf16", "int8"} and decision.situation.endswith("among fp32/bf16/int8")
    assert inference.precision == decision.choice == min(decision.seconds, key=decision.seconds.get)
    assert isinstance(inference.model, vitkit.Int8Model) == (inference.precision == "int8")
    # A choice between floats only (serve's) is its own situation, not answered by the one above.
    floats = set_up_inference(model, precision="auto", batch=4, img_size=32, device=CPU)
    assert (floats.decisions[0].how, set(floats.decisions[0].seconds)) == ("measured", {"fp32", "bf16"})
    assert set_up_inference(model, precision="auto", batch=4, img_size=32, device=CPU, int8=True).decisions[0].how == (
        "cached"
    )
    # Neither a ResNet nor a model on a GPU has an int8 form.
    resnet = vitkit.ResNetV2(vitkit.ResNetV2Config(layers=(1, 1, 1, 1), root_width=32))
    assert not decisions.int8_runs(resnet, CPU) and not decisions.int8_runs(model, torch.device("cuda"))


def test_auto_passes_over_int8_where_quantizing_new_weights_costs_more_than_it_saves():
    model = randomize_head(tiny_vit()).eval()
    measured = set_up_inference(model, precision="auto", batch=4, img_size=32, device=CPU, int8=True, images=4)
    situation = measured.decisions[0].situation
    cache = json.loads(decisions.cache_path().read_text())
    entries = cache[decisions.machine_fingerprint(CPU)]
    if measured.precision == "int8":  # the trial quantized these weights: what that cost is recorded
        costs = entries[f"int8 costs: {situation}"]["seconds"]
        assert costs["quantizing"] > 0 and costs["saved per image"] > 0
    # Say the trial found int8 faster by 1 ms an image and quantizing 5 s: new weights (another
    # model of the same shape) run in the fastest float for 10 images, in int8 for 10,000.
    entries[f"precision: {situation}"] = {"choice": "int8", "seconds": {"fp32": 0.006, "bf16": 0.008, "int8": 0.002}}
    entries[f"int8 costs: {situation}"] = {"choice": "int8", "seconds": {"quantizing": 5.0, "saved per image": 0.001}}
    decisions.cache_path().write_text(json.dumps(cache))
    other = randomize_head(tiny_vit()).eval()
    few = set_up_inference(other, precision="auto", batch=4, img_size=32, device=CPU, int8=True, images=10)
    assert few.precision == "fp32" and not isinstance(few.model, vitkit.Int8Model)
    assert str(few.decisions[1]) == (
        "precision for 10 image(s), weights not quantized yet: "
        "fp32 (int8 would save ~10 ms and quantizing takes ~5.00 s)"
    )
    many = set_up_inference(other, precision="auto", batch=4, img_size=32, device=CPU, int8=True, images=10_000)
    assert many.precision == "int8" and isinstance(many.model, vitkit.Int8Model)
    # Once kept, int8 costs nothing more to start: a job of any size runs it.
    again = set_up_inference(other, precision="auto", batch=4, img_size=32, device=CPU, int8=True, images=1)
    assert again.precision == "int8" and [d.how for d in again.decisions] == ["cached"]


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_each_forced_precision_runs_and_answers_as_the_float_model(monkeypatch, precision):
    model = randomize_head(tiny_vit()).eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = model(images)
    monkeypatch.setenv("VITKIT_PRECISION", precision)
    inference = set_up_inference(model, precision="auto", batch=3, img_size=32, device=CPU, int8=True)
    assert (inference.precision, inference.decisions[0].how) == (precision, "set by VITKIT_PRECISION")
    with torch.no_grad(), autocast(CPU, inference.precision):
        logits = inference.model(images).float()
    assert (logits - expected).abs().max() <= 0.05 * expected.abs().max()
    if precision == "int8":  # where the caller has no int8 form, forcing it is an error that says so
        with pytest.raises(ValueError, match="VITKIT_PRECISION='int8' is not a choice here; use one of fp32, bf16"):
            set_up_inference(model, precision="auto", batch=3, img_size=32, device=CPU)


def test_a_run_records_its_kernels_and_each_choice_trains_to_the_same_result(tmp_path, monkeypatch):
    finals = []
    for attention, optimizer in [("sdpa", "foreach"), ("explicit", "fused")]:
        monkeypatch.setenv("VITKIT_ATTENTION", attention)
        monkeypatch.setenv("VITKIT_OPTIMIZER", optimizer)
        summary = train(digits_config(tmp_path / attention, precision="fp32", epochs=1), progress=False)
        saved = json.loads((Path(summary.run_dir) / "train_config.json").read_text())
        assert (saved["attention"], saved["optimizer_kernel"]) == (attention, optimizer)  # a resumed run keeps them
        finals.append(summary.final_metrics)
    # The same numbers up to rounding: after 23 steps the held-out loss agrees to 1e-3.
    assert finals[1]["val_loss"] == pytest.approx(finals[0]["val_loss"], abs=1e-3)
    assert finals[1]["val_top1"] == pytest.approx(finals[0]["val_top1"], abs=0.01)


def test_a_run_measures_its_kernels_when_nothing_is_set(tmp_path, capsys):
    summary = train(digits_config(tmp_path, steps=2, precision="fp32"), progress=True)
    assert "(attention measured, optimizer measured); run folder" in capsys.readouterr().out
    saved = json.loads((Path(summary.run_dir) / "train_config.json").read_text())
    assert saved["attention"] in ("sdpa", "explicit") and saved["optimizer_kernel"] in ("foreach", "fused")


def test_benchmark_explain_says_what_is_chosen_here(capsys):
    args = ["benchmark", "--explain", "--model", "Ti/16", "--img-size", "32", "--batch", "2", "--precisions", "fp32"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "what vitkit chooses on this machine" in out
    assert "attention for cpu float32 inference" in out and "precision for cpu inference" in out
    assert "linear for cpu float32 inference" in out
    assert "(measured: " in out and "VITKIT_ATTENTION" in out and "VITKIT_LINEAR" in out
    assert main(args) == 0
    assert "(cached: " in capsys.readouterr().out


def test_choosing_leaves_the_random_numbers_of_a_run_alone(monkeypatch):
    model = tiny_vit()
    state = torch.random.get_rng_state()
    decide_attention_for(model, batch=4, img_size=32, dtype=torch.float32, training=True)  # measured
    assert torch.equal(torch.random.get_rng_state(), state)
    monkeypatch.setenv("VITKIT_OPTIMIZER", "fused")  # forced: nothing is even built
    assert decide("optimizer", "x", ["foreach", "fused"], lambda: 1 / 0, CPU).choice == "fused"
