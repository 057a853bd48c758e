"""Pretrained weights known by name: the table in ``pretrained.toml`` and what a name means.

A name is timm's ``arch.tag`` (``vit_base_patch16_224.augreg2_in21k_ft_in1k``); a bare
architecture (or a vitkit alias such as ``B/16``) means its default tag, as in timm. Rows for
Google's bucket (``google:...``) and transformers' repos (``hf-hub:google/...``) list what those
sources hold; any other ``google:`` file or ``hf-hub:`` repo loads too, it just is not listed.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import tomllib
from dataclasses import dataclass
from importlib import resources

from ..models.registry import list_models, resolve_name

IMAGENET21K_NAMES_HINT = (
    "this model's 21,843 ImageNet-21k classes are shown as numbers: vitkit ships no names for them. Google "
    "publishes them (one per line, in output order) as "
    "https://storage.googleapis.com/bit_models/imagenet21k_wordnet_lemmas.txt; pass that file with "
    "--class-names FILE (Python: load_model(..., class_names=FILE))"
)


@dataclass(frozen=True)
class PretrainedWeights:
    """One row of the table: where the weights come from and the facts their source states."""

    name: str
    #: where to fetch them: ``hf-hub:ORG/REPO`` or ``google:DIR/FILE``
    source: str
    #: what they were trained on
    data: str
    img_size: int
    #: classifier outputs; 0 = a feature extractor without a classifier
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    #: timm's crop_pct: the share of the resized short side kept by the centre crop
    crop_pct: float
    #: "center" (resize the short side, centre-crop) or "squash" (resize to the size)
    crop_mode: str
    license: str
    #: ImageNet-1k top-1 (%) as the source reports it; None where it reports none
    top1: float | None = None
    #: the tag a bare architecture name means
    default: bool = False
    size_mib: float | None = None

    @property
    def architecture(self) -> str | None:
        """The registered architecture of a timm-named row (``None`` for other sources)."""
        arch = self.name.partition(".")[0]
        return arch if arch in list_models() else None


@functools.cache
def _table() -> dict[str, PretrainedWeights]:
    document = tomllib.loads(resources.files(__package__).joinpath("pretrained.toml").read_text())
    defaults = document["defaults"]
    rows = {}
    for row in document["weights"]:
        values = {**defaults, **row}
        values["mean"], values["std"] = tuple(values["mean"]), tuple(values["std"])
        rows[row["name"]] = PretrainedWeights(**values)
    return rows


def list_pretrained(pattern: str | None = None) -> list[PretrainedWeights]:
    """The table of pretrained weights vitkit knows by name, in table order (each architecture's
    default first); ``pattern`` is a shell-style filter on the name, e.g. ``"*base*in1k"``."""
    return [w for name, w in _table().items() if pattern is None or fnmatch.fnmatch(name, pattern)]


def find_pretrained(name: str, tag: str | None = None) -> PretrainedWeights:
    """The row for ``name``: ``arch.tag``, a bare architecture or alias (its default tag, or
    ``tag`` when given), or a ``google:``/``hf-hub:`` name listed in the table. A name that is
    close to known ones is an error that suggests them."""
    table = _table()
    if name in table and tag is None:
        return table[name]
    arch, _, name_tag = name.partition(".")
    tag = tag or name_tag or None
    try:
        arch = resolve_name(arch)
    except ValueError:
        arch = None
    if arch is not None:
        if tag is None:
            for row in table.values():
                if row.default and row.name.startswith(f"{arch}."):
                    return row
            raise ValueError(f"{arch} has no pretrained weights that vitkit knows; see vitkit models --pretrained")
        if f"{arch}.{tag}" in table:
            return table[f"{arch}.{tag}"]
        tags = [row.name.partition(".")[2] for row in table.values() if row.name.startswith(f"{arch}.")]
        raise ValueError(
            f"{arch} has no pretrained tag {tag!r}; its tags are {', '.join(tags) or 'none'} "
            "(vitkit models --pretrained lists all)"
        )
    close = difflib.get_close_matches(name, list(table) + list_models(), n=4, cutoff=0.6)
    hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    raise ValueError(f"unknown pretrained model {name!r}; {hint}vitkit models --pretrained lists them")


@functools.cache
def _imagenet1k() -> list[tuple[str, str]]:
    text = resources.files(__package__).joinpath("imagenet1k_classes.tsv").read_text()
    return [tuple(line.split("\t", 1)) for line in text.splitlines() if line and not line.startswith("#")]


def imagenet1k_class_names() -> list[str]:
    """The 1,000 ImageNet-1k class names in output order (WordNet lemmas of the sorted synset ids)."""
    return [name for _, name in _imagenet1k()]


def imagenet1k_synsets() -> list[str]:
    """The 1,000 ImageNet-1k WordNet ids (``n01440764`` ...) in output order: the folder names of
    ImageNet's own train/val layout."""
    return [synset for synset, _ in _imagenet1k()]
