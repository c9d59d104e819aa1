"""The pipeline's steps as library functions. Each kfp component in `components/` parses its
inputs, calls one function here, and turns the result into kfp artifacts; tests call these
directly. A step that fails raises before it changes anything outside its own outputs."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from .config import RunConfig
from .contracts import Evaluation, GateDecision, InfraValidation, PackageResult
from .errors import CmunextError

log = logging.getLogger(__name__)


def _log_to_stderr() -> None:
    """Inside a kfp task nothing configures logging; the per-epoch lines are the step's progress."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                            datefmt="%H:%M:%S")


DUPLICATES_REPORT = "duplicates.json"  # beside images/ and masks/ in the dataset and preprocessed artifacts
SPLIT_ARTIFACT = "data/splits.json"  # in every training run's MLflow artifacts


class StepFailed(CmunextError):
    """A step refused to continue; the message says why (e.g. the data failed validation)."""


# ---- validate -------------------------------------------------------------------------------

def snapshot_data(cfg: RunConfig, revision: str, project_root: str | Path, dest: str | Path) -> dict:
    """Copy exactly the requested dataset version into `dest`; returns {revision, md5, files}, with
    the md5 DVC records for a folder (so a workspace snapshot of data/ matches data.dvc)."""
    from .data.versioning import dataset_md5
    from .prepare import resolve_source

    dest = Path(dest)
    if revision not in ("", "workspace"):
        from .data.source_repo import local_checkout
        from .data.versioning import materialize
        with local_checkout(project_root) as root:  # a path, or a git URL on a cluster
            return materialize(root, revision, dest)
    source = resolve_source(cfg, progress=False)
    shutil.rmtree(dest, ignore_errors=True)
    # symlinks are copied as links: the validator refuses those that lead outside the dataset
    shutil.copytree(source, dest, symlinks=True)
    digest = dataset_md5(dest)
    return {"revision": "workspace", "md5": digest["md5"], "files": digest["files"], "source": str(source)}


def validate(cfg: RunConfig, data_dir: str | Path, report_dir: str | Path) -> dict:
    from .data.validate import format_summary, validate_dataset

    d = cfg.data
    # the duplicates policy is carried out here, on the run's snapshot (never on the source folder)
    summary = validate_dataset(data_dir, report_dir, min_samples=d.min_samples, min_side=d.min_side,
                               max_side=d.max_side, allow_empty_masks=d.allow_empty_masks,
                               max_foreground=d.max_foreground, duplicates=d.duplicates, severity=d.severity,
                               apply_duplicates=True, progress=False)
    if not summary["success"]:
        raise StepFailed("data validation failed; the run stops before training:\n" + format_summary(summary))
    # what the duplicates policy did travels with the data, so the train step records it with the run
    shutil.copyfile(Path(report_dir) / "duplicates.json", Path(data_dir) / DUPLICATES_REPORT)
    return summary


# ---- preprocess -----------------------------------------------------------------------------

def frozen_split(cfg: RunConfig, data_dir: Path) -> tuple[dict | None, str]:
    """The split the data carries (data.split_file, else DIR/splits.json), and where it came from."""
    from .data.layout import list_pairs
    from .data.split import read_split_file

    if cfg.data.split_file:
        path = Path(cfg.data.split_file)
        path = path if path.is_absolute() else data_dir / path
        return read_split_file(path, list_pairs(data_dir), cfg.data.split_fold), f"data.split_file {cfg.data.split_file}"
    if (data_dir / "splits.json").is_file():
        return read_split_file(data_dir / "splits.json"), "splits.json of the dataset"
    return None, "made now (no splits.json in the dataset: `cmunext data split DIR` freezes one)"


