"""vitkit: the Vision Transformer of Dosovitskiy et al. (ICLR 2021) for PyTorch."""

from .interop import LoadedModel, load_model, load_weights, save_model
from .models import VisionTransformer, ViTConfig, create_model, get_config, list_models, resample_pos_embed

__version__ = "0.1.0"

__all__ = [
    "LoadedModel",
    "ViTConfig",
    "VisionTransformer",
    "__version__",
    "create_model",
    "get_config",
    "list_models",
    "load_model",
    "load_weights",
    "resample_pos_embed",
    "save_model",
]
