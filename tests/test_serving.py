"""Serving: ONNX export parity, packaging into a bento, and real `bentoml serve` processes started from it.

The served model is the ci-tiny model trained in a session fixture, with its head bias shifted so that
its probabilities straddle 0.5 on the test images (two epochs leave it predicting "no lesion"
everywhere, which would make mask comparisons vacuous). To test the bento a pipeline run builds
instead, replace the `packaged` fixture (and `served_weights` with that run's weights).
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import requests
from conftest import ROOT, VENV_BIN, free_port, stop, wait_for_port
from PIL import Image

pytestmark = pytest.mark.timeout(600)

TOKEN = "s3cret-test-token"
MAX_BYTES = 2_000_000
MAX_PIXELS = 4_000_000


# ---- images ---------------------------------------------------------------------------------------------

def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def jpeg(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def png_bomb(width: int = 40_000, height: int = 40_000) -> bytes:
    """A tiny PNG whose header declares WIDTH x HEIGHT grayscale pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * (width + 1))) + chunk(b"IEND", b"")


def jpeg_with_size(data: bytes, width: int, height: int) -> bytes:
    """DATA (a baseline JPEG) with the size in its frame header replaced."""
    sof = data.index(b"\xff\xc0")
    return data[:sof + 5] + struct.pack(">HH", height, width) + data[sof + 9:]


@pytest.fixture(scope="session")
def images(synth_dataset) -> dict[str, bytes]:
    """Uploads: grayscale PNG, RGB JPEG, odd-sized grayscale PNG, RGBA PNG."""
    files = sorted((synth_dataset / "images").glob("*.png"))
    gray = np.asarray(Image.open(files[0]))
    other = np.asarray(Image.open(files[1]))
    rgb = np.stack([other, (other * 0.9).astype(np.uint8), np.flipud(other)], axis=2)
    odd = np.asarray(Image.open(files[2]))[:203, :301] if min(Image.open(files[2]).size) >= 203 else gray[:150, :201]
    rgba = np.dstack([gray, gray, gray, np.full_like(gray, 255)])
    return {"gray.png": png(gray), "rgb.jpg": jpeg(rgb), "odd.png": png(np.ascontiguousarray(odd)),
            "rgba.png": png(rgba)}


# ---- model, bento, servers ------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def trained_weights(tmp_path_factory) -> Path:
    """configs/ci-tiny.yaml trained for real (prepare + train), under a private CMUNEXT_HOME."""
    from cmunext.config import load_config
    from cmunext.engine.trainer import train
    from cmunext.prepare import prepare

    home = tmp_path_factory.mktemp("train-state")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CMUNEXT_HOME", str(home))
        cfg = load_config(ROOT / "configs" / "ci-tiny.yaml")
        data_dir, _ = prepare(cfg, progress=False)
        return train(cfg, data_dir, home / "run", progress=False).weights


@pytest.fixture(scope="session")
def served_weights(trained_weights, images, tmp_path_factory) -> Path:
    """The trained weights with the head bias shifted so the median logit on the test image is 0."""
    import torch

    from cmunext.engine.weights import load_weights, save_weights
    from cmunext.predict import Predictor
    from cmunext_serving.imageio import read_image

    out = tmp_path_factory.mktemp("served") / "model.safetensors"
    src = out.parent / "gray.png"
    src.write_bytes(images["gray.png"])
    model, meta = load_weights(trained_weights)
    x = torch.from_numpy(Predictor(trained_weights).preprocess(read_image(src)))[None]
    with torch.no_grad():
        model.head.bias -= model(x)[0, 0].median()
    return save_weights(model, out, meta["variant"], meta["image_size"])


@pytest.fixture(scope="module")
def packaged(served_weights, tmp_path_factory):
    """package_model() into a private state folder; the environment stays set for the module."""
    from cmunext.serving.package import package_model

    home = tmp_path_factory.mktemp("serve-state")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CMUNEXT_HOME", str(home))
        mp.setenv("BENTOML_HOME", str(home / "bentoml"))
        for name in ("CMUNEXT_BENTO_MODEL", "CMUNEXT_API_TOKEN"):
            mp.delenv(name, raising=False)
        result = package_model(served_weights, model_name="cmunext-test", model_version=3, run_id="run-abc",
                               data_revision="rev-123", metrics={"iou": 0.5, "dice": np.float32(0.66)}, runs=5)
        yield {**result, "home": home}


class Server:
    """A real `bentoml serve` process (own process group) on a free port, ready when constructed."""

    def __init__(self, target: str, log: Path, env: dict | None = None, timeout: float = 120) -> None:
        import psutil

        from cmunext.serving.serve import start_server

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.proc = start_server(target, port=self.port, env=env, log_file=log)
        self.workers: list = []
        try:
            wait_for_port(self.port, self.proc, timeout=timeout)
            deadline = time.time() + timeout
            while requests.get(self.url + "/readyz", timeout=10).status_code != 200:
                assert time.time() < deadline, "server not ready"
                time.sleep(0.3)
            self.workers = psutil.Process(self.proc.pid).children(recursive=True)  # for close, after a SIGKILL
        except BaseException:
            self.close()
            raise

    def post(self, route: str, data: bytes, name: str = "image.png", ctype: str = "image/png", **kw):
        return requests.post(self.url + route, files={"image": (name, data, ctype)}, timeout=60, **kw)

    def close(self) -> None:
        stop(self.proc, timeout=20)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # any worker the arbiter left behind
        except ProcessLookupError:
            pass
        import psutil
        for worker in self.workers:  # and any the arbiter orphaned when a test killed it
            try:
                worker.kill()
            except psutil.NoSuchProcess:
                pass


@pytest.fixture(scope="module")
def server(packaged, tmp_path_factory):
    """The built bento, no auth, small upload limits."""
    logs = tmp_path_factory.mktemp("logs")
    srv = Server(packaged["bento_tag"], logs / "serve.log",
                 env={"CMUNEXT_MAX_UPLOAD_BYTES": MAX_BYTES, "CMUNEXT_MAX_PIXELS": MAX_PIXELS,
                      "CMUNEXT_PREDICTION_LOG": logs / "predictions", "CMUNEXT_PREDICTION_LOG_FLUSH_SECONDS": "0.5",
                      "CMUNEXT_CAPTURE_RATE": "1", "CMUNEXT_DRIFT_REFRESH_SECONDS": "0.5"})
    srv.predictions = logs / "predictions"
    yield srv
    srv.close()
    assert "status=500" not in srv.log.read_text(errors="replace"), "the server answered 500 to some request"


@pytest.fixture(scope="module")
def auth_server(packaged, tmp_path_factory):
    """The same model served from its BentoML model tag (source bundle + CMUNEXT_BENTO_MODEL), with a token."""
    srv = Server(packaged["model_tag"], tmp_path_factory.mktemp("logs") / "serve-auth.log",
                 env={"CMUNEXT_API_TOKEN": TOKEN, "CMUNEXT_REQUIRE_AUTH": "true"})
    yield srv
    srv.close()


