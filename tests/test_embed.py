import pytest
import torch

from vitkit import resample_pos_embed


def ramp_embedding(rows, cols, prefix=1):
    """Embedding whose channel 0 is the patch-centre x coordinate and channel 1 the y, in [0, 1]."""
    y = (torch.arange(rows) + 0.5) / rows
    x = (torch.arange(cols) + 0.5) / cols
    grid = torch.stack(torch.meshgrid(y, x, indexing="ij")[::-1], dim=-1).reshape(1, rows * cols, 2)
    return torch.cat([torch.full((1, prefix, 2), 7.0), grid], dim=1)


def test_same_grid_returns_the_input_itself():
    pos = torch.randn(1, 1 + 49, 8)
    assert resample_pos_embed(pos, (7, 7)) is pos


@pytest.mark.parametrize("mode,atol", [("bilinear", 1e-5), ("bicubic", 2e-2)])
@pytest.mark.parametrize("new_grid", [(14, 14), (10, 6), (4, 4)])
def test_a_linear_ramp_stays_a_ramp(mode, atol, new_grid):
    pos = ramp_embedding(8, 8, prefix=2)
    out = resample_pos_embed(pos, new_grid, num_prefix_tokens=2, mode=mode, antialias=False)
    assert out.shape == (1, 2 + new_grid[0] * new_grid[1], 2)
    assert torch.equal(out[:, :2], pos[:, :2])  # prefix rows untouched
    got = out[0, 2:].reshape(*new_grid, 2)
    expected = ramp_embedding(*new_grid, prefix=0)[0].reshape(*new_grid, 2)
    # Interpolation clamps at the border; inside, every patch centre lands on the same ramp
    # (exactly for bilinear; bicubic's a = -0.75 kernel reproduces lines only approximately).
    inner = (slice(1, -1), slice(1, -1))
    torch.testing.assert_close(got[inner], expected[inner], atol=atol, rtol=0)


def test_non_square_grid_needs_old_grid():
    pos = torch.randn(1, 1 + 6 * 10, 4)
    with pytest.raises(ValueError, match="not a square; pass old_grid"):
        resample_pos_embed(pos, (12, 20))
    out = resample_pos_embed(pos, (12, 20), old_grid=(6, 10))
    assert out.shape == (1, 1 + 240, 4)


def test_wrong_old_grid_is_reported():
    with pytest.raises(ValueError, match=r"old_grid \(5, 5\) holds 25 patches but the embedding has 49"):
        resample_pos_embed(torch.randn(1, 50, 4), (7, 7), old_grid=(5, 5))


def test_nearest_doubles_each_embedding():
    pos = torch.randn(1, 16, 3)
    out = resample_pos_embed(pos, (8, 8), num_prefix_tokens=0, mode="nearest")
    grid = out[0].reshape(8, 8, 3)
    torch.testing.assert_close(grid[::2, ::2], pos[0].reshape(4, 4, 3))
    torch.testing.assert_close(grid[1::2, 1::2], pos[0].reshape(4, 4, 3))
