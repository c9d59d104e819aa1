"""`cmunext images`: build and list the project's container images (names from images.conf)."""
from __future__ import annotations

import json
from pathlib import Path

from .common import EXIT_OK


def build(args) -> int:
    from ..containers.build import build_images
    from ..containers.engine import find_engine
    extra = dict(kv.split("=", 1) for kv in args.build_arg)
    results = build_images(find_engine(), args.only or None, base=args.base, extra_args=extra, verbose=args.verbose)
    for r in results:
        print(f"{r['image']}  (+ {r['latest'].rsplit(':', 1)[1]})  {r['size_mb']:,} MB  built in {r['seconds']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return EXIT_OK


def list_(args) -> int:
    from ..containers.engine import find_engine
    from ..containers.images import IMAGES_CONF, image_names
    engine, names = find_engine(), image_names()
    print(f"from {IMAGES_CONF} (registry {names.registry}, tag {names.tag}); engine {engine.name}")
    for image in (names.components, names.mlflow):
        there = engine.image_exists(image)
        print(f"  {image:<50} " + (f"{engine.image_size(image) / 1e6:,.0f} MB" if there else "not built (make images)"))
    return EXIT_OK


def register(sub) -> None:
    img = sub.add_parser("images", help="the project's container images (names from images.conf)")
    isub = img.add_subparsers(dest="images_command", required=True)
    p = isub.add_parser("build", help="build the component and MLflow images (make images)")
    p.add_argument("--only", action="append", choices=["components", "mlflow"], help="build only this image")
    p.add_argument("--base", help="base image (default: the pinned public one, else the Debian-built one)")
    p.add_argument("--build-arg", action="append", default=[], metavar="K=V",
                   help="e.g. TORCH_LOCAL= TORCH_INDEX=https://pypi.org/simple for CUDA torch")
    p.add_argument("--json", help="write tags, sizes and build times here")
    p.add_argument("--verbose", "-v", action="store_true", help="show the whole build output")
    p.set_defaults(func=build)
    isub.add_parser("list", help="the image names and whether they are built").set_defaults(func=list_)
