"""The loopback server (tests/loopback.py) is faithful: the peers' own client code works against it.

huggingface_hub fixes its endpoint, cache and offline mode when it is first imported, so every check that goes
through huggingface_hub (hf_hub_download, timm, transformers) runs in a fresh interpreter whose environment
``configure_hub_env`` prepared, exactly as tests/conftest.py would prepare the suite's own process. The code those
interpreters run is the ``peer_*`` functions below; what they return comes back as JSON, and the assertions stay here.
The bucket checks need no such care: they use plain urllib in this process.

Those interpreters import this module, so it imports torch, timm and transformers only where it uses them: a child
that only runs huggingface_hub starts in a fraction of a second.
"""

import base64
import hashlib
import http.client
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from loopback import LoopbackServer, configure_hub_env, free_port

TIMM_REPO = "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"  # timm's default tag of vit_tiny_patch16_224
HF_REPO = "google/vit-tiny-test"
HUB_REPO = "vitkit/files"
OBJECT = "vit_models/imagenet21k/ViT-B_16.npz"


@pytest.fixture
def server():
    with LoopbackServer() as loopback:
        yield loopback


def run_peer(function, *args, server, hf_home, offline=False):
    """Return ``function(*args)`` (a ``peer_*`` function of this module), run in a fresh interpreter pointed at
    ``server`` with ``hf_home`` as its Hugging Face home."""
    env = configure_hub_env(dict(os.environ), server.url, hf_home, offline=offline)
    code = f"import json, sys, test_loopback as t; print(json.dumps(t.{function.__name__}(*json.loads(sys.argv[1]))))"
    child = subprocess.run(
        [sys.executable, "-c", code, json.dumps(args)],
        cwd=Path(__file__).parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr[-6000:]
    return json.loads(child.stdout.strip().splitlines()[-1])


NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy


def get(url, **headers):
    """urllib's GET of ``url`` with extra headers (it follows redirects, raises HTTPError from 400 on)."""
    return NO_PROXY.open(urllib.request.Request(url, headers=headers), timeout=10)


def exception_names(error):
    return [cls.__name__ for cls in type(error).__mro__]


def asked(server, origin=None):
    """``(method, path, status)`` of the requests that reached ``server``, or only its ``origin`` (url, cdn_url)."""
    return [(r.method, r.path, r.status) for r in server.requests if origin is None or r.origin == origin]


def assert_same_weights(path, expected):
    """The tensors saved at ``path`` are ``expected``, exactly."""
    import torch
    from safetensors.torch import load_file

    actual = load_file(path)
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(actual[key], value), key


# -- timm ---------------------------------------------------------------------------------------------------------


# timm's truncated-normal init of a ViT-Ti takes 1.6 s of CPU here: skip it where the weights are overwritten anyway
NO_INIT = {"weight_init": "skip"}


def peer_timm(out_dir):
    """Both ways timm reaches the Hub: an explicit ``hf-hub:`` id, and a model name whose default tag lives there."""
    import timm
    from safetensors.torch import save_file

    result = {}
    for label, name in (("hf_hub", f"hf-hub:{TIMM_REPO}"), ("default_tag", "vit_tiny_patch16_224")):
        model = timm.create_model(name, pretrained=True, **NO_INIT)
        weights = str(Path(out_dir) / f"{label}.safetensors")
        save_file(model.state_dict(), weights)
        result[label] = {"weights": weights, "hf_hub_id": model.pretrained_cfg.get("hf_hub_id")}
    return result


def test_timm_pretrained_models_load_through_the_hub(server, tmp_path):
    import timm
    import torch
    from timm.models import save_for_hf

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **NO_INIT)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
    save_for_hf(model, tmp_path / "repo")  # config.json + pytorch_model.bin, as timm pushes them
    server.add_repo(TIMM_REPO, tmp_path / "repo")

    result = run_peer(peer_timm, str(tmp_path), server=server, hf_home=str(tmp_path / "hf"))

    for label in ("hf_hub", "default_tag"):
        assert_same_weights(result[label]["weights"], model.state_dict())
    assert result["default_tag"]["hf_hub_id"] == TIMM_REPO
    resolve = f"/{TIMM_REPO}/resolve/main/"
    hub = asked(server, origin=server.url)
    assert hub.count(("GET", resolve + "config.json", 200)) == 1  # only hf-hub: reads the repo's config
    # each of the two loads looks for safetensors first, then falls back to the .bin that timm saved
    assert hub.count(("HEAD", resolve + "model.safetensors", 404)) == 2
    assert hub.count(("HEAD", resolve + "pytorch_model.bin", 302)) == 2
    cdn = asked(server, origin=server.cdn_url)
    assert [(method, path.rsplit("/", 1)[-1], status) for method, path, status in cdn] == [
        ("GET", "pytorch_model.bin", 200)  # once: the second load found the blob in the cache
    ]


