"""The gate's decision function, branch by branch: each check failing alone, ties at the thresholds, and the
optional checks on lesion images, normal images, detection and a named class (hand-made evaluations, validated
into the typed contract the pipeline's steps hand over: cmunext/contracts.py)."""
from __future__ import annotations

import math

import pytest

from cmunext.config import GateConfig
from cmunext.evaluation import breakdown
from cmunext.gate import decide, report_markdown


def est(value: float, low: float | None = None) -> dict:
    return {"value": value, "ci95_low": value if low is None else low, "ci95_high": value}


def evaluation(iou=0.7, p95=100.0, champion=None, rows=None, classes=None) -> dict:
    ev = {"images": 4, "metrics": {"iou": est(iou), "dice": est(0.8), "pooled_iou": est(iou)},
          "latency": {"p50_ms": p95 / 2, "p95_ms": p95}, "champion": champion}
    if rows is not None:
        ev["breakdown"] = breakdown(rows, classes, n_boot=200)
    return ev


def champion(diff_low=0.0, p95=100.0, classes=None) -> dict:
    return {"version": "3", "latency": {"p95_ms": p95}, "comparison": {"iou_diff": est(0.0, diff_low)},
            "classes": classes or {}}


def row(stem, tp, fp, fn, tn=100) -> dict:
    iou = (tp + 1e-5) / (tp + fp + fn + 1e-5)
    return {"stem": stem, "tp": tp, "fp": fp, "fn": fn, "tn": tn, "iou": iou, "dice": 2 * iou / (1 + iou)}


GATE = GateConfig(min_iou=0.5, max_latency_ms=200, iou_tolerance=0.02, max_latency_ratio=1.5)


def failed(decision) -> list[str]:
    return [c.name for c in decision.checks if not c.passed]


def test_everything_passes_and_ties_pass():
    assert decide(evaluation(), GATE).decision == "promote"
    tie = decide(evaluation(iou=0.5, p95=200.0, champion=champion(diff_low=-0.02, p95=200 / 1.5)), GATE)
    assert tie.decision == "promote", tie.reasons  # >= and <= hold at equality
    assert tie.reasons == ["all gates passed"]


@pytest.mark.parametrize("ev,name", [
    (evaluation(iou=0.4999), "test IoU"),
    (evaluation(p95=200.01), "p95 latency"),
    (evaluation(champion=champion(diff_low=-0.0201)), "IoU difference vs champion (95% CI lower bound)"),
    (evaluation(p95=151.0, champion=champion(p95=100.0)), "p95 latency ratio vs champion (fp32)"),
    # the ratio compares both models in fp32: a faster shipped form (bf16, 50 ms) does not hide a slower model
    ({**evaluation(p95=50.0, champion=champion(p95=100.0)),
      "latency": {"p95_ms": 50.0, "fp32_p95_ms": 151.0}}, "p95 latency ratio vs champion (fp32)"),
])
def test_each_check_fails_alone(ev, name):
    d = decide(ev, GATE)
    assert d.decision == "reject" and failed(d) == [name]
    assert any(name in r and "misses" in r for r in d.reasons)
    assert "**fail**" in report_markdown(d, ev)


def test_champion_checks_only_with_a_champion():
    names = [c.name for c in decide(evaluation(), GATE).checks]
    assert names == ["test IoU", "p95 latency"]
    assert decide(evaluation(champion=champion()), GATE).champion_version == "3"


# ---- lesion images, normal images, detection, classes ----------------------------------------------------------

ROWS = [row("b1", 80, 20, 0), row("b2", 50, 0, 50),      # lesion images: IoU 0.8, 0.5
        row("n1", 0, 0, 0), row("n2", 0, 10, 0, tn=90)]  # normal images: one predicted empty, one with 10% FP
CLASSES = {"b1": "benign", "b2": "malignant", "n1": "normal", "n2": "normal"}


def test_breakdown_by_hand():
    b = breakdown(ROWS, CLASSES, n_boot=200)
    assert b["lesion"]["images"] == 2 and b["lesion"]["iou"]["value"] == pytest.approx(0.65)
    assert b["normal"]["images"] == 2
    assert b["normal"]["predicted_empty"]["value"] == 0.5
    assert b["normal"]["false_positive_area"]["value"] == pytest.approx((0 + 0.1) / 2)
    assert b["detection"] == {"sensitivity": est(1.0) | {"ci95_high": 1.0}, "specificity": b["normal"]["predicted_empty"]}
    assert b["classes"]["malignant"]["iou"]["value"] == pytest.approx(0.5)
    assert b["classes"]["normal"]["images"] == 2 and set(b["classes"]) == {"benign", "malignant", "normal"}
    lesion_only = breakdown(ROWS[:2], None, n_boot=200)
    assert lesion_only["normal"]["false_positive_area"] is None and lesion_only["classes"] == {}


@pytest.mark.parametrize("setting,value,passes", [
    ("min_lesion_iou", 0.65, True), ("min_lesion_iou", 0.66, False),
    ("min_detection_sensitivity", 1.0, True),
    ("min_detection_specificity", 0.5, True), ("min_detection_specificity", 0.51, False),
])
def test_breakdown_checks(setting, value, passes):
    gate = GATE.model_copy(update={setting: value})
    d = decide(evaluation(rows=ROWS, classes=CLASSES), gate)
    assert (d.decision == "promote") is passes, d.reasons


def test_a_check_with_nothing_to_measure_fails_closed():
    gate = GATE.model_copy(update={"min_detection_specificity": 0.9})
    d = decide(evaluation(rows=ROWS[:2]), gate)
    assert d.decision == "reject"
    assert "no normal (empty-mask) image in the test split" in d.reasons[0]
    assert math.isnan(d.checks[-1].value)


def test_noninferiority_on_a_named_class():
    gate = GATE.model_copy(update={"noninferior_class": "malignant", "class_iou_tolerance": 0.05})
    ok = champion(classes={"malignant": {"iou_diff": est(-0.01, -0.05), "images": 9}})
    assert decide(evaluation(champion=ok), gate).decision == "promote"
    worse = champion(classes={"malignant": {"iou_diff": est(-0.03, -0.0501), "images": 9}})
    d = decide(evaluation(champion=worse), gate)
    assert failed(d) == ["IoU difference vs champion on class 'malignant' (95% CI lower bound)"]
    absent = decide(evaluation(champion=champion()), gate)
    assert absent.decision == "reject" and "no test image of class 'malignant'" in absent.reasons[0]
    assert decide(evaluation(), gate).decision == "promote"  # no champion: nothing to be inferior to


def test_report_shows_the_breakdown():
    ev = evaluation(rows=ROWS, classes=CLASSES)
    text = report_markdown(decide(ev, GATE), ev)
    assert "| with a lesion | 2 | 0.6500" in text and "| class malignant | 1 | 0.5000" in text
    assert "predicted empty 50.0%" in text and "sensitivity 100.0%, specificity 50.0%" in text


def test_a_malformed_evaluation_names_the_missing_field():
    from pydantic import ValidationError
    ev = evaluation()
    del ev["latency"]["p95_ms"]
    with pytest.raises(ValidationError, match=r"latency\.p95_ms"):
        decide(ev, GATE)

