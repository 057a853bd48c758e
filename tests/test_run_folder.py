"""Run-folder conventions: the data a run used and its headline figures, read back."""

import json

from vitkit.train import resolve_config
from vitkit.train.run_folder import default_run_dir, run_data, run_metrics


def test_a_run_folder_says_its_data_and_figures(tmp_path):
    (tmp_path / "train_config.json").write_text(json.dumps({"data": "/data/flowers"}))
    (tmp_path / "summary.json").write_text(
        json.dumps({"epochs": 3.0, "steps": 90, "final_top1": 0.8123, "final_top5": 0.99, "best_top1": 0.82})
    )
    assert run_data(tmp_path) == "/data/flowers"
    figures = run_metrics(tmp_path)
    assert figures["held-out final top1"] == "81.23 %" and figures["data"] == "/data/flowers" and figures["steps"] == 90
    assert run_data(tmp_path / "elsewhere") is None and run_metrics(tmp_path / "elsewhere") is None


def test_default_run_folders_name_model_and_data():
    named = resolve_config(preset="deit", overrides={"model": "R50+B/16", "data": "digits"})
    assert default_run_dir(named).name.endswith("-R50-B-16-digits")
    # The demo preset's model_args change Ti/16 (7×7 patches, 6 blocks): not called Ti/16.
    assert default_run_dir(resolve_config(preset="demo")).name.endswith("-custom-vit-mnist")