# -- transformers -------------------------------------------------------------------------------------------------


def peer_transformers(out_dir):
    from safetensors.torch import save_file
    from transformers import AutoImageProcessor, ViTForImageClassification

    model = ViTForImageClassification.from_pretrained(HF_REPO)
    processor = AutoImageProcessor.from_pretrained(HF_REPO)
    weights = str(Path(out_dir) / "loaded.safetensors")
    save_file(model.state_dict(), weights)
    return {
        "weights": weights,
        "config": json.loads(model.config.to_json_string()),
        "processor_class": type(processor).__name__,
        "processor": json.loads(processor.to_json_string()),
    }


def test_transformers_from_pretrained_loads_through_the_hub(server, tmp_path):
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    labels = ["cat", "dog", "fish"]
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        num_labels=3,
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    torch.manual_seed(0)
    model = ViTForImageClassification(config)
    processor = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.4, 0.5, 0.6])
    model.save_pretrained(tmp_path / "repo")
    processor.save_pretrained(tmp_path / "repo")
    sha = server.add_repo(HF_REPO, tmp_path / "repo")

    result = run_peer(peer_transformers, str(tmp_path), server=server, hf_home=str(tmp_path / "hf"))

    assert_same_weights(result["weights"], model.state_dict())
    expected = json.loads(model.config.to_json_string())
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "image_size", "patch_size", "id2label"):
        assert result["config"][key] == expected[key]
    assert result["processor_class"] == "ViTImageProcessor"
    assert result["processor"] == json.loads(processor.to_json_string())
    # transformers pins "main" to the commit the model-info API names, then asks for every file at that commit
    assert ("GET", f"/api/models/{HF_REPO}/revision/main", 200) in asked(server)
    resolve = f"/{HF_REPO}/resolve/{sha}/"
    assert ("GET", resolve + "config.json", 200) in asked(server)
    assert ("HEAD", resolve + "model.safetensors", 302) in asked(server)
    assert ("GET", resolve + "preprocessor_config.json", 200) in asked(server)
    assert [path.rsplit("/", 1)[-1] for _, path, _ in asked(server, origin=server.cdn_url)] == ["model.safetensors"]
    assert not [r for r in server.requests if "/resolve/main/" in r.path]


# -- huggingface_hub ----------------------------------------------------------------------------------------------


@pytest.fixture
def hub_repo(server, tmp_path):
    """A repo with a regular (git) file, an LFS file and a file in a folder; returns its commit sha."""
    folder = tmp_path / "repo"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"hidden": 32}))
    (folder / "weights.bin").write_bytes(os.urandom(300_000))
    (folder / "sub" / "notes.txt").write_text("a file in a folder\n")
    return server.add_repo(HUB_REPO, folder)


def peer_hub_download(files, revision=None):
    from huggingface_hub import hf_hub_download

    return {name: hf_hub_download(HUB_REPO, name, revision=revision) for name in files}


def peer_hub_errors():
    from huggingface_hub import HfApi, hf_hub_download

    names = {}
    try:
        HfApi().model_info("nobody/nothing")
    except Exception as error:
        names["missing_repo_info"] = exception_names(error)
    for label, repo_id, filename, revision in (
        ("missing_file", HUB_REPO, "nothing.json", None),
        ("missing_repo", "nobody/nothing", "config.json", None),
        ("missing_revision", HUB_REPO, "config.json", "v9"),
    ):
        try:
            hf_hub_download(repo_id, filename, revision=revision)
        except Exception as error:
            names[label] = exception_names(error)
    return names


