"""A private `mlflow server` over the state folder's store, for runs whose steps reach MLflow over the network
(containers: `cmunext pipeline run --runner container`) when no MLFLOW_TRACKING_URI names a server."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import CmunextError
from ..paths import state_dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def local_mlflow_server(folder: Path | None = None, timeout: float = 120) -> Iterator[str]:
    """Serve FOLDER's mlflow.db (the store that runs without a server use) on 127.0.0.1; yields its URL.
    Artifacts of new experiments go through the server (--serve-artifacts) to FOLDER/mlartifacts."""
    folder = Path(folder or state_dir())
    port = free_port()
    log = open(folder / "mlflow-server.log", "ab")
    mlflow = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen(
        [str(mlflow) if mlflow.exists() else "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
         "--artifacts-destination", (folder / "mlartifacts").as_uri(), "--serve-artifacts", "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise CmunextError(f"the local MLflow server exited (code {proc.returncode}); see {log.name}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise CmunextError(f"the local MLflow server did not answer in {timeout:.0f} s; see {log.name}")
                time.sleep(0.3)
        yield f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # gunicorn/uvicorn workers are its children
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
