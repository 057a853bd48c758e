"""Checkpoints: one safetensors file that restores model, optimiser, schedule and random state."""

import pytest
import torch
from conftest import tiny_vit
from safetensors.torch import save_file
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from vitkit.train.checkpoint import load_checkpoint, save_checkpoint


def _training_parts(seed):
    torch.manual_seed(seed)
    model = tiny_vit()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    return model, optimizer, scheduler, ema


def _step(model, optimizer, scheduler, ema):
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    optimizer.zero_grad()
    scheduler.step()
    ema.update_parameters(model)


def test_restores_everything_a_run_continues_from(tmp_path):
    parts = _training_parts(0)
    for _ in range(2):
        _step(*parts)
    path = tmp_path / "checkpoint.safetensors"
    save_checkpoint(path, model=parts[0], optimizer=parts[1], scheduler=parts[2], ema=parts[3], progress={"step": 2})
    _step(*parts)  # the uninterrupted run's third step
    expected = [p.detach().clone() for p in parts[0].parameters()]

    restored = _training_parts(1)  # other weights, other random state
    progress = load_checkpoint(path, model=restored[0], optimizer=restored[1], scheduler=restored[2], ema=restored[3])
    assert progress == {"step": 2}
    assert restored[2].last_epoch == 2
    _step(*restored)  # the same third step: same random input, same optimiser moments
    for a, b in zip(expected, restored[0].parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_safetensors_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    model, optimizer, scheduler, ema = _training_parts(0)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    with pytest.raises(ValueError, match="not a vitkit checkpoint"):
        load_checkpoint(path, model=model, optimizer=optimizer, scheduler=scheduler, ema=ema)
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"junk\.safetensors is not a readable vitkit checkpoint"):
        load_checkpoint(tmp_path / "junk.safetensors", model=model, optimizer=optimizer, scheduler=scheduler, ema=ema)
