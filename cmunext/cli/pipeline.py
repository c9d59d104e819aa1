"""`cmunext pipeline`: run the Kubeflow pipeline on this machine, compile it, submit or schedule it on a cluster."""
from __future__ import annotations

import json
import os
from pathlib import Path

from .common import EXIT_OK, EXIT_RETRY, add_config_args, config
from .summaries import run_summary


def exit_code(summary: dict) -> int:
    """A run that decided is a success, whatever it decided; a stale decision asks for a re-run."""
    return EXIT_RETRY if summary.get("outcome", {}).get("kind") == "stale" else EXIT_OK


def run(args) -> int:
    from pipelines.run import run_pipeline
    summary = run_pipeline(args.config, args.set, caching=not args.no_cache, if_changed=args.if_changed,
                           verbose=args.verbose, runner=args.runner, isolated=args.isolated)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    print(run_summary(summary))
    return exit_code(summary)


def compile_(args) -> int:
    from pipelines.run import compile_pipeline
    print(f"wrote {compile_pipeline(args.out, config(args) if args.config else None)}")
    return EXIT_OK


def submit(args) -> int:
    from pipelines.cluster import submit as submit_run
    result = submit_run(config(args), args.host, experiment=args.experiment, run_name=args.run_name,
                        namespace=args.namespace, project_repo=args.project_repo, if_changed=args.if_changed)
    print(f"submitted run {result['run_id']} (experiment {args.experiment}): {result['url']}")
    return EXIT_OK


def schedule(args) -> int:
    from pipelines.cluster import schedule as schedule_runs
    result = schedule_runs(config(args), args.host, args.cron, experiment=args.experiment, name=args.name,
                           namespace=args.namespace, project_repo=args.project_repo)
    print(f"scheduled recurring run {result['recurring_run_id']} on cron '{result['cron']}' (KFP's six fields); "
          f"each run retrains only if the data, the code or the champion's age call for it")
    return EXIT_OK


def register(sub) -> None:
    pipe = sub.add_parser("pipeline", help="the Kubeflow pipeline: run locally, compile, submit, schedule")
    psub = pipe.add_subparsers(dest="pipeline_command", required=True)
    _run_args(psub.add_parser("run", help="run the whole pipeline on this machine (kfp.local, caching on)"))
    p = psub.add_parser("compile", help="compile the pipeline YAML for a Kubeflow Pipelines cluster")
    p.add_argument("--out", required=True)
    add_config_args(p)
    p.set_defaults(func=compile_)
    for name, func, help_ in (("submit", submit, "run the pipeline once on a Kubeflow Pipelines cluster"),
                              ("schedule", schedule, "a recurring run that retrains when something changed")):
        _cluster_args(psub.add_parser(name, help=help_), name, func)


def _run_args(p) -> None:
    add_config_args(p, required=True)
    p.add_argument("--no-cache", action="store_true", help="run every step even if a cached result exists")
    p.add_argument("--if-changed", action="store_true", help="train only if the data, code or champion's age call for it")
    p.add_argument("--json", help="also write the run summary here")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="stream kfp.local's full output (every step's inputs, outputs and log), not one line per step")
    p.add_argument("--runner", choices=["subprocess", "container"], default=os.environ.get("CMUNEXT_RUNNER", "subprocess"),
                   help="where each step runs: this environment, or the component image (`make images`) through "
                        "podman or docker ($CMUNEXT_RUNNER)")
    p.add_argument("--isolated", action="store_true",
                   help="with --runner container: each step keeps its state in its own container, as pods do; the "
                        "steps share only kfp's artifacts, MLflow and the bento store ($CMUNEXT_BENTO_STORE)")
    p.epilog = ("exit status: 0 when the run decided (promoted, rejected by a gate, or nothing to do), 75 when its "
                "promotion was refused as stale (the champion moved meanwhile: run it again), 2 on a failure")
    p.set_defaults(func=run)


def _cluster_args(p, name: str, func) -> None:
    p.add_argument("--host", required=True, help="KFP API endpoint, e.g. http://localhost:8080 ($KFP_TOKEN for auth)")
    add_config_args(p, required=True)
    p.add_argument("--experiment", default="cmunext")
    p.add_argument("--namespace", help="KFP namespace (multi-user installs)")
    p.add_argument("--project-repo", help="git URL the cluster clones to read data.dvc (default: origin)")
    if name == "submit":
        p.add_argument("--run-name")
        p.add_argument("--if-changed", action="store_true")
    else:
        p.add_argument("--cron", required=True, help="five-field cron, e.g. '0 3 * * 0' (Sundays 03:00)")
        p.add_argument("--name", help="recurring run name (default: <config name>-retrain)")
    p.set_defaults(func=func)
