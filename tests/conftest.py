import pytest
import torch

import vitkit


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_vit(**overrides):
    """A 2-block ViT on 32×32 images with 4×4 patches (8×8 grid): fast enough for any test."""
    settings = dict(num_classes=10, img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=4, mlp_dim=64)
    settings.update(overrides)
    return vitkit.create_model("Ti/16", **settings)


def randomize_head(model):
    """The reference head starts at zero, which blocks every gradient behind it."""
    with torch.no_grad():
        for p in model.head.parameters():
            p.normal_(std=0.1)
    return model
