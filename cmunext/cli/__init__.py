"""The `cmunext` command. Each verb group is a module here that declares its own arguments and handlers (as
pip's `commands/` and DVC's `dvc/commands/` do); this module only assembles them. Handlers import their heavy
dependencies when they run, so `cmunext --help` and `import cmunext` stay fast."""
from __future__ import annotations

import argparse
import logging
import sys

from cmunext_serving.guard import TokenMissing

from ..errors import CmunextError
from . import (
    bench,
    containerize,
    data,
    deploy,
    evaluate,
    images,
    monitor,
    pipeline,
    predict,
    registry,
    retrain,
    serve,
    train,
)
from .common import EXIT_ERROR

COMMANDS = (data, train, predict, evaluate, pipeline, retrain, registry, serve, monitor, containerize, deploy, images,
            bench)

EPILOG = """everyday use:
  cmunext pipeline run --config configs/demo.yaml      the whole pipeline on this machine
  cmunext registry show                                the champion and every decision
  cmunext serve                                        serve the champion on http://127.0.0.1:3000/

`cmunext COMMAND --help` tells more. Exit status: 0 done (a gate's rejection is a decision, not a failure),
1 data failed validation, 2 failure, 3 drift (`monitor drift`), 75 a stale promotion was refused or too few
requests to decide drift (run again later)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cmunext", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description="CMUNeXt lesion segmentation: data, training, pipeline, serving")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # -q/--quiet is accepted anywhere on the line, not only before the subcommand
    quiet = any(a in ("-q", "--quiet") for a in argv)
    args = build_parser().parse_args([a for a in argv if a not in ("-q", "--quiet")])
    args.quiet = quiet
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return args.func(args)
    except (CmunextError, FileNotFoundError, ValueError, TokenMissing) as exc:
        print(f"cmunext: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("cmunext: interrupted", file=sys.stderr)
        return 130
