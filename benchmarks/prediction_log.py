"""What the prediction log costs the served model: HTTP throughput and latency with the log off, on, on with
every image captured, and on with its sink unreachable, one server after the other on the same bento, in one run
(cmunext bench serving's setup: the server on its own core(s), the load client on another). Ratios are against
the log off.

    python benchmarks/prediction_log.py [--variant cmunext_s] [--per-client 20] [--json F]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from cmunext.serving import bench
from cmunext.serving.serve import start_server

MODES = {"off": {"CMUNEXT_PREDICTION_LOG": "off"},
         "log": {"CMUNEXT_CAPTURE_RATE": "0"},
         "log+capture": {"CMUNEXT_CAPTURE_RATE": "1"},
         # an S3 endpoint nothing listens on, a buffer of 100: every write fails, most records are dropped
         "log, sink down": {"CMUNEXT_CAPTURE_RATE": "0", "CMUNEXT_PREDICTION_LOG": "s3://nowhere/predictions",
                            "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "x",
                            "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1",
                            "CMUNEXT_PREDICTION_LOG_CAPACITY": "100", "CMUNEXT_PREDICTION_LOG_FLUSH_SECONDS": "1"}}


def serve_and_load(tag: str, tmp: Path, mode: str, threads: int, data: bytes, per_client: int,
                   server_cpus, load_cpus) -> dict:
    env = {"CMUNEXT_THREADS": threads, "CMUNEXT_PREDICTION_LOG": tmp / mode / "predictions", **MODES[mode]}
    port = bench._free_port()
    os.sched_setaffinity(0, server_cpus)  # the server inherits these cores
    try:
        proc = start_server(tag, port=port, log_file=tmp / f"serve-{mode}.log", env=env)
    finally:
        os.sched_setaffinity(0, load_cpus)
    try:
        return bench._http_loads(f"http://127.0.0.1:{port}", proc, data, (1, 8), per_client)
    finally:
        bench._stop_server(proc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", default="cmunext_s")
    ap.add_argument("--per-client", type=int, default=20)
    ap.add_argument("--json")
    args = ap.parse_args()
    everything = os.sched_getaffinity(0)
    server_cpus, load_cpus = bench.cpu_split(1)
    with tempfile.TemporaryDirectory(prefix="cmunext-bench-log-") as tmp, bench._private_state(Path(tmp) / "state"):
        tmp = Path(tmp)
        os.sched_setaffinity(0, server_cpus)
        m = bench._measure_offline(tmp, args.variant, 256, None, 5, len(server_cpus), args.per_client)
        try:
            http = {mode: serve_and_load(m.packaged["bento_tag"], tmp, mode, len(server_cpus), m.data,
                                         args.per_client, server_cpus, load_cpus) for mode in MODES}
        finally:
            os.sched_setaffinity(0, everything)
    result = {"variant": args.variant, "http": http, "ratios": {
        mode: {c: {"rps": round(r[c]["rps"] / http["off"][c]["rps"], 3),
                   "p95": round(r[c]["p95_ms"] / http["off"][c]["p95_ms"], 3)} for c in r}
        for mode, r in http.items() if mode != "off"}}
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
