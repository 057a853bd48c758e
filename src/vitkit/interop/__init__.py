"""Every outside format, in and out: one entry (:func:`open_weights`) for every weight source,
the writers, downloads and the table of pretrained weights."""

from .adapt import LoadReport
from .convert import convert
from .export import export_model, export_onnx, export_program
from .folder import save_model
from .hf import save_hf
from .int8 import Int8Model, quantize
from .pretrained import PretrainedWeights, list_pretrained
from .sources import (
    LoadedModel,
    Weights,
    create_model,
    create_segmenter,
    load_model,
    load_weights,
    open_weights,
    read_state_dict,
)
from .timm import timm_to_vitkit, vitkit_to_timm

__all__ = [
    "Int8Model",
    "LoadReport",
    "LoadedModel",
    "PretrainedWeights",
    "Weights",
    "convert",
    "create_model",
    "create_segmenter",
    "export_model",
    "export_onnx",
    "export_program",
    "list_pretrained",
    "load_model",
    "load_weights",
    "open_weights",
    "quantize",
    "read_state_dict",
    "save_hf",
    "save_model",
    "timm_to_vitkit",
    "vitkit_to_timm",
]
