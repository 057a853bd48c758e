"""Reading and writing model files: one loader for every format, and the writers."""

from .adapt import LoadReport
from .convert import convert
from .export import export_model, export_onnx, export_program
from .folder import LoadedModel, load_model, save_model
from .formats import load_weights, read_state_dict
from .hf import save_hf
from .timm import timm_to_vitkit, vitkit_to_timm

__all__ = [
    "LoadReport",
    "LoadedModel",
    "convert",
    "export_model",
    "export_onnx",
    "export_program",
    "load_model",
    "load_weights",
    "read_state_dict",
    "save_hf",
    "save_model",
    "timm_to_vitkit",
    "vitkit_to_timm",
]
