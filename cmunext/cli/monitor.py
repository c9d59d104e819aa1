"""`cmunext monitor`: what the served model sees against its own reference (cmunext/monitoring/)."""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from .common import EXIT_OK, EXIT_RETRY, add_config_args, config, since_time

EXIT_DRIFT = 3  # the served window differs from the reference: an outcome (a retraining reason), not a failure


def drift(args) -> int:
    from ..monitoring import drift as tests
    from ..monitoring import history, records, reference

    cfg = config(args)
    name = args.model_name or cfg.registry.model_name
    version = _version(name, args.model)
    with tempfile.TemporaryDirectory(prefix="cmunext-reference-") as tmp:
        ref = reference.load(name, version["version"], version["run_id"], tmp)
    root = records.sink(cfg.monitoring.prediction_log)
    window = records.read(root, name, version["version"], args.since, args.last)
    for torn in window.torn:
        print(f"skipped a torn line (not a complete record): {torn}")
    n, need = len(window.records), cfg.monitoring.min_requests
    if n < need:
        print(f"too few requests to decide: {n} served by {name} v{version['version']} in {root}/{name} "
              f"(need {need}: monitoring.min_requests); no verdict")
        _write_json(args.json, {"drift": None, "requests": n, "needed": need, "model": name,
                                "version": version["version"], "features": {}})
        return EXIT_RETRY
    result = {**tests.detect(ref, window.records, cfg.monitoring.p_value), "model": name,
              "version": version["version"], "torn": window.torn, "log": f"{root}/{name}"}
    page = _report(args.report, result, ref, window.records, name, version["version"])
    result["mlflow_run"] = history.log_check(name, version["version"], result, page.parent if page else None)
    _publish(root, result)
    print(tests.verdict_line(result, name, version["version"]) + (f"\nreport: {page}" if page else ""))
    _write_json(args.json, result)
    return EXIT_DRIFT if result["drift"] else EXIT_OK


def _publish(root: str, result: dict) -> None:
    """The verdict beside the prediction log, where the server reads it for its cmunext_drift_detected gauge
    (cmunext_serving/drift_verdict.py). MLflow holds it already: a store that refuses the write is a warning."""
    from cmunext_serving.drift_verdict import verdict_record, verdict_uri
    from cmunext_serving.prediction_log import put
    uri = verdict_uri(root, result["model"])
    try:
        put(uri, json.dumps(verdict_record(result, time.time())).encode())
        result["published"] = uri
    except Exception as exc:  # noqa: BLE001 - botocore's and the file system's many errors: one warning
        print(f"warning: the verdict is in MLflow but could not be written to {uri} ({type(exc).__name__}: {exc}); "
              "the server's cmunext_drift_detected gauge keeps its last value")


def _version(name: str, model: str) -> dict:
    from ..tracking import registry
    if model == "champion":
        champ = registry.champion(name)
        if champ is None:
            raise registry.RegistryError(f"{name} has no champion yet: run the pipeline (make demo) first")
        return champ
    if not model.isdigit():
        raise registry.RegistryError(f"--model must be champion or a version number of {name}, got {model!r}")
    return registry.describe_version(name, model)


def _report(folder: str | None, result: dict, ref: dict, served: list[dict], name: str, version: str) -> Path | None:
    if not folder:
        return None
    from ..monitoring import report
    return report.write(folder, result, ref, served, f"{name} v{version}")


def _write_json(path: str | None, data: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(data, indent=1))


def register(sub) -> None:
    mon = sub.add_parser("monitor", help="what the served model sees: drift against its training data")
    msub = mon.add_subparsers(dest="monitor_command", required=True)
    p = msub.add_parser("drift", help="the served window against the model's reference: exit 0 no drift, "
                                      "3 drift, 75 too few requests to decide",
                        description="KS test per feature and an MMD test on the image content, against the "
                                    "reference the evaluate step logged with the model (thresholds: monitoring.*)")
    add_config_args(p)
    p.add_argument("--model", default="champion", help="champion (default) or a version number")
    p.add_argument("--model-name", help="registered model (default: registry.model_name of the config)")
    window = p.add_mutually_exclusive_group()
    window.add_argument("--since", type=since_time, help="requests since an ISO time or an age (24h, 7d)")
    window.add_argument("--last", type=int, help="the N newest requests")
    p.add_argument("--json", help="write the verdict and every test here")
    p.add_argument("--report", help="write a page with one plot per feature into this folder")
    p.set_defaults(func=drift)
