"""int8 static quantisation of the serving artifact (ONNX Runtime), and the trade it makes: test IoU on
real images against speed, both beside the fp32 artifact. The int8 model is worth serving only when it
is faster AND its test IoU drops by no more than `max_iou_drop` (0.5 points by default); `int8_trade`
measures both and says which artifact to ship.

Calibration uses real training images (the activation ranges of random inputs are not those of
ultrasound), preprocessed exactly as the service does.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Iterable

import numpy as np

MAX_IOU_DROP = 0.005  # 0.5 IoU points


def quantize_int8(fp32_onnx: str | Path, calibration: Iterable[np.ndarray], out: str | Path,
                  per_channel: bool = True) -> Path:
    """Static int8 (QOperator: QLinearConv; uint8 activations, int8 weights), calibrated on CALIBRATION
    (preprocessed float32 batches shaped like the model's input)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches = iter(list(calibration))

    class Reader(CalibrationDataReader):
        def get_next(self):
            batch = next(batches, None)
            return None if batch is None else {"input": batch}

    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="cmunext-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_onnx), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QOperator,
                        per_channel=per_channel, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def _session(path: Path, threads: int):
    import onnxruntime as ort

    from cmunext_serving.runtime import session_options
    return ort.InferenceSession(str(path), session_options({"graph_optimization_level": "ORT_ENABLE_ALL"}, threads),
                                providers=["CPUExecutionProvider"])


def _interleaved_ms(sessions: dict, x: np.ndarray, runs: int) -> dict[str, float]:
    times = {name: [] for name in sessions}
    for _ in range(3):
        for name, sess in sessions.items():
            sess.run(None, {"input": x})
            for _ in range(max(1, runs // 3)):
                t0 = time.perf_counter()
                sess.run(None, {"input": x})
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) * 1000 for name, t in times.items()}


def int8_trade(weights: str | Path, data_dir: str | Path, test_stems: list[str], calibration_stems: list[str],
               *, threshold: float = 0.5, runs: int = 15, threads: int = 2,
               max_iou_drop: float = MAX_IOU_DROP) -> dict:
    """fp32 serving artifact vs its int8 quantisation: test IoU (mean over images), ms at batch 1 and 8,
    and the decision."""
    from cmunext_serving.imageio import read_image
    from cmunext_serving.runtime import preprocess, resize_back, sigmoid

    from ..data.layout import find_file
    from ..evaluation import score_images, summarize
    from .export import export_serving_artifact

    data_dir = Path(data_dir)
    with tempfile.TemporaryDirectory(prefix="cmunext-int8-trade-") as tmp:
        export = export_serving_artifact(weights, Path(tmp) / "fp32", runs=5, threads=threads)
        size, channels = export["image_size"], export["in_channels"]

        def prep(stem):
            return preprocess(read_image(find_file(data_dir / "images", stem)), size, channels)[None]

        int8_path = quantize_int8(export["path"], (prep(s) for s in calibration_stems), Path(tmp) / "int8.onnx")
        sessions = {"fp32": _session(Path(export["path"]), threads), "int8": _session(int8_path, threads)}
        scores = {}
        for name, sess in sessions.items():
            def probabilities(image, sess=sess):
                logits = sess.run(None, {"input": preprocess(image, size, channels)[None]})[0]
                return resize_back(sigmoid(logits[0, 0]), *image.shape[:2])
            scores[name] = summarize(score_images(probabilities, data_dir, test_stems, threshold, progress=False), 200)
        timing = {f"b{b}": _interleaved_ms(sessions, np.random.default_rng(b).standard_normal(
            (b, channels, size, size)).astype(np.float32), runs) for b in (1, 8)}
        int8_bytes, fp32_bytes = int8_path.stat().st_size, Path(export["path"]).stat().st_size
    iou = {name: s["iou"]["value"] for name, s in scores.items()}
    drop = iou["fp32"] - iou["int8"]
    speedup = {b: round(t["fp32"] / t["int8"], 3) for b, t in timing.items()}
    ship = drop <= max_iou_drop and min(speedup.values()) > 1.0
    why = []
    if drop > max_iou_drop:
        why.append(f"IoU drops {100 * drop:.2f} points (> {100 * max_iou_drop:.1f})")
    if min(speedup.values()) <= 1.0:
        why.append(f"int8 is not faster here ({speedup['b1']:.2f}x at batch 1, {speedup['b8']:.2f}x at batch 8)")
    return {"fp32_format": export["format"], "image_size": size, "test_images": len(test_stems),
            "calibration_images": len(calibration_stems), "test_iou": {k: round(v, 4) for k, v in iou.items()},
            "iou_drop_points": round(100 * drop, 2),
            "ms": {b: {k: round(v, 2) for k, v in t.items()} for b, t in timing.items()}, "speedup_int8": speedup,
            "bytes": {"fp32": fp32_bytes, "int8": int8_bytes},
            "ship": "int8" if ship else "fp32", "reasons": why or ["faster and within the IoU budget"]}
