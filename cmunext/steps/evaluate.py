"""The evaluate step: the test split scored, the serving form chosen and timed, the champion compared on images it never saw."""
from __future__ import annotations

import json
from pathlib import Path

from cmunext_serving.lesion_rule import LesionRule

from ..config import RunConfig
from .common import SPLIT_ARTIFACT, StepFailed


def _champion_weights(model_name: str, dest: Path) -> tuple[dict, Path] | None:
    import mlflow

    from ..tracking import registry
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


def _score(cfg: RunConfig, weights: Path, data_dir: Path, stems: list[str], workdir: Path, rule: LesionRule,
           observed: list[dict] | None = None, tta: str | None = None) -> tuple[list, dict, object]:
    """Per-image rows (masks by RULE, as served), the latency of the fp32 serving artifact in the serving form TTA
    (default: eval.tta), and the predictor; with
    OBSERVED, the prediction features of each answer are kept there too (the drift reference,
    cmunext/monitoring/reference.py)."""
    from ..evaluation import latency_ms, score_images
    from ..monitoring.reference import observing
    from ..predict import Predictor
    from ..serving_artifact import serving_runner

    tta = cfg.eval.tta if tta is None else tta
    predictor = Predictor(weights, cfg.eval.threshold, tta=tta)
    probabilities = predictor.probabilities
    if observed is not None:
        probabilities = observing(probabilities, cfg.eval.threshold, observed)
    rows = score_images(probabilities, data_dir, stems, rule, progress=False)
    run, artifact = serving_runner(weights, workdir, tta)
    lat = latency_ms(run, cfg.eval.latency_runs, cfg.eval.latency_warmup)
    lat["artifact"] = artifact
    return rows, lat, predictor


def choose_lesion_rule(cfg: RunConfig, weights: Path, data_dir: Path, split: dict) -> dict:
    """The lesion-free rule for this model, chosen on the validation split (cmunext/no_lesion.py)."""
    from ..no_lesion import choose_rule, validation_evidence
    from ..predict import Predictor

    off = {"rule": LesionRule(cfg.eval.threshold).as_dict(), "chosen_on": None}
    if cfg.eval.lesion_rule == "off" and cfg.eval.largest_region == "off":
        return {**off, "reason": "eval.lesion_rule: off"}
    if not split.get("val"):
        return {**off, "reason": "no validation split to choose on: rule off (threshold only)"}
    served = Predictor(weights, tta=cfg.eval.tta).probabilities
    seen = validation_evidence(served, data_dir, split["val"], cfg.eval.threshold)
    return choose_rule(seen, cfg.eval.threshold, cfg.eval.lesion_rule_max_sensitivity_drop, cfg.eval.largest_region,
                       image_level=cfg.eval.lesion_rule == "validation")


def _rule_effect(cfg: RunConfig, rows: list[dict], classes: dict) -> dict:
    """What the rule changed on the test split (from the rows' `without_rule`, kept by the scoring pass): the
    breakdown without it, and paired differences (with - without) of lesion-image IoU, of lesion images found and
    of normal images called empty. Reported, never used to choose."""
    from ..evaluation import breakdown
    from ..metrics import paired_difference

    off = [{**r, **r.get("without_rule", {})} for r in rows]

    def paired(kind: str, value) -> dict | None:
        pairs = [(value(r), value(o)) for r, o in zip(rows, off) if (r["tp"] + r["fn"] > 0) == (kind == "lesion")]
        return paired_difference(*zip(*pairs), cfg.eval.bootstrap).as_dict() if pairs else None

    def found(r: dict) -> float:
        return float(r["tp"] + r["fp"] > 0)

    return {"breakdown_without": breakdown(off, classes, cfg.eval.bootstrap),
            "lesion_iou_diff": paired("lesion", lambda r: r["iou"]),
            "sensitivity_diff": paired("lesion", found),
            "specificity_diff": paired("normal", lambda r: 1 - found(r)),
            "emptied": sum(found(o) > found(r) for r, o in zip(rows, off))}


def _choose_precision(cfg: RunConfig, artifact: Path, data_dir: Path, preprocessed_dir: Path,
                      stems: list[str]) -> dict:
    from ..serving.precision import choose_precision
    train = json.loads((preprocessed_dir / "splits.json").read_text())["train"][: cfg.eval.calibration_images]
    return choose_precision(artifact, data_dir, stems, train, threshold=cfg.eval.threshold,
                            max_iou_drop=cfg.eval.max_precision_iou_drop, forms=tuple(cfg.eval.serving_forms))


