"""Reading and writing model files."""

from .folder import LoadedModel, load_model, save_model

__all__ = ["LoadedModel", "load_model", "save_model"]
