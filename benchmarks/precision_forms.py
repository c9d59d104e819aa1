"""Each serving form of a trained model, scored on its test split: ms at batch 1, test IoU, the share of mask
pixels that differ from fp32, and which form the evaluate step's rule ships (cmunext/serving/precision.py).

    python benchmarks/precision_forms.py --weights model.safetensors --data DATA --splits splits.json [--json F]

DATA has images/ and masks/; splits.json is the run's split (its `test` stems are scored, its first
`--calibration` `train` stems calibrate int8).
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--splits", required=True)
    ap.add_argument("--calibration", type=int, default=32)
    ap.add_argument("--max-iou-drop", type=float, default=0.005)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    from cmunext.serving.export import export_serving_artifact
    from cmunext.serving.precision import choose_precision

    split = json.loads(Path(args.splits).read_text())
    with tempfile.TemporaryDirectory(prefix="cmunext-precision-forms-") as tmp:
        export = export_serving_artifact(args.weights, tmp, runs=args.runs)
        decision = choose_precision(tmp, args.data, split["test"], split["train"][: args.calibration],
                                    max_iou_drop=args.max_iou_drop, runs=args.runs)
    decision.update(variant=export["variant"], image_size=export["image_size"],
                    eager_ms_b1=round(export["candidates"]["torch"]["ms"], 2))
    text = json.dumps(decision, indent=1)
    if args.json:
        Path(args.json).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
