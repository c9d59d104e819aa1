"""The reference loss: 0.5 * BCE-with-logits + (1 - soft Dice), Dice per image, mean over the batch.

Normal images (empty masks) take part in the BCE term only: their soft Dice would be smooth / (sum of
probabilities + smooth), about 0 for any prediction but an exactly empty one, so it would add a constant 1
and no useful gradient. On a batch of lesion images the loss is the reference's, unchanged."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class BCEDiceLoss(nn.Module):
    def __init__(self, bce_weight: float = 0.5, smooth: float = 1e-5) -> None:
        super().__init__()
        self.bce_weight, self.smooth = bce_weight, smooth

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        target = target.to(logits.dtype)
        bce = F.binary_cross_entropy_with_logits(logits, target)
        prob = torch.sigmoid(logits).flatten(1)
        target = target.flatten(1)
        lesion = target.sum(1) > 0
        if not lesion.any():
            return self.bce_weight * bce
        prob, target = prob[lesion], target[lesion]
        dice = (2 * (prob * target).sum(1) + self.smooth) / (prob.sum(1) + target.sum(1) + self.smooth)
        return self.bce_weight * bce + (1 - dice.mean())