def peer_hub_api():
    from huggingface_hub import HfApi

    api = HfApi()
    info = api.model_info(HUB_REPO, files_metadata=True)
    return {
        "id": info.id,
        "sha": info.sha,
        "siblings": {s.rfilename: [s.size, s.lfs.sha256 if s.lfs else None] for s in info.siblings},
        "files": api.list_repo_files(HUB_REPO),
        "top_level": sorted(entry.path for entry in api.list_repo_tree(HUB_REPO)),
    }


def test_hf_hub_download_fetches_regular_and_lfs_files(server, hub_repo, tmp_path):
    paths = run_peer(peer_hub_download, ["config.json", "weights.bin"], server=server, hf_home=str(tmp_path / "hf"))

    for name, path in paths.items():
        assert Path(path).read_bytes() == (tmp_path / "repo" / name).read_bytes()
        assert f"/snapshots/{hub_repo}/" in path  # filed under the commit X-Repo-Commit named
    resolve = f"/{HUB_REPO}/resolve/main/"
    assert asked(server, origin=server.url) == [
        ("HEAD", resolve + "config.json", 200),
        ("GET", resolve + "config.json", 200),
        ("HEAD", resolve + "weights.bin", 302),  # an LFS file: the 302 carries its metadata, the CDN its bytes
    ]
    sha256 = hashlib.sha256((tmp_path / "repo" / "weights.bin").read_bytes()).hexdigest()
    assert asked(server, origin=server.cdn_url) == [("GET", f"/lfs/{sha256}/{HUB_REPO}/weights.bin", 200)]


def test_hf_hub_download_raises_the_hubs_errors(server, hub_repo, tmp_path):
    names = run_peer(peer_hub_errors, server=server, hf_home=str(tmp_path / "hf"))

    assert "EntryNotFoundError" in names["missing_file"]
    assert "RepositoryNotFoundError" in names["missing_repo"]
    assert "RepositoryNotFoundError" in names["missing_repo_info"]
    assert "RevisionNotFoundError" in names["missing_revision"]
    # the miss was cached under the commit the 404 named, as huggingface_hub does against the real Hub
    assert (tmp_path / "hf" / "hub" / "models--vitkit--files" / ".no_exist" / hub_repo / "nothing.json").exists()


def test_hf_hub_download_resumes_a_cut_download_with_range(server, tmp_path):
    from huggingface_hub.constants import DOWNLOAD_CHUNK_SIZE

    # huggingface_hub writes what it receives in DOWNLOAD_CHUNK_SIZE (10 MiB) pieces and loses a partial piece when
    # the connection drops, so only a cut past the first piece shows a resume with Range
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "weights.bin").write_bytes(os.urandom(DOWNLOAD_CHUNK_SIZE + 200_000))
    server.add_repo(HUB_REPO, tmp_path / "repo")
    server.cut_next(f"{HUB_REPO}/weights.bin", DOWNLOAD_CHUNK_SIZE + 100_000)

    paths = run_peer(peer_hub_download, ["weights.bin"], server=server, hf_home=str(tmp_path / "hf"))

    assert Path(paths["weights.bin"]).read_bytes() == (tmp_path / "repo" / "weights.bin").read_bytes()
    cdn = [(r.range, r.status) for r in server.requests if r.origin == server.cdn_url]
    assert cdn == [(None, 200), (f"bytes={DOWNLOAD_CHUNK_SIZE}-", 206)]


def test_model_info_and_file_listing(server, hub_repo, tmp_path):
    info = run_peer(peer_hub_api, server=server, hf_home=str(tmp_path / "hf"))

    assert info["id"] == HUB_REPO
    assert info["sha"] == hub_repo
    weights = (tmp_path / "repo" / "weights.bin").read_bytes()
    assert info["siblings"] == {
        "config.json": [len(json.dumps({"hidden": 32})), None],
        "sub/notes.txt": [len("a file in a folder\n"), None],
        "weights.bin": [len(weights), hashlib.sha256(weights).hexdigest()],
    }
    assert sorted(info["files"]) == ["config.json", "sub/notes.txt", "weights.bin"]
    assert info["top_level"] == ["config.json", "sub", "weights.bin"]


