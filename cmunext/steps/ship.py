"""The package and infra-validate steps: the bento built once per artifact and form, then booted as deployed."""
from __future__ import annotations

import json
from pathlib import Path

from ..config import RunConfig
from ..contracts import Evaluation, InfraValidation, PackageResult


def package(cfg: RunConfig, weights: str | Path, version: str, run_id: str, data_revision: str,
            evaluation: Evaluation | dict, out_dir: str | Path, exported: str | Path) -> PackageResult:
    """Bento for a registered version, from EXPORTED: the serving artifact the evaluate step measured (its
    declared output), shipped as it is, so the gate's latency is the served one's. The .bento archive goes to
    OUT_DIR (the step's output artifact) and to the bento store (registry.bento_store), whose URI and sha256
    are recorded on the version with the bento's tag."""
    from cmunext_serving.engines import serving_record
    from cmunext_serving.fingerprint import sha256_file

    from ..serving import store
    from ..serving.package import package_model
    from ..tracking import registry

    ev = Evaluation.model_validate(evaluation)
    store.use(cfg.registry.bento_store)
    name = cfg.registry.model_name
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    archive = out_dir / "bento.bento"
    tags = registry.version_tags(name, str(version))
    artifact = json.loads((Path(exported) / "export.json").read_text())
    record = serving_record(artifact)
    form = f"{record['runtime']}/{record['precision']}"
    rule = ev.rule(cfg.eval.threshold)
    if (tags.get("bento_uri") and tags.get("artifact_sha256") == artifact["sha256"]
            and tags.get("serving_form") == form and tags.get("lesion_rule") == json.dumps(rule.as_dict())
            and tags.get("tta", "none") == cfg.eval.tta):  # a re-run of this version with the same artifact and form:
        if not (archive.exists() and sha256_file(archive) == tags["bento_sha256"]):  # the stored bento is it
            store.download(tags["bento_uri"], tags["bento_sha256"], archive)
        return PackageResult.model_validate({
            "bento_tag": tags["bento_tag"], "archive": str(archive), "bento_uri": tags["bento_uri"],
            "bento_sha256": tags["bento_sha256"], "sha256": artifact["sha256"], "format": artifact["format"],
            "runtime": record["runtime"], "precision": record["precision"], "fallback": record["fallback"],
            "reused": True})
    metrics = {k: v.value for k, v in ev.metrics.items()}
    metrics["latency_p95_ms"] = ev.latency.p95_ms
    built = package_model(weights, model_name=name, model_version=str(version), run_id=run_id,
                          data_revision=data_revision, metrics=metrics, exported=exported, export_to=str(archive),
                          rule=rule, tta=cfg.eval.tta)
    uri = store.archive_uri(store.root(cfg.registry.bento_store), name, version, built["bento_tag"])
    digest = store.put(archive, uri)
    registry.tag_version(name, str(version), {"bento_tag": built["bento_tag"], "bento_uri": uri,
                                              "bento_sha256": digest, "bento_archive": str(archive),
                                              "artifact_sha256": built["sha256"],
                                              "serving_form": f"{built['runtime']}/{built['precision']}",
                                              "lesion_rule": json.dumps(rule.as_dict()), "tta": cfg.eval.tta,
                                              "ensemble": str(artifact.get("members", 1))})
    result = PackageResult.model_validate({**built, "archive": str(archive), "bento_uri": uri, "bento_sha256": digest})
    (out_dir / "bento.json").write_text(result.model_dump_json(indent=1))
    return result



def infra_validate(cfg: RunConfig, version: str, run_id: str, archive: str | Path, artifact: str | Path,
                   data_dir: str | Path, evaluation: Evaluation | dict, out_dir: str | Path) -> InfraValidation:
    """Boot the bento as deployed and check it before `champion` can move (cmunext/infra_validation.py). A
    failure is a rejection (TFX's "not blessed"), recorded with its reasons on the run, the version and the
    registry's history; the step itself succeeds, so the pipeline reports a decision, not a crash."""
    from ..infra_validation import validate_bento
    from ..serving import store
    from ..tracking import mlflow_runs, registry

    store.use(cfg.registry.bento_store)
    ev = Evaluation.model_validate(evaluation)
    stems = [r["stem"] for r in ev.per_image]
    result = InfraValidation.model_validate(validate_bento(archive, artifact, data_dir, stems, cfg.gate.max_latency_ms,
                                                           out_dir, ev.rule(cfg.eval.threshold)))
    name = cfg.registry.model_name
    registry.tag_version(name, str(version), {"infra_validation": "passed" if result.passed else "failed",
                                              "infra_validation_reasons": json.dumps(result.reasons)})
    mlflow_runs.log_json(run_id, result.to_dict(), "infra_validation/result.json")
    if not result.passed:  # a rejection, as the gate's: recorded, and the champion stays
        reasons = [f"infra-validation: {r}" for r in result.reasons]
        mlflow_runs.set_tags(run_id, {"gate_decision": "reject", "gate_reasons": reasons})
        registry.record_rejection(name, run_id, reasons)
    return result
