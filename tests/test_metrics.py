import numpy as np
import pytest
import torch

from cmunext.losses import BCEDiceLoss, loss_label, lovasz_hinge
from cmunext.metrics import aggregate, hd95, image_metrics, paired_difference, pooled_iou_dice


def masks(*rows):
    return np.array(rows, dtype=bool)


def test_hand_computed_case():
    pred = masks([1, 1, 0, 0], [1, 1, 0, 0])
    gt = masks([0, 1, 1, 0], [0, 1, 1, 0])
    m = image_metrics(pred, gt)
    # TP=2, FP=2, FN=2, TN=2
    assert (m.tp, m.fp, m.fn, m.tn) == (2, 2, 2, 2)
    assert m.iou == pytest.approx(2 / 6, abs=1e-5)
    assert m.dice == pytest.approx(0.5, abs=1e-5)
    assert m.sensitivity == m.specificity == m.precision == m.accuracy == 0.5
    assert m.hd95 == pytest.approx(1.0)


def test_probabilities_are_thresholded():
    prob = np.array([[0.2, 0.6], [0.7, 0.4]], dtype=np.float32)
    gt = np.array([[0, 255], [255, 0]], dtype=np.uint8)
    assert image_metrics(prob, gt).iou == pytest.approx(1.0)
    assert image_metrics(prob, gt, threshold=0.65).iou == pytest.approx(0.5, abs=1e-5)


def test_both_empty_is_a_perfect_score():
    empty = np.zeros((8, 8), bool)
    m = image_metrics(empty, empty)
    assert m.iou == pytest.approx(1.0) and m.dice == pytest.approx(1.0)
    assert m.sensitivity == m.specificity == m.precision == m.accuracy == 1.0
    assert m.hd95 == 0.0


def test_missed_lesion_and_false_alarm():
    empty, lesion = np.zeros((6, 8), bool), np.zeros((6, 8), bool)
    lesion[2:4, 2:4] = True
    missed = image_metrics(empty, lesion)
    assert missed.iou == pytest.approx(0, abs=1e-4) and missed.sensitivity == 0 and missed.precision == 0
    assert missed.hd95 == pytest.approx(10.0)  # the image diagonal, sqrt(6^2 + 8^2)
    alarm = image_metrics(lesion, empty)
    assert alarm.iou == pytest.approx(0, abs=1e-4) and alarm.sensitivity == 1.0 and alarm.precision == 0
    assert alarm.specificity == pytest.approx(44 / 48)


def test_hd95_of_shifted_square():
    a = np.zeros((40, 40), bool)
    a[10:20, 10:20] = True
    b = np.roll(a, 3, axis=1)
    assert hd95(a, b) == pytest.approx(3.0)


def test_aggregates_and_pooled():
    gt = np.zeros((10, 10), bool)
    gt[:5] = True
    per = [image_metrics(gt, gt), image_metrics(np.zeros_like(gt), gt)]
    agg = aggregate(per, n_boot=200)
    assert agg["iou"].value == pytest.approx(0.5, abs=1e-4)
    assert agg["iou"].low <= agg["iou"].value <= agg["iou"].high
    pooled = pooled_iou_dice(per, n_boot=200)
    assert pooled["pooled_iou"].value == pytest.approx(50 / 100, abs=1e-4)


def test_paired_difference_detects_a_consistent_gain():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.5, 0.8, 200)
    diff = paired_difference(base + 0.05 + rng.normal(0, 0.01, 200), base)
    assert 0.04 < diff.low < diff.value < diff.high < 0.06
    with pytest.raises(ValueError, match="same images"):
        paired_difference([1, 2], [1, 2, 3])