def preprocess(cfg: RunConfig, data_dir: str | Path, out_dir: str | Path, data_revision: str) -> dict:
    from .data.duplicates import read_classes
    from .data.preprocess import preprocess as write_shards
    from .data.split import make_split, write_split

    data_dir = Path(data_dir)
    existing, source = frozen_split(cfg, data_dir)
    split = make_split(data_dir, cfg.data.split_ratios, cfg.data.split_seed, progress=False, existing=existing,
                       classes=read_classes(data_dir))
    split["info"]["source"] = source
    manifest = write_shards(data_dir, split, out_dir, cfg.data.image_size, cfg.model.in_channels,
                            data_revision=data_revision, progress=False)
    write_split(split, Path(out_dir) / "splits.json")
    if (data_dir / DUPLICATES_REPORT).is_file():
        shutil.copyfile(data_dir / DUPLICATES_REPORT, Path(out_dir) / DUPLICATES_REPORT)
    return {"split": split["info"], "stats": {k: v["stats"] for k, v in manifest["splits"].items()}}


# ---- train ----------------------------------------------------------------------------------

def train(cfg: RunConfig, data_dir: str | Path, out_dir: str | Path, data_revision: str, data_md5: str,
          pipeline_run: str = "") -> dict:
    """Train with MLflow tracking; returns {run_id, model_uri, weights, best_epoch, best_val_iou}."""
    from .engine.launch import train_any
    from .pictures import training_curves
    from .tracking import mlflow_runs

    _log_to_stderr()
    out_dir = Path(out_dir)
    from .retrain import CODE_TAG, code_digest
    # A retried step resumes from the checkpoints in out_dir; it also continues the MLflow run it started there,
    # so one run holds every epoch (not a second, partial run beside an orphan).
    marker = out_dir / "mlflow_run_id"
    run_id = mlflow_runs.existing_run(marker.read_text().strip()) if marker.is_file() else None
    if run_id is None:
        run_id = mlflow_runs.start(cfg, data_revision, data_md5,
                                   tags={"pipeline_run": pipeline_run, CODE_TAG: code_digest()})
        out_dir.mkdir(parents=True, exist_ok=True)
        marker.write_text(run_id + "\n")
    mlflow_runs.set_tags(run_id, {"status_detail": "training"})
    _record_duplicates(run_id, Path(data_dir) / DUPLICATES_REPORT)
    _record_split(run_id, Path(data_dir) / "splits.json")
    # one log line per epoch is the progress in the task's log (a bar per batch floods it)
    result = train_any(cfg, data_dir, out_dir, resume=True, callbacks=[mlflow_runs.EpochLogger(run_id)],
                       progress=False)
    # epochs whose metrics never reached MLflow (it was down past the client's retries, or the step was killed
    # between checkpoint and logging) are in the resumed history: log them now
    mlflow_runs.log_missing_epochs(run_id, result.history)
    curves = training_curves(result.history, out_dir / "training_curves.png")
    mlflow_runs.log_pictures(run_id, {"plots": curves})
    mlflow_runs.log_metrics(run_id, {"best_val_iou": result.best_val_iou, "best_epoch": result.best_epoch,
                                     "train_images_per_second": result.images_per_second})
    model_uri = mlflow_runs.log_model(run_id, result.weights, cfg.data.image_size, cfg.model.in_channels)
    mlflow_runs.set_tags(run_id, {"status_detail": "trained", "model_uri": model_uri})
    return {"run_id": run_id, "model_uri": model_uri, "weights": str(result.weights),
            "best_epoch": result.best_epoch, "best_val_iou": result.best_val_iou}


def _record_split(run_id: str, path: Path) -> None:
    """The run's split, with it: a later run's evaluate reads it to never score this model on its training images."""
    from .tracking import mlflow_runs
    if not path.is_file():
        return
    split = json.loads(path.read_text())
    info = split.get("info", {})
    mlflow_runs.set_tags(run_id, {"split_source": str(info.get("source", "made now")),
                                  "split_sizes": json.dumps({k: len(split.get(k, [])) for k in ("train", "val", "test")})})
    mlflow_runs.log_json(run_id, split, SPLIT_ARTIFACT)


