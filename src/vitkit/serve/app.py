"""``vitkit serve``'s web app: a versioned JSON API, health checks, and a page that explains each
answer. It holds no model logic: preprocessing, batching and explanations come from the library.

Bad input never takes the server down: every error is a 4xx JSON ``{"error": ...}``; uploads over
the limit are refused from their ``Content-Length`` (or as soon as the stream passes the limit)
without being read into memory; slow uploads time out.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import ipaddress
import json
import logging
import os
import secrets
import signal
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import anyio
import torch
import uvicorn
from fastapi import Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..analysis.explain import EXPLANATIONS, explanation_maps, heatmap, input_picture, overlay
from ..data.images import DEFAULT_MAX_PIXELS, ImageTooElongated, ImageTooLarge, UnreadableImage, load_image
from ..interop import Int8Model, LoadedModel
from ..models import parameter_count
from ..predict import labels_above
from .batching import DynamicBatcher
from .connections import uvicorn_config

API_VERSION = "v1"
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeSettings:
    """How the server behaves; the CLI flags of ``vitkit serve``."""

    model_name: str
    max_batch: int = 16
    max_wait_ms: float = 5.0
    precision: str = "fp32"
    #: images with more pixels are refused (413) from their header, before decoding
    max_pixels: int = DEFAULT_MAX_PIXELS
    #: required as ``Authorization: Bearer <key>`` on /v1/* when set (any Unicode, sent as UTF-8)
    api_key: str | None = None
    max_upload_mb: float = 10.0
    #: seconds to wait for each piece of an upload before answering 408
    upload_timeout_s: float = 30.0
    max_images_per_batch: int = 64
    #: without an api_key, the names the ``Host`` header may give besides IP addresses, so that a
    #: web page elsewhere cannot reach the server by DNS rebinding; "*" allows every name
    allowed_hosts: tuple[str, ...] = ("localhost",)
    #: seconds for a request header to arrive whole before answering 408 (``vitkit serve`` only)
    header_timeout_s: float = 10.0
    #: seconds an idle kept-alive connection stays open (``vitkit serve`` only)
    keep_alive_s: float = 5.0
    #: open connections at most (``vitkit serve`` only); None: 512, or fewer to stay under the
    #: open-file limit (see :mod:`vitkit.serve.connections`)
    max_connections: int | None = None

    def __post_init__(self) -> None:
        if self.api_key is not None and (not self.api_key.strip() or not self.api_key.isprintable()):
            what = "empty" if not self.api_key.strip() else "not printable (it holds a control character)"
            raise ValueError(
                f"the API key (--api-key or VITKIT_API_KEY) is {what}: give a key that clients can send as "
                "Authorization: Bearer KEY, or unset it to serve without one"
            )
        for name in ("header_timeout_s", "keep_alive_s"):
            if not 0 < getattr(self, name) < float("inf"):
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{flag} must be a positive number of seconds, got {getattr(self, name)}")


#: the ``explain=`` values (FastAPI answers 422 to others)
Explanation = Literal[EXPLANATIONS]


def _png(picture: Image.Image) -> str:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class _UploadTooLarge(Exception):
    pass


class _UploadTooSlow(Exception):
    pass


class UploadLimits:
    """ASGI middleware: refuse bodies over ``max_bytes`` (413) from their ``Content-Length`` or while
    they stream in, and answer 408 when a piece of the body takes longer than ``timeout_s``."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, timeout_s: float) -> None:
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _send_error(send, 413, self._too_large())
            return
        received, body_done, started = 0, False, False

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if body_done:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.timeout_s)
            except TimeoutError as error:
                raise _UploadTooSlow from error
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > self.max_bytes:
                    raise _UploadTooLarge
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except (_UploadTooLarge, _UploadTooSlow) as error:
            if not started:
                too_large = isinstance(error, _UploadTooLarge)
                message = self._too_large() if too_large else f"the upload stalled for {self.timeout_s:g} s"
                await _send_error(send, 413 if too_large else 408, message)

    def _too_large(self) -> str:
        return f"the upload is over the server's limit of {self.max_bytes / 1e6:g} MB (--max-upload-mb)"


