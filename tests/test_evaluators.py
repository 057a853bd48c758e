"""Evaluators chosen by config: the objective's held-out metrics and few-shot accuracy, also
during pre-training."""

import json
from pathlib import Path

import pytest

from conftest import TINY, digits_config
from vitkit.interop import load_model
from vitkit.probe import fewshot_evaluate
from vitkit.train import ConfigError, resolve_config, train
from vitkit.train.config import evaluator_spec


def _records(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def test_specs_name_an_evaluator_and_its_shots():
    assert evaluator_spec("heldout") == ("heldout", ())
    assert evaluator_spec("fewshot") == ("fewshot", (10,))
    assert evaluator_spec("fewshot:1,5") == ("fewshot", (1, 5))
    with pytest.raises(ConfigError, match="unknown evaluator 'fewshoot'; did you mean 'fewshot'"):
        resolve_config(overrides={"evaluators": ["fewshoot"]})
    with pytest.raises(ConfigError, match="comma-separated numbers"):
        resolve_config(overrides={"evaluators": ["fewshot:five"]})
    with pytest.raises(ConfigError, match="heldout takes no argument"):
        resolve_config(overrides={"evaluators": ["heldout:3"]})


@pytest.mark.slow
def test_fewshot_during_training_agrees_with_vitkit_fewshot(tmp_path):
    config = digits_config(tmp_path, epochs=1, precision="fp32", evaluators=["heldout", "fewshot:2,5"])
    summary = train(config, progress=False)
    record = _records(summary.run_dir)[-1]
    assert {"val_top1", "val_loss", "fewshot_2shot", "fewshot_5shot"} <= set(record)
    assert summary.ranked_by == "val_top1" and summary.best_top1 is not None
    # The same figure as the fewshot command gives for the saved model (same seed, same images).
    (result,) = fewshot_evaluate(load_model(summary.run_dir), "digits", shots=[5], seeds=[0])
    assert record["fewshot_5shot"] == pytest.approx(result.mean, abs=1e-6)


@pytest.mark.slow
def test_pretraining_reports_fewshot_accuracy_and_can_be_ranked_by_it(tmp_path):
    config = resolve_config(
        preset="mae-demo",
        overrides={
            "data": "digits",
            "img_size": 8,
            "model_args": TINY,
            "decoder_dim": 16,
            "decoder_depth": 1,
            "decoder_heads": 2,
            "epochs": 2,
            "evaluators": ["fewshot:5", "heldout"],
            "out": str(tmp_path / "mae"),
        },
    )
    summary = train(config, progress=False)
    records = _records(summary.run_dir)
    assert len(records) == 2 and all("fewshot_5shot" in r and "val_loss" in r for r in records)
    assert all(r["fewshot_5shot"] > 0.2 for r in records)  # 10 classes: chance is 0.1
    assert summary.ranked_by == "fewshot_5shot" and summary.best_top1 is None
    best = max(range(2), key=lambda i: records[i]["fewshot_5shot"])
    assert summary.best_epoch == best + 1


def test_fewshot_needs_enough_labelled_images(tmp_path):
    with pytest.raises(ConfigError, match=r"500 shots per class.*has only"):
        train(digits_config(tmp_path, evaluators=["fewshot:500"]), progress=False)


def test_eval_every_scores_every_nth_epoch_and_the_last(tmp_path):
    config = digits_config(tmp_path, epochs=5, eval_every=2)
    summary = train(config, progress=False)
    records = _records(summary.run_dir)
    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5]
    assert [r["epoch"] for r in records if "val_top1" in r] == [2, 4, 5]
    assert all("train_loss" in r for r in records)
    assert summary.best_epoch in (2, 4, 5) and summary.final_top1 == records[-1]["val_top1"]
    assert (Path(summary.run_dir) / "curves.png").is_file()
    with pytest.raises(ConfigError, match="--eval-every is a number of epochs, at least 1, got 0"):
        resolve_config(overrides={"eval_every": 0})


def test_a_small_set_trains_min_steps_and_is_scored_about_twenty_times(tmp_path):
    # 20 images in batches of 16: one step an epoch, so 45 steps are 45 epochs, scored every 2nd
    config = digits_config(tmp_path, train_images=20, batch_size=16, epochs=1, min_steps=45, checkpoint_every=0)
    summary = train(config, progress=False)
    records = _records(summary.run_dir)
    assert summary.steps == 45 and [r["epoch"] for r in records] == list(range(1, 46))
    assert [r["epoch"] for r in records if "val_top1" in r] == [*range(2, 45, 2), 45]
    longer = digits_config(tmp_path, epochs=2, min_steps=3, out=str(tmp_path / "longer"))
    assert train(longer, progress=False).steps == 2 * 22  # epochs that make more steps than min_steps win
