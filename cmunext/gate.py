"""The promotion gate: a pure function from evaluation results to a decision with reasons."""
from __future__ import annotations

from .config import GateConfig
from .contracts import Evaluation, GateCheck, GateDecision


def _check(name: str, passed: bool, value: float, threshold: float, comparison: str, unit: str = "") -> dict:
    margin = value - threshold if comparison == ">=" else threshold - value
    verdict = "ok" if passed else "FAILED"
    return {"name": name, "passed": bool(passed), "value": value, "threshold": threshold, "margin": margin,
            "message": f"{name}: {value:.4g}{unit} {'meets' if passed else 'misses'} {comparison} {threshold:.4g}{unit} "
                       f"({verdict}, margin {margin:+.4g}{unit})"}


def _missing(name: str, why: str) -> dict:
    """A configured check with nothing to measure fails closed, saying why."""
    return {"name": name, "passed": False, "value": float("nan"), "threshold": float("nan"), "margin": float("nan"),
            "message": f"{name}: cannot be checked: {why} (FAILED)"}


def _breakdown_checks(b: dict, gate: GateConfig) -> list[dict]:
    wanted = [("mean IoU of lesion images", gate.min_lesion_iou, ("lesion", "iou"), "no test image has a lesion"),
              ("detection sensitivity (lesion images with a lesion predicted)", gate.min_detection_sensitivity,
               ("detection", "sensitivity"), "no test image has a lesion"),
              ("detection specificity (normal images predicted empty)", gate.min_detection_specificity,
               ("detection", "specificity"), "no normal (empty-mask) image in the test split")]
    checks = []
    for name, threshold, (part, key), why in wanted:
        if threshold is None:
            continue
        estimate = (b.get(part) or {}).get(key)
        checks.append(_missing(name, why) if estimate is None else
                      _check(name, estimate["value"] >= threshold, estimate["value"], threshold, ">="))
    return checks


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def decide(evaluation: Evaluation | dict, gate: GateConfig) -> GateDecision:
    """From the test IoU, the p95 latency, the breakdown and, when a champion exists, the comparison with it."""
    ev = Evaluation.model_validate(evaluation)
    iou, p95 = ev.iou, ev.latency.p95_ms
    checks = [
        _check("test IoU", iou >= gate.min_iou, iou, gate.min_iou, ">="),
        _check("p95 latency", p95 <= gate.max_latency_ms, p95, gate.max_latency_ms, "<=", " ms"),
    ]
    checks += _breakdown_checks(ev.breakdown or {}, gate)
    champ = ev.champion
    if champ and gate.noninferior_class:
        name = gate.noninferior_class
        diff = (champ.classes.get(name) or {}).get("iou_diff")
        if diff is None:
            checks.append(_missing(f"IoU difference vs champion on class {name!r} (95% CI lower bound)",
                                   f"no test image of class {name!r} (classes come from mapping.csv)"))
        else:
            checks.append(_check(f"IoU difference vs champion on class {name!r} (95% CI lower bound)",
                                 diff["ci95_low"] >= -gate.class_iou_tolerance, diff["ci95_low"],
                                 -gate.class_iou_tolerance, ">="))
    if champ:
        low = champ.iou_diff.ci95_low
        checks.append(_check("IoU difference vs champion (95% CI lower bound)", low >= -gate.iou_tolerance,
                             low, -gate.iou_tolerance, ">="))
        # like for like: both models' compute in ONNX Runtime fp32 (the champion's own served form is not rebuilt)
        mine, theirs = ev.latency.fp32_p95_ms or p95, champ.latency.fp32_p95_ms or champ.latency.p95_ms
        ratio = mine / max(theirs, 1e-9)
        checks.append(_check("p95 latency ratio vs champion (fp32)", ratio <= gate.max_latency_ratio,
                             ratio, gate.max_latency_ratio, "<=", "x"))
    passed = all(c["passed"] for c in checks)
    return GateDecision(decision="promote" if passed else "reject", passed=passed,
                        checks=[GateCheck(**c) for c in checks], champion_version=str(champ.version) if champ else None,
                        reasons=[c["message"] for c in checks if not c["passed"]] or ["all gates passed"])


