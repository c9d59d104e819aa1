"""Run the benchmarks, render their results as a table and draw their plots into docs/results/ (`make bench`).

Quick (default, a few minutes on 2 CPU cores): inference for CMUNeXt-S and CMUNeXt at batch 1 and 8,
training throughput for CMUNeXt-S, serving for CMUNeXt-S, data scale at 500 images.
--full: every variant, the demo pipeline per step, BUSI through the pipeline (where ../shared/datasets/busi
is), data scale at 500 / 5,000 / 20,000 images (about
an hour). --busi WEIGHTS DATA SPLITS adds every serving form of a BUSI-trained model
scored on its test split (benchmarks/precision_forms.py). Results go to benchmarks/out/ (JSON per benchmark, results.md); nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"


def runs(full: bool, busi: list[str] | None = None) -> list[tuple[str, list[str]]]:
    py, cli = [sys.executable], [sys.executable, "-m", "cmunext", "-q"]
    variants = ["cmunext_s", "cmunext", "cmunext_l"] if full else ["cmunext_s", "cmunext"]
    out = []
    for v in variants:
        for b in (1, 8):
            n = "6" if v == "cmunext_l" else "10"
            out.append((f"inference_{v}_b{b}", cli + ["bench", "inference", "--variant", v, "--batch", str(b), "--runs", n,
                                                       "--json", str(OUT / f"inference_{v}_b{b}.json")]))
    out.append(("training", py + [str(HERE / "training_throughput.py"), "--steps", "3" if full else "2",
                                  "--variants", ",".join(variants if full else ["cmunext_s"]),
                                  "--json", str(OUT / "training.json")]))
    out.append(("serving", cli + ["bench", "serving", "--variant", "cmunext_s", "--per-client", "20" if full else "10",
                                  "--json", str(OUT / "serving.json")]))
    if full:
        out.append(("pipeline", py + [str(HERE / "pipeline_steps.py"), "--json", str(OUT / "pipeline.json")]))
    if full and (HERE.parents[1] / "shared" / "datasets" / "busi").is_dir():  # BUSI through the pipeline, 15 min
        out.append(("busi", py + [str(HERE / "busi.py"), "--json", str(OUT / "busi.json")]))
    if busi:
        out.append(("precision_forms", py + [str(HERE / "precision_forms.py"), "--weights", busi[0], "--data", busi[1],
                                             "--splits", busi[2], "--json", str(OUT / "precision_forms.json")]))
    sizes = ["500", "5000", "20000"] if full else ["500"]
    out.append(("scale", py + [str(HERE / "data_scale.py"), "--sizes", *sizes, "--json", str(OUT / "scale.json")]))
    return out


def _load(name: str):
    path = OUT / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def machine() -> str:
    import os

    import onnxruntime
    import openvino
    import torch

    from cmunext.serving.bench_inference import cpu_name
    return (f"{cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}, "
            f"onnxruntime {onnxruntime.__version__}, openvino {openvino.__version__.split('-')[0]}")


def render() -> str:
    rows = ["| benchmark | baseline (same run) | ours | ratio |", "|---|---|---|---|"]
    for v in ("cmunext_s", "cmunext", "cmunext_l"):
        for b in (1, 8):
            r = _load(f"inference_{v}_b{b}")
            if r:
                forms = ", ".join(f"{f} {ms:.1f}" for f, ms in r.get("forms_ms", {}).items())
                rows.append(f"| inference {v}, batch {b}, 256² | eager PyTorch {r['eager_ms']:.1f} ms | "
                            f"{r.get('runtime', 'onnxruntime')}/{r.get('precision', 'fp32')} {r['served_ms']:.1f} ms "
                            f"({r['served_images_per_s']:.1f} img/s; every form, ms: {forms}); "
                            f"floor {r['floor_ms']:.1f} ms at {r['matmul_gflops']:.0f} GFLOP/s, max \\|Δp\\| "
                            f"{r['max_abs_diff']:.0e} | {r['speedup']:.2f}× eager, {r['served_vs_floor']:.2f}× floor |")
    pf = _load("precision_forms")
    if pf:
        for form, row in pf["forms"].items():
            what = (f"{row['ms_b1']:.1f} ms, test IoU {row['test_iou']:.4f} ({row['iou_drop_points']:+.2f} points "
                    f"drop), {100 * row['mask_pixels_changed']:.2f}% of mask pixels changed"
                    if row["available"] else "unavailable")
            verdict = "shipped" if form == pf["chosen"] else row["reason"]
            rows.append(f"| {pf['variant']} on BUSI ({pf['image_size']}², {pf['test_images']} test images), {form} | "
                        f"ONNX Runtime fp32, test IoU {pf['fp32_test_iou']:.4f} | {what} | {verdict} |")
    t = _load("training")
    if t:
        for v, r in t["variants"].items():
            rows.append(f"| training {v}, 256², batch 8 ({t['images']}) | PNG-decoding loop "
                        f"{r['baseline_png']['images_per_s']:.2f} img/s, data {100 * r['baseline_png']['data_share']:.1f}% "
                        f"({r['baseline_png']['data_ms_per_batch']:.0f} ms/batch) | shards {r['shards']['images_per_s']:.2f} "
                        f"img/s, data {100 * r['shards']['data_share']:.1f}% ({r['shards']['data_ms_per_batch']:.0f} "
                        f"ms/batch) | {r['speedup']:.2f}× |")
    s = _load("serving")
    if s:
        for c, h in s["http"].items():
            base = s["in_process"]["pipeline_b1" if c == "c1" else "pipeline_b8"]
            rows.append(f"| serving {s['model']} 256² ({s.get('served_form', 'onnxruntime/fp32')}, server on "
                        f"{len(s.get('server_cpus', []))} core(s), client on {len(s.get('client_cpus', []))}), HTTP "
                        f"concurrency {c[1:]} | in-process "
                        f"{base['images_per_s']:.1f} img/s | {h['rps']:.1f} req/s, p50 {h['p50_ms']:.0f} / p95 "
                        f"{h['p95_ms']:.0f} / p99 {h['p99_ms']:.0f} ms, {h['errors']} errors | "
                        f"{s['ratios'][f'http_{c}_vs_in_process']:.2f}× |")
        rows.extend(_shadow_rows(s))
    p = _load("pipeline")
    if p:
        steps = ", ".join(f"{k} {v:.0f}" for k, v in p["steps_s"].items())
        validation = f" (validation {p['train_validation_s']:.0f} s of it)" if "train_validation_s" in p else ""
        cached = (f"; fully cached re-run {p['cached_rerun_s']:.0f} s" if "cached_rerun_s" in p else "")
        rows.append(f"| demo pipeline ({p['config']}) | first run {p['first_run_s']:.0f} s: {steps} s | "
                    f"train compute {p['train_compute_s']:.0f} s{validation} + evaluate {p['evaluate_s']:.0f} s; overhead "
                    f"{p['overhead_s']:.0f} s ({100 * p['overhead_share']:.0f}%); re-run after promotion "
                    f"{p['rerun_after_promotion_s']:.0f} s{cached} | "
                    f"{p['rerun_after_promotion_s'] / p['first_run_s']:.2f}× |")
    sc = _load("scale")
    if sc:
        for r in sc:
            rows.append(f"| validate + split + preprocess, {r['dataset']} | | {r['validate_s']:.1f} + "
                        f"{r['split_preprocess_s']:.1f} s ({r['ms_per_image']:.1f} ms/image), peak RSS "
                        f"{r['peak_rss_mib']:.0f} MiB | |")
    return "\n".join(rows)


def _shadow_rows(s: dict) -> list[str]:
    """The champion's latency while it shadows a candidate on the client's core, against shadowing off."""
    on = s.get("shadow_on")
    if not on:
        return []
    copies = ", ".join(f"{n} {k}" for k, n in sorted(on["copies"].items()))
    return [f"| serving, shadowing on (candidate on the client's core), HTTP concurrency {c[1:]} | shadowing off: p50 "
            f"{s['http'][c]['p50_ms']:.0f} / p95 {s['http'][c]['p95_ms']:.0f} ms, {s['http'][c]['rps']:.1f} req/s | "
            f"p50 {h['p50_ms']:.0f} / p95 {h['p95_ms']:.0f} ms, {h['rps']:.1f} req/s, {h['errors']} errors; copies: "
            f"{copies} | p95 {on['p95_on_vs_off'][c]:.2f}× |" for c, h in on["http"].items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--render-only", action="store_true", help="only re-render benchmarks/out/*.json")
    ap.add_argument("--busi", nargs=3, metavar=("WEIGHTS", "DATA", "SPLITS"),
                    help="a BUSI-trained model, its data folder and splits.json: every serving form on its test split")
    args = ap.parse_args()
    OUT.mkdir(exist_ok=True)
    if not args.render_only:
        for name, cmd in runs(args.full, args.busi):
            t0 = time.perf_counter()
            print(f"[{name}] {' '.join(cmd[1:])}", flush=True)
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            print(f"[{name}] {time.perf_counter() - t0:.0f} s", flush=True)
    table = f"Machine: {machine()}.\n\n{render()}\n"
    (OUT / "results.md").write_text(table)
    print(table)
    import plots  # beside this file; draws what the JSON files above hold
    plots.main(["--out", str(OUT)])


if __name__ == "__main__":
    main()