def _record_duplicates(run_id: str, report: Path) -> None:
    """The duplicates policy and its effect, with the run: nothing left out or merged goes unrecorded."""
    from .tracking import mlflow_runs
    if not report.is_file():
        return
    plan = json.loads(report.read_text())
    mlflow_runs.set_tags(run_id, {"data_duplicates_policy": plan["policy"],
                                  "data_duplicates_removed": str(len(plan["removed"])),
                                  "data_duplicates_merged": json.dumps(plan["merged"])[:4000],
                                  "data_duplicates_quarantined": json.dumps(plan["quarantined"])[:4000]})
    mlflow_runs.log_json(run_id, plan, "data/duplicates.json")


# ---- evaluate -------------------------------------------------------------------------------

def _champion_weights(model_name: str, dest: Path) -> tuple[dict, Path] | None:
    import mlflow

    from .tracking import registry
    champ = registry.champion(model_name)
    if champ is None:
        return None
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{model_name}@champion", dst_path=str(dest)))
    found = sorted(local.rglob("*.safetensors"))
    if not found:
        raise StepFailed(f"champion {model_name} v{champ['version']} has no weights file in its artifacts")
    return champ, found[0]


def _trained_on(run_id: str, dest: Path) -> set[str] | None:
    """The stems a model was trained or validated on (its run's split), None when its run has no split logged."""
    import mlflow
    try:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=SPLIT_ARTIFACT, dst_path=str(dest))
    except Exception:  # noqa: BLE001 - a champion trained before splits were logged: unknown, and recorded so
        return None
    split = json.loads(Path(path).read_text())
    return set(split.get("train", [])) | set(split.get("val", []))


def _score(cfg: RunConfig, weights: Path, data_dir: Path, stems: list[str], workdir: Path) -> tuple[list, dict, object]:
    from .evaluation import latency_ms, score_images
    from .predict import Predictor
    from .serving_artifact import serving_runner

    predictor = Predictor(weights, cfg.eval.threshold)
    rows = score_images(predictor.probabilities, data_dir, stems, cfg.eval.threshold, progress=False)
    run, artifact = serving_runner(weights, workdir)
    lat = latency_ms(run, cfg.eval.latency_runs, cfg.eval.latency_warmup)
    lat["artifact"] = artifact
    return rows, lat, predictor


def _choose_precision(cfg: RunConfig, artifact: Path, data_dir: Path, preprocessed_dir: Path,
                      stems: list[str]) -> dict:
    from .serving.precision import choose_precision
    train = json.loads((preprocessed_dir / "splits.json").read_text())["train"][: cfg.eval.calibration_images]
    return choose_precision(artifact, data_dir, stems, train, threshold=cfg.eval.threshold,
                            max_iou_drop=cfg.eval.max_precision_iou_drop, forms=tuple(cfg.eval.serving_forms))


def _artifact_latency(cfg: RunConfig, artifact: Path) -> dict:
    import numpy as np

    from cmunext_serving.engines import ServedModel

    from .evaluation import latency_ms
    model = ServedModel(artifact)
    x = np.zeros((1, model.channels, model.size, model.size), np.float32)
    lat = latency_ms(lambda: model.probabilities(x), cfg.eval.latency_runs, cfg.eval.latency_warmup)
    lat["artifact"] = f"{model.runtime}/{model.precision}:{model.info['format']}"
    return lat


