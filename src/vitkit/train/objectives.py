"""What a run optimises and how it is scored: supervised classification, or a self-supervised
objective from :mod:`vitkit.pretrain`. The training loop is the same for all of them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..data.transforms import batch_mixing
from ..device import autocast
from ..models import Network, VisionTransformer
from ..models.segmenter import Segmenter
from ..pretrain import MaskedAutoencoder, MaskedPatchPrediction
from .accuracy import score_single_label
from .config import ConfigError, TrainConfig
from .distributed import Processes, all_reduce_sum
from .multilabel import multilabel_logits, score_multilabel
from .segmentation import score_segmentation, segmentation_loss

#: the held-out metric of a multi-label run that holds its decision threshold
THRESHOLD = "val_threshold"

#: default fraction of patches each objective corrupts or hides (the papers' values)
DEFAULT_MASK_RATIO = {"mpp": 0.5, "mae": 0.75}


@dataclass
class EpochMetrics:
    """A run's held-out metrics at one epoch end (means over ``count`` images; the ``val_*`` and
    ``fewshot_*`` entries of a ``metrics.jsonl`` line); ``score`` ranks epochs."""

    metrics: dict[str, float]
    count: int
    #: the metric that ranks epochs, and whether higher is better
    score_key: str = "val_loss"
    higher_is_better: bool = False
    confusion: Tensor | None = None
    skipped: list[str] = field(default_factory=list)

    @property
    def score(self) -> float:
        value = self.metrics[self.score_key]
        return value if self.higher_is_better else -value


def combine(local: EpochMetrics, processes: Processes) -> EpochMetrics:
    """Merge the epoch metrics of all processes, each on its own share of the held-out images:
    counts and confusion matrices add up, means are weighted by counts."""
    if not processes.distributed:
        return local
    names = sorted(local.metrics)
    sums = torch.tensor([local.metrics[n] * local.count for n in names] + [local.count], dtype=torch.float64)
    *totals, count = all_reduce_sum(sums, processes).tolist()
    confusion = None if local.confusion is None else all_reduce_sum(local.confusion, processes)
    return dataclasses.replace(
        local,
        metrics={n: t / count for n, t in zip(names, totals, strict=True)},
        count=int(count),
        confusion=confusion,
    )


class Objective(Protocol):
    #: the module the optimiser trains and the checkpoint holds
    module: nn.Module

    def loss(self, module: nn.Module, images: Tensor, labels: Tensor) -> Tensor: ...

    def held_out_metrics(self, module: nn.Module, loader: DataLoader) -> EpochMetrics:
        """The objective's own metrics of ``module`` on the held-out images of ``loader``."""
        ...

    def saved_model(self, module: nn.Module) -> Network | Segmenter:
        """The model inside ``module`` (the module or its EMA copy) that the run folder keeps: the
        classifier, the pre-trained encoder, or the segmenter."""
        ...


@dataclass
class Classification:
    """One class per image (softmax, cross-entropy, ranked by top-1), or with ``multi_label``
    any set of classes (a sigmoid per class, binary cross-entropy on multi-hot targets, ranked by
    mAP). Mixup and CutMix mix multi-hot targets as they mix one-hot ones."""

    module: Network
    num_classes: int
    label_smoothing: float
    mixup: float
    cutmix: float
    device: torch.device
    precision: str
    multi_label: bool = False

    def __post_init__(self) -> None:
        self.mixing = batch_mixing(self.num_classes, self.mixup, self.cutmix)

    def loss(self, module: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
        if self.multi_label:
            labels = labels.float()  # torchvision's mixing then mixes the multi-hot vectors as given
        if self.mixing is not None:
            images, labels = self.mixing(images, labels)
        with autocast(self.device, self.precision):
            logits = module(images)
        if self.multi_label:
            targets = labels * (1 - self.label_smoothing) + self.label_smoothing / 2
            return F.binary_cross_entropy_with_logits(logits.float(), targets)
        return F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)

    def held_out_metrics(self, module: nn.Module, loader: DataLoader) -> EpochMetrics:
        if self.multi_label:
            return self._multilabel_metrics(module, loader)
        result = score_single_label(
            module, loader, num_classes=self.num_classes, device=self.device, precision=self.precision
        )
        metrics = {"val_loss": result.loss, "val_top1": result.top1, "val_top5": result.top5}
        return EpochMetrics(metrics, result.count, "val_top1", True, result.confusion, result.skipped)

    def _multilabel_metrics(self, module: nn.Module, loader: DataLoader) -> EpochMetrics:
        """mAP, and micro-F1 at the threshold that maximises it on these held-out images (the
        threshold the run folder keeps for predictions)."""
        logits, targets, skipped = multilabel_logits(module, loader, device=self.device, precision=self.precision)
        result = score_multilabel(logits, targets, skipped=skipped)
        metrics = {"val_loss": result.loss, "val_mAP": result.mean_ap, "val_f1": result.f1, THRESHOLD: result.threshold}
        return EpochMetrics(metrics, result.count, "val_mAP", True, skipped=skipped)

    def saved_model(self, module: nn.Module) -> Network:
        return module  # type: ignore[return-value]


