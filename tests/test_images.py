"""The shared image reader and preprocessing: bounded memory whatever the image claims, and
non-square models through every command."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image, ImageFilter
from torchvision.transforms import v2

import vitkit
from conftest import tiny_vit
from vitkit.cli.main import main
from vitkit.data.images import ImageTooElongated, ImageTooLarge, load_image
from vitkit.data.transforms import Preprocessing, decode_transform
from vitkit.serve import ServeSettings, create_app


def _photo(width, height, seed=0):
    """Smooth random content, as a photo's pixels are locally correlated."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(2))


def _png_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_strip_is_refused_from_its_header_not_resized_whole():
    """A 1×100000 PNG (a few hundred bytes) was resized whole to a short side of 224: 15 GB."""
    strip = _png_bytes(Image.new("L", (1, 100_000)))
    with pytest.raises(ImageTooElongated, match=r"1×100000 .*aspect ratio over the limit of 20:1"):
        load_image(strip)
    # a raised limit reads a shorter one: a 224×224 result
    image = load_image(_png_bytes(Image.new("L", (1, 100))), max_aspect=100)
    assert Preprocessing.centre_crop(224)(image).shape == (3, 224, 224)


def test_pixels_past_the_limit_are_refused_before_decoding():
    big = _png_bytes(Image.new("L", (4000, 3000)))
    with pytest.raises(ImageTooLarge, match=r"4000×3000 is 12,000,000 pixels, over the limit of 10,000,000"):
        load_image(big, max_pixels=10_000_000)
    assert load_image(big, max_pixels=12_000_000).size == (4000, 3000)


@pytest.mark.parametrize(("kind", "reduced_size"), [("JPEG", (1000, 750)), ("PNG", (800, 600))])
def test_a_large_image_is_read_at_a_smaller_scale_with_nearly_the_same_result(kind, reduced_size):
    """A 4000×3000 photo for a 224 crop: libjpeg's 1/4 scale for a JPEG, PIL's 5× reduce for a PNG;
    measured at most 2 levels of 255 apart, 0.25 on average."""
    buffer = io.BytesIO()
    _photo(4000, 3000).save(buffer, format=kind, quality=95)
    preprocess = Preprocessing.centre_crop(224, crop_fraction=0.875)
    reduced = load_image(buffer.getvalue(), min_side=preprocess.min_side)
    assert reduced.size == reduced_size
    difference = (preprocess(reduced) - preprocess(load_image(buffer.getvalue()))).abs() * 127.5
    assert difference.max() <= 2.01
    assert difference.mean() <= 0.5


@pytest.mark.parametrize("size", [(640, 480), (480, 640), (100, 90)])
def test_non_square_preprocessing_covers_both_sides(size):
    """A (224, 320) model on a 640×480 photo: "cannot crop" before."""
    image = _photo(*size)
    assert Preprocessing.centre_crop((224, 320))(image).shape == (3, 224, 320)
    assert Preprocessing.centre_crop((224, 320))(v2.functional.to_image(image)).shape == (3, 224, 320)
    assert decode_transform((224, 320), 3)(image).shape == (3, 224, 320)


@pytest.fixture
def non_square(tmp_path):
    """A tiny (32, 48) ViT saved as a vitkit folder, and a folder of two classes of photos."""
    model = tiny_vit(num_classes=2, img_size=(32, 48))
    vitkit.save_model(tmp_path / "model", model, class_names=["a", "b"])
    for name in ("a", "b"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(2):
            _photo(64, 48, seed=i).save(tmp_path / "data" / name / f"{i}.png")
    return tmp_path


def test_a_non_square_model_predicts_evaluates_inspects_and_exports(non_square, capsys):
    folder, data = str(non_square / "model"), str(non_square / "data")
    assert main(["predict", folder, data, "--json"]) == 0
    predictions = json.loads(capsys.readouterr().out)
    assert len(predictions) == 4 and all(p["error"] is None and p["top"] for p in predictions)
    assert main(["eval", folder, "--data", data, "--split", "train", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] >= 1
    assert main(["inspect", folder, data, "--out", str(non_square / "inspect"), "--no-faithfulness"]) == 0
    assert (non_square / "inspect" / "index.html").is_file()
    assert main(["export", folder, str(non_square / "model.onnx")]) == 0
    capsys.readouterr()
    import onnxruntime

    session = onnxruntime.InferenceSession(str(non_square / "model.onnx"))
    name = session.get_inputs()[0].name
    assert session.run(None, {name: np.zeros((1, 3, 32, 48), np.float32)})[0].shape == (1, 2)


def test_the_server_answers_non_square_models_and_refuses_bombs_with_json(non_square):
    loaded = vitkit.load_model(str(non_square / "model"))
    with TestClient(create_app(loaded, ServeSettings(model_name="tiny")), base_url="http://localhost") as client:
        photo = _png_bytes(_photo(640, 480))
        answer = client.post("/v1/predict", content=photo, headers={"content-type": "image/png"})
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["predictions"]) == 2
        strip = client.post(
            "/v1/predict", content=_png_bytes(Image.new("L", (1, 100_000))), headers={"content-type": "image/png"}
        )
        assert strip.status_code == 422 and "aspect ratio over the limit of 20:1" in strip.json()["error"]
        big = _png_bytes(Image.new("L", (10_000, 5_001)))  # 50,010,000 pixels, a 55 KB file
        answer = client.post("/v1/predict", content=big, headers={"content-type": "image/png"})
        assert answer.status_code == 413 and "over the limit of 50,000,000 pixels" in answer.json()["error"]


PEAK = """
import resource, sys
from vitkit.data.images import load_image
from vitkit.data.transforms import Preprocessing
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    Preprocessing.centre_crop(224)(load_image(sys.argv[1]))
    outcome = "read"
except OSError as error:
    outcome = type(error).__name__
print(outcome, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


@pytest.mark.parametrize("size", [(1, 100_000), (10_000, 10_000)])
def test_reading_a_bomb_takes_bounded_memory(tmp_path, size):
    """A 1×100000 and a 100-megapixel PNG: refused from the header, the peak RSS barely above
    the interpreter's own after its imports (before: a 15 GB allocation, and over 1 GB)."""
    path = tmp_path / "bomb.png"
    Image.new("L", size).save(path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", PEAK, str(path)], capture_output=True, text=True, env=env)
    outcome, peak_mb = result.stdout.split()
    assert outcome in ("ImageTooElongated", "ImageTooLarge")
    assert int(peak_mb) < 50, peak_mb


def test_torch_inputs_keep_working():
    assert Preprocessing.centre_crop(8)(torch.zeros(2, 1, 8, 8, dtype=torch.uint8)).shape == (2, 3, 8, 8)


def test_predict_names_the_pixel_limit_and_can_raise_it(non_square, capsys):
    photo = non_square / "data" / "a" / "0.png"  # 64×48 = 3,072 pixels
    assert main(["predict", str(non_square / "model"), str(photo), "--max-pixels", "3000"]) == 2
    assert "64×48 is 3,072 pixels, over the limit of 3,000 pixels (--max-pixels)" in capsys.readouterr().out
    assert main(["predict", str(non_square / "model"), str(photo), "--max-pixels", "3072"]) == 0
