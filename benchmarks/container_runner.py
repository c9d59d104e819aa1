"""The pipeline with every step in its container against the same pipeline in this environment: wall time per
step and in all, each in a fresh private state folder (the project's .cmunext is not touched), in one run so
the ratio holds on this machine. Also the image sizes. Needs the images (`make images`).

    python benchmarks/container_runner.py [--config configs/ci-tiny.yaml] [--json F]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline_steps import run  # noqa: E402  (the same per-step timing from kfp.local's log)


def runner_env(tmp: str, runner: str) -> dict:
    env = {**os.environ, "CMUNEXT_HOME": tmp, "TQDM_DISABLE": "1", "CMUNEXT_RUNNER": runner}
    env.pop("MLFLOW_TRACKING_URI", None)  # the container runner starts a private MLflow server over the store
    env.pop("BENTOML_HOME", None)
    return env


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/ci-tiny.yaml")
    ap.add_argument("--json")
    args = ap.parse_args()
    from cmunext.containers.engine import find_engine
    from cmunext.containers.images import image_names
    engine, names = find_engine(), image_names()
    result = {"config": args.config, "engine": engine.name,
              "images_mb": {i: round(engine.image_size(i) / 1e6) for i in (names.components, names.mlflow)
                            if engine.image_exists(i)}}
    for runner in ("subprocess", "container"):
        with tempfile.TemporaryDirectory(prefix=f"cmunext-bench-{runner}-") as tmp:
            wall, steps, summary = run(args.config, runner_env(tmp, runner), Path(tmp) / "summary.json")
        result[runner] = {"wall_s": round(wall, 1), "steps_s": steps, "promoted": summary["promoted"]}
    result["container_vs_subprocess"] = round(result["container"]["wall_s"] / result["subprocess"]["wall_s"], 2)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
