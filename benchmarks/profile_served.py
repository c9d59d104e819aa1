"""Where the served artifact's time goes: ONNX Runtime's per-node profile of one variant at one batch size,
by operator type, and the convolutions by kind with their GFLOP/s against this machine's matrix-product
rate (the compute floor's assumption). Random-init weights; same threads as serving.

    python benchmarks/profile_served.py [--variant cmunext] [--batch 1] [--runs 12]
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from cmunext.serving.bench import random_weights
from cmunext.serving.bench_inference import matmul_gflops
from cmunext.serving.export import export_serving_artifact
from cmunext_serving.runtime import session_options


def conv_kind(weight_shape: list[int]) -> str:
    _, per_group_in, kh, kw = weight_shape
    if kh == kw == 1:
        return "1x1"
    return f"depthwise {kh}x{kw}" if per_group_in == 1 else f"dense/grouped {kh}x{kw}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", default="cmunext")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--runs", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="cmunext-profile-") as tmp:
        weights = random_weights(args.variant, args.size, Path(tmp) / "w.safetensors")
        export = export_serving_artifact(weights, Path(tmp) / "export", runs=3, threads=args.threads)
        opts = session_options(export["session"], args.threads)
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "profile")
        sess = ort.InferenceSession(export["path"], opts, providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).standard_normal((args.batch, 3, args.size, args.size)).astype(np.float32)
        for _ in range(2 + args.runs):
            sess.run(None, {"input": x})
        events = json.loads(Path(sess.end_profiling()).read_text())
    gflops = matmul_gflops(args.threads)
    by_op, convs = collections.Counter(), collections.defaultdict(lambda: [0.0, 0])
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        op = e["args"]["op_name"]
        by_op[op] += e["dur"]
        if op == "Conv":
            shapes = [next(iter(s.values())) for s in e["args"]["input_type_shape"]]
            out = next(iter(e["args"]["output_type_shape"][0].values()))
            kind = conv_kind(shapes[1])
            convs[kind][0] += e["dur"]
            convs[kind][1] += math.prod(out) * math.prod(shapes[1][1:])
    total = sum(by_op.values())
    per_run = lambda us: us / (2 + args.runs) / 1000  # noqa: E731 (ms per run, warm-up included in both)
    print(f"{args.variant}, batch {args.batch}, {args.size}², {export['format']}, {args.threads} threads; "
          f"matrix product {gflops:.0f} GFLOP/s")
    print(f"{'operator':24s} {'ms/run':>8s} {'share':>6s}")
    for op, us in by_op.most_common():
        print(f"{op:24s} {per_run(us):8.2f} {100 * us / total:5.1f}%")
    print(f"\n{'convolutions':24s} {'ms/run':>8s} {'GMAC':>6s} {'GFLOP/s':>8s} {'of GEMM':>8s}")
    for kind, (us, macs) in sorted(convs.items(), key=lambda kv: -kv[1][0]):
        rate = 2 * macs / (us / 1e6) / 1e9
        print(f"{kind:24s} {per_run(us):8.2f} {macs / (2 + args.runs) / 1e9:6.2f} {rate:8.0f} {100 * rate / gflops:7.0f}%")


if __name__ == "__main__":
    main()
