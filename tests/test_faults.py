"""Faults injected into real processes: nothing is lost, nothing is half made.

This module runs its own moto (S3) and `mlflow server` (SQLite, artifacts on that S3), so it can stop and start
them without disturbing the session's servers.

- The pipeline scenario (slow): `cmunext pipeline run` with distinctive fake credentials in its environment;
  the MLflow server is stopped while the train step is mid-run and started again (the client's retries carry
  the step over the outage); the whole run is SIGKILLed as the package step starts, right after promotion;
  then it is run again. Checked: every epoch's metrics reached MLflow, the registry at the kill pointed at a
  version whose model artifacts exist, the re-run takes finished steps from the cache, promotes nothing twice
  and builds the missing bento, and no credential appears in any log, MLflow record or file (the compiled YAML:
  test_safety.py).
- MLflow down for longer than the client's retries: the train step fails naming the server and the cause, and a
  re-run resumes from its checkpoint into the same MLflow run, which ends with every epoch.
- A promotion interrupted between registering the version and moving the alias is finished by the re-run.
- S3 down behind the MLflow server during an artifact upload; S3 down or refusing credentials during a bento
  export: clear errors naming the endpoint, and the same call works once S3 is back.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import (
    ROOT,
    VENV_BIN,
    MlflowServer,
    S3Server,
    free_port,
    stop,
    wait_for_port,
)

pytestmark = pytest.mark.timeout(900)

CI_TINY = str(ROOT / "configs" / "ci-tiny.yaml")
MODEL = "cmunext-faults"
BUCKET = "faults-artifacts"
EPOCHS = 4


class RestartableS3(S3Server):
    """moto_server that can be stopped and started again on the same port (moto keeps data in memory only:
    a restart comes back empty, so the buckets are made again)."""

    def down(self) -> None:
        stop(self.proc)

    def up(self, buckets=(BUCKET,)) -> None:
        self.proc = subprocess.Popen([str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=self._log, stderr=subprocess.STDOUT)
        wait_for_port(self.port, self.proc)
        for bucket in buckets:
            self.make_bucket(bucket)


@pytest.fixture(scope="module")
def own_s3(tmp_path_factory):
    server = RestartableS3(tmp_path_factory.mktemp("faults-s3") / "moto.log")
    yield server
    server.close()


@pytest.fixture(scope="module")
def own_mlflow(own_s3, tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("faults-mlflow"), own_s3, bucket=BUCKET)
    yield server
    server.stop()


@pytest.fixture
def tracking(own_mlflow, own_s3, monkeypatch, tmp_path):
    """This process talks to the module's MLflow server, with a private state folder."""
    for k, v in own_s3.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", own_mlflow.url)
    monkeypatch.setenv("CMUNEXT_HOME", str(tmp_path / "state"))
    yield own_mlflow
    if own_mlflow.proc.poll() is not None:  # a test that stopped it failed before starting it again
        own_mlflow.start()


@pytest.fixture(scope="module")
def shards(synth_dataset, tmp_path_factory) -> Path:
    from cmunext.data.layout import list_pairs
    from cmunext.data.preprocess import preprocess

    stems = list_pairs(synth_dataset)
    out = tmp_path_factory.mktemp("faults-shards")
    preprocess(synth_dataset, {"train": stems[:16], "val": stems[16:20], "test": stems[20:]}, out, 64, progress=False)
    return out


def _client():
    import mlflow
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    mlflow.set_registry_uri(os.environ["MLFLOW_TRACKING_URI"])
    return mlflow.MlflowClient()


# ---- the pipeline: MLflow outage mid-train, SIGKILL after promotion, re-run ---------------------------------

def _wait_for(what: str, check, proc: subprocess.Popen, timeout: float = 400, poll: float = 0.1):
    deadline = time.time() + timeout
    while not check():
        assert proc.poll() is None, f"the pipeline ended (exit {proc.returncode}) before {what}"
        assert time.time() < deadline, f"no {what} after {timeout} s"
        time.sleep(poll)


