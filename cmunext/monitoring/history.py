"""Each drift check as an MLflow run in the experiment `<model>-monitoring`: the verdict and the model version as
tags, every test's statistic and p-value as metrics, the report as artifacts; `latest_verdict` reads the newest
one back (what `retrain --if-changed` asks)."""
from __future__ import annotations

from pathlib import Path

VERDICT_TAG, VERSION_TAG = "drift_verdict", "model_version"


def experiment(model: str) -> str:
    return f"{model}-monitoring"


def log_check(model: str, version: str, result: dict, report: Path | None) -> str:
    """The check as a finished run; returns its id."""
    import mlflow

    from ..tracking import mlflow_runs
    exp_id = mlflow_runs.setup(experiment(model))
    client = mlflow.MlflowClient()
    verdict = "drift" if result["drift"] else "no_drift"
    run = client.create_run(exp_id, run_name=f"drift v{version}",
                            tags={VERDICT_TAG: verdict, VERSION_TAG: str(version), "model": model,
                                  "requests": str(result["requests"])})
    metrics = {"requests": result["requests"], "drift": float(result["drift"]),
               "content_mmd": result["content"]["statistic"], "content_p_value": result["content"]["p_value"]}
    for name, test in result["features"].items():
        metrics.update({f"{name}_ks": test["statistic"], f"{name}_p_value": test["p_value"]})
    mlflow_runs.log_metrics(run.info.run_id, metrics, client=client)
    mlflow_runs.log_json(run.info.run_id, result, "drift.json")
    if report:
        client.log_artifacts(run.info.run_id, str(report), "report")
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def latest_verdict(model: str, version: str) -> dict | None:
    """{"verdict", "run_id", "time"} of VERSION's newest drift check, None when it has none."""
    import mlflow

    from ..tracking import mlflow_runs
    mlflow.set_tracking_uri(mlflow_runs.tracking_uri())
    found = mlflow.get_experiment_by_name(experiment(model))
    if found is None:
        return None
    runs = mlflow.MlflowClient().search_runs(
        [found.experiment_id],
        filter_string=f"tags.{VERSION_TAG} = '{version}'", order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        return None
    r = runs[0]
    return {"verdict": r.data.tags.get(VERDICT_TAG), "run_id": r.info.run_id, "time": r.info.start_time}


FEEDBACK_KIND = "feedback_import"


def log_feedback_import(model: str, before_md5: str, after_md5: str, stems: list[str], revision: str | None) -> str:
    """One `cmunext data feedback import` as a finished run: the data's digest before and after, and the stems it
    added. The chain of these runs tells `retrain --if-changed` that a data change is corrections alone."""
    import mlflow

    from ..tracking import mlflow_runs
    exp_id = mlflow_runs.setup(experiment(model))
    client = mlflow.MlflowClient()
    run = client.create_run(exp_id, run_name=f"feedback import: {len(stems)} corrections",
                            tags={"cmunext.kind": FEEDBACK_KIND, "model": model, "corrections": str(len(stems)),
                                  "data_md5_before": before_md5, "data_md5_after": after_md5,
                                  "data_revision": revision or "not versioned"})
    mlflow_runs.log_json(run.info.run_id, {"stems": stems}, "feedback_import.json")
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def corrections_between(model: str, trained_on: str, now: str) -> int | None:
    """How many corrections were imported between the data digests TRAINED_ON and NOW when feedback imports alone
    lead from one to the other; None when anything else changed the data (or nothing did)."""
    import mlflow

    from ..tracking import mlflow_runs
    mlflow.set_tracking_uri(mlflow_runs.tracking_uri())
    found = mlflow.get_experiment_by_name(experiment(model))
    if found is None or trained_on == now:
        return None
    runs = mlflow.MlflowClient().search_runs([found.experiment_id], f"tags.`cmunext.kind` = '{FEEDBACK_KIND}'",
                                             order_by=["attributes.start_time DESC"], max_results=1000)
    by_result: dict[str, dict] = {}
    for r in runs:
        by_result.setdefault(r.data.tags["data_md5_after"], r.data.tags)
    count, md5, seen = 0, now, set()
    while md5 != trained_on:
        step = by_result.get(md5)
        if step is None or md5 in seen:
            return None
        seen.add(md5)
        count, md5 = count + int(step["corrections"]), step["data_md5_before"]
    return count