def _artifact_latency(cfg: RunConfig, artifact: Path) -> dict:
    import numpy as np

    from cmunext_serving.engines import ServedModel

    from ..evaluation import latency_ms
    from ..serving_artifact import form_suffix
    model = ServedModel(artifact)
    x = np.zeros((1, model.channels, model.size, model.size), np.float32)
    lat = latency_ms(lambda: model.probabilities(x), cfg.eval.latency_runs, cfg.eval.latency_warmup)
    lat["artifact"] = f"{model.runtime}/{model.precision}:{model.info['format']}{form_suffix(model.info)}"
    return lat


def evaluate(cfg: RunConfig, weights: str | Path, data_dir: str | Path, preprocessed_dir: str | Path,
             out_dir: str | Path, run_id: str | None = None, artifact_dir: str | Path | None = None) -> dict:
    """Score the test split; score the champion on the same images and machine when there is one. The serving
    artifact goes to ARTIFACT_DIR in the runtime and precision chosen for it (serving/precision.py), which is what
    the package step ships and what the gate's latency is measured on."""
    from ..data.duplicates import read_classes
    from ..pictures import gallery

    out_dir, data_dir, preprocessed_dir = Path(out_dir), Path(data_dir), Path(preprocessed_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    split = json.loads((preprocessed_dir / "splits.json").read_text())
    stems = split["test"]
    if not stems:
        raise StepFailed("the test split is empty: raise data.split_ratios[2] or add data")
    classes = read_classes(data_dir)  # mapping.csv of the dataset (BUSI: benign, malignant), if any
    artifact = Path(artifact_dir) if artifact_dir else out_dir / "artifact"
    observed: list[dict] = []
    evaluation, predictor = _score_candidate(cfg, Path(weights), data_dir, preprocessed_dir, stems, artifact, classes,
                                             observed)
    evaluation["champion"] = _compare_with_champion(cfg, evaluation["per_image"], data_dir, stems, classes, out_dir)
    if cfg.eval.cv_folds:
        from ..cross_validation import cross_validate
        evaluation["cross_validation"] = cross_validate(cfg, data_dir, split, cfg.eval.cv_folds, out_dir / "cv", classes)
    rule = LesionRule.from_dict(evaluation["lesion_rule"]["rule"])
    gallery_png = gallery(evaluation["per_image"], predictor.probabilities, data_dir, out_dir / "gallery.png",
                          cfg.eval.gallery_size, rule) if cfg.eval.gallery_size else None
    (out_dir / "evaluation.json").write_text(json.dumps(evaluation, indent=1))
    if run_id:
        _log_evaluation(run_id, evaluation, gallery_png)
    _log_reference(cfg, observed, data_dir, split, out_dir, run_id)
    return evaluation


def _log_reference(cfg: RunConfig, observed: list[dict], data_dir: Path, split: dict, out_dir: Path,
                   run_id: str | None) -> None:
    """What `cmunext monitor drift` compares served traffic with, logged with the model (cmunext/monitoring)."""
    from ..monitoring import reference

    ref = reference.compute(data_dir, split["train"], observed, cfg.eval.threshold)
    (out_dir / "reference.json").write_text(json.dumps(ref))
    if run_id:
        reference.log(run_id, ref)


def _score_candidate(cfg: RunConfig, weights: Path, data_dir: Path, preprocessed_dir: Path, stems: list[str],
                     artifact: Path, classes: dict, observed: list[dict]) -> tuple[dict, object]:
    """The model's metrics on the test split, its serving form and the latency of that form."""
    from ..evaluation import breakdown, count_macs, summarize
    from ..models import count_parameters

    split = json.loads((preprocessed_dir / "splits.json").read_text())
    lesion_rule = choose_lesion_rule(cfg, weights, data_dir, split)
    rule = LesionRule.from_dict(lesion_rule["rule"])
    rows, lat, predictor = _score(cfg, weights, data_dir, stems, artifact, rule, observed)
    if rule.changes_masks:
        lesion_rule["test"] = _rule_effect(cfg, rows, classes)
    precision = _choose_precision(cfg, artifact, data_dir, preprocessed_dir, stems)
    if precision["chosen"] != "onnxruntime/fp32":  # the gate judges the form that ships; fp32 stays for the
        lat = {**_artifact_latency(cfg, artifact), "fp32_p95_ms": lat["p95_ms"]}  # like-for-like champion ratio
    else:
        lat["fp32_p95_ms"] = lat["p95_ms"]
    size = cfg.data.image_size
    return {
        "images": len(rows), "split": "test", "metrics": summarize(rows, cfg.eval.bootstrap), "latency": lat,
        "params": count_parameters(predictor.model), "macs": count_macs(predictor.model, size, size),
        "image_size": size, "per_image": rows, "champion": None, "precision": precision,
        "breakdown": breakdown(rows, classes, cfg.eval.bootstrap), "lesion_rule": lesion_rule,
    }, predictor


def _compare_with_champion(cfg: RunConfig, rows: list[dict], data_dir: Path, stems: list[str], classes: dict,
                           out_dir: Path) -> dict | None:
    """The champion scored on the same test images on this machine, with paired CIs of the differences; never on
    an image it trained on. None without a champion."""
    from ..evaluation import breakdown, compare, compare_class, summarize

    found = _champion_weights(cfg.registry.model_name, out_dir / "champion")
    if found is None:
        return None
    champ, champ_weights = found
    seen = _trained_on(champ["run_id"], out_dir / "champion_split")
    fair = [s for s in stems if seen is None or s not in seen]
    if not fair:
        raise StepFailed(f"champion v{champ['version']} trained on every image of this test split; freeze the "
                         "split with `cmunext data split DIR` so the test images stay test")
    champ_rule = LesionRule.from_dict(json.loads(champ["tags"].get("lesion_rule", "null")), cfg.eval.threshold)
    c_rows, c_lat, _ = _score(cfg, champ_weights, data_dir, fair, out_dir / "champion_artifact", champ_rule,
                              tta=champ["tags"].get("tta", "none"))
    c_lat["fp32_p95_ms"] = c_lat["p95_ms"]
    fair_set = set(fair)
    mine = [r for r in rows if r["stem"] in fair_set]
    by_class: dict[str, set[str]] = {}
    for r in rows:
        if classes.get(r["stem"]):
            by_class.setdefault(classes[r["stem"]], set()).add(r["stem"])
    boot = cfg.eval.bootstrap
    return {"version": champ["version"], "run_id": champ["run_id"], "metrics": summarize(c_rows, boot),
            "latency": c_lat, "comparison": compare(mine, c_rows, boot), "breakdown": breakdown(c_rows, classes, boot),
            "classes": {k: compare_class(mine, c_rows, v, boot) for k, v in sorted(by_class.items())},
            "trained_on_check": "unavailable: its run logged no split" if seen is None else "checked",
            "excluded_trained_on": sorted(set(stems) - fair_set)}


def _log_evaluation(run_id: str, evaluation: dict, gallery_png: Path | None) -> None:
    """The evaluation's figures as MLflow metrics (flat names, CIs beside), the whole as a JSON artifact."""
    from ..tracking import mlflow_runs

    metrics, lat = evaluation["metrics"], evaluation["latency"]
    flat = {f"test_{k}": v["value"] for k, v in metrics.items()}
    flat.update({f"test_{k}_ci95_low": v["ci95_low"] for k, v in metrics.items() if k in ("iou", "dice")})
    flat.update({"latency_p50_ms": lat["p50_ms"], "latency_p95_ms": lat["p95_ms"],
                 "params": evaluation["params"], "gmacs": evaluation["macs"] / 1e9})
    flat.update(_breakdown_metrics(evaluation["breakdown"]))
    rule = evaluation["lesion_rule"]["rule"]
    flat.update({"lesion_rule_min_peak": rule["min_peak"], "lesion_rule_min_area": rule["min_area"]})
    if cv := evaluation.get("cross_validation"):
        flat.update({"cv_iou": cv["iou"]["value"], "cv_iou_ci95_low": cv["iou"]["ci95_low"],
                     "cv_iou_ci95_high": cv["iou"]["ci95_high"], "cv_dice": cv["dice"]["value"],
                     "cv_folds": cv["folds"]})
    if champ := evaluation["champion"]:
        flat["champion_compared_images"] = champ["comparison"]["images"]
        flat["champion_excluded_trained_on"] = len(champ["excluded_trained_on"])
    mlflow_runs.log_metrics(run_id, flat)
    mlflow_runs.log_json(run_id, evaluation, "evaluation/evaluation.json")
    if gallery_png:
        mlflow_runs.log_pictures(run_id, {"evaluation": gallery_png})


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