def _scan_for(secrets: dict[str, str], blobs: dict[str, bytes]) -> list[str]:
    return [f"{key} in {where}" for where, data in blobs.items() for key, value in secrets.items()
            if value.encode() in data]


@pytest.fixture(scope="module")
def scenario(own_mlflow, own_s3, tmp_path_factory):
    from test_safety import SECRET_KEYS, fake_credentials

    work = tmp_path_factory.mktemp("faults-pipeline")
    home = work / "state"
    creds = fake_credentials()
    env = {**os.environ, **own_s3.env(), **creds, "CMUNEXT_HOME": str(home), "MLFLOW_TRACKING_URI": own_mlflow.url,
           "TQDM_DISABLE": "1"}
    env.pop("BENTOML_HOME", None)  # bentos go under the state folder
    cmd = [str(VENV_BIN / "cmunext"), "pipeline", "run", "--config", CI_TINY,
           "--set", f"registry.model_name={MODEL}", "--set", f"train.epochs={EPOCHS}"]
    outputs = home / "kfp" / "outputs"
    facts: dict = {"creds": creds}

    # run A: MLflow stopped mid-train and started again, then the run is killed during infra-validation (after
    # package registered the version and built its bento, before promote could move `champion`)
    log_a = work / "run-a.log"
    t0 = time.time()
    with open(log_a, "wb") as out:
        proc = subprocess.Popen(cmd + ["--json", str(work / "a.json")], env=env, cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for("first checkpoint", lambda: any(outputs.glob("*/train-model/model/checkpoints/last.pt.sha256")),
                  proc)
        down_at = time.time()
        own_mlflow.stop()
        try:
            time.sleep(3)
        finally:
            own_mlflow.start()  # same port, same backend store; returns once it listens
        up_at = time.time()
        facts["outage"] = {"stopped_at_s": round(down_at - t0, 1), "seconds": round(up_at - down_at, 1),
                           "down_ms": int(down_at * 1000), "up_ms": int(up_at * 1000)}
        _wait_for("infra-validate step", lambda: re.search(r"infra-validate-model\s+started",
                                                            log_a.read_text(errors="replace")), proc)
        time.sleep(1.0)  # inside the step: its process is importing the bento or booting its server
        os.killpg(proc.pid, signal.SIGKILL)
        facts["killed_at_s"] = round(time.time() - t0, 1)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    facts["a_exit"] = proc.returncode
    time.sleep(0.5)
    import psutil
    facts["survivors"] = [p.info["pid"] for p in psutil.process_iter(["pid", "cmdline"])
                          if str(home) in " ".join(p.info["cmdline"] or [])]

    # the registry as the kill left it
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {**own_s3.env(), "MLFLOW_TRACKING_URI": own_mlflow.url, "CMUNEXT_HOME": str(home),
                     "BENTOML_HOME": str(home / "bentoml")}.items():
            mp.setenv(k, v)
        import mlflow

        from cmunext.serving.serve import find_bento
        from cmunext.tracking import registry

        client = _client()
        facts["at_kill"] = {"champion": registry.champion(MODEL),
                            "versions": sorted(v.version for v in client.search_model_versions(f"name='{MODEL}'"))}
        if facts["at_kill"]["champion"]:
            local = Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL}@champion", dst_path=str(work / "champ")))
            facts["at_kill"]["artifacts"] = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
        try:
            facts["at_kill"]["bento"] = find_bento(facts["at_kill"]["champion"]["version"], MODEL)
        except (LookupError, TypeError) as exc:
            facts["at_kill"]["bento_error"] = str(exc)

        # run B: the same command again
        t1 = time.time()
        rerun = subprocess.run(cmd + ["--json", str(work / "b.json")], env=env, cwd=ROOT, capture_output=True,
                               text=True, timeout=800)
        facts["b_seconds"] = round(time.time() - t1, 1)
        facts["b_exit"], facts["b_log"] = rerun.returncode, rerun.stdout + rerun.stderr
        facts["b_summary"] = json.loads((work / "b.json").read_text()) if (work / "b.json").exists() else None
        champ = registry.champion(MODEL)
        facts["after"] = {"champion": champ, "history": registry.history(MODEL),
                          "versions": sorted(v.version for v in client.search_model_versions(f"name='{MODEL}'"))}
        if champ:
            metrics = client.get_metric_history(champ["run_id"], "val_iou")
            facts["after"]["epochs"] = sorted(m.step for m in metrics)
            facts["after"]["epoch_times_ms"] = {m.step: m.timestamp for m in metrics}
            facts["after"]["version_tags"] = registry.version_tags(MODEL, champ["version"])
            try:
                facts["after"]["bento"] = find_bento(champ["version"], MODEL)
            except LookupError as exc:
                facts["after"]["bento_error"] = str(exc)
        objects = own_s3.client().list_objects_v2(Bucket=BUCKET).get("Contents", [])
        facts["after"]["s3_keys"] = [o["Key"] for o in objects]

        # every place a credential could end up
        # (the compiled YAML, with these variables set, is test_safety.py's)
        blobs = {"run A log": log_a.read_bytes(), "run B log": facts["b_log"].encode()}
        for root in (home, own_mlflow.workdir):
            for p in root.rglob("*"):
                if p.is_file() and not p.is_symlink():
                    blobs[str(p)] = p.read_bytes()
        s3 = own_s3.client()
        for o in objects:
            blobs[f"s3://{BUCKET}/{o['Key']}"] = s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()
        records = []
        for run in client.search_runs([e.experiment_id for e in client.search_experiments()]):
            records.append(json.dumps({"params": run.data.params, "tags": run.data.tags}))
        for rm in client.search_registered_models():
            records.append(json.dumps(rm.tags))
            for v in client.search_model_versions(f"name='{rm.name}'"):
                records.append(json.dumps(v.tags))
        blobs["MLflow params and tags"] = "\n".join(records).encode()
        git = subprocess.run(["git", "grep", "-I", "-l", "--untracked", "-F",
                              *[a for k in SECRET_KEYS for a in ("-e", creds[k])]],
                             cwd=ROOT, capture_output=True, text=True)
        facts["git_grep"] = git.stdout.strip()
        facts["leaks"] = _scan_for({k: creds[k] for k in SECRET_KEYS}, blobs)
        facts["scanned"] = {"files": len(blobs), "bytes": sum(len(b) for b in blobs.values()),
                            "runs_and_models": len(records)}
    (work / "facts.json").write_text(json.dumps({k: v for k, v in facts.items() if k not in ("b_log", "creds")},
                                                indent=1, default=str))
    print("\nscenario:", json.dumps({k: facts[k] for k in ("outage", "killed_at_s", "a_exit", "b_exit", "b_seconds",
                                                          "scanned")}))
    return facts


