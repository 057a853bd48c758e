"""A loopback HTTP server that speaks the Hugging Face Hub's file protocol and a public GCS bucket's.

Real client code (``huggingface_hub.hf_hub_download``, ``transformers``' ``from_pretrained``, ``timm``'s
``create_model(..., pretrained=True)``, plain ``urllib`` against ``storage.googleapis.com``) can then run offline
against local folders, and tests can assert which requests it made: ``server.requests`` lists every one as a
``Request(method, path, query, range, origin, status)``, logged before its answer is sent::

    server = LoopbackServer()                      # binds 127.0.0.1:<free port> now; serves after start()
    sha = server.add_repo("timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k", folder)
    server.add_bucket_file("vit_models/imagenet21k/ViT-B_16.npz", "weights.npz")
    with server:                                   # start() ... stop()
        urllib.request.urlopen(server.url + "/vit_models/imagenet21k/ViT-B_16.npz")

What it serves
--------------
On ``server.url`` (the "Hub" and the "bucket"):

* ``HEAD``/``GET /{repo_id}/resolve/{revision}/{filename}`` — ``revision`` is ``main`` or the repo's fake commit sha
  (returned by ``add_repo``). Every answer carries ``X-Repo-Commit``. A regular (git) file answers 200 with its git
  blob sha1 as ``ETag`` and its ``Content-Length``. A file that the Hub would keep in LFS (``lfs`` patterns of
  ``add_repo``; weights by default) answers ``302 Found`` with ``X-Linked-Etag`` (its sha256), ``X-Linked-Size`` and a
  ``Location`` on ``server.cdn_url``, a second port, i.e. another origin, as the Hub's CDN is: huggingface_hub stops
  following there, reads the metadata off the 302 and then GETs the CDN URL directly. No ``X-Xet-*`` header is ever
  sent, so clients use plain HTTP even with ``hf_xet`` installed.
  Errors are those of the Hub: an unknown repo is ``401`` with ``X-Error-Code: RepoNotFound`` (what the Hub answers
  an anonymous client; ``RepositoryNotFoundError``), an unknown revision ``404 RevisionNotFound``, an unknown file
  ``404 EntryNotFound`` (``EntryNotFoundError``; with ``X-Repo-Commit``, so the client caches the miss).
* ``GET /api/models/{repo_id}`` and ``/api/models/{repo_id}/revision/{revision}`` — JSON with ``id``, ``sha``,
  ``siblings: [{"rfilename": ...}]`` (``HfApi.model_info``); ``?blobs=true`` adds sizes, blob ids and LFS info.
* ``GET /api/models/{repo_id}/tree/{revision}[/{folder}]`` (``?recursive=true``) — the JSON list behind
  ``HfApi.list_repo_tree`` and ``list_repo_files``.
* ``HEAD``/``GET /{bucket}/{object}`` — a public GCS object: ``Content-Length``, ``ETag`` (md5 hex), and two
  ``x-goog-hash`` header lines, ``crc32c=<b64>`` (only where ``google_crc32c`` is installed) and ``md5=<b64>``,
  exactly as storage.googleapis.com sends them. Clients that merge repeated headers (httpx, requests) see
  ``crc32c=…, md5=…``; ``urllib``'s ``headers["x-goog-hash"]`` returns only the first line: use ``get_all``. The hashes
  always describe the whole object, Range or not. Unknown objects are ``404`` with GCS's XML error (``NoSuchKey``,
  ``NoSuchBucket``).

On ``server.cdn_url``: ``HEAD``/``GET`` of the LFS URLs handed out in ``Location``.

Every file answer (Hub, CDN, bucket) honours ``Range: bytes=N-``, ``bytes=N-M`` and ``bytes=-N`` with ``206`` and
``Content-Range``, and ``416`` past the end, so resumed downloads work. Faults for tests, on the next GETs of a
*resource* — a bucket object ``"{bucket}/{object}"`` or a Hub file ``"{repo_id}/{filename}"``, whatever URL reaches
it: ``cut_next(name, after_bytes)`` sends the full ``Content-Length`` header but closes the connection after
``after_bytes`` bytes of body; ``corrupt(name)`` flips one byte of what is sent while every header (hashes, sizes)
stays the original's. (huggingface_hub keeps what it receives in 10 MiB pieces and drops a partial piece when the
connection breaks: it resumes with ``Range`` only after a cut past 10 MiB, and starts over below that.)

Pointing huggingface_hub at it
------------------------------
huggingface_hub reads ``HF_ENDPOINT``, ``HF_HOME``/``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` once, when
``huggingface_hub.constants`` is first imported (transformers and timm import it on their own import), and derives
more from them then (the URL template, the set of trusted Hub hosts). So the address must be known *before* that
import. A ``LoopbackServer`` binds its ports when it is constructed, so its ``url`` is known at once and no other
process can take the port between choosing and serving it. ``tests/conftest.py`` does this on its first lines,
before any import that may import huggingface_hub, and hands the server to tests as the ``hub`` fixture.

``configure_hub_env`` refuses to edit ``os.environ`` once huggingface_hub has read it. In that process every test
shares the one cache; a test that needs a fresh one passes ``cache_dir=tmp_path`` (``hf_hub_download``,
``timm.create_model``, ``from_pretrained`` all take it) or runs in a child process, which gets a copy of the
environment: ``subprocess.run(..., env=configure_hub_env(dict(os.environ), server.url, tmp_path / "hf"))`` — also the
way to test offline mode (``offline=True``), fixed at import as well.
"""

