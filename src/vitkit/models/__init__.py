"""The network and nothing else: no training, no file formats."""

import torch

from .config import ARCHITECTURE_FIELDS, ViTConfig
from .embed import resample_pos_embed
from .registry import ModelConfig, get_config, list_models
from .resnet import ResNetV2, ResNetV2Config
from .vit import ATTENTION_KERNELS, MAX_PARAMS, FeatureMaps, VisionTransformer, check_model_size
from .vit import parameter_count as vit_parameter_count

#: a network vitkit builds from a config: the ViT, or the BiT ResNet it is compared with
Network = VisionTransformer | ResNetV2


def build_network(config: ModelConfig) -> Network:
    """The network ``config`` describes, freshly initialised."""
    return ResNetV2(config) if isinstance(config, ResNetV2Config) else VisionTransformer(config)


def parameter_count(config: ModelConfig) -> int:
    """How many parameters a network of ``config`` has (counted on the meta device: nothing is allocated)."""
    if isinstance(config, ViTConfig):
        return vit_parameter_count(config)
    with torch.device("meta"):
        return sum(p.numel() for p in ResNetV2(config).parameters())


__all__ = [
    "ARCHITECTURE_FIELDS",
    "ATTENTION_KERNELS",
    "MAX_PARAMS",
    "FeatureMaps",
    "ModelConfig",
    "Network",
    "ResNetV2",
    "ResNetV2Config",
    "ViTConfig",
    "VisionTransformer",
    "build_network",
    "check_model_size",
    "get_config",
    "list_models",
    "parameter_count",
    "resample_pos_embed",
]
