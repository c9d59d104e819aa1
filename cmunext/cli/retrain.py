"""`cmunext retrain`: the pipeline for cron; with --if-changed it decides first and runs only when there is work."""
from __future__ import annotations

from .common import EXIT_OK, add_config_args, config
from .pipeline import exit_code
from .summaries import run_summary


def retrain(args) -> int:
    """Decide here, without starting the pipeline, and only run it when there is work."""
    from pipelines.run import PROJECT_ROOT, run_pipeline

    from ..retrain import decide, measure_data, record
    if args.if_changed:
        cfg = config(args)
        decision = decide(cfg, measure_data(cfg, PROJECT_ROOT))
        if decision["decision"] == "skip":
            record(cfg, decision, source="cli")
            print(f"retrain: {decision['reasons'][0]}")
            return EXIT_OK
        print("retrain: " + "; ".join(decision["reasons"]))
    summary = run_pipeline(args.config, args.set, if_changed=args.if_changed)
    print(run_summary(summary))
    return exit_code(summary)


def register(sub) -> None:
    p = sub.add_parser("retrain", help="run the pipeline; with --if-changed only when something changed (cron)")
    add_config_args(p, required=True)
    p.add_argument("--if-changed", action="store_true",
                   help="skip (exit 0, recorded in MLflow) unless data, code or the champion's age call for training")
    p.set_defaults(func=retrain)
