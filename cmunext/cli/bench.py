"""`cmunext bench`: the benchmarks, as ratios against a baseline run in the same process."""
from __future__ import annotations

import argparse


def bench(args) -> int:
    if args.what == "inference":
        from ..serving import bench_inference
        return bench_inference.main(args.args)
    from ..serving import bench as bench_serving
    return bench_serving.main(args.args)


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks, as ratios against a baseline run in the same process")
    p.add_argument("what", choices=["inference", "serving"])
    p.add_argument("args", nargs=argparse.REMAINDER, help="options of the benchmark (see --help after the name)")
    p.set_defaults(func=bench)
