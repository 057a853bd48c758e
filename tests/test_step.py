"""One optimiser step: accumulation, clipping, and what a non-finite loss leaves behind."""

import copy

import pytest
import torch

from conftest import tiny_vit
from vitkit.train.distributed import Processes
from vitkit.train.objectives import Classification
from vitkit.train.step import train_step


def _parts(model, grad_clip=0.0):
    objective = Classification(model, 10, 0.0, 0.0, 0.0, torch.device("cpu"), "fp32")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5**step)
    return objective, optimizer, scheduler


def _randomised_model():
    torch.manual_seed(0)
    model = tiny_vit()
    with torch.no_grad():
        model.head.weight.normal_(std=0.1)  # a zero head would give every earlier layer zero gradient
    return model


def test_two_micro_batches_make_the_same_step_as_one_batch_of_both():
    images, labels = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    one, two = _randomised_model(), None
    two = copy.deepcopy(one)
    objective, optimizer, scheduler = _parts(one)
    whole = train_step(
        objective, one, optimizer, scheduler, None, [(images, labels)], grad_clip=0.0, processes=Processes()
    )
    objective, optimizer, scheduler = _parts(two)
    halves = [(images[:4], labels[:4]), (images[4:], labels[4:])]
    split = train_step(objective, two, optimizer, scheduler, None, halves, grad_clip=0.0, processes=Processes())
    assert split.count == 2 and whole.count == 1
    torch.testing.assert_close(split.loss, whole.loss, rtol=1e-5, atol=0)
    for a, b in zip(one.parameters(), two.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert scheduler.get_last_lr() == [0.05]  # the schedule moved on by one step


def test_a_non_finite_loss_leaves_weights_schedule_and_gradients_alone():
    model = _randomised_model()
    before = copy.deepcopy(model.state_dict())
    objective, optimizer, scheduler = _parts(model)
    images = torch.full((2, 3, 32, 32), float("nan"))
    result = train_step(
        objective,
        model,
        optimizer,
        scheduler,
        None,
        [(images, torch.tensor([0, 1]))],
        grad_clip=1.0,
        processes=Processes(),
    )
    assert not result.finite
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert scheduler.get_last_lr() == [0.1] and all(p.grad is None for p in model.parameters())


def test_gradients_are_clipped_to_the_global_norm():
    model = _randomised_model()
    start = copy.deepcopy(model.state_dict())
    objective, optimizer, scheduler = _parts(model)
    batch = [(torch.randn(4, 3, 32, 32) * 100, torch.tensor([0, 1, 2, 3]))]
    train_step(objective, model, optimizer, scheduler, None, batch, grad_clip=1e-3, processes=Processes())
    moved = torch.cat([(v - start[k]).flatten() for k, v in model.state_dict().items()])
    assert moved.norm() <= 0.1 * 1e-3 * 1.0001  # lr × clipped norm


def test_the_step_reports_the_gradient_norm_before_clipping_and_clips_nothing_at_zero():
    model = _randomised_model()
    start = copy.deepcopy(model.state_dict())
    objective, optimizer, scheduler = _parts(model)
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    objective.loss(model, images, labels).backward()
    expected = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).norm()
    model.zero_grad(set_to_none=True)
    result = train_step(
        objective, model, optimizer, scheduler, None, [(images, labels)], grad_clip=0.0, processes=Processes()
    )
    assert result.grad_norm == pytest.approx(float(expected), rel=1e-5)
    moved = torch.cat([(v - start[k]).flatten() for k, v in model.state_dict().items()])
    assert moved.norm() == pytest.approx(0.1 * float(expected), rel=1e-4)  # plain SGD: lr × the whole gradient