def report_markdown(decision: GateDecision | dict, evaluation: Evaluation | dict) -> str:
    decision = GateDecision.model_validate(decision)
    ev = Evaluation.model_validate(evaluation)
    evaluation = ev.to_dict()
    m = ev.metrics
    lines = [f"# Gate decision: **{'PROMOTED' if decision.decision == 'promote' else 'REJECTED'}**", "",
             "| check | value | threshold | margin | result |", "|---|---|---|---|---|"]
    for c in decision.checks:
        lines.append(f"| {c.name} | {c.value:.4g} | {c.threshold:.4g} | {c.margin:+.4g} | "
                     f"{'pass' if c.passed else '**fail**'} |")
    lines += ["", f"Test images: {ev.images}; mean IoU {m['iou'].value:.4f} "
              f"[{m['iou'].ci95_low:.4f}, {m['iou'].ci95_high:.4f}], Dice {m['dice'].value:.4f}, "
              f"pooled IoU {m['pooled_iou'].value:.4f}; p50/p95 latency {_ms(ev.latency.p50_ms)}/"
              f"{_ms(ev.latency.p95_ms)} ms ({ev.latency.artifact or 'eager'}; fp32 p95 {_ms(ev.latency.fp32_p95_ms)} ms)."]
    if decision.champion_version:
        champ = evaluation.get("champion") or {}
        excluded = champ.get("excluded_trained_on") or []
        lines.append(f"Compared against champion version {decision.champion_version}"
                     + (f" on {champ['comparison']['images']} test images" if "images" in champ.get("comparison", {}) else "")
                     + (f", leaving out {len(excluded)} it was trained on" if excluded else "")
                     + (" (its training split was not logged: not checked)"
                        if champ.get("trained_on_check", "checked") != "checked" else "") + ".")
    b = evaluation.get("breakdown")
    if b:
        lines += ["", "| images | n | IoU [95% CI] | Dice |", "|---|---|---|---|"]
        rows = [("with a lesion", b["lesion"])] + [(f"class {k}", v) for k, v in b["classes"].items()]
        for label, part in rows:
            if part["images"] and part["iou"]:
                lines.append(f"| {label} | {part['images']} | {part['iou']['value']:.4f} [{part['iou']['ci95_low']:.4f}, "
                             f"{part['iou']['ci95_high']:.4f}] | {part['dice']['value']:.4f} |")
        if b["normal"]["images"]:
            n = b["normal"]
            lines.append(f"\nNormal images (empty masks): {n['images']}, predicted empty "
                         f"{n['predicted_empty']['value']:.1%}, false-positive area {n['false_positive_area']['value']:.2%} "
                         f"of the image on average.")
        if b["lesion"]["images"]:
            lines.append(f"Detection of any lesion: sensitivity {b['detection']['sensitivity']['value']:.1%}"
                         + (f", specificity {b['detection']['specificity']['value']:.1%}." if b["normal"]["images"] else "."))
    lines += ["", "Reasons:"] + [f"- {r}" for r in decision.reasons]
    return "\n".join(lines) + "\n"


def shadow_checks(figures: dict, gate: GateConfig) -> list[dict]:
    """The live gate's checks of a shadowed candidate's figures (cmunext/monitoring/shadow.py), those set only."""
    checks = []
    if gate.shadow_min_requests is not None:
        n = figures["answered"]
        checks.append(_check("shadow requests", n >= gate.shadow_min_requests, n, gate.shadow_min_requests, ">="))
    if gate.shadow_max_errors is not None:
        n = figures["errors"]
        checks.append(_check("shadow errors", n <= gate.shadow_max_errors, n, gate.shadow_max_errors, "<="))
    for name, key, limit, comparison in (("shadow mask agreement (mean IoU)", "mean_iou", gate.shadow_min_agreement, ">="),
                                         ("shadow latency ratio (p95)", "latency_ratio_p95",
                                          gate.shadow_max_latency_ratio, "<=")):
        if limit is None:
            continue
        value = figures.get(key)
        if value is None:
            checks.append(_missing(name, "no answered shadow copies"))
        else:
            passed = value >= limit if comparison == ">=" else value <= limit
            checks.append(_check(name, passed, value, limit, comparison))
    return checks
