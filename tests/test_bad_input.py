"""Every mistake a user can make gets an error that says what was wrong and what to do."""

import pytest
import torch

import vitkit
from conftest import tiny_vit
from vitkit.cli import main as cli


def test_image_size_not_divisible_by_patch_size_in_config():
    with pytest.raises(
        ValueError, match=r"image size \(30, 30\) is not divisible by the patch size 4.*dynamic_img_pad"
    ):
        tiny_vit(img_size=30)


def test_image_size_not_divisible_by_patch_size_at_run_time():
    model = tiny_vit(dynamic_img_size=True)
    with pytest.raises(ValueError, match="30×30 is not divisible by the patch size 4"):
        model(torch.randn(1, 3, 30, 30))


def test_image_of_another_size_without_dynamic_size():
    with pytest.raises(ValueError, match=r"built for 32×32 images but got 48×48.*set_image_size"):
        tiny_vit()(torch.randn(1, 3, 48, 48))


def test_embed_dim_not_divisible_by_heads():
    with pytest.raises(ValueError, match="embed_dim 30 is not divisible by num_heads 4"):
        tiny_vit(embed_dim=30)


def test_wrong_channel_count():
    with pytest.raises(ValueError, match=r"expects 3 channel\(s\) but the input has 1.*in_chans=1"):
        tiny_vit()(torch.randn(2, 1, 32, 32))


@pytest.mark.parametrize("shape", [(3, 32, 32), (32, 32), (1, 1, 3, 32, 32)])
def test_wrong_input_rank(shape):
    with pytest.raises(ValueError, match=r"expected a batch of images shaped \(B, C, H, W\)"):
        tiny_vit()(torch.randn(*shape))


def test_unknown_position_embedding_kind():
    with pytest.raises(ValueError, match=r"unknown position embedding 'learned'.*learn2d"):
        tiny_vit(pos_embed="learned")


def test_unknown_pool_and_interpolation():
    with pytest.raises(ValueError, match="unknown pooling 'max'"):
        tiny_vit(pool="max")
    with pytest.raises(ValueError, match="unknown interpolation 'cubic'"):
        tiny_vit(pos_embed_interp="cubic")


def test_token_pool_needs_a_class_token():
    with pytest.raises(ValueError, match="pool='token' needs the class token"):
        tiny_vit(class_token=False)


def test_probabilities_out_of_range():
    with pytest.raises(ValueError, match="drop_path is a probability"):
        tiny_vit(drop_path=1.5)


def test_bad_intermediate_count():
    with pytest.raises(ValueError, match="last 5 blocks of a model with 2"):
        tiny_vit().forward_intermediates(torch.randn(1, 3, 32, 32), 5)


def test_unknown_model_name():
    with pytest.raises(ValueError, match="did you mean"):
        vitkit.create_model("vit_small_patch16")


def test_padding_alone_does_not_allow_another_resolution():
    model = tiny_vit(dynamic_img_pad=True)
    assert model(torch.randn(1, 3, 30, 30)).shape == (1, 10)  # padded to 32: the built size
    with pytest.raises(ValueError, match="built for 32×32 images but got 40×40"):
        model(torch.randn(1, 3, 38, 38))


def test_the_cli_prints_vitkit_errors_in_one_line_and_bugs_with_their_traceback(monkeypatch, capsys):
    assert cli.main(["eval", "no/such/run"]) == 2
    assert capsys.readouterr().err.startswith("vitkit: error: ")

    def broken_dependency(*args, **kwargs):
        raise ValueError("raised outside vitkit's code")

    monkeypatch.setattr(cli, "load_model", broken_dependency)  # stands in for a library under vitkit
    with pytest.raises(ValueError, match="raised outside vitkit's code"):
        cli.main(["eval", "no/such/run"])