def test_offline_downloads_come_from_the_cache(server, hub_repo, tmp_path):
    hf_home = str(tmp_path / "hf")
    online = run_peer(peer_hub_download, ["config.json", "weights.bin"], server=server, hf_home=hf_home)
    server.stop()
    seen = len(server.requests)

    offline = run_peer(peer_hub_download, ["config.json", "weights.bin"], server=server, hf_home=hf_home, offline=True)

    assert offline == online
    assert len(server.requests) == seen


def test_lfs_answers_carry_no_xet_headers(server, hub_repo, tmp_path):
    connection = http.client.HTTPConnection("127.0.0.1", server.port)
    connection.request("HEAD", f"/{HUB_REPO}/resolve/main/weights.bin")
    response = connection.getresponse()
    response.read()

    assert response.status == 302
    assert response.headers["Location"].startswith(server.cdn_url + "/")
    assert response.headers["X-Repo-Commit"] == hub_repo
    weights = (tmp_path / "repo" / "weights.bin").read_bytes()
    assert response.headers["X-Linked-Etag"] == f'"{hashlib.sha256(weights).hexdigest()}"'
    assert response.headers["X-Linked-Size"] == str(len(weights))
    assert not [key for key in response.headers if key.lower().startswith("x-xet")]
    assert "xet-auth" not in response.headers.get("Link", "")
    with get(f"{server.url}/{HUB_REPO}/resolve/main/weights.bin") as download:  # a plain client follows the 302
        assert download.read() == weights


# -- the GCS bucket ------------------------------------------------------------------------------------------------


@pytest.fixture
def bucket_object(server, tmp_path):
    """The bytes of OBJECT, a 200 kB bucket object."""
    data = os.urandom(200_000)
    (tmp_path / "ViT-B_16.npz").write_bytes(data)
    server.add_bucket_file(OBJECT, tmp_path / "ViT-B_16.npz")
    return data


def goog_hashes(response):
    """The ``x-goog-hash`` lines, GCS sends one per hash: ``{"crc32c": b64, "md5": b64}``."""
    return dict(line.split("=", 1) for line in response.headers.get_all("x-goog-hash"))


def test_bucket_serves_bytes_with_gcs_hashes(server, bucket_object):
    with get(f"{server.url}/{OBJECT}") as response:
        body = response.read()
        hashes = goog_hashes(response)
        headers = response.headers

    assert body == bucket_object
    assert headers["Content-Length"] == str(len(bucket_object))
    assert hashes["md5"] == base64.b64encode(hashlib.md5(bucket_object).digest()).decode()
    assert headers["ETag"] == f'"{hashlib.md5(bucket_object).hexdigest()}"'
    assert headers["x-goog-stored-content-length"] == str(len(bucket_object))


def test_bucket_crc32c_is_the_castagnoli_checksum(server, tmp_path):
    pytest.importorskip("google_crc32c")
    (tmp_path / "check.txt").write_bytes(b"123456789")
    server.add_bucket_file("bucket/check.txt", tmp_path / "check.txt")

    with get(f"{server.url}/bucket/check.txt") as response:
        hashes = goog_hashes(response)

    # CRC-32C of "123456789" is 0xE3069283 (RFC 3720's check value), sent big-endian in base64
    assert hashes["crc32c"] == base64.b64encode(bytes.fromhex("e3069283")).decode()


def test_bucket_head_has_the_headers_and_no_body(server, bucket_object):
    request = urllib.request.Request(f"{server.url}/{OBJECT}", method="HEAD")
    with NO_PROXY.open(request, timeout=10) as response:
        assert response.read() == b""
        assert response.headers["Content-Length"] == str(len(bucket_object))
        assert "md5" in goog_hashes(response)