def test_loss_matches_reference_formula():
    torch.manual_seed(0)
    logits, target = torch.randn(3, 1, 8, 8), (torch.rand(3, 1, 8, 8) > 0.5).float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    p, t = torch.sigmoid(logits).view(3, -1), target.view(3, -1)
    dice = (2 * (p * t).sum(1) + 1e-5) / (p.sum(1) + t.sum(1) + 1e-5)
    expected = 0.5 * bce + 1 - dice.sum() / 3
    assert BCEDiceLoss()(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_loss_on_normal_images_is_bce_only():
    """An empty mask adds no constant Dice term: a confident empty prediction costs almost nothing."""
    import torch
    loss = BCEDiceLoss()
    empty = torch.zeros(2, 1, 8, 8)
    assert loss(torch.full_like(empty, -12.0), empty).item() < 1e-4
    logits = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, empty)
    assert loss(logits, empty).item() == pytest.approx(0.5 * bce.item())
    # a mixed batch: Dice over the lesion image only, BCE over both
    target = torch.zeros(2, 1, 8, 8)
    target[0, 0, 2:5, 2:5] = 1
    prob = torch.sigmoid(logits[:1]).flatten(1)
    t = target[:1].flatten(1)
    dice = (2 * (prob * t).sum(1) + 1e-5) / (prob.sum(1) + t.sum(1) + 1e-5)
    expected = 0.5 * torch.nn.functional.binary_cross_entropy_with_logits(logits, target) + 1 - dice.mean()
    assert loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_sampler_brings_lesions_up_when_normals_dominate():
    import numpy as np
    from cmunext.engine.trainer import EpochSampler
    has_lesion = np.array([True] * 2 + [False] * 18)
    sampler = EpochSampler(20, seed=1, has_lesion=has_lesion, min_lesion_share=0.5)
    drawn = []
    for epoch in range(200):
        sampler.set_epoch(epoch)
        drawn += list(sampler)
    assert len(drawn) == 4000 and abs(np.mean(has_lesion[drawn]) - 0.5) < 0.03
    sampler.set_epoch(7)
    assert list(sampler) == list(sampler)  # a pure function of (seed, epoch): resumable
    plain = EpochSampler(20, seed=1, has_lesion=np.ones(20, bool), min_lesion_share=0.5)
    assert sorted(plain) == list(range(20))  # enough lesions: the plain permutation, every image once
    assert sorted(EpochSampler(20, 1, has_lesion, min_lesion_share=0.05)) == list(range(20))


def test_lovasz_hinge_is_the_jaccard_loss_where_each_pixel_is_either_right_with_margin_or_wrong():
    """On errors of exactly 0 or 1 the Lovász extension equals the Jaccard loss of the wrong pixels' set:
    1 - IoU of the mask they make."""
    target = torch.zeros(1, 1, 8, 8)
    target[0, 0, 2:6, 2:6] = 1
    logits = 2 * target - 1  # right, with a margin of exactly 1: error 0
    assert lovasz_hinge(logits, target).item() == pytest.approx(0.0)
    logits[0, 0, 2, 2:6] = 0  # 4 lesion pixels missed (error 1)
    logits[0, 0, 0, 0:2] = 0  # 2 background pixels called lesion (error 1)
    predicted = target.clone()
    predicted[0, 0, 2, 2:6], predicted[0, 0, 0, 0:2] = 0, 1
    iou = (predicted * target).sum() / ((predicted + target) > 0).sum()
    assert lovasz_hinge(logits, target).item() == pytest.approx(1 - iou.item())


def test_a_lovasz_weight_adds_the_weighted_hinge_and_a_finite_gradient():
    torch.manual_seed(1)
    logits = torch.randn(3, 1, 8, 8, requires_grad=True)
    target = (torch.rand(3, 1, 8, 8) > 0.6).float()
    target[2] = 0  # a normal image: the hinge of its most lesion-like pixel
    loss = BCEDiceLoss(lovasz_weight=0.5)(logits, target)
    expected = BCEDiceLoss()(logits, target) + 0.5 * lovasz_hinge(logits, target)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_loss_label_names_every_term_the_trainer_minimises():
    assert loss_label() == "0.5·BCE + Dice"
    assert loss_label(lovasz_weight=1.0) == "0.5·BCE + Dice + 1·Lovász"
    assert loss_label(0.5, deep_supervision=0.4) == "0.5·BCE + Dice + 0.5·Lovász + 0.4·(the same on the side heads)"
