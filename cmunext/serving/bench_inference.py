"""Inference benchmark: eager PyTorch (the baseline) against the serving artifact, beside this machine's
compute floor, all measured in one process with the same threads.

The floor is 2 x MACs / (fp32 matrix-product GFLOP/s), the matrix-product rate measured here and now
with a large torch.mm: the time the convolutions would take if they all ran as fast as a GEMM does.
Random-init weights are enough for speed; probabilities are compared on random inputs.

Every serving form (serving/precision.py) is timed at the batch. `served_*` is the fastest of SERVE (by
default fp32 and bf16: int8 ships only after the evaluate step's IoU check on real test images, which random
weights cannot give; its time is in `forms_ms`), and `max_abs_diff` compares its probabilities with fp32 eager.

    cmunext bench inference --variant cmunext --batch 1 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path


def matmul_gflops(threads: int, n: int = 2048, runs: int = 7) -> float:
    """fp32 GFLOP/s of an n x n matrix product with THREADS threads (median of RUNS, after a warm-up)."""
    import torch
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            torch.mm(a, b)
            times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(saved)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def cpu_name() -> str:
    """The CPU model and its widest vector extensions (what the GEMM rate depends on)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                platform.machine())
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    simd = [label for flag, label in (("avx512f", "AVX-512"), ("avx512_vnni", "VNNI"), ("amx_tile", "AMX"),
                                      ("avx2", "AVX2")) if flag in flags]
    if "AVX-512" in simd and "AVX2" in simd:
        simd.remove("AVX2")
    return f"{name} ({', '.join(simd)})" if simd else name


SERVE = ("onnxruntime/fp32", "openvino/fp32", "openvino/bf16")


def bench_inference(variant: str = "cmunext", batch: int = 1, image_size: int = 256, *, runs: int = 20,
                    threads: int = 2, weights: str | Path | None = None, serve: tuple[str, ...] = SERVE) -> dict:
    import numpy as np
    import torch

    from cmunext_serving.runtime import sigmoid

    from ..engine.weights import load_weights
    from ..evaluation import count_macs
    from ..models import create_model
    from .bench import random_weights
    from .export import _interleaved_medians, export_serving_artifact
    from .precision import FORMS, open_forms

    with tempfile.TemporaryDirectory(prefix="cmunext-bench-inference-") as tmp:
        weights = Path(weights) if weights else random_weights(variant, image_size, Path(tmp) / "model.safetensors")
        gflops_before = matmul_gflops(threads)
        export = export_serving_artifact(weights, Path(tmp) / "export", batch=batch, runs=runs, threads=threads)
        rng = np.random.default_rng(5)
        calibration = [rng.standard_normal((1, export["in_channels"], image_size, image_size), dtype=np.float32)
                       for _ in range(8)]
        runners, _, unavailable = open_forms(Path(export["path"]), FORMS, export["session"], threads, calibration,
                                             Path(tmp))
        x = rng.standard_normal((batch, export["in_channels"], image_size, image_size), dtype=np.float32)
        forms_ms = _interleaved_medians(runners, x, runs)
        gflops_after = matmul_gflops(threads)
        served = min((f for f in forms_ms if f in serve), key=forms_ms.get)
        model, _ = load_weights(weights)
        with torch.inference_mode():
            eager = torch.sigmoid(model(torch.from_numpy(x)))[:, 0].numpy()
        max_abs_diff = float(np.abs(sigmoid(runners[served](x)[:, 0]) - eager).max())
    gflops = max(gflops_before, gflops_after)  # the machine's rate; a busy moment only lowers one of them
    macs = count_macs(create_model(export["variant"]), image_size, image_size)
    floor_ms = 2 * macs * batch / (gflops * 1e9) * 1000
    eager_ms = export["candidates"]["torch"]["ms"]
    served_ms = forms_ms[served]
    runtime, precision = served.split("/")
    return {
        "variant": export["variant"], "batch": batch, "image_size": image_size, "threads": threads,
        "eager_ms": round(eager_ms, 2), "served_ms": round(served_ms, 2), "served_format": export["format"],
        "runtime": runtime, "precision": precision,
        "speedup": round(eager_ms / served_ms, 3), "floor_ms": round(floor_ms, 2),
        "served_vs_floor": round(served_ms / floor_ms, 3), "max_abs_diff": max_abs_diff,
        "forms_ms": {f: round(v, 2) for f, v in forms_ms.items()}, "unavailable": unavailable,
        "eager_images_per_s": round(batch / eager_ms * 1000, 2), "served_images_per_s": round(batch / served_ms * 1000, 2),
        "gmacs_per_image": round(macs / 1e9, 3), "matmul_gflops": round(gflops, 1),
        "candidates_ms": {n: round(c["ms"], 2) for n, c in export["candidates"].items()},
        "cpu": cpu_name(), "cpu_count": os.cpu_count(), "onnxruntime": export["onnxruntime"], "torch": export["torch"],
        "openvino": _version("openvino"),
    }


def _version(dist: str) -> str | None:
    from importlib import metadata
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cmunext bench inference", description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="cmunext", choices=["cmunext_s", "cmunext", "cmunext_l"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--runs", type=int, default=20, help="timed runs per candidate (median)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--weights", help="a weights file instead of random-init VARIANT")
    parser.add_argument("--serve", default=",".join(SERVE),
                        help="the forms `served_*` may be (comma-separated, from: %(default)s,openvino/int8)")
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args(argv)
    result = bench_inference(args.variant, args.batch, args.size, runs=args.runs, threads=args.threads,
                             weights=args.weights, serve=tuple(args.serve.split(",")))
    text = json.dumps(result, indent=1)
    if args.json:
        Path(args.json).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