def evaluate(cfg: RunConfig, weights: str | Path, data_dir: str | Path, preprocessed_dir: str | Path,
             out_dir: str | Path, run_id: str | None = None, artifact_dir: str | Path | None = None) -> dict:
    """Score the test split; score the champion on the same images and machine when there is one. The serving
    artifact goes to ARTIFACT_DIR in the runtime and precision chosen for it (serving/precision.py), which is what
    the package step ships and what the gate's latency is measured on."""
    from .data.duplicates import read_classes
    from .evaluation import breakdown, compare, compare_class, count_macs, summarize
    from .models import count_parameters
    from .pictures import gallery

    out_dir, data_dir = Path(out_dir), Path(data_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stems = json.loads((Path(preprocessed_dir) / "splits.json").read_text())["test"]
    if not stems:
        raise StepFailed("the test split is empty: raise data.split_ratios[2] or add data")
    artifact = Path(artifact_dir) if artifact_dir else out_dir / "artifact"
    rows, lat, predictor = _score(cfg, Path(weights), data_dir, stems, artifact)
    precision = _choose_precision(cfg, artifact, data_dir, Path(preprocessed_dir), stems)
    if precision["chosen"] != "onnxruntime/fp32":  # the gate judges the form that ships; fp32 stays for the
        lat = {**_artifact_latency(cfg, artifact), "fp32_p95_ms": lat["p95_ms"]}  # like-for-like champion ratio
    else:
        lat["fp32_p95_ms"] = lat["p95_ms"]
    size = cfg.data.image_size
    evaluation = {
        "images": len(rows), "split": "test", "metrics": summarize(rows, cfg.eval.bootstrap), "latency": lat,
        "params": count_parameters(predictor.model), "macs": count_macs(predictor.model, size, size),
        "image_size": size, "per_image": rows, "champion": None, "precision": precision,
    }
    classes = read_classes(data_dir)  # mapping.csv of the dataset (BUSI: benign, malignant), if any
    evaluation["breakdown"] = breakdown(rows, classes, cfg.eval.bootstrap)
    found = _champion_weights(cfg.registry.model_name, out_dir / "champion")
    if found is not None:
        champ, champ_weights = found
        # never score the champion on an image it trained on: compare on the test images it has not seen
        seen = _trained_on(champ["run_id"], out_dir / "champion_split")
        fair = [s for s in stems if seen is None or s not in seen]
        fair_set = set(fair)
        if not fair:
            raise StepFailed(f"champion v{champ['version']} trained on every image of this test split; freeze the "
                             "split with `cmunext data split DIR` so the test images stay test")
        c_rows, c_lat, _ = _score(cfg, champ_weights, data_dir, fair, out_dir / "champion_artifact")
        c_lat["fp32_p95_ms"] = c_lat["p95_ms"]
        mine = [r for r in rows if r["stem"] in fair_set]
        by_class: dict[str, set[str]] = {}
        for r in rows:
            if classes.get(r["stem"]):
                by_class.setdefault(classes[r["stem"]], set()).add(r["stem"])
        evaluation["champion"] = {"version": champ["version"], "run_id": champ["run_id"],
                                  "metrics": summarize(c_rows, cfg.eval.bootstrap), "latency": c_lat,
                                  "comparison": compare(mine, c_rows, cfg.eval.bootstrap),
                                  "breakdown": breakdown(c_rows, classes, cfg.eval.bootstrap),
                                  "classes": {k: compare_class(mine, c_rows, v, cfg.eval.bootstrap)
                                              for k, v in sorted(by_class.items())},
                                  "trained_on_check": "unavailable: its run logged no split" if seen is None else
                                  "checked", "excluded_trained_on": sorted(set(stems) - fair_set)}
    if cfg.eval.cv_folds:
        from .cross_validation import cross_validate
        split = json.loads((Path(preprocessed_dir) / "splits.json").read_text())
        evaluation["cross_validation"] = cross_validate(cfg, data_dir, split, cfg.eval.cv_folds, out_dir / "cv", classes)
    gallery_png = gallery(rows, predictor.probabilities, data_dir, out_dir / "gallery.png", cfg.eval.gallery_size,
                          cfg.eval.threshold) if cfg.eval.gallery_size else None
    (out_dir / "evaluation.json").write_text(json.dumps(evaluation, indent=1))
    if run_id:
        from .tracking import mlflow_runs
        flat = {f"test_{k}": v["value"] for k, v in evaluation["metrics"].items()}
        flat.update({f"test_{k}_ci95_low": v["ci95_low"] for k, v in evaluation["metrics"].items() if k in ("iou", "dice")})
        flat.update({"latency_p50_ms": lat["p50_ms"], "latency_p95_ms": lat["p95_ms"],
                     "params": evaluation["params"], "gmacs": evaluation["macs"] / 1e9})
        flat.update(_breakdown_metrics(evaluation["breakdown"]))
        if evaluation.get("cross_validation"):
            cv = evaluation["cross_validation"]
            flat.update({"cv_iou": cv["iou"]["value"], "cv_iou_ci95_low": cv["iou"]["ci95_low"],
                         "cv_iou_ci95_high": cv["iou"]["ci95_high"], "cv_dice": cv["dice"]["value"],
                         "cv_folds": cv["folds"]})
        if evaluation["champion"]:
            flat["champion_compared_images"] = evaluation["champion"]["comparison"]["images"]
            flat["champion_excluded_trained_on"] = len(evaluation["champion"]["excluded_trained_on"])
        mlflow_runs.log_metrics(run_id, flat)
        mlflow_runs.log_json(run_id, evaluation, "evaluation/evaluation.json")
        if gallery_png:
            mlflow_runs.log_pictures(run_id, {"evaluation": gallery_png})
    return evaluation


def _breakdown_metrics(b: dict) -> dict[str, float]:
    """MLflow metric names for the breakdown: test_lesion_iou, test_iou_<class>, ... (each with its CI low)."""
    parts = {"test_lesion_iou": b["lesion"]["iou"], "test_lesion_dice": b["lesion"]["dice"],
             "test_normal_false_positive_area": b["normal"]["false_positive_area"],
             "test_detection_sensitivity": b["detection"]["sensitivity"],
             "test_detection_specificity": b["detection"]["specificity"]}
    for name, c in b["classes"].items():
        safe = "".join(ch if ch.isalnum() or ch in "_-." else "_" for ch in name)
        parts.update({f"test_iou_{safe}": c["iou"], f"test_dice_{safe}": c["dice"]})
    out = {}
    for key, est in parts.items():
        if est is not None:
            out[key] = est["value"]
            out[key + "_ci95_low"] = est["ci95_low"]
    out.update({"test_lesion_images": b["lesion"]["images"], "test_normal_images": b["normal"]["images"]})
    return out


# ---- gate and promote -----------------------------------------------------------------------

def gate(cfg: RunConfig, evaluation: Evaluation | dict, run_id: str | None = None) -> GateDecision:
    from .gate import decide
    from .serving import store
    store.use(cfg.registry.bento_store)
    decision = decide(evaluation, cfg.gate)
    if run_id:
        from .tracking import access, mlflow_runs, registry
        mlflow_runs.set_tags(run_id, {"gate_decision": decision.decision, "gate_reasons": decision.reasons,
                                      "gate_decided_by": access.actor()})
        if decision.decision == "reject":  # a promotion is recorded by the promote step, with its version
            registry.record_rejection(cfg.registry.model_name, run_id, decision.reasons)
    return decision


def register(cfg: RunConfig, decision: GateDecision | dict, evaluation: Evaluation | dict, run_id: str,
             model_uri: str, data_revision: str) -> str:
    """The MLflow version of a gated training run, registered once (a re-run finds it): the version the bento
    is built for. Registering moves no alias."""
    from .tracking import registry

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
            validation: InfraValidation | dict) -> dict:
    """Move `champion` to VERSION, against the champion the gate saw, once its bento served correctly."""
    from .serving import store
    from .tracking import mlflow_runs, registry

    decision, validation = GateDecision.model_validate(decision), InfraValidation.model_validate(validation)
    store.use(cfg.registry.bento_store)
    if decision.decision != "promote" or not validation.passed:
        raise StepFailed("promote called for a model that was not gated and validated")
    name = cfg.registry.model_name
    champ = registry.champion(name)
    if (champ and champ["version"] == version) or "promoted_at" in registry.version_tags(name, version):
        return {"model": name, "version": version, "event": "already_registered", "reason": "same training run"}
    try:
        entry = registry.promote(name, version, reason="gate passed: " + "; ".join(
            c.message for c in decision.checks) + f"; served by its bento: {validation.summary}",
            expected_champion=decision.champion_version)
    except registry.StaleChampion as exc:
        registry.tag_version(name, version, {"gate_decision": "stale", "stale_reason": str(exc)})
        raise StepFailed(f"not promoted: {exc}; re-run the pipeline to decide against the new champion") from None
    mlflow_runs.set_tags(run_id, {"registered_version": version})
    return {"model": name, "version": version, **entry}


