"""The lesion-free rule: its masks, its choice on the validation split, and the choice's figures against the scorer's."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import ROOT

from cmunext.no_lesion import choose_rule
from cmunext_serving.lesion_rule import LesionRule, evidence


def _map(peak: float, region: int, side: int = 100) -> np.ndarray:
    """A probability map with one square region of REGION pixels per side at PEAK, 0.1 elsewhere."""
    prob = np.full((side, side), 0.1, np.float32)
    prob[10:10 + region, 10:10 + region] = peak
    return prob


def test_the_rule_empties_weak_or_small_findings_and_keeps_the_rest():
    rule = LesionRule(0.5, min_peak=0.8, min_area=0.01)  # 100 pixels of 10,000
    assert rule.mask(_map(0.95, 20)).sum() == 400            # strong and large: unchanged
    assert not rule.mask(_map(0.7, 20)).any()                 # too weak
    assert not rule.mask(_map(0.95, 5)).any()                 # too small: 25 pixels
    two = _map(0.95, 5)
    two[60:75, 60:75] = 0.9                                   # a second, larger region decides
    assert rule.mask(two).sum() == 25 + 225
    assert evidence(two) == (pytest.approx(0.95), 225 / 10_000)


def test_an_inactive_rule_is_the_plain_threshold():
    prob = np.random.default_rng(0).random((37, 53)).astype(np.float32)
    assert np.array_equal(LesionRule(0.4).mask(prob), prob > 0.4)
    assert not LesionRule(0.5, min_peak=0.3).active and LesionRule(0.5, min_area=1e-4).active
    assert LesionRule.from_dict(None, 0.3) == LesionRule(0.3)
    assert LesionRule.from_dict(LesionRule(0.5, 0.9, 0.002).as_dict()) == LesionRule(0.5, 0.9, 0.002)


def test_a_lesion_mask_can_be_cut_to_its_largest_region():
    two = _map(0.95, 5)
    two[60:75, 60:75] = 0.9
    cut = LesionRule(0.5, largest_only=True)
    assert cut.mask(two).sum() == 225 and cut.mask(two)[60:75, 60:75].all()
    assert cut.changes_masks and not cut.active  # it never decides whether an image shows a lesion
    assert not cut.mask(np.full((20, 20), 0.1, np.float32)).any()
    assert LesionRule.from_dict(cut.as_dict()) == cut
    assert not LesionRule.from_dict(LesionRule(0.5, 0.9, 0.002).as_dict()).largest_only  # older records: whole


def test_the_largest_region_is_kept_only_when_validation_says_so():
    def seen(iou_whole: float, iou_cut: float) -> list[dict]:
        return [{"stem": "a", "lesion": True, "peak": 0.99, "largest": 0.05, "iou": iou_whole, "iou_largest": iou_cut},
                {"stem": "b", "lesion": True, "peak": 0.98, "largest": 0.04, "iou": 0.7, "iou_largest": 0.7}]
    better = choose_rule(seen(0.5, 0.8), 0.5, largest_region="validation")
    assert LesionRule.from_dict(better["rule"]).largest_only
    assert better["largest_region"] == {"val_iou_whole": pytest.approx(0.6), "val_iou_largest_only": pytest.approx(0.75),
                                        "kept": True}
    worse = choose_rule(seen(0.8, 0.5), 0.5, largest_region="validation")
    assert not LesionRule.from_dict(worse["rule"]).largest_only and not worse["largest_region"]["kept"]
    assert "largest_region" not in choose_rule(seen(0.5, 0.8), 0.5)  # eval.largest_region: off
    alone = choose_rule(seen(0.5, 0.8), 0.5, largest_region="validation", image_level=False)
    assert LesionRule.from_dict(alone["rule"]) == LesionRule(0.5, largest_only=True)


def _seen(lesions: list[tuple[float, float]], normals: list[tuple[float, float]]) -> list[dict]:
    return ([{"stem": f"l{i}", "lesion": True, "peak": p, "largest": a} for i, (p, a) in enumerate(lesions)]
            + [{"stem": f"n{i}", "lesion": False, "peak": p, "largest": a} for i, (p, a) in enumerate(normals)])


def test_the_choice_empties_normals_without_losing_a_lesion_image():
    lesions = [(0.99, 0.05), (0.97, 0.02), (0.93, 0.004), (0.45, 0.0)]  # the last one is missed with or without
    normals = [(0.3, 0.0), (0.62, 0.0003), (0.85, 0.0008), (0.97, 0.003), (0.99, 0.03)]
    choice = choose_rule(_seen(lesions, normals), 0.5)
    rule = LesionRule.from_dict(choice["rule"])
    assert rule.active and choice["chosen_on"] == "val"
    assert choice["without"] == {"sensitivity": 0.75, "specificity": 0.2}
    assert choice["with"] == {"sensitivity": 0.75, "specificity": 0.6}  # the two larger normal findings stay
    assert all(rule.calls_lesion(p, a) for p, a in lesions[:3])
    tolerant = choose_rule(_seen(lesions, normals), 0.5, max_sensitivity_drop=0.25)  # may lose one of four
    assert tolerant["with"] == {"sensitivity": 0.5, "specificity": 0.8}


def test_without_normal_images_the_rule_stays_off():
    choice = choose_rule(_seen([(0.99, 0.05), (0.6, 0.001)], []), 0.5)
    assert not LesionRule.from_dict(choice["rule"]).active
    assert "no normal image" in choice["reason"] and choice["with"] == choice["without"]


def test_a_choice_on_a_two_to_one_synthetic_set_is_what_the_scorer_sees(tmp_path, monkeypatch):
    """A model trained on a set with two normal images per lesion image: the rule's validation figures, computed
    from the images' evidence, are the ones scoring the same images with the rule's masks gives."""
    from cmunext.config import load_config
    from cmunext.data.layout import list_pairs
    from cmunext.data.preprocess import preprocess
    from cmunext.data.synth import write_synthetic_dataset
    from cmunext.engine.trainer import train
    from cmunext.evaluation import breakdown, score_images
    from cmunext.no_lesion import validation_evidence
    from cmunext.predict import Predictor

    monkeypatch.setenv("CMUNEXT_HOME", str(tmp_path / "home"))
    data = write_synthetic_dataset(tmp_path / "data", 36, seed=5, empty_fraction=2 / 3, progress=False)
    stems = list_pairs(data)
    preprocess(data, {"train": stems[:24], "val": stems[24:], "test": []}, tmp_path / "pre", 64, progress=False)
    weights = train(load_config(ROOT / "configs" / "ci-tiny.yaml", ["train.epochs=3"]), tmp_path / "pre",
                    tmp_path / "run", progress=False).weights
    predictor = Predictor(weights)
    seen = validation_evidence(predictor.probabilities, data, stems[24:], 0.5)
    choice = choose_rule(seen, 0.5)
    assert choice["normal_images"] >= 4 and choice["lesion_images"] >= 1
    rows = score_images(predictor.probabilities, data, stems[24:], LesionRule.from_dict(choice["rule"]), progress=False)
    b = breakdown(rows, n_boot=100)
    plain = score_images(predictor.probabilities, data, stems[24:], 0.5, progress=False)
    unruled = [{k: v for k, v in {**r, **r.get("without_rule", {})}.items() if k != "without_rule"} for r in rows]
    assert unruled == plain  # what the scoring pass kept of the emptied masks is the rule-free score
    assert b["detection"]["specificity"]["value"] == pytest.approx(choice["with"]["specificity"])
    assert b["detection"]["sensitivity"]["value"] == pytest.approx(choice["with"]["sensitivity"])
    assert choice["with"]["sensitivity"] == choice["without"]["sensitivity"]
    assert choice["with"]["specificity"] >= choice["without"]["specificity"]