def predictor_mask(weights: Path, data: bytes, tmp_path: Path, name: str):
    """(image, probabilities, mask) from the in-process eager Predictor, reading the same bytes from a file."""
    from cmunext.predict import Predictor
    from cmunext_serving.imageio import read_image

    path = tmp_path / name
    path.write_bytes(data)
    predictor = Predictor(weights)
    image = read_image(path)
    prob = predictor.probabilities(image)
    return image, prob, predictor.mask(image)


def assert_same_mask(served: np.ndarray, prob: np.ndarray, local: np.ndarray) -> None:
    """Equal, except where eager PyTorch itself is within 1e-5 of the threshold (float rounding may tip those)."""
    assert served.shape == local.shape
    differ = served != local
    assert not differ.any() or np.abs(prob[differ] - 0.5).max() < 1e-5, f"{differ.sum()} pixels differ"
    assert differ.mean() < 1e-3


# ---- export and runtime (no server) ---------------------------------------------------------------------

def test_export_parity_with_pytorch(served_weights, tmp_path):
    import torch

    from cmunext.engine.weights import load_weights
    from cmunext.serving.export import export_serving_artifact
    from cmunext_serving.engines import ServedModel
    from cmunext_serving.runtime import sha256_file

    info = export_serving_artifact(served_weights, tmp_path, runs=3)
    assert set(info["candidates"]) == {"torch", "onnx", "onnx_bnfold", "onnx_ort", "onnx_bnfold_ort"}
    assert info["format"] != "torch" and info["candidates"][info["format"]]["ok"]
    assert info["max_abs_diff"] <= 1e-4
    assert info["sha256"] == sha256_file(tmp_path / info["file"])
    folding = info["batchnorm_folding"]
    assert folding["into_following_conv"] > 0 and folding["folded_by_exporter_into_preceding_conv"] > 0

    runtime = ServedModel(tmp_path)  # an independent check of the written artifact
    model, meta = load_weights(served_weights)
    for batch in (1, 8):
        x = np.random.default_rng(batch).standard_normal((batch, 3, meta["image_size"], meta["image_size"]), dtype=np.float32)
        with torch.inference_mode():
            expected = torch.sigmoid(model(torch.from_numpy(x)))[:, 0].numpy()
        assert np.abs(runtime.probabilities(x) - expected).max() <= 1e-4


def test_runtime_matches_the_predictor(served_weights, packaged, images, tmp_path):
    """The torch-free serving steps equal cmunext.predict's: decoding, preprocessing, probabilities, overlay."""
    from cmunext.predict import Predictor, overlay
    from cmunext.serving.package import stores
    from cmunext_serving import runtime
    from cmunext_serving.engines import ServedModel

    onnx_model = ServedModel(stores()[0].get(packaged["model_tag"]).path)  # the packaged artifact
    predictor = Predictor(served_weights)
    for name, data in images.items():
        image, prob, mask = predictor_mask(served_weights, data, tmp_path, name)
        decoded = runtime.decode_image(data, 10**8)
        assert np.array_equal(decoded, image), name
        x = runtime.preprocess(decoded, onnx_model.size, onnx_model.channels)
        assert np.array_equal(x, predictor.preprocess(image)), name
        served_prob = runtime.resize_back(onnx_model.probabilities(x[None])[0], *image.shape[:2])
        assert np.abs(served_prob - prob).max() <= 1e-4, name
        assert np.array_equal(runtime.overlay(image, mask), overlay(image, mask)), name


# ---- packaging --------------------------------------------------------------------------------------------

def test_package_records_provenance(packaged):
    import bentoml

    from cmunext.serving.package import stores
    from cmunext.serving.serve import find_bento, resolve

    model_store, bento_store = stores()
    model = model_store.get(packaged["model_tag"])
    meta, labels = model.info.metadata, model.info.labels
    assert labels["mlflow_model"] == "cmunext-test" and labels["mlflow_version"] == "3"
    assert meta["run_id"] == "run-abc" and meta["data_revision"] == "rev-123"
    assert meta["metrics"] == {"iou": 0.5, "dice": pytest.approx(0.66)}
    assert meta["sha256"] == packaged["sha256"] and meta["format"] == packaged["format"]

    bento = bento_store.get(packaged["bento_tag"])
    assert bento.info.labels["mlflow_version"] == "3" and bento.info.labels["sha256"] == packaged["sha256"]
    # the served threshold is the evaluation's (eval.threshold; 0.5 by default)
    assert bento.info.args == {"model": packaged["model_tag"], "sha256": packaged["sha256"], "threshold": 0.5}
    requirements = (Path(bento.path) / "env" / "python" / "requirements.txt").read_text()
    for package in ("onnxruntime==", "numpy==", "pillow==", "opencv-python-headless==", "bentoml=="):
        assert package in requirements
    assert "torch" not in requirements and "nvidia" not in requirements
    sources = sorted(str(p.relative_to(Path(bento.path) / "src")) for p in (Path(bento.path) / "src").rglob("*") if p.is_file())
    assert all(s == "bentofile.yaml" or (s.startswith("cmunext_serving/") and s.endswith(".py")) for s in sources), sources

    archive = Path(packaged["archive"])
    assert archive.is_absolute() and archive.is_file() and archive.parent == packaged["home"] / "bentos"
    assert find_bento(3) == find_bento() == find_bento(3, "cmunext-test") == packaged["bento_tag"]
    with pytest.raises(LookupError):
        find_bento(99)
    assert resolve(packaged["model_tag"]) == ("model", packaged["model_tag"])
    assert resolve(None) == ("bento", packaged["bento_tag"])
    assert bentoml.__version__.startswith("1.4")


