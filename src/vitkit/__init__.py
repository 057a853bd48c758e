"""vitkit: the Vision Transformer of Dosovitskiy et al. (ICLR 2021) for PyTorch."""

from .interop import (
    Int8Model,
    LoadedModel,
    PretrainedWeights,
    create_model,
    create_segmenter,
    list_pretrained,
    load_model,
    load_weights,
    open_weights,
    quantize,
    save_model,
)
from .models import ResNetV2, ResNetV2Config, VisionTransformer, ViTConfig, get_config, list_models, resample_pos_embed
from .version import __version__

__all__ = [
    "Int8Model",
    "LoadedModel",
    "PretrainedWeights",
    "ResNetV2",
    "ResNetV2Config",
    "ViTConfig",
    "VisionTransformer",
    "__version__",
    "create_model",
    "create_segmenter",
    "get_config",
    "list_models",
    "list_pretrained",
    "load_model",
    "load_weights",
    "open_weights",
    "quantize",
    "resample_pos_embed",
    "save_model",
]
