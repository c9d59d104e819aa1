"""Choosing the lesion-free rule (cmunext_serving/lesion_rule.py) on the validation split, never on the test split.

Each validation image is reduced to its evidence (peak probability, largest region) once; every rule on the grid
is then judged on those figures. The rule kept is the one that calls the most normal images empty while it finds
as many lesion images as no rule does (less at most `eval.lesion_rule_max_sensitivity_drop`); among equals, the
mildest. A validation split without normal images (BUSI's) or without lesion images gives nothing to learn from:
the rule stays off.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from cmunext_serving.imageio import read_image, read_mask
from cmunext_serving.lesion_rule import LesionRule, evidence

from .data.layout import find_file

PEAKS = (0.0, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
AREAS = (0.0, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05)


def validation_evidence(probabilities: Callable[[np.ndarray], np.ndarray], root: str | Path, stems: list[str],
                        threshold: float) -> list[dict]:
    """Per validation image: whether its ground truth has a lesion, its peak probability and largest region."""
    root, out = Path(root), []
    for stem in stems:
        prob = probabilities(read_image(find_file(root / "images", stem)))
        peak, largest = evidence(prob, threshold=threshold)
        out.append({"stem": stem, "lesion": bool(read_mask(find_file(root / "masks", stem)).any()),
                    "peak": peak, "largest": largest})
    return out


def _rates(rule: LesionRule, seen: list[dict]) -> tuple[float | None, float | None]:
    """(sensitivity over lesion images, specificity over normal images) of RULE on the evidence SEEN."""
    found = [rule.calls_lesion(s["peak"], s["largest"]) for s in seen]
    lesion = [f for f, s in zip(found, seen) if s["lesion"]]
    normal = [not f for f, s in zip(found, seen) if not s["lesion"]]
    return (float(np.mean(lesion)) if lesion else None, float(np.mean(normal)) if normal else None)


def choose_rule(seen: list[dict], threshold: float, max_sensitivity_drop: float = 0.0) -> dict:
    """The rule to ship, with the validation figures it was chosen on and why."""
    off = LesionRule(threshold)
    sens_off, spec_off = _rates(off, seen)
    record = {"rule": off.as_dict(), "chosen_on": "val", "images": len(seen),
              "lesion_images": sum(s["lesion"] for s in seen), "normal_images": sum(not s["lesion"] for s in seen),
              "without": {"sensitivity": sens_off, "specificity": spec_off}}
    if spec_off is None or sens_off is None:
        missing = "normal" if spec_off is None else "lesion"
        return {**record, "with": record["without"],
                "reason": f"the validation split has no {missing} image to choose on: rule off (threshold only)"}
    best, best_rates = off, (sens_off, spec_off)
    for peak in PEAKS:
        for area in AREAS:  # mildest first: a later rule must be strictly better to replace an earlier one
            rule = LesionRule(threshold, peak, area)
            sens, spec = _rates(rule, seen)
            if sens < sens_off - max_sensitivity_drop - 1e-9:
                continue
            if spec > best_rates[1] + 1e-9:
                best, best_rates = rule, (sens, spec)
    reason = ("chosen on the validation split: most normal images empty with lesion images found as without it"
              if best.active else "no rule calls more normal validation images empty without missing lesions")
    return {**record, "rule": best.as_dict(), "with": {"sensitivity": best_rates[0], "specificity": best_rates[1]},
            "reason": reason}
