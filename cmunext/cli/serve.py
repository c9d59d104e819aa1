"""`cmunext serve`: the champion's bento (or a chosen version's), with `bentoml serve` or in its container."""
from __future__ import annotations

import os

from .common import add_model_args, resolve_version


def serve(args) -> int:
    """`champion` (default) and plain version numbers resolve through the MLflow registry to the bento the
    package step built for that version; anything else is a bento or BentoML model tag."""
    from cmunext_serving.guard import api_token

    from ..errors import CmunextError
    from ..serving.serve import serve as serve_bento
    if args.container and (args.shadow or args.canary):
        raise CmunextError("--shadow and --canary run the candidate with `bentoml serve`, not in a container")
    target = args.model
    if target == "champion" or target.isdigit():
        _, target = resolve_version(args)
    token = api_token()  # a required but missing token stops here, with the reason
    if args.container:
        return _serve_container(args, target, token)
    print(f"serving {target} on http://{args.host}:{args.port}/; the API "
          + ("requires 'Authorization: Bearer <CMUNEXT_API_TOKEN>'" if token else
             "is open: no token required (set CMUNEXT_API_TOKEN to require one)"), flush=True)
    candidate, env, stop = _start_candidate(args) if args.shadow or args.canary else (None, None, None)
    try:
        code = serve_bento(target, host=args.host, port=args.port, env=env)
    finally:
        if candidate:
            from ..serving.candidate import stop as stop_server
            stop.set()
            stop_server(candidate)
    return code if code >= 0 else 128 - code  # killed by a signal: the shell's convention


def _start_candidate(args):
    """The candidate's server, the environment that makes the champion's front shadow it or send it a share of
    the traffic, and the event that ends the canary's follower."""
    import threading

    from ..errors import CmunextError
    from ..serving import candidate
    from .common import config, model_name
    if args.shadow and args.canary:
        raise CmunextError("--shadow and --canary: one candidate at a time")
    version, role, name = args.shadow or args.canary, "shadow" if args.shadow else "canary", model_name(args)
    proc, url, log = candidate.start_candidate(name, version, role)
    stop = threading.Event()
    if role == "shadow":
        env = {"CMUNEXT_SHADOW_URL": url, "CMUNEXT_SHADOW_VERSION": version, "CMUNEXT_SHADOW_RATE": str(args.shadow_rate)}
        print(f"shadowing: candidate v{version} answers a copy of each request at {url}; its answers are compared "
              f"and discarded (`cmunext registry shadow {version}`; its log: {log})", flush=True)
        return proc, env, stop
    from ..monitoring.records import sink
    cfg = config(args)
    env = candidate.canary_env(url, version, args.weight, cfg.gate)
    threading.Thread(target=candidate.follow_canary, args=(sink(cfg.monitoring.prediction_log), name, version, stop),
                     daemon=True).start()
    print(f"canary: candidate v{version} (pid {proc.pid}) answers {args.weight:.0%} of the requests at {url}; rolled "
          f"back to the champion when it breaks gate.canary_* (its log: {log})", flush=True)
    return proc, env, stop


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
    p.add_argument("--shadow", metavar="VERSION",
                   help="also serve this version's bento, send it a copy of each request off "
                        "the request path and keep only how it agrees with the served model")
    p.add_argument("--shadow-rate", type=float, default=float(os.environ.get("CMUNEXT_SHADOW_RATE", "1")),
                   help="share of the requests copied to the candidate (default 1, or $CMUNEXT_SHADOW_RATE)")
    p.add_argument("--canary", metavar="VERSION",
                   help="also serve this version's bento and send it --weight of the requests (its answers are "
                        "served); back to the champion alone on a breach of gate.canary_*, recorded in the registry")
    p.add_argument("--weight", type=float, default=0.1, help="the canary's share of the requests (default 0.1)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--container", action="store_true",
                   help="run the version's serving image (`cmunext containerize`) instead of a local bentoml serve")
    p.set_defaults(func=serve)