def test_bucket_ranges(server, bucket_object):
    with get(f"{server.url}/{OBJECT}", Range="bytes=150000-") as response:
        assert response.status == 206
        assert response.headers["Content-Range"] == f"bytes 150000-{len(bucket_object) - 1}/{len(bucket_object)}"
        assert response.read() == bucket_object[150_000:]
        # the hashes describe the whole object, not the range
        assert goog_hashes(response)["md5"] == base64.b64encode(hashlib.md5(bucket_object).digest()).decode()
    with get(f"{server.url}/{OBJECT}", Range="bytes=10-19") as response:
        assert response.read() == bucket_object[10:20]
    with get(f"{server.url}/{OBJECT}", Range="bytes=-5") as response:
        assert response.read() == bucket_object[-5:]
    with pytest.raises(urllib.error.HTTPError) as error:
        get(f"{server.url}/{OBJECT}", Range=f"bytes={len(bucket_object)}-")
    assert error.value.code == 416
    assert [r.range for r in server.requests] == ["bytes=150000-", "bytes=10-19", "bytes=-5", "bytes=200000-"]


def test_bucket_unknown_objects_are_gcs_404s(server, bucket_object):
    for path, code in (("vit_models/imagenet21k/ViT-H_14.npz", "NoSuchKey"), ("no_bucket/x.npz", "NoSuchBucket")):
        with pytest.raises(urllib.error.HTTPError) as error:
            get(f"{server.url}/{path}")
        assert error.value.code == 404
        assert f"<Code>{code}</Code>" in error.value.read().decode()


def test_cut_next_really_cuts_once(server, bucket_object):
    server.cut_next(OBJECT, 12_345)

    with get(f"{server.url}/{OBJECT}") as response:
        assert response.headers["Content-Length"] == str(len(bucket_object))
        with pytest.raises(http.client.IncompleteRead) as cut:
            response.read()
    assert cut.value.partial == bucket_object[:12_345]
    with get(f"{server.url}/{OBJECT}") as response:  # the next one is whole again
        assert response.read() == bucket_object


def test_corrupt_really_corrupts(server, bucket_object):
    server.corrupt(OBJECT, times=1)

    with get(f"{server.url}/{OBJECT}") as response:
        body = response.read()
        advertised = goog_hashes(response)["md5"]
    assert len(body) == len(bucket_object)
    assert sum(a != b for a, b in zip(body, bucket_object, strict=True)) == 1
    assert advertised == base64.b64encode(hashlib.md5(bucket_object).digest()).decode()
    assert advertised != base64.b64encode(hashlib.md5(body).digest()).decode()
    with get(f"{server.url}/{OBJECT}") as response:  # times=1: healthy again
        assert response.read() == bucket_object


def test_faults_name_known_resources_only(server, bucket_object):
    with pytest.raises(KeyError):
        server.cut_next("vit_models/imagenet21k/typo.npz", 10)
    with pytest.raises(KeyError):
        server.corrupt("vit_models/imagenet21k/typo.npz")


# -- the server itself ---------------------------------------------------------------------------------------------


def test_stop_drops_open_connections_and_start_serves_the_same_port(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"x" * 10)
    server = LoopbackServer(port=free_port())
    server.add_bucket_file("bucket/x.bin", tmp_path / "x.bin")
    url = server.url
    with server:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        connection.request("GET", "/bucket/x.bin")
        assert connection.getresponse().read() == b"x" * 10  # the connection stays open (keep-alive)
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        connection.request("GET", "/bucket/x.bin")
        connection.getresponse()
    with server:
        assert server.url == url
        assert get(f"{url}/bucket/x.bin").read() == b"x" * 10


def test_configure_hub_env_refuses_a_process_that_already_read_it(tmp_path):
    import huggingface_hub.constants  # noqa: F401  (as transformers and timm do on import)

    with pytest.raises(RuntimeError):
        configure_hub_env(os.environ, "http://127.0.0.1:1", tmp_path)
    env = configure_hub_env({"HF_HUB_CACHE": "/elsewhere", "HF_TOKEN": "secret"}, "http://127.0.0.1:1/", tmp_path)
    assert env["HF_ENDPOINT"] == "http://127.0.0.1:1"
    assert env["HF_HOME"] == str(tmp_path)
    assert "HF_HUB_CACHE" not in env and "HF_TOKEN" not in env
    assert env["NO_PROXY"] == env["no_proxy"] == "127.0.0.1"
