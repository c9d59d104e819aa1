"""`cmunext containerize`: the serving image of a version's bento (no torch, non-root)."""
from __future__ import annotations

from .common import EXIT_OK, add_model_args, model_name, resolve_version


def containerize(args) -> int:
    from ..containers.engine import find_engine
    from ..containers.serving import containerize as build_image
    from ..serving.package import stores

    version, bento_tag = resolve_version(args)
    labels = stores()[1].get(bento_tag).info.labels
    result = build_image(find_engine(), bento_tag, labels.get("mlflow_model", model_name(args)),
                         labels.get("mlflow_version", version), base=args.base, verbose=args.verbose)
    print(f"built {result['image']} ({result['size_mb']:,} MB, {result['seconds']:.0f} s) from bento {bento_tag}")
    print(f"run it:  cmunext serve --container --model {version} --port 3000   "
          f"(or: podman run --rm --pull=never --read-only --tmpfs /tmp -p 3000:3000 {result['image']})")
    return EXIT_OK


def register(sub) -> None:
    p = sub.add_parser("containerize", help="build the serving image of the champion (or a version): no torch, non-root")
    add_model_args(p, "champion or an MLflow version number")
    p.add_argument("--base", help="base image (default: the pinned public one, else the Debian-built one)")
    p.add_argument("--verbose", "-v", action="store_true", help="show the whole build output")
    p.set_defaults(func=containerize)
