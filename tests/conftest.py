"""Shared fixtures: real services (an S3-protocol server) and small synthetic datasets."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUSI = ROOT.parent / "shared" / "datasets" / "busi"
VENV_BIN = Path(sys.executable).parent

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
# `make test` runs two pytest workers on two cores: torch threads that spin while they wait (OpenMP's default)
# would hold the core the other worker's processes need.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited early with code {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listening on port {port} after {timeout}s")


def stop(proc: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL after TIMEOUT; then whatever the process had started and left behind (a `bentoml
    serve` killed hard orphans its workers, which would go on holding memory and CPU for the rest of the run)."""
    import psutil
    try:
        tree = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for child in tree:
        try:
            child.wait(timeout=5)
        except psutil.TimeoutExpired:
            child.kill()
        except psutil.NoSuchProcess:
            pass


class S3Server:
    """A real moto_server process (S3 protocol, in memory) on a free loopback port."""

    key, secret = "testing-key-id", "testing-secret-key"

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log, "wb")
        self.proc = subprocess.Popen([str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=self._log, stderr=subprocess.STDOUT)
        wait_for_port(self.port, self.proc)

    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.key, "AWS_SECRET_ACCESS_KEY": self.secret,
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": self.url,
                "MLFLOW_S3_ENDPOINT_URL": self.url}

    def client(self):
        import boto3
        return boto3.client("s3", endpoint_url=self.url, aws_access_key_id=self.key,
                            aws_secret_access_key=self.secret, region_name="us-east-1")

    def make_bucket(self, name: str) -> str:
        """NAME, created unless it exists (modules of one session share the server)."""
        client = self.client()
        if name not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
            client.create_bucket(Bucket=name)
        return name

    def close(self) -> None:
        stop(self.proc)
        self._log.close()


@pytest.fixture(scope="session", autouse=True)
def prediction_log_of_the_session(tmp_path_factory):
    """Servers the tests start log their answers here unless a test names a log: never in the project's .cmunext/."""
    if "CMUNEXT_PREDICTION_LOG" not in os.environ:
        os.environ["CMUNEXT_PREDICTION_LOG"] = str(tmp_path_factory.mktemp("predictions"))
    yield


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    server = S3Server(tmp_path_factory.mktemp("s3") / "moto.log")
    yield server
    server.close()


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory) -> Path:
    """24 small synthetic image/mask pairs in the project layout (read-only: copy before changing)."""
    from cmunext.data.synth import write_synthetic_dataset
    return write_synthetic_dataset(tmp_path_factory.mktemp("synth") / "data", 24, seed=0, progress=False)


@pytest.fixture
def dataset_copy(synth_dataset, tmp_path) -> Path:
    dst = tmp_path / "data"
    shutil.copytree(synth_dataset, dst)
    return dst


@pytest.fixture
def state_home(tmp_path, monkeypatch) -> Path:
    """A private CMUNEXT_HOME, so tests never touch the project's .cmunext/."""
    home = tmp_path / "state"
    monkeypatch.setenv("CMUNEXT_HOME", str(home))
    return home


busi = pytest.mark.skipif(not (BUSI / "images").is_dir(), reason=f"BUSI dataset not found at {BUSI}")


