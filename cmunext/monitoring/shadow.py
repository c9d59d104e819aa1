"""The figures of a shadowed candidate (`cmunext registry shadow VERSION`), from the records the champion's server
wrote for it (cmunext_serving/shadow.py): how often its mask agrees with the champion's, how often it disagrees on
whether there is a lesion at all, its latency against the champion's (each server's own time, from Server-Timing),
and its errors. Kept on the candidate's registry version as `shadow_*` tags, beside its offline figures."""
from __future__ import annotations

import numpy as np

TAG_PREFIX = "shadow_"


def summarize(records: list[dict]) -> dict:
    """{"requests", "answered", "errors", "mean_iou", "p5_iou", "mean_dice", "lesion_disagreement",
    "champion_p95_ms", "candidate_p95_ms", "latency_ratio_p95"}; figures of nothing answered are None."""
    answered = [r for r in records if "error" not in r]
    summary = {"requests": len(records), "answered": len(answered), "errors": len(records) - len(answered),
               "mean_iou": None, "p5_iou": None, "mean_dice": None, "lesion_disagreement": None,
               "champion_p95_ms": None, "candidate_p95_ms": None, "latency_ratio_p95": None}
    if not answered:
        return summary
    iou = np.array([r["iou"] for r in answered])
    champion = [r["champion_ms"] for r in answered]
    candidate = [r["candidate_ms"] for r in answered if r.get("candidate_ms") is not None]
    summary.update({"mean_iou": round(float(iou.mean()), 4), "p5_iou": round(float(np.percentile(iou, 5)), 4),
                    "mean_dice": round(float(np.mean([r["dice"] for r in answered])), 4),
                    "lesion_disagreement": round(float(np.mean([not r["lesion_agrees"] for r in answered])), 4),
                    "champion_p95_ms": round(float(np.percentile(champion, 95)), 2)})
    if candidate:
        summary["candidate_p95_ms"] = round(float(np.percentile(candidate, 95)), 2)
        summary["latency_ratio_p95"] = round(summary["candidate_p95_ms"] / summary["champion_p95_ms"], 3)
    return summary


def lines(summary: dict, model: str, version: str, champions: list[str]) -> list[str]:
    """What a reviewer reads."""
    head = f"{model} v{version} shadowed beside champion v{', v'.join(champions) or '?'}: {summary['requests']} " \
           f"requests, {summary['errors']} errors"
    if not summary["answered"]:
        return [head, "  no answered copies yet: nothing to compare"]
    return [head,
            f"  mask agreement   : IoU mean {summary['mean_iou']:.3f}, 5th percentile {summary['p5_iou']:.3f} "
            f"(Dice mean {summary['mean_dice']:.3f})",
            f"  lesion present   : disagrees on {summary['lesion_disagreement']:.1%} of the answered copies",
            f"  latency (p95)    : candidate {_ms(summary['candidate_p95_ms'])} vs champion "
            f"{_ms(summary['champion_p95_ms'])} (ratio {summary['latency_ratio_p95'] or '?'})"]


def _ms(value: float | None) -> str:
    return "?" if value is None else f"{value:.1f} ms"


def as_tags(summary: dict) -> dict[str, str]:
    return {TAG_PREFIX + k: "" if v is None else str(v) for k, v in summary.items()}
