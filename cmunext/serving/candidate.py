"""A candidate version served beside the champion on this machine, for `cmunext serve --shadow VERSION` and
`--canary VERSION`: its own `bentoml serve` on a free local port, and a BentoML home of its own over the same
stores (two servers on one home clear each other's metrics folder). The champion's front shadows it
(cmunext_serving/shadow.py) or sends it a share of the traffic (cmunext_serving/canary.py)."""
from __future__ import annotations

import json
import socket
import subprocess
import threading
from pathlib import Path

from ..errors import CmunextError
from .package import bentoml_home
from .serve import bento_for_version, start_server


class CandidateUnavailable(CmunextError, LookupError):
    """The version to shadow has no bento or its server does not start; the message names it and what to do."""


def candidate_home(version: str) -> Path:
    """A BentoML home whose model and bento stores are the main home's."""
    main = bentoml_home()
    home = main.parent / "bentoml-candidates" / f"v{version}"
    home.mkdir(parents=True, exist_ok=True)
    for store in ("bentos", "models"):
        if not (home / store).exists():
            (home / store).symlink_to(main / store, target_is_directory=True)
    return home


def start_candidate(model_name: str, version: str, role: str = "shadow") -> tuple[subprocess.Popen, str, Path]:
    """Serve VERSION's bento locally; returns the process, its URL and its server log. A shadow's answers are
    discarded, so its prediction log is off; a canary's are served, so it logs them (as its own version)."""
    from ..infra_validation import wait_ready
    from ..tracking import registry
    try:
        registry.describe_version(model_name, version)  # no such version: said as such
        tag = bento_for_version(version, model_name)
    except (LookupError, CmunextError) as exc:  # no bento here, none recorded, or no such version
        raise CandidateUnavailable(f"--{role} {version}: {exc}. A version gets its bento from the pipeline's "
                               "package step (`cmunext pipeline run`)") from None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    home = candidate_home(version)
    log = home / "serve.log"
    env = {"BENTOML_HOME": home, "CMUNEXT_SHADOW_URL": None, "CMUNEXT_CANARY_URL": None}
    if role == "shadow":
        env["CMUNEXT_PREDICTION_LOG"] = "off"
    proc = start_server(tag, "127.0.0.1", port, log_file=log, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, log)
    except RuntimeError as exc:
        stop(proc)
        raise CandidateUnavailable(f"candidate v{version} ({tag}) did not start: {exc} (log: {log})") from None
    return proc, url, log


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the candidate's server (its arbiter stops its workers), SIGKILL to all of it after 30 s."""
    import os
    import signal

    import psutil
    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        os.killpg(proc.pid, signal.SIGTERM)
    except (psutil.NoSuchProcess, ProcessLookupError):
        return
    _, alive = psutil.wait_procs(tree, timeout=30)
    for process in alive:
        process.kill()
    proc.wait()


def canary_env(url: str, version: str, weight: float, gate) -> dict[str, str]:
    """The environment that makes a champion's front send WEIGHT of its traffic to the candidate at URL, with the
    rollback rule of the config's gate.canary_* (the same rule Flagger applies on Kubernetes)."""
    return {"CMUNEXT_CANARY_URL": url, "CMUNEXT_CANARY_VERSION": str(version), "CMUNEXT_CANARY_WEIGHT": str(weight),
            "CMUNEXT_CANARY_INTERVAL": str(gate.canary_interval_s),
            "CMUNEXT_CANARY_MIN_REQUESTS": str(gate.canary_min_requests),
            "CMUNEXT_CANARY_MAX_ERROR_RATE": str(gate.canary_max_error_rate),
            "CMUNEXT_CANARY_MAX_LATENCY_RATIO": str(gate.canary_max_latency_ratio)}


def follow_canary(sink: str, model: str, version: str, stop: threading.Event, period: float = 1.0) -> None:
    """Until STOP: when the front rolls the canary back, record it in the registry history and say so (a decision
    of an earlier run, still in the store, is not this one's)."""
    from cmunext_serving.prediction_log import now_iso
    started = now_iso()
    from cmunext_serving.canary import decision_uri
    from cmunext_serving.feedback import get

    from ..tracking import registry
    uri = decision_uri(sink, model, version)
    while not stop.wait(period):
        body = get(uri)
        decision = json.loads(body) if body else None
        if decision and decision["at"] >= started:
            registry.record_refusal(model, version, "canary_rolled_back", [f"canary rolled back: {decision['reason']}"])
            print(f"canary: v{version} rolled back at {decision['at']} ({decision['reason']}); all traffic on "
                  f"champion v{decision['champion']}; recorded in the registry history", flush=True)
            return
