"""int8 static quantisation against the fp32 serving artifact: BUSI test IoU and speed (batch 1 and 8).
Needs trained weights and the dataset they were trained on, with its splits.json (the pipeline's
preprocess output, or `cmunext train`'s), e.g. after `cmunext train --config configs/busi.yaml`:

    python benchmarks/int8_trade.py --weights RUN/model.safetensors --data ../shared/datasets/busi \
        --split STATE/preprocessed/<key>/splits.json [--calibration 32] [--json F]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from cmunext.serving.quantize import int8_trade


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", required=True, help="splits.json: test images are scored, train ones calibrate")
    ap.add_argument("--calibration", type=int, default=32, help="training images used for calibration")
    ap.add_argument("--json")
    args = ap.parse_args()
    split = json.loads(Path(args.split).read_text())
    result = int8_trade(args.weights, args.data, split["test"], split["train"][: args.calibration])
    text = json.dumps(result, indent=1)
    if args.json:
        Path(args.json).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
