"""Pipeline runs that each start from an empty registry entry of their own model: refusals that are outcomes (a
bento failing at start, a stale promotion, a live gate), data that grows under a frozen split, corrections that
come back and the retraining that follows, a fold ensemble served as the form it was scored in. Run for real with
kfp.local against the session's MLflow and S3-protocol servers, as tests/test_pipeline.py is."""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from conftest import ROOT, VENV_BIN, grown_dataset
from pipeline_support import CI_TINY, cmunext, evaluation_of, run, serving, split_of


def test_a_bento_that_fails_at_start_is_rejected_before_promotion(env, tmp_path):
    """Infra-validation boots the bento as deployed: a server that fails at start (here: a serving setting the
    model service cannot parse, which building the bento never reads) rejects the version, with the reason in
    MLflow and on screen; no champion moves. The rejection is a decision of the run, as the gate's is: no
    failed step, no traceback, exit 0."""
    model = "cmunext-ci-infra"
    proc, summary = run({**env, "CMUNEXT_THREADS": "two"}, tmp_path, f"registry.model_name={model}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert summary["outcome"]["kind"] == "rejected" and not summary["promoted"] and summary["champion_after"] is None
    assert "REJECTED: its bento failed infra-validation" in proc.stdout and "invalid literal for int()" in proc.stdout
    assert "FAILURE" not in proc.stdout and "Traceback" not in proc.stdout + proc.stderr
    assert re.search(r"infra-validate-model\s+done", proc.stdout) and "promote-model" not in proc.stdout
    shown = json.loads(cmunext(env, "registry", "show", "--model-name", model, "--json").stdout)
    assert shown["champion"] is None
    rejection = shown["history"][-1]
    assert rejection["event"] == "rejected" and rejection["reason"].startswith("infra-validation: ")
    assert "failed to start" in rejection["reason"]
    import mlflow
    version = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"], registry_uri=env["MLFLOW_TRACKING_URI"]).get_model_version(model, "1")
    assert version.tags["infra_validation"] == "failed" and "bento_tag" in version.tags

    # the same run without the fault: the rejection changed the registry's last event, which keys
    # infra-validation's cache, so the bento boots again (everything before it comes from the cache)
    (tmp_path / "again").mkdir()
    proc, summary = run(env, tmp_path / "again", f"registry.model_name={model}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"package-model\s+cached", proc.stdout) and re.search(r"infra-validate-model\s+done", proc.stdout)
    assert summary["promoted"] and summary["champion_after"] == "1" and summary["outcome"]["kind"] == "promoted"


def _register_stand_in(env, model: str, tmp_path) -> str:
    """A registered version of MODEL that is not this pipeline's (an identity pyfunc): another run's model."""
    code = tmp_path / "identity_model.py"
    code.write_text("import mlflow.pyfunc\n\n\nclass Identity(mlflow.pyfunc.PythonModel):\n"
                    "    def predict(self, context, model_input):\n        return model_input\n\n\n"
                    "mlflow.models.set_model(Identity())\n")
    import mlflow

    from cmunext.tracking import mlflow_runs, registry
    with mlflow.start_run(experiment_id=mlflow_runs.setup()):
        info = mlflow.pyfunc.log_model(name="model", python_model=str(code), pip_requirements=[])
    return registry.register(info.model_uri, model, {"note": "stand-in for another run's model"})


def test_a_stale_promotion_is_an_outcome_not_a_crash(env, tmp_path, monkeypatch):
    """While the run validates its bento, another version becomes champion: promote refuses to move the alias
    against a champion the gate never saw. That refusal is the run's decision: a summary line naming the new
    champion, the version tagged `stale`, exit 75 (retry), and no failed step or traceback."""
    model = "cmunext-ci-stale"
    for k in ("MLFLOW_TRACKING_URI", "CMUNEXT_BENTO_STORE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
              "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL", "AWS_DEFAULT_REGION"):
        if k in env:
            monkeypatch.setenv(k, env[k])
    monkeypatch.setenv("CMUNEXT_HOME", str(tmp_path / "reviewer"))
    from cmunext.tracking import registry  # its promotion lease is the pipeline's ($CMUNEXT_BENTO_STORE)
    other = _register_stand_in(env, model, tmp_path)
    proc = subprocess.Popen([str(VENV_BIN / "cmunext"), "pipeline", "run", "--config", CI_TINY, "--json",
                             str(tmp_path / "summary.json"), "--set", f"registry.model_name={model}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if re.search(r"infra-validate-model\s+started", line):  # the gate saw no champion; now there is one
            registry.promote(model, other, reason="manual: another reviewer's decision")
    err = proc.stderr.read()
    assert proc.wait() == 75, err[-3000:]
    out, summary = "".join(seen), json.loads((tmp_path / "summary.json").read_text())
    assert summary["outcome"]["kind"] == "stale" and not summary["promoted"] and summary["champion_after"] == other
    assert (f"not promoted: champion moved to v{other} while this run was deciding; re-run to decide against it"
            in out)
    assert "FAILURE" not in out and "Traceback" not in out + err and "cmunext: error" not in err
    assert re.search(r"promote-model\s+done", out)
    mine = summary["promotion"]["version"]
    assert mine != other and registry.version_tags(model, mine)["gate_decision"] == "stale"
    assert registry.champion(model)["version"] == other



@pytest.mark.slow
def test_growing_data_keeps_test_images_and_never_scores_the_champion_on_its_training(env, tmp_path):
    model = "cmunext-growth"
    v1, v2 = grown_dataset(tmp_path, 32, 16, seed=11)
    unfrozen_v2 = tmp_path / "v2-unfrozen"
    shutil.copytree(v2, unfrozen_v2)
    for name in "abc":
        (tmp_path / name).mkdir()

    proc, first = run(env, tmp_path / "a", f"data.source={v1}", f"registry.model_name={model}")
    assert proc.returncode == 0 and first["promoted"], proc.stderr[-3000:]
    s1 = split_of(first)
    assert "made now" in s1["info"]["source"]

    # frozen: v1's split written into v2 (`cmunext data split` keeps it and assigns the new images around it)
    (v2 / "splits.json").write_text(json.dumps({k: s1[k] for k in ("train", "val", "test")}))
    split = cmunext(env, "data", "split", str(v2))
    assert split.returncode == 0 and "32 kept where they were, 16 assigned now" in split.stdout, split.stderr
    # the later runs stop at the gate (an unreachable IoU): what they check is decided by evaluate, and the
    # champion stays the one trained on s1
    refuse = "gate.min_iou=0.99"
    proc, frozen = run(env, tmp_path / "b", f"data.source={v2}", f"registry.model_name={model}", refuse)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s2 = split_of(frozen)
    assert s2["info"]["source"] == "splits.json of the dataset"
    for name in ("train", "val", "test"):
        assert set(s1[name]) <= set(s2[name]), name  # every v1 image where it was
    champ = evaluation_of(frozen)["champion"]  # the champion was trained on s1: none of its images is in test
    assert champ["trained_on_check"] == "checked" and champ["excluded_trained_on"] == []
    assert champ["comparison"]["images"] == len(s2["test"])

    # unfrozen: the same data split afresh moves images between splits; the champion (trained on s1) is compared
    # only on the test images it never saw, and what was left out is recorded
    proc, unfrozen = run(env, tmp_path / "c", f"data.source={unfrozen_v2}", f"registry.model_name={model}", refuse)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not frozen["promoted"] and not unfrozen["promoted"]
    ev = evaluation_of(unfrozen)["champion"]
    seen = set(s1["train"]) | set(s1["val"])
    test = set(split_of(unfrozen)["test"])
    assert ev["trained_on_check"] == "checked" and set(ev["excluded_trained_on"]) == test & seen
    assert ev["comparison"]["images"] == len(test - seen) > 0


@pytest.mark.slow
def test_a_fold_ensemble_with_flip_tta_ships_as_the_form_it_was_scored_in(env, tmp_path):
    """train.ensemble=2 + eval.tta=hflip through the pipeline: one run holds both members' epochs, the bento
    infra-validation boots serves exactly the canary masks of the evaluated ensemble form before promotion, and
    cross-validation (eval.cv_folds) scores the recipe as itself, one ensemble per fold, beside the test figure."""
    model = "cmunext-ensemble"
    proc, summary = run(env, tmp_path, "train.ensemble=2", "train.folds=2", "eval.tta=hflip", "eval.cv_folds=2",
                        f"registry.model_name={model}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    shown = cmunext(env, "registry", "show", "--model-name", model, "--json")
    champ = json.loads(shown.stdout)["champion"]
    assert summary["promoted"] and champ["tags"]["ensemble"] == "2" and champ["tags"]["tta"] == "hflip"
    assert champ["tags"]["infra_validation"] == "passed"
    reason = json.loads(shown.stdout)["history"][0]["reason"]
    assert "canary masks as evaluated in" in reason, reason
    import mlflow
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    history = mlflow.MlflowClient().get_metric_history(champ["run_id"], "val_iou")
    assert sorted(m.step for m in history) == [1, 2, 3, 4]  # member 1's two epochs, then member 2's
    assert "+ensemble:2+tta:hflip)" in proc.stdout  # the latency the gate judged is the whole form's
    cv = summary["cross_validation"]
    assert cv["folds"] == 2 and sum(r["images"] for r in cv["per_fold"]) == cv["pool_images"]
    assert "2-fold CV    : IoU" in proc.stdout and "  test IoU      :" in proc.stdout
    metrics = mlflow.MlflowClient().get_run(champ["run_id"]).data.metrics
    assert metrics["cv_iou"] == pytest.approx(cv["iou"]["value"]) and metrics["cv_folds"] == 2


def _corrections(url: str, n: int, seed: int) -> None:
    """N synthetic scans served with capture on, each sent back with its true mask as the correction."""
    import time

    import requests

    from cmunext.data.synth import synth_sample
    from cmunext_serving.runtime import png_bytes
    rng = np.random.default_rng(seed)
    for _ in range(n):
        image, mask = synth_sample(rng)
        r = requests.post(f"{url}/segment", files={"image": ("x.png", png_bytes(image), "image/png")}, timeout=60)
        rid = r.headers["X-Request-ID"]
        for _ in range(100):  # the capture is written off the request path
            fb = requests.post(f"{url}/feedback", files={"request_id": (None, rid),
                                                         "mask": ("m.png", png_bytes(mask), "image/png")}, timeout=60)
            if fb.status_code != 404:
                break
            time.sleep(0.1)
        assert fb.status_code == 201, fb.text


@pytest.mark.slow
def test_corrections_come_back_and_retraining_follows(env, tmp_path):
    """The whole loop: a champion trained on a versioned folder, served with capture on; clinicians correct 3
    answers (POST /feedback); `data feedback import` adds them as new stems and versions the data; `retrain
    --if-changed` waits while 3 < monitoring.min_feedback, and trains, naming the corrections, once 3 suffice."""
    from cmunext.data.synth import write_synthetic_dataset
    model, project = "cmunext-feedback", tmp_path / "project"
    project.mkdir()
    for args in (["init", "-q", "-b", "main"], ["config", "user.name", "T"], ["config", "user.email", "t@example.com"]):
        subprocess.run(["git", *args], cwd=project, check=True)
    write_synthetic_dataset(project / "data", 24, seed=7, progress=False)
    # frozen, as docs/data.md asks: the corrections join the split by its rule and the champion's test images stay
    # test (re-splitting all 27 images by their random stems could leave no image the champion never saw)
    assert cmunext(env, "data", "split", str(project / "data")).returncode == 0
    sets = ["--set", f"data.source={project / 'data'}", "--set", f"registry.model_name={model}"]
    proc = cmunext(env, "pipeline", "run", "--config", CI_TINY, *sets)
    assert proc.returncode == 0 and "PROMOTED" in proc.stdout, proc.stderr[-3000:]
    log = tmp_path / "predictions"
    with serving({**env, "CMUNEXT_PREDICTION_LOG": str(log), "CMUNEXT_CAPTURE_RATE": "1"}, model) as (url, _):
        _corrections(url, 3, seed=8)
    proc = cmunext(env, "data", "feedback", "import", str(project / "data"), "--project", str(project),
                   "--model-name", model, "--set", f"monitoring.prediction_log={log}")
    assert proc.returncode == 0 and "3 corrected pairs imported" in proc.stdout, proc.stdout + proc.stderr[-3000:]
    assert "versioned: data revision" in proc.stdout
    assert len(list((project / "data" / "images").glob("feedback-*.png"))) == 3
    waits = cmunext(env, "retrain", "--if-changed", "--config", CI_TINY, *sets, "--set", "monitoring.min_feedback=4")
    assert waits.returncode == 0 and "3 of 4 corrections" in waits.stdout, waits.stdout + waits.stderr[-3000:]
    trains = cmunext(env, "retrain", "--if-changed", "--config", CI_TINY, *sets, "--set", "monitoring.min_feedback=3")
    assert trains.returncode == 0, trains.stderr[-3000:]
    assert "feedback: 3 corrections imported since champion v1" in trains.stdout and "PROMOTED" in trains.stdout
    reg = json.loads(cmunext(env, "registry", "show", "--model-name", model, "--json").stdout)
    assert reg["champion"]["version"] == "2"


@pytest.mark.slow
def test_a_live_gate_makes_a_candidate_not_a_champion(env, tmp_path):
    """With gate.shadow_* set, a model that passes the offline gates and infra-validation becomes `candidate`:
    the summary says how it goes on, the registry records it, and nothing serves it yet."""
    model = "cmunext-live"
    proc, summary = run(env, tmp_path, f"registry.model_name={model}", "gate.shadow_min_requests=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert summary["outcome"]["kind"] == "candidate" and not summary["promoted"]
    assert "CANDIDATE v1" in proc.stdout and "cmunext registry promote-shadowed 1" in proc.stdout
    reg = json.loads(cmunext(env, "registry", "show", "--model-name", model, "--json").stdout)
    assert reg["champion"] is None and reg["history"][-1]["event"] == "candidate"