@pytest.mark.slow
def test_mlflow_outage_mid_training_loses_nothing(scenario):
    after = scenario["after"]
    assert after["champion"], scenario["b_log"][-3000:]
    assert after["epochs"] == list(range(1, EPOCHS + 1))  # every epoch's metrics reached MLflow
    down, up = scenario["outage"]["down_ms"], scenario["outage"]["up_ms"]
    during = [s for s, ts in after["epoch_times_ms"].items() if down <= ts <= up]
    assert during, f"no epoch ended while MLflow was down ({after['epoch_times_ms']}, outage {down}..{up})"
    assert scenario["outage"]["seconds"] >= 3


@pytest.mark.slow
def test_kill_during_infra_validation_leaves_the_champion_unchanged(scenario):
    at_kill = scenario["at_kill"]
    assert scenario["a_exit"] == -signal.SIGKILL
    assert scenario["survivors"] == [], "processes of the killed run (its bento server too) are still alive"
    # registered and packaged, never promoted: `champion` moves only after the bento served as evaluated
    assert at_kill["champion"] is None and at_kill["versions"] == ["1"]


@pytest.mark.slow
def test_rerun_after_kill_completes_from_cache_and_promotes_once(scenario):
    log, after = scenario["b_log"], scenario["after"]
    assert scenario["b_exit"] == 0, log[-4000:]
    for task in ("validate-data", "preprocess-data", "train-model", "evaluate-model", "package-model"):
        assert re.search(rf"{task}\s+cached", log), task
    assert re.search(r"infra-validate-model\s+done", log) and re.search(r"promote-model\s+done", log)
    assert after["versions"] == ["1"] and after["champion"]["version"] == "1"
    assert [h["event"] for h in after["history"]] == ["promoted"]
    summary = scenario["b_summary"]
    assert summary["champion_before"] is None and summary["champion_after"] == "1" and summary["promoted"]
    assert after["bento"] and after["version_tags"]["bento_tag"] == after["bento"]
    assert after["version_tags"]["infra_validation"] == "passed"
    assert any(k.endswith("model.safetensors") for k in after["s3_keys"])


