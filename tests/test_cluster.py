"""Cluster runs: the compiled pipeline carries its Kubernetes settings, `pipeline submit` and `schedule`
speak the Kubeflow Pipelines v2beta1 REST API, and the train step runs DDP when asked for more processes.

No Kubeflow Pipelines can run on these machines (no Kubernetes), so submit/schedule talk to a small
recording HTTP server that answers the four API calls the kfp client makes; what it records is checked
against what the cluster would need (the compiled spec, parameters, cron, concurrency)."""
from __future__ import annotations

import json
import os
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from conftest import ROOT, VENV_BIN

CI_TINY = str(ROOT / "configs" / "ci-tiny.yaml")
IMAGE = "registry.example.com/cmunext-components:test"
CREDENTIAL_TASKS = ("check-changes", "validate-data", "train-model", "evaluate-model", "gate-model", "package-model",
                    "infra-validate-model", "promote-model")


def cmunext(*args, env=None, timeout=300):
    env = {"CMUNEXT_COMPONENT_IMAGE": IMAGE, **(env or os.environ)}
    return subprocess.run([str(VENV_BIN / "cmunext"), *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=timeout)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("compiled") / "pipeline.yaml"
    proc = cmunext("pipeline", "compile", "--out", str(out), "--config", CI_TINY,
                   "--set", "train.accelerator_count=4", "--set", "train.memory_request=32Gi")
    assert proc.returncode == 0, proc.stderr
    docs = list(yaml.safe_load_all(out.read_text()))
    return out, docs[0], docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_credentials_reach_every_task_from_secrets(compiled):
    _, spec, k8s = compiled
    for task in CREDENTIAL_TASKS:
        config = k8s[f"exec-{task}"]
        secrets = {s["secretName"]: s for s in config["secretAsEnv"]}
        assert {kv["envVar"] for kv in secrets["cmunext-s3"]["keyToEnv"]} == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
        assert not secrets["cmunext-s3"].get("optional") and secrets["cmunext-mlflow"]["optional"]
        endpoints = {kv["envVar"] for kv in config["configMapAsEnv"][0]["keyToEnv"]}
        assert {"MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL"} <= endpoints
    # credentials are not pipeline parameters
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert not [p for p in params if any(w in p.lower() for w in ("secret", "password", "token", "key"))]


def test_train_step_asks_for_accelerators_and_resources(compiled):
    _, spec, k8s = compiled
    assert k8s["exec-train-model"]["emptyDirMounts"] == [{"volumeName": "dshm", "mountPath": "/dev/shm",
                                                          "medium": "Memory"}]
    resources = spec["deploymentSpec"]["executors"]["exec-train-model"]["container"]["resources"]
    assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert resources["accelerator"]["resourceCount"] == "4"
    assert resources["resourceMemoryRequest"] == "32Gi" and resources["resourceCpuRequest"] == "2"
    assert "accelerator" not in spec["deploymentSpec"]["executors"]["exec-evaluate-model"]["container"].get("resources", {})
    # the train component runs torchrun with one process per accelerator (cmunext.engine.launch)
    from cmunext.config import load_config
    from cmunext.engine.launch import processes_for
    assert processes_for(load_config(CI_TINY, ["train.accelerator_count=4"])) == 4


def test_every_step_but_the_check_is_behind_its_condition(compiled):
    _, spec, _ = compiled
    root = spec["root"]["dag"]["tasks"]
    assert set(root) == {"configure", "check-changes", "condition-1"}
    assert root["check-changes"]["cachingOptions"] == {}  # never cached: it is what a scheduled run looks at
    assert "check-changes" in root["condition-1"]["triggerPolicy"]["condition"]
    inner = spec["components"]["comp-condition-1"]["dag"]["tasks"]
    assert {"validate-data", "preprocess-data", "train-model", "evaluate-model", "gate-model", "condition-2"} <= set(inner)
    assert "gate-model" in inner["condition-2"]["triggerPolicy"]["condition"]


class _FakeKfp(BaseHTTPRequestHandler):
    calls: list = []

    def log_message(self, *args):
        pass

    def _reply(self, body: dict, status: int = 200):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.calls.append(("GET", self.path, None, self.headers.get("Authorization")))
        self._reply({"experiments": []} if self.path.startswith("/apis/v2beta1/experiments") else {})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        self.calls.append(("POST", self.path, body, self.headers.get("Authorization")))
        if self.path.startswith("/apis/v2beta1/experiments"):
            self._reply({"experiment_id": "exp-1", "display_name": body.get("display_name")})
        elif self.path.startswith("/apis/v2beta1/runs"):
            self._reply({"run_id": "run-1", "display_name": body.get("display_name"), "experiment_id": "exp-1"})
        elif self.path.startswith("/apis/v2beta1/recurringruns"):
            self._reply({"recurring_run_id": "rr-1", "display_name": body.get("display_name")})
        else:
            self._reply({"error": "unknown"}, 404)


@pytest.fixture
def kfp_api():
    _FakeKfp.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeKfp)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", _FakeKfp.calls
    server.shutdown()


