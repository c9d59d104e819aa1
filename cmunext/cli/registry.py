"""`cmunext registry`: the MLflow model registry: champion and history, manual promotion and rollback, users."""
from __future__ import annotations

import json

from .common import EXIT_OK, add_config_args, add_model_args, config, model_name, since_time, use_bento_store


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


def _shadow_figures(args) -> tuple[str, dict]:
    """(model name, figures of VERSION's shadow records), the figures also kept on the version (shadow_* tags)."""
    from cmunext_serving.shadow import shadow_root

    from ..monitoring import records
    from ..monitoring import shadow as figures
    from ..tracking import registry
    cfg = config(args)
    name, version = args.model_name or cfg.registry.model_name, str(args.version)
    registry.describe_version(name, version)  # an unknown version fails here, naming it
    window = records.read(shadow_root(records.sink(cfg.monitoring.prediction_log), name), f"v{version}",
                          since=args.since, last=args.last)
    summary = figures.summarize(window.records)
    registry.tag_version(name, version, figures.as_tags(summary))
    return name, {"model": name, "version": version, **summary,
                  "champions": sorted({str(r.get("champion")) for r in window.records})}


def shadow(args) -> int:
    """The figures of a shadowed candidate, printed and kept on its registry version."""
    from ..monitoring import shadow as figures
    name, found = _shadow_figures(args)
    if args.json:
        print(json.dumps(found, indent=1))
    else:
        print("\n".join(figures.lines(found, name, found["version"], found["champions"])))
    return EXIT_OK


def promote_shadowed(args) -> int:
    """The live gate: VERSION becomes champion when its shadow figures meet gate.shadow_*; else it stays
    candidate and the reasons are recorded. Either is an outcome (exit 0)."""
    from ..errors import CmunextError
    from ..gate import shadow_checks
    from ..monitoring import shadow as figures
    from ..tracking import registry
    cfg = config(args)
    if not cfg.gate.live:
        raise CmunextError("no live gate is configured: set at least one of gate.shadow_min_requests, "
                           "gate.shadow_min_agreement, gate.shadow_max_latency_ratio, gate.shadow_max_errors")
    use_bento_store(args)
    name, found = _shadow_figures(args)
    print("\n".join(figures.lines(found, name, found["version"], found["champions"])))
    checks = shadow_checks(found, cfg.gate)
    for check in checks:
        print(f"  {check['message']}")
    if all(c["passed"] for c in checks):
        entry = registry.promote(name, found["version"], reason="live gate passed: " + "; ".join(
            c["message"] for c in checks))
        print(f"PROMOTED: v{entry['version']} is champion (was {entry['replaced'] or 'none'})")
    else:
        registry.record_refusal(name, found["version"], "shadow_refused",
                                [c["message"] for c in checks if not c["passed"]])
        print(f"NOT PROMOTED: v{found['version']} stays candidate (the reasons are in `cmunext registry show`)")
    return EXIT_OK


def follow_canary(args) -> int:
    """After Flagger refused a version on Kubernetes, the registry's champion follows (previous again)."""
    from ..containers import canary_status
    use_bento_store(args)
    canary, deployment = canary_status.read_file(args.from_file) if args.from_file else canary_status.read_cluster()
    result = canary_status.follow(model_name(args), canary, deployment)
    print(f"follow-canary: {result['action']}: {result['why']}")
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
    p = _shadow_args(rsub.add_parser("shadow", help="how a shadowed candidate agrees with the champion on live "
                                                    "requests (`cmunext serve --shadow VERSION`); kept on the version"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=shadow)
    p = _shadow_args(rsub.add_parser("promote-shadowed", help="the live gate: champion if the shadow figures meet "
                                                              "gate.shadow_*, else it stays candidate (recorded)"))
    p.set_defaults(func=promote_shadowed)
    p = rsub.add_parser("follow-canary", help="after Flagger rolled a canary back on Kubernetes, move the champion "
                                             "back too (the CronJob cmunext-rollout-follow runs it)")
    add_model_args(p)
    p.add_argument("--from", dest="from_file", metavar="FILE",
                   help="`kubectl get canary/cmunext-serving deploy/cmunext-serving -n cmunext -o json` output "
                        "(default: ask the API server, as the pod's service account)")
    p.set_defaults(func=follow_canary)
    users = rsub.add_parser("users", help="MLflow users and their permissions (a server with authentication)")
    usub = users.add_subparsers(dest="users_command", required=True)
    p = usub.add_parser("apply", help="create the users of FILE and grant their roles (idempotent; as an MLflow admin)")
    p.add_argument("file", help="YAML: experiment, model, users (name, role, password_env); see infra/mlflow/users.yaml")
    p.set_defaults(func=users_apply)


def _shadow_args(p):
    p.add_argument("version")
    p.add_argument("--model-name", help="registered model (default: registry.model_name of the config)")
    add_config_args(p)
    window = p.add_mutually_exclusive_group()
    window.add_argument("--since", type=since_time, help="copies since an ISO time or an age (24h, 7d)")
    window.add_argument("--last", type=int, help="the N newest copies")
    return p
