"""`cmunext serve`: the champion's bento (or a chosen version's), with `bentoml serve` or in its container."""
from __future__ import annotations

import os

from .common import add_model_args, resolve_version


def serve(args) -> int:
    """`champion` (default) and plain version numbers resolve through the MLflow registry to the bento the
    package step built for that version; anything else is a bento or BentoML model tag."""
    from cmunext_serving.guard import api_token

    from ..serving.serve import serve as serve_bento
    target = args.model
    if target == "champion" or target.isdigit():
        _, target = resolve_version(args)
    token = api_token()  # a required but missing token stops here, with the reason
    if args.container:
        return _serve_container(args, target, token)
    print(f"serving {target} on http://{args.host}:{args.port}/; the API "
          + ("requires 'Authorization: Bearer <CMUNEXT_API_TOKEN>'" if token else
             "is open: no token required (set CMUNEXT_API_TOKEN to require one)"), flush=True)
    code = serve_bento(target, host=args.host, port=args.port)
    return code if code >= 0 else 128 - code  # killed by a signal: the shell's convention


def _serve_container(args, bento_tag: str, token: str | None) -> int:
    """The version's serving image (`cmunext containerize`), run in the foreground on --port."""
    from ..containers.engine import find_engine
    from ..containers.images import image_names
    from ..containers.serving import serve_container
    from ..serving.package import stores

    labels = stores()[1].get(bento_tag).info.labels
    image = image_names().serving(labels["mlflow_model"], labels["mlflow_version"])
    env = {k: os.environ[k] for k in ("CMUNEXT_API_TOKEN", "CMUNEXT_REQUIRE_AUTH") if k in os.environ}
    print(f"serving {image} (bento {bento_tag}) in a container on http://{args.host}:{args.port}/; the API "
          + ("requires a token" if token else "is open"), flush=True)
    return serve_container(find_engine(), image, args.port, args.host, env)


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve the champion's bento (or a chosen version) with BentoML")
    add_model_args(p, "champion, an MLflow version number, or a bento/model tag")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    p.add_argument("--container", action="store_true",
                   help="run the version's serving image (`cmunext containerize`) instead of a local bentoml serve")
    p.set_defaults(func=serve)