def _posted(calls, prefix):
    return [c for c in calls if c[0] == "POST" and c[1].startswith(prefix)]


def test_submit_sends_the_compiled_pipeline_without_credentials(kfp_api):
    host, calls = kfp_api
    env = {**os.environ, "KFP_TOKEN": "tok-xyz-123", "AWS_SECRET_ACCESS_KEY": "never-sent-42"}
    proc = cmunext("pipeline", "submit", "--host", host, "--config", CI_TINY, "--run-name", "nightly", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "submitted run run-1" in proc.stdout and f"{host}/#/runs/details/run-1" in proc.stdout
    [(_, _, run, auth)] = _posted(calls, "/apis/v2beta1/runs")
    assert auth == "Bearer tok-xyz-123" and run["display_name"] == "nightly" and run["experiment_id"] == "exp-1"
    assert run["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "cmunext-training"
    assert "secretAsEnv" in json.dumps(run["pipeline_spec"]["platform_spec"])
    executors = run["pipeline_spec"]["pipeline_spec"]["deploymentSpec"]["executors"].values()
    assert {e["container"]["image"] for e in executors} == {IMAGE}
    # the image holds kfp and the project: no task installs anything when it starts (air-gapped clusters)
    assert not any("pip install" in " ".join(e["container"]["command"]) for e in executors)
    params = run["runtime_config"]["parameters"]
    assert params["if_changed"] is False and params["data_md5"] == "" and params["epochs"] == 2
    sent = json.dumps(calls)
    assert "never-sent-42" not in sent and sent.count("tok-xyz-123") == len(calls)  # only in the auth header


def test_schedule_makes_a_recurring_run_that_checks_for_changes(kfp_api):
    host, calls = kfp_api
    proc = cmunext("pipeline", "schedule", "--host", host, "--config", CI_TINY, "--cron", "0 3 * * 0")
    assert proc.returncode == 0, proc.stderr
    assert "scheduled recurring run rr-1 on cron '0 0 3 * * 0'" in proc.stdout
    [(_, _, job, _)] = _posted(calls, "/apis/v2beta1/recurringruns")
    assert job["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * 0"
    assert int(job["max_concurrency"]) == 1 and job["no_catchup"] is True and job["mode"] == "ENABLE"
    assert job["runtime_config"]["parameters"]["if_changed"] is True


def test_cluster_refuses_what_it_cannot_read(kfp_api, tmp_path):
    host, calls = kfp_api
    proc = cmunext("pipeline", "submit", "--host", host, "--config", CI_TINY, "--set", f"data.source={tmp_path}")
    assert proc.returncode == 2 and "a cluster cannot read" in proc.stderr and str(tmp_path) in proc.stderr
    proc = cmunext("pipeline", "schedule", "--host", host, "--config", CI_TINY, "--cron", "every sunday")
    assert proc.returncode == 2 and "expected 5 fields" in proc.stderr
    no_image = {k: v for k, v in os.environ.items() if k != "CMUNEXT_COMPONENT_IMAGE"}
    proc = subprocess.run([str(VENV_BIN / "cmunext"), "pipeline", "submit", "--host", host, "--config", CI_TINY],
                          capture_output=True, text=True, cwd=ROOT, env=no_image, timeout=300)
    assert proc.returncode == 2 and "set CMUNEXT_COMPONENT_IMAGE" in proc.stderr and "images.conf" in proc.stderr
    assert calls == []  # nothing was sent


def test_train_step_runs_ddp_when_asked_for_more_processes(tmp_path, synth_dataset, monkeypatch):
    """The pipeline's train step with train.processes=2: torchrun (gloo on CPU), metrics in MLflow per epoch."""
    from cmunext.config import load_config
    from cmunext.data.preprocess import preprocess
    from cmunext.data.split import make_split
    from cmunext.steps import train

    monkeypatch.setenv("CMUNEXT_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cfg = load_config(CI_TINY, ["train.processes=2", "train.threads=1", "train.batch_size=2"])
    split = make_split(synth_dataset, cfg.data.split_ratios, cfg.data.split_seed, progress=False)
    preprocess(synth_dataset, split, tmp_path / "pre", cfg.data.image_size, 3, data_revision="test", progress=False)
    result = train(cfg, tmp_path / "pre", tmp_path / "model", "test", "md5-test")
    metrics = json.loads((tmp_path / "model" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and (tmp_path / "model" / "model.safetensors").exists()

    import mlflow
    history = mlflow.MlflowClient().get_metric_history(result["run_id"], "val_iou")
    assert [m.step for m in history] == [1, 2]
    assert mlflow.get_run(result["run_id"]).data.tags["code_digest"]
