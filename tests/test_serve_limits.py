"""vitkit serve under hostile clients, over real HTTP on loopback: idle and half-sent connections past
the open-file limit, explanations that must not starve plain predicts, a batch that answers for every
bad image, authentication that cannot switch itself off, and a model whose output is NaN."""

import asyncio
import contextlib
import http.client
import io
import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
import uvicorn
from loopback import free_port
from PIL import Image

import vitkit
from conftest import tiny_vit
from vitkit.serve import DynamicBatcher, ServeSettings, create_app

NAMES = ["cat", "dog", "bird"]
HALF_HEADER = b"GET /health HTTP/1.1\r\nHost: 127.0"


def png(width=40, height=30, seed=0) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_with_a_broken_exif() -> bytes:
    """A JPEG whose EXIF gives ResolutionUnit (a number) as text: PIL fails to write the EXIF back
    when it turns the image upright, with a ``struct.error`` that is no ``OSError``."""
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8))
    exif = picture.getexif()
    exif[0x0112], exif[0x010F] = 6, "cam"  # orientation (rotated), make
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", exif=exif)
    return buffer.getvalue().replace(b"\x01\x0f\x00\x02", b"\x01\x28\x00\x02", 1)  # make's tag -> ResolutionUnit


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    model = tiny_vit(num_classes=3)
    with torch.no_grad():
        model.head.weight.normal_(std=0.5)
    folder = tmp_path_factory.mktemp("served") / "secret-place" / "my-model"
    vitkit.save_model(folder, model, class_names=NAMES)
    return folder


# ------------------------------------------------------------------ servers
def _ready(port: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(OSError):
            if _get(port, "/ready")[0] == 200:
                return
        time.sleep(0.2)
    process.kill()
    raise AssertionError(f"the server did not become ready:\n{process.communicate()[0]}")


@contextlib.contextmanager
def vitkit_serve(folder, *flags, open_files=None):
    """``vitkit serve`` in a subprocess (with ``ulimit -n open_files``); yields (port, process)."""
    port = free_port()
    limit = None if open_files is None else (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, open_files))
    command = [sys.executable, "-m", "vitkit.cli.main", "serve", str(folder), "--port", str(port), *flags]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=limit, env=_env()
    )
    try:
        _ready(port, process)
        yield port, process
    finally:
        process.terminate()
        process.wait(timeout=30)


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@contextlib.contextmanager
def in_thread(loaded, **settings):
    """The app served by uvicorn in a thread of this process, over loopback; yields the port."""
    port = free_port()
    app = create_app(loaded, ServeSettings(model_name="tiny", max_wait_ms=2, **settings))
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _get(port, path, headers=None, timeout=30):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _post_batch(port, parts, query=""):
    """multipart/form-data with ``parts`` as (name, filename or None, bytes)."""
    boundary = "vitkit-test-boundary"
    body = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        body += (b"Content-Type: image/png\r\n" if filename else b"") + b"\r\n" + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        kind = f"multipart/form-data; boundary={boundary}"
        connection.request("POST", f"/v1/predict/batch{query}", body=body, headers={"Content-Type": kind})
        response = connection.getresponse()
        return response.status, response.getheader("content-type"), response.read()
    finally:
        connection.close()


