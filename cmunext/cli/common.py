"""What several commands share: config options, the registered model's name, version resolution, exit codes."""
from __future__ import annotations

import argparse
import re
from datetime import datetime, timedelta, timezone

from ..config import RunConfig, load_config

# Exit codes (README "Exit codes"): a designed refusal is an outcome, never a failure.
EXIT_OK = 0        # done: promoted, rejected by a gate (recorded), or nothing to do
EXIT_INVALID = 1   # the data failed validation (`data validate`)
EXIT_ERROR = 2     # a failure: bad input or config, a step that crashed, a service that did not answer
EXIT_RETRY = 75    # refused as stale (sysexits' EX_TEMPFAIL): the champion moved while the run decided; re-run


UNITS = {"m": "minutes", "h": "hours", "d": "days"}


def since_time(text: str) -> datetime:
    """--since: an ISO time (UTC unless it says otherwise) or an age: 30m, 24h, 7d."""
    if m := re.fullmatch(r"(\d+(?:\.\d+)?)([mhd])", text.strip()):
        return datetime.now(timezone.utc) - timedelta(**{UNITS[m.group(2)]: float(m.group(1))})
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--since {text!r}: an ISO time (2026-12-01T08:00) or an age (30m, 24h, 7d)")
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def add_config_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--config", "-c", required=required, help="YAML run configuration (configs/*.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.epochs=3 (repeatable)")


def add_model_args(p: argparse.ArgumentParser, model_help: str | None = None) -> None:
    """--model (champion or a version), --model-name and --config: which registered model a command acts on."""
    if model_help:
        p.add_argument("--model", default="champion", help=model_help)
    p.add_argument("--model-name", help="registered model (default: from --config or the default config)")
    p.add_argument("--config", "-c")


def config(args) -> RunConfig:
    """--config with its --set overrides (the defaults without --config)."""
    return load_config(getattr(args, "config", None), getattr(args, "set", []))


def model_name(args) -> str:
    return args.model_name or load_config(args.config, []).registry.model_name


def use_bento_store(args) -> None:
    """The config's bento store, where the registry's promotion lease lives (cmunext/tracking/lease.py)."""
    from ..serving import store
    store.use(load_config(getattr(args, "config", None), []).registry.bento_store)


def resolve_version(args) -> tuple[str, str]:
    """(MLflow version, bento tag) for --model champion|VERSION."""
    from ..serving.serve import bento_for_version
    from ..tracking import registry
    name, version = model_name(args), args.model
    if version == "champion":
        champ = registry.champion(name)
        if champ is None:
            raise registry.RegistryError(f"{name} has no champion yet: run the pipeline (make demo) first")
        version = str(champ["version"])
    elif not version.isdigit():
        raise registry.RegistryError(f"--model must be champion or a version number of {name}, got {version!r}")
    try:
        return version, bento_for_version(version, name)
    except LookupError as exc:
        raise registry.RegistryError(str(exc)) from None
