"""``vitkit serve``'s web app: a versioned JSON API, health checks, and a page that explains each
answer. It holds no model logic: preprocessing, batching and explanations come from the library.

Bad input never takes the server down: every error is a 4xx JSON ``{"error": ...}``; uploads over
the limit are refused from their ``Content-Length`` (or as soon as the stream passes the limit)
without being read into memory; slow uploads time out.

The routes come in three routers: the page, the server's status (health, readiness, the model's
description) and predictions. Their handlers share one ``app.state.serving``: the model, the
settings and the batcher that answers once it has warmed up.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import functools
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
from typing import Annotated, Any, Literal

import anyio
import torch
import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from torch import nn

from ..analysis.explain import EXPLANATIONS, explanation_maps, heatmap, input_picture, methods_for, overlay
from ..data.images import DEFAULT_MAX_PIXELS, ImageTooElongated, ImageTooLarge, UnreadableImage, load_image
from ..interop import Int8Model, LoadedModel
from ..models import parameter_count
from ..predict import labels_above
from ..segment import OVERLAY_OPACITY, png_bytes, segment_image
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


def _base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _png(picture: Image.Image) -> str:
    return _base64(png_bytes(picture))


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


def batcher_for(
    loaded: LoadedModel, settings: ServeSettings, *, thread: bool = True, model: nn.Module | None = None
) -> DynamicBatcher:
    """The dynamic batcher ``settings`` describe, running ``model`` (default ``loaded``'s) with
    ``loaded``'s preprocessing."""
    return DynamicBatcher(
        loaded.model if model is None else model,
        loaded.preprocess,
        max_batch=settings.max_batch,
        max_wait_ms=settings.max_wait_ms,
        precision=settings.precision,
        thread=thread,
        multi_label=loaded.multi_label,
    )


def serve(
    loaded: LoadedModel,
    settings: ServeSettings,
    *,
    host: str,
    port: int,
    log_level: str = "info",
    model: nn.Module | None = None,
) -> None:
    """Serve until Ctrl-C or SIGTERM: uvicorn in a thread of its own, the model in this (the main)
    thread (see :mod:`vitkit.serve.batching` for why). Batches run ``model``, a faster form of
    ``loaded``'s (:func:`~vitkit.decisions.set_up_inference`'s), or ``loaded``'s own; explanations
    always take ``loaded``'s. Slow and idle clients are bounded by the
    settings' connection limits (see :mod:`vitkit.serve.connections`). Raises ``ValueError`` if
    uvicorn could not start (a port in use, say) or the limits do not fit the open-file limit."""
    if not _is_address(_host_name(host)) and host not in settings.allowed_hosts:  # served by its name
        settings = dataclasses.replace(settings, allowed_hosts=(*settings.allowed_hosts, host))
    batcher = batcher_for(loaded, settings, thread=False, model=model)
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
    if not loaded.segmenter:
        loaded.require_classifier("serve")
    app = FastAPI(
        title="vitkit",
        version=API_VERSION,
        summary=f"A Vision Transformer ({settings.model_name}) behind a JSON API",
        lifespan=_lifespan,
    )
    app.state.serving = _Serving(loaded, settings, given=batcher)
    app.add_middleware(UploadLimits, max_bytes=int(settings.max_upload_mb * 1e6), timeout_s=settings.upload_timeout_s)
    if settings.api_key is None:  # with a key, a rebinding page has no key to send
        app.add_middleware(HostCheck, names=settings.allowed_hosts)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _failed)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    for router in (_page, _status, _predictions):
        app.include_router(router)
    return app


@dataclass
class _Serving:
    """What one app serves and how, and the batcher that answers: ``app.state.serving``."""

    loaded: LoadedModel
    settings: ServeSettings
    #: a batcher whose work() runs elsewhere (``vitkit serve``'s main thread); None: the app starts its own
    given: DynamicBatcher | None = None
    #: the batcher that answers: None until it has warmed up, and again once the app shuts down
    batcher: DynamicBatcher | None = None
    #: one decode per core at a time: more would not decode faster, only hold more images, so the
    #: memory decoding takes stays below cores × ~5 bytes × max_pixels however many uploads arrive
    decoders: anyio.CapacityLimiter = dataclasses.field(
        default_factory=lambda: anyio.CapacityLimiter(os.cpu_count() or 1)
    )

    @property
    def explanations(self) -> tuple[str, ...]:
        """The explain= values that answer: an int8 model alone has no attention to explain, a ResNet
        only Grad-CAM, and a segmenter's answers are not explained yet."""
        if isinstance(self.loaded.model, Int8Model) or self.loaded.segmenter:
            return ("none",)
        return ("none", *methods_for(self.loaded.model))

    def running(self) -> DynamicBatcher:
        """The batcher that answers, or 503 while the model is loading."""
        if self.batcher is None:
            raise HTTPException(503, "the model is still loading")
        return self.batcher


