"""The promotion gate: a pure function from evaluation results to a decision with reasons."""
from __future__ import annotations

from .config import GateConfig


def _check(name: str, passed: bool, value: float, threshold: float, comparison: str, unit: str = "") -> dict:
    margin = value - threshold if comparison == ">=" else threshold - value
    verdict = "ok" if passed else "FAILED"
    return {"name": name, "passed": bool(passed), "value": value, "threshold": threshold, "margin": margin,
            "message": f"{name}: {value:.4g}{unit} {'meets' if passed else 'misses'} {comparison} {threshold:.4g}{unit} "
                       f"({verdict}, margin {margin:+.4g}{unit})"}


def decide(evaluation: dict, gate: GateConfig) -> dict:
    """`evaluation` holds `metrics.iou.value`, `latency.p95_ms` and, when a champion exists,
    `champion.comparison.iou_diff.ci95_low` and `champion.latency.p95_ms`."""
    iou = evaluation["metrics"]["iou"]["value"]
    p95 = evaluation["latency"]["p95_ms"]
    checks = [
        _check("test IoU", iou >= gate.min_iou, iou, gate.min_iou, ">="),
        _check("p95 latency", p95 <= gate.max_latency_ms, p95, gate.max_latency_ms, "<=", " ms"),
    ]
    champ = evaluation.get("champion")
    if champ:
        low = champ["comparison"]["iou_diff"]["ci95_low"]
        checks.append(_check("IoU difference vs champion (95% CI lower bound)", low >= -gate.iou_tolerance,
                             low, -gate.iou_tolerance, ">="))
        ratio = p95 / max(champ["latency"]["p95_ms"], 1e-9)
        checks.append(_check("p95 latency ratio vs champion", ratio <= gate.max_latency_ratio,
                             ratio, gate.max_latency_ratio, "<=", "x"))
    passed = all(c["passed"] for c in checks)
    return {"decision": "promote" if passed else "reject", "passed": passed, "checks": checks,
            "champion_version": champ["version"] if champ else None,
            "reasons": [c["message"] for c in checks if not c["passed"]] or ["all gates passed"]}


def report_markdown(decision: dict, evaluation: dict) -> str:
    m = evaluation["metrics"]
    lines = [f"# Gate decision: **{'PROMOTED' if decision['passed'] else 'REJECTED'}**", "",
             "| check | value | threshold | margin | result |", "|---|---|---|---|---|"]
    for c in decision["checks"]:
        lines.append(f"| {c['name']} | {c['value']:.4g} | {c['threshold']:.4g} | {c['margin']:+.4g} | "
                     f"{'pass' if c['passed'] else '**fail**'} |")
    lines += ["", f"Test images: {evaluation['images']}; mean IoU {m['iou']['value']:.4f} "
              f"[{m['iou']['ci95_low']:.4f}, {m['iou']['ci95_high']:.4f}], Dice {m['dice']['value']:.4f}, "
              f"pooled IoU {m['pooled_iou']['value']:.4f}; p50/p95 latency {evaluation['latency']['p50_ms']:.1f}/"
              f"{evaluation['latency']['p95_ms']:.1f} ms ({evaluation['latency'].get('artifact', 'eager')})."]
    if decision["champion_version"]:
        lines.append(f"Compared against champion version {decision['champion_version']}.")
    lines += ["", "Reasons:"] + [f"- {r}" for r in decision["reasons"]]
    return "\n".join(lines) + "\n"
