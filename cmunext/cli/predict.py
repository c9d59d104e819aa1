"""`cmunext predict`: masks and overlays for image files, from a weights file."""
from __future__ import annotations

from .common import EXIT_OK


def predict(args) -> int:
    from ..predict import predict_files
    written = predict_files(args.images, args.model, args.out, args.threshold)
    print(f"wrote {len(written)} masks and overlays to {args.out}")
    return EXIT_OK


def register(sub) -> None:
    p = sub.add_parser("predict", help="masks and overlays for images")
    p.add_argument("images", nargs="+")
    p.add_argument("--model", required=True, help="model.safetensors")
    p.add_argument("--out", required=True)
    p.add_argument("--threshold", type=float, default=0.5)
    p.set_defaults(func=predict)
