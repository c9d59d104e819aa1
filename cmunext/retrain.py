"""Whether a retraining run has anything to do: it does when there is no champion, when the data digest
or the code differ from the champion's training run, when the champion is older than
`retrain.max_champion_age_days`, when the champion's latest drift check (`cmunext monitor drift`) found
drift, or when at least `monitoring.min_feedback` corrections came back from serving (`cmunext data feedback
import`; fewer, and nothing else changed in the data, wait for more). Used by `cmunext retrain --if-changed`
(cron on one machine) and by the pipeline's first step (every scheduled run on a cluster), so both decide the
same way.
"""
from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

from .config import RunConfig

log = logging.getLogger(__name__)

# The code a model depends on: the library, the components and the pipeline (not tests or docs).
CODE_PACKAGES = ("cmunext", "components", "pipelines")
CODE_TAG = "code_digest"


def code_digest(root: str | Path | None = None) -> str:
    """sha256 of the Python sources of CODE_PACKAGES (path and bytes), the same in a checkout, an
    installed wheel or the component image; git is not needed."""
    root = Path(root) if root else Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for package in CODE_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def measure_data(cfg: RunConfig, project_root: str | Path) -> str:
    """The md5 DVC records for the dataset folder at `data.revision` (or as it is on disk for
    "workspace"): for data/ at the committed version it equals data.dvc's md5."""
    from .data.versioning import dataset_md5, revision_md5
    if cfg.data.revision not in ("", "workspace"):
        from .data.source_repo import local_checkout
        with local_checkout(project_root) as root:
            return revision_md5(root, cfg.data.revision)
    from .prepare import resolve_source
    return dataset_md5(resolve_source(cfg, progress=False))["md5"]


def decide(cfg: RunConfig, data_md5: str, code: str | None = None, now: float | None = None) -> dict:
    """{"decision": "train" | "skip", "reasons": [...], "champion_version", "registry_state", "data_md5",
    "code_digest"}."""
    import mlflow

    from .tracking import mlflow_runs, registry

    mlflow_runs.setup()
    code = code or code_digest()
    now = time.time() if now is None else now
    champ = registry.champion(cfg.registry.model_name)
    last = (registry.history(cfg.registry.model_name) or [{}])[-1]
    reasons: list[str] = []
    waiting = None
    if champ is None:
        reasons.append(f"no champion for {cfg.registry.model_name} yet")
    else:
        tags = mlflow.MlflowClient().get_run(champ["run_id"]).data.tags
        data, waiting = _data_reasons(cfg, champ["version"], tags.get("data_md5", ""), data_md5)
        reasons += data
        if tags.get(CODE_TAG) != code:
            reasons.append(f"code changed: champion v{champ['version']} was trained with code "
                           f"{tags.get(CODE_TAG, 'unrecorded')}, this is {code}")
        age_days = (now - champ["created"] / 1000) / 86400
        if age_days > cfg.retrain.max_champion_age_days:
            reasons.append(f"champion v{champ['version']} is {age_days:.1f} days old "
                           f"(retrain.max_champion_age_days = {cfg.retrain.max_champion_age_days:g})")
        reasons += _drift_reasons(cfg.registry.model_name, champ["version"])
    decision = {"decision": "train" if reasons else "skip",
                "reasons": reasons or [waiting or f"nothing to do: champion v{champ['version']} was trained on "
                                       f"this data ({data_md5[:12]}) with this code ({code}) and is younger than "
                                       f"{cfg.retrain.max_champion_age_days:g} days"],
                "champion_version": champ["version"] if champ else "none",
                # the registry's last event: keys infra-validation's cache, so a re-run after a rejection boots again
                "registry_state": " ".join(str(last.get(k) or "-") for k in ("at", "event", "version", "run_id")),
                "data_md5": data_md5, "code_digest": code,
                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))}
    log.info("retrain check: %s (%s)", decision["decision"], "; ".join(decision["reasons"]))
    return decision


def _data_reasons(cfg: RunConfig, version: str, trained_on: str, data_md5: str) -> tuple[list[str], str | None]:
    """(reasons, waiting): a data change is a reason, unless it is only corrections imported from serving feedback
    and fewer than monitoring.min_feedback of them; then `waiting` says how many more it takes."""
    from .monitoring.history import corrections_between
    if trained_on == data_md5:
        return [], None
    need = cfg.monitoring.min_feedback
    corrections = corrections_between(cfg.registry.model_name, trained_on, data_md5)
    if corrections is None:
        return [f"data changed: champion v{version} was trained on {trained_on[:12] or '?'}, the data is now "
                f"{data_md5[:12]}"], None
    if corrections >= need:
        return [f"feedback: {corrections} corrections imported since champion v{version} was trained "
                f"(monitoring.min_feedback = {need})"], None
    return [], (f"nothing to do yet: {corrections} of {need} corrections imported since champion v{version} was "
                f"trained (monitoring.min_feedback); the data changed by nothing else")


def _drift_reasons(model_name: str, version: str) -> list[str]:
    from .monitoring.history import latest_verdict
    latest = latest_verdict(model_name, version)
    if not latest or latest["verdict"] != "drift":
        return []
    at = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(latest["time"] / 1000))
    return [f"drift: the latest check of champion v{version} ({at}, MLflow run {latest['run_id']}) found the "
            "served scans drifted from its training data"]


def record(cfg: RunConfig, decision: dict, source: str) -> str:
    """One small MLflow run per check, in the model's experiment, so "nothing to do" is on record
    where users look. Returns its run id."""
    import mlflow

    from .tracking import mlflow_runs

    experiment_id = mlflow_runs.setup()
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"retrain-check-{decision['decision']}") as run:
        mlflow.set_tags({"cmunext.kind": "retrain_check", "retrain_decision": decision["decision"],
                         "retrain_source": source, "champion_version": decision["champion_version"],
                         "data_md5": decision["data_md5"], CODE_TAG: decision["code_digest"]})
        mlflow.log_dict(decision, "retrain_check.json")
        return run.info.run_id
