"""Hugging Face Hub repos through ``huggingface_hub``: its cache, ``HF_ENDPOINT``, ``HF_HOME``,
``HF_HUB_OFFLINE`` and tokens work as they do for every other Hugging Face tool.

A repo is fetched file by file into the hub cache (``config.json``, the weights, and
``preprocessor_config.json`` where there is one), which gives a local snapshot folder that
the folder readers take from there.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import huggingface_hub
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

from .download import confined
from .folder import WEIGHT_FILES

PREFIXES = ("hf-hub:", "hf_hub:")  # timm accepts both
#: fetched for transformers' layout where the repo has them
OPTIONAL_FILES = ("preprocessor_config.json",)


def is_hub_id(source: str) -> bool:
    return source.startswith(PREFIXES)


# What git refuses in a branch or tag name (git check-ref-format), which every revision on the Hub
# is, commit hashes included. huggingface_hub checks repo ids but not revisions, and writes
# ``refs/<revision>`` into its cache: a ``..`` there would write outside it.
_BAD_REVISION = re.compile(r"\.\.|@\{|//|[\x00-\x20\x7f~^:?*\[\\]|^/|/$|\.$|(^|/)\.|\.lock(/|$)|^@$")


def parse_hub_id(source: str) -> tuple[str, str | None]:
    """``hf-hub:ORG/REPO[@REVISION]`` → (``ORG/REPO``, revision or None). The repo id is checked
    by huggingface_hub's own rules, the revision by git's for branch and tag names."""
    spec = source.split(":", 1)[1]
    repo, _, revision = spec.partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ValueError(f"{source!r} is not a hub id; write hf-hub:ORG/REPO or hf-hub:ORG/REPO@REVISION")
    try:
        validate_repo_id(repo)
    except HFValidationError as error:
        raise ValueError(f"{source!r} is not a hub id: {error}") from None
    if _BAD_REVISION.search(revision):
        raise ValueError(
            f"{source!r}: {revision!r} is not a branch, tag or commit name (git refuses '..', spaces, "
            "control characters and ~^:?*[\\ in them); write hf-hub:ORG/REPO@main, a tag or a commit hash"
        )
    return repo, revision or None


class _NotCached(Exception):
    """Offline (or the hub unreachable) and the file is not in the cache."""


def hub_snapshot(source: str) -> Path:
    """The local folder holding a hub repo's config, weights and preprocessing files,
    downloading what the cache lacks."""
    repo, revision = parse_hub_id(source)
    try:
        config = _download(source, repo, "config.json", revision)
        if config is None:
            raise ValueError(f"{source} has no config.json; vitkit reads repos in timm's or transformers' layout")
        weights = (_download(source, repo, name, revision, cached_only_ok=True) for name in WEIGHT_FILES)
        if not any(weights):  # stops at the first file found
            _download(source, repo, WEIGHT_FILES[0], revision)  # raises _NotCached when that is why
            raise ValueError(
                f"{source} holds none of {', '.join(WEIGHT_FILES)}; vitkit reads repos in timm's or "
                "transformers' layout (sharded or other weight files are not supported)"
            )
        if "model_type" in json.loads(config.read_text()):  # transformers' layout: its processor config too
            for name in OPTIONAL_FILES:
                _download(source, repo, name, revision, cached_only_ok=True)
    except _NotCached as error:
        raise ValueError(
            f"{source} is not in the Hugging Face cache ({huggingface_hub.constants.HF_HUB_CACHE}) and the hub "
            f"cannot be reached or HF_HUB_OFFLINE is set. On a machine with network run `hf download {repo}` "
            "and copy that cache here (or set HF_HOME to it), or pass a local folder instead"
        ) from error
    return config.parent


def _download(
    source: str, repo: str, filename: str, revision: str | None, *, cached_only_ok: bool = False
) -> Path | None:
    """One file of the repo from the cache or the hub; None when the repo has no such file (or,
    with ``cached_only_ok``, when offline and it is not cached)."""
    try:
        local = huggingface_hub.hf_hub_download(repo, filename, revision=revision)
        return confined(local, huggingface_hub.constants.HF_HUB_CACHE, f"{source} {filename}")
    except LocalEntryNotFoundError as error:
        if cached_only_ok:
            return None
        raise _NotCached(filename) from error
    except GatedRepoError as error:
        raise ValueError(f"{source} is gated: accept its terms on the hub and log in (hf auth login)") from error
    except RepositoryNotFoundError as error:
        raise ValueError(
            f"{source}: no such repo on the hub ({repo}); check the name, or log in if it is private"
        ) from error
    except RevisionNotFoundError as error:
        raise ValueError(f"{source}: the repo has no revision {revision!r}") from error
    except EntryNotFoundError:
        return None
    except HfHubHTTPError as error:
        raise ValueError(f"{source}: the hub answered with an error for {filename}: {error}") from error
