"""Serving benchmark: requests/s and latency over HTTP against a real `bentoml serve` of a freshly packaged
bento, beside the in-process throughput of the same artifact in the same form, and the export's candidates
against eager PyTorch at batch 1 and 8. Random-init weights are enough for speed. Never part of the tests'
pass/fail.

The bento serves the fastest fp32 or bf16 form here (chosen on speed alone: random weights have no test IoU to
check int8 against). The load client runs on cores of its own (`--client-cpus`, 1 by default) and the
server, and the in-process baseline, on the others, with as many inference threads as they have cores.

    python -m cmunext.serving.bench --variant cmunext_s --size 256
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@contextmanager
def _private_state(root: Path):
    saved = {k: os.environ.get(k) for k in ("CMUNEXT_HOME", "BENTOML_HOME", "CMUNEXT_BENTO_MODEL", "CMUNEXT_API_TOKEN")}
    os.environ.update(CMUNEXT_HOME=str(root), BENTOML_HOME=str(root / "bentoml"))
    os.environ.pop("CMUNEXT_BENTO_MODEL", None)
    os.environ.pop("CMUNEXT_API_TOKEN", None)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def random_weights(variant: str, image_size: int, out: Path, seed: int = 0) -> Path:
    import torch

    from ..engine.weights import save_weights
    from ..models import create_model
    torch.manual_seed(seed)
    return save_weights(create_model(variant).eval(), out, variant, image_size)


def _summary(latencies: list[float], elapsed: float, errors: int) -> dict:
    q = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else latencies * 99
    return {"requests": len(latencies), "errors": errors, "seconds": round(elapsed, 2),
            "rps": round(len(latencies) / elapsed, 2), "p50_ms": round(statistics.median(latencies) * 1000, 1),
            "p95_ms": round(q[94] * 1000, 1), "p99_ms": round(q[98] * 1000, 1)}


def http_load(url: str, data: bytes, clients: int, per_client: int, route: str = "/segment") -> dict:
    """CLIENTS threads, each sending PER_CLIENT uploads one after the other."""
    import requests
    latencies, errors, lock = [], [0], threading.Lock()

    def client():
        with requests.Session() as session:
            for _ in range(per_client):
                t0 = time.perf_counter()
                r = session.post(url + route, files={"image": ("bench.png", data, "image/png")}, timeout=300)
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    errors[0] += r.status_code != 200

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return _summary(latencies, time.perf_counter() - t0, errors[0])


def in_process(artifact: Path, data: bytes, runs: int) -> dict:
    """The service's steps in this process, without HTTP: per image (batch 1), and 8 images with one batch-8 call."""
    from cmunext_serving import runtime
    from cmunext_serving.engines import ServedModel
    model = ServedModel(artifact)

    def pipeline(count: int) -> None:
        decoded = [runtime.decode_image(data, 10**8) for _ in range(count)]
        probs = model.probabilities(np.stack([runtime.preprocess(im, model.size, model.channels) for im in decoded]))
        for im, p in zip(decoded, probs):
            runtime.png_bytes((runtime.resize_back(p, *im.shape[:2]) > runtime.THRESHOLD).astype(np.uint8) * 255)

    result = {}
    for label, count in (("pipeline_b1", 1), ("pipeline_b8", 8)):
        pipeline(count)
        times = []
        for _ in range(max(3, runs // count)):
            t0 = time.perf_counter()
            pipeline(count)
            times.append(time.perf_counter() - t0)
        result[label] = {"images_per_s": round(count / statistics.median(times), 2),
                         "ms_per_call": round(statistics.median(times) * 1000, 1)}
    return result


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc, timeout: float = 180) -> None:
    import requests
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"bentoml serve exited with code {proc.returncode}")
        try:
            if requests.get(url + "/readyz", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout}s")


def cpu_split(client_cpus: int) -> tuple[list[int], list[int]]:
    """(server cores, load-client cores): the last CLIENT_CPUS of this process's cores go to the client; with
    fewer than two cores, or CLIENT_CPUS 0, both share them all."""
    cpus = sorted(os.sched_getaffinity(0))
    if client_cpus <= 0 or len(cpus) <= client_cpus:
        return cpus, cpus
    return cpus[:-client_cpus], cpus[-client_cpus:]


