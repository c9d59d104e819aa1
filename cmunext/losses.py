"""The reference loss: 0.5 * BCE-with-logits + (1 - soft Dice), Dice per image, mean over the batch."""
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
        dice = (2 * (prob * target).sum(1) + self.smooth) / (prob.sum(1) + target.sum(1) + self.smooth)
        return self.bce_weight * bce + (1 - dice.mean())
