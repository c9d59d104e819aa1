"""The Kubeflow pipeline, run for real with kfp.local against a real MLflow server whose
artifacts live on a real S3-protocol server."""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import BUSI, VENV_BIN, busi
from pipeline_support import CI_TINY, cmunext, run, serving

MODEL = "cmunext-ci"


def registry(env) -> dict:
    proc = cmunext(env, "registry", "show", "--model-name", MODEL, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def first_run(env, tmp_path_factory):
    proc, summary = run(env, tmp_path_factory.mktemp("run1"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc, summary


def test_first_run_promotes_and_tracks_everything(first_run, env):
    proc, summary = first_run
    assert summary["promoted"] and summary["champion_before"] is None and summary["champion_after"] == "1"
    assert "PROMOTED" in proc.stdout and "MLflow UI" in proc.stdout
    reg = registry(env)
    champ = reg["champion"]
    assert champ["version"] == "1" and champ["tags"]["gate_decision"] == "promote"
    assert champ["tags"]["data_revision"] == "workspace" and "bento_tag" in champ["tags"]
    assert champ["tags"]["infra_validation"] == "passed"  # its bento booted and served before the alias moved
    assert [h["event"] for h in reg["history"]] == ["promoted"]
    assert "served by its bento" in reg["history"][0]["reason"]
    # the bento runs the form the evaluate step chose, and infra-validation saw it serve that form
    assert f"as evaluated in {champ['tags']['serving_form']}," in reg["history"][0]["reason"]
    order = [st["step"] for st in summary["steps"]]
    assert order.index("package-model") < order.index("infra-validate-model") < order.index("promote-model")

    import mlflow
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    mlflow.set_registry_uri(env["MLFLOW_TRACKING_URI"])  # an earlier test in this process may have set another
    os.environ.update({k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL")})
    run_info = mlflow.get_run(champ["run_id"])
    assert run_info.data.params["model.variant"] == "cmunext_s"
    assert run_info.data.tags["data_md5"] == summary["data_md5"] and run_info.data.tags["git_commit"]
    assert {"test_iou", "test_dice", "latency_p95_ms", "best_val_iou"} <= run_info.data.metrics.keys()
    history = mlflow.MlflowClient().get_metric_history(champ["run_id"], "val_iou")
    assert [m.step for m in history] == [1, 2]  # per-epoch metrics
    assert run_info.inputs.dataset_inputs[0].dataset.digest == summary["data_md5"][:36]
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(champ["run_id"])}
    evaluation = json.loads(Path(mlflow.artifacts.download_artifacts(
        run_id=champ["run_id"], artifact_path="evaluation/evaluation.json")).read_text())
    assert evaluation["precision"]["chosen"] == champ["tags"]["serving_form"]
    assert {"plots", "evaluation", "config.json"} <= artifacts
    # the champion loads through the registry alias and predicts probabilities
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    out = model.predict(np.zeros((2, 3, 64, 64), np.float32))
    assert out.shape == (2, 1, 64, 64) and ((out >= 0) & (out <= 1)).all()
    # the artifacts really are on the S3 server
    keys = [o["Key"] for o in _s3_objects(env)]
    assert any(k.endswith("model.safetensors") for k in keys)


def _s3_objects(env):
    import boto3
    s3 = boto3.client("s3", endpoint_url=env["MLFLOW_S3_ENDPOINT_URL"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")
    return s3.list_objects_v2(Bucket="mlflow-artifacts").get("Contents", [])


def test_unchanged_rerun_comes_from_cache(first_run, env, tmp_path):
    before = registry(env)["champion"]["tags"]
    proc, summary = run(env, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = registry(env)["champion"]["tags"]
    # evaluate runs again (the champion changed); package ships the stored bento when the artifact and its form
    # are the ones it was built from (a timing near a tie may pick another form: then it builds again)
    same = (after["artifact_sha256"], after["serving_form"]) == (before["artifact_sha256"], before["serving_form"])
    assert (after["bento_tag"] == before["bento_tag"]) == same
    for task in ("validate-data", "preprocess-data", "train-model"):
        assert re.search(rf"  {task}\s+cached\n", proc.stdout), task
    assert [s["status"] for s in summary["steps"] if s["step"] == "train-model"] == ["CACHED"]
    assert not summary["promoted"] and summary["champion_after"] == "1"
    assert [h["event"] for h in registry(env)["history"]] == ["promoted"]  # nothing promoted twice


def test_impossible_gate_rejects_and_keeps_champion(first_run, env, tmp_path):
    before = registry(env)
    proc, summary = run(env, tmp_path, "gate.min_iou=0.99")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "REJECTED" in proc.stdout and "test IoU" in proc.stdout and "misses >= 0.99" in proc.stdout
    assert summary["gate"]["decision"] == "reject" and not summary["promoted"]
    failed = [c for c in summary["gate"]["checks"] if not c["passed"]]
    assert failed[0]["name"] == "test IoU" and failed[0]["margin"] < 0
    after = registry(env)
    assert after["champion"]["version"] == before["champion"]["version"] and after["history"][:-1] == before["history"]
    rejection = after["history"][-1]  # recorded with who decided, though no version was registered
    assert rejection["event"] == "rejected" and rejection["version"] is None and rejection["run_id"]
    assert "misses >= 0.99" in rejection["reason"] and rejection["user"].startswith("local:")


def test_failing_step_leaves_registry_as_it_was(first_run, env, tmp_path, dataset_copy):
    before = registry(env)
    (dataset_copy / "masks" / "synth_00003.png").write_bytes(b"not a png")
    proc, _ = run(env, tmp_path, f"data.source={dataset_copy}")
    assert proc.returncode == 2
    log = proc.stdout + proc.stderr
    assert "data validation failed" in log and "masks/synth_00003.png" in log  # the step names the file
    error = proc.stderr.split("cmunext: error:")[-1]
    assert "validate-data" in error and "Champion unchanged: 1" in error and "Traceback" not in error
    assert registry(env) == before




def test_compiled_yaml_has_every_step_and_the_gate_condition(tmp_path):
    out = tmp_path / "pipeline.yaml"
    proc = cmunext(os.environ, "pipeline", "compile", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    spec = next(yaml.safe_load_all(out.read_text()))
    executors = set(spec["deploymentSpec"]["executors"])
    for step in ("check-changes", "validate-data", "preprocess-data", "train-model", "evaluate-model", "gate-model",
                 "package-model", "infra-validate-model", "promote-model"):
        assert f"exec-{step}" in executors
    gate = spec["components"]["comp-condition-1"]["dag"]["tasks"]["condition-2"]["triggerPolicy"]["condition"]
    assert "gate-model" in gate and "'promote'" in gate
    params = spec["root"]["inputDefinitions"]["parameters"]
    for name in ("data_revision", "if_changed", "variant", "image_size", "epochs", "batch_size", "lr", "seed",
                 "min_iou", "max_latency_ms"):
        assert name in params




def _png(height: int, width: int, seed: int) -> bytes:
    import io

    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(seed).random((height, width)) * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _served(env, model: str) -> dict:
    """What `cmunext serve` serves for MODEL's champion right now: /segment_json of a 40x50 image."""
    import requests
    with serving(env, model) as (url, _):
        return requests.post(f"{url}/segment_json", files={"image": ("x.png", _png(40, 50, 2), "image/png")},
                             timeout=60).json()


def test_cmunext_serve_serves_the_champions_bento(first_run, env):
    """`cmunext serve` resolves the champion through the registry to the bento this pipeline run built,
    and a real `bentoml serve` answers a segmentation request with a mask at the input's size."""
    import io
    import socket

    import requests
    from PIL import Image

    with serving(env, MODEL) as (url, port):
        r = requests.post(f"{url}/segment", files={"image": ("x.png", _png(90, 130, 0), "image/png")}, timeout=60)
        assert r.status_code == 200, r.text
        assert Image.open(io.BytesIO(r.content)).size == (130, 90)
        info = requests.post(f"{url}/segment_json", files={"image": ("x.png", _png(90, 130, 0), "image/png")},
                             timeout=60).json()
        assert info["model"]["mlflow_version"] == "1"
    with socket.socket() as s:  # the server went with `cmunext serve`: nothing holds the port
        assert s.connect_ex(("127.0.0.1", port)) != 0, "bentoml serve outlived `cmunext serve`"



def test_a_machine_with_an_empty_state_folder_serves_the_champion(first_run, env, tmp_path):
    """The deployment follows the registry: `cmunext serve` on a machine that shares only MLflow and the bento
    store resolves @champion, fetches its archive (checked against the recorded sha256) and serves it."""
    tags = registry(env)["champion"]["tags"]
    assert tags["bento_uri"].startswith("s3://cmunext-bentos/pipeline/cmunext-ci/v1/") and len(tags["bento_sha256"]) == 64
    empty = tmp_path / "another-machine"
    fresh = {**env, "CMUNEXT_HOME": str(empty)}
    fresh.pop("BENTOML_HOME", None)
    info = _served(fresh, MODEL)
    assert info["model"]["mlflow_version"] == "1" and info["height"] == 40
    assert info["threshold"] == 0.5  # ci-tiny's eval.threshold: the bento serves the threshold it was gated at
    assert (empty / "bentoml" / "bentos" / "cmunext-service").is_dir()  # fetched into the empty state folder


def test_the_logged_model_installs_from_public_indexes(first_run, env, tmp_path):
    """The requirements MLflow logged with the champion resolve on PyPI alone (pip's dry run reads PEP 658
    metadata, so nothing multi-GB is downloaded); this machine's local wheels and extra indexes are left out."""
    import mlflow
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    os.environ.update({k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL")})
    reqs = Path(mlflow.pyfunc.get_model_dependencies(f"models:/{MODEL}@champion"))
    pins = [line for line in reqs.read_text().splitlines() if line and not line.startswith("#")]
    assert any(p.startswith("torch==") for p in pins) and not [p for p in pins if "+" in p]
    pip_env = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": "", "PIP_EXTRA_INDEX_URL": "",
               "PIP_CONSTRAINT": "", "PIP_CERT": os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt"}
    proc = subprocess.run([str(VENV_BIN / "python"), "-m", "pip", "install", "--dry-run", "--no-deps",
                           "--ignore-installed", "--index-url", "https://pypi.org/simple", "--quiet", "--report",
                           str(tmp_path / "report.json"), "-r", str(reqs)], env=pip_env, capture_output=True,
                          text=True, timeout=600)
    if proc.returncode != 0 and "NewConnectionError" in proc.stderr + proc.stdout:
        pytest.skip("PyPI is not reachable from this machine")
    assert proc.returncode == 0, proc.stderr[-2000:]
    resolved = {i["metadata"]["name"].lower() for i in json.loads((tmp_path / "report.json").read_text())["install"]}
    assert {p.split("==")[0].lower() for p in pins} <= resolved


def test_if_changed_ends_quickly_when_nothing_changed(first_run, env, tmp_path):
    """cron on one machine (`retrain --if-changed`) and a scheduled run (`pipeline run --if-changed`)."""
    before = registry(env)
    proc = cmunext(env, "retrain", "--if-changed", "--config", CI_TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "retrain: nothing to do: champion v1 was trained on this data" in proc.stdout
    assert "Task" not in proc.stderr  # decided without starting the pipeline

    summary_file = tmp_path / "summary.json"
    proc = cmunext(env, "pipeline", "run", "--config", CI_TINY, "--if-changed", "--json", str(summary_file))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(summary_file.read_text())
    assert summary["retrain_check"] == "skip" and summary["metrics"] is None and not summary["promoted"]
    assert "retrain check : nothing to do" in proc.stdout
    assert "train-model" not in proc.stderr and "Task validate-data" not in proc.stderr
    assert registry(env) == before

    import mlflow
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    mlflow.set_registry_uri(env["MLFLOW_TRACKING_URI"])  # an earlier test in this process may have set another
    checks = mlflow.search_runs(experiment_names=["cmunext"], filter_string="tags.retrain_decision = 'skip'")
    assert sorted(checks["tags.retrain_source"]) == ["cli", "pipeline"]


def test_if_changed_names_what_changed(first_run, env, monkeypatch):
    import time

    from cmunext.config import load_config
    from cmunext.retrain import code_digest, decide
    for key in ("CMUNEXT_HOME", "MLFLOW_TRACKING_URI", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.setenv(key, env[key])
    cfg = load_config(CI_TINY)
    md5 = first_run[1]["data_md5"]
    assert decide(cfg, md5)["decision"] == "skip"
    new_data = decide(cfg, "0" * 32 + ".dir")
    assert new_data["decision"] == "train" and new_data["reasons"][0].startswith("data changed")
    new_code = decide(cfg, md5, code="f" * 16)
    assert new_code["decision"] == "train" and new_code["reasons"][0].startswith("code changed")
    assert code_digest() != "f" * 16
    old = decide(cfg, md5, now=time.time() + 31 * 86400)
    assert old["decision"] == "train" and "days old" in old["reasons"][0]


def test_retrain_runs_when_the_champion_is_too_old(first_run, env):
    before = registry(env)["champion"]["version"]
    proc = cmunext(env, "retrain", "--if-changed", "--config", CI_TINY, "--set", "retrain.max_champion_age_days=1e-9")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "days old" in proc.stdout and "PROMOTED" in proc.stdout  # ci-tiny's gate is permissive
    after = registry(env)
    assert after["champion"]["version"] == str(int(before) + 1)
    assert [h["event"] for h in after["history"]][-1] == "promoted"


def test_promotion_and_rollback_change_what_is_served(first_run, env):
    """The retrain above promoted a second version: `cmunext serve` serves it; after a rollback, the first."""
    reg = registry(env)
    champion = reg["champion"]["version"]
    assert [h["event"] for h in reg["history"]].count("promoted") >= 2, "needs the retrain test's promotion"
    assert _served(env, MODEL)["model"]["mlflow_version"] == champion
    proc = cmunext(env, "registry", "rollback", "--model-name", MODEL, "--reason", "served-version test")
    assert proc.returncode == 0, proc.stderr
    previous = registry(env)["champion"]["version"]
    assert previous != champion
    assert _served(env, MODEL)["model"]["mlflow_version"] == previous


def test_serve_shadows_another_version(first_run, env, tmp_path):
    """`cmunext serve --shadow VERSION`: the champion answers; the other version's bento, fetched from the bento
    store, answers a copy of each request beside it; `cmunext registry shadow` reads the figures back. A version
    with no bento is refused, naming it."""
    import requests
    champion = registry(env)["champion"]["version"]
    candidate = "2" if champion == "1" else "1"
    log = tmp_path / "predictions"
    served = {**env, "CMUNEXT_PREDICTION_LOG": str(log), "CMUNEXT_PREDICTION_LOG_FLUSH_SECONDS": "0.5"}
    with serving(served, MODEL, "--shadow", candidate) as (url, _):
        for seed in range(5):
            r = requests.post(f"{url}/segment", files={"image": ("x.png", _png(60, 80, seed), "image/png")}, timeout=60)
            assert r.status_code == 200 and r.headers["Server-Timing"].startswith("total;dur=")
        _wait_for_shadow_records(log, candidate, 5)
    proc = cmunext(env, "registry", "shadow", candidate, "--model-name", MODEL, "--set", f"monitoring.prediction_log={log}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{MODEL} v{candidate} shadowed beside champion v{champion}: 5 requests, 0 errors" in proc.stdout
    assert "mask agreement" in proc.stdout and "latency (p95)" in proc.stdout
    refused = cmunext(env, "serve", "--model-name", MODEL, "--shadow", "99", "--port", "1")
    assert refused.returncode == 2 and "--shadow 99" in refused.stderr and "package" in refused.stderr


def test_serve_canary_rolls_back_a_failing_candidate(first_run, env, tmp_path):
    """`cmunext serve --canary VERSION --weight 0.5`: the other version answers half the requests; when it dies
    (SIGKILL), every answer stays 200, all traffic goes back to the champion within an interval, and the registry
    history records the rollback with its reason."""
    import re
    import signal
    import time

    import requests
    champion = registry(env)["champion"]["version"]
    candidate = "2" if champion == "1" else "1"
    lines: list[str] = []
    # latency as loose as can be: a 1 s window of a few requests on two shared cores is noise; errors decide
    rule = ["--set", "gate.canary_interval_s=1", "--set", "gate.canary_min_requests=2",
            "--set", "gate.canary_max_latency_ratio=100"]
    served = {**env, "CMUNEXT_PREDICTION_LOG": str(tmp_path / "predictions")}
    with serving(served, MODEL, "--canary", candidate, "--weight", "0.5", *rule, lines=lines) as (url, _):
        def post():
            r = requests.post(f"{url}/segment", files={"image": ("x.png", _png(60, 80, 0), "image/png")}, timeout=60)
            assert r.status_code == 200, r.text
            return r.headers.get("X-Served-By")
        assert {post() for _ in range(12)} == {f"canary v{candidate}", None}
        pid = int(re.search(r"canary: candidate v\d+ \(pid (\d+)\)", "".join(lines)).group(1))
        import psutil
        for process in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
            process.send_signal(signal.SIGKILL)  # the arbiter and its workers: each in its own group
        deadline = time.time() + 30
        while not any("recorded in the registry history" in line for line in lines):
            assert time.time() < deadline, "".join(lines)[-3000:]
            post()
            time.sleep(0.1)
        assert all(post() is None for _ in range(6))
    last = registry(env)["history"][-1]
    assert (last["event"], last["version"]) == ("canary_rolled_back", candidate)
    assert "error rate" in last["reason"] and registry(env)["champion"]["version"] == champion


def _wait_for_shadow_records(log, version: str, n: int) -> None:
    """Until N shadow records of VERSION are in the log (flushed by the server's writer, or at its shutdown)."""
    import time
    deadline = time.time() + 30
    while time.time() < deadline:
        files = list((log / "_shadow" / MODEL / f"v{version}").rglob("*.jsonl"))
        if sum(len(f.read_text().splitlines()) for f in files) >= n:
            return
        time.sleep(0.3)
    raise AssertionError(f"fewer than {n} shadow records of v{version} in {log}")


def _serve_and_check_drift(env, tmp_path, images) -> tuple[int, dict]:
    """Serve each of IMAGES (PNG bytes) by `cmunext serve` of the champion, then `cmunext monitor drift` of them."""
    import time

    import requests
    log = tmp_path / "predictions"
    served = {**env, "CMUNEXT_PREDICTION_LOG": str(log), "CMUNEXT_PREDICTION_LOG_FLUSH_SECONDS": "0.5"}
    with serving(served, MODEL) as (url, _):
        for image in images:
            r = requests.post(f"{url}/segment_json", files={"image": ("x.png", image, "image/png")}, timeout=60)
            assert r.status_code == 200, r.text
        time.sleep(1.5)  # two flushes of the log
    out = tmp_path / "drift.json"
    proc = cmunext(env, "monitor", "drift", "--config", CI_TINY, "--last", str(len(images)), "--json", str(out),
                   "--set", f"monitoring.prediction_log={log}")
    assert proc.returncode in (0, 3), proc.stdout + proc.stderr[-3000:]
    return proc.returncode, json.loads(out.read_text())


def _synthetic_pngs(n: int, seed: int, gain: float = 1.0) -> list[bytes]:
    from cmunext.data.synth import synth_sample
    from cmunext_serving.runtime import png_bytes
    rng = np.random.default_rng(seed)
    return [png_bytes(np.clip(synth_sample(rng)[0] * gain, 0, 255).astype(np.uint8)) for _ in range(n)]


@pytest.mark.parametrize("traffic", ["like its data", "darker (gain 0.5)"])
def test_drift_of_the_pipeline_champion(first_run, env, tmp_path, traffic):
    """The champion this pipeline built, served for real, against the reference its evaluate step logged to MLflow:
    scans made as its data were give no drift (exit 0); a gain change gives drift (exit 3). After the tests that
    ask `retrain --if-changed` about this champion: a drift verdict is a retraining reason."""
    shifted = traffic != "like its data"
    code, verdict = _serve_and_check_drift(env, tmp_path, _synthetic_pngs(60, seed=101, gain=0.5 if shifted else 1))
    champion = registry(env)["champion"]["version"]
    assert (code, verdict["drift"], verdict["requests"], verdict["version"]) == (3 if shifted else 0, shifted, 60,
                                                                                 champion)
    assert verdict["published"].endswith("/_verdicts/cmunext-ci.json")


@busi
def test_real_scans_drift_from_a_synthetic_champion(first_run, env, tmp_path):
    """60 BUSI scans against a champion trained on synthetic images: drift, on the image size and content."""
    images = [p.read_bytes() for p in sorted((BUSI / "images").glob("*.png"))[:60]]
    code, verdict = _serve_and_check_drift(env, tmp_path, images)
    assert code == 3 and verdict["drift"] and verdict["content"]["drifted"]
    assert verdict["features"]["width"]["drifted"]  # BUSI scans are larger than any synthetic one


# ---- a growing dataset: the test split stays frozen, and the champion is never scored on what it trained on ------