class MlflowServer:
    """A real `mlflow server` process: SQLite backend, artifacts proxied to an S3 bucket. With `admin`
    (username, password) it runs MLflow's basic-auth app with the project's auth settings
    (infra/mlflow/basic_auth.ini: default permission none), its user tables in the work folder."""

    def __init__(self, workdir: Path, s3: S3Server, bucket: str = "mlflow-artifacts",
                 admin: tuple[str, str] | None = None) -> None:
        s3.make_bucket(bucket)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir, self.s3, self.bucket, self.admin = workdir, s3, bucket, admin
        self.proc = None
        self.start()

    def _auth_env(self) -> dict[str, str]:
        ini = (ROOT / "infra" / "mlflow" / "basic_auth.ini").read_text()
        ini = ini.replace("sqlite:///basic_auth.db", f"sqlite:///{self.workdir / 'basic_auth.db'}")
        (self.workdir / "basic_auth.ini").write_text(ini)
        return {"MLFLOW_AUTH_CONFIG_PATH": str(self.workdir / "basic_auth.ini"),
                "MLFLOW_FLASK_SERVER_SECRET_KEY": os.urandom(16).hex(),
                "MLFLOW_AUTH_ADMIN_USERNAME": self.admin[0], "MLFLOW_AUTH_ADMIN_PASSWORD": self.admin[1]}

    def start(self) -> None:
        env = {**os.environ, **self.s3.env(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            env.pop(key, None)
        app = []
        if self.admin:
            env.update(self._auth_env())
            app = ["--app-name", "basic-auth"]
        self._log = open(self.workdir / "mlflow-server.log", "ab")
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "mlflow"), "server", *app, "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{self.workdir / 'mlflow.db'}",
             "--artifacts-destination", f"s3://{self.bucket}/artifacts", "--serve-artifacts", "--workers", "1"],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        wait_for_port(self.port, self.proc, timeout=120)

    def stop(self) -> None:
        import signal
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the server's workers are its children
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory, s3_server):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"), s3_server)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def env(tmp_path_factory, mlflow_server, s3_server):
    """The environment of a pipeline test module's `cmunext` runs: its own state folder, the session's MLflow and
    S3-protocol servers, bentos stored on S3."""
    home = tmp_path_factory.mktemp("pipeline-state")
    s3_server.make_bucket("cmunext-bentos")
    return {**os.environ, **s3_server.env(), "CMUNEXT_HOME": str(home), "MLFLOW_TRACKING_URI": mlflow_server.url,
            "TQDM_DISABLE": "1", "CMUNEXT_BENTO_STORE": "s3://cmunext-bentos/pipeline"}


@pytest.fixture(scope="session")
def tiny_bento(tmp_path_factory) -> dict:
    """A bento of an untrained CMUNeXt-S at 64 px, packaged into its own state folder (no training: for tests of
    serving under load, fuzzing and export, where the weights' quality does not matter). Returns package_model()'s
    result plus `home` and `bentoml_home`; set BENTOML_HOME to `bentoml_home` to use its stores."""
    from cmunext.engine.weights import save_weights
    from cmunext.models import create_model
    from cmunext.serving.package import package_model

    home = tmp_path_factory.mktemp("tiny-bento")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CMUNEXT_HOME", str(home))
        mp.setenv("BENTOML_HOME", str(home / "bentoml"))
        for name in ("CMUNEXT_BENTO_MODEL", "CMUNEXT_API_TOKEN"):
            mp.delenv(name, raising=False)
        import torch
        torch.manual_seed(0)
        weights = save_weights(create_model("cmunext_s"), home / "model.safetensors", "cmunext_s", 64)
        result = package_model(weights, model_name="cmunext-tiny", model_version=1, run_id="run-tiny",
                               data_revision="rev-tiny", metrics={}, runs=3)
    return {**result, "home": home, "bentoml_home": home / "bentoml", "weights": weights}


def grown_dataset(base: Path, n_old: int, n_new: int, seed: int) -> tuple[Path, Path]:
    """A dataset and its next version: v1 with N_OLD synthetic pairs, v2 = v1 plus N_NEW new ones (`new_*`)."""
    from cmunext.data.synth import write_synthetic_dataset
    v1 = write_synthetic_dataset(base / "v1", n_old, seed=seed, progress=False)
    extra = write_synthetic_dataset(base / "extra", n_new, seed=seed + 1, progress=False)
    v2 = base / "v2"
    shutil.copytree(v1, v2)
    for sub in ("images", "masks"):
        for f in (extra / sub).iterdir():
            shutil.copy(f, v2 / sub / f"new_{f.name}")
    return v1, v2


# The slowest modules run last, so a failure elsewhere shows first (whole modules move: their fixtures stay shared).
SLOWEST_LAST = ("test_pipeline.py", "test_pipeline_lifecycle.py", "test_security.py", "test_real_data.py",
                "test_load.py", "test_faults.py", "test_containers.py")


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        name = item.path.name
        return SLOWEST_LAST.index(name) + 1 if name in SLOWEST_LAST else 0
    items.sort(key=rank)  # stable: the order within a module, and among the others, is kept