def _raw(port, request: bytes, timeout=30) -> bytes:
    """Send ``request`` as it is and read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(request)
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _closed_by_server(connection: socket.socket) -> bytes:
    """What the server sent before it closed ``connection`` (a socket timeout if it never does). A
    close with unread bytes from the client (half a header) may reach the client as a reset."""
    connection.settimeout(30)
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


# ------------------------------------------------------------------ slow and idle clients
def test_half_sent_headers_past_the_open_file_limit_leave_health_answering(model_folder):
    """600 connections that send half a header, against a server with ``ulimit -n 512``: /health still
    answers, and the log holds no line per socket (asyncio used to log every failed accept)."""
    with vitkit_serve(model_folder, "--log-level", "warning", open_files=(512, 512)) as (port, process):
        sockets = []
        try:
            for _ in range(600):
                sockets.append(socket.create_connection(("127.0.0.1", port), timeout=30))
                sockets[-1].sendall(HALF_HEADER)
            status, body = _get(port, "/health", timeout=20)
            assert (status, json.loads(body)) == (200, {"status": "ok"})
        finally:
            for connection in sockets:
                connection.close()
        assert _get(port, "/health")[0] == 200
        process.terminate()
        log = process.communicate(timeout=30)[0]
    assert "out of system resource" not in log and len(log.splitlines()) < 20, log[-3000:]


@pytest.fixture(scope="module")
def strict_server(model_folder):
    flags = ("--header-timeout-s", "1", "--keep-alive-s", "1", "--max-connections", "3", "--log-level", "warning")
    with vitkit_serve(model_folder, *flags) as (port, _):
        yield port


def test_a_header_that_does_not_arrive_in_time_gets_408_and_is_closed(strict_server):
    with socket.create_connection(("127.0.0.1", strict_server)) as connection:
        connection.sendall(HALF_HEADER)
        reply = _closed_by_server(connection).decode()
    assert reply.startswith("HTTP/1.1 408") and "did not arrive within 1 s" in reply
    with socket.create_connection(("127.0.0.1", strict_server)) as connection:  # nothing sent at all
        assert _closed_by_server(connection).startswith(b"HTTP/1.1 408")


def test_an_idle_kept_alive_connection_is_closed_after_the_keep_alive_timeout(strict_server):
    with socket.create_connection(("127.0.0.1", strict_server)) as connection:
        connection.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        reply = _closed_by_server(connection)  # the answer, then the close after 1 s of silence
    assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b'{"status":"ok"}')


def test_past_the_connection_cap_the_longest_idle_one_is_closed_and_busy_ones_stay(strict_server):
    idle = [socket.create_connection(("127.0.0.1", strict_server)) for _ in range(3)]
    for connection in idle:
        connection.sendall(HALF_HEADER)
    assert _get(strict_server, "/health")[0] == 200  # a fourth connection: the oldest idle one goes
    assert _closed_by_server(idle[0]) == b""
    for connection in idle:
        connection.close()

    busy = []  # uploads that wait for their body: the app holds them (Expect: 100-continue tells us)
    for _ in range(3):
        busy.append(socket.create_connection(("127.0.0.1", strict_server), timeout=30))
        busy[-1].sendall(
            b"POST /v1/predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/png\r\n"
            b"Content-Length: 5000\r\nExpect: 100-continue\r\n\r\n"
        )
        assert busy[-1].recv(100).startswith(b"HTTP/1.1 100")
    try:
        # the answer comes on connecting (a client that sent its request at once may see a reset instead)
        with socket.create_connection(("127.0.0.1", strict_server)) as connection:
            reply = _closed_by_server(connection)
        assert reply.startswith(b"HTTP/1.1 503") and b"--max-connections" in reply
    finally:
        for connection in busy:
            connection.close()


# ------------------------------------------------------------------ fair under mixed load
def test_plain_predicts_go_before_queued_explanations():
    """Three explanations queued, then a plain predict, while the first explanation runs: the
    predict runs next, not after every queued explanation."""
    order, running, release = [], threading.Event(), threading.Event()

    def preprocess(image):
        order.append("predict")
        return image

    def explanation(name):
        if name == "first":
            running.set()
            release.wait(30)
        order.append(name)

    batcher = DynamicBatcher(tiny_vit(num_classes=3), preprocess, max_wait_ms=0)

    async def mixed_load():
        first = asyncio.ensure_future(batcher.run(explanation, "first"))
        await asyncio.to_thread(running.wait, 30)  # the worker is inside the first explanation
        later = [asyncio.ensure_future(batcher.run(explanation, name)) for name in ("second", "third")]
        later.append(asyncio.ensure_future(batcher.probabilities(torch.randn(3, 32, 32))))
        await asyncio.sleep(0)  # every job is queued
        release.set()
        await asyncio.gather(first, *later)

    asyncio.run(mixed_load())
    batcher.close()
    assert order == ["first", "predict", "second", "third"]


# ------------------------------------------------------------------ every failure answered per image
def test_the_batch_endpoint_answers_each_image_whatever_fails(model_folder):
    bomb = io.BytesIO()
    Image.new("1", (30000, 30000)).save(bomb, format="PNG")
    parts = [
        ("images", "good.png", png()),
        ("images", "exif.jpg", jpeg_with_a_broken_exif()),  # PIL raises struct.error while decoding
        ("images", "bomb.png", bomb.getvalue()),
        ("images", "text.png", b"not an image"),
        ("images", "empty.png", b""),
        ("images", None, b"a text value, not a file"),
        ("images", "good2.png", png(seed=1)),
    ]
    with in_thread(vitkit.load_model(model_folder)) as port:
        status, kind, body = _post_batch(port, parts)
        assert status == 200 and kind == "application/json", body[:500]
        results = json.loads(body)["results"]
        assert len(results) == len(parts)
        assert [r.get("status") for r in results] == [None, results[1].get("status"), 413, 415, 400, 400, None]
        assert results[1]["status"] in (415, 500) and results[1]["error"]  # as the reader classes it
        assert len(results[0]["predictions"]) == 3 and len(results[-1]["predictions"]) == 3
        assert _get(port, "/health")[0] == 200


# ------------------------------------------------------------------ a model whose output is NaN
def test_a_model_whose_output_is_nan_answers_500_json_that_says_so(model_folder):
    loaded = vitkit.load_model(model_folder)
    with torch.no_grad():
        loaded.model.head.bias.fill_(float("nan"))  # after loading: as a model that overflows would be
    with in_thread(loaded) as port:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection.request("POST", "/v1/predict", body=png(), headers={"Content-Type": "image/png"})
        response = connection.getresponse()
        answer = json.loads(response.read())
        connection.close()
        assert response.status == 500 and "not a number" in answer["error"], answer
        status, _, body = _post_batch(port, [("images", "a.png", png()), ("images", "b.png", png(seed=2))])
        results = json.loads(body)["results"]
        assert status == 200 and all(r["status"] == 500 and "not a number" in r["error"] for r in results)


# ------------------------------------------------------------------ authentication
@pytest.mark.parametrize("how", ["flag", "environment"])
def test_an_empty_api_key_is_refused_at_start(model_folder, how):
    flags, env = (["--api-key", ""], _env()) if how == "flag" else ([], {**_env(), "VITKIT_API_KEY": ""})
    command = [sys.executable, "-m", "vitkit.cli.main", "serve", str(model_folder), "--port", str(free_port())]
    done = subprocess.run([*command, *flags], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("vitkit: error: the API key") and "empty" in done.stderr
    assert len(done.stderr.splitlines()) == 1


def test_a_non_ascii_api_key_works(model_folder):
    key = "clé-🔑"
    with in_thread(vitkit.load_model(model_folder), api_key=key) as port:

        def status(sent: bytes) -> int:
            reply = _raw(port, b"GET /v1/model HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n" + sent + b"\r\n")
            return int(reply.split(b" ", 2)[1])

        assert status(b"Authorization: Bearer " + key.encode() + b"\r\n") == 200
        assert status(b"Authorization: Bearer " + "cle-🔑".encode() + b"\r\n") == 401
        assert status(b"") == 401


def test_without_a_key_only_its_own_host_names_reach_it(model_folder):
    """DNS rebinding: a page on evil.example whose name now points at 127.0.0.1 sends Host:
    evil.example. The server answers IP addresses, localhost and the names it is told."""
    loaded = vitkit.load_model(model_folder)
    with in_thread(loaded, allowed_hosts=("localhost", "vit.lan")) as port:
        for host, expected in [
            ("evil.example", 400),
            (f"evil.example:{port}", 400),
            (f"localhost:{port}", 200),
            (f"127.0.0.1:{port}", 200),
            (f"[::1]:{port}", 200),
            ("VIT.lan", 200),
        ]:
            status, body = _get(port, "/v1/model", headers={"Host": host})
            assert status == expected, (host, body)
        status, body = _get(port, "/health", headers={"Host": "evil.example"})
        assert status == 400 and "--allowed-hosts evil.example" in json.loads(body)["error"]
    with in_thread(loaded, api_key="s3cret") as port:  # a page has no key to send: any name is fine
        headers = {"Host": "evil.example", "Authorization": "Bearer s3cret"}
        assert _get(port, "/v1/model", headers=headers)[0] == 200


def test_the_api_does_not_reveal_where_the_model_lies(model_folder):
    with vitkit_serve(model_folder, "--log-level", "warning") as (port, _):
        schema = _get(port, "/openapi.json")[1].decode()
        described = json.loads(_get(port, "/v1/model")[1])
    assert "secret-place" not in schema and str(model_folder.parent) not in schema
    assert "my-model" in schema and described["name"] == "my-model"
