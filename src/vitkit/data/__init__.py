"""Images in, tensors out: datasets and the torchvision transforms that feed the model."""

from .transforms import eval_transform

__all__ = ["eval_transform"]