def fastest_form(artifact: Path, runs: int, serve: tuple[str, ...] = ("onnxruntime/fp32", "openvino/fp32",
                                                                      "openvino/bf16")) -> dict:
    """Time SERVE for ARTIFACT (an export folder) at batch 1 and record the fastest in its export.json."""
    from .export import _interleaved_medians
    from .precision import fastest, open_forms, record_form

    info = json.loads((artifact / "export.json").read_text())
    runners, _, unavailable = open_forms(artifact / info["file"], serve, info["session"], info["threads"], [], artifact)
    x = np.random.default_rng(1).standard_normal((1, info["in_channels"], info["image_size"], info["image_size"]),
                                                 dtype=np.float32)
    ms = _interleaved_medians(runners, x, runs)
    form, fallback = fastest(ms)
    record_form(artifact, form, fallback, {"chosen": form, "by": "speed alone (benchmark, random weights)",
                                           "ms_b1": {f: round(v, 2) for f, v in ms.items()}, "unavailable": unavailable})
    return {"form": form, "ms_b1": {f: round(v, 2) for f, v in ms.items()}}


@dataclass
class _Measured:
    """What bench_serving measures and builds on the server's cores, before the HTTP load."""
    export: dict        # export_serving_artifact's export.json
    candidates: dict    # the export's candidates at batch 1 and 8, against eager PyTorch
    form: dict          # the fastest served form (fastest_form)
    packaged: dict      # package_model's result
    data: bytes         # the PNG every request uploads
    local: dict         # in_process's throughput


def _candidate_speeds(export: dict) -> dict:
    """Each export candidate's batch-1 and batch-8 latency, speed-up over eager PyTorch and agreement with it."""
    return {name: {"ms_b1": round(c["ms_by_batch"]["1"], 1), "ms_b8": round(c["ms_by_batch"]["8"], 1),
                   "speedup_b1": c["speedup_vs_torch"]["1"], "speedup_b8": c["speedup_vs_torch"]["8"],
                   "max_abs_diff": c["max_abs_diff"]} for name, c in export["candidates"].items()}


def _measure_offline(tmp: Path, variant: str, image_size: int, weights: str | Path | None, export_runs: int,
                     threads: int, per_client: int) -> _Measured:
    """Export (random-init VARIANT, or WEIGHTS) into TMP, choose the served form, package it and time the
    in-process pipeline on the same artifact."""
    from cmunext_serving import runtime

    from .export import export_serving_artifact
    from .package import package_model

    weights = Path(weights) if weights else random_weights(variant, image_size, tmp / "model.safetensors")
    export = export_serving_artifact(weights, tmp / "export", runs=export_runs, report_batches=(8,),
                                     threads=threads)
    candidates = _candidate_speeds(export)
    form = fastest_form(tmp / "export", export_runs)
    packaged = package_model(weights, model_name=f"bench-{variant}", model_version="0", run_id="bench",
                             data_revision="none", metrics={}, runs=export_runs, exported=tmp / "export")
    image = runtime.demo_image(image_size, image_size)
    data = runtime.png_bytes(image)
    local = in_process(tmp / "export", data, runs=4 * per_client)
    return _Measured(export, candidates, form, packaged, data, local)


def _start_bento(bento_tag: str, tmp: Path, threads: int, **env) -> tuple[str, subprocess.Popen]:
    """`bentoml serve` BENTO_TAG on a free port, logging to TMP/serve.log, ENV added; returns its URL and process."""
    from .serve import start_server

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    # the prediction log on, as served, into the benchmark's own folder (its requests are not traffic)
    env = {"CMUNEXT_THREADS": threads, "CMUNEXT_PREDICTION_LOG": tmp / "predictions", **env}
    proc = start_server(bento_tag, port=port, log_file=tmp / "serve.log", env=env)
    return url, proc


def _shadow_copies(url: str) -> dict:
    """The champion's cmunext_shadow_requests_total by outcome, from its /metrics."""
    import re

    import requests
    text = requests.get(url + "/metrics", timeout=10).text
    found = re.findall(r'^cmunext_shadow_requests_total\{[^}]*outcome="(\w+)"[^}]*\} (\S+)$', text, re.M)
    return {outcome: int(float(count)) for outcome, count in found}


def _shadowed_loads(m: _Measured, tmp: Path, cpus: tuple[list[int], list[int]], clients: tuple[int, ...],
                    per_client: int) -> dict:
    """The same HTTP loads with the champion shadowing a candidate (the same bento, its own BentoML home) that
    runs on the client's cores, so the champion's core does only the champion's work and the copies' sending."""
    from .candidate import candidate_home
    server_cpus, load_cpus = cpus
    bento = m.packaged["bento_tag"]
    os.sched_setaffinity(0, load_cpus)
    c_url, candidate = _start_bento(bento, tmp, len(load_cpus), BENTOML_HOME=candidate_home("bench"),
                                    CMUNEXT_PREDICTION_LOG="off")
    try:
        _wait_ready(c_url, candidate)
        os.sched_setaffinity(0, server_cpus)
        try:
            url, proc = _start_bento(bento, tmp, len(server_cpus), CMUNEXT_SHADOW_URL=c_url,
                                     CMUNEXT_SHADOW_VERSION="bench")
        finally:
            os.sched_setaffinity(0, load_cpus)
        try:
            http = _http_loads(url, proc, m.data, clients, per_client)
            time.sleep(2)  # the last copies answered
            return {"http": http, "copies": _shadow_copies(url)}
        finally:
            _stop_server(proc)
    finally:
        _stop_server(candidate)


