"""Which runtime and precision the served artifact runs in: the evaluate step's choice.

Every form is measured on this machine, at batch 1, in interleaved blocks (export.py's timer):

- `onnxruntime/fp32`: the artifact as exported (its probabilities match eager PyTorch within 1e-4);
- `openvino/fp32`: the same graph in OpenVINO;
- `openvino/bf16`: the same graph with OpenVINO's bf16 inference precision (only on a CPU with AVX512-BF16
  or AMX: elsewhere it would silently run fp32);
- `openvino/int8`: NNCF's post-training quantisation of the graph (QuantizeLinear/DequantizeLinear pairs),
  calibrated on training images preprocessed as the service does.

Each form is scored on the test split in the precision it runs in, through the service's own preprocessing,
against the same path in ONNX Runtime fp32. The fastest form whose mean IoU is at most `max_iou_drop` below
fp32's ships; a slower or refused form is recorded with its reason. A bf16 choice records the fastest fp32 form
as its fallback, for serving CPUs without bf16.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from cmunext_serving.engines import cpu_bf16, open_runtime
from cmunext_serving.runtime import (
    EXPORT_JSON,
    preprocess,
    resize_back,
    sha256_file,
    sigmoid,
)

from ..config import SERVING_FORMS

log = logging.getLogger(__name__)

FORMS = SERVING_FORMS
MAX_IOU_DROP = 0.005  # 0.5 IoU points


def quantize_int8(fp32_onnx: str | Path, calibration: list[np.ndarray], out: str | Path) -> Path:
    """NNCF post-training int8 quantisation of an ONNX graph (QDQ pairs, which OpenVINO runs as int8)."""
    import nncf
    import onnx
    logging.getLogger("nncf").setLevel(logging.WARNING)  # it logs each calibration stage at INFO
    model = onnx.load(str(fp32_onnx))
    name = model.graph.input[0].name
    quantized = nncf.quantize(model, nncf.Dataset(calibration, lambda x: {name: x}), subset_size=len(calibration))
    onnx.save(quantized, str(out))
    return Path(out)


def open_forms(fp32_graph: Path, forms: tuple[str, ...], settings: dict, threads: int,
               calibration: list[np.ndarray], workdir: Path) -> tuple[dict, dict, dict]:
    """({form: logits function}, {form: its graph file}, {form: why it is unavailable here}) for FORMS of the
    fp32 graph; int8 is quantised into WORKDIR on CALIBRATION (preprocessed batches)."""
    bf16, no_bf16 = cpu_bf16() if "openvino/bf16" in forms else (False, "")
    graphs = {form: fp32_graph for form in forms}
    if "openvino/int8" in forms:
        graphs["openvino/int8"] = quantize_int8(fp32_graph, calibration, workdir / "int8.onnx")
    runners, unavailable = {}, {}
    for form in forms:
        runtime, precision = form.split("/")
        if precision == "bf16" and not bf16:
            unavailable[form] = no_bf16
        else:
            runners[form] = open_runtime(graphs[form], runtime, precision, settings, threads)
    return runners, graphs, unavailable


def _form_iou(run, data_dir: Path, stems: list[str], size: int, channels: int, threshold: float):
    """Per-image metrics and masks of one form, through the service's preprocessing and resize-back."""
    from cmunext_serving.imageio import read_image, read_mask

    from ..data.layout import find_file
    from ..metrics import image_metrics
    rows, masks = [], []
    for stem in stems:
        image = read_image(find_file(data_dir / "images", stem))
        prob = resize_back(sigmoid(run(preprocess(image, size, channels)[None])[0, 0]), *image.shape[:2])
        rows.append(image_metrics(prob, read_mask(find_file(data_dir / "masks", stem)), threshold).iou)
        masks.append(prob > threshold)
    return float(np.mean(rows)), masks


def decide(table: dict[str, dict], max_iou_drop: float) -> tuple[str, str | None]:
    """The fastest available form whose IoU drop is within MAX_IOU_DROP, and (for a bf16 choice) the fastest fp32
    form as its fallback. Marks every row of TABLE with `within_budget` and the `reason` it was not chosen."""
    for row in table.values():
        if row.get("available"):
            row["within_budget"] = row["iou_drop_points"] <= 100 * max_iou_drop + 1e-9
            row["reason"] = "" if row["within_budget"] else \
                f"IoU drops {row['iou_drop_points']:.2f} points (> {100 * max_iou_drop:.2f})"
    eligible = {f: t for f, t in table.items() if t.get("within_budget")}
    if not eligible:
        raise ValueError(f"no serving form is within the IoU budget of {100 * max_iou_drop:.2f} points: {table}")
    choice, fallback = fastest({f: t["ms_b1"] for f, t in eligible.items()})
    for form, row in eligible.items():
        if form != choice:
            row["reason"] = f"slower than {choice} ({row['ms_b1']:.1f} vs {table[choice]['ms_b1']:.1f} ms)"
    return choice, fallback


