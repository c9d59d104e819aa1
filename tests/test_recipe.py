"""The recipe's choices around the network (cmunext/engine/recipe.py, data.augment_policy): schedules, optimisers, the
weights' moving average and the ultrasound augmentation, each trained for real on a few synthetic images."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import ROOT

from cmunext.config import load_config
from cmunext.engine.recipe import learning_rate

CI_TINY = ROOT / "configs" / "ci-tiny.yaml"


def _train_config(*overrides: str):
    return load_config(CI_TINY, list(overrides)).train


def test_the_poly_schedule_is_the_papers():
    tc = _train_config("train.lr=0.01")
    assert [learning_rate(tc, i, 100, 10) for i in (0, 50, 99)] == pytest.approx(
        [0.01, 0.01 * 0.5 ** 0.9, 0.01 * 0.01 ** 0.9])


def test_warm_up_then_cosine():
    tc = _train_config("train.lr=0.001", "train.schedule=cosine", "train.warmup_epochs=2")
    rates = [learning_rate(tc, i, 100, 10) for i in range(100)]
    assert rates[0] == pytest.approx(0.001 / 20) and rates[19] == pytest.approx(0.001)  # linear over 20 steps
    assert np.all(np.diff(rates[:20]) > 0) and np.all(np.diff(rates[20:]) <= 0)
    assert rates[20] == pytest.approx(0.001) and rates[-1] < 0.001 * 0.01


def test_ultrasound_augmentation_keeps_the_probe_at_the_top():
    """No rotate-90 or vertical flip in the ultrasound policy: a bright top band (the probe's near field) stays in the
    top half of every augmented image; the reference policy moves it."""
    from cmunext.data.transforms import train_transform

    image = np.full((64, 64, 3), 40, np.uint8)
    image[:12] = 220
    mask = np.zeros((64, 64), np.uint8)

    def top_share(policy: str) -> float:
        aug = train_transform(64, 3, True, policy)
        outs = [aug(image=image, mask=mask)["image"][..., 0] for _ in range(40)]
        return float(np.mean([o[:32].mean() > o[32:].mean() for o in outs]))

    assert top_share("ultrasound") == 1.0
    assert top_share("reference") < 0.9


def test_adamw_cosine_and_a_moving_average_train_and_resume(tmp_path, synth_dataset):
    """The moving average is what is validated and shipped, and a resumed run carries it on."""
    from cmunext.data.layout import list_pairs
    from cmunext.data.preprocess import preprocess
    from cmunext.engine.checkpoint import CheckpointDir
    from cmunext.engine.trainer import train
    from cmunext.engine.weights import load_weights

    stems = list_pairs(synth_dataset)
    preprocess(synth_dataset, {"train": stems[:16], "val": stems[16:20], "test": stems[20:]}, tmp_path / "pre", 64,
               progress=False)
    cfg = load_config(CI_TINY, ["train.optimizer=adamw", "train.lr=0.002", "train.schedule=cosine",
                                "train.warmup_epochs=1", "train.ema_decay=0.9", "data.augment_policy=ultrasound",
                                "train.epochs=3"])
    first = train(load_config(CI_TINY, [*_overrides(cfg), "train.epochs=2"]), tmp_path / "pre", tmp_path / "run",
                  progress=False)
    resumed = train(cfg, tmp_path / "pre", tmp_path / "run", resume=True, progress=False)
    assert len(first.history) == 2 and len(resumed.history) == 3
    assert all(np.isfinite(h["train_loss"]) for h in resumed.history)
    assert resumed.history[0]["lr"] == pytest.approx(0.002)  # the warm-up ends at the peak rate
    assert resumed.history[-1]["lr"] < 0.002 * 0.1  # the cosine ends near zero
    assert CheckpointDir(tmp_path / "run" / "checkpoints").load_latest()["ema"]["n_averaged"] > 0
    model, _ = load_weights(resumed.weights)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["config"]["train"]["ema_decay"] == 0.9
    assert all(np.isfinite(p.detach().numpy()).all() for p in model.parameters())


def _overrides(cfg) -> list[str]:
    t, d = cfg.train, cfg.data
    return [f"train.optimizer={t.optimizer}", f"train.lr={t.lr}", f"train.schedule={t.schedule}",
            f"train.warmup_epochs={t.warmup_epochs}", f"train.ema_decay={t.ema_decay}",
            f"data.augment_policy={d.augment_policy}"]


def test_the_ablation_ladder_compares_each_row_with_the_kept_row_before(tmp_path, monkeypatch):
    """cmunext/ablation.py on a few synthetic images: every row trained and scored on the same test split, rows after
    the first compared with the kept row they build on (paired), a row not kept left out of the rows after it, the
    table one line per row; BUSI's figures are measured by benchmarks/busi_ablation.py, not here."""
    from cmunext.ablation import load_ladder, markdown_table, run_ladder

    monkeypatch.setenv("CMUNEXT_HOME", str(tmp_path / "home"))
    ladder = tmp_path / "ladder.yaml"
    ladder.write_text(f"base: {CI_TINY}\nrows:\n  - name: as it is\n  - name: ultrasound augmentation\n"
                      "    set: [data.augment_policy=ultrasound]\n  - name: moving average\n    set: [train.ema_decay=0.9]\n"
                      "    kept: false\n"
                      "  - name: flip TTA\n    set: [eval.tta=hflip]\n")
    base, rows = load_ladder(ladder)
    results = run_ladder(base, rows, tmp_path / "out")
    assert [r["name"] for r in results] == ["as it is", "ultrasound augmentation", "moving average", "flip TTA"]
    stems = [[p["stem"] for p in r["measured"]["per_image"]] for r in results]
    assert stems[0] and stems[0] == stems[1] == stems[2] == stems[3]
    # a serving form on the kept row before the one not kept: its weights, not retrained
    assert results[3]["measured"]["weights"] == results[1]["measured"]["weights"] != results[2]["measured"]["weights"]
    assert results[3]["overrides"] == ["data.augment_policy=ultrasound", "eval.tta=hflip"]
    assert results[3]["measured"]["latency"]["artifact"].endswith("+tta:hflip")
    assert results[0]["vs_previous"] is None
    assert results[3]["vs_previous"]["value"] == pytest.approx(
        np.mean([a["iou"] - b["iou"] for a, b in zip(results[3]["measured"]["per_image"],
                                                      results[1]["measured"]["per_image"])]))
    for r in results[1:]:
        d = r["vs_previous"]
        assert d["ci95_low"] <= d["value"] <= d["ci95_high"] and d["includes_zero"] == (d["ci95_low"] <= 0 <= d["ci95_high"])
    table = markdown_table(results).splitlines()
    assert len(table) == 2 + 4 and "flip TTA" in table[-1] and "moving average (**not kept**)" in table[-2]
    published = json.loads((tmp_path / "out" / "results.json").read_text())
    assert published[2]["set"] == ["train.ema_decay=0.9"] and published[2]["kept"] is False


def test_an_unknown_serving_form_fails_at_configure_naming_the_key():
    from cmunext.config import ConfigError

    with pytest.raises(ConfigError, match="eval.tta"):
        load_config(CI_TINY, ["eval.tta=vflip"])


def test_an_ensemble_larger_than_the_folds_trained_fails_at_configure_naming_the_key():
    from cmunext.config import ConfigError

    with pytest.raises(ConfigError, match="train.ensemble"):
        load_config(CI_TINY, ["train.ensemble=3", "train.folds=2"])
    with pytest.raises(ConfigError, match="train.folds"):
        load_config(CI_TINY, ["train.folds=1"])
    assert load_config(CI_TINY, ["eval.largest_region=off"]).eval.largest_region == "off"  # YAML's bare off: false


def test_fold_models_train_as_one_ensemble_whose_members_never_see_validation(tmp_path, synth_dataset):
    """Each member picks its epoch on its own fold of the train split; the file holds both and runs as their mean."""
    import torch

    from cmunext.data.layout import list_pairs
    from cmunext.data.preprocess import preprocess
    from cmunext.engine.ensemble import fold_shards, member_folds
    from cmunext.engine.launch import train_any
    from cmunext.engine.weights import load_weights
    from cmunext.models.ensemble import LogitAveraged

    stems = list_pairs(synth_dataset)
    preprocess(synth_dataset, {"train": stems[:18], "val": stems[18:22], "test": stems[22:]}, tmp_path / "pre", 64,
               progress=False)
    parts = member_folds(tmp_path / "pre", 3, 41)
    assert sorted(i for f in parts for i in f) == list(range(18)) and all(parts)
    view = json.loads((fold_shards(tmp_path / "pre", parts[0], tmp_path / "f") / "manifest.json").read_text())
    assert set(view["splits"]["val"]["stems"]) == {stems[i] for i in parts[0]}
    assert set(view["splits"]["train"]["stems"]) == set(stems[:18]) - {stems[i] for i in parts[0]}

    seen: list[tuple[int, dict]] = []

    class Seen:
        def on_epoch_end(self, epoch, metrics):
            seen.append((epoch, metrics))

    cfg = load_config(CI_TINY, ["train.ensemble=2", "train.folds=3"])
    result = train_any(cfg, tmp_path / "pre", tmp_path / "run", callbacks=[Seen()])
    model, meta = load_weights(result.weights)
    assert isinstance(model, LogitAveraged) and meta["members"] == 2 and len(meta["extra"]["members"]) == 2
    assert [e for e, _ in seen] == [1, 2, 3, 4] and [m["member"] for _, m in seen] == [1, 1, 2, 2]
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    assert 0 <= result.best_val_iou <= 1
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        mean = torch.stack([m(x) for m in model.members]).mean(0)
        assert torch.equal(model(x), mean)


def test_side_heads_train_with_the_network_and_are_left_out_of_what_is_saved(tmp_path, synth_dataset):
    """Deep supervision and a Lovász term change only the training: the saved weights are CMUNeXt's own, parameter
    for parameter, and a resumed run carries the side heads on from the checkpoint."""
    import torch
    from cmunext.data.layout import list_pairs
    from cmunext.data.preprocess import preprocess
    from cmunext.engine.checkpoint import CheckpointDir
    from cmunext.engine.trainer import train
    from cmunext.engine.weights import load_weights
    from cmunext.models import count_parameters, create_model
    from cmunext.models.deep_supervision import DeeplySupervised

    stems = list_pairs(synth_dataset)
    preprocess(synth_dataset, {"train": stems[:16], "val": stems[16:20], "test": stems[20:]}, tmp_path / "pre", 64,
               progress=False)
    sets = ["train.deep_supervision=0.4", "train.lovasz_weight=0.5"]
    train(load_config(CI_TINY, [*sets, "train.epochs=1"]), tmp_path / "pre", tmp_path / "run", progress=False)
    first_sides = {k: v for k, v in CheckpointDir(tmp_path / "run" / "checkpoints").load_latest()["model"].items()
                   if k.startswith("sides.")}
    resumed = train(load_config(CI_TINY, [*sets, "train.epochs=2"]), tmp_path / "pre", tmp_path / "run",
                    resume=True, progress=False)
    assert len(resumed.history) == 2 and all(np.isfinite(h["train_loss"]) for h in resumed.history)
    last = CheckpointDir(tmp_path / "run" / "checkpoints").load_latest()["model"]
    assert len(first_sides) == 6 and any(not torch.equal(v, last[k]) for k, v in first_sides.items())
    model, _ = load_weights(resumed.weights)
    variant = load_config(CI_TINY).model.variant
    assert count_parameters(model) == count_parameters(create_model(variant))
    wrapped = DeeplySupervised(model).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(wrapped(x), model(x))  # in eval, the wrapper is the network
        logits, sides = wrapped.train()(x)
    assert logits.shape == (2, 1, 64, 64) and [s.shape for s in sides] == [logits.shape] * 3
