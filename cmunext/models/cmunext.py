"""The CMUNeXt network: a five-level U-shape over CMUNeXt and Skip-Fusion blocks."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .blocks import CMUNeXtBlock, SkipFusion, UpBlock, conv_block

DOWNSAMPLING = 16  # four 2x max-pools


def check_input_size(height: int, width: int) -> None:
    """Raise a ValueError naming the bad size and the nearest valid one."""
    bad = [(name, v) for name, v in (("height", height), ("width", width)) if v <= 0 or v % DOWNSAMPLING]
    if bad:
        def nearest(v: int) -> int:
            return max(DOWNSAMPLING, int(round(v / DOWNSAMPLING)) * DOWNSAMPLING)

        detail = ", ".join(f"{name} {v} (nearest valid: {nearest(v)})" for name, v in bad)
        raise ValueError(
            f"CMUNeXt needs height and width that are multiples of {DOWNSAMPLING}; got {height}x{width}: {detail}"
        )


class CMUNeXt(nn.Module):
    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1,
        dims: Sequence[int] = (16, 32, 128, 160, 256),
        depths: Sequence[int] = (1, 1, 1, 3, 1),
        kernels: Sequence[int] = (3, 3, 7, 7, 7),
    ) -> None:
        super().__init__()
        if not (len(dims) == len(depths) == len(kernels) == 5):
            raise ValueError("dims, depths and kernels need one entry per level (5)")
        self.in_channels, self.num_classes, self.dims = in_channels, num_classes, tuple(dims)
        self.stem = conv_block(in_channels, dims[0])
        self.encoders = nn.ModuleList(
            CMUNeXtBlock(dims[max(i - 1, 0)], dims[i], depths[i], kernels[i]) for i in range(5)
        )
        self.pool = nn.MaxPool2d(2, 2)
        # decoders[i] brings level i+1 up to level i (i = 3..0)
        self.ups = nn.ModuleList(UpBlock(dims[i + 1], dims[i]) for i in range(4))
        self.fusions = nn.ModuleList(SkipFusion(2 * dims[i], dims[i]) for i in range(4))
        self.head = nn.Conv2d(dims[0], num_classes, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.decode(x)[0])

    def decode(self, x: Tensor) -> list[Tensor]:
        """The decoder's output at each level, finest (level 0, full size) first; levels 1-3 feed deep supervision."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input N x {self.in_channels} x H x W, got {tuple(x.shape)}")
        check_input_size(x.shape[2], x.shape[3])
        skips = []
        h = self.encoders[0](self.stem(x))
        skips.append(h)
        for level in range(1, 5):
            h = self.encoders[level](self.pool(h))
            skips.append(h)
        decoded = []
        for level in range(3, -1, -1):
            h = self.fusions[level](torch.cat([skips[level], self.ups[level](h)], dim=1))
            decoded.insert(0, h)
        return decoded