def _http_loads(url: str, proc: subprocess.Popen, data: bytes, clients: tuple[int, ...],
                per_client: int) -> dict:
    """HTTP load at each concurrency in CLIENTS, once the server is ready and warm."""
    _wait_ready(url, proc)
    http_load(url, data, max(clients), 3)  # warm-up, and the batching dispatcher's calibration
    return {f"c{c}": http_load(url, data, c, per_client) for c in clients}


def _stop_server(proc: subprocess.Popen) -> None:
    """Stop the server, killing it if it does not stop within 30 s, and its process group."""
    proc.terminate()
    try:
        proc.wait(30)
    except Exception:
        proc.kill()
        proc.wait()
    try:
        os.killpg(proc.pid, 9)  # workers the arbiter left behind, if any
    except ProcessLookupError:
        pass


def _http_vs_in_process(http: dict, local: dict) -> dict:
    """Each HTTP load's requests/s over the in-process pipeline's images/s (batch 1 for one client, else 8)."""
    ratios = {}
    for c, result in http.items():
        base = local["pipeline_b1" if c == "c1" else "pipeline_b8"]["images_per_s"]
        ratios[f"http_{c}_vs_in_process"] = round(result["rps"] / base, 3)
    return ratios


def _p95_ratios(on: dict, off: dict) -> dict:
    return {c: round(on[c]["p95_ms"] / off[c]["p95_ms"], 3) for c in off}


def bench_serving(variant: str = "cmunext_s", image_size: int = 256, *, weights: str | Path | None = None,
                  clients: tuple[int, ...] = (1, 8), per_client: int = 20, export_runs: int = 10,
                  client_cpus: int = 1, shadow: bool = True) -> dict:
    """Package (random-init VARIANT at IMAGE_SIZE, or WEIGHTS) into a private state folder, measure the export
    candidates at batch 1 and 8, the in-process pipeline, and HTTP load at each concurrency in CLIENTS; with
    SHADOW, the same loads again with the server shadowing a candidate."""
    label = str(weights) if weights else variant
    everything = os.sched_getaffinity(0)
    server_cpus, load_cpus = cpu_split(client_cpus)
    threads = len(server_cpus)
    with tempfile.TemporaryDirectory(prefix="cmunext-bench-") as tmp, _private_state(Path(tmp) / "state"):
        tmp = Path(tmp)
        os.sched_setaffinity(0, server_cpus)  # export, in-process and the server (which inherits it) share these
        try:
            m = _measure_offline(tmp, variant, image_size, weights, export_runs, threads, per_client)
            url, proc = _start_bento(m.packaged["bento_tag"], tmp, threads)
        finally:
            os.sched_setaffinity(0, load_cpus)
        try:
            http = _http_loads(url, proc, m.data, clients, per_client)
        finally:
            _stop_server(proc)
        try:
            shadowed = _shadowed_loads(m, tmp, (server_cpus, load_cpus), clients, per_client) if shadow else None
        finally:
            os.sched_setaffinity(0, everything)
    return {"model": label, "image_size": image_size, "server_cpus": server_cpus, "client_cpus": load_cpus,
            "export_choice": m.export["format"], "served_format": m.packaged["format"], "served_form": m.form["form"],
            "forms_ms_b1": m.form["ms_b1"], "candidates": m.candidates,
            "in_process": m.local, "http": http, "ratios": _http_vs_in_process(http, m.local),
            "shadow_on": shadowed and {**shadowed, "p95_on_vs_off": _p95_ratios(shadowed["http"], http)},
            "cpu_count": os.cpu_count(), "load_average": os.getloadavg()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="cmunext_s")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--weights", help="a weights file instead of random-init VARIANT")
    parser.add_argument("--per-client", type=int, default=20)
    parser.add_argument("--export-runs", type=int, default=10)
    parser.add_argument("--client-cpus", type=int, default=1,
                        help="cores kept for the load client, apart from the server's (0: share all)")
    parser.add_argument("--no-shadow", dest="shadow", action="store_false",
                        help="skip the loads with the server shadowing a candidate")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)
    result = bench_serving(args.variant, args.size, weights=args.weights, per_client=args.per_client,
                           export_runs=args.export_runs, client_cpus=args.client_cpus, shadow=args.shadow)
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
