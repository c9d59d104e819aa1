"""Containers for real: `make images` builds the component and MLflow images, the pipeline runs every step in the
component image (kfp.local's DockerRunner over podman's Docker API) against a real `mlflow server` with S3
artifacts, and the champion is served from its own image. Slow (image builds); runs last in `make test`.
Skips only when no container engine works on the machine (`make containers` installs podman)."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from conftest import BUSI, ROOT, VENV_BIN, MlflowServer, free_port, wait_for_port
from PIL import Image

from cmunext.config import SERVING_FORMS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]  # image builds: minutes on a fresh machine
CMUNEXT = str(VENV_BIN / "cmunext")


@pytest.fixture(scope="module")
def engine():
    from cmunext.containers.engine import ContainerError, find_engine
    try:
        return find_engine()
    except ContainerError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def built(engine, tmp_path_factory) -> dict:
    """`cmunext images build` (what `make images` runs): layers and the Debian-built base are reused."""
    out = tmp_path_factory.mktemp("images") / "images.json"
    proc = subprocess.run([CMUNEXT, "images", "build", "--json", str(out)], capture_output=True, text=True,
                          timeout=2400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = {r["image"].split("/")[-1].split(":")[0]: r for r in json.loads(out.read_text())}
    assert set(results) == {"cmunext-components", "cmunext-mlflow"}
    for r in results.values():
        assert engine.image_exists(r["image"]) and engine.image_exists(r["latest"])
    return results


def _in_image(engine, image: str, *cmd: str, network: str = "none") -> subprocess.CompletedProcess:
    return engine.run("run", "--rm", "--pull=never", f"--network={network}", "--entrypoint", cmd[0], image,
                      *cmd[1:], check=False)


def test_component_image_holds_the_project_and_runs_as_non_root(engine, built):
    image = built["cmunext-components"]["image"]
    proc = _in_image(engine, image, "python", "-c",
                     "import os, kfp, torch, cmunext, components, pipelines; print(os.getuid(), torch.__version__)")
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    uid, torch_version = proc.stdout.decode().split()
    assert uid == "10001" and torch_version.endswith("+cpu")
    proc = _in_image(engine, built["cmunext-mlflow"]["image"], "mlflow", "--version")
    assert proc.returncode == 0 and b"3.17" in proc.stdout


def test_a_task_runs_with_no_network_and_a_failing_task_fails(engine, built, tmp_path, monkeypatch):
    """Nothing is installed when a task starts: the configure step runs in a container without any network.
    And a task that fails in its container fails the run (kfp.local alone can report a fast failure as success)."""
    from kfp import dsl, local

    from cmunext.config import load_config
    from cmunext.containers.engine import docker_api
    from pipelines.runners import reliable_exit_codes

    image = built["cmunext-components"]["image"]
    monkeypatch.setenv("CMUNEXT_COMPONENT_IMAGE", image)
    sys.modules.pop("pipelines.training", None)  # components take their image when defined
    from pipelines.training import configure

    @dsl.component(base_image=image, install_kfp_package=False)
    def fails():
        raise SystemExit("this step fails on purpose")

    cfg = load_config(ROOT / "configs" / "ci-tiny.yaml")
    root = tmp_path / "outputs"
    root.mkdir()
    root.chmod(0o777)
    old = os.umask(0)
    try:
        with docker_api(engine) as host, reliable_exit_codes():
            monkeypatch.setenv("DOCKER_HOST", host)
            local.init(runner=local.DockerRunner(network_mode="none"), pipeline_root=str(root))
            task = configure(base_config=cfg.model_dump_json(), variant="cmunext_s", image_size=48, epochs=1,
                             batch_size=2, lr=0.1, seed=3, min_iou=0.1, max_latency_ms=100.0)
            with pytest.raises(RuntimeError, match="FAILURE"):
                fails()
    finally:
        os.umask(old)
        sys.modules.pop("pipelines.training", None)
    out = json.loads(task.output)
    assert out["data"]["image_size"] == 48 and out["train"]["epochs"] == 1


@pytest.fixture(scope="module")
def container_run(built, s3_server, tmp_path_factory) -> dict:
    """ci-tiny with every step in the component image, against a real MLflow server with S3 artifacts."""
    work = tmp_path_factory.mktemp("container-run")
    server = MlflowServer(work, s3_server, bucket="container-run")
    env = {**os.environ, "CMUNEXT_HOME": str(work / "state"), "MLFLOW_TRACKING_URI": server.url, **s3_server.env()}
    env.pop("CMUNEXT_COMPONENT_IMAGE", None)
    started = time.monotonic()
    every_form = f"eval.serving_forms=[{','.join(SERVING_FORMS)}]"  # OpenVINO in the image too (ci-tiny: ORT only)
    proc = subprocess.run([CMUNEXT, "pipeline", "run", "--config", "configs/ci-tiny.yaml", "--runner", "container",
                           "--set", every_form, "--json", str(work / "summary.json")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    yield {"summary": json.loads((work / "summary.json").read_text()), "env": env, "stdout": proc.stdout,
           "seconds": time.monotonic() - started, "server": server, "work": work}
    server.stop()


def test_pipeline_runs_every_step_in_its_container(container_run, built):
    s = container_run["summary"]
    assert s["runner"] == "container" and s["promoted"] and s["champion_after"] == "1"
    assert s["mlflow_tracking_uri"] == container_run["server"].url
    assert {st["step"] for st in s["steps"] if st["status"] == "SUCCESS"} >= {
        "validate-data", "preprocess-data", "train-model", "evaluate-model", "gate-model", "promote-model",
        "package-model"}
    log = Path(s["log"]).read_text()
    image = built["cmunext-components"]["image"]
    assert log.count(f"Found image {image!r}") >= 8  # every task, in the image `make images` built
    assert "pip install" not in log
    evaluation = json.loads((Path(s["outputs"]) / "evaluate-model" / "evaluation").read_text())
    assert set(evaluation["precision"]["forms"]) == set(SERVING_FORMS)  # each timed in the component image
    # the tasks' MLflow runs went through the server, their artifacts to S3
    import mlflow
    client = mlflow.MlflowClient(container_run["server"].url, registry_uri=container_run["server"].url)
    version = client.get_model_version("cmunext-ci", "1")
    assert client.get_run(version.run_id).info.artifact_uri.startswith("mlflow-artifacts:")
    assert version.tags["bento_tag"].startswith("cmunext-service:")


def test_pods_share_nothing(built, s3_server, tmp_path):
    """Every step in its own container with its own empty state folder, as pods have: they share only kfp's
    artifacts, MLflow and the bento store (S3). The pipeline still promotes, and the bento ships the very
    artifact the evaluate step timed."""
    server = MlflowServer(tmp_path, s3_server, bucket="isolated-run")
    s3_server.make_bucket("isolated-store")
    state = tmp_path / "state"
    env = {**os.environ, "CMUNEXT_HOME": str(state), "MLFLOW_TRACKING_URI": server.url, **s3_server.env(),
           "CMUNEXT_BENTO_STORE": "s3://isolated-store/bentos"}
    try:
        proc = subprocess.run([CMUNEXT, "pipeline", "run", "--config", "configs/ci-tiny.yaml", "--runner", "container",
                               "--isolated", "--json", str(tmp_path / "summary.json")], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=1800)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
        summary = json.loads((tmp_path / "summary.json").read_text())
        assert summary["promoted"] and summary["champion_after"] == "1"
        run_dir = Path(summary["outputs"])
        timed = json.loads((run_dir / "evaluate-model" / "serving_artifact" / "export.json").read_text())["sha256"]
        shipped = json.loads((run_dir / "package-model" / "bento" / "bento.json").read_text())
        assert shipped["sha256"] == timed
        import mlflow
        tags = mlflow.MlflowClient(server.url, registry_uri=server.url).get_model_version("cmunext-ci", "1").tags
        assert tags["bento_uri"].startswith("s3://isolated-store/bentos/cmunext-ci/v1/")
        assert tags["infra_validation"] == "passed"
        keys = {o["Key"] for o in s3_server.client().list_objects_v2(Bucket="isolated-store")["Contents"]}
        assert tags["bento_uri"].removeprefix("s3://isolated-store/") in keys
        assert "bentos/cmunext-ci/promotion.lease" in keys  # the registry's lease, in shared storage
        assert not (state / "bentoml").exists()  # no step wrote to this machine's state folder
    finally:
        server.stop()


@pytest.fixture(scope="module")
def serving_image(container_run, engine) -> str:
    proc = subprocess.run([CMUNEXT, "containerize", "--model", "champion", "--model-name", "cmunext-ci"],
                          env=container_run["env"], cwd=ROOT, capture_output=True, text=True, timeout=1200)
    (container_run["work"] / "containerize.log").write_text(proc.stdout + proc.stderr)  # its size and build time
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    image = next(w for w in proc.stdout.split() if "/cmunext-serving:" in w)
    assert image.endswith(":cmunext-ci-v1") and engine.image_exists(image)
    return image


def test_serving_image_is_torch_free_and_non_root(engine, serving_image):
    code = ("import os, bentoml, importlib.util as u; "
            "print(os.getuid(), *[m for m in ('onnxruntime', 'openvino') if u.find_spec(m)])")
    proc = _in_image(engine, serving_image, "python", "-c", code)
    uid, *runtimes = proc.stdout.decode().split()
    assert proc.returncode == 0 and uid == "1034", proc.stderr.decode()[-1000:]
    assert runtimes, "no inference runtime in the serving image"  # the ones the bento's form and fallback need
    assert _in_image(engine, serving_image, "python", "-c", "import torch").returncode != 0


def test_deploy_renders_the_champions_image(container_run, serving_image, tmp_path):
    """`cmunext deploy`: the one command after a promotion or rollback; the Deployment gets the champion's image."""
    import shutil

    import yaml
    k8s = tmp_path / "k8s"
    shutil.copytree(ROOT / "infra" / "k8s", k8s, ignore=shutil.ignore_patterns("*.env"))
    for example in k8s.rglob("*.env.example"):  # the secrets' files an operator makes (docs/deploy.md step 3)
        shutil.copyfile(example, example.with_suffix(""))
    out = tmp_path / "rendered.yaml"
    proc = subprocess.run([CMUNEXT, "deploy", "--model-name", "cmunext-ci", "--out", str(out), "--k8s", str(k8s)],
                          env=container_run["env"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    docs = [d for d in yaml.safe_load_all(out.read_text()) if d]
    dep = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "cmunext-serving")
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == serving_image
    assert "kubectl apply -f" in proc.stdout
    assert (ROOT / "infra/k8s/components/images/images.conf").read_text().count("SERVING_TAG=CHANGE_ME") == 1


def _test_image() -> tuple[str, bytes]:
    if BUSI.is_dir():
        path = sorted((BUSI / "images").glob("malignant_*.png"))[0]
        return path.name, path.read_bytes()
    from cmunext_serving.runtime import demo_image, png_bytes
    return "demo.png", png_bytes(demo_image())


def test_served_from_its_container_like_in_process(engine, container_run, serving_image):
    """`cmunext serve --container` answers /readyz and /segment with the mask the bento's model gives in this
    process, with a read-only root filesystem; SIGTERM stops the container."""
    from cmunext.serving.package import stores
    from cmunext_serving.engines import ServedModel
    from cmunext_serving.runtime import decode_image, preprocess, resize_back

    port = free_port()
    proc = subprocess.Popen([CMUNEXT, "serve", "--container", "--model", "champion", "--model-name", "cmunext-ci",
                             "--port", str(port)], env=container_run["env"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_port(port, proc, timeout=120)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while requests.get(f"{url}/readyz", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, "the container never became ready"
            time.sleep(1)
        name, data = _test_image()
        r = requests.post(f"{url}/segment", files={"image": (name, data, "image/png")}, timeout=120)
        assert r.status_code == 200, r.text[:500]
        served = np.asarray(Image.open(io.BytesIO(r.content))) == 255

        os.environ["CMUNEXT_HOME"] = container_run["env"]["CMUNEXT_HOME"]
        os.environ.pop("BENTOML_HOME", None)
        try:
            model_tag = stores()[1].get(_bento_tag(container_run)).info.labels["model_tag"]
            model = ServedModel(stores()[0].get(model_tag).path)
        finally:
            os.environ.pop("CMUNEXT_HOME", None)
            os.environ.pop("BENTOML_HOME", None)
        image = decode_image(data, 10**8)
        prob = resize_back(model.probabilities(preprocess(image, model.size, model.channels)[None])[0],
                           *image.shape[:2])
        assert served.shape == image.shape[:2]
        disagree = np.mean(served != (prob > 0.5))
        assert disagree <= 1e-4, f"{disagree:.2%} of the pixels differ from the in-process mask"
        # the very artifact the registry recorded (a 2-epoch model's mask may be empty: this makes it non-vacuous)
        card = requests.post(f"{url}/segment_json", files={"image": (name, data, "image/png")}, timeout=120).json()
        assert card["model"]["mlflow_version"] == "1" and card["model"]["sha256"] == model.sha256
        assert card["lesion_pixels"] == int((prob > 0.5).sum())
        ps = engine.run("ps", "--filter", f"name=cmunext-serve-{port}", "--format", "{{.Names}}").stdout.decode()
        assert f"cmunext-serve-{port}" in ps
        inspect = engine.run("inspect", "--format", "{{.HostConfig.ReadonlyRootfs}}", f"cmunext-serve-{port}")
        assert inspect.stdout.decode().strip() == "true"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    ps = engine.run("ps", "-a", "--filter", f"name=cmunext-serve-{port}", "--format", "{{.Names}}").stdout.decode()
    assert ps.strip() == "", f"the container outlived `cmunext serve --container`: {ps}"


def _bento_tag(container_run) -> str:
    import mlflow
    return mlflow.MlflowClient(container_run["server"].url, registry_uri=container_run["server"].url).get_model_version("cmunext-ci", "1").tags["bento_tag"]


# ---- clear errors -----------------------------------------------------------------------------------------

def test_no_engine_is_named_with_the_fix(monkeypatch, tmp_path):
    from cmunext.containers.engine import ContainerError, find_engine
    monkeypatch.setenv("PATH", str(tmp_path))  # neither podman nor docker
    monkeypatch.delenv("CMUNEXT_CONTAINER_ENGINE", raising=False)
    with pytest.raises(ContainerError, match=r"podman: not installed; docker: not installed.*make containers"):
        find_engine()
    proc = subprocess.run([CMUNEXT, "images", "list"], capture_output=True, text=True,
                          env={**os.environ, "PATH": str(tmp_path)}, timeout=120)
    assert proc.returncode != 0 and "no working container engine" in proc.stderr and "Traceback" not in proc.stderr


def test_a_failed_build_names_its_cause_and_keeps_the_image(engine, built, tmp_path):
    from cmunext.containers.build import build_image, choose_base
    from cmunext.containers.engine import ContainerError

    image = built["cmunext-mlflow"]["image"]
    before = engine.run("image", "inspect", "--format", "{{.Id}}", image).stdout
    (tmp_path / "Dockerfile").write_text(f"FROM {image}\nRUN echo 'the step that breaks' && false\n")
    with pytest.raises(ContainerError, match=r"(?s)building .*Dockerfile failed.*unchanged.*the step that breaks"):
        build_image(engine, tmp_path / "Dockerfile", tmp_path, [image], {})
    assert engine.run("image", "inspect", "--format", "{{.Id}}", image).stdout == before
    with pytest.raises(ContainerError, match="base image localhost/no-such-base:1 is neither"):
        choose_base(engine, "localhost/no-such-base:1")
