import pytest
import torch

import cmunext
from cmunext.models import REFERENCE_PARAMS, count_parameters

VARIANTS = cmunext.list_models()


def test_registry_lists_the_three_variants():
    assert VARIANTS == ["cmunext_s", "cmunext", "cmunext_l"]


@pytest.mark.parametrize("name", VARIANTS)
def test_parameter_count_matches_reference(name):
    assert count_parameters(cmunext.create_model(name)) == REFERENCE_PARAMS[name]


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("size", [64, 256])
def test_forward_and_backward_shapes(name, in_channels, size):
    torch.manual_seed(0)
    model = cmunext.create_model(name, in_channels=in_channels)
    x = torch.randn(2, in_channels, size, size, requires_grad=True)
    y = model(x)
    assert y.shape == (2, 1, size, size)
    y.mean().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    assert all(p.grad is not None for p in model.parameters())


def test_non_square_sizes_and_many_classes():
    model = cmunext.create_model("cmunext_s", in_channels=2, num_classes=4).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 2, 48, 80)).shape == (1, 4, 48, 80)


@pytest.mark.parametrize("h,w,nearest", [(100, 64, "96"), (64, 250, "256")])
def test_bad_size_names_the_size_and_nearest_valid(h, w, nearest):
    model = cmunext.create_model("cmunext_s").eval()
    with pytest.raises(ValueError, match=rf"{h}x{w}.*nearest valid: {nearest}"):
        model(torch.randn(1, 3, h, w))


def test_unknown_variant_lists_choices():
    with pytest.raises(ValueError, match="cmunext_s, cmunext, cmunext_l"):
        cmunext.create_model("cmunext_xl")


def test_importing_cmunext_stays_light():
    import subprocess
    import sys

    code = "import sys, cmunext; heavy = {'kfp', 'mlflow', 'bentoml', 'great_expectations'} & set(sys.modules); print(sorted(heavy))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