from __future__ import annotations

import base64
import contextlib
import fnmatch
import hashlib
import json
import mimetypes
import os
import re
import socket
import socketserver
import sys
import threading
from collections import deque
from collections.abc import MutableMapping
from dataclasses import dataclass
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import NamedTuple
from urllib.parse import parse_qs, quote, unquote, urlsplit

try:  # GCS sends a crc32c for every object; without the package we leave that hash out
    import google_crc32c
except ImportError:  # pragma: no cover - depends on the environment
    google_crc32c = None

# Files the Hub keeps in LFS by default (its .gitattributes template, trimmed to what model repos hold).
LFS_PATTERNS = (
    "*.safetensors",
    "*.bin",
    "*.pt",
    "*.pth",
    "*.ckpt",
    "*.h5",
    "*.msgpack",
    "*.npy",
    "*.npz",
    "*.onnx",
    "*.pb",
    "*.pkl",
    "*.tflite",
    "*.tar",
    "*.gz",
    "*.zip",
)

_CHUNK = 1 << 20
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+(?:/[^/]+)?)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")
_MODEL_INFO = re.compile(r"^/api/models/(?P<repo>[^/]+(?:/[^/]+)?)(?:/revision/(?P<rev>[^/]+))?$")
_TREE = re.compile(r"^/api/models/(?P<repo>[^/]+(?:/[^/]+)?)/tree/(?P<rev>[^/]+)(?:/(?P<folder>.*))?$")
_CDN = re.compile(r"^/lfs/(?P<sha256>[0-9a-f]{64})/(?P<name>.+)$")


class Request(NamedTuple):
    """One request as the server received it."""

    method: str
    path: str  # percent-encoded as sent, without the query
    query: str
    range: str | None  # the Range header
    origin: str  # the server.url or server.cdn_url it reached
    status: int | None  # the status answered (None: the handler failed before answering)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (another process may take it before you bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def configure_hub_env(
    environ: MutableMapping[str, str], endpoint: str, hf_home: str | os.PathLike, *, offline: bool = False
) -> MutableMapping[str, str]:
    """Point huggingface_hub (and so transformers and timm) in ``environ`` at ``endpoint``, caching under ``hf_home``.

    Sets ``HF_ENDPOINT`` and ``HF_HOME``, drops variables that would override them (``HF_HUB_CACHE``, …) or send a
    token, turns off telemetry and progress bars, sets ``HF_HUB_OFFLINE`` from ``offline``, and adds the endpoint's
    host to ``NO_PROXY`` so that a proxy configured for the real internet is bypassed. Returns ``environ``.
    Editing ``os.environ`` after huggingface_hub has read it would silently change nothing, so that raises.
    """
    if environ is os.environ and "huggingface_hub.constants" in sys.modules:
        raise RuntimeError(
            "huggingface_hub has already read its environment: configure it before anything imports "
            "huggingface_hub, transformers or timm (or pass a copy of os.environ to a child process)"
        )
    for key in (
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "HF_ASSETS_CACHE",
        "HF_XET_CACHE",
        "TRANSFORMERS_CACHE",
        "TRANSFORMERS_OFFLINE",
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_TOKEN_PATH",
        "HUGGINGFACE_CO_STAGING",
    ):
        environ.pop(key, None)
    environ.update(
        HF_ENDPOINT=endpoint.rstrip("/"),
        HF_HOME=os.fspath(hf_home),
        HF_HUB_OFFLINE="1" if offline else "0",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_HUB_DISABLE_IMPLICIT_TOKEN="1",
    )
    host = urlsplit(endpoint).hostname
    for key in ("NO_PROXY", "no_proxy"):
        hosts = [entry.strip() for entry in environ.get(key, "").split(",") if entry.strip()]
        environ[key] = ",".join(hosts if host in hosts else [*hosts, host])
    return environ


