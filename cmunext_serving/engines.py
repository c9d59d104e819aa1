"""The runtimes a served artifact runs in, as export.json's `serving` record names them:

- `onnxruntime` / fp32: ONNX Runtime's CPU provider with the session settings the export chose;
- `openvino` / fp32, bf16 or int8: OpenVINO's CPU plugin reading the same ONNX graph (int8: the graph NNCF
  quantised, with QuantizeLinear/DequantizeLinear pairs that OpenVINO runs as int8 kernels). bf16 is an
  inference-precision hint, so its artifact is the fp32 graph itself.

bf16 needs AVX512-BF16 or AMX. On a CPU without them the model runs the recorded fallback (the fastest fp32
form measured at export) and says so: at start in the log, and in every /segment_json answer.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

import numpy as np

from .runtime import EXPORT_JSON, session_options, sigmoid, verify_artifact

log = logging.getLogger("cmunext.serving")

BF16_ENV = "CMUNEXT_CPU_BF16"   # "0" turns the bf16 capability off (tests; or to serve fp32 on purpose)
FP32 = {"runtime": "onnxruntime", "precision": "fp32"}  # what artifacts from before the serving record ran in


def cpu_bf16() -> tuple[bool, str]:
    """(whether OpenVINO runs bf16 natively on this CPU, why not)."""
    forced = os.environ.get(BF16_ENV, "").strip().lower()
    if forced in ("0", "false", "no", "off"):
        return False, f"bf16 turned off by {BF16_ENV}={os.environ[BF16_ENV]}"
    import openvino as ov
    if "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        return True, ""
    return False, "this CPU has neither AVX512-BF16 nor AMX"


def serving_record(info: dict) -> dict:
    """export.json's {runtime, precision, fallback}; ONNX Runtime fp32 for artifacts exported before it existed."""
    return {**FP32, "fallback": None, **info.get("serving", {})}


def _onnxruntime(path: Path, settings: dict, threads: int | None):
    import onnxruntime as ort
    session = ort.InferenceSession(str(path), session_options(settings, threads), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {name: batch})[0]


def _openvino(path: Path, precision: str, threads: int | None):
    import openvino as ov
    core = ov.Core()
    # OpenVINO picks bf16 by itself on AMX CPUs: fp32 and int8 forms must ask for f32 explicitly
    config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32", "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
    request, lock = compiled.create_infer_request(), threading.Lock()

    def run(batch):
        with lock:  # one infer request, not thread-safe; 2 cores gain nothing from parallel requests anyway
            # the input stays ours for the call (held by the caller); the outputs come back as copies
            return request.infer({0: batch}, share_inputs=True)[0]
    return run


def open_runtime(path: Path, runtime: str, precision: str, settings: dict | None = None, threads: int | None = None):
    """A function: N x C x S x S float32 -> N x K x S x S logits, for PATH in RUNTIME at PRECISION."""
    if runtime == "onnxruntime":
        if precision != "fp32":
            raise ValueError(f"ONNX Runtime forms are fp32 here, not {precision}")
        return _onnxruntime(path, settings or {}, threads)
    if runtime == "openvino":
        return _openvino(path, precision, threads)
    raise ValueError(f"unknown runtime {runtime!r} (onnxruntime or openvino)")


class ServedModel:
    """An exported artifact (model.onnx + export.json) in the runtime and precision export.json records, or in
    its fallback where this CPU lacks bf16; returns lesion probabilities."""

    def __init__(self, folder: str | Path, recorded: dict[str, str | None] | None = None,
                 threads: int | None = None) -> None:
        folder = Path(folder)
        self.sha256 = verify_artifact(folder, recorded)
        self.info = json.loads((folder / EXPORT_JSON).read_text())
        self.path = folder / self.info["file"]
        self.size, self.channels = int(self.info["image_size"]), int(self.info["in_channels"])
        record = serving_record(self.info)
        self.requested = f"{record['runtime']}/{record['precision']}"
        self.runtime, self.precision, self.fallback_reason = record["runtime"], record["precision"], None
        if self.precision == "bf16":
            ok, why = cpu_bf16()
            if not ok:
                fallback = record.get("fallback") or {"runtime": "openvino", "precision": "fp32"}
                self.runtime, self.precision, self.fallback_reason = fallback["runtime"], fallback["precision"], why
                log.warning("the artifact was chosen to run in bf16, but %s: running %s/%s instead", why,
                            self.runtime, self.precision)
        threads = threads or int(self.info.get("session", {}).get("intra_op_num_threads") or 0) or None
        self._logits = open_runtime(self.path, self.runtime, self.precision, self.info.get("session", {}), threads)

    def describe(self) -> dict:
        """What runs: {runtime, precision, requested, fallback_reason} (for logs and /segment_json)."""
        return {"runtime": self.runtime, "precision": self.precision, "requested": self.requested,
                "fallback_reason": self.fallback_reason}

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self._logits(np.ascontiguousarray(batch, dtype=np.float32))

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """N x C x S x S normalised input -> N x S x S lesion probability (first output channel)."""
        return sigmoid(self.logits(batch)[:, 0])
