"""Infra-validation (TFX's InfraValidator, for bentos): boot the packaged bento as it is deployed (from its
.bento archive, in a private BentoML home, authentication required), before the registry's `champion` moves.

It waits for /readyz, sends canary images from the test split, and passes only when the bento runs the runtime
and precision the evaluated artifact runs in here, every served mask equals the mask that artifact gives in this
process (at most MASK_TOLERANCE of the pixels may differ), and the served p95 latency over HTTP meets the
latency gate. A server that does not start, a wrong mask or a
slow server is a failure whose reasons the pipeline records as a rejection.
"""
from __future__ import annotations

import os
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cmunext_serving.lesion_rule import LesionRule

if TYPE_CHECKING:  # annotations only: both are imported where used, when a bento is checked
    import requests
    from cmunext_serving.engines import ServedModel

CANARY_IMAGES = 8
LATENCY_REQUESTS = 20
MASK_TOLERANCE = 1e-3  # share of pixels: resize and threshold rounding at a few border pixels, nothing more
READY_TIMEOUT_S = 180


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _boot(archive: Path, home: Path, port: int, log: Path, token: str) -> tuple[subprocess.Popen, str]:
    """Import ARCHIVE into HOME and start `bentoml serve` on it as the Deployment runs it (authentication
    required, with TOKEN); returns the process and the bento tag."""
    from .serving.store import BentoStoreError, import_archive

    try:
        tag = import_archive(archive, home)
    except BentoStoreError as exc:
        raise RuntimeError(f"the bento archive does not import: {exc}") from None
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True", "PYTHONUNBUFFERED": "1"}
    env.pop("CMUNEXT_BENTO_MODEL", None)
    with open(log, "wb") as out:
        # in the step's own process group: a killed run takes its canary server with it
        proc = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", tag, "--host", "127.0.0.1",
                                 "--port", str(port)], stdout=out, stderr=subprocess.STDOUT,
                                env={**env, "CMUNEXT_REQUIRE_AUTH": "true", "CMUNEXT_API_TOKEN": token,
                                     "CMUNEXT_PREDICTION_LOG": "off"})  # its canary images are not traffic
    return proc, tag


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM: bentoml serve stops its workers before it exits."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _startup_error(log: Path) -> str | None:
    """The exception of a service that failed to start (BentoML keeps the others up, so nothing exits)."""
    text = log.read_text(errors="replace") if log.exists() else ""
    if "startup failed" not in text and "Traceback" not in text:
        return None
    errors = [line.strip() for line in text.splitlines() if re.match(r"^\w+(\.\w+)*(Error|Exception|Missing)\b", line)]
    return errors[-1] if errors else "see the server log"


def wait_ready(url: str, proc: subprocess.Popen, log: Path) -> float:
    """Seconds until URL answers /readyz; RuntimeError naming the start-up error when the server fails first."""
    import requests

    started = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the bento's server exited with code {proc.returncode} before it was ready: "
                               f"{_startup_error(log) or 'see the server log'}")
        if (error := _startup_error(log)) is not None:
            raise RuntimeError(f"the bento's server failed to start: {error}")
        try:
            if requests.get(f"{url}/readyz", timeout=5).status_code == 200:
                return time.monotonic() - started
        except (requests.ConnectionError, requests.Timeout):
            pass
        if time.monotonic() - started > READY_TIMEOUT_S:
            raise RuntimeError(f"the bento's server was not ready after {READY_TIMEOUT_S} s")
        time.sleep(0.5)


def _upload(url: str, route: str, path: Path, data: bytes, auth: dict[str, str]) -> requests.Response:
    """POST DATA as the `image` file of ROUTE, authenticated as the Deployment's clients are."""
    import requests

    return requests.post(f"{url}{route}", files={"image": (path.name, data)}, headers=auth, timeout=120)


def _evaluated_mask(model: ServedModel, data: bytes, name: str, rule: LesionRule) -> np.ndarray:
    """The mask the evaluated artifact gives for DATA in this process: the reference the served mask must equal."""
    from cmunext_serving.runtime import decode_image, preprocess, resize_back

    image = decode_image(data, 10**9, name)
    prob = resize_back(model.probabilities(preprocess(image, model.size, model.channels)[None])[0],
                       image.shape[0], image.shape[1])
    return rule.mask(prob)