@pytest.mark.slow
def test_no_credential_leaks_into_logs_mlflow_records_or_files(scenario):
    assert scenario["scanned"]["files"] > 100 and scenario["scanned"]["runs_and_models"] >= 2
    assert scenario["leaks"] == []
    assert scenario["git_grep"] == ""


# ---- MLflow down for longer than the client retries -----------------------------------------------------------

def test_mlflow_down_past_retries_fails_clearly_then_rerun_resumes_the_same_run(tracking, shards, tmp_path,
                                                                               monkeypatch):
    from cmunext.config import load_config
    from cmunext.steps import train
    from cmunext.tracking import mlflow_runs

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # fail in seconds, not after ~4 minutes
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    cfg = load_config(CI_TINY, ["train.epochs=3"])
    out = tmp_path / "train"
    original = mlflow_runs.EpochLogger.on_epoch_end
    outage = {"on": True}

    def stop_server_at_epoch_2(self, epoch, metrics):
        if epoch == 2 and outage["on"]:
            tracking.stop()
        return original(self, epoch, metrics)

    monkeypatch.setattr(mlflow_runs.EpochLogger, "on_epoch_end", stop_server_at_epoch_2)
    t0 = time.time()
    with pytest.raises(mlflow_runs.TrackingError) as e:
        train(cfg, shards, out, "rev-x", "md5-x")
    failed_after = time.time() - t0
    message = str(e.value)
    assert tracking.url in message and "did not answer" in message and "run the step again" in message, message
    run_id = (out / "mlflow_run_id").read_text().strip()
    assert (out / "checkpoints" / "last.pt").exists()

    outage["on"] = False
    tracking.start()
    result = train(cfg, shards, out, "rev-x", "md5-x")
    assert result["run_id"] == run_id  # the same MLflow run, continued
    client = _client()
    assert sorted(m.step for m in client.get_metric_history(run_id, "val_iou")) == [1, 2, 3]  # epoch 2 backfilled
    run = client.get_run(run_id)
    assert run.data.tags["status_detail"] == "trained" and run.data.tags["model_uri"] == result["model_uri"]
    runs = client.search_runs([run.info.experiment_id], filter_string="tags.data_md5 = 'md5-x'")
    assert [r.info.run_id for r in runs] == [run_id]  # no orphan second run
    print(f"\nMLflow down past retries: failed after {failed_after:.1f} s; re-run resumed run {run_id}")


# ---- checkpoints: corrupted in place, or a kill between the file and its checksum -----------------------------

