"""The reference loss: 0.5 * BCE-with-logits + (1 - soft Dice), Dice per image, mean over the batch; optionally plus
a weighted Lovász hinge (Berman et al., CVPR 2018), a convex surrogate of each image's IoU (train.lovasz_weight).

Normal images (empty masks) take part in the BCE term only: their soft Dice would be smooth / (sum of
probabilities + smooth), about 0 for any prediction but an exactly empty one, so it would add a constant 1
and no useful gradient. On a batch of lesion images the loss is the reference's, unchanged. The Lovász term is
taken on every image: on a normal one it is the hinge of its most lesion-like pixel, which an empty mask zeroes."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BCE_WEIGHT = 0.5  # the reference loss's weight of the BCE term


def _lovasz_grad(target_sorted: Tensor) -> Tensor:
    """The Jaccard loss's gradient along pixels sorted by decreasing error (Berman et al., Alg. 1)."""
    positives = target_sorted.sum()
    intersection = positives - target_sorted.cumsum(0)
    union = positives + (1 - target_sorted).cumsum(0)
    jaccard = 1 - intersection / union
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])


def lovasz_hinge(logits: Tensor, target: Tensor) -> Tensor:
    """Mean over the batch of each image's Lovász hinge; LOGITS and TARGET are N x ... with 0/1 targets."""
    losses = []
    for image_logits, image_target in zip(logits.flatten(1), target.to(logits.dtype).flatten(1)):
        errors = 1 - image_logits * (2 * image_target - 1)
        errors_sorted, order = torch.sort(errors, descending=True)
        losses.append(torch.dot(F.relu(errors_sorted), _lovasz_grad(image_target[order])))
    return torch.stack(losses).mean()


class BCEDiceLoss(nn.Module):
    def __init__(self, bce_weight: float = BCE_WEIGHT, smooth: float = 1e-5, lovasz_weight: float = 0.0) -> None:
        super().__init__()
        self.bce_weight, self.smooth, self.lovasz_weight = bce_weight, smooth, lovasz_weight

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        loss = self._bce_dice(logits, target.to(logits.dtype))
        if self.lovasz_weight:
            loss = loss + self.lovasz_weight * lovasz_hinge(logits, target)
        return loss

    def _bce_dice(self, logits: Tensor, target: Tensor) -> Tensor:
        bce = F.binary_cross_entropy_with_logits(logits, target)
        prob = torch.sigmoid(logits).flatten(1)
        target = target.flatten(1)
        lesion = target.sum(1) > 0
        if not lesion.any():
            return self.bce_weight * bce
        prob, target = prob[lesion], target[lesion]
        dice = (2 * (prob * target).sum(1) + self.smooth) / (prob.sum(1) + target.sum(1) + self.smooth)
        return self.bce_weight * bce + (1 - dice.mean())


def loss_label(lovasz_weight: float = 0.0, deep_supervision: float = 0.0, bce_weight: float = BCE_WEIGHT) -> str:
    """What the trainer minimises, in words for a plot's axis: e.g. "0.5·BCE + Dice + 1·Lovász"."""
    label = f"{bce_weight:g}·BCE + Dice"
    if lovasz_weight:
        label += f" + {lovasz_weight:g}·Lovász"
    if deep_supervision:
        label += f" + {deep_supervision:g}·(the same on the side heads)"
    return label
