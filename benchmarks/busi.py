"""BUSI through the whole pipeline (configs/busi.yaml) in a fresh private state folder: wall time per step,
test IoU and Dice with 95% CIs, all images and per class, and the training curves. Writes busi.json beside the
other benchmarks' results and copies the curves to docs/results/busi-training-curves.png (benchmarks/plots.py
draws the per-class figure). Needs ../shared/datasets/busi (or --data); about 15 minutes on 2 CPU cores.

    python benchmarks/busi.py [--config configs/busi.yaml] [--data DIR] [--json benchmarks/out/busi.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "busi"


def run_pipeline(config: str, data: Path, home: Path, summary: Path) -> float:
    env = {**os.environ, "CMUNEXT_HOME": str(home), "BENTOML_HOME": str(home / "bentoml"), "TQDM_DISABLE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cmunext", "pipeline", "run", "--config", config, "--json", str(summary),
                    "--set", f"data.source={data}"], cwd=ROOT, env=env, check=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/busi.yaml")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "out" / "busi.json")
    ap.add_argument("--curves", type=Path, default=ROOT / "docs" / "results" / "busi-training-curves.png")
    args = ap.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"no BUSI dataset at {args.data} (--data DIR): nothing measured")
    with tempfile.TemporaryDirectory(prefix="cmunext-bench-busi-") as tmp:
        summary_path = Path(tmp) / "summary.json"
        wall = run_pipeline(args.config, args.data.resolve(), Path(tmp), summary_path)
        s = json.loads(summary_path.read_text())
        curves = next(Path(s["outputs"]).glob("train-model/model/training_curves.png"), None)
        if curves:
            args.curves.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(curves, args.curves)
    from cmunext.serving.bench_inference import cpu_name
    result = {"config": args.config, "wall_s": round(wall, 1), "steps": s["steps"], "images": len_test(s),
              "metrics": s["metrics"], "breakdown": s["breakdown"], "latency": s["latency"],
              "outcome": s["outcome"]["kind"], "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": f"{cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}"}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("wall_s", "images", "outcome")}, indent=1))


def len_test(summary: dict) -> int:
    """The number of test images, from the per-class breakdown (every image is in exactly one class or none)."""
    b = summary["breakdown"]
    return b["lesion"]["images"] + b["normal"]["images"]


if __name__ == "__main__":
    main()
