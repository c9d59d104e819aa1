"""Run the pipeline on this machine with kfp.local (caching on), each step in this environment or in the
component image (pipelines/runners.py), or compile it.

All state goes under the state folder: kfp outputs and cache, the MLflow store, bentos.
"""
from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path

from cmunext.config import RunConfig, config_to_dict, load_config
from cmunext.paths import state_dir
from cmunext.steps import StepFailed

log = logging.getLogger(__name__)
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def pipeline_arguments(cfg: RunConfig, data_md5: str = "", if_changed: bool = False,
                       project_root: str | Path = PROJECT_ROOT) -> dict:
    """The run's parameters. `data_md5` may be left empty: the first step then measures the data."""
    return {
        "base_config": json.dumps(config_to_dict(cfg), sort_keys=True),
        "data_revision": cfg.data.revision, "data_md5": data_md5, "project_root": str(project_root),
        "if_changed": if_changed,
        "variant": cfg.model.variant, "image_size": cfg.data.image_size, "epochs": cfg.train.epochs,
        "batch_size": cfg.train.batch_size, "lr": cfg.train.lr, "seed": cfg.train.seed,
        "min_iou": cfg.gate.min_iou, "max_latency_ms": cfg.gate.max_latency_ms,
    }


def measure_data(cfg: RunConfig) -> str:
    from cmunext.retrain import measure_data as measure
    return measure(cfg, PROJECT_ROOT)


def run_pipeline(config: str | Path | None, overrides: list[str] | None = None, caching: bool = True,
                 if_changed: bool = False, verbose: bool = False, runner: str = "subprocess",
                 isolated: bool = False) -> dict:
    """Run the whole pipeline; returns a summary (decision, metrics, registry state, where things are).
    With `if_changed` it trains only when the data, the code or the champion's age call for it. The screen
    shows a line per step and the epochs; kfp.local's full output goes to `pipeline.log` in the run's folder
    (and to the screen too with `verbose`). RUNNER: "subprocess" (this environment) or "container" (every
    step in the component image; with ISOLATED, each container keeps its state to itself, as pods do)."""
    from contextlib import ExitStack

    cfg = load_config(config, overrides)
    source = Path(cfg.data.source).expanduser()
    if runner == "container" and cfg.data.source != "synth" and source.is_dir():
        cfg.data.source = str(source.resolve())  # the tasks see it at the same absolute path (read-only)
    from cmunext.serving import store
    store.use(cfg.registry.bento_store)
    with ExitStack() as stack:  # the runner's services (the engine's API, a local MLflow server) end with the run
        return _run(cfg, caching, if_changed, verbose, runner, stack, isolated)


def _run(cfg: RunConfig, caching: bool, if_changed: bool, verbose: bool, runner: str, stack,
         isolated: bool = False) -> dict:
    from kfp import local

    from cmunext.tracking import mlflow_runs, registry
    from pipelines.progress import captured
    from pipelines.runners import kfp_runner
    from pipelines.summary import summarize
    from pipelines.training import training_pipeline

    if os.environ.get("MLFLOW_TRACKING_URI"):  # a server: refused credentials or permissions stop the run here,
        from cmunext.tracking import access     # before anything is written
        access.require_pipeline(os.environ["MLFLOW_TRACKING_URI"], mlflow_runs.EXPERIMENT, cfg.registry.model_name)
    os.environ["CMUNEXT_HOME"] = str(state_dir())
    os.environ.setdefault("TQDM_DISABLE", "1")  # step logs are captured line by line
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # nothing leaves the machine; no thread per step
    started = time.time()
    source = Path(cfg.data.source)
    root = state_dir() / "kfp"
    store = mlflow_runs.tracking_uri()  # the container runner may serve this store for the run's length only
    kfp_run = stack.enter_context(kfp_runner(runner, state_dir(), root / "outputs", PROJECT_ROOT,
                                             [source] if source.is_absolute() and source.is_dir() else [],
                                             isolated=isolated))
    os.environ.setdefault("MLFLOW_TRACKING_URI", mlflow_runs.tracking_uri())
    data_md5 = measure_data(cfg)
    before = registry.champion(cfg.registry.model_name)
    local.init(runner=kfp_run, pipeline_root=str(root / "outputs"),
               enable_caching=caching, cache_root=str(root / "cache"))
    args = pipeline_arguments(cfg, data_md5, if_changed)
    pending = root / "logs" / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    print(f"pipeline run '{cfg.name}': one line per step"
          + (f", each in {os.environ.get('CMUNEXT_COMPONENT_IMAGE') or _component_image()}" if runner == "container" else "")
          + "; the full log goes to the run's folder" + (" (and here)" if verbose else ""), flush=True)
    try:
        with captured(pending, verbose) as progress:
            training_pipeline(**args)
    except RuntimeError as exc:  # kfp.local: a task failed; its reason is printed above
        after = registry.champion(cfg.registry.model_name)
        log_file = _keep_log(pending, root / "outputs")
        raise StepFailed(f"{_plain(str(exc))} (its reason is above; full log: {log_file}). Champion "
                         f"{'unchanged' if _same(before, after) else 'changed'}: "
                         f"{(after or {}).get('version', 'none')}") from None
    after = registry.champion(cfg.registry.model_name)
    summary = summarize(cfg, data_md5, before, after, time.time() - started, root, store, progress.steps)
    summary["log"] = str(_keep_log(pending, root / "outputs"))
    summary["steps"] = progress.steps
    summary["runner"] = runner
    return summary


def _component_image() -> str:
    from cmunext.containers.images import component_image
    return component_image()


def _keep_log(pending: Path, outputs: Path) -> Path:
    """The run's log, moved into the run's folder (kfp.local names that folder only once the run starts)."""
    from pipelines.summary import latest_run_dir
    run_dir = latest_run_dir(outputs)
    if run_dir is None or not pending.exists():
        return pending
    return pending.replace(run_dir / "pipeline.log")


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _same(a: dict | None, b: dict | None) -> bool:
    return (a or {}).get("version") == (b or {}).get("version")


def compile_pipeline(out: str | Path, cfg: RunConfig | None = None) -> Path:
    """Compile to YAML; the config's `train` section sets the train step's resources and accelerators."""
    from kfp import compiler

    from pipelines.platform import TrainResources
    from pipelines.training import build_pipeline
    resources = TrainResources.from_config(cfg.train) if cfg else TrainResources()
    compiler.Compiler().compile(build_pipeline(resources), package_path=str(out))
    return Path(out)