def fastest(ms: dict[str, float]) -> tuple[str, str | None]:
    """The fastest form of MS ({form: ms}) and, for a bf16 one, the fastest fp32 form as its fallback."""
    choice = min(ms, key=ms.get)
    fp32 = {f: v for f, v in ms.items() if f.endswith("/fp32")}
    return choice, (min(fp32, key=fp32.get) if choice.endswith("/bf16") and fp32 else None)


def record_form(folder: Path, form: str, fallback: str | None, decision: dict) -> None:
    """Write FORM (with FALLBACK, and the DECISION that chose it) into FOLDER's export.json, whose model.onnx
    already holds FORM's graph."""
    info = json.loads((folder / EXPORT_JSON).read_text())
    runtime, precision = form.split("/")
    info["serving"] = {"runtime": runtime, "precision": precision,
                       "fallback": dict(zip(("runtime", "precision"), fallback.split("/"))) if fallback else None}
    info.update(precision_choice=decision, sha256=sha256_file(folder / info["file"]))
    if precision == "int8" and not info["format"].endswith("_int8"):
        info["format"] = f"{info['format']}_int8"  # parity with PyTorch no longer holds; the IoU check replaced it
    (folder / EXPORT_JSON).write_text(json.dumps(info, indent=1))


def choose_precision(artifact_dir: str | Path, data_dir: str | Path, test_stems: list[str],
                     calibration_stems: list[str], *, threshold: float = 0.5, max_iou_drop: float = MAX_IOU_DROP,
                     forms: tuple[str, ...] = FORMS, runs: int = 15) -> dict:
    """Measure and score FORMS for the fp32 artifact in ARTIFACT_DIR, ship the fastest within the IoU budget
    (rewriting model.onnx for int8, and export.json's `serving` record for any choice) and return the table."""
    from cmunext_serving.imageio import read_image

    from ..data.layout import find_file
    from .export import _interleaved_medians

    folder, data_dir = Path(artifact_dir), Path(data_dir)
    info = json.loads((folder / EXPORT_JSON).read_text())
    fp32_graph = folder / info["file"]
    size, channels, threads = int(info["image_size"]), int(info["in_channels"]), int(info.get("threads", 2))
    settings = info.get("session", {})
    unknown = set(forms) - set(FORMS)
    if unknown:
        raise ValueError(f"eval.serving_forms: unknown {sorted(unknown)}; choose from {list(FORMS)}")
    table: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="cmunext-precision-") as tmp:
        calib = [preprocess(read_image(find_file(data_dir / "images", s)), size, channels)[None]
                 for s in calibration_stems] if "openvino/int8" in forms else []
        runners, graphs, unavailable = open_forms(fp32_graph, forms, settings, threads, calib, Path(tmp))
        table.update({form: {"available": False, "reason": why} for form, why in unavailable.items()})
        x = np.random.default_rng(1).standard_normal((1, channels, size, size)).astype(np.float32)
        ms = _interleaved_medians(runners, x, runs)
        reference = runners.get("onnxruntime/fp32") or open_runtime(fp32_graph, "onnxruntime", "fp32", settings, threads)
        reference_iou, reference_masks = _form_iou(reference, data_dir, test_stems, size, channels, threshold)
        for form, run in runners.items():
            iou, masks = ((reference_iou, reference_masks) if form == "onnxruntime/fp32" else
                          _form_iou(run, data_dir, test_stems, size, channels, threshold))
            changed = sum(int((a != b).sum()) for a, b in zip(masks, reference_masks))
            table[form] = {"available": True, "ms_b1": round(ms[form], 2), "test_iou": round(iou, 4),
                           "iou_drop_points": round(100 * (reference_iou - iou), 2),
                           "mask_pixels_changed": round(changed / sum(m.size for m in reference_masks), 6)}
        choice, fallback = decide(table, max_iou_drop)
        if choice == "openvino/int8":
            staged = folder / (info["file"] + ".tmp")
            staged.write_bytes(graphs[choice].read_bytes())
            os.replace(staged, fp32_graph)  # the file keeps its name; export.json says what it now holds
    decision = {"chosen": choice, "max_iou_drop_points": round(100 * max_iou_drop, 2), "fp32_test_iou":
                round(reference_iou, 4), "test_images": len(test_stems), "calibration_images": len(calibration_stems),
                "threads": threads, "forms": table}
    record_form(folder, choice, fallback, decision)
    log.info("precision: ships %s (%.1f ms at batch 1; test IoU %.4f vs fp32 %.4f)", choice,
             table[choice]["ms_b1"], table[choice]["test_iou"], reference_iou)
    return decision
