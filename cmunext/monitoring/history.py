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
