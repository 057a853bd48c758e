"""The network and nothing else: no training, no file formats."""

from .config import ARCHITECTURE_FIELDS, ViTConfig
from .embed import resample_pos_embed
from .registry import get_config, list_models
from .vit import ATTENTION_KERNELS, MAX_PARAMS, FeatureMaps, VisionTransformer, check_model_size, parameter_count

__all__ = [
    "ARCHITECTURE_FIELDS",
    "ATTENTION_KERNELS",
    "MAX_PARAMS",
    "FeatureMaps",
    "ViTConfig",
    "VisionTransformer",
    "check_model_size",
    "get_config",
    "list_models",
    "parameter_count",
    "resample_pos_embed",
]
