"""Deep supervision (train.deep_supervision): training-only 1x1 side heads on CMUNeXt's decoder levels 1-3, their
logits brought up to full size and scored with the same loss. Only the wrapped network is validated, averaged and
saved, so the served model is CMUNeXt as it is, parameter for parameter."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .cmunext import CMUNeXt

SIDE_LEVELS = (1, 2, 3)  # the decoder's outputs at 1/2, 1/4 and 1/8 of the input size


class DeeplySupervised(nn.Module):
    def __init__(self, model: CMUNeXt) -> None:
        super().__init__()
        self.model = model
        self.sides = nn.ModuleList(nn.Conv2d(model.dims[level], model.num_classes, 1) for level in SIDE_LEVELS)

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, list[Tensor]]:
        """In training: the network's logits and the side heads' (at the logits' size); in eval: the logits."""
        decoded = self.model.decode(x)
        logits = self.model.head(decoded[0])
        if not self.training:
            return logits
        size = logits.shape[-2:]
        sides = [F.interpolate(head(decoded[level]), size=size, mode="bilinear", align_corners=False)
                 for head, level in zip(self.sides, SIDE_LEVELS)]
        return logits, sides
