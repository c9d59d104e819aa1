"""Choosing the lesion-free rule (cmunext_serving/lesion_rule.py) on the validation split, never on the test split.

Each validation image is reduced to its evidence (peak probability, largest region) once; every rule on the grid
is then judged on those figures. The rule kept is the one that calls the most normal images empty while it finds
as many lesion images as no rule does (less at most `eval.lesion_rule_max_sensitivity_drop`); among equals, the
mildest. A validation split without normal images (BUSI's) or without lesion images gives nothing to learn from:
the rule stays off. With `eval.largest_region: validation`, a lesion image's mask is then cut to its largest region
when that raises the mean validation IoU under the rule chosen (it never changes which images are called empty).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from cmunext_serving.imageio import read_image, read_mask
from cmunext_serving.lesion_rule import LesionRule, evidence, largest_region

from .data.layout import find_file

PEAKS = (0.0, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
AREAS = (0.0, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05)


def validation_evidence(probabilities: Callable[[np.ndarray], np.ndarray], root: str | Path, stems: list[str],
                        threshold: float) -> list[dict]:
    """Per validation image: whether its ground truth has a lesion, its peak probability and largest region, and the
    IoU of its thresholded mask whole and cut to its largest region."""
    from .metrics import image_metrics

    root, out = Path(root), []
    for stem in stems:
        prob = probabilities(read_image(find_file(root / "images", stem)))
        gt = read_mask(find_file(root / "masks", stem))
        pred = prob > threshold
        peak, largest = evidence(prob, pred)
        out.append({"stem": stem, "lesion": bool(gt.any()), "peak": peak, "largest": largest,
                    "iou": image_metrics(pred, gt).iou, "iou_largest": image_metrics(largest_region(pred), gt).iou})
    return out


def _rates(rule: LesionRule, seen: list[dict]) -> tuple[float | None, float | None]:
    """(sensitivity over lesion images, specificity over normal images) of RULE on the evidence SEEN."""
    found = [rule.calls_lesion(s["peak"], s["largest"]) for s in seen]
    lesion = [f for f, s in zip(found, seen) if s["lesion"]]
    normal = [not f for f, s in zip(found, seen) if not s["lesion"]]
    return (float(np.mean(lesion)) if lesion else None, float(np.mean(normal)) if normal else None)


def choose_rule(seen: list[dict], threshold: float, max_sensitivity_drop: float = 0.0,
                largest_region: str = "off", image_level: bool = True) -> dict:
    """The rule to ship, with the validation figures it was chosen on and why (IMAGE_LEVEL false: the image-level
    decision stays off, eval.lesion_rule=off)."""
    if image_level:
        record = _image_level(seen, threshold, max_sensitivity_drop)
    else:
        record = {"rule": LesionRule(threshold).as_dict(), "chosen_on": "val", "images": len(seen),
                  "reason": "eval.lesion_rule: off"}
    return _with_largest_region(record, seen) if largest_region == "validation" else record


def _with_largest_region(record: dict, seen: list[dict]) -> dict:
    """RECORD with `largest_only` set when it raises the mean validation IoU under RECORD's rule."""
    rule = LesionRule.from_dict(record["rule"])
    cut = LesionRule(rule.threshold, rule.min_peak, rule.min_area, largest_only=True)

    def mean_iou(r: LesionRule) -> float:
        called = [(r.calls_lesion(s["peak"], s["largest"]), s) for s in seen]
        return float(np.mean([(s["iou_largest"] if r.largest_only else s["iou"]) if c else float(not s["lesion"])
                              for c, s in called]))

    whole, largest = mean_iou(rule), mean_iou(cut)
    kept = largest > whole + 1e-9
    return {**record, "rule": (cut if kept else rule).as_dict(),
            "largest_region": {"val_iou_whole": whole, "val_iou_largest_only": largest, "kept": kept}}


def _image_level(seen: list[dict], threshold: float, max_sensitivity_drop: float) -> dict:
    """The image-level decision: the most normal images empty without losing lesion images."""
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
