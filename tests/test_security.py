"""Who may change what is served, against a real `mlflow server --app-name basic-auth` (S3 artifacts on moto)
with the project's auth settings (infra/mlflow/basic_auth.ini: default permission none) and users
(infra/mlflow/users.yaml, applied by `cmunext registry users apply`):

- no credentials or a wrong password: the CLI and a pipeline run stop with one message naming the server and
  the cause, no traceback, nothing written;
- the reader may look but not promote, roll back or train; the pipeline user may train and promote but not
  delete aliases; the reviewer may promote and roll back; a refused change leaves champion and history as they
  were; every decision in the history names its user;
- no password reaches logs, the state folder, MLflow params and tags, the compiled pipeline or git.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from conftest import ROOT, VENV_BIN, MlflowServer, free_port

USERS_FILE = ROOT / "infra" / "mlflow" / "users.yaml"
CI_TINY = str(ROOT / "configs" / "ci-tiny.yaml")
MODEL = "cmunext"  # the model infra/mlflow/users.yaml grants on
PASSWORDS = {name: f"pw-{name}-{uuid.uuid4().hex}" for name in ("admin", "cmunext-pipeline", "reviewer", "cmunext-serving")}
PASSWORD_ENV = {"CMUNEXT_PIPELINE_PASSWORD": PASSWORDS["cmunext-pipeline"],
                "CMUNEXT_REVIEWER_PASSWORD": PASSWORDS["reviewer"], "CMUNEXT_READER_PASSWORD": PASSWORDS["cmunext-serving"]}


@pytest.fixture(scope="module")
def server(tmp_path_factory, s3_server):
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow-auth"), s3_server, bucket="mlflow-auth-artifacts",
                       admin=("admin", PASSWORDS["admin"]))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def base_env(server, s3_server, tmp_path_factory) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    return {**env, **s3_server.env(), "MLFLOW_TRACKING_URI": server.url, "TQDM_DISABLE": "1",
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "CMUNEXT_HOME": str(tmp_path_factory.mktemp("auth-state"))}


def as_user(env: dict, user: str | None, password: str | None = None, **extra) -> dict:
    out = {**env, **extra}
    if user:
        out.update(MLFLOW_TRACKING_USERNAME=user, MLFLOW_TRACKING_PASSWORD=password or PASSWORDS[user])
    return out


def cmunext(env: dict, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "cmunext"), *args], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=timeout)


@pytest.fixture(scope="module")
def applied(base_env) -> list[subprocess.CompletedProcess]:
    """`registry users apply` as the admin, twice."""
    env = as_user(base_env, "admin", **PASSWORD_ENV)
    return [cmunext(env, "registry", "users", "apply", str(USERS_FILE)) for _ in range(2)]


def admin_client(server):
    """MLflow's user API; the admin's credentials come from the environment `as_admin` sets."""
    from mlflow.server import get_app_client
    return get_app_client("basic-auth", tracking_uri=server.url)


@pytest.fixture
def as_admin(server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORDS["admin"])
    import mlflow
    mlflow.set_tracking_uri(server.url)
    mlflow.set_registry_uri(server.url)
    return mlflow.MlflowClient()


def show(env: dict) -> dict:
    proc = cmunext(env, "registry", "show", "--model-name", MODEL, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def refused(proc: subprocess.CompletedProcess, *phrases: str) -> str:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "cmunext: error:" in proc.stderr, proc.stderr[-2000:]
    for phrase in phrases:
        assert phrase in proc.stderr, (phrase, proc.stderr)
    return proc.stderr


# ---- users and roles -------------------------------------------------------------------------------------------

def test_users_apply_creates_users_and_is_idempotent(applied, server, as_admin):
    first, second = applied
    assert first.returncode == 0, first.stderr
    assert "cmunext-pipeline (pipeline): created; experiment" in first.stdout and "(granted)" in first.stdout
    assert second.returncode == 0, second.stderr
    lines = second.stdout.strip().splitlines()
    assert len(lines) == 3 and all(": exists; " in line for line in lines), second.stdout
    assert "(granted)" not in second.stdout and "(changed)" not in second.stdout  # nothing to do the second time
    assert second.stdout.count("(unchanged)") == 6

    client = admin_client(server)
    exp = as_admin.get_experiment_by_name("cmunext").experiment_id
    grants = {user: (client.get_user_permission(user, "experiment", exp).permission,
                     client.get_user_permission(user, "registered_model", MODEL).permission)
              for user in ("cmunext-pipeline", "reviewer", "cmunext-serving")}
    assert grants == {"cmunext-pipeline": ("EDIT", "EDIT"), "reviewer": ("READ", "MANAGE"),
                      "cmunext-serving": ("READ", "READ")}
    # anyone else: the default permission is none
    client.create_user("someone-else", f"pw-{uuid.uuid4().hex}")
    assert client.get_user_permission("someone-else", "registered_model", MODEL).permission == "NO_PERMISSIONS"


def test_users_apply_refuses_non_admins_and_bad_files(applied, base_env, tmp_path):
    proc = cmunext(as_user(base_env, "reviewer", **PASSWORD_ENV), "registry", "users", "apply", str(USERS_FILE))
    refused(proc, "'reviewer' is not an admin")
    bad = tmp_path / "users.yaml"
    bad.write_text("users:\n  - name: x\n    role: superuser\n")
    refused(cmunext(as_user(base_env, "admin"), "registry", "users", "apply", str(bad)), str(bad), "users.0.role")
    bad.write_text("users:\n  - name: newcomer\n    role: reader\n    password_env: NOT_SET_ANYWHERE\n")
    refused(cmunext(as_user(base_env, "admin"), "registry", "users", "apply", str(bad)),
            "'newcomer' does not exist yet and $NOT_SET_ANYWHERE gives no password")


# ---- refused before anything happens ---------------------------------------------------------------------------

def test_no_credentials_wrong_password_and_reader_training_change_nothing(applied, base_env, server, tmp_path,
                                                                          as_admin):
    err = refused(cmunext(base_env, "registry", "show", "--model-name", MODEL),
                  server.url, "requires a login and none was given", "MLFLOW_TRACKING_USERNAME")
    wrong = as_user(base_env, "cmunext-pipeline", "not-the-password")
    refused(cmunext(wrong, "registry", "show", "--model-name", MODEL),
            server.url, "refused the credentials of user 'cmunext-pipeline'")

    for env, phrase in ((base_env, "requires a login and none was given"),
                        (wrong, "refused the credentials of user 'cmunext-pipeline'"),
                        (as_user(base_env, "cmunext-serving"), "'cmunext-serving' has READ on experiment")):
        home = tmp_path / f"state-{uuid.uuid4().hex[:6]}"
        proc = cmunext({**env, "CMUNEXT_HOME": str(home)}, "pipeline", "run", "--config", CI_TINY,
                       "--set", f"registry.model_name={MODEL}")
        refused(proc, server.url, phrase)
        assert not home.exists(), "a refused run wrote to its state folder"
    exp = as_admin.get_experiment_by_name("cmunext")
    assert as_admin.search_runs([exp.experiment_id]) == []  # no run was created
    assert "Traceback" not in err


# ---- the pipeline user trains and promotes ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def pipeline_run(applied, base_env):
    proc = cmunext(as_user(base_env, "cmunext-pipeline"), "pipeline", "run", "--config", CI_TINY,
                   "--set", f"registry.model_name={MODEL}")
    return proc


def test_pipeline_user_promotes_and_history_names_it(pipeline_run, base_env):
    assert pipeline_run.returncode == 0, pipeline_run.stderr[-4000:]
    assert "PROMOTED" in pipeline_run.stdout
    reader = as_user(base_env, "cmunext-serving")
    info = show(reader)  # the reader may look
    assert info["champion"]["version"] == "1"
    (entry,) = info["history"]
    assert entry["event"] == "promoted" and entry["user"] == "cmunext-pipeline"
    assert info["champion"]["tags"]["promoted_by"] == "cmunext-pipeline"
    assert info["champion"]["tags"]["registered_by"] == "cmunext-pipeline"
    text = cmunext(reader, "registry", "show", "--model-name", MODEL)
    assert "promoted     v1 (replaced -) by cmunext-pipeline" in text.stdout, text.stdout


@pytest.fixture(scope="module")
def two_versions(pipeline_run, base_env, server):
    """A second version of the champion's model, registered by the pipeline user, promoted by the reviewer:
    champion v2, previous v1."""
    assert pipeline_run.returncode == 0, pipeline_run.stderr[-4000:]
    reader = as_user(base_env, "cmunext-serving")
    uri = show(reader)["champion"]["tags"]["run_id"]
    code = ("import sys, mlflow; from cmunext.tracking import registry\n"
            "run = mlflow.get_run(sys.argv[1]); print(registry.register(run.data.tags['model_uri'], 'cmunext', {}))")
    reg = subprocess.run([str(VENV_BIN / "python"), "-c", code, uri], capture_output=True, text=True, cwd=ROOT,
                         env=as_user(base_env, "cmunext-pipeline"), timeout=300)
    assert reg.returncode == 0 and reg.stdout.strip() == "2", reg.stderr[-3000:]
    promoted = cmunext(as_user(base_env, "reviewer"), "registry", "promote", "2", "--model-name", MODEL,
                       "--reason", "reviewed on the March scans")
    assert promoted.returncode == 0, promoted.stderr
    return show(reader)


def test_reader_and_pipeline_user_cannot_roll_back_or_promote(two_versions, base_env):
    before = two_versions
    assert before["champion"]["version"] == "2" and before["history"][-1]["user"] == "reviewer"
    reader = as_user(base_env, "cmunext-serving")
    refused(cmunext(reader, "registry", "promote", "1", "--model-name", MODEL, "--reason", "x"),
            "'cmunext-serving' has READ on registered_model 'cmunext'", "Nothing was changed")
    refused(cmunext(reader, "registry", "rollback", "--model-name", MODEL), "'cmunext-serving' has READ")
    # the pipeline user may move aliases but not delete them, which this rollback needs: refused up front
    refused(cmunext(as_user(base_env, "cmunext-pipeline"), "registry", "rollback", "--model-name", MODEL),
            "'cmunext-pipeline' has EDIT", "delete the alias 'previous'")
    assert show(reader) == before


def test_reviewer_rolls_back_and_is_named(two_versions, base_env):
    proc = cmunext(as_user(base_env, "reviewer"), "registry", "rollback", "--model-name", MODEL,
                   "--reason", "v2 misreads small lesions")
    assert proc.returncode == 0, proc.stderr
    info = show(as_user(base_env, "cmunext-serving"))
    assert info["champion"]["version"] == "1"
    assert [(h["event"], h["version"], h["user"]) for h in info["history"]] == [
        ("promoted", "1", "cmunext-pipeline"), ("promoted", "2", "reviewer"), ("rolled_back", "1", "reviewer")]
    # the reader serves: `cmunext serve` resolves the champion (v1 again) to the bento the pipeline built
    serve = [str(VENV_BIN / "cmunext"), "serve", "--model-name", MODEL, "--port", str(free_port())]
    refused(cmunext(base_env, *serve[1:]), "requires a login and none was given")
    proc = subprocess.Popen(serve, env=as_user(base_env, "cmunext-serving"), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, cwd=ROOT, start_new_session=True)
    try:
        first = proc.stdout.readline()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert first.startswith("serving cmunext") and "on http://127.0.0.1:" in first, first


def test_rejection_names_the_pipeline_user(pipeline_run, base_env):
    proc = cmunext(as_user(base_env, "cmunext-pipeline"), "pipeline", "run", "--config", CI_TINY,
                   "--set", f"registry.model_name={MODEL}", "--set", "gate.min_iou=0.99")
    assert proc.returncode == 0 and "REJECTED" in proc.stdout, proc.stderr[-4000:]
    last = show(as_user(base_env, "cmunext-serving"))["history"][-1]
    assert last["event"] == "rejected" and last["user"] == "cmunext-pipeline" and last["version"] is None
    assert "misses >= 0.99" in last["reason"] and last["run_id"]


# ---- no password written anywhere ------------------------------------------------------------------------------

def test_no_password_in_logs_state_mlflow_yaml_or_git(pipeline_run, base_env, server, as_admin, tmp_path):
    secrets = list(PASSWORDS.values())
    places: dict[str, bytes] = {"pipeline output": (pipeline_run.stdout + pipeline_run.stderr).encode()}
    home = Path(base_env["CMUNEXT_HOME"])
    for f in home.rglob("*"):
        if f.is_file() and not f.is_symlink():
            places[str(f)] = f.read_bytes()
    places["mlflow server log"] = (server.workdir / "mlflow-server.log").read_bytes()
    exp = as_admin.get_experiment_by_name("cmunext")
    for run in as_admin.search_runs([exp.experiment_id]):
        places[f"run {run.info.run_id}"] = json.dumps([run.data.params, run.data.tags]).encode()
    for v in as_admin.search_model_versions(f"name='{MODEL}'"):
        places[f"version {v.version}"] = json.dumps(v.tags).encode()
    places["registered model"] = json.dumps(as_admin.get_registered_model(MODEL).tags).encode()
    compiled = tmp_path / "pipeline.yaml"
    proc = cmunext(as_user(base_env, "cmunext-pipeline", CMUNEXT_HOME=str(tmp_path / "s")), "pipeline", "compile",
                   "--out", str(compiled))
    assert proc.returncode == 0, proc.stderr
    places["compiled pipeline"] = compiled.read_bytes() + proc.stdout.encode() + proc.stderr.encode()
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True).stdout.split("\0")
    places.update({f"git:{f}": (ROOT / f).read_bytes() for f in files if f and (ROOT / f).is_file()})
    assert len(places) > 20
    leaks = [where for where, data in places.items() for s in secrets if s.encode() in data]
    assert leaks == [], f"a password was written to {leaks}"
