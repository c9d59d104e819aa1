"""Test-time augmentation as part of the served network, so that the evaluated, the exported and the served forms
are one graph: the masks scored are the masks served, and the gate's latency is the whole form's."""
from __future__ import annotations

import torch
from torch import nn

TTA_FORMS = ("none", "hflip")


class FlipAveraged(nn.Module):
    """The image and its horizontal mirror in one batch (one pass, weights and BatchNorm folding shared), the
    mirror's logits flipped back and the two averaged. A vertical flip would put the probe at the bottom."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.in_channels, self.num_classes = network.in_channels, network.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        logits = self.network(torch.cat([x, x.flip(-1)]))
        return (logits[:n] + logits[n:].flip(-1)) / 2


def served_network(network: nn.Module, tta: str = "none") -> nn.Module:
    """NETWORK in the serving form TTA (eval.tta)."""
    if tta == "hflip":
        return FlipAveraged(network)
    if tta != "none":
        raise ValueError(f"eval.tta: unknown form {tta!r}; the forms are {', '.join(TTA_FORMS)}")
    return network
