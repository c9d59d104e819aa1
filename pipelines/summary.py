"""What a finished local run decided, read back from its artifacts as a cluster's UI would: the metrics, the
gate's decision, infra-validation's verdict and the promotion, and one outcome that names the decision."""
from __future__ import annotations

import json
from pathlib import Path

from cmunext.config import RunConfig
from cmunext.contracts import Evaluation, GateDecision, InfraValidation, Promotion


def latest_run_dir(outputs: Path) -> Path | None:
    runs = sorted(outputs.glob("cmunext-training-*"), key=lambda p: p.stat().st_mtime)
    return runs[-1] if runs else None


def cached_outputs(cache_root: Path, steps: list[dict]) -> dict[str, dict[str, Path]]:
    """{step: {output: file}} for the steps this run took from the cache: kfp.local leaves their outputs
    where the run that made them wrote them, named in the cache entry its log line gives the key of."""
    found: dict[str, dict[str, Path]] = {}
    for step in (s for s in steps if s.get("cache_key")):
        entry = next(cache_root.glob(f"{step['cache_key']}*.json"), None)
        outputs = json.loads(entry.read_text()) if entry else {}
        found[step["step"]] = {name: Path(value["uri"]) for name, value in outputs.items()
                               if isinstance(value, dict) and "uri" in value}
    return found


def _read(run_dir: Path | None, step: str, output: str, contract, cached: dict[str, dict[str, Path]]):
    """A step's output: from this run's folder, or where the cache entry it was taken from points."""
    found = next(run_dir.glob(f"{step}*/{output}"), None) if run_dir else None
    found = found or cached.get(step, {}).get(output)
    return contract.model_validate_json(found.read_text()) if found and found.exists() else None


def outcome(check: str | None, decision: GateDecision | None, infra: InfraValidation | None,
            promotion: Promotion | None, moved: bool) -> dict:
    """{kind, line, reasons}: promoted, candidate (the live gate is set), already_registered, rejected (gate or
    infra-validation), stale or skip.
    MOVED: whether the champion changed during the run (a promote step taken from the cache moved nothing)."""
    if check == "skip" or decision is None:
        return {"kind": "skip", "line": "nothing to do", "reasons": []}
    if decision.decision == "reject":
        return {"kind": "rejected", "line": "REJECTED by the gate", "reasons": decision.reasons}
    if infra is not None and not infra.passed:
        return {"kind": "rejected", "line": "REJECTED: its bento failed infra-validation", "reasons": infra.reasons}
    if promotion is None or promotion.event == "already_registered" or (promotion.event == "promoted" and not moved):
        return {"kind": "already_registered", "reasons": decision.reasons,
                "line": "passed, champion unchanged (this training run is already registered)"}
    if promotion.event == "candidate":
        return {"kind": "candidate", "reasons": decision.reasons,
                "line": f"CANDIDATE v{promotion.version}: passed; the live gate promotes it once shadowed (cmunext "
                        f"serve --shadow {promotion.version}, then cmunext registry promote-shadowed {promotion.version})"}
    if promotion.event == "stale":
        return {"kind": "stale", "reasons": [promotion.reason],
                "line": f"not promoted: champion moved to v{promotion.champion} while this run was deciding; "
                        "re-run to decide against it"}
    return {"kind": "promoted", "line": "PROMOTED", "reasons": decision.reasons}


def summarize(cfg: RunConfig, data_md5: str, before: dict | None, after: dict | None, seconds: float,
              root: Path, store: str, steps: list[dict]) -> dict:
    """ROOT: the kfp folder (outputs/ and cache/); STEPS: the run's step lines, cached ones with their key."""
    run_dir, cached = latest_run_dir(root / "outputs"), cached_outputs(root / "cache", steps)
    report = next(run_dir.glob("check-changes*/report"), None) if run_dir else None
    check = report.read_text().splitlines()[0].removeprefix("# Retrain check: ") if report else None
    evaluation = _read(run_dir, "evaluate-model", "evaluation", Evaluation, cached)
    decision = _read(run_dir, "gate-model", "decision", GateDecision, cached)
    infra = _read(run_dir, "infra-validate-model", "validation", InfraValidation, cached)
    promotion = _read(run_dir, "promote-model", "promotion", Promotion, cached)
    moved = bool(after) and (not before or after["version"] != before["version"])
    return {
        "config": cfg.name, "data_revision": cfg.data.revision, "data_md5": data_md5,
        "seconds": round(seconds, 1), "retrain_check": check,
        "outcome": outcome(check, decision, infra, promotion, moved),
        "promoted": moved and bool(promotion) and promotion.event == "promoted",
        "champion_before": before and before["version"], "champion_after": after and after["version"],
        "metrics": evaluation and {k: v.to_dict() for k, v in evaluation.metrics.items()
                                   if k in ("iou", "dice", "pooled_iou", "hd95")},
        "latency": evaluation and evaluation.latency.to_dict(), "gate": decision and decision.to_dict(),
        "infra_validation": infra and infra.model_dump(include={"passed", "summary", "reasons", "latency_ms", "ready_s"}),
        "promotion": promotion and promotion.to_dict(),
        "breakdown": evaluation and evaluation.breakdown,
        "cross_validation": evaluation and evaluation.cross_validation,
        "lesion_rule": evaluation and evaluation.lesion_rule,
        "mlflow_tracking_uri": store, "outputs": str(run_dir) if run_dir else None,
        "mlflow_ui": (f"open {store}" if store.startswith(("http://", "https://"))
                      else f"mlflow ui --backend-store-uri {store} --port 5000"),
    }
