"""vitkit serve: the API in-process (every endpoint, every bad input), dynamic batching, real HTTP
over loopback under load, and the page in a real headless chromium."""

import asyncio
import base64
import contextlib
import http.client
import io
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
import uvicorn
from fastapi.testclient import TestClient
from loopback import free_port
from PIL import Image

import vitkit
import vitkit.cli.main as cli
from conftest import tiny_vit
from vitkit.predict import predict_files
from vitkit.serve import DynamicBatcher, ServeSettings, create_app

NAMES = ["cat", "dog", "bird"]


def jpeg(height=60, width=90, seed=0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)).save(
        buffer, format="JPEG"
    )
    return buffer.getvalue()


def bomb() -> bytes:
    """A small PNG that declares far more pixels than PIL's decompression-bomb guard allows."""
    buffer = io.BytesIO()
    Image.new("1", (30000, 30000)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    model = tiny_vit(num_classes=3)
    with torch.no_grad():
        model.head.weight.normal_(std=0.5)
    folder = tmp_path_factory.mktemp("served") / "model"
    vitkit.save_model(folder, model, class_names=NAMES)
    return folder


def client(folder, **settings) -> TestClient:
    loaded = vitkit.load_model(folder)
    return TestClient(create_app(loaded, ServeSettings(model_name="tiny", **settings)), base_url="http://localhost")


@pytest.fixture(scope="module")
def api(model_folder):
    with client(model_folder, max_upload_mb=0.5) as test_client:
        yield test_client


def test_health_ready_model_page_and_docs(api):
    assert api.get("/health").json() == {"status": "ok"}
    assert api.get("/ready").json() == {"ready": True}
    info = api.get("/v1/model").json()
    assert info["classes"] == NAMES and info["image_size"] == [32, 32] and info["parameters"] > 0
    assert info["preprocessing"]["resize_shorter"] == 32
    page = api.get("/")
    assert page.status_code == 200 and "<title>vitkit</title>" in page.text and "cdn" not in page.text.lower()
    paths = api.get("/openapi.json").json()["paths"]
    assert api.get("/docs").status_code == 200
    # the schema names the errors an image request can get (the manual's HTTP reference is made from it)
    for endpoint in ("/v1/predict", "/v1/predict/batch", "/v1/segment"):
        assert {"200", "400", "401", "413", "415", "422"} <= set(paths[endpoint]["post"]["responses"])
    assert set(paths["/ready"]["get"]["responses"]) == {"200", "503"}


def test_predict_answers_as_the_library_does(api, model_folder, tmp_path):
    (tmp_path / "a.jpg").write_bytes(jpeg())
    expected = predict_files(vitkit.load_model(model_folder), [tmp_path / "a.jpg"], top_k=3)[0].top
    for response in (
        api.post("/v1/predict?top_k=3", files={"image": ("a.jpg", jpeg(), "image/jpeg")}),
        api.post("/v1/predict?top_k=3", content=jpeg(), headers={"Content-Type": "image/jpeg"}),
    ):
        assert response.status_code == 200, response.text
        answer = response.json()
        got = [(p["label"], p["probability"]) for p in answer["predictions"]]
        assert [g[0] for g in got] == [e[0] for e in expected]
        assert max(abs(g[1] - e[1]) for g, e in zip(got, expected, strict=True)) <= 1e-2  # bf16 where native
        assert answer["model"] == "tiny" and answer["latency_ms"] > 0
        assert [p["index"] for p in answer["predictions"]] == [NAMES.index(g[0]) for g in got]
    assert (
        len(
            api.post("/v1/predict?top_k=1", content=jpeg(), headers={"Content-Type": "image/png"}).json()["predictions"]
        )
        == 1
    )


@pytest.mark.parametrize("method", ["rollout", "relevance", "gradcam"])
def test_explanations_come_as_pngs_of_the_models_input(api, method):
    url = f"/v1/predict?explain={method}"
    answer = api.post(url, content=jpeg(), headers={"Content-Type": "image/jpeg"}).json()
    explanation = answer["explanation"]
    assert explanation["method"] == method
    top = answer["predictions"][0]
    assert explanation["class"] == (None if method == "rollout" else {"label": top["label"], "index": top["index"]})
    for key, mode in (("input_png", "RGB"), ("heatmap_png", "RGBA"), ("overlay_png", "RGB")):
        picture = Image.open(io.BytesIO(base64.b64decode(explanation[key])))
        assert picture.size == (32, 32) and picture.mode == mode


def test_any_class_can_be_explained_by_label_or_index(api):
    def explained(query):
        answer = api.post(
            f"/v1/predict?explain=relevance&{query}", content=jpeg(), headers={"Content-Type": "image/jpeg"}
        )
        return answer.json()["explanation"]

    assert explained("explain_class=bird")["class"] == {"label": "bird", "index": 2}
    assert explained("explain_class=0")["class"] == {"label": "cat", "index": 0}
    assert explained("explain_class=bird")["heatmap_png"] != explained("explain_class=cat")["heatmap_png"]


def test_batch_endpoint_answers_each_image(api):
    files = [("images", ("a.jpg", jpeg(seed=1), "image/jpeg")), ("images", ("b.txt", b"not an image", "text/plain"))]
    results = api.post("/v1/predict/batch", files=files).json()["results"]
    assert len(results[0]["predictions"]) == 3
    assert results[1]["status"] == 415 and "not an image" in results[1]["error"]


def test_bad_input_gets_a_4xx_json_error_and_the_server_stays_up(api):
    cases = [
        (api.post("/v1/predict", content=b"hello", headers={"Content-Type": "image/png"}), 415, "not an image"),
        (api.post("/v1/predict", content=jpeg()[:300], headers={"Content-Type": "image/jpeg"}), 415, "cannot read"),
        (api.post("/v1/predict", content=b"", headers={"Content-Type": "image/png"}), 400, "no image"),
        (api.post("/v1/predict", content=b"{}", headers={"Content-Type": "application/json"}), 415, "multipart"),
        (api.post("/v1/predict", files={"picture": ("a.jpg", jpeg(), "image/jpeg")}), 400, "no file field 'image'"),
        (api.post("/v1/predict", content=bomb(), headers={"Content-Type": "image/png"}), 413, "decompression"),
        (
            api.post("/v1/predict", content=b"x" * 600_000, headers={"Content-Type": "image/png"}),
            413,
            "limit of 0.5 MB",
        ),
        (
            api.post("/v1/predict", content=iter([b"x" * 100_000] * 8), headers={"Content-Type": "image/png"}),
            413,
            "limit",
        ),
        (api.get("/v1/predict"), 405, "Method Not Allowed"),
        (api.post("/v1/predict?top_k=0", content=jpeg(), headers={"Content-Type": "image/jpeg"}), 422, "top_k"),
        (
            api.post("/v1/predict?explain=lime", content=jpeg(), headers={"Content-Type": "image/jpeg"}),
            422,
            "explain",
        ),
        (
            api.post(
                "/v1/predict?explain=relevance&explain_class=horse",
                content=jpeg(),
                headers={"Content-Type": "image/jpeg"},
            ),
            400,
            "no class 'horse'",
        ),
        (api.get("/v2/nothing"), 404, "Not Found"),
    ]
    for response, status, words in cases:
        assert response.status_code == status, (status, response.text)
        assert words in response.json()["error"]
    assert api.get("/health").status_code == 200
    assert api.post("/v1/predict", content=jpeg(), headers={"Content-Type": "image/jpeg"}).status_code == 200


def test_an_api_key_guards_the_api_but_not_the_health_checks(model_folder):
    with client(model_folder, api_key="s3cret") as guarded:
        assert guarded.get("/v1/model").status_code == 401
        wrong = guarded.post(
            "/v1/predict", content=jpeg(), headers={"Content-Type": "image/jpeg", "Authorization": "Bearer nope"}
        )
        assert wrong.status_code == 401 and "API key" in wrong.json()["error"]
        right = {"Content-Type": "image/jpeg", "Authorization": "Bearer s3cret"}
        assert guarded.post("/v1/predict", content=jpeg(), headers=right).status_code == 200
        assert guarded.get("/health").status_code == 200 and guarded.get("/").status_code == 200


def test_a_request_alone_does_not_wait_for_company():
    model = tiny_vit(num_classes=3).eval()
    batcher = DynamicBatcher(model, max_batch=16, max_wait_ms=2000)

    async def ask_one():
        start = time.perf_counter()
        await batcher.probabilities(torch.randn(3, 32, 32))
        return time.perf_counter() - start

    assert asyncio.run(ask_one()) < 1.0  # not the 2 s it could wait
    batcher.close()


def test_concurrent_requests_share_a_forward_pass_with_the_same_answers():
    model = tiny_vit(num_classes=3).eval()
    with torch.no_grad():
        model.head.weight.normal_(std=0.5)
    images = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        expected = model(images).softmax(-1)

    async def ask_all(batcher):
        with batcher.expecting():  # as the app announces requests it is decoding
            asks = [asyncio.ensure_future(batcher.probabilities(image)) for image in images]
            await asyncio.sleep(0)  # every request is queued
        return await asyncio.gather(*asks)

    for max_batch, batches in ((16, 1), (1, 8)):
        batcher = DynamicBatcher(model, max_batch=max_batch, max_wait_ms=200)
        rows = asyncio.run(ask_all(batcher))
        batcher.close()
        assert batcher.batches == batches
        assert (torch.stack(rows) - expected).abs().max().item() <= 1e-5


# ------------------------------------------------------------------ real HTTP over loopback
@pytest.fixture()
def live_server(model_folder):
    port = free_port()
    settings = ServeSettings(model_name="tiny", max_upload_mb=0.5, upload_timeout_s=1.0, max_wait_ms=2)
    config = uvicorn.Config(create_app(vitkit.load_model(model_folder), settings), port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield port
    server.should_exit = True
    thread.join(timeout=10)


def _oversized_upload(port, size=600_000):
    """Declare a large body, send its first bytes and read the answer: the server refuses it from
    the Content-Length (a client that sent it all would see the connection closed mid-way)."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as connection:
        head = (
            f"POST /v1/predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/png\r\nContent-Length: {size}\r\n\r\n"
        )
        connection.sendall(head.encode() + b"x" * 1000)
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = connection.recv(4096)
            if not chunk:
                break
            reply += chunk
    status = int(reply.split(b" ", 2)[1])
    return status, json.loads(reply.split(b"\r\n\r\n", 1)[1])


def _request(port, method, path, body=None, content_type="image/jpeg"):
    if body is not None and len(body) > 500_000:
        return _oversized_upload(port, len(body))
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request(method, path, body=body, headers={"Content-Type": content_type} if body is not None else {})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        connection.close()


def test_a_load_of_good_and_bad_requests_is_all_answered_without_5xx(live_server):
    good, kinds = jpeg(), []
    for i in range(240):
        kinds.append(
            [
                ("POST", "/v1/predict?top_k=2", good, "image/jpeg", 200),
                ("POST", "/v1/predict", b"junk", "image/png", 415),
                ("POST", "/v1/predict", b"x" * 600_000, "image/png", 413),
                ("GET", "/v1/predict", None, None, 405),
                ("POST", "/v1/predict?explain=rollout", good, "image/jpeg", 200),
                ("POST", "/v1/predict", good, "image/jpeg", 200),
            ][i % 6]
        )
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=32) as pool:
        answers = list(pool.map(lambda k: (_request(live_server, k[0], k[1], k[2], k[3])[0], k[4]), kinds, timeout=240))
    assert time.monotonic() - start < 240
    assert len(answers) == 240 and all(status == expected for status, expected in answers)
    assert _request(live_server, "GET", "/health") == (200, {"status": "ok"})


def test_a_stalled_upload_times_out_with_408_and_the_server_stays_up(live_server):
    with socket.create_connection(("127.0.0.1", live_server), timeout=10) as connection:
        connection.sendall(
            b"POST /v1/predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/png\r\nContent-Length: 5000\r\n\r\n"
            + b"\x89PNG"
        )
        chunks = []
        while chunk := connection.recv(4096):  # headers and body may come in separate packets
            chunks.append(chunk)
        reply = b"".join(chunks).decode()
    assert reply.startswith("HTTP/1.1 408") and "stalled" in reply
    assert _request(live_server, "GET", "/health")[0] == 200


# ------------------------------------------------------------------ the command and the page
@pytest.fixture(scope="module")
def trained_digits(tmp_path_factory):
    """A small ViT trained here on scikit-learn's digits (a few seconds)."""
    from conftest import digits_config

    folder = tmp_path_factory.mktemp("digits")
    summary = vitkit.train.train(digits_config(folder, epochs=10), progress=False)
    return summary.run_dir


def _start_serving(args):
    process = subprocess.Popen(
        [sys.executable, "-m", "vitkit.cli.main", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    for line in process.stdout:
        lines.append(line)
        if "Uvicorn running" in line or "Traceback" in line:
            break
    return process, "".join(lines)


def test_serving_on_every_interface_warns(trained_digits):
    process, output = _start_serving([str(trained_digits), "--host", "0.0.0.0", "--port", str(free_port())])
    process.terminate()
    process.wait(timeout=30)
    assert "warning: serving on 0.0.0.0" in output and "no --api-key" in output


def test_serve_reads_a_bare_weight_file_as_the_architecture_named(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    weights = tmp_path / "weights.safetensors"
    save_file(vitkit.create_model("Ti/16", num_classes=3).state_dict(), str(weights))
    served = {}
    monkeypatch.setattr(cli, "serve", lambda loaded, settings, **_: served.update(loaded=loaded, settings=settings))
    assert cli.main(["serve", str(weights), "--architecture", "Ti/16"]) == 0
    config = served["loaded"].model.config
    assert (config.embed_dim, config.num_classes) == (192, 3)
    assert served["settings"].model_name == "weights.safetensors"  # the display name: the file's


def _headless_chromium(tmp_path):
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1200,800",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=webdriver.ChromeService(shutil.which("chromedriver")), options=options)


@contextlib.contextmanager
def served_page(args, tmp_path):
    """A headless chromium on the page of ``vitkit serve *args`` (skipped where there is no
    chromium), and what the server printed as it started."""
    port = free_port()
    driver = _headless_chromium(tmp_path)  # skips before the server starts where there is no chromium
    process, output = _start_serving([*args, "--port", str(port)])
    try:
        assert "Uvicorn running" in output, output
        driver.get(f"http://127.0.0.1:{port}/")
        yield driver, output
    finally:
        driver.quit()
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.slow
def test_the_page_of_an_int8_server_answers_and_explains_with_the_float_model(trained_digits, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from sklearn.datasets import load_digits

    Image.fromarray((load_digits().images[3] * 255 / 16).astype(np.uint8)).save(tmp_path / "digit.png")
    with served_page([str(trained_digits), "--int8"], tmp_path) as (driver, output):
        assert "(int8," in output, output
        WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "model").text.endswith("int8"))
        driver.find_element(By.ID, "file").send_keys(str(tmp_path / "digit.png"))
        rows = WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#bars .row"))
        assert len(rows) == 5 and driver.find_element(By.ID, "status").text == ""  # no error shown
        assert driver.find_element(By.ID, "why").is_displayed()
        heat = WebDriverWait(driver, 60).until(
            lambda d: d.find_element(By.ID, "heat") if d.find_element(By.ID, "heat").get_attribute("src") else None
        )
        assert heat.get_attribute("src").startswith("data:image/png;base64,")


@pytest.mark.slow
def test_the_page_in_a_real_browser(trained_digits, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from sklearn.datasets import load_digits

    digit = load_digits()
    Image.fromarray((digit.images[3] * 255 / 16).astype(np.uint8)).resize((64, 64)).save(tmp_path / "digit.png")
    with served_page([str(trained_digits)], tmp_path) as (driver, _):
        WebDriverWait(driver, 30).until(lambda d: "classes" in d.find_element(By.ID, "model").text)
        driver.find_element(By.ID, "file").send_keys(str(tmp_path / "digit.png"))  # choosing predicts at once
        rows = WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#bars .row"))
        labels = [row.text.split("\n") for row in rows]
        assert len(labels) == 5 and all(name in "0123456789" and pct.endswith("%") for name, pct in labels)
        expected = predict_files(vitkit.load_model(trained_digits), [tmp_path / "digit.png"], top_k=1)[0].top
        assert labels[0][0] == expected[0][0]  # what the library answers for the same file
        heat = driver.find_element(By.ID, "heat")
        assert heat.get_attribute("src").startswith("data:image/png;base64,")
        assert driver.execute_script("return arguments[0].naturalWidth", heat) > 0
        driver.execute_script(
            "const s = document.getElementById('opacity'); s.value = 30; s.dispatchEvent(new Event('input'))"
        )
        assert heat.value_of_css_property("opacity") == "0.3"
        explained = driver.find_element(By.ID, "explained")
        assert explained.text == f"of {labels[0][0]}"  # relevance of the top class first
        first_heat = heat.get_attribute("src")
        rows[2].click()  # "why this one?"
        WebDriverWait(driver, 60).until(lambda d: explained.text == f"of {labels[2][0]}")
        assert heat.get_attribute("src") != first_heat
        driver.execute_script(
            "const m = document.getElementById('method'); m.value = 'rollout'; m.dispatchEvent(new Event('change'))"
        )
        WebDriverWait(driver, 60).until(lambda d: explained.text == "(any class)")
        driver.save_screenshot(str(tmp_path / "page.png"))