@dataclass(frozen=True)
class _Blob:
    """A served file: where it lies and every digest that one protocol or the other advertises."""

    path: Path
    size: int
    git_oid: str  # git blob sha1: the Hub's ETag of a regular file
    sha256: str  # the Hub's ETag of an LFS file
    md5: bytes
    crc32c: bytes | None
    lfs: bool
    mtime: float

    @classmethod
    def of(cls, path: Path, *, lfs: bool = False) -> _Blob:
        stat = path.stat()
        git, sha256, md5 = hashlib.sha1(b"blob %d\0" % stat.st_size), hashlib.sha256(), hashlib.md5()
        crc = google_crc32c.Checksum() if google_crc32c is not None else None
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                for digest in (git, sha256, md5, crc):
                    if digest is not None:
                        digest.update(chunk)
        return cls(
            path=path,
            size=stat.st_size,
            git_oid=git.hexdigest(),
            sha256=sha256.hexdigest(),
            md5=md5.digest(),
            crc32c=crc.digest() if crc is not None else None,
            lfs=lfs,
            mtime=stat.st_mtime,
        )

    def lfs_info(self) -> dict:
        return {"oid": self.sha256, "size": self.size, "pointerSize": 134}


@dataclass(frozen=True)
class _Repo:
    repo_id: str
    sha: str
    files: dict[str, _Blob]  # repo path (with /) -> blob
    branches: tuple[str, ...] = ("main",)

    def knows(self, revision: str) -> bool:
        return revision in (*self.branches, self.sha)


