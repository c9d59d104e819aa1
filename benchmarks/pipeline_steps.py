"""The demo pipeline's wall time per step, the overhead outside training and evaluation compute, and two
re-runs: right after the first promoted (evaluate, gate, promote and package run again, against the new
champion) and then fully cached. In a fresh private state folder (the project's .cmunext is not touched).

Per-step times come from kfp.local's log ("Executing task ..." / "Task ... finished"); the training
compute is the sum of the epochs' times and of their validation passes (train step's metrics.json); the
evaluation compute is the evaluate task's time. Overhead = the first run's wall time minus those two.

    python benchmarks/pipeline_steps.py [--config configs/demo.yaml] [--json F]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAMP = r"(\d\d:\d\d:\d\d\.\d+) - INFO - "
START = re.compile(STAMP + r"Executing task '?\x1b?\[?[0-9;]*m?'?([\w-]+)")
END = re.compile(STAMP + r"Task '?\x1b?\[?[0-9;]*m?'?([\w-]+).*finished with status")
PLAIN = re.compile(r"\x1b\[[0-9;]*m")


def step_times(log: str) -> dict[str, float]:
    started, seconds = {}, {}
    for line in PLAIN.sub("", log).splitlines():
        if m := START.search(line):
            started[m.group(2).strip("'")] = datetime.strptime(m.group(1), "%H:%M:%S.%f")
        elif (m := END.search(line)) and m.group(2).strip("'") in started:
            name = m.group(2).strip("'")
            seconds[name] = round((datetime.strptime(m.group(1), "%H:%M:%S.%f") - started[name]).total_seconds(), 1)
    return seconds


def run(config: str, env: dict, summary: Path) -> tuple[float, dict, dict]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "cmunext", "pipeline", "run", "--verbose", "--config", config, "--json",
                           str(summary)], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    return wall, step_times(proc.stdout + proc.stderr), json.loads(summary.read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--json")
    args = ap.parse_args()
    if not (ROOT / "data").is_dir() and "demo" in args.config:
        subprocess.run([sys.executable, "-m", "cmunext", "-q", "data", "synth", "--out", str(ROOT / "data"),
                        "--n", "160", "--seed", "0"], check=True)
    with tempfile.TemporaryDirectory(prefix="cmunext-bench-pipeline-") as tmp:
        env = {**os.environ, "CMUNEXT_HOME": tmp, "BENTOML_HOME": f"{tmp}/bentoml", "TQDM_DISABLE": "1"}
        env.pop("MLFLOW_TRACKING_URI", None)
        first_wall, first_steps, summary = run(args.config, env, Path(tmp) / "first.json")
        metrics = json.loads(next(Path(summary["outputs"]).glob("train-model/model/metrics.json")).read_text())
        # the second run re-decides evaluate/gate/promote against the champion the first one made
        second_wall, second_steps, _ = run(args.config, env, Path(tmp) / "second.json")
        cached_wall, cached_steps, _ = run(args.config, env, Path(tmp) / "cached.json")
    epochs = sum(e["epoch_seconds"] for e in metrics["history"])
    validation = sum(e.get("val_seconds", 0.0) for e in metrics["history"])  # per-epoch validation picks the best
    train_compute = epochs + validation
    eval_compute = first_steps.get("evaluate-model", 0.0)
    result = {
        "config": args.config, "first_run_s": round(first_wall, 1), "steps_s": first_steps,
        "train_compute_s": round(train_compute, 1), "train_epochs_s": round(epochs, 1),
        "train_validation_s": round(validation, 1), "evaluate_s": eval_compute,
        "overhead_s": round(first_wall - train_compute - eval_compute, 1),
        "overhead_share": round((first_wall - train_compute - eval_compute) / first_wall, 3),
        "rerun_after_promotion_s": round(second_wall, 1), "rerun_after_promotion_steps_s": second_steps,
        "cached_rerun_s": round(cached_wall, 1), "cached_steps_s": cached_steps,
        "cached_vs_first": round(cached_wall / first_wall, 3), "promoted": summary["promoted"],
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
