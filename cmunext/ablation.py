"""A recipe, change by change: each row adds config overrides to the last kept row before it, trains, is scored once on
the test split and is compared with that row on the same images (paired bootstrap of the per-image IoU
difference); a row marked `kept: false` is measured and reported, and the rows after it build on the one before it. What to keep is decided on the validation figure; the test figure is reported, never tuned on. A row
that changes only the serving form (eval.*: test-time augmentation) scores the previous row's weights again.

benchmarks/busi_ablation.py runs the BUSI ladder and writes docs/results/busi-ablation.md; the tests run a ladder
on a few synthetic images.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from .config import load_config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Row:
    name: str
    overrides: tuple[str, ...]  # added to every earlier kept row's
    kept: bool = True  # false: measured, but the rows after it do not build on it


def load_ladder(path: str | Path) -> tuple[str, list[Row]]:
    """(base config, rows) from a ladder file: {"base": CONFIG, "rows": [{"name", "set": [KEY=VALUE, ...], "kept"}]}."""
    import yaml

    raw = yaml.safe_load(Path(path).read_text())
    return raw["base"], [Row(r["name"], tuple(r.get("set", [])), bool(r.get("kept", True))) for r in raw["rows"]]


def _score_row(cfg, weights: Path, data_dir: Path, split: dict, classes: dict, work: Path) -> dict:
    """The test split scored as the evaluate step scores it: in the serving form, with the lesion-free rule (and
    the largest-region cut) chosen on the validation split."""
    from cmunext_serving.lesion_rule import LesionRule

    from .evaluation import breakdown, latency_ms, score_images, summarize
    from .predict import Predictor
    from .serving_artifact import serving_runner
    from .steps.evaluate import choose_lesion_rule

    predictor = Predictor(weights, tta=cfg.eval.tta)
    choice = choose_lesion_rule(cfg, weights, data_dir, split)
    rows = score_images(predictor.probabilities, data_dir, split["test"], LesionRule.from_dict(choice["rule"]),
                        progress=False)
    run, artifact = serving_runner(weights, work / "artifact", cfg.eval.tta)
    return {"per_image": rows, "metrics": summarize(rows, cfg.eval.bootstrap), "lesion_rule": choice["rule"],
            "breakdown": breakdown(rows, classes, cfg.eval.bootstrap),
            "latency": {**latency_ms(run, cfg.eval.latency_runs, cfg.eval.latency_warmup), "artifact": artifact}}


def _prepared(cfg, work: Path) -> tuple[Path, Path, dict]:
    """The pipeline's own data steps: the dataset's snapshot (its duplicates policy carried out), its frozen split
    and shards; returns (snapshot, shards, split)."""
    from .steps.data import preprocess, snapshot_data, validate

    snapshot, shards = work / "data", work / "preprocessed"
    snapshot_data(cfg, "workspace", Path.cwd(), snapshot)
    validate(cfg, snapshot, work / "validation")
    preprocess(cfg, snapshot, shards, "workspace")
    return snapshot, shards, json.loads((shards / "splits.json").read_text())


def run_row(base: str | Path, overrides: list[str], work: Path, data: str | None = None,
            trained_before: dict | None = None) -> dict:
    """Train one row's config from scratch, as the pipeline's data and train steps would, and score it on the
    test split. TRAINED_BEFORE (the previous row's figures) is reused when this row changes only eval.* keys."""
    from .data.duplicates import read_classes
    from .engine.launch import train_any

    cfg = load_config(base, [*overrides, *([f"data.source={data}"] if data else [])])
    snapshot, shards, split = _prepared(cfg, work)
    if trained_before is not None:
        weights = Path(trained_before["weights"])
        kept = {k: trained_before[k] for k in ("val_iou", "best_epoch", "train_minutes")}
    else:
        t0 = time.perf_counter()
        trained = train_any(cfg, shards, work / "train", resume=False)
        weights = trained.weights
        kept = {"val_iou": trained.best_val_iou, "best_epoch": trained.best_epoch,
                "train_minutes": (time.perf_counter() - t0) / 60}
    scored = _score_row(cfg, weights, snapshot, split, read_classes(snapshot), work)
    return {**scored, **kept, "weights": str(weights), "test_images": len(split["test"])}


def compare_rows(row: dict, previous: dict | None, n_boot: int) -> dict | None:
    """The paired IoU difference (row - previous) on the same test images, and whether its CI includes zero."""
    from .evaluation import compare

    if previous is None:
        return None
    diff = compare(row["per_image"], previous["per_image"], n_boot)["iou_diff"]
    return {**diff, "includes_zero": diff["ci95_low"] <= 0 <= diff["ci95_high"]}


def run_ladder(base: str | Path, rows: list[Row], out: Path, data: str | None = None) -> list[dict]:
    """Every row in order, each with its figures and the comparison with the kept row it builds on; results.json in
    OUT."""
    results: list[dict] = []
    built_on: dict | None = None  # the last kept row's result
    for k, row in enumerate(rows):
        overrides = [*(built_on["overrides"] if built_on else []), *row.overrides]
        log.info("ablation row %d/%d: %s", k + 1, len(rows), row.name)
        previous = built_on["measured"] if built_on else None
        serving_only = previous is not None and all(o.startswith("eval.") for o in row.overrides)
        measured = run_row(base, overrides, out / f"row{k}", data, previous if serving_only else None)
        bootstrap = load_config(base, overrides).eval.bootstrap
        results.append({"name": row.name, "set": list(row.overrides), "kept": row.kept, "overrides": overrides,
                        "measured": measured, "vs_previous": compare_rows(measured, previous, bootstrap)})
        built_on = results[-1] if row.kept else built_on
        (out / "results.json").write_text(json.dumps(published(results), indent=1))
    return results


def published(results: list[dict]) -> list[dict]:
    """RESULTS without the (temporary) weights paths, each image's row cut to its stem and IoU: enough for a later
    row to be compared with this one, pair by pair."""
    def slim(m: dict) -> dict:
        out = {k: v for k, v in m.items() if k not in ("per_image", "weights")}
        return {**out, "per_image": [{"stem": p["stem"], "iou": p["iou"]} for p in m.get("per_image", [])]}
    return [{**r, "measured": slim(r["measured"])} for r in results]


def _ci(est: dict) -> str:
    return f"{est['value']:.3f} [{est['ci95_low']:.3f}, {est['ci95_high']:.3f}]"


def _diff(cmp: dict | None) -> str:
    if cmp is None:
        return "-"
    verdict = "CI includes 0" if cmp["includes_zero"] else ("better" if cmp["value"] > 0 else "worse")
    return f"{cmp['value']:+.3f} [{cmp['ci95_low']:+.3f}, {cmp['ci95_high']:+.3f}] ({verdict})"


def _alone(value: float | None) -> str:
    """A time for the table: "-" where it was not measured alone on the machine, and so is not comparable."""
    return "-" if value is None else f"{value:.1f}"


def markdown_table(results: list[dict]) -> str:
    """One line per row, in the order the changes were added."""
    classes = sorted({c for r in results for c in r["measured"]["breakdown"]["classes"]})
    head = ["#", "change", "val IoU", "test IoU [95% CI]", "Dice", *[f"IoU {c}" for c in classes],
            "IoU vs the kept row before (paired)", "train min", "p95 ms"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k, r in enumerate(results):
        m = r["measured"]
        by_class = [f"{m['breakdown']['classes'][c]['iou']['value']:.3f}" if c in m["breakdown"]["classes"] else "-"
                    for c in classes]
        name = r["name"] if r.get("kept", True) else f"{r['name']} (**not kept**)"
        cells = [str(k), name, f"{m['val_iou']:.3f}", _ci(m["metrics"]["iou"]),
                 f"{m['metrics']['dice']['value']:.3f}", *by_class, _diff(r["vs_previous"]),
                 _alone(m.get("train_minutes")), _alone(m["latency"].get("p95_ms"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