def test_bento_service_imports_without_torch(packaged):
    """The serving image has no torch (nor albumentations, nor the cmunext library): the bento's own copy of the
    serving package must not need them."""
    import sys

    from cmunext.serving.package import stores

    src = Path(stores()[1].get(packaged["bento_tag"]).path) / "src"
    code = ("import sys; sys.modules.update(torch=None, albumentations=None, torchvision=None, cmunext=None); "
            "import cmunext_serving.service as s, cmunext_serving.engines as e; print(s.__file__); print(s.MODEL_TAG)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=src, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(src)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    where, tag = proc.stdout.strip().splitlines()[-2:]
    assert Path(where).is_relative_to(src)  # the bento's copy, not the project's
    assert tag == "cmunext-segmenter:latest"  # no bento arguments outside `bentoml serve`


# ---- a real server ----------------------------------------------------------------------------------------

def test_served_masks_equal_in_process_masks(server, served_weights, images, tmp_path):
    lesion = 0
    for name, data in images.items():
        r = server.post("/segment", data, name=name, ctype="image/jpeg" if name.endswith(".jpg") else "image/png")
        assert r.status_code == 200 and r.headers["content-type"] == "image/png", (name, r.text[:300])
        served = np.asarray(Image.open(io.BytesIO(r.content)))
        assert set(np.unique(served)) <= {0, 255}
        image, prob, local = predictor_mask(served_weights, data, tmp_path, name)
        assert served.shape == image.shape[:2], name  # the input's own size, odd sizes included
        assert_same_mask(served == 255, prob, local.astype(bool))
        lesion += int((served == 255).sum() > 0 and (served == 0).sum() > 0)
    assert lesion >= 1, "no test image gave a partial mask: the comparison would be vacuous"


def test_segment_json(server, packaged, images):
    data = images["gray.png"]
    mask = np.asarray(Image.open(io.BytesIO(server.post("/segment", data).content))) == 255
    r = server.post("/segment_json", data)
    assert r.status_code == 200, r.text
    d = r.json()
    h, w = mask.shape
    assert (d["height"], d["width"]) == (h, w)
    assert d["lesion_pixels"] == int(mask.sum()) and d["lesion_fraction"] == pytest.approx(mask.mean())
    assert d["components"] and sum(c["pixels"] for c in d["components"]) == d["lesion_pixels"]
    for c in d["components"]:
        assert 0 <= c["x"] < c["x"] + c["width"] <= w and 0 <= c["y"] < c["y"] + c["height"] <= h
        assert mask[c["y"]:c["y"] + c["height"], c["x"]:c["x"] + c["width"]].sum() >= c["pixels"]
    assert 0.5 < d["mean_probability"] <= 1
    assert d["model"] == {"tag": packaged["model_tag"], "mlflow_model": "cmunext-test", "mlflow_version": "3",
                          "run_id": "run-abc", "data_revision": "rev-123", "format": packaged["format"],
                          "sha256": packaged["sha256"], "runtime": "onnxruntime", "precision": "fp32",
                          "requested": "onnxruntime/fp32", "fallback_reason": None}
    assert d["latency_ms"]["total"] >= d["latency_ms"]["inference"] > 0
    assert d["request_id"] == r.headers["X-Request-ID"] and len(d["request_id"]) == 32


def _splitting_rule(evidences: list[tuple[float, float]]):
    """A lesion-free rule whose region-size bound falls in the widest gap between the images' largest regions."""
    from cmunext_serving.lesion_rule import LesionRule

    areas = sorted({a for _, a in evidences if a > 0})
    assert len(areas) >= 2, f"the test images' largest regions {areas} cannot be split by a rule"
    gap = max(range(len(areas) - 1), key=lambda i: areas[i + 1] - areas[i])
    return LesionRule(0.5, min_area=(areas[gap] + areas[gap + 1]) / 2)


def test_the_served_form_applies_the_models_lesion_rule(packaged, served_weights, images, tmp_path):
    """A model packaged with an active lesion-free rule that also cuts masks to their largest region (as the evaluate
    step records it): every served mask is the rule's mask of the in-process probabilities, some emptied by it and
    some kept, and /segment_json names it."""
    import dataclasses

    from cmunext.serving.package import package_model
    from cmunext_serving.lesion_rule import evidence

    local = {name: predictor_mask(served_weights, data, tmp_path, name)[1] for name, data in images.items()}
    rule = dataclasses.replace(_splitting_rule([evidence(prob) for prob in local.values()]), largest_only=True)
    built = package_model(served_weights, model_name="cmunext-test", model_version=5, run_id="run-rule",
                          data_revision="rev-123", metrics={"iou": 0.5}, runs=5, rule=rule)
    srv = Server(built["bento_tag"], tmp_path / "serve-rule.log",  # a home of its own: see _own_home
                 env={"BENTOML_HOME": _own_home(packaged["home"] / "bentoml", tmp_path / "home")})
    try:
        emptied = 0
        for name, data in images.items():
            r = srv.post("/segment", data, name=name, ctype="image/jpeg" if name.endswith(".jpg") else "image/png")
            assert r.status_code == 200, (name, r.text[:300])
            served = np.asarray(Image.open(io.BytesIO(r.content))) == 255
            expected = rule.mask(local[name])
            assert_same_mask(served, local[name], expected)
            emptied += int(not expected.any() and (local[name] > 0.5).any())
        assert 0 < emptied < len(images), "the rule emptied none or all: the comparison would be vacuous"
        assert srv.post("/segment_json", images["gray.png"]).json()["lesion_rule"] == rule.as_dict()
    finally:
        srv.close()


def test_a_flip_averaged_form_serves_the_masks_it_is_scored_with(packaged, served_weights, images, tmp_path):
    """eval.tta=hflip: the bento's masks equal the evaluated form's (eager PyTorch, the image and its mirror
    averaged), which differ from the plain network's on these images."""
    from cmunext.predict import Predictor
    from cmunext.serving.package import package_model

    built = package_model(served_weights, model_name="cmunext-test", model_version=6, run_id="run-tta",
                          data_revision="rev-123", metrics={"iou": 0.5}, runs=5, tta="hflip")
    flipped, plain = Predictor(served_weights, tta="hflip"), Predictor(served_weights)
    changed = _serves_as_evaluated(built, packaged, images, flipped, plain, tmp_path)
    assert changed, "the flip-averaged masks equal the plain ones: the comparison would be vacuous"


def _serves_as_evaluated(built: dict, packaged: dict, images: dict, evaluated, other, tmp_path: Path) -> int:
    """Serve BUILT on a BentoML home of its own and check every image's mask against EVALUATED's (the eager form
    that was scored); returns on how many images OTHER (a different form) would have answered differently."""
    from cmunext_serving.imageio import read_image

    srv = Server(built["bento_tag"], tmp_path / "serve.log",
                 env={"BENTOML_HOME": _own_home(packaged["home"] / "bentoml", tmp_path / "home")})
    try:
        changed = 0
        for name, data in images.items():
            (tmp_path / name).write_bytes(data)
            image = read_image(tmp_path / name)
            r = srv.post("/segment", data, name=name, ctype="image/jpeg" if name.endswith(".jpg") else "image/png")
            assert r.status_code == 200, (name, r.text[:300])
            prob = evaluated.probabilities(image)
            assert_same_mask(np.asarray(Image.open(io.BytesIO(r.content))) == 255, prob, prob > 0.5)
            changed += int(((prob > 0.5) != (other.probabilities(image) > 0.5)).any())
        return changed
    finally:
        srv.close()


def test_a_two_model_ensemble_with_flip_tta_serves_the_masks_it_is_scored_with(packaged, served_weights, images,
                                                                                  tmp_path):
    """train.ensemble=2 with eval.tta=hflip: two networks' logits averaged, each on the image and its mirror, as one
    exported graph; the bento's masks equal that evaluated form's, which differ from either member's alone."""
    import torch

    from cmunext.engine.weights import load_weights, save_weights
    from cmunext.models.ensemble import LogitAveraged
    from cmunext.predict import Predictor
    from cmunext.serving.package import package_model

    first, meta = load_weights(served_weights)
    second, _ = load_weights(served_weights)
    with torch.no_grad():  # a second member that disagrees with the first: another fold model's weights
        for p in second.parameters():
            p.mul_(1 + 0.2 * torch.randn_like(p))
    ensemble = save_weights(LogitAveraged([first, second]), tmp_path / "ensemble.safetensors", meta["variant"],
                            meta["image_size"])
    built = package_model(ensemble, model_name="cmunext-test", model_version=7, run_id="run-ensemble",
                          data_revision="rev-123", metrics={"iou": 0.5}, runs=5, tta="hflip")
    evaluated, alone = Predictor(ensemble, tta="hflip"), Predictor(served_weights, tta="hflip")
    assert evaluated.meta["members"] == 2 and built["format"]
    changed = _serves_as_evaluated(built, packaged, images, evaluated, alone, tmp_path)
    assert changed, "the ensemble's masks equal one member's: the comparison would be vacuous"


def _logged(root: Path, ids: set[str], timeout: float = 20) -> dict[str, dict]:
    """The prediction-log records of IDS, once the server's batches have reached ROOT."""
    from cmunext.monitoring import records

    deadline = time.time() + timeout
    while True:
        found = {r["request_id"]: r for r in records.read(str(root), "cmunext-test").records if r["request_id"] in ids}
        if len(found) == len(ids) or time.time() > deadline:
            return found
        time.sleep(0.3)


def test_every_answer_is_logged_with_its_request_id_and_no_pixels(server, images):
    from cmunext_serving.observe import FEATURES

    answers = [server.post(route, images["gray.png"]) for route in ("/segment", "/segment_json", "/overlay")]
    assert all(a.status_code == 200 for a in answers)
    ids = {a.headers["X-Request-ID"] for a in answers}
    assert len(ids) == 3
    assert server.post("/segment", b"not an image").status_code == 415  # no answer, no record
    logged = _logged(server.predictions, ids)
    assert set(logged) == ids
    width, height = Image.open(io.BytesIO(images["gray.png"])).size
    for record in logged.values():
        assert (record["model"], record["version"], record["form"]) == ("cmunext-test", "3", "onnxruntime/fp32")
        assert (record["width"], record["height"]) == (width, height)
        assert set(FEATURES) <= set(record) and 0 <= record["uncertainty"] <= 1 and record["latency_ms"] > 0
        assert abs(sum(record[f"hist_{i}"] for i in range(8)) - 1) < 1e-6
        assert len(json.dumps(record)) < 1000  # numbers only: no pixels
    segment_json = answers[1].json()
    assert logged[segment_json["request_id"]]["lesion_fraction"] == pytest.approx(segment_json["lesion_fraction"])


def _captured(server, image: bytes) -> tuple[str, Path]:
    """Serve IMAGE; its request id once its capture is stored, and the feedback folder of the served model."""
    rid = server.post("/segment", image).headers["X-Request-ID"]
    root = server.predictions.parent / "feedback" / "cmunext-test"
    deadline = time.time() + 20
    while not (root / "requests" / f"{rid}.json").exists():
        assert time.time() < deadline, "the capture was not stored"
        time.sleep(0.2)
    return rid, root


def _feedback(server, rid: str, mask: bytes | None = None, correct: bool = False, **kw):
    fields = {"request_id": (None, rid)}
    fields.update({"mask": ("mask.png", mask, "image/png")} if mask is not None else {"correct": (None, str(correct).lower())})
    return requests.post(server.url + "/feedback", files=fields, timeout=60, **kw)


def test_corrections_come_back_for_captured_requests(server, images, dataset_copy):
    from cmunext_serving.runtime import png_bytes

    image = images["gray.png"]
    width, height = Image.open(io.BytesIO(image)).size
    rid, root = _captured(server, image)
    captured = json.loads((root / "requests" / f"{rid}.json").read_text())
    assert (captured["width"], captured["height"]) == (width, height) and (root / "images" / captured["image"]).is_file()
    fixed = np.zeros((height, width), np.uint8)
    fixed[5:20, 5:30] = 1
    r = _feedback(server, rid, png_bytes(fixed))
    assert r.status_code == 201, r.text
    assert r.json()["verdict"] == "corrected" and r.json()["image"] == captured["image"]
    stored = np.asarray(Image.open(root / "masks" / f"{rid}.png"))
    assert np.array_equal(stored, fixed * 255)
    again = _feedback(server, rid, png_bytes(fixed))
    assert again.status_code == 409, again.text  # nothing is overwritten
    second = images["odd.png"]  # another scan: two corrections of one image would fail the duplicates check
    other, _ = _captured(server, second)
    other_w, other_h = Image.open(io.BytesIO(second)).size
    wrong = _feedback(server, other, png_bytes(fixed))
    assert wrong.status_code == 422 and f"{width}x{height}, the captured image is {other_w}x{other_h}" in wrong.json()["error"]
    assert _feedback(server, other, images["rgb.jpg"]).status_code == 415
    assert _feedback(server, "0" * 32, png_bytes(fixed)).status_code == 404
    assert _feedback(server, "../../etc", png_bytes(fixed)).status_code == 400
    assert not (root / "labels" / f"{other}.json").exists()  # refused feedback stores nothing
    r = _feedback(server, other, correct=True)
    assert r.status_code == 201 and r.json()["verdict"] == "correct"
    served = np.asarray(Image.open(io.BytesIO(server.post("/segment", second).content)))
    assert np.array_equal(np.asarray(Image.open(root / "masks" / f"{other}.png")), served)
    _import_feedback(root.parent, {rid: fixed * 255, other: served}, dataset_copy)


def _import_feedback(source: Path, expected: dict, dataset: Path) -> None:
    """`cmunext data feedback import`: each correction a new stem, checked, never overwriting; again: nothing new."""
    def run():
        return subprocess.run([str(VENV_BIN / "cmunext"), "data", "feedback", "import", str(dataset), "--source",
                               str(source), "--model-name", "cmunext-test", "--no-version",
                               "--set", "data.allow_empty_masks=true"], capture_output=True, text=True, cwd=ROOT,
                              env=env)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["CMUNEXT_HOME"] = str(dataset.parent / "state")  # the import's MLflow record, never in the project's
    before = {p.name for p in (dataset / "images").iterdir()}
    proc = run()
    assert proc.returncode == 0 and "2 corrected pairs imported" in proc.stdout, proc.stdout + proc.stderr
    added = {p.name for p in (dataset / "images").iterdir()} - before
    assert added == {f"feedback-{rid}.png" for rid in expected}
    for rid, mask in expected.items():
        assert np.array_equal(np.asarray(Image.open(dataset / "masks" / f"feedback-{rid}.png")), mask)
    again = run()
    assert again.returncode == 0 and "0 corrected pairs imported" in again.stdout and "2 imported before" in again.stdout


def test_an_unreachable_prediction_log_never_fails_an_answer(packaged, images, tmp_path):
    """The sink is an S3 endpoint nobody listens on, the buffer holds 2 records: every answer is 200, the records
    that do not fit are dropped and counted on /metrics, and the server says so in its log."""
    env = {"CMUNEXT_PREDICTION_LOG": "s3://nowhere/predictions", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
           "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1",
           "CMUNEXT_PREDICTION_LOG_CAPACITY": "2", "CMUNEXT_PREDICTION_LOG_FLUSH_SECONDS": "0.2"}
    # a BentoML home of its own: a second server on the module server's home would clear that one's metrics
    home = tmp_path / "bentoml"
    shutil.copytree(packaged["home"] / "bentoml", home, ignore=shutil.ignore_patterns("prometheus_multiproc_dir"))
    srv = Server(packaged["bento_tag"], tmp_path / "serve.log", env={**env, "BENTOML_HOME": home})
    try:
        assert all(srv.post("/segment", images["gray.png"]).status_code == 200 for _ in range(8))
        deadline, dropped = time.time() + 60, 0.0
        while dropped < 6 and time.time() < deadline:
            text = requests.get(srv.url + "/metrics", timeout=30).text
            m = re.search(r"^cmunext_prediction_log_dropped_total(?:\{[^}]*\})? (\S+)$", text, re.M)
            dropped = float(m.group(1)) if m else 0.0
            time.sleep(0.5)
        assert dropped >= 6  # 8 answers, at most 2 held
    finally:
        srv.close()
    log = srv.log.read_text(errors="replace")
    assert log.count("prediction log: cannot write to s3://nowhere/predictions") == 1


def test_a_killed_server_loses_at_most_its_unflushed_records(packaged, images, tmp_path):
    """SIGKILL of a real server right after a burst of answers: the records flushed before stay whole and
    readable; the burst's records are either written or gone, never half a line."""
    from cmunext.monitoring import records

    home = tmp_path / "bentoml"  # a home of its own, as above
    shutil.copytree(packaged["home"] / "bentoml", home, ignore=shutil.ignore_patterns("prometheus_multiproc_dir"))
    log = tmp_path / "predictions"
    srv = Server(packaged["bento_tag"], tmp_path / "serve.log",
                 env={"BENTOML_HOME": home, "CMUNEXT_PREDICTION_LOG": log, "CMUNEXT_PREDICTION_LOG_FLUSH_SECONDS": "1"})
    try:
        first = {srv.post("/segment", images["gray.png"]).headers["X-Request-ID"] for _ in range(10)}
        time.sleep(3)  # flushed
        burst = {srv.post("/segment", images["gray.png"]).headers["X-Request-ID"] for _ in range(10)}
        os.killpg(srv.proc.pid, signal.SIGKILL)  # no shutdown hook runs
        srv.proc.wait(timeout=30)
    finally:
        srv.close()
    model = next(p.name for p in log.iterdir() if not p.name.startswith("_"))
    window = records.read(str(log), model)
    seen = {r["request_id"] for r in window.records}
    assert window.torn == [] and first <= seen and seen <= first | burst


def test_overlay(server, images):
    from cmunext.predict import overlay

    data = images["rgb.jpg"]
    mask = np.asarray(Image.open(io.BytesIO(server.post("/segment", data, "a.jpg", "image/jpeg").content))) == 255
    r = server.post("/overlay", data, "a.jpg", "image/jpeg")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    picture = np.asarray(Image.open(io.BytesIO(r.content)))
    image = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert picture.shape == image.shape
    assert np.array_equal(picture, overlay(image, mask.astype(np.uint8)))


def _batch_histogram(url: str, headers=None) -> tuple[float, float]:
    text = requests.get(url + "/metrics", headers=headers, timeout=30).text
    count = float(re.search(r"^cmunext_inference_batch_size_count (\S+)$", text, re.M).group(1))
    singles = float(re.search(r'^cmunext_inference_batch_size_bucket\{le="1.0"\} (\S+)$', text, re.M).group(1))
    return count, singles


def test_concurrent_load_is_batched_without_errors(server, images):
    data = images["odd.png"]
    expected = server.post("/segment_json", data).json()["lesion_pixels"]
    count0, singles0 = _batch_histogram(server.url)
    results, errors = [], []

    def client():
        with requests.Session() as session:
            for _ in range(25):
                try:
                    r = session.post(server.url + "/segment_json", files={"image": ("odd.png", data, "image/png")}, timeout=60)
                    (results if r.status_code == 200 else errors).append(r.json() if r.status_code == 200 else r.status_code)
                except requests.RequestException as exc:
                    errors.append(repr(exc))

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 200
    # a batch runs other kernels than one image: a pixel whose probability sits on the threshold may flip
    # (seen: 1 pixel of 29,506), never more than that
    found = {r["lesion_pixels"] for r in results}
    assert max(abs(f - expected) for f in found) <= max(1, expected // 10_000), f"batching changed {found} vs {expected}"
    count, singles = _batch_histogram(server.url)
    batches, multi = count - count0, (count - count0) - (singles - singles0)
    assert batches < 200 and multi > 0, f"{batches} inference calls for 200 requests, {multi} with batch > 1"


BAD_REQUESTS = [
    # (what, how to send it, expected status)
    ("non-image bytes", dict(files={"image": ("a.png", b"hello, not an image", "image/png")}), 415),
    ("a GIF", dict(files={"image": ("a.gif", b"GIF89a" + b"\0" * 64, "image/gif")}), 415),
    ("empty body", dict(data=b"", headers={"Content-Type": "multipart/form-data; boundary=xyz"}), 400),
    ("empty file", dict(files={"image": ("a.png", b"", "image/png")}), 400),
    ("no image field", dict(files={"file": ("a.png", b"\x89PNG\r\n\x1a\n", "image/png")}), 400),
    ("a URL instead of a file", dict(data={"image": "http://169.254.169.254/latest"}, files={"x": ("x", b"x")}), 400),
    ("JSON body", dict(json={"image": "aGVsbG8="}), 415),
    ("raw PNG body", dict(data=b"\x89PNG\r\n\x1a\n", headers={"Content-Type": "image/png"}), 415),
    ("malformed multipart", dict(data=b"--nope\r\nbroken", headers={"Content-Type": "multipart/form-data"}), 400),
]


def test_bad_requests_get_4xx_json_and_the_server_keeps_serving(server, images):
    gray = np.asarray(Image.open(io.BytesIO(images["gray.png"])))
    cases = list(BAD_REQUESTS) + [
        ("truncated PNG", dict(files={"image": ("t.png", images["gray.png"][: len(images["gray.png"]) // 2], "image/png")}), 400),
        ("truncated JPEG", dict(files={"image": ("t.jpg", images["rgb.jpg"][: len(images["rgb.jpg"]) // 2], "image/jpeg")}), 400),
        ("too many bytes", dict(files={"image": ("big.png", b"\x89PNG\r\n\x1a\n" + os.urandom(MAX_BYTES + 10), "image/png")}), 413),
        ("too many pixels", dict(files={"image": ("wide.png", png(np.zeros((1000, MAX_PIXELS // 1000 + 1), np.uint8)), "image/png")}), 413),
        ("decompression bomb", dict(files={"image": ("bomb.png", png_bomb(), "image/png")}), 413),
        ("JPEG declaring 60000x60000", dict(files={"image": ("b.jpg", jpeg_with_size(jpeg(gray), 60000, 60000), "image/jpeg")}), 413),
    ]
    for what, kwargs, status in cases:
        r = requests.post(server.url + "/segment_json", timeout=60, **kwargs)
        assert r.status_code == status, (what, r.status_code, r.text[:300])
        assert r.headers["content-type"].startswith("application/json"), what
        assert isinstance(r.json()["error"], str) and r.json()["error"], what
    assert requests.get(server.url + "/segment", timeout=10).status_code == 405
    assert requests.get(server.url + "/healthz", timeout=10).status_code == 200
    assert server.post("/segment", images["gray.png"]).status_code == 200


def test_feedback_needs_the_token(auth_server):
    r = _feedback(auth_server, "0" * 32, correct=True)
    assert r.status_code == 401


def test_auth(auth_server, server, images):
    data = images["gray.png"]
    assert auth_server.post("/segment", data).status_code == 401
    r = auth_server.post("/segment_json", data, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and "token" in r.json()["error"]
    assert auth_server.post("/segment", data, headers={"Authorization": "Basic " + TOKEN}).status_code == 401
    ok = auth_server.post("/segment", data, headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200
    assert ok.content == server.post("/segment", data).content  # same model from the source bundle and the bento
    for path in ("/healthz", "/livez", "/readyz", "/"):
        assert requests.get(auth_server.url + path, timeout=10).status_code == 200, path
    assert requests.get(auth_server.url + "/metrics", timeout=10).status_code == 401
    assert requests.get(auth_server.url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10).status_code == 200
    assert server.post("/segment", data).status_code == 200  # no token configured: open
    assert "the API requires 'Authorization: Bearer <CMUNEXT_API_TOKEN>'" in auth_server.log.read_text(errors="replace")
    assert "the API is open: no CMUNEXT_API_TOKEN set" in server.log.read_text(errors="replace")


@pytest.mark.parametrize("token", [None, "CHANGE_ME", "short"])
def test_required_token_refuses_to_start_without_one(packaged, tmp_path, token):
    """The Kubernetes Deployment sets CMUNEXT_REQUIRE_AUTH: an empty or placeholder Secret stops the pod instead
    of serving patient images to anyone who reaches it."""
    from cmunext.serving.serve import start_server
    log = tmp_path / "serve.log"
    proc = start_server(packaged["bento_tag"], port=free_port(), log_file=log,
                        env={"CMUNEXT_REQUIRE_AUTH": "true", "CMUNEXT_API_TOKEN": token})
    try:
        code = proc.wait(90)
    finally:
        stop(proc)
    assert code != 0 and "refusing to serve without authentication" in log.read_text(errors="replace")


def test_serve_command_says_whether_a_token_is_required(packaged):
    env = {k: v for k, v in os.environ.items() if k != "CMUNEXT_API_TOKEN"}
    env.update(CMUNEXT_HOME=str(packaged["home"]), BENTOML_HOME=str(packaged["home"] / "bentoml"),
               CMUNEXT_REQUIRE_AUTH="true")
    cmd = [str(VENV_BIN / "cmunext"), "serve", "--model", packaged["bento_tag"], "--port", str(free_port())]
    refused = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "CMUNEXT_API_TOKEN is missing" in refused.stderr, refused.stderr
    env.pop("CMUNEXT_REQUIRE_AUTH")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    try:
        first = proc.stdout.readline()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert "the API is open: no token required (set CMUNEXT_API_TOKEN to require one)" in first, first


@pytest.mark.parametrize("tamper", ["artifact", "artifact+export.json"])
def test_refuses_to_start_with_a_changed_artifact(packaged, tmp_path, monkeypatch, tamper):
    import json

    from cmunext.serving.serve import start_server
    from cmunext_serving.runtime import sha256_file

    home = tmp_path / "bentoml"
    shutil.copytree(packaged["home"] / "bentoml", home, symlinks=True)
    folder = home / "models" / Path(packaged["model_tag"].replace(":", "/"))
    artifact = folder / "model.onnx"
    data = bytearray(artifact.read_bytes())
    data[-100] ^= 0x01
    artifact.write_bytes(bytes(data))
    if tamper == "artifact+export.json":  # the metadata in model.yaml and the bento's arguments still catch it
        info = json.loads((folder / "export.json").read_text())
        (folder / "export.json").write_text(json.dumps({**info, "sha256": sha256_file(artifact)}))
    monkeypatch.setenv("BENTOML_HOME", str(home))
    log = tmp_path / "serve.log"
    proc = start_server(packaged["bento_tag"], port=free_port(), log_file=log)
    try:
        code = proc.wait(90)
    finally:
        stop(proc)
    text = log.read_text(errors="replace")
    assert code != 0 and "refusing to serve" in text and "sha256" in text
    if tamper == "artifact+export.json":
        assert "metadata of model" in text


def test_web_page(server, tmp_path):
    page = requests.get(server.url + "/", timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"] and "CMUNeXt" in page.text
    demo = requests.get(server.url + "/ui/demo.png", timeout=10)
    assert demo.status_code == 200 and Image.open(io.BytesIO(demo.content)).size == (352, 288)

    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no headless browser: install Debian's `chromium` (apt-get install -y chromium) to test the page")
    args = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
            f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=30000", "--window-size=1100,800"]
    url = server.url + "/?demo=1"
    dom = subprocess.run(args + ["--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    assert 'data-state="done"' in dom, dom[-2000:]
    area = re.search(r'id="area">([\d,]+) px<', dom)
    assert area, dom[-2000:]
    shot = tmp_path / "page.png"
    subprocess.run(args + [f"--screenshot={shot}", url], capture_output=True, timeout=120)
    picture = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert picture.shape[:2] == (800, 1100) and picture.std() > 10
    if int(area.group(1).replace(",", "")) > 0:  # the lesion outline colour is on the page
        assert (np.abs(picture - np.array([255, 64, 32])).sum(axis=2) < 30).sum() > 20


def test_package_exports_to_s3(served_weights, packaged, s3_server, monkeypatch):
    from cmunext.serving.package import package_model

    bucket = s3_server.make_bucket("bentos")
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    result = package_model(served_weights, model_name="cmunext-test", model_version=4, run_id="run-s3",
                           data_revision="rev-124", metrics={}, export_to=f"s3://{bucket}/serving/", runs=1)
    assert result["archive"] == f"s3://{bucket}/serving/{result['bento_tag'].replace(':', '-')}.bento"
    head = s3_server.client().head_object(Bucket=bucket, Key=f"serving/{result['bento_tag'].replace(':', '-')}.bento")
    assert head["ContentLength"] > 10_000


def test_drift_of_what_was_served(server, served_weights, tmp_path, monkeypatch):
    """The served model's real answers, read back from its prediction log, against a reference made as the evaluate
    step makes it: scans like its data give no drift (exit 0), darker scans (a gain change) give drift (exit 3)."""
    from cmunext.data.synth import synth_sample, write_synthetic_dataset
    from cmunext.monitoring import reference
    from cmunext.predict import Predictor
    from cmunext_serving.imageio import read_image
    from cmunext_serving.runtime import png_bytes

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("CMUNEXT_HOME", str(tmp_path / "state"))
    data = write_synthetic_dataset(tmp_path / "data", 160, seed=0, progress=False)
    stems = sorted(p.stem for p in (data / "images").iterdir())
    answers: list[dict] = []
    probabilities = reference.observing(Predictor(served_weights).probabilities, 0.5, answers)
    for stem in stems[100:]:
        probabilities(read_image(data / "images" / f"{stem}.png"))
    ref = reference.compute(data, stems[:100], answers, 0.5)
    runs = _three_versions(tmp_path)
    reference.log(runs[2], ref)

    def serve(n: int, seed: int, gain: float = 1.0) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(n):
            image = np.clip(synth_sample(rng)[0] * gain, 0, 255).astype(np.uint8)
            assert server.post("/segment_json", png_bytes(image)).status_code == 200
        time.sleep(1.5)  # two flushes of the log

    def drift() -> tuple[int, dict]:
        out = tmp_path / "drift.json"
        proc = subprocess.run([str(VENV_BIN / "cmunext"), "monitor", "drift", "--model-name", "cmunext-test", "--model",
                               "3", "--last", "60", "--json", str(out), "--set",
                               f"monitoring.prediction_log={server.predictions}"], capture_output=True, text=True,
                              cwd=ROOT, env={**os.environ, "CMUNEXT_HOME": str(tmp_path / "state")})
        assert proc.returncode in (0, 3), proc.stdout + proc.stderr
        return proc.returncode, json.loads(out.read_text())

    serve(60, seed=1)
    code, verdict = drift()
    assert (code, verdict["drift"], verdict["requests"], verdict["version"]) == (0, False, 60, "3")
    assert _drift_gauge(server) == 0.0  # the verdict, read back by the server, on its /metrics
    serve(60, seed=2, gain=0.75)
    code, verdict = drift()
    assert code == 3 and verdict["drift"] and verdict["features"]["intensity_mean"]["drifted"]
    assert _drift_gauge(server, until=1.0) == 1.0


def _drift_gauge(server, until: float | None = None) -> float | None:
    """cmunext_drift_detected of version 3 on the server's /metrics, once it shows (or shows UNTIL)."""
    deadline, value = time.time() + 20, None
    while time.time() < deadline and (value is None or (until is not None and value != until)):
        text = requests.get(server.url + "/metrics", timeout=30).text
        m = re.search(r'^cmunext_drift_detected\{[^}]*version="3"[^}]*\} (\S+)$', text, re.M)
        value = float(m.group(1)) if m else None
        time.sleep(0.3)
    return value


def _three_versions(tmp_path) -> list[str]:
    """Versions 1-3 of cmunext-test in the MLflow of CMUNEXT_HOME (the served bento's labels say version 3);
    returns their run ids."""
    from cmunext.config import load_config
    from cmunext.engine.weights import save_weights
    from cmunext.models import create_model
    from cmunext.tracking import mlflow_runs, registry

    cfg = load_config(ROOT / "configs" / "ci-tiny.yaml")
    weights = save_weights(create_model("cmunext_s"), tmp_path / "other.safetensors", "cmunext_s", 64)
    runs = [mlflow_runs.start(cfg, "workspace", "0" * 64) for _ in range(3)]
    versions = [registry.register(mlflow_runs.log_model(r, weights, 64, 3), "cmunext-test", {}) for r in runs]
    assert versions == ["1", "2", "3"]
    return runs


def _own_home(source: Path, dest: Path) -> Path:
    """A copy of a BentoML home: two servers on one home clear each other's metrics folder."""
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("prometheus_multiproc_dir"))
    return dest


def _shadow_count(server, candidate: str, outcome: str, at_least: int) -> float:
    """cmunext_shadow_requests_total of CANDIDATE and OUTCOME on the server's /metrics, once it reaches AT_LEAST."""
    deadline, value = time.time() + 60, 0.0
    pattern = re.compile(r'^cmunext_shadow_requests_total\{(?=[^}]*candidate="%s")(?=[^}]*outcome="%s")[^}]*\} (\S+)$'
                         % (candidate, outcome), re.M)
    while value < at_least and time.time() < deadline:
        m = pattern.search(requests.get(server.url + "/metrics", timeout=30).text)
        value = float(m.group(1)) if m else 0.0
        time.sleep(0.3)
    return value


def _shadowing(packaged, tmp_path, name: str, candidate: Server, version: str, log: Path) -> Server:
    return Server(packaged["bento_tag"], tmp_path / f"{name}.log",
                  env={"BENTOML_HOME": _own_home(packaged["home"] / "bentoml", tmp_path / f"{name}-home"),
                       "CMUNEXT_PREDICTION_LOG": log, "CMUNEXT_PREDICTION_LOG_FLUSH_SECONDS": "0.5",
                       "CMUNEXT_SHADOW_URL": candidate.url, "CMUNEXT_SHADOW_VERSION": version})


@pytest.fixture(scope="module")
def shadowed(packaged, tiny_bento, images, tmp_path_factory) -> dict:
    """Real `bentoml serve` for the champion (v3) and two candidates: the same bento (as v2), killed after a while,
    and an untrained model (as v1). Every answer of the champion must be 200. Returns the shadow log and counts."""
    tmp = tmp_path_factory.mktemp("shadow")
    log, off = tmp / "predictions", {"CMUNEXT_PREDICTION_LOG": "off"}
    same = Server(packaged["bento_tag"], tmp / "same.log",
                  env={**off, "BENTOML_HOME": _own_home(packaged["home"] / "bentoml", tmp / "same-home")})
    with pytest.MonkeyPatch.context() as mp:  # the tiny bento is found in its own home
        mp.setenv("BENTOML_HOME", str(_own_home(tiny_bento["bentoml_home"], tmp / "other-home")))
        other = Server(tiny_bento["bento_tag"], tmp / "other.log", env=off)
    uploads = [images[k] for k in ("gray.png", "odd.png", "rgb.jpg", "rgba.png")] * 2
    try:
        champion = _shadowing(packaged, tmp, "champion-a", same, "2", log)
        try:
            assert all(champion.post("/segment", data).status_code == 200 for data in uploads)
            assert _shadow_count(champion, "2", "answered", len(uploads)) == len(uploads)
            same.close()  # the candidate dies: the champion answers on
            assert all(champion.post("/segment", data).status_code == 200 for data in uploads[:4])
            assert _shadow_count(champion, "2", "error", 4) == 4
        finally:
            champion.close()
        champion = _shadowing(packaged, tmp, "champion-b", other, "1", log)
        try:
            assert all(champion.post("/segment", data).status_code == 200 for data in uploads)
            assert _shadow_count(champion, "1", "answered", len(uploads)) == len(uploads)
        finally:
            champion.close()
    finally:
        same.close()
        other.close()
    return {"log": log, "answered": len(uploads), "errors": 4}


@pytest.fixture
def three_versions(tmp_path, monkeypatch) -> list[str]:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("CMUNEXT_HOME", str(tmp_path / "state"))
    return _three_versions(tmp_path)


def test_shadowed_candidates_are_compared_and_never_fail_an_answer(shadowed, three_versions, tmp_path):
    """The same bento agrees at IoU 1.0; an untrained model agrees less; a killed candidate adds errors, never a
    failed answer (the fixture). `cmunext registry shadow` prints the figures and keeps them on the version."""
    from cmunext.tracking import registry

    same, other = _registry_shadow(tmp_path, "2", shadowed["log"]), _registry_shadow(tmp_path, "1", shadowed["log"])
    assert (same["answered"], same["errors"]) == (shadowed["answered"], shadowed["errors"])
    assert same["mean_iou"] == 1.0 and same["lesion_disagreement"] == 0.0
    assert same["champions"] == ["3"] and same["latency_ratio_p95"] > 0
    assert (other["answered"], other["errors"]) == (shadowed["answered"], 0)
    assert other["mean_iou"] < 0.9
    assert registry.version_tags("cmunext-test", "2")["shadow_mean_iou"] == "1.0"


def test_the_live_gate_promotes_only_a_candidate_that_agrees(shadowed, three_versions, tmp_path):
    """gate.shadow_*: v1 (untrained, disagrees) stays candidate with the reason recorded; v2 (agrees, 4 errors
    allowed) becomes champion with its shadow figures in the history."""
    from cmunext.tracking import registry

    gate = ["gate.shadow_min_requests=8", "gate.shadow_min_agreement=0.95", "gate.shadow_max_errors=4",
            "gate.shadow_max_latency_ratio=100"]
    registry.nominate("cmunext-test", "1", "test")
    refused = _cmunext_registry(tmp_path, "promote-shadowed", "1", shadowed["log"], *gate)
    assert "NOT PROMOTED: v1 stays candidate" in refused
    last = registry.history("cmunext-test")[-1]
    assert (last["event"], last["version"]) == ("shadow_refused", "1") and "shadow mask agreement" in last["reason"]
    assert registry.candidate("cmunext-test")["version"] == "1" and registry.champion("cmunext-test") is None
    registry.nominate("cmunext-test", "2", "test")
    promoted = _cmunext_registry(tmp_path, "promote-shadowed", "2", shadowed["log"], *gate)
    assert "PROMOTED: v2 is champion" in promoted
    last = registry.history("cmunext-test")[-1]
    assert (last["event"], last["version"]) == ("promoted", "2") and "live gate passed" in last["reason"]
    assert "shadow mask agreement (mean IoU): 1 meets >= 0.95" in last["reason"]
    assert registry.candidate("cmunext-test") is None


def _cmunext_registry(tmp_path, verb: str, version: str, log: Path, *sets: str, json_out: bool = False) -> str:
    args = [a for s in (f"monitoring.prediction_log={log}", *sets) for a in ("--set", s)] + ["--json"] * json_out
    proc = subprocess.run([str(VENV_BIN / "cmunext"), "registry", verb, version, "--model-name", "cmunext-test",
                           *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "CMUNEXT_HOME": str(tmp_path / "state")})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _registry_shadow(tmp_path, version: str, log: Path) -> dict:
    return json.loads(_cmunext_registry(tmp_path, "shadow", version, log, json_out=True))


class FaultyCandidate:
    """A real candidate server behind a test proxy that, once `failing` is set, answers 500 to everything: the
    fault-injection sidecar of a canary test (what Toxiproxy or a service mesh's fault filter does in a cluster)."""

    def __init__(self, target: str) -> None:
        import http.server

        outer, self.failing = self, False

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if outer.failing:
                    self.send_response(500)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                r = requests.post(target + self.path, data=body, timeout=60,
                                  headers={"Content-Type": self.headers["Content-Type"]})
                self.send_response(r.status_code)
                for key in ("Content-Type", "Server-Timing", "X-Request-ID"):
                    if key in r.headers:
                        self.send_header(key, r.headers[key])
                self.send_header("Content-Length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()


def _canary_weight(server) -> float | None:
    m = re.search(r'^cmunext_canary_weight\{[^}]*candidate="2"[^}]*\} (\S+)$',
                  requests.get(server.url + "/metrics", timeout=30).text, re.M)
    return float(m.group(1)) if m else None


def test_a_failing_canary_is_rolled_back_within_an_interval(packaged, images, tmp_path):
    """Real `bentoml serve` for the champion and the candidate (v2, behind a fault-injecting proxy); the front sends
    half the requests to the canary and serves its answers. Once the candidate answers 500, its failures are
    answered by the champion (every answer stays 200) and within one analysis interval (2 s) all traffic is back
    on the champion, the reason written where `cmunext serve --canary` records it in the registry."""
    log = tmp_path / "predictions"
    candidate = Server(packaged["bento_tag"], tmp_path / "candidate.log",
                       env={"BENTOML_HOME": _own_home(packaged["home"] / "bentoml", tmp_path / "candidate-home")})
    proxy = FaultyCandidate(candidate.url)
    rule = {"CMUNEXT_CANARY_URL": proxy.url, "CMUNEXT_CANARY_VERSION": "2", "CMUNEXT_CANARY_WEIGHT": "0.5",
            "CMUNEXT_CANARY_INTERVAL": "2", "CMUNEXT_CANARY_MIN_REQUESTS": "2", "CMUNEXT_CANARY_MAX_ERROR_RATE": "0.2",
            "CMUNEXT_CANARY_MAX_LATENCY_RATIO": "100"}  # a 2 s window of a few requests: latency is noise here
    champion = Server(packaged["bento_tag"], tmp_path / "champion.log",
                      env={"BENTOML_HOME": _own_home(packaged["home"] / "bentoml", tmp_path / "champion-home"),
                           "CMUNEXT_PREDICTION_LOG": log, **rule})
    try:
        answers = [champion.post("/segment", images["gray.png"]) for _ in range(20)]
        assert all(r.status_code == 200 for r in answers)
        served_by = {r.headers.get("X-Served-By") for r in answers}
        assert served_by == {"canary v2", None} and _canary_weight(champion) == 0.5
        proxy.failing, started, rolled_back = True, time.monotonic(), None
        while rolled_back is None and time.monotonic() - started < 30:
            assert champion.post("/segment", images["gray.png"]).status_code == 200  # never the canary's 500
            rolled_back = time.monotonic() - started if _canary_weight(champion) == 0.0 else None
        assert rolled_back is not None and rolled_back < 2 * 2 + 5  # the interval it breached in, and the next
        after = [champion.post("/segment", images["gray.png"]) for _ in range(10)]
        assert all(r.status_code == 200 and "X-Served-By" not in r.headers for r in after)
    finally:
        champion.close()
        proxy.close()
        candidate.close()
    decision = json.loads((log / "_canary" / "cmunext-test" / "v2.json").read_text())
    assert decision["event"] == "rolled_back" and decision["reason"].startswith("error rate")
    print(f"canary rolled back {rolled_back:.1f} s after the first injected error")
