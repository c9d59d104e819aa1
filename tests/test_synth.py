"""The synthetic generator's two styles (cmunext/data/synth.py): a recipe tuned on one is checked on data made
differently (configs/synth-convex.yaml)."""
from __future__ import annotations

import numpy as np
import pytest

from cmunext.data.synth import synth_sample


def test_convex_scans_are_fans_with_every_lesion_inside():
    for i in range(6):
        image, mask = synth_sample(np.random.default_rng([1, i]), style="convex")
        h, w = image.shape
        assert image[0, 0] == image[0, w - 1] == 0, "the fan leaves the top corners black"
        assert mask.any() and image[mask > 0].min() > 0, "a lesion lies inside the field of view"
        assert (image > 0).mean() < 0.95


def test_the_two_styles_differ_where_a_recipe_could_have_been_tuned():
    def summary(style: str) -> tuple[float, float]:
        pairs = [synth_sample(np.random.default_rng([2, i]), style=style) for i in range(12)]
        gain = np.mean([im[im > 0].mean() for im, _ in pairs])
        black = np.mean([(im == 0).mean() for im, _ in pairs])
        return gain, black

    linear, convex = summary("linear"), summary("convex")
    assert convex[0] < linear[0] * 0.9  # darker
    assert convex[1] > linear[1] + 0.1  # black outside the fan


def test_normal_scans_in_either_style_have_empty_masks():
    for style in ("linear", "convex"):
        _, mask = synth_sample(np.random.default_rng(5), empty=True, style=style)
        assert not mask.any()


def test_an_unknown_style_fails_at_configure_naming_the_key():
    from cmunext.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="data.synth_style"):
        load_config(None, ["data.synth_style=phased"])
