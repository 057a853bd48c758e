"""See what a ViT learned: the paper's §4.5 analysis (attention maps and rollout, mean attention
distance, position-embedding similarity, embedding filters), class-specific explanations and their
measured faithfulness, as tensors and as figures."""

from .compute import (
    NotApplicable,
    attention_maps,
    attention_rollout,
    embedding_filters,
    mean_attention_distance,
    patch_distances,
    pos_embed_similarity,
)
from .explain import METHODS, explanation_maps
from .faithfulness import Faithfulness, faithfulness, perturbation_curves, random_maps
from .inspect import InspectReport, inspect_model, inspection_images
from .plots import (
    attention_distance_figure,
    attention_heads_figure,
    embedding_filters_figure,
    explanations_figure,
    pos_embed_similarity_figure,
)

__all__ = [
    "METHODS",
    "Faithfulness",
    "InspectReport",
    "NotApplicable",
    "attention_distance_figure",
    "attention_heads_figure",
    "attention_maps",
    "attention_rollout",
    "embedding_filters",
    "embedding_filters_figure",
    "explanation_maps",
    "explanations_figure",
    "faithfulness",
    "inspect_model",
    "inspection_images",
    "mean_attention_distance",
    "patch_distances",
    "perturbation_curves",
    "pos_embed_similarity",
    "pos_embed_similarity_figure",
    "random_maps",
]
