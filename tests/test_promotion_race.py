"""Promotion across machines that share only MLflow and the bento store: two processes with their own state
folders race to promote against one `mlflow server` and a real S3-protocol server (moto). The lease in the
store (cmunext/tracking/lease.py) serialises them, the compare-and-set lets exactly one move `champion`, and a
holder that crashes blocks the others only until its lease expires."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import ROOT, MlflowServer

CI_TINY = str(ROOT / "configs" / "ci-tiny.yaml")
MODEL = "cmunext-race"


@pytest.fixture(scope="module")
def shared(tmp_path_factory, s3_server):
    work = tmp_path_factory.mktemp("race")
    server = MlflowServer(work, s3_server, bucket="race-artifacts")
    s3_server.make_bucket("race-store")
    env = {**os.environ, **s3_server.env(), "MLFLOW_TRACKING_URI": server.url,
           "CMUNEXT_BENTO_STORE": "s3://race-store/bentos"}
    yield {"env": env, "work": work, "server": server}
    server.stop()


def _register_two_versions(env: dict, work) -> list[tuple[str, str]]:
    """Two gated training runs of MODEL, registered (what the package step leaves): [(version, run_id)]."""
    code = work / "identity_model.py"
    code.write_text("import mlflow.pyfunc\n\n\nclass Identity(mlflow.pyfunc.PythonModel):\n"
                    "    def predict(self, context, model_input):\n        return model_input\n\n\n"
                    "mlflow.models.set_model(Identity())\n")
    script = f"""
import json, mlflow
from cmunext.config import load_config
from cmunext.steps import register
from cmunext.tracking import mlflow_runs
cfg = load_config({CI_TINY!r}, ["registry.model_name={MODEL}"])
experiment = mlflow_runs.setup()
out = []
for _ in range(2):
    with mlflow.start_run(experiment_id=experiment) as run:
        info = mlflow.pyfunc.log_model(name="model", python_model={str(code)!r}, pip_requirements=[])
    decision = {{"decision": "promote", "reasons": [], "checks": [], "champion_version": None}}
    evaluation = {{"metrics": {{"iou": {{"value": 0.5}}, "dice": {{"value": 0.6}}}}, "latency": {{"p95_ms": 3.0}}}}
    out.append((register(cfg, decision, evaluation, run.info.run_id, info.model_uri, "rev"), run.info.run_id))
print(json.dumps(out))
"""
    proc = subprocess.run([sys.executable, "-c", script], env={**env, "CMUNEXT_HOME": str(work / "registrar")},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [tuple(v) for v in json.loads(proc.stdout.strip().splitlines()[-1])]


PROMOTER = """
import json, sys, time
from cmunext.config import load_config
from cmunext.steps import promote
cfg = load_config(sys.argv[1], ["registry.model_name=" + sys.argv[2]])
version, run_id, start = sys.argv[3], sys.argv[4], float(sys.argv[5])
decision = {"decision": "promote", "reasons": [], "checks": [{"message": "ok"}], "champion_version": None}
time.sleep(max(0.0, start - time.time()))  # both gates saw no champion; both start promoting at once
result = promote(cfg, decision, version, run_id, {"passed": True, "summary": "ok"})  # a refusal is an outcome
print(json.dumps({"promoted": result.version} if result.event == "promoted" else {"refused": result.reason,
                                                                                 "champion": result.champion}))
"""


def test_two_machines_race_and_exactly_one_champion_move(shared):
    env, work = shared["env"], shared["work"]
    (v1, run1), (v2, run2) = _register_two_versions(env, work)
    start = time.time() + 8  # both processes imported and waiting by then
    procs = [subprocess.Popen([sys.executable, "-c", PROMOTER, CI_TINY, MODEL, v, r, str(start)],
                              env={**env, "CMUNEXT_HOME": str(work / f"machine-{i}")}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for i, (v, r) in enumerate([(v1, run1), (v2, run2)])]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    winners = [r["promoted"] for r in results if "promoted" in r]
    refused = [r["refused"] for r in results if "refused" in r]
    assert len(winners) == 1 and len(refused) == 1, results
    assert "champion is now version" in refused[0] and "re-run the pipeline" in refused[0]
    assert [r["champion"] for r in results if "refused" in r] == winners  # it names the champion that moved in

    import mlflow
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"], registry_uri=env["MLFLOW_TRACKING_URI"])
    assert client.get_model_version_by_alias(MODEL, "champion").version == winners[0]
    loser = v2 if winners[0] == v1 else v1
    assert client.get_model_version(MODEL, loser).tags["gate_decision"] == "stale"  # its decision is recorded
    history = json.loads(client.get_registered_model(MODEL).tags["champion_history"])
    assert [h["event"] for h in history] == ["promoted"] and history[0]["version"] == winners[0]
    lease = _stored_lease(env, MODEL)
    assert lease["released"] is True  # both holders let go
    print(f"\nrace: winner v{winners[0]}, loser v{loser} refused: {refused[0]}")


def test_a_crashed_holders_lease_expires(shared, monkeypatch):
    from cmunext.tracking.lease import LeaseTimeout, held  # imported first: the holder's 10 s start now

    env = shared["env"]
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time\nfrom cmunext.tracking.lease import held\n"
         f"with held({MODEL + '-crash'!r}, ttl=10):\n    print('held', flush=True)\n    time.sleep(600)\n"],
        env={**env, "CMUNEXT_HOME": str(shared["work"] / "crasher")}, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    expires = _stored_lease(env, MODEL + "-crash")["expires"]  # the holder's own clock reading + 10 s
    holder.kill()  # SIGKILL: no release, as when a pod is lost
    holder.wait()
    for key in ("MLFLOW_TRACKING_URI", "CMUNEXT_BENTO_STORE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(key, env[key])
    with pytest.raises(LeaseTimeout, match="is held by"):
        with held(MODEL + "-crash", wait=1):
            pass
    with held(MODEL + "-crash", wait=30) as lease:
        late = time.time() - expires
    assert 0 <= late < 10, late  # taken over once the crashed holder's 10 s ran out, not before
    assert lease["uri"].startswith("s3://race-store/bentos/")
    print(f"\ncrashed holder: lease taken over {late:.1f} s after it expired (ttl 10 s)")


def _stored_lease(env: dict, model: str) -> dict:
    import boto3
    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")
    return json.loads(s3.get_object(Bucket="race-store", Key=f"bentos/{model}/promotion.lease")["Body"].read())