# ---- package --------------------------------------------------------------------------------

def package(cfg: RunConfig, weights: str | Path, version: str, run_id: str, data_revision: str,
            evaluation: Evaluation | dict, out_dir: str | Path, exported: str | Path) -> PackageResult:
    """Bento for a registered version, from EXPORTED: the serving artifact the evaluate step measured (its
    declared output), shipped as it is, so the gate's latency is the served one's. The .bento archive goes to
    OUT_DIR (the step's output artifact) and to the bento store (registry.bento_store), whose URI and sha256
    are recorded on the version with the bento's tag."""
    from cmunext_serving.engines import serving_record
    from cmunext_serving.fingerprint import sha256_file

    from .serving import store
    from .serving.package import package_model
    from .tracking import registry

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
    if (tags.get("bento_uri") and tags.get("artifact_sha256") == artifact["sha256"]
            and tags.get("serving_form") == form):  # a re-run of this version with the same artifact and form:
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
                          threshold=cfg.eval.threshold)
    uri = store.archive_uri(store.root(cfg.registry.bento_store), name, version, built["bento_tag"])
    digest = store.put(archive, uri)
    registry.tag_version(name, str(version), {"bento_tag": built["bento_tag"], "bento_uri": uri,
                                              "bento_sha256": digest, "bento_archive": str(archive),
                                              "artifact_sha256": built["sha256"],
                                              "serving_form": f"{built['runtime']}/{built['precision']}"})
    result = PackageResult.model_validate({**built, "archive": str(archive), "bento_uri": uri, "bento_sha256": digest})
    (out_dir / "bento.json").write_text(result.model_dump_json(indent=1))
    return result