def _serving(request: Request) -> _Serving:
    return request.app.state.serving


#: a handler's parameter: its app's :class:`_Serving`
_ServingDep = Annotated[_Serving, Depends(_serving)]


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    serving: _Serving = app.state.serving
    batcher = serving.given or batcher_for(serving.loaded, serving.settings)
    blank = Image.new("RGB", (64, 64))  # warm up before /ready says yes
    if serving.loaded.segmenter:
        await batcher.run(segment_image, serving.loaded, blank)
    else:
        await batcher.probabilities(blank)
    serving.batcher = batcher
    yield
    serving.batcher = None
    if serving.given is None:
        await run_in_threadpool(batcher.close)


async def _http_error(request: Request, error: HTTPException) -> JSONResponse:
    return JSONResponse({"error": error.detail}, status_code=error.status_code, headers=error.headers)


async def _failed(request: Request, error: Exception) -> JSONResponse:
    # a bug, not the client's fault: JSON all the same; Starlette still logs the traceback
    return JSONResponse({"error": f"the server failed on this request: {error!r}"}, status_code=500)


async def _invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
    problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
    return JSONResponse({"error": problems}, status_code=422)


def _authorised(request: Request, serving: _ServingDep) -> None:
    key = serving.settings.api_key
    if key is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    # headers arrive as bytes, which Starlette decodes as Latin-1: encode back to compare bytes
    sent = given.encode("latin-1")
    if scheme.lower() != "bearer" or not secrets.compare_digest(sent, key.encode()):
        raise HTTPException(
            401, "this server needs an API key: Authorization: Bearer <key>", {"WWW-Authenticate": "Bearer"}
        )


def _decode(serving: _Serving, data: bytes) -> Image.Image:
    if not data:
        raise HTTPException(400, "the request holds no image")
    loaded = serving.loaded
    # a class per pixel answers at the image's own size: no reduced decode
    min_side = None if loaded.segmenter else loaded.preprocess.min_side
    try:
        # PIL only: torch work stays on the batcher's thread; a large JPEG is decoded at a smaller scale
        return load_image(data, loaded.config.in_chans, max_pixels=serving.settings.max_pixels, min_side=min_side)
    except ImageTooLarge as error:
        raise HTTPException(413, str(error)) from error
    except ImageTooElongated as error:
        raise HTTPException(422, str(error)) from error
    except UnreadableImage as error:
        raise HTTPException(415, f"{error}; send a PNG, JPEG, WebP, GIF, BMP or TIFF image") from error


def _explained_class(loaded: LoadedModel, value: str | None) -> int | None:
    try:
        return None if value is None else loaded.class_index(value)
    except ValueError as error:
        raise HTTPException(400, str(error)) from error


async def _answer(serving: _Serving, data: bytes, question: _Question) -> dict[str, Any]:
    """One image's answer (predictions, and its explanation if asked), or an HTTPException."""
    explain = question.explain
    if serving.loaded.segmenter:
        raise HTTPException(400, f"this server's model is a segmenter: POST the image to /{API_VERSION}/segment")
    if explain not in serving.explanations:
        if isinstance(serving.loaded.model, Int8Model):
            why = (
                "has only an int8 model, which has no attention to explain; give create_app the float model "
                "and batcher_for the int8 one, as vitkit serve --int8 does"
            )
        else:
            why = "has a ResNet, which has no attention to explain"
        raise HTTPException(400, f"this server {why}; ask with explain={' or '.join(serving.explanations)}")
    loaded = serving.loaded
    target = _explained_class(loaded, question.explain_class)
    start = time.perf_counter()
    batcher = serving.running()
    with batcher.expecting():  # a batch being gathered waits for this one
        picture = await anyio.to_thread.run_sync(_decode, serving, data, limiter=serving.decoders)
    if explain == "none":
        probabilities, explanation = await batcher.probabilities(picture), None
    else:  # one call, queued behind every plain predict: many explanations cannot starve them
        probabilities, explanation = await batcher.run(_classify_and_explain, loaded, batcher, picture, explain, target)
    if not torch.isfinite(probabilities).all():
        raise HTTPException(
            500,
            "the model's output for this image is not a number (NaN or infinite): its weights, or its "
            "activations on this input, overflow; no prediction can be made from it",
        )
    class_names = loaded.class_names
    if loaded.multi_label:  # the set of labels above the model's threshold; top_k does not apply
        chosen = labels_above(probabilities, loaded.threshold)
    else:
        values, indices = probabilities.topk(min(question.top_k, len(class_names)))
        chosen = list(zip(indices.tolist(), values.tolist(), strict=True))
    result: dict[str, Any] = {
        "predictions": [{"label": class_names[i], "index": i, "probability": p} for i, p in chosen],
        "model": serving.settings.model_name,
    }
    if explanation is not None:
        result["explanation"] = explanation
    result["latency_ms"] = round(1000 * (time.perf_counter() - start), 2)
    return result


