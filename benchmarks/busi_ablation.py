"""The BUSI recipe change by change (cmunext/ablation.py): one row per change in the order they were added, each
trained from scratch on the frozen split and scored once on its 129 test images, with the paired bootstrap CI of
the IoU difference against the row before, the training minutes and the latency of the fp32 serving artifact.
Writes docs/results/busi-ablation.md and its figure. About 15 minutes a row on 2 CPU cores.

    python benchmarks/busi_ablation.py [--ladder benchmarks/busi_ablation.yaml] [--data DIR] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def plot(results: list[dict], out: Path) -> Path:
    """Test IoU with its CI per row, and the training minutes beside."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    iou = [r["measured"]["metrics"]["iou"] for r in results]
    k = range(len(results))
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [3, 1]})
    a.errorbar(k, [e["value"] for e in iou], yerr=[[e["value"] - e["ci95_low"] for e in iou],
                                                    [e["ci95_high"] - e["value"] for e in iou]], fmt="o-", capsize=4)
    a.plot(k, [r["measured"]["val_iou"] for r in results], "s--", color="gray", label="validation (chosen on)")
    a.set_xticks(list(k), [f"{i}" for i in k])
    a.set_xlabel("row (changes added in order; docs/results/busi-ablation.md)")
    a.set_ylabel("IoU")
    a.legend(loc="lower right")
    a.set_title(f"Test IoU with 95% CI, {results[0]['measured']['test_images']} frozen test images")
    b.bar(list(k), [r["measured"]["train_minutes"] or 0 for r in results], color="tab:orange")
    b.set_xlabel("row")
    b.set_title("training minutes")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_page(results: list[dict], ladder: str, out: Path, wall_s: float) -> None:
    from cmunext.ablation import markdown_table
    from cmunext.serving.bench_inference import cpu_name

    figure = plot(results, out.with_suffix(".png"))
    machine = f"{cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    out.write_text("\n".join([
        "# BUSI: the recipe, change by change", "",
        f"`python benchmarks/busi_ablation.py --ladder {ladder}`; {machine}; "
        f"{time.strftime('%Y-%m-%d', time.gmtime())}; {wall_s / 60:.0f} minutes in all.", "",
        "Each row adds its change to the kept rows above, trains from scratch on the frozen split and is scored once "
        f"on the {results[0]['measured']['test_images']} test images. The difference against the kept row it builds "
        "on is a paired bootstrap over the same images; a row marked not kept is left out of the rows after it. Whether a change stays in the recipe is decided on its validation "
        "figure (or by cross-validation), never on the test figure.", "",
        markdown_table(results), "", f"![test IoU per row]({figure.name})", ""]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ladder", default="benchmarks/busi_ablation.yaml")
    ap.add_argument("--data", type=Path, help="the dataset, instead of the base config's data.source")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "busi-ablation.md")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from cmunext.ablation import load_ladder, published, run_ladder
    from cmunext.config import load_config

    os.chdir(ROOT)  # the configs name their data relative to the project
    base, rows = load_ladder(args.ladder)
    data = str(args.data.resolve()) if args.data else None
    source = data or load_config(base).data.source
    if source != "synth" and not Path(source).is_dir():
        raise SystemExit(f"no dataset at {source} (--data DIR): nothing measured")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cmunext-ablation-") as tmp:
        os.environ.setdefault("CMUNEXT_HOME", str(Path(tmp) / "home"))
        results = run_ladder(base, rows, Path(tmp), data)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(published(results), indent=1))
    write_page(results, args.ladder, args.out, time.perf_counter() - t0)
    print(args.out.read_text())


if __name__ == "__main__":
    main()
