"""`cmunext deploy`: make the Kubernetes Deployment serve the champion (after a promotion or rollback)."""
from __future__ import annotations

from pathlib import Path

from .common import EXIT_OK, add_model_args, model_name, resolve_version

K8S = Path(__file__).resolve().parents[2] / "infra" / "k8s"


def deploy(args) -> int:
    from ..containers.deploy import deploy as render_and_apply
    from ..containers.engine import find_engine

    version, bento_tag = resolve_version(args)
    result = render_and_apply(find_engine(), bento_tag, model_name(args), version, Path(args.out), push=args.push,
                              apply=args.apply, k8s=Path(args.k8s))
    print(f"{model_name(args)} v{version}: image {result['image']}" + (" (built)" if result["built"] else "")
          + (", pushed" if result["pushed"] else "") + f"; manifests {result['manifests']}"
          + ("; applied" if result["applied"] else f" (apply: kubectl apply -f {result['manifests']})"))
    return EXIT_OK


def register(sub) -> None:
    p = sub.add_parser("deploy", help="make the Kubernetes Deployment serve the champion (after a promotion or rollback)")
    add_model_args(p, "champion or an MLflow version number")
    p.add_argument("--out", default="build/deploy/cmunext.yaml", help="where the rendered manifests go")
    p.add_argument("--k8s", default=str(K8S), help="the kustomize tree (its secrets' .env files made: docs/deploy.md)")
    p.add_argument("--push", action="store_true", help="push the serving image to images.conf's registry")
    p.add_argument("--apply", action="store_true", help="kubectl apply the rendered manifests")
    p.set_defaults(func=deploy)