def _classify_and_explain(
    loaded: LoadedModel, batcher: DynamicBatcher, picture: Image.Image, method: str, target: int | None
) -> tuple[torch.Tensor, dict[str, Any] | None]:
    """Probabilities and an explanation for one image, on the batcher's worker thread."""
    model, preprocess, class_names = loaded
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


async def _answer_or_error(serving: _Serving, data: bytes, question: _Question) -> dict[str, Any]:
    """One image of a batch: its answer, or its own error in its place."""
    try:
        return await _answer(serving, data, question)
    except HTTPException as error:
        return {"error": error.detail, "status": error.status_code}
    except Exception as error:  # a bug or an exhausted machine: this image's error, and the log's
        logger.exception("predict/batch failed on one image")
        return {"error": f"the server failed on this image: {error!r}", "status": 500}


async def _uploads(request: Request, field: str, max_files: int) -> list[bytes]:
    """The images a request sends: multipart fields ``field`` (at most ``max_files``), or its raw body."""
    kind = request.headers.get("content-type", "")
    if kind.startswith("multipart/form-data"):
        form = await request.form(max_files=max_files)
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


@functools.cache
def _page_html() -> str:
    return resources.files(__package__).joinpath("page.html").read_text()


#: the errors an image request may get, each as JSON {"error": ...}: the OpenAPI schema lists them
_KEY_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "a server started with an API key, asked without `Authorization: Bearer KEY`"}
}
_IMAGE_ERRORS: dict[int | str, dict[str, Any]] = {
    **_KEY_ERRORS,
    400: {"description": "no image, an empty body or a form without its field; an explanation or a class this "
          "model cannot give; the other endpoint's kind of model"},
    408: {"description": "an upload that stalled"},
    413: {"description": "an upload over --max-upload-mb, or an image over --max-pixels (read from its header)"},
    415: {"description": "not an image, a corrupt one, or a body that is neither multipart nor image/*"},
    422: {"description": "a bad query parameter, or an image more than 20 times longer than it is wide"},
    500: {"description": "the model's output is not finite"},
    503: {"description": "the model is still loading"},
}  # fmt: skip

#: the page that asks for and explains predictions, at /
_page = APIRouter()


@_page.get("/", response_class=HTMLResponse, include_in_schema=False)
async def home() -> str:
    return _page_html()


#: whether the server is up and the model ready, and what it serves
_status = APIRouter()


@_status.get("/health")
async def health() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@_status.get("/ready", responses={503: {"description": "not yet: the model is loading or warming up"}})
async def ready(serving: _ServingDep) -> JSONResponse:
    """Readiness: the model is loaded and has run once."""
    is_ready = serving.batcher is not None
    return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)


@_status.get(f"/{API_VERSION}/model", dependencies=[Depends(_authorised)], responses=_KEY_ERRORS)
async def describe(serving: _ServingDep) -> dict[str, Any]:
    """What is served: name, classes, input size, preprocessing, parameters, batching."""
    loaded, settings = serving.loaded, serving.settings
    return {
        "name": settings.model_name,
        "task": "segmentation" if loaded.segmenter else "classification",
        "classes": loaded.class_names,
        "num_classes": len(loaded.class_names),
        "colours": [list(colour) for colour in loaded.colours] if loaded.colours else None,
        "image_size": list(loaded.config.img_size),
        "in_chans": loaded.config.in_chans,
        "preprocessing": loaded.preprocess.to_dict(),
        "parameters": parameter_count(loaded.config) + _decoder_parameters(loaded),
        "precision": settings.precision,
        "max_batch": settings.max_batch,
        "max_wait_ms": settings.max_wait_ms,
        "explanations": list(serving.explanations),
        "multi_label": loaded.multi_label,
        "threshold": loaded.threshold,
    }