def test_checkpoint_corruption_is_caught_by_the_checksum(tmp_path, caplog):
    """test_training.py covers a truncated last checkpoint; here the damage keeps the size (a flipped byte), the
    kill lands between a checkpoint and its checksum sidecar, and both checkpoints are bad (a fresh start)."""
    import torch

    from cmunext.engine.checkpoint import CheckpointDir

    ckpt = CheckpointDir(tmp_path / "checkpoints")
    for epoch in (1, 2):
        ckpt.save({"epoch": epoch, "weights": torch.full((64, 64), float(epoch))})
    assert ckpt.load_latest()["epoch"] == 2

    data = bytearray(ckpt.last.read_bytes())
    data[len(data) // 2] ^= 0x40  # same size, one bit: only the checksum can tell
    ckpt.last.write_bytes(bytes(data))
    with caplog.at_level("WARNING"):
        state = ckpt.load_latest()
    assert state["epoch"] == 1 and torch.equal(state["weights"], torch.full((64, 64), 1.0))
    assert "fails its checksum" in caplog.text

    ckpt.last.with_suffix(".pt.sha256").unlink()  # killed after the rename, before the new sidecar was written
    assert ckpt.load_latest()["epoch"] == 1

    data = bytearray(ckpt.previous.read_bytes())
    data[-10] ^= 0x01
    ckpt.previous.write_bytes(bytes(data))
    assert ckpt.load_latest() is None  # nothing verifies: the trainer starts from epoch 0 instead of crashing


# ---- a promotion cut off between register and alias ----------------------------------------------------------

def test_interrupted_promotion_is_finished_by_the_rerun_and_never_repeated(tmp_path, monkeypatch):
    """Local SQLite store: register, then 'MLflow goes down' before the alias moves; the re-run finishes it."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from cmunext.config import load_config
    from cmunext.steps import promote, register
    from cmunext.tracking import mlflow_runs, registry

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("CMUNEXT_HOME", str(tmp_path / "state"))
    cfg = load_config(CI_TINY, ["registry.model_name=cmunext-interrupted"])
    name = cfg.registry.model_name
    experiment = mlflow_runs.setup()

    code = tmp_path / "identity_model.py"  # a logged model (from code) is what the registry registers
    code.write_text("import mlflow.pyfunc\n\n\nclass Identity(mlflow.pyfunc.PythonModel):\n"
                    "    def predict(self, context, model_input):\n        return model_input\n\n\n"
                    "mlflow.models.set_model(Identity())\n")

    def trained_run() -> tuple[str, str]:
        with mlflow.start_run(experiment_id=experiment) as run:
            info = mlflow.pyfunc.log_model(name="model", python_model=str(code), pip_requirements=[])
        return run.info.run_id, info.model_uri

    def decision(champion):
        return {"decision": "promote", "reasons": [], "checks": [{"message": "ok"}], "champion_version": champion}

    evaluation = {"metrics": {"iou": {"value": 0.5}, "dice": {"value": 0.6}}, "latency": {"p95_ms": 3.0}}
    validation = {"passed": True, "summary": "canaries as evaluated"}
    run1, uri1 = trained_run()
    real_promote = registry.promote

    def server_gone(*args, **kwargs):
        raise MlflowException("simulated: the tracking server went away")

    assert register(cfg, decision(None), evaluation, run1, uri1, "rev") == "1"  # the package step's part
    monkeypatch.setattr(registry, "promote", server_gone)
    with pytest.raises(MlflowException):
        promote(cfg, decision(None), "1", run1, validation)
    assert registry.version_for_run(name, run1) == "1" and registry.champion(name) is None  # half made

    monkeypatch.setattr(registry, "promote", real_promote)
    assert register(cfg, decision(None), evaluation, run1, uri1, "rev") == "1"  # the re-run finds it, registers nothing
    done = promote(cfg, decision(None), "1", run1, validation)
    assert done.event == "promoted" and done.version == "1" and registry.champion(name)["version"] == "1"
    assert promote(cfg, decision(None), "1", run1, validation).event == "already_registered"

    run2, uri2 = trained_run()  # v2 promoted, then rolled back: re-running v2's promotion must not bring it back
    assert register(cfg, decision("1"), evaluation, run2, uri2, "rev") == "2"
    assert promote(cfg, decision("1"), "2", run2, validation).version == "2"
    registry.rollback(name, "bad model")
    assert register(cfg, decision("1"), evaluation, run2, uri2, "rev") == "2"
    assert promote(cfg, decision("1"), "2", run2, validation).event == "already_registered"
    assert registry.champion(name)["version"] == "1"
    versions = mlflow.MlflowClient().search_model_versions(f"name='{name}'")
    assert sorted(str(v.version) for v in versions) == ["1", "2"]
    assert [h["event"] for h in registry.history(name)] == ["promoted", "promoted", "rolled_back"]


# ---- S3 down or refusing credentials --------------------------------------------------------------------------

def test_bento_export_with_s3_down_or_wrong_credentials(tiny_bento, monkeypatch, tmp_path):
    import boto3

    from cmunext.serving.package import ExportError, export_archive

    monkeypatch.setenv("BENTOML_HOME", str(tiny_bento["bentoml_home"]))
    monkeypatch.setenv("CMUNEXT_HOME", str(tiny_bento["home"]))
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    tag = tiny_bento["bento_tag"]

    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    t0 = time.time()
    with pytest.raises(ExportError) as e:
        export_archive(tag, "s3://bentos/serving/")
    dead_seconds = time.time() - t0
    assert dead in str(e.value) and "nothing answers there" in str(e.value) and tag in str(e.value)

    # moto with IAM authentication on: only the key pair created at start is accepted
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "moto-auth.log", "wb")
    proc = subprocess.Popen([str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], stdout=log,
                            stderr=subprocess.STDOUT, env=dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3"))
    try:
        wait_for_port(port, proc)
        iam = boto3.client("iam", endpoint_url=url, region_name="us-east-1", aws_access_key_id="a",
                           aws_secret_access_key="b")
        iam.create_user(UserName="ci")
        key = iam.create_access_key(UserName="ci")["AccessKey"]
        iam.put_user_policy(UserName="ci", PolicyName="all", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id=key["AccessKeyId"],
                          aws_secret_access_key=key["SecretAccessKey"])
        s3.create_bucket(Bucket="bentos")
        monkeypatch.setenv("AWS_ENDPOINT_URL", url)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        t0 = time.time()
        with pytest.raises(ExportError) as e:
            export_archive(tag, "s3://bentos/serving/")
        refused_seconds = time.time() - t0
        message = str(e.value)
        assert url in message and "refused the credentials" in message, message
        assert "not-the-secret" not in message and key["SecretAccessKey"] not in message

        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        archive = export_archive(tag, "s3://bentos/serving/")  # the same call, right keys: works
        assert archive == f"s3://bentos/serving/{tag.replace(':', '-')}.bento"
        assert s3.head_object(Bucket="bentos", Key=f"serving/{tag.replace(':', '-')}.bento")["ContentLength"] > 10_000
    finally:
        stop(proc)
        log.close()
    print(f"\nbento export: dead endpoint refused after {dead_seconds:.1f} s (botocore retries), "
          f"wrong secret after {refused_seconds:.1f} s (not retried)")


def test_s3_down_behind_mlflow_during_artifact_upload(tracking, own_s3, monkeypatch):
    """Kept last in this module: restarting moto empties it (the bucket is made again)."""
    from cmunext.tracking import mlflow_runs

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # the default (7, backoff 2) takes ~5 minutes
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    client = _client()
    experiment = mlflow_runs.setup()
    run_id = client.create_run(experiment).info.run_id
    own_s3.down()
    try:
        t0 = time.time()
        with pytest.raises(mlflow_runs.TrackingError) as e:
            mlflow_runs.log_json(run_id, {"a": 1}, "evaluation/x.json")
        seconds = time.time() - t0
    finally:
        own_s3.up()
    message = str(e.value)
    assert tracking.url in message and "artifact store" in message and "server answers" in message, message
    mlflow_runs.log_json(run_id, {"a": 1}, "evaluation/x.json")  # S3 back: the same upload works
    assert [a.path for a in client.list_artifacts(run_id, "evaluation")] == ["evaluation/x.json"]
    print(f"\nS3 down behind MLflow: upload refused after {seconds:.1f} s with MLFLOW_HTTP_REQUEST_MAX_RETRIES=1")
