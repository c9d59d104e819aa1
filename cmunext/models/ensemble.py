"""An ensemble of fold models as one network (train.ensemble): the members' logits averaged in one graph, so the
ensemble is evaluated, exported, timed and served as a single model, like the test-time augmentation around it."""
from __future__ import annotations

import torch
from torch import nn


class LogitAveraged(nn.Module):
    """The mean of the members' logits; each member is a whole CMUNeXt with its own weights."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        self.members = nn.ModuleList(members)
        self.in_channels, self.num_classes = members[0].in_channels, members[0].num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(0)


def member_count(model: nn.Module) -> int:
    """1 for a bare network, the number of members for an ensemble."""
    return len(model.members) if isinstance(model, LogitAveraged) else 1
