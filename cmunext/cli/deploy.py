"""`cmunext deploy`: make the Kubernetes Deployment serve the champion (after a promotion or rollback)."""
from __future__ import annotations

from pathlib import Path

from .common import EXIT_OK, add_model_args, config, model_name, resolve_version

K8S = Path(__file__).resolve().parents[2] / "infra" / "k8s"


def deploy(args) -> int:
    from ..containers.deploy import deploy as render_and_apply
    from ..containers.engine import find_engine

    version, bento_tag = resolve_version(args)
    gate = config(args).gate if args.canary else None
    shadow = (args.shadow, _candidate_bento(args)) if args.shadow else None
    result = render_and_apply(find_engine(), bento_tag, model_name(args), version, Path(args.out), push=args.push,
                              apply=args.apply, k8s=Path(args.k8s), canary=gate, shadow=shadow)
    print(f"{model_name(args)} v{version}: image {result['image']}" + (" (built)" if result["built"] else "")
          + (", pushed" if result["pushed"] else "") + f"; manifests {result['manifests']}"
          + ("; applied" if result["applied"] else f" (apply: kubectl apply -f {result['manifests']})")
          + ("; as a Flagger canary (gate.canary_*: steps "
             f"{gate.canary_step_weights}%, every {gate.canary_interval_s} s)" if gate else ""))
    return EXIT_OK


def _candidate_bento(args) -> str:
    from ..serving.candidate import CandidateUnavailable
    from ..serving.serve import bento_for_version
    try:
        return bento_for_version(args.shadow, model_name(args))
    except LookupError as exc:
        raise CandidateUnavailable(f"--shadow {args.shadow}: {exc}. A version gets its bento from the pipeline's "
                                   "package step (`cmunext pipeline run`)") from None


def register(sub) -> None:
    p = sub.add_parser("deploy", help="make the Kubernetes Deployment serve the champion (after a promotion or rollback)")
    add_model_args(p, "champion or an MLflow version number")
    p.add_argument("--out", default="build/deploy/cmunext.yaml", help="where the rendered manifests go")
    p.add_argument("--k8s", default=str(K8S), help="the kustomize tree (its secrets' .env files made: docs/deploy.md)")
    p.add_argument("--push", action="store_true", help="push the serving image to images.conf's registry")
    p.add_argument("--apply", action="store_true", help="kubectl apply the rendered manifests")
    p.add_argument("--canary", action="store_true",
                   help="roll out through Flagger: the new pods get gate.canary_step_weights of the traffic, step by "
                        "step, and are rolled back on a breach (Flagger installed in the cluster: docs/rollout.md)")
    p.add_argument("--shadow", metavar="VERSION",
                   help="also run this version as cmunext-serving-shadow; the champion sends it a copy of each request "
                        "(docs/rollout.md)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.set_defaults(func=deploy)