async def _send_error(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": [*headers, (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def served_name(source: str) -> str:
    """How the server names the model it serves: a file or folder by its own name (its place on
    disk is nobody's business), a pretrained or hub name as it is."""
    path = Path(source)
    return path.resolve().name if path.exists() else source


class HostCheck:
    """ASGI middleware: answer 400 to a request whose ``Host`` names neither an IP address nor one
    of ``names`` ("*": any). A web page that rebinds its own DNS name to 127.0.0.1 sends its own
    name, so it cannot reach a server that has no API key; clients of an address are unaffected."""

    def __init__(self, app: ASGIApp, *, names: tuple[str, ...]) -> None:
        self.app, self.names = app, {name.lower().rstrip(".") for name in names}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and "*" not in self.names:
            given = dict(scope["headers"]).get(b"host")  # an HTTP/1.0 client without one is not a browser
            name = None if given is None else _host_name(given.decode("latin-1"))
            if name is not None and not _is_address(name) and name not in self.names:
                names = ", ".join(sorted(self.names))
                message = (
                    f"this server does not answer to the host name {name!r} (it answers to IP addresses and "
                    f"{names}); start it with --allowed-hosts {name} or with --api-key"
                )
                await _send_error(send, 400, message)
                return
        await self.app(scope, receive, send)


def _host_name(host: str) -> str:
    """The name or address in a ``Host`` header, without its port or an IPv6 address's brackets."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return (host.rpartition(":")[0] if host.count(":") == 1 else host).lower().rstrip(".")


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def batcher_for(loaded: LoadedModel, settings: ServeSettings, *, thread: bool = True) -> DynamicBatcher:
    """The dynamic batcher ``settings`` describe, for ``loaded``'s model and preprocessing."""
    return DynamicBatcher(
        loaded.model,
        loaded.preprocess,
        max_batch=settings.max_batch,
        max_wait_ms=settings.max_wait_ms,
        precision=settings.precision,
        thread=thread,
        multi_label=loaded.multi_label,
    )


def serve(loaded: LoadedModel, settings: ServeSettings, *, host: str, port: int, log_level: str = "info") -> None:
    """Serve until Ctrl-C or SIGTERM: uvicorn in a thread of its own, the model in this (the main)
    thread (see :mod:`vitkit.serve.batching` for why). Slow and idle clients are bounded by the
    settings' connection limits (see :mod:`vitkit.serve.connections`). Raises ``ValueError`` if
    uvicorn could not start (a port in use, say) or the limits do not fit the open-file limit."""
    if not _is_address(_host_name(host)) and host not in settings.allowed_hosts:  # served by its name
        settings = dataclasses.replace(settings, allowed_hosts=(*settings.allowed_hosts, host))
    batcher = batcher_for(loaded, settings, thread=False)
    config = uvicorn_config(
        create_app(loaded, settings, batcher),
        host=host,
        port=port,
        log_level=log_level,
        max_connections=settings.max_connections,
        header_timeout_s=settings.header_timeout_s,
        keep_alive_s=settings.keep_alive_s,
    )
    server = uvicorn.Server(config)
    web = threading.Thread(target=server.run, name="vitkit-web")
    web.start()
    signal.signal(signal.SIGTERM, lambda *_: batcher.close())  # a scheduler's stop: as Ctrl-C
    try:
        batcher.work(while_true=web.is_alive)
    except KeyboardInterrupt:
        pass
    finally:
        server.should_exit = True
        web.join()
    if not server.started:
        raise ValueError(f"could not serve on {host}:{port} (uvicorn's message is above)")


def create_app(loaded: LoadedModel, settings: ServeSettings, batcher: DynamicBatcher | None = None) -> FastAPI:
    """The FastAPI app serving ``loaded`` (see :class:`ServeSettings`). Without ``batcher`` the app
    starts one with its own worker thread; ``vitkit serve`` passes one whose :meth:`work` runs in
    the main thread (see :mod:`vitkit.serve.batching` for why)."""
    loaded.require_classifier("serve")
    model, preprocess, class_names = loaded
    # the explain= values that answer; an int8 model has no attention to explain
    explanations = ("none",) if isinstance(model, Int8Model) else EXPLANATIONS
    state: dict[str, Any] = {"batcher": None}
    # one decode per core at a time: more would not decode faster, only hold more images, so the
    # memory decoding takes stays below cores × ~5 bytes × max_pixels however many uploads arrive
    decoders = anyio.CapacityLimiter(os.cpu_count() or 1)
    page = resources.files(__package__).joinpath("page.html").read_text()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = batcher or batcher_for(loaded, settings)
        await own.probabilities(Image.new("RGB", (64, 64)))  # warm up before /ready says yes
        state["batcher"] = own
        yield
        state["batcher"] = None
        if batcher is None:
            await run_in_threadpool(own.close)

    app = FastAPI(
        title="vitkit",
        version=API_VERSION,
        summary=f"A Vision Transformer ({settings.model_name}) behind a JSON API",
        lifespan=lifespan,
    )
    app.add_middleware(UploadLimits, max_bytes=int(settings.max_upload_mb * 1e6), timeout_s=settings.upload_timeout_s)
    if settings.api_key is None:  # with a key, a rebinding page has no key to send
        app.add_middleware(HostCheck, names=settings.allowed_hosts)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return JSONResponse({"error": error.detail}, status_code=error.status_code, headers=error.headers)

    @app.exception_handler(Exception)
    async def failed(request: Request, error: Exception) -> JSONResponse:
        # a bug, not the client's fault: JSON all the same; Starlette still logs the traceback
        return JSONResponse({"error": f"the server failed on this request: {error!r}"}, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        return JSONResponse({"error": problems}, status_code=422)

    def authorised(request: Request) -> None:
        if settings.api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        # headers arrive as bytes, which Starlette decodes as Latin-1: encode back to compare bytes
        sent = given.encode("latin-1")
        if scheme.lower() != "bearer" or not secrets.compare_digest(sent, settings.api_key.encode()):
            raise HTTPException(
                401, "this server needs an API key: Authorization: Bearer <key>", {"WWW-Authenticate": "Bearer"}
            )

    def running() -> DynamicBatcher:
        if state["batcher"] is None:
            raise HTTPException(503, "the model is still loading")
        return state["batcher"]

    def decode(data: bytes) -> Image.Image:
        if not data:
            raise HTTPException(400, "the request holds no image")
        try:
            # PIL only: torch work stays on the batcher's thread; a large JPEG is decoded at a smaller scale
            return load_image(data, model.config.in_chans, max_pixels=settings.max_pixels, min_side=preprocess.min_side)
        except ImageTooLarge as error:
            raise HTTPException(413, str(error)) from error
        except ImageTooElongated as error:
            raise HTTPException(422, str(error)) from error
        except UnreadableImage as error:
            raise HTTPException(415, f"{error}; send a PNG, JPEG, WebP, GIF, BMP or TIFF image") from error

    def explained_class(value: str | None) -> int | None:
        try:
            return None if value is None else loaded.class_index(value)
        except ValueError as error:
            raise HTTPException(400, str(error)) from error

    async def answer(data: bytes, top_k: int, explain: str, explain_class: str | None) -> dict[str, Any]:
        if explain not in explanations:
            raise HTTPException(
                400,
                "this server runs the int8 model (--int8), which has no attention to explain; ask with "
                "explain=none, or start a server without --int8 for explanations",
            )
        target = explained_class(explain_class)
        start = time.perf_counter()
        batcher = running()
        with batcher.expecting():  # a batch being gathered waits for this one
            picture = await anyio.to_thread.run_sync(decode, data, limiter=decoders)
        if explain == "none":
            probabilities, explanation = await batcher.probabilities(picture), None
        else:  # one call, queued behind every plain predict: many explanations cannot starve them
            probabilities, explanation = await batcher.run(_classify_and_explain, batcher, picture, explain, target)
        if not torch.isfinite(probabilities).all():
            raise HTTPException(
                500,
                "the model's output for this image is not a number (NaN or infinite): its weights, or its "
                "activations on this input, overflow; no prediction can be made from it",
            )
        if loaded.multi_label:  # the set of labels above the model's threshold; top_k does not apply
            chosen = labels_above(probabilities, loaded.threshold)
        else:
            values, indices = probabilities.topk(min(top_k, len(class_names)))
            chosen = list(zip(indices.tolist(), values.tolist(), strict=True))
        result: dict[str, Any] = {
            "predictions": [{"label": class_names[i], "index": i, "probability": p} for i, p in chosen],
            "model": settings.model_name,
        }
        if explanation is not None:
            result["explanation"] = explanation
        result["latency_ms"] = round(1000 * (time.perf_counter() - start), 2)
        return result

    def _classify_and_explain(
        batcher: DynamicBatcher, picture: Image.Image, method: str, target: int | None
    ) -> tuple[torch.Tensor, dict[str, Any] | None]:
        image = preprocess(picture)
        probabilities = batcher.forward(image[None])[0]
        if not torch.isfinite(probabilities).all():
            return probabilities, None  # answered as an error: nothing to explain
        target = int(probabilities.argmax()) if target is None else target
        seen = input_picture(image, preprocess)  # what the model saw, after resize and crop
        heat = heatmap(explanation_maps(model, image[None], method, target)[0], (seen.height, seen.width))
        return probabilities, {
            "method": method,
            # rollout explains no class in particular
            "class": None if method == "rollout" else {"label": class_names[target], "index": target},
            "input_png": _png(seen),
            "heatmap_png": _png(heat),
            "overlay_png": _png(overlay(seen, heat)),
        }

    async def uploads(request: Request, field: str) -> list[bytes]:
        kind = request.headers.get("content-type", "")
        if kind.startswith("multipart/form-data"):
            form = await request.form(max_files=settings.max_images_per_batch)
            files = form.getlist(field)
            if not files:
                raise HTTPException(400, f"the form has no file field {field!r}")
            # a text value where a file belongs reads as no image: its own error, in its place
            return [await item.read() if isinstance(item, UploadFile) else b"" for item in files]
        if kind.startswith(("image/", "application/octet-stream")):
            return [await request.body()]
        raise HTTPException(
            415, f"send the image as multipart/form-data field {field!r} or as a raw image/* body, not {kind!r}"
        )

    TopK = Query(
        5,
        ge=1,
        le=1000,
        description="how many classes to return, most likely first (a multi-label model returns every label "
        "above its threshold instead)",
    )
    Explain = Query(
        "none",
        description="none; rollout (attention rollout, class-agnostic); relevance (gradient-weighted attention "
        "relevance, Chefer et al.) or gradcam (Grad-CAM): why the model gave a class; drawn over its input",
    )
    ExplainClass = Query(
        None, description="the class relevance and gradcam explain, by label or index (default: the top prediction)"
    )

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def home() -> str:
        return page

    @app.get("/health")
    async def health() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        """Readiness: the model is loaded and has run once."""
        is_ready = state["batcher"] is not None
        return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)

    @app.get(f"/{API_VERSION}/model", dependencies=[Depends(authorised)])
    async def describe() -> dict[str, Any]:
        """What is served: name, classes, input size, preprocessing, parameters, batching."""
        return {
            "name": settings.model_name,
            "classes": class_names,
            "num_classes": len(class_names),
            "image_size": list(model.config.img_size),
            "in_chans": model.config.in_chans,
            "preprocessing": preprocess.to_dict(),
            "parameters": parameter_count(model.config),
            "precision": settings.precision,
            "max_batch": settings.max_batch,
            "max_wait_ms": settings.max_wait_ms,
            "explanations": list(explanations),
            "multi_label": loaded.multi_label,
            "threshold": loaded.threshold,
        }

    @app.post(f"/{API_VERSION}/predict", dependencies=[Depends(authorised)])
    async def predict(
        request: Request, top_k: int = TopK, explain: Explanation = Explain, explain_class: str | None = ExplainClass
    ) -> dict[str, Any]:
        """Classify one image: multipart field ``image``, or the raw image as the body."""
        return await answer((await uploads(request, "image"))[0], top_k, explain, explain_class)

    @app.post(f"/{API_VERSION}/predict/batch", dependencies=[Depends(authorised)])
    async def predict_batch(
        request: Request, top_k: int = TopK, explain: Explanation = Explain, explain_class: str | None = ExplainClass
    ) -> dict[str, Any]:
        """Classify several images (multipart fields ``images``); a bad one gets its own error."""

        async def one(data: bytes) -> dict[str, Any]:
            try:
                return await answer(data, top_k, explain, explain_class)
            except HTTPException as error:
                return {"error": error.detail, "status": error.status_code}
            except Exception as error:  # a bug or an exhausted machine: this image's error, and the log's
                logger.exception("predict/batch failed on one image")
                return {"error": f"the server failed on this image: {error!r}", "status": 500}

        return {"results": await asyncio.gather(*(one(data) for data in await uploads(request, "images")))}

    return app
