"""What the pipeline test modules share: `cmunext` as a user runs it (a pipeline run on ci-tiny, a served
champion) and what a run leaves in its outputs. Their state folder is the `env` fixture (conftest.py): one per
module, so `make test`'s two workers can run the two modules' pipelines side by side."""
from __future__ import annotations

import json
import subprocess
from contextlib import contextmanager
from pathlib import Path

from conftest import ROOT, VENV_BIN

CI_TINY = str(ROOT / "configs" / "ci-tiny.yaml")


def cmunext(env, *args, timeout=900):
    return subprocess.run([str(VENV_BIN / "cmunext"), *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=timeout)


def run(env, tmp_path, *overrides):
    summary = tmp_path / "summary.json"
    sets = [a for o in overrides for a in ("--set", o)]
    proc = cmunext(env, "pipeline", "run", "--config", CI_TINY, "--json", str(summary), *sets)
    return proc, (json.loads(summary.read_text()) if summary.exists() else None)


@contextmanager
def serving(env, model: str, *extra: str, lines: list | None = None):
    """`cmunext serve` of MODEL's champion, ready; yields its URL and port; its output lines go to LINES as they
    come (read all along: a full pipe would stall the server). SIGTERM at the end, as `kill` and Kubernetes send
    it: it goes on to the bentoml server."""
    import signal
    import threading
    import time

    import requests
    from conftest import free_port, wait_for_port

    port = free_port()
    proc = subprocess.Popen([str(VENV_BIN / "cmunext"), "serve", "--model-name", model, "--port", str(port), *extra],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sink = lines if lines is not None else []
    threading.Thread(target=lambda: sink.extend(iter(proc.stdout.readline, "")), daemon=True).start()
    try:
        wait_for_port(port, proc, timeout=180)
        deadline = time.time() + 120
        while requests.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code != 200:
            assert time.time() < deadline, "service never became ready"
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}", port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def evaluation_of(summary: dict) -> dict:
    return json.loads((Path(summary["outputs"]) / "evaluate-model" / "evaluation").read_text())


def split_of(summary: dict) -> dict:
    return json.loads((Path(summary["outputs"]) / "preprocess-data" / "preprocessed" / "splits.json").read_text())

