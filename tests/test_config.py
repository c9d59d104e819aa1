import pytest

from cmunext.config import ConfigError, load_config
from pathlib import Path

CONFIGS = sorted(Path(__file__).parents[1].joinpath("configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.data.image_size % 16 == 0


def test_overrides_are_typed():
    cfg = load_config(None, ["train.epochs=3", "train.lr=0.5", "data.augment=false", "model.variant=cmunext"])
    assert (cfg.train.epochs, cfg.train.lr, cfg.data.augment, cfg.model.variant) == (3, 0.5, False, "cmunext")


def test_paper_defaults_are_the_reference_recipe():
    t = load_config(None).train
    assert (t.lr, t.momentum, t.weight_decay, t.poly_power, t.batch_size, t.epochs, t.seed) == (0.01, 0.9, 1e-4, 0.9, 8, 300, 41)


@pytest.mark.parametrize("override,message", [
    ("train.epoch=3", "train.epoch: unknown key"),
    ("train.epochs=zero", "train.epochs"),
    ("data.image_size=100", "data.image_size"),
    ("model.variant=unet", "model.variant"),
    ("data.split_ratios=[0.5,0.5,0.5]", "split_ratios"),
    ("noequals", "key=value"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_config(None, [override])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