def _check_masks(url: str, auth: dict[str, str], images: dict[str, Path], model: ServedModel, rule: LesionRule,
                 result: dict) -> None:
    """Each canary's served mask against the evaluated artifact's; records the share of pixels that differ."""
    import io

    from PIL import Image

    for stem, path in images.items():
        data = path.read_bytes()
        r = _upload(url, "/segment", path, data, auth)
        if r.status_code != 200:
            result["reasons"].append(f"{stem}: /segment answered {r.status_code}: {r.text[:200]}")
            continue
        served = np.asarray(Image.open(io.BytesIO(r.content))) == 255
        expected = _evaluated_mask(model, data, path.name, rule)
        differ = float(np.mean(served != expected)) if served.shape == expected.shape else 1.0
        result.setdefault("mask_differences", {})[stem] = round(differ, 6)
        if differ > MASK_TOLERANCE:
            result["reasons"].append(f"{stem}: {differ:.2%} of the served mask differs from the evaluated "
                                     f"artifact's (tolerance {MASK_TOLERANCE:.1%})")


def _check_served_form(url: str, auth: dict[str, str], first: Path, model: ServedModel, result: dict) -> None:
    """The runtime and precision the bento serves in must be the ones the evaluated artifact was judged in."""
    served_form = _upload(url, "/segment_json", first, first.read_bytes(), auth).json().get("model", {})
    result["served"] = {k: served_form.get(k) for k in ("runtime", "precision", "fallback_reason")}
    expected = model.describe()
    if (served_form.get("runtime"), served_form.get("precision")) != (expected["runtime"], expected["precision"]):
        result["reasons"].append(f"the bento serves {served_form.get('runtime')}/{served_form.get('precision')}"
                                 f", not the evaluated {expected['runtime']}/{expected['precision']}")


def _check_latency(url: str, auth: dict[str, str], images: dict[str, Path], canaries: list[str],
                   max_latency_ms: float, result: dict) -> None:
    """Served p95 latency over HTTP (LATENCY_REQUESTS uploads, cycling through the canaries) against the gate."""
    times = []
    for i in range(LATENCY_REQUESTS):
        path = images[canaries[i % len(canaries)]]
        t0 = time.perf_counter()
        _upload(url, "/segment", path, path.read_bytes(), auth).raise_for_status()
        times.append((time.perf_counter() - t0) * 1000)
    p95 = float(np.percentile(times, 95))
    result["latency_ms"] = {"p50": round(float(np.median(times)), 1), "p95": round(p95, 1)}
    if p95 > max_latency_ms:
        result["reasons"].append(f"served p95 latency {p95:.0f} ms over HTTP exceeds the gate's "
                                 f"{max_latency_ms:.0f} ms")


def _check_server(url: str, proc: subprocess.Popen, log: Path, token: str, model: ServedModel, data_dir: Path,
                  canaries: list[str], rule: LesionRule, max_latency_ms: float, result: dict) -> None:
    """Wait for the booted server, then run every check; a server that fails or stops answering is a reason."""
    import requests

    from .data.layout import find_file

    auth = {"Authorization": f"Bearer {token}"}
    try:
        result["ready_s"] = round(wait_ready(url, proc, log), 1)
        images = {s: find_file(data_dir / "images", s) for s in canaries}
        _check_masks(url, auth, images, model, rule, result)
        _check_served_form(url, auth, images[canaries[0]], model, result)
        _check_latency(url, auth, images, canaries, max_latency_ms, result)
    except (RuntimeError, requests.RequestException) as exc:
        result["reasons"].append(str(exc))


def validate_bento(archive: str | Path, artifact: str | Path, data_dir: str | Path, stems: list[str],
                   max_latency_ms: float, out_dir: str | Path, rule: LesionRule = LesionRule()) -> dict:
    """Boot ARCHIVE and check it against ARTIFACT (the evaluated serving artifact, its masks made by RULE as the
    evaluation's were) on the canary STEMS."""
    from cmunext_serving.engines import ServedModel

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    canaries = sorted(stems)[:CANARY_IMAGES]
    model = ServedModel(artifact)
    result = {"passed": False, "bento_archive": str(archive), "canaries": canaries, "reasons": [],
              "max_latency_ms": max_latency_ms, "mask_tolerance": MASK_TOLERANCE}
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = out_dir / "server.log"
    token = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory(prefix="cmunext-infra-validate-") as home:
        try:
            proc, tag = _boot(Path(archive), Path(home), port, log, token)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            result["reasons"].append(f"the bento archive could not be booted: {exc}")
            return result
        result["bento_tag"] = tag
        try:
            _check_server(url, proc, log, token, model, Path(data_dir), canaries, rule, max_latency_ms, result)
        finally:
            _stop(proc)
    result["passed"] = not result["reasons"]
    if result["passed"]:
        result["summary"] = (f"{len(canaries)} canary masks as evaluated in {result['served']['runtime']}/"
                             f"{result['served']['precision']}, HTTP p95 {result['latency_ms']['p95']:.0f}"
                             f" ms ≤ {max_latency_ms:.0f} ms, ready in {result['ready_s']:.0f} s")
    return result
