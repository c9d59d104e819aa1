"""Variant registry: small registered factory functions over one configurable class (timm style)."""
from __future__ import annotations

from collections.abc import Callable

from .cmunext import CMUNeXt

_FACTORIES: dict[str, Callable[..., CMUNeXt]] = {}

# Trainable parameters for 3 input channels and 1 class, from the reference implementation.
REFERENCE_PARAMS = {"cmunext_s": 417_505, "cmunext": 3_149_185, "cmunext_l": 8_286_721}
# Convolution MACs at 256x256 (reference table); used for compute-floor estimates.
REFERENCE_GMACS_256 = {"cmunext_s": 1.01, "cmunext": 7.23, "cmunext_l": 16.85}


def register(fn: Callable[..., CMUNeXt]) -> Callable[..., CMUNeXt]:
    _FACTORIES[fn.__name__] = fn
    return fn


@register
def cmunext_s(**kwargs) -> CMUNeXt:
    return CMUNeXt(dims=(8, 16, 32, 64, 128), depths=(1, 1, 1, 1, 1), kernels=(3, 3, 7, 7, 9), **kwargs)


@register
def cmunext(**kwargs) -> CMUNeXt:
    return CMUNeXt(dims=(16, 32, 128, 160, 256), depths=(1, 1, 1, 3, 1), kernels=(3, 3, 7, 7, 7), **kwargs)


@register
def cmunext_l(**kwargs) -> CMUNeXt:
    return CMUNeXt(dims=(32, 64, 128, 256, 512), depths=(1, 1, 1, 6, 3), kernels=(3, 3, 7, 7, 7), **kwargs)


def list_models() -> list[str]:
    return list(_FACTORIES)


def create_model(name: str, in_channels: int = 3, num_classes: int = 1) -> CMUNeXt:
    if name not in _FACTORIES:
        raise ValueError(f"unknown model variant {name!r}; choose one of: {', '.join(_FACTORIES)}")
    if in_channels < 1 or num_classes < 1:
        raise ValueError(f"in_channels and num_classes must be >= 1, got {in_channels} and {num_classes}")
    return _FACTORIES[name](in_channels=in_channels, num_classes=num_classes)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
