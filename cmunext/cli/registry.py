"""`cmunext registry`: the MLflow model registry: champion and history, manual promotion and rollback, users."""
from __future__ import annotations

import json

from .common import EXIT_OK, add_model_args, model_name, use_bento_store


def show(args) -> int:
    from ..tracking import registry
    info = registry.show(model_name(args))
    if args.json:
        print(json.dumps(info, indent=1))
        return EXIT_OK
    champ = info["champion"]
    print(f"model {info['model']}: champion " + (f"version {champ['version']} (run {champ['run_id']}, "
          f"test IoU {champ['tags'].get('test_iou', '?')}, p95 {champ['tags'].get('latency_p95_ms', '?')} ms)"
          if champ else "none"))
    for h in info["history"][-10:]:
        what = f"v{h['version']} (replaced {h['replaced'] or '-'})" if h["version"] else f"run {h.get('run_id', '?')[:12]}"
        print(f"  {h['at']}  {h['event']:<12} {what} by {h.get('user') or '-'}: {h['reason'][:90]}")
    return EXIT_OK


def promote(args) -> int:
    from ..tracking import registry
    use_bento_store(args)
    entry = registry.promote(model_name(args), str(args.version), reason=f"manual: {args.reason}")
    print(f"version {entry['version']} is now champion (was {entry['replaced'] or 'none'})")
    return EXIT_OK


def rollback(args) -> int:
    from ..tracking import registry
    use_bento_store(args)
    entry = registry.rollback(model_name(args), reason=f"rollback: {args.reason}")
    print(f"rolled back: version {entry['version']} is champion again (was {entry['replaced']})")
    return EXIT_OK


def users_apply(args) -> int:
    from ..tracking import users
    for line in users.apply(args.file):
        print(line)
    return EXIT_OK


def register(sub) -> None:
    reg = sub.add_parser("registry", help="the MLflow model registry: champion, history, promotion, rollback")
    rsub = reg.add_subparsers(dest="registry_command", required=True)
    p = rsub.add_parser("show", help="the champion and its history")
    add_model_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=show)
    p = rsub.add_parser("promote", help="make a version the champion (reviewer's decision)")
    add_model_args(p)
    p.add_argument("version")
    p.add_argument("--reason", required=True)
    p.set_defaults(func=promote)
    p = rsub.add_parser("rollback", help="move the champion back to the previous version")
    add_model_args(p)
    p.add_argument("--reason", default="manual rollback")
    p.set_defaults(func=rollback)
    users = rsub.add_parser("users", help="MLflow users and their permissions (a server with authentication)")
    usub = users.add_subparsers(dest="users_command", required=True)
    p = usub.add_parser("apply", help="create the users of FILE and grant their roles (idempotent; as an MLflow admin)")
    p.add_argument("file", help="YAML: experiment, model, users (name, role, password_env); see infra/mlflow/users.yaml")
    p.set_defaults(func=users_apply)