def _decoder_parameters(loaded: LoadedModel) -> int:
    return sum(p.numel() for p in loaded.model.decoder.parameters()) if loaded.segmenter else 0


_TOP_K = Query(
    5,
    ge=1,
    le=1000,
    description="how many classes to return, most likely first (a multi-label model returns every label "
    "above its threshold instead)",
)
_EXPLAIN = Query(
    "none",
    description="none; rollout (attention rollout, class-agnostic); relevance (gradient-weighted attention "
    "relevance, Chefer et al.) or gradcam (Grad-CAM): why the model gave a class; drawn over its input",
)
_EXPLAIN_CLASS = Query(
    None, description="the class relevance and gradcam explain, by label or index (default: the top prediction)"
)


@dataclass(frozen=True)
class _Question:
    """What a prediction request asks for besides its images: its query parameters."""

    top_k: int
    explain: str
    explain_class: str | None


def _question(
    top_k: int = _TOP_K, explain: Explanation = _EXPLAIN, explain_class: str | None = _EXPLAIN_CLASS
) -> _Question:
    return _Question(top_k, explain, explain_class)


#: a prediction handler's parameter: what its request asks for
_QuestionDep = Annotated[_Question, Depends(_question)]


#: classifying images, one or several to a request
_predictions = APIRouter(prefix=f"/{API_VERSION}", dependencies=[Depends(_authorised)])


@_predictions.post("/predict", responses=_IMAGE_ERRORS)
async def predict(request: Request, serving: _ServingDep, question: _QuestionDep) -> dict[str, Any]:
    """Classify one image: multipart field ``image``, or the raw image as the body."""
    data = (await _uploads(request, "image", serving.settings.max_images_per_batch))[0]
    return await _answer(serving, data, question)


@_predictions.post("/predict/batch", responses=_IMAGE_ERRORS)
async def predict_batch(request: Request, serving: _ServingDep, question: _QuestionDep) -> dict[str, Any]:
    """Classify several images (multipart fields ``images``); a bad one gets its own error."""
    uploads = await _uploads(request, "images", serving.settings.max_images_per_batch)
    return {"results": await asyncio.gather(*(_answer_or_error(serving, data, question) for data in uploads))}


_OPACITY = Query(
    OVERLAY_OPACITY, ge=0.0, le=1.0, description="how strongly overlay_png shows the classes over the image (0 to 1)"
)


@_predictions.post("/segment", responses=_IMAGE_ERRORS)
async def segment(request: Request, serving: _ServingDep, opacity: float = _OPACITY) -> dict[str, Any]:
    """Segment one image (multipart field ``image``, or the raw image as the body): the class of
    every pixel as a palette PNG of class indices at the image's own size (``mask_png``), the image
    with the classes drawn over it (``overlay_png``), and each class's share of the image."""
    loaded = serving.loaded
    if not loaded.segmenter:
        raise HTTPException(
            400, f"this server's model classifies whole images: POST the image to /{API_VERSION}/predict"
        )
    data = (await _uploads(request, "image", 1))[0]
    start = time.perf_counter()
    batcher = serving.running()
    precision = "bf16" if serving.settings.precision == "bf16" else "fp32"
    # A full-size image, its mask and overlay live through the whole request: one request per core
    # at a time holds them (tens of bytes a pixel), however many arrive.
    async with serving.decoders:
        with batcher.expecting():
            picture = await anyio.to_thread.run_sync(_decode, serving, data)
        try:
            running = dataclasses.replace(loaded, model=batcher.model)  # its fastest form (set_up_inference)
            answer = await batcher.run(functools.partial(segment_image, precision=precision), running, picture)
        except ValueError as error:  # non-finite logits
            raise HTTPException(500, str(error)) from error
        mask_png, overlay_png = await anyio.to_thread.run_sync(lambda: (answer.mask_png(), answer.overlay_png(opacity)))
    colours = answer.colours
    index = {name: i for i, name in enumerate(loaded.class_names)}
    return {
        "model": serving.settings.model_name,
        "width": picture.width,
        "height": picture.height,
        "classes": [
            {"label": name, "index": index[name], "colour": list(colours[index[name]]), "area": area}
            for name, area in answer.areas.items()
        ],
        "mask_png": _base64(mask_png),
        "overlay_png": _base64(overlay_png),
        "latency_ms": round(1000 * (time.perf_counter() - start), 2),
    }
