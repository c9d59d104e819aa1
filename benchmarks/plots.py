"""Pictures of the benchmark results, drawn from the JSON files the benchmarks write (benchmarks/out/), into
docs/results/ where docs/results.md shows them. `make bench` calls this after measuring; on its own:

    python benchmarks/plots.py [--out benchmarks/out] [--to docs/results]

A picture whose JSON is missing is left as it is (a quick `make bench` measures less than `make bench-full`).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
VARIANTS = {"cmunext_s": "CMUNeXt-S", "cmunext": "CMUNeXt", "cmunext_l": "CMUNeXt-L"}
FORMS = ("onnxruntime/fp32", "openvino/fp32", "openvino/bf16", "openvino/int8")


def _load(folder: Path, name: str) -> dict | list | None:
    path = folder / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _save(fig, path: Path, caption: str) -> Path:
    fig.text(0.01, 0.005, caption, fontsize=7, color="0.35", ha="left", va="bottom")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def inference(folder: Path, to: Path, batch: int = 1) -> Path | None:
    """Milliseconds per batch for eager PyTorch and every serving form, per variant; the fp32 floor as a tick."""
    rows = {v: r for v in VARIANTS if (r := _load(folder, f"inference_{v}_b{batch}"))}
    if not rows:
        return None
    fig, axes = plt.subplots(1, len(rows), figsize=(3.6 * len(rows), 3.4), squeeze=False)
    for ax, (variant, r) in zip(axes[0], rows.items()):
        names = ["eager"] + [f for f in FORMS if f in r["forms_ms"]]
        ms = [r["eager_ms"]] + [r["forms_ms"][f] for f in names[1:]]
        colors = ["0.6"] + ["tab:blue" if f.endswith("fp32") else "tab:orange" for f in names[1:]]
        ax.bar(range(len(ms)), ms, color=colors)
        ax.axhline(r["floor_ms"], color="k", ls="--", lw=1, label=f"fp32 floor {r['floor_ms']:.0f} ms")
        ax.set_xticks(range(len(ms)), [n.replace("onnxruntime", "ORT").replace("openvino", "OV") for n in names],
                      rotation=35, ha="right", fontsize=8)
        ax.set_title(f"{VARIANTS[variant]}, batch {batch}", fontsize=10)
        ax.set_ylabel("ms per batch (lower is faster)")
        ax.legend(fontsize=7)
    cpu = next(iter(rows.values()))["cpu"]
    return _save(fig, to / f"inference-b{batch}.png",
                 f"cmunext bench inference --variant V --batch {batch}; {cpu}, random weights, 256²")


def serving(folder: Path, to: Path) -> Path | None:
    """HTTP throughput against the same model in process, at concurrency 1 and 8."""
    s = _load(folder, "serving")
    if not s:
        return None
    fig, ax = plt.subplots(figsize=(5.6, 3.2))
    shadowed = (s.get("shadow_on") or {}).get("http", {})
    labels, local, http, on = [], [], [], []
    for c, h in s["http"].items():
        labels.append(f"concurrency {c[1:]}")
        local.append(s["in_process"]["pipeline_b1" if c == "c1" else "pipeline_b8"]["images_per_s"])
        http.append(h["rps"])
        on.append(shadowed.get(c, {}).get("rps", 0))
    x, width = range(len(labels)), 0.27 if shadowed else 0.4
    ax.bar([i - width for i in x], local, width, label="in process (img/s)", color="0.6")
    ax.bar(list(x), http, width, label="HTTP (req/s)", color="tab:blue")
    if shadowed:
        ax.bar([i + width for i in x], on, width, label="HTTP, shadowing a candidate", color="tab:orange")
    for i, (a, b) in enumerate(zip(local, http)):
        ax.text(i, b, f"{b / a:.2f}×", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(x), labels)
    ax.set_ylabel("images per second")
    ax.set_title(f"{s['model']} served ({s.get('served_form', '')})", fontsize=10)
    ax.set_ylim(0, 1.3 * max(local + http))  # room for the legend above the bars
    ax.legend(fontsize=7, loc="upper center", ncol=3)
    return _save(fig, to / "serving.png", "cmunext bench serving --variant cmunext_s (server and client on their own cores)")


def pipeline(folder: Path, to: Path) -> Path | None:
    """The demo pipeline's first run, step by step; compute (training epochs, evaluation) apart from overhead.
    With pipeline_before.json beside it (the same benchmark on the previous code, in the same session), both."""
    runs = [(label, p) for label, name in (("before", "pipeline_before"), ("now", "pipeline"))
            if (p := _load(folder, name))]
    if not runs:
        return None
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.8 * len(runs)))
    for row, (label, p) in enumerate(runs):
        left = 0.0
        for step, sec in p["steps_s"].items():
            compute = p["train_compute_s"] if step == "train-model" else sec if step == "evaluate-model" else 0.0
            ax.barh(row, compute, left=left, color="tab:green")
            ax.barh(row, sec - compute, left=left + compute, color="tab:red", alpha=0.6)
            if sec > 4:
                ax.text(left + sec / 2, row, step.replace("-model", "").replace("-data", ""), ha="center",
                        va="center", fontsize=7, rotation=90 if sec < 12 else 0)
            left += sec
        ax.text(p["first_run_s"], row, f" {p['first_run_s']:.0f} s, overhead {100 * p['overhead_share']:.0f}%",
                va="center", fontsize=8)
    ax.set_yticks(range(len(runs)), [r[0] for r in runs])
    ax.set_xlabel("seconds (green: training and evaluation compute; red: everything else)")
    ax.set_xlim(0, max(p["first_run_s"] for _, p in runs) * 1.25)
    return _save(fig, to / "pipeline-steps.png", "python benchmarks/pipeline_steps.py (configs/demo.yaml, first run)")


def busi(folder: Path, to: Path) -> Path | None:
    """Test IoU with its 95% CI, all images and per class, from the BUSI pipeline run (benchmarks/busi.py)."""
    b = _load(folder, "busi")
    if not b:
        return None
    rows = [("all", b["metrics"]["iou"], b["images"])]
    rows += [(name, c["iou"], c["images"]) for name, c in b["breakdown"]["classes"].items()]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for i, (name, est, n) in enumerate(rows):
        ax.errorbar(i, est["value"], yerr=[[est["value"] - est["ci95_low"]], [est["ci95_high"] - est["value"]]],
                    fmt="o", capsize=6, color="tab:blue")
        ax.text(i + 0.08, est["value"], f"{est['value']:.3f}\n({n} images)", va="center", fontsize=8)
    ax.set_xticks(range(len(rows)), [r[0] for r in rows])
    ax.set_xlim(-0.5, len(rows) - 0.2)
    ax.set_ylabel("test IoU, 95% bootstrap CI")
    ax.set_title(f"BUSI held-out test split ({b['config']})", fontsize=10)
    return _save(fig, to / "busi-iou.png", f"python benchmarks/busi.py; {b.get('machine', '')}")


def main(argv: list[str] | None = None) -> list[Path]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "out", help="where the benchmarks' JSON files are")
    ap.add_argument("--to", type=Path, default=HERE.parent / "docs" / "results", help="where the pictures go")
    args = ap.parse_args(argv)
    made = [p for draw in (inference, serving, pipeline, busi) if (p := draw(args.out, args.to))]
    made += [p for b in (8,) if (p := inference(args.out, args.to, batch=b))]
    for p in made:
        print(f"wrote {p}")
    return made


if __name__ == "__main__":
    main()