@dataclass
class Segmentation:
    """A class per pixel (Segmenter): cross-entropy over the pixels not ignored, plus ``dice`` ×
    the soft Dice loss; ranked by held-out mIoU."""

    module: Segmenter
    ignore_index: int
    dice: float
    device: torch.device
    precision: str

    def loss(self, module: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
        with autocast(self.device, self.precision):
            logits = module(images)
        return segmentation_loss(logits, labels, ignore_index=self.ignore_index, dice=self.dice)

    def held_out_metrics(self, module: nn.Module, loader: DataLoader) -> EpochMetrics:
        scores = score_segmentation(
            module,
            loader,
            num_classes=self.module.num_classes,
            device=self.device,
            precision=self.precision,
            ignore_index=self.ignore_index,
        )
        metrics = {
            "val_loss": scores.loss,
            "val_mIoU": scores.mean_iou,
            "val_pixel_accuracy": scores.pixel_accuracy,
            "val_mean_accuracy": scores.mean_accuracy,
        }
        return EpochMetrics(metrics, scores.images, "val_mIoU", True, scores.confusion, scores.skipped)

    def saved_model(self, module: nn.Module) -> Segmenter:
        return module  # type: ignore[return-value]


@dataclass
class Pretraining:
    module: MaskedPatchPrediction | MaskedAutoencoder
    device: torch.device
    precision: str

    def loss(self, module: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
        with autocast(self.device, self.precision):
            return module(images).loss

    @torch.inference_mode()
    def held_out_metrics(self, module: nn.Module, loader: DataLoader) -> EpochMetrics:
        """Mean held-out loss and metrics; the same masks every epoch (a fixed seed, the
        training random state untouched) so epochs compare fairly."""
        was_training = module.training
        module.eval()
        sums: dict[str, float] = {}
        count, skipped = 0, []
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(0)
            for images, _, broken in loader:
                skipped += broken
                if images is None:
                    continue
                with autocast(self.device, self.precision):
                    output = module(images.to(self.device, non_blocking=True))
                for name, value in {"loss": output.loss, **output.metrics}.items():
                    sums[f"val_{name}"] = sums.get(f"val_{name}", 0.0) + value.item() * len(images)
                count += len(images)
        module.train(was_training)
        if count == 0:
            raise ValueError("no readable image to evaluate on")
        return EpochMetrics({name: total / count for name, total in sums.items()}, count, skipped=skipped)

    def saved_model(self, module: nn.Module) -> VisionTransformer:
        return module.encoder  # type: ignore[return-value]


def build_objective(
    config: TrainConfig,
    model: Network,
    *,
    num_classes: int,
    device: torch.device,
    precision: str,
    multi_label: bool = False,
    segmentation: bool = False,
) -> Classification | Segmentation | Pretraining:
    """The objective ``config.objective`` names, around ``model`` (already sized for the data);
    ``multi_label`` for data with several labels per image, ``segmentation`` for a class per
    pixel (``model`` is then the backbone of a :class:`Segmenter` with ``config.decoder``)."""
    if config.supervised and segmentation:
        segmenter = Segmenter(
            model,
            num_classes,
            decoder=config.decoder,
            decoder_depth=config.decoder_depth or 2,  # Segmenter's mask transformer
            decoder_dim=config.decoder_dim,
        )
        return Segmentation(segmenter.to(device), config.ignore_index, config.dice, device, precision)
    if config.supervised:
        return Classification(
            model, num_classes, config.label_smoothing, config.mixup, config.cutmix, device, precision, multi_label
        )
    ratio = config.mask_ratio if config.mask_ratio is not None else DEFAULT_MASK_RATIO.get(config.objective)
    if config.objective == "mpp":
        module: MaskedPatchPrediction | MaskedAutoencoder = MaskedPatchPrediction(
            model, ratio=ratio, color_bits=config.color_bits
        )
    elif config.objective == "mae":
        module = MaskedAutoencoder(
            model,
            mask_ratio=ratio,
            decoder_dim=config.decoder_dim or 512,  # the MAE paper's decoder
            decoder_depth=config.decoder_depth or 8,
            decoder_heads=config.decoder_heads,
            norm_pix_loss=config.norm_pix_loss,
        )
    else:
        raise ConfigError(f"unknown objective {config.objective!r}; choose classify, mpp or mae")
    return Pretraining(module.to(device), device, precision)
