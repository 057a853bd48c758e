"""Few-shot linear evaluation and the linear probe on frozen features."""

import json

import pytest
import torch

from conftest import digits_config
from vitkit.cli.main import main
from vitkit.data.datasets.builtin import load_digits
from vitkit.data.datasets.subsets import balanced_subset, dataset_labels, per_class_indices
from vitkit.interop import load_model
from vitkit.probe import RidgeSolver, extract_features, fewshot_accuracies, fewshot_evaluate, linear_probe
from vitkit.probe.fewshot import BIAS_FEATURE, L2_GRID
from vitkit.train import train


@pytest.mark.parametrize("num_points", [40, 7])  # N ≥ D (Gram matrix) and N < D (kernel matrix)
@pytest.mark.parametrize("l2", [1e-3, 1.0, 1024.0])
def test_ridge_solver_equals_a_direct_regularised_least_squares_solve(num_points, l2):
    torch.manual_seed(0)
    x = torch.randn(num_points, 12, dtype=torch.float64) * 3 + 1
    y = torch.arange(num_points) % 4
    solver = RidgeSolver(x, y, num_classes=4)
    design = solver.design(x)
    targets = 2.0 * torch.nn.functional.one_hot(y, 4).double() - 1.0
    # The defining equation: (XᵀX + λI) W = XᵀY ...
    direct = torch.linalg.solve(
        design.T @ design + l2 * torch.eye(design.shape[1], dtype=torch.float64), design.T @ targets
    )
    assert torch.allclose(solver.weights(l2), direct, rtol=1e-7, atol=1e-9)
    # ... which is the least-squares solution of the system stacked with √λ·I (torch.linalg.lstsq).
    stacked = torch.cat([design, l2**0.5 * torch.eye(design.shape[1], dtype=torch.float64)])
    padded = torch.cat([targets, torch.zeros(design.shape[1], 4, dtype=torch.float64)])
    assert torch.allclose(solver.weights(l2), torch.linalg.lstsq(stacked, padded).solution, rtol=1e-6, atol=1e-8)


def test_features_are_standardised_with_the_shots_statistics_and_a_bias_column():
    x = torch.tensor([[1.0, 10.0], [3.0, 30.0]])
    design = RidgeSolver(x, torch.tensor([0, 1]), num_classes=2).design(x)
    assert torch.allclose(design[:, :2], torch.tensor([[-1.0, -1.0], [1.0, 1.0]], dtype=torch.float64), atol=1e-4)
    assert (design[:, 2] == BIAS_FEATURE).all()


def test_few_shot_accuracies_on_separable_clusters():
    torch.manual_seed(0)
    centres = torch.randn(5, 16) * 4
    labels = torch.arange(500) % 5
    features = centres[labels] + torch.randn(500, 16)
    results = fewshot_accuracies(
        features[:400],
        labels[:400],
        features[400:],
        labels[400:],
        num_classes=5,
        shots=[1, 5],
        seeds=[0, 1, 2],
        l2s=[1.0, 1e6],
    )
    by_key = {(r.shots, r.l2): r for r in results}
    assert all(len(r.accuracies) == 3 for r in results)
    assert by_key[5, 1.0].mean > 0.95
    assert by_key[1, 1.0].mean > 0.6  # chance is 0.2


def test_balanced_subset_and_per_class_draws():
    train = load_digits().train
    subset = balanced_subset(train, 50, num_classes=10, seed=3)
    assert torch.bincount(dataset_labels(subset), minlength=10).tolist() == [5] * 10
    again = balanced_subset(train, 50, num_classes=10, seed=3)
    assert torch.equal(subset.images, again.images)
    labels = dataset_labels(train)
    five = per_class_indices(labels, 5, seed=0, num_classes=10)
    ten = per_class_indices(labels, 10, seed=0, num_classes=10)
    # The 5-shot draw is the start of the 10-shot draw of the same seed, class by class.
    assert torch.equal(five.reshape(10, 5), ten.reshape(10, 10)[:, :5])


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    return train(digits_config(tmp_path_factory.mktemp("probe"), epochs=6), progress=False).run_dir


def test_few_shot_evaluation_of_a_trained_model(digits_run):
    loaded = load_model(digits_run)
    results = fewshot_evaluate(loaded, "digits", shots=(1, 10), seeds=(0, 1))
    one, ten = (r for r in results)
    assert 0.1 < one.mean < ten.mean  # better than chance; more shots help
    assert ten.mean > 0.6
    # Features of the class token are what "head" gives for this model (no pre-logits layer).
    data = load_digits()
    head, _ = extract_features(loaded.model, data.val, loaded.preprocess, pool="head")
    token, _ = extract_features(loaded.model, data.val, loaded.preprocess, pool="token")
    assert torch.equal(head, token)


def test_linear_probe_and_cli(digits_run, capsys):
    result = linear_probe(load_model(digits_run), "digits")
    assert result.top1 > 0.6 and result.train_images == 1438 and result.test_images == 359
    assert main(["fewshot", digits_run, "--shots", "1,5", "--seeds", "2", "--l2", "1,1024", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["data"] == "digits" and len(report["results"]) == 4
    assert all(len(r["per_seed"]) == 2 for r in report["results"])
    assert main(["linear-probe", digits_run, "--train-images", "200", "--pool", "avg"]) == 0
    assert "fit on 200 training images" in capsys.readouterr().out
    assert main(["fewshot", digits_run, "--shots", "500"]) == 2
    assert "has only" in capsys.readouterr().err


@pytest.mark.parametrize("num_points", [40, 7])
def test_leave_one_out_residuals_equal_refits_without_each_sample(num_points):
    torch.manual_seed(1)
    x = torch.randn(num_points, 12, dtype=torch.float64)
    y = torch.arange(num_points) % 3
    solver = RidgeSolver(x, y, num_classes=3)
    design, targets = solver.design(x), solver.targets
    for l2 in (0.5, 64.0):
        residuals = solver.leave_one_out_residuals(l2)
        for i in range(num_points):
            rest = torch.arange(num_points) != i
            a, b = design[rest], targets[rest]
            w = torch.linalg.solve(a.T @ a + l2 * torch.eye(a.shape[1], dtype=torch.float64), a.T @ b)
            assert torch.allclose(residuals[i], targets[i] - design[i] @ w, atol=1e-8)


def test_auto_l2_avoids_the_interpolation_regime():
    # 50 shots of 49 features (+ bias): a barely regularised fit interpolates the noise
    # ("double descent"); leave-one-out sees it and picks a stronger L2.
    torch.manual_seed(2)
    centres = torch.randn(5, 49) * 0.5
    labels = torch.arange(2000) % 5
    features = centres[labels] + torch.randn(2000, 49)
    auto, *by_strength = fewshot_accuracies(
        features[:1000],
        labels[:1000],
        features[1000:],
        labels[1000:],
        num_classes=5,
        shots=[10],
        l2s=["auto", *L2_GRID],
    )
    assert auto.mean > by_strength[0].mean + 0.2  # measured 0.84 vs 0.41
    assert auto.mean > max(r.mean for r in by_strength) - 0.1  # the best, chosen on the test set: 0.90
    assert all(l2 in L2_GRID for l2 in auto.chosen_l2)