class _Listener(ThreadingHTTPServer):
    """One listening socket; remembers its open connections so that ``stop()`` can really cut them."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], owner: LoopbackServer, cdn: bool):
        self.owner, self.cdn = owner, cdn
        self.connections: set[socket.socket] = set()
        super().__init__(address, _Handler)

    def server_bind(self):
        # HTTPServer.server_bind would look the host up (getfqdn), which can stall on a machine without DNS
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that hangs up early is no news
            super().handle_error(request, client_address)

    def process_request(self, request, client_address):
        with self.owner._lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self.owner._lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self):
        with self.owner._lock:
            connections = list(self.connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    @property
    def origin(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


class LoopbackServer:
    """The Hub's file endpoints and a public GCS bucket on 127.0.0.1 (see the module docstring).

    ``port`` (0: any free one) is the port of ``url``; ``cdn_port`` that of ``cdn_url``, where LFS files are fetched.
    Both are bound here, so ``url`` is valid before ``start()``. ``stop()`` closes the ports and every open
    connection; ``start()`` may be called again afterwards and serves on the same ports.
    """

    def __init__(self, port: int = 0, *, host: str = "127.0.0.1", cdn_port: int = 0):
        self.host = host
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._repos: dict[str, _Repo] = {}
        self._objects: dict[str, _Blob] = {}
        self._cuts: dict[str, deque[int]] = {}
        self._corrupt: dict[str, int | None] = {}
        self._listeners = [_Listener((host, port), self, cdn=False), _Listener((host, cdn_port), self, cdn=True)]
        self._ports = [listener.server_address[1] for listener in self._listeners]
        self._threads: list[threading.Thread] = []

    # -- addresses --------------------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._ports[0]

    @property
    def url(self) -> str:
        """The Hub endpoint (``HF_ENDPOINT``) and the bucket host, e.g. ``http://127.0.0.1:PORT``."""
        return f"http://{self.host}:{self._ports[0]}"

    @property
    def cdn_url(self) -> str:
        """The origin that LFS files are redirected to."""
        return f"http://{self.host}:{self._ports[1]}"

    # -- content ----------------------------------------------------------------------------------------------------

    def add_repo(
        self,
        repo_id: str,
        folder: str | os.PathLike,
        *,
        lfs: tuple[str, ...] = LFS_PATTERNS,
        branches: tuple[str, ...] = (),
    ) -> str:
        """Serve every file under ``folder`` as model repo ``repo_id`` (``"org/name"`` or ``"name"``).

        Files are hashed now (add them first); their bytes are read when asked for. Files whose name matches one of
        the ``lfs`` glob patterns are served as LFS files (through ``cdn_url``). Registering a repo again replaces it.
        Returns the repo's fake commit sha, which depends on its content, and which ``revision=`` accepts like
        ``"main"``. ``branches`` are more revision names that answer as ``main`` does, whatever they hold (as a
        mirror behind ``HF_ENDPOINT`` might answer a name the Hub would refuse).
        """
        if repo_id.count("/") > 1 or "" in repo_id.split("/"):
            raise ValueError(f"not a repo id: {repo_id!r}")
        root = Path(folder)
        if not root.is_dir():
            raise NotADirectoryError(root)
        files = {}
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            name = path.relative_to(root).as_posix()
            if name.startswith(".git/") or name == ".git":
                continue
            files[name] = _Blob.of(path, lfs=any(fnmatch.fnmatch(path.name, pattern) for pattern in lfs))
        tree = "".join(f"{name} {blob.git_oid}\n" for name, blob in files.items())
        sha = hashlib.sha1(f"{repo_id}\n{tree}".encode()).hexdigest()
        with self._lock:
            self._repos[repo_id] = _Repo(repo_id, sha, files, ("main", *branches))
        return sha

    def add_bucket_file(self, name: str, local_path: str | os.PathLike) -> None:
        """Serve ``local_path`` as GCS object ``name`` = ``"{bucket}/{object path}"`` (at ``url + "/" + name``)."""
        name = name.strip("/")
        if "/" not in name:
            raise ValueError(f"expected 'bucket/object', got {name!r}")
        blob = _Blob.of(Path(local_path))
        with self._lock:
            self._objects[name] = blob

    # -- faults -----------------------------------------------------------------------------------------------------

    def cut_next(self, name: str, after_bytes: int) -> None:
        """The next GET of resource ``name`` sends its full headers, ``after_bytes`` bytes of body, then hangs up.

        ``name`` is a bucket object (``"vit_models/imagenet21k/ViT-B_16.npz"``) or a Hub file
        (``"{repo_id}/{filename}"``). Calls queue up: two calls cut the next two GETs.
        """
        name = self._known(name)
        with self._lock:
            self._cuts.setdefault(name, deque()).append(int(after_bytes))

    def corrupt(self, name: str, times: int | None = None) -> None:
        """Serve resource ``name`` with one byte flipped (headers, hashes included, unchanged) on the next ``times``
        GETs, or on every GET until ``clear_faults()`` when ``times`` is None."""
        if times is not None and times < 1:
            raise ValueError("times must be at least 1, or None for every GET")
        name = self._known(name)
        with self._lock:
            self._corrupt[name] = times

    def clear_faults(self) -> None:
        """Forget every pending ``cut_next`` and ``corrupt``."""
        with self._lock:
            self._cuts.clear()
            self._corrupt.clear()

    # -- life cycle -------------------------------------------------------------------------------------------------

    def start(self) -> LoopbackServer:
        """Serve (in daemon threads) until ``stop()``. Starting a started server does nothing."""
        if self._threads:
            return self
        if not self._listeners:  # stopped before: bind the same ports again
            self._listeners = [_Listener((self.host, port), self, cdn=i == 1) for i, port in enumerate(self._ports)]
        for listener in self._listeners:
            thread = threading.Thread(
                target=listener.serve_forever, kwargs={"poll_interval": 0.02}, name=f"loopback{listener.origin}"
            )
            thread.daemon = True
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Close both ports and every connection still open: clients see a server that is gone."""
        for listener in self._listeners:
            if self._threads:
                listener.shutdown()
            listener.server_close()
            listener.drop_connections()
        for thread in self._threads:
            thread.join()
        self._listeners, self._threads = [], []

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- internals shared with the handler --------------------------------------------------------------------------

    def _known(self, name: str) -> str:
        name = name.strip("/")
        if self._resource(name) is None:
            raise KeyError(f"no bucket object or repo file named {name!r}")
        return name

    def _resource(self, name: str) -> _Blob | None:
        with self._lock:
            if name in self._objects:
                return self._objects[name]
            for repo_id, repo in self._repos.items():
                if name.startswith(repo_id + "/") and name[len(repo_id) + 1 :] in repo.files:
                    return repo.files[name[len(repo_id) + 1 :]]
        return None

    def _take_faults(self, name: str) -> tuple[int | None, bool]:
        """The cut (bytes to send, or None) and the corruption that this GET of ``name`` gets."""
        with self._lock:
            cuts = self._cuts.get(name)
            cut = cuts.popleft() if cuts else None
            corrupt = name in self._corrupt
            if corrupt and self._corrupt[name] is not None:
                self._corrupt[name] -= 1
                if self._corrupt[name] <= 0:
                    del self._corrupt[name]
        return cut, corrupt


def _byte_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """The ``(start, stop)`` that a ``Range`` header asks of ``size`` bytes; None to send everything (no header, or
    one we ignore, as RFC 9110 allows: several ranges, another unit); ``"unsatisfiable"`` for a 416."""
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header or "")
    if not match or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if first == "":  # the last N bytes
        start, stop = max(size - int(last), 0), size
        return (start, stop) if int(last) > 0 and size > 0 else "unsatisfiable"
    start = int(first)
    stop = size if last == "" else min(int(last) + 1, size)
    if last != "" and int(last) < start:
        return None
    return (start, stop) if start < size else "unsatisfiable"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as clients' connection pools expect
    server_version = "loopback"
    timeout = 30  # an idle keep-alive connection gives its thread back after this
    _logged = True  # nothing to log until a request starts
    server: _Listener

    def log_message(self, format, *args):  # the request list is the log
        pass

    # -- entry points -----------------------------------------------------------------------------------------------

    def do_GET(self):
        self._answer(self._dispatch)

    def do_HEAD(self):
        self._answer(self._dispatch)

    def do_POST(self):
        self._answer(self._unsupported)

    def do_PUT(self):
        self._answer(self._unsupported)

    def do_DELETE(self):
        self._answer(self._unsupported)

    def parse_request(self):  # the start of every request on the connection
        self._logged = False
        return super().parse_request()

    def _answer(self, respond):
        """Run ``respond(path, query)``; the request is logged with its status as soon as that is sent."""
        split = urlsplit(self.path)
        try:
            respond(split.path, parse_qs(split.query))
        finally:
            if not self._logged:
                self._log(None)

    def send_response(self, code, message=None):
        if not self._logged:  # before any byte of the answer, so no client can see an answer not yet logged
            self._log(code)
        super().send_response(code, message)

    def _log(self, status: int | None):
        self._logged = True
        # also for answers that http.server gives by itself (501 for other methods, 400 for a bad request line)
        split = urlsplit(getattr(self, "path", ""))
        headers = getattr(self, "headers", None)
        request = Request(
            self.command or "", split.path, split.query, headers and headers.get("Range"), self.server.origin, status
        )
        with self.server.owner._lock:
            self.server.owner.requests.append(request)

    def _unsupported(self, path: str, query: dict[str, list[str]]):
        self._json(405, {"error": f"{self.command} is not supported by the loopback server"})

    def _dispatch(self, path: str, query: dict[str, list[str]]):
        if self.server.cdn:
            return self._cdn(path)
        if path.startswith("/api/"):
            return self._api(path, query)
        owner = self.server.owner
        name = unquote(path).strip("/")
        blob = owner._objects.get(name)
        if blob is not None:
            return self._send_blob(blob, name, self._gcs_headers(blob))
        if match := _RESOLVE.match(path):
            return self._resolve(match["repo"], unquote(match["rev"]), unquote(match["file"]))
        bucket = name.split("/", 1)[0]
        if any(known.split("/", 1)[0] == bucket for known in list(owner._objects)):
            return self._gcs_error(404, "NoSuchKey", "The specified key does not exist.", f"No such object: {name}")
        return self._gcs_error(404, "NoSuchBucket", "The specified bucket does not exist.")

    # -- the Hub ----------------------------------------------------------------------------------------------------

    def _repo_or_error(self, repo_id: str, revision: str | None) -> _Repo | None:
        """The repo, or None after answering as the Hub does when it or the revision does not exist."""
        repo = self.server.owner._repos.get(repo_id)
        if repo is None:
            self._hub_error(401, "RepoNotFound", "Repository not found")
        elif revision is not None and not repo.knows(revision):
            self._hub_error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        else:
            return repo
        return None

    def _resolve(self, repo_id: str, revision: str, filename: str):
        repo = self._repo_or_error(repo_id, revision)
        if repo is None:
            return
        blob = repo.files.get(filename)
        if blob is None:
            return self._hub_error(404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": repo.sha})
        headers = {"X-Repo-Commit": repo.sha, "Accept-Ranges": "bytes"}
        if blob.lfs:
            location = f"{self.server.owner.cdn_url}/lfs/{blob.sha256}/{quote(f'{repo_id}/{filename}')}"
            headers |= {"X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": str(blob.size), "Location": location}
            return self._send(302, f"Found. Redirecting to {location}".encode(), "text/plain; charset=utf-8", headers)
        headers["ETag"] = f'"{blob.git_oid}"'
        self._send_blob(blob, f"{repo_id}/{filename}", headers)

    def _cdn(self, path: str):
        match = _CDN.match(path)
        name = unquote(match["name"]) if match else ""
        blob = self.server.owner._resource(name) if match else None
        if blob is None or blob.sha256 != match["sha256"]:
            return self._send(404, b"Not Found", "text/plain; charset=utf-8")
        filename = name.rsplit("/", 1)[-1]
        disposition = f"inline; filename*=UTF-8''{quote(filename)}; filename=\"{filename}\";"
        self._send_blob(blob, name, {"ETag": f'"{blob.sha256}"', "Content-Disposition": disposition})

    def _api(self, path: str, query: dict[str, list[str]]):
        if match := _TREE.match(path):
            return self._tree(match["repo"], unquote(match["rev"]), unquote(match["folder"] or ""), query)
        if match := _MODEL_INFO.match(path):
            return self._model_info(match["repo"], unquote(match["rev"]) if match["rev"] else None, query)
        self._json(404, {"error": "Sorry, we can't find the page you are looking for."})

    def _model_info(self, repo_id: str, revision: str | None, query: dict[str, list[str]]):
        repo = self._repo_or_error(repo_id, revision)
        if repo is None:
            return
        blobs = query.get("blobs", [""])[0].lower() == "true"
        siblings = []
        for name, blob in repo.files.items():
            sibling = {"rfilename": name}
            if blobs:
                sibling |= {"size": blob.size, "blobId": blob.git_oid}
                if blob.lfs:
                    sibling["lfs"] = {"sha256": blob.sha256, "size": blob.size, "pointerSize": 134}
            siblings.append(sibling)
        self._json(
            200,
            {
                "_id": repo.sha[:24],
                "id": repo_id,
                "modelId": repo_id,
                "author": repo_id.split("/")[0] if "/" in repo_id else None,
                "sha": repo.sha,
                "lastModified": "1970-01-01T00:00:00.000Z",
                "createdAt": "1970-01-01T00:00:00.000Z",
                "private": False,
                "gated": False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
            },
        )

    def _tree(self, repo_id: str, revision: str, folder: str, query: dict[str, list[str]]):
        repo = self._repo_or_error(repo_id, revision)
        if repo is None:
            return
        folder = folder.strip("/")
        prefix = f"{folder}/" if folder else ""
        recursive = query.get("recursive", [""])[0].lower() == "true"
        if folder and not any(name.startswith(prefix) for name in repo.files):
            message = f"{folder} does not exist on {revision}"
            return self._hub_error(404, "EntryNotFound", message, {"X-Repo-Commit": repo.sha})
        entries: dict[str, dict] = {}
        for name, blob in repo.files.items():
            if not name.startswith(prefix):
                continue
            parts = name[len(prefix) :].split("/")
            for depth in range(1, len(parts)):  # the folders on the way
                if depth == 1 or recursive:
                    folder_path = prefix + "/".join(parts[:depth])
                    oid = hashlib.sha1(folder_path.encode()).hexdigest()
                    entries.setdefault(folder_path, {"type": "directory", "oid": oid, "size": 0, "path": folder_path})
                if not recursive:
                    break
            if len(parts) == 1 or recursive:
                entry = {"type": "file", "oid": blob.git_oid, "size": blob.size, "path": name}
                if blob.lfs:
                    entry["lfs"] = blob.lfs_info()
                entries[name] = entry
        self._json(200, [entries[key] for key in sorted(entries)])

    def _hub_error(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        headers = {"X-Error-Code": code, "X-Error-Message": message} | (headers or {})
        self._json(status, {"error": message}, headers)

    # -- the bucket -------------------------------------------------------------------------------------------------

    @staticmethod
    def _gcs_headers(blob: _Blob) -> list[tuple[str, str]]:
        headers = [
            ("ETag", f'"{blob.md5.hex()}"'),
            ("Last-Modified", formatdate(blob.mtime, usegmt=True)),
            ("Cache-Control", "public, max-age=3600"),
            ("x-goog-generation", str(int(blob.mtime * 1e6))),
            ("x-goog-metageneration", "1"),
            ("x-goog-stored-content-encoding", "identity"),
            ("x-goog-stored-content-length", str(blob.size)),
        ]
        if blob.crc32c is not None:
            headers.append(("x-goog-hash", f"crc32c={base64.b64encode(blob.crc32c).decode()}"))
        headers += [
            ("x-goog-hash", f"md5={base64.b64encode(blob.md5).decode()}"),
            ("x-goog-storage-class", "STANDARD"),
            ("Accept-Ranges", "bytes"),
        ]
        return headers

    def _gcs_error(self, status: int, code: str, message: str, details: str | None = None):
        body = f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>{message}</Message>"
        body += (f"<Details>{details}</Details>" if details else "") + "</Error>"
        self._send(status, body.encode(), "application/xml; charset=UTF-8")

    # -- sending ----------------------------------------------------------------------------------------------------

    def _json(self, status: int, payload, headers: dict[str, str] | None = None):
        self._send(status, json.dumps(payload).encode(), "application/json; charset=utf-8", headers)

    def _send(self, status: int, body: bytes, content_type: str, headers=None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in headers.items() if isinstance(headers, dict) else headers or ():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_blob(self, blob: _Blob, name: str, headers):
        """Answer with ``blob``'s bytes (or the part a Range asks for), applying the faults queued for ``name``."""
        headers = list(headers.items()) if isinstance(headers, dict) else list(headers)
        span = _byte_range(self.headers.get("Range"), blob.size)
        if span == "unsatisfiable":
            headers.append(("Content-Range", f"bytes */{blob.size}"))
            return self._send(416, b"", "text/plain; charset=utf-8", headers)
        start, stop = span or (0, blob.size)
        self.send_response(206 if span else 200)
        content_type = mimetypes.guess_type(blob.path.name)[0] or "application/octet-stream"
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(stop - start))
        if span:
            self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{blob.size}")
        for key, value in headers:
            self.send_header(key, value)
        self.end_headers()
        if self.command == "HEAD":
            return
        cut, corrupt = self.server.owner._take_faults(name)
        flip = start + (stop - start) // 2 if corrupt and stop > start else -1
        end = stop if cut is None else min(stop, start + cut)
        with blob.path.open("rb") as handle:
            handle.seek(start)
            position = start
            while position < end:
                chunk = handle.read(min(_CHUNK, end - position))
                if not chunk:  # the file shrank under us: nothing sensible left to send
                    break
                if position <= flip < position + len(chunk):
                    chunk = bytearray(chunk)
                    chunk[flip - position] ^= 0xFF
                self.wfile.write(chunk)
                position += len(chunk)
        if cut is not None:
            self.wfile.flush()
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
