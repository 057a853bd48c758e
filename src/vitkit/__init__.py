"""vitkit: the Vision Transformer of Dosovitskiy et al. (ICLR 2021) for PyTorch."""

from .models import VisionTransformer, ViTConfig, create_model, get_config, list_models, resample_pos_embed

__version__ = "0.1.0"

__all__ = [
    "ViTConfig",
    "VisionTransformer",
    "__version__",
    "create_model",
    "get_config",
    "list_models",
    "resample_pos_embed",
]
