"""The gate, registration and promotion: decisions, each recorded; a stale promotion is refused, never forced."""
from __future__ import annotations

import json

from ..config import RunConfig
from ..contracts import Evaluation, GateDecision, InfraValidation, Promotion
from .common import StepFailed


def gate(cfg: RunConfig, evaluation: Evaluation | dict, run_id: str | None = None) -> GateDecision:
    from ..gate import decide
    from ..serving import store
    store.use(cfg.registry.bento_store)
    decision = decide(evaluation, cfg.gate)
    if run_id:
        from ..tracking import access, mlflow_runs, registry
        mlflow_runs.set_tags(run_id, {"gate_decision": decision.decision, "gate_reasons": decision.reasons,
                                      "gate_decided_by": access.actor()})
        if decision.decision == "reject":  # a promotion is recorded by the promote step, with its version
            registry.record_rejection(cfg.registry.model_name, run_id, decision.reasons)
    return decision


def register(cfg: RunConfig, decision: GateDecision | dict, evaluation: Evaluation | dict, run_id: str,
             model_uri: str, data_revision: str) -> str:
    """The MLflow version of a gated training run, registered once (a re-run finds it): the version the bento
    is built for. Registering moves no alias."""
    from ..tracking import registry

    decision, ev = GateDecision.model_validate(decision), Evaluation.model_validate(evaluation)
    if decision.decision != "promote":
        raise StepFailed("package called for a rejected model")
    name = cfg.registry.model_name
    tags = {"run_id": run_id, "data_revision": data_revision, "gate_decision": "promote",
            "gate_reasons": json.dumps(decision.reasons), "test_iou": f"{ev.iou:.4f}",
            "test_dice": f"{ev.metrics['dice'].value:.4f}", "latency_p95_ms": f"{ev.latency.p95_ms:.2f}",
            "variant": cfg.model.variant, "image_size": str(cfg.data.image_size)}
    existing = registry.version_for_run(name, run_id)
    if existing is not None:
        registry.tag_version(name, existing, tags)
        return existing
    return registry.register(model_uri, name, tags)


def promote(cfg: RunConfig, decision: GateDecision | dict, version: str, run_id: str,
            validation: InfraValidation | dict) -> Promotion:
    """Move `champion` to VERSION, against the champion the gate saw, once its bento served correctly. A champion
    that moved meanwhile is a refusal (event "stale", tagged on the version), not a failure: re-run to decide
    against it."""
    from ..serving import store
    from ..tracking import mlflow_runs, registry

    decision, validation = GateDecision.model_validate(decision), InfraValidation.model_validate(validation)
    store.use(cfg.registry.bento_store)
    if decision.decision != "promote" or not validation.passed:
        raise StepFailed("promote called for a model that was not gated and validated")
    name = cfg.registry.model_name
    champ = registry.champion(name)
    if (champ and champ["version"] == version) or "promoted_at" in registry.version_tags(name, version):
        return Promotion(event="already_registered", model=name, version=version, reason="same training run",
                         champion=champ and str(champ["version"]))
    reason = "gate passed: " + "; ".join(c.message for c in decision.checks) + f"; served by its bento: " \
             f"{validation.summary}"
    if cfg.gate.live:
        return _nominate(name, version, reason, run_id, champ)
    try:
        entry = registry.promote(name, version, reason=reason, expected_champion=decision.champion_version)
    except registry.StaleChampion as exc:
        reason = f"not promoted: {exc}; re-run the pipeline to decide against the new champion"
        registry.tag_version(name, version, {"gate_decision": "stale", "stale_reason": str(exc)})
        now = registry.champion(name)
        return Promotion(event="stale", model=name, version=version, reason=reason, champion=now and str(now["version"]))
    mlflow_runs.set_tags(run_id, {"registered_version": version})
    return Promotion(event="promoted", model=name, version=version, reason=entry["reason"], champion=version,
                     replaced=entry["replaced"])




def _nominate(name: str, version: str, reason: str, run_id: str, champ: dict | None) -> Promotion:
    """The live gate is set: VERSION becomes `candidate`; shadowed, it is promoted by `registry promote-shadowed`."""
    from ..tracking import mlflow_runs, registry
    if registry.version_tags(name, version).get("candidate_at"):
        return Promotion(event="already_registered", model=name, version=version, reason="already the candidate",
                         champion=champ and str(champ["version"]))
    registry.nominate(name, version, reason + "; waits for the live gate (gate.shadow_*)")
    mlflow_runs.set_tags(run_id, {"registered_version": version})
    return Promotion(event="candidate", model=name, version=version, reason=reason,
                     champion=champ and str(champ["version"]))
