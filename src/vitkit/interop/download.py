"""Fetching Google's checkpoints over HTTPS into vitkit's cache, carefully.

The Hugging Face Hub goes through ``huggingface_hub`` (see :mod:`vitkit.interop.hub`); this is
the small client for Google's public bucket (``https://storage.googleapis.com/vit_models/``):
a progress bar, a partial download kept beside the target and resumed with an HTTP Range
request, the size checked against Content-Length and the bytes against the MD5 that Google's
storage sends in ``X-Goog-Hash`` (Google publishes no checksums of its own), and an atomic
rename into the cache, so a file in the cache is always complete.

The cache is ``$VITKIT_HOME`` if set, else ``$XDG_CACHE_HOME/vitkit`` (``~/.cache/vitkit``).
``VITKIT_GOOGLE_BUCKET_URL`` points the client at a mirror of the bucket.
"""

from __future__ import annotations

import base64
import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from ..fileio import cache_dir, default_file_mode

GOOGLE_BUCKET_URL = "https://storage.googleapis.com/vit_models"
_CHUNK = 1 << 20
_ATTEMPTS = 3


class DownloadError(ValueError):
    """A file could not be fetched; the message says what to do instead."""


def confined(path: str | Path, root: str | Path, name: str) -> Path:
    """``path`` normalised (``..`` and ``.`` folded, symlinks left alone), refused unless it lies
    inside ``root``: a downloaded file goes into its cache and nowhere else."""
    normal, top = Path(os.path.abspath(path)), Path(os.path.abspath(root))
    if not normal.is_relative_to(top):
        raise DownloadError(f"{name} leads outside the cache {top} (to {normal}); vitkit writes nothing there")
    return normal


def google_bucket_url() -> str:
    return os.environ.get("VITKIT_GOOGLE_BUCKET_URL", GOOGLE_BUCKET_URL).rstrip("/")


def _offline() -> bool:
    """``VITKIT_OFFLINE`` or huggingface_hub's ``HF_HUB_OFFLINE`` set to a true value."""
    return any(
        os.environ.get(name, "").lower() in ("1", "true", "yes", "on") for name in ("VITKIT_OFFLINE", "HF_HUB_OFFLINE")
    )


def fetch_google_file(path: str, *, progress: bool = True) -> Path:
    """The local copy of ``gs://vit_models/<path>`` (e.g. ``imagenet21k/ViT-B_16.npz``),
    downloaded into the cache on first use. Offline (``HF_HUB_OFFLINE=1`` or
    ``VITKIT_OFFLINE=1``) only the cache is used. A ``path`` that leaves the cache (``../x``,
    ``/x``) is refused before anything is fetched or written."""
    root = cache_dir() / "google"
    target = confined(root / path, root, f"google:{path}")
    path = target.relative_to(os.path.abspath(root)).as_posix()  # normalised: the URL asks for what is cached
    if target.is_file():
        return target
    url = f"{google_bucket_url()}/{path}"
    if _offline():
        raise DownloadError(
            f"{path} is not in vitkit's cache and downloads are off (offline mode); fetch {url} on a machine "
            f"with network and put it at {target}, or pass the .npz file itself"
        )
    partial = target.with_name(target.name + ".part")
    target.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            expected_md5 = _download(url, partial, progress=progress)
            break
        except (urllib.error.URLError, OSError) as error:
            if isinstance(error, urllib.error.HTTPError) and error.code in (403, 404):
                raise DownloadError(f"{url} does not exist (HTTP {error.code}); check the name") from error
            if attempt == _ATTEMPTS:
                kept = (
                    f" What arrived is kept in {partial}: run the same command again to resume."
                    if partial.exists() and partial.stat().st_size
                    else ""
                )
                raise DownloadError(
                    f"could not download {url}: {error}.{kept} Without network, fetch the file elsewhere and put "
                    f"it at {target}, or pass the .npz file itself; VITKIT_OFFLINE=1 skips trying"
                ) from error
    if expected_md5 is not None and _md5(partial) != expected_md5:
        partial.unlink()
        raise DownloadError(
            f"{url} arrived corrupted (its MD5 differs from the one the server sent); the download was "
            "deleted: run the command again"
        )
    partial.chmod(default_file_mode())
    os.replace(partial, target)
    return target


def _download(url: str, partial: Path, *, progress: bool) -> bytes | None:
    """Append the rest of ``url`` to ``partial`` (a Range request when some has arrived already);
    returns the MD5 the server states, if any. Raises OSError when the body ends early."""
    have = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(request, timeout=60) as response:
        if have and response.status != 206:  # the server ignored the range: start again
            have = 0
        remaining = int(response.headers.get("Content-Length", 0)) or None
        total = have + remaining if remaining is not None else None
        expected_md5 = _stated_md5(response.headers.get_all("X-Goog-Hash") or [])
        with (
            open(partial, "ab" if have else "wb") as handle,
            tqdm(
                total=total, initial=have, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1], disable=not progress
            ) as bar,
        ):
            while chunk := response.read(_CHUNK):
                handle.write(chunk)
                bar.update(len(chunk))
            handle.flush()
            os.fsync(handle.fileno())
    size = partial.stat().st_size
    if total is not None and size != total:
        raise OSError(f"the connection closed after {size:,} of {total:,} bytes")
    return expected_md5


def _stated_md5(headers: list[str]) -> bytes | None:
    """``X-Goog-Hash: crc32c=...,md5=...`` (possibly over several headers) → the raw MD5."""
    for header in headers:
        for part in header.split(","):
            kind, _, value = part.strip().partition("=")
            if kind == "md5":
                return base64.b64decode(value)
    return None


def _md5(path: Path) -> bytes:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.digest()