# ---- infra-validate -------------------------------------------------------------------------

def infra_validate(cfg: RunConfig, version: str, run_id: str, archive: str | Path, artifact: str | Path,
                   data_dir: str | Path, evaluation: Evaluation | dict, out_dir: str | Path) -> InfraValidation:
    """Boot the bento as deployed and check it before `champion` can move (cmunext/infra_validation.py). A
    failure is a rejection, recorded with its reasons on the run, the version and the registry's history."""
    from .infra_validation import validate_bento
    from .serving import store
    from .tracking import mlflow_runs, registry

    store.use(cfg.registry.bento_store)
    stems = [r["stem"] for r in Evaluation.model_validate(evaluation).per_image]
    result = InfraValidation.model_validate(validate_bento(archive, artifact, data_dir, stems, cfg.gate.max_latency_ms,
                                                           out_dir, cfg.eval.threshold))
    name = cfg.registry.model_name
    registry.tag_version(name, str(version), {"infra_validation": "passed" if result.passed else "failed",
                                              "infra_validation_reasons": json.dumps(result.reasons)})
    mlflow_runs.log_json(run_id, result.to_dict(), "infra_validation/result.json")
    if not result.passed:
        reasons = [f"infra-validation: {r}" for r in result.reasons]
        mlflow_runs.set_tags(run_id, {"gate_decision": "reject", "gate_reasons": reasons})
        registry.record_rejection(name, run_id, reasons)
        raise StepFailed(f"version {version} was not promoted: its bento failed infra-validation: "
                         + "; ".join(result.reasons))
    return result
