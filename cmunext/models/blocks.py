"""Building blocks of CMUNeXt (Tang et al., ISBI 2024).

Every convolution carries a bias, and the CMUNeXt and Skip-Fusion blocks apply
GELU *before* BatchNorm: both details are needed to match the reference
parameter counts and behaviour.
"""
from __future__ import annotations

from torch import Tensor, nn


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 conv -> BN -> ReLU: the stem, and the width change after each CMUNeXt block."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=True),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def _act_norm(conv: nn.Conv2d, channels: int) -> nn.Sequential:
    return nn.Sequential(conv, nn.GELU(), nn.BatchNorm2d(channels))


class Residual(nn.Module):
    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x) + x


class CMUNeXtBlock(nn.Module):
    """`depth` x (large-kernel depthwise residual, inverted 1x1 bottleneck), then a conv block."""

    def __init__(self, c_in: int, c_out: int, depth: int = 1, kernel_size: int = 3) -> None:
        super().__init__()
        hidden = 4 * c_in
        self.mixers = nn.Sequential(
            *[
                nn.Sequential(
                    Residual(
                        _act_norm(
                            nn.Conv2d(c_in, c_in, kernel_size, groups=c_in, padding=kernel_size // 2),
                            c_in,
                        )
                    ),
                    _act_norm(nn.Conv2d(c_in, hidden, kernel_size=1), hidden),
                    _act_norm(nn.Conv2d(hidden, c_in, kernel_size=1), c_in),
                )
                for _ in range(depth)
            ]
        )
        self.out = conv_block(c_in, c_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.mixers(x))


class UpBlock(nn.Sequential):
    """Bilinear 2x upsampling -> 3x3 conv -> BN -> ReLU."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            *conv_block(c_in, c_out),
        )


class SkipFusion(nn.Sequential):
    """Fuses [skip, upsampled]: 2-group 3x3 conv, then an inverted 1x1 bottleneck."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(
            _act_norm(nn.Conv2d(c_in, c_in, kernel_size=3, padding=1, groups=2), c_in),
            _act_norm(nn.Conv2d(c_in, 4 * c_out, kernel_size=1), 4 * c_out),
            _act_norm(nn.Conv2d(4 * c_out, c_out, kernel_size=1), c_out),
        )
