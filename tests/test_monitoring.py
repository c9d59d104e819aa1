"""What is served, watched: the prediction log's writer and reader, the drift tests' false-alarm rate and power on
synthetic ultrasound traffic, and `cmunext monitor drift` against a real (SQLite) MLflow registry."""
from __future__ import annotations

import json
import subprocess
import threading
import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from conftest import ROOT, VENV_BIN

MODEL = "mon-test"


def _traffic(n: int, seed: int, gain: float = 1.0) -> list[dict]:
    """Feature rows of N synthetic scans (the project's generator), their intensity scaled by GAIN (a new probe
    setting); the prediction features from the true mask as a confident model would answer."""
    from cmunext.data.synth import synth_sample
    from cmunext_serving.observe import features

    rng, rows = np.random.default_rng(seed), []
    for _ in range(n):
        image, mask = synth_sample(rng)
        image = np.clip(image * gain, 0, 255).astype(np.uint8)
        prob = np.where(mask > 0, 0.9, 0.05).astype(np.float32)
        rows.append(features(image, prob, 0.5))
    return rows


@pytest.fixture(scope="module")
def traffic() -> dict:
    ref = _traffic(200, seed=0)
    return {"reference": {"format": 1, "features": {k: [r[k] for r in ref] for k in ref[0]}, "sources": "synthetic"},
            "same": _traffic(300, seed=1), "darker": _traffic(80, seed=2, gain=0.75)}


def test_features_summarise_without_pixels():
    from cmunext_serving.observe import FEATURES, features

    image = np.zeros((40, 60), np.uint8)
    image[:, 30:] = 255
    prob = np.zeros((40, 60), np.float32)
    prob[:10, :10], prob[10:20, :10] = 0.9, 0.5
    f = features(image, prob, 0.5)
    assert tuple(f) == FEATURES
    assert (f["width"], f["height"], f["intensity_mean"]) == (60, 40, 127.5)
    assert f["hist_0"] == f["hist_7"] == 0.5
    assert f["lesion_fraction"] == pytest.approx(100 / 2400)
    assert f["uncertainty"] == pytest.approx(0.5)  # of the 200 pixels leaning to lesion, 100 are unsure


def test_a_slow_or_failing_sink_never_blocks_and_loses_only_what_does_not_fit(tmp_path, monkeypatch):
    from cmunext_serving import prediction_log
    from cmunext_serving.prediction_log import PredictionLog

    release, real_put = threading.Event(), prediction_log.put
    monkeypatch.setattr(prediction_log, "put", lambda uri, body: release.wait(30) and real_put(uri, body))
    drops = []
    plog = PredictionLog(str(tmp_path / "log"), MODEL, capacity=5, flush_seconds=0.05, on_drop=drops.append)
    record = {"time": datetime.now(timezone.utc).isoformat(), "request_id": "r0"}
    plog.add(record)
    time.sleep(0.3)  # the writer has taken r0 and hangs in the sink
    t0 = time.perf_counter()
    kept = [plog.add({**record, "request_id": f"r{i}"}) for i in range(1, 9)]
    assert time.perf_counter() - t0 < 0.05  # the request path never waits for the sink
    assert kept == [True] * 5 + [False] * 3 and sum(drops) == plog.dropped == 3
    release.set()
    plog.close()
    from cmunext.monitoring import records
    read = records.read(str(tmp_path / "log"), MODEL)
    assert [r["request_id"] for r in read.records] == [f"r{i}" for i in range(6)] and plog.written == 6


def test_an_unwritable_sink_keeps_records_until_it_recovers(tmp_path):
    from cmunext.monitoring import records
    from cmunext_serving.prediction_log import PredictionLog

    (tmp_path / "log").write_text("a file where the folder should be")
    plog = PredictionLog(str(tmp_path / "log"), MODEL, capacity=3, flush_seconds=60)
    for i in range(4):
        plog.add({"time": datetime.now(timezone.utc).isoformat(), "request_id": f"r{i}"})
    assert plog.flush() == 0 and plog.dropped == 1  # 3 kept for the next try
    (tmp_path / "log").unlink()
    assert plog.flush() == 3
    plog.close()
    assert len(records.read(str(tmp_path / "log"), MODEL).records) == 3


def test_a_torn_last_line_is_reported_and_every_complete_record_read(tmp_path):
    from cmunext.monitoring import records

    day = tmp_path / MODEL / "2026-12-01"
    day.mkdir(parents=True)
    lines = [json.dumps({"time": f"2026-12-01T10:00:0{i}+00:00", "request_id": str(i), "version": "1"}) for i in range(3)]
    (day / "a.jsonl").write_text("\n".join(lines) + "\n" + lines[0][:25])
    window = records.read(str(tmp_path), MODEL)
    assert [r["request_id"] for r in window.records] == ["0", "1", "2"]
    assert window.torn == [f"{day / 'a.jsonl'}:4"]
    since = datetime(2026, 12, 1, 10, 0, 1, tzinfo=timezone.utc)
    assert len(records.read(str(tmp_path), MODEL, version="1", since=since).records) == 2
    assert records.read(str(tmp_path), MODEL, version="2").records == []


def test_drift_false_alarm_rate_and_power(traffic):
    """Windows of 60 requests drawn from the reference's distribution raise drift in at most 5% of 40 windows;
    a darker gain is found in every window."""
    from cmunext.monitoring.drift import detect

    pool, rng = traffic["same"], np.random.default_rng(7)
    alarms = sum(detect(traffic["reference"], [pool[i] for i in rng.choice(len(pool), 60, replace=False)], 0.01,
                        seed=w)["drift"] for w in range(40))
    assert alarms <= 2, f"{alarms} of 40 in-distribution windows called drift"
    found = detect(traffic["reference"], traffic["darker"][:60], 0.01)
    assert found["drift"] and found["features"]["intensity_mean"]["drifted"]
    assert {f["test"] for f in found["features"].values()} == {"ks"} and found["content"]["test"] == "mmd"


@pytest.fixture
def champion_with_reference(state_home, tmp_path, monkeypatch, traffic):
    """A registered champion whose run holds a reference, and a second version without one."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from cmunext.config import load_config
    from cmunext.engine.weights import save_weights
    from cmunext.models import create_model
    from cmunext.monitoring import reference
    from cmunext.tracking import mlflow_runs, registry

    cfg = load_config(ROOT / "configs" / "ci-tiny.yaml")
    weights = save_weights(create_model("cmunext_s"), tmp_path / "w.safetensors", "cmunext_s", 64)
    with_ref, without = (mlflow_runs.start(cfg, "workspace", "0" * 64) for _ in range(2))
    reference.log(with_ref, traffic["reference"])
    v1, v2 = (registry.register(mlflow_runs.log_model(run, weights, 64, 3), MODEL, {}) for run in (with_ref, without))
    registry.promote(MODEL, v1, reason="test")
    return v1, v2


def _write_log(root, rows: list[dict], version: str, start: datetime) -> None:
    day = root / MODEL / start.strftime("%Y-%m-%d")
    day.mkdir(parents=True, exist_ok=True)
    records = [{"request_id": f"{start:%H%M%S}-{i}", "time": (start + timedelta(seconds=i)).isoformat(),
                "model": MODEL, "version": version, **row} for i, row in enumerate(rows)]
    (day / f"{start:%H%M%S}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_monitor_drift_cli(champion_with_reference, traffic, tmp_path, state_home):
    v1, v2 = champion_with_reference
    log = tmp_path / "predictions"
    now = datetime.now(timezone.utc).replace(microsecond=0)

    def drift(*args):
        out = tmp_path / "verdict.json"
        proc = subprocess.run([str(VENV_BIN / "cmunext"), "monitor", "drift", "--model-name", MODEL, "--json", str(out),
                               "--set", f"monitoring.prediction_log={log}", *args],
                              capture_output=True, text=True, cwd=ROOT)
        return proc, json.loads(out.read_text()) if out.exists() and proc.returncode != 2 else None

    _write_log(log, traffic["same"][:10], v1, now - timedelta(hours=3))
    proc, verdict = drift()
    assert proc.returncode == 75 and "too few requests to decide: 10" in proc.stdout and verdict["drift"] is None
    _write_log(log, traffic["same"][10:90], v1, now - timedelta(hours=2))
    proc, verdict = drift("--since", "150m")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert verdict["drift"] is False and verdict["requests"] == 80 and (verdict["model"], verdict["version"]) == (MODEL, v1)
    assert all({"statistic", "p_value", "threshold", "drifted"} <= set(f) for f in verdict["features"].values())
    _write_log(log, traffic["darker"][:60], v1, now - timedelta(hours=1))
    proc, verdict = drift("--last", "60", "--report", str(tmp_path / "report"))
    assert proc.returncode == 3 and proc.stdout.startswith("DRIFT") and "intensity_mean" in proc.stdout
    page = (tmp_path / "report" / "index.html").read_text()
    assert page.count("data:image/png;base64,") == len(verdict["features"]) == 14
    from cmunext.monitoring import history
    assert history.latest_verdict(MODEL, v1)["verdict"] == "drift"
    proc, _ = drift("--model", v2)
    assert proc.returncode == 2 and f"{MODEL} v{v2} has no drift reference" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_retrain_follows_a_drift_verdict(champion_with_reference, traffic, tmp_path, state_home):
    from cmunext.config import load_config
    from cmunext.monitoring import history
    from cmunext.monitoring.drift import detect
    from cmunext.retrain import decide

    v1, _ = champion_with_reference
    cfg = load_config(ROOT / "configs" / "ci-tiny.yaml", [f"registry.model_name={MODEL}"])
    assert not any(r.startswith("drift") for r in decide(cfg, "0" * 64)["reasons"])  # no check yet
    history.log_check(MODEL, v1, detect(traffic["reference"], traffic["same"][:60], 0.01), None)
    assert not any(r.startswith("drift") for r in decide(cfg, "0" * 64)["reasons"])
    history.log_check(MODEL, v1, detect(traffic["reference"], traffic["darker"][:60], 0.01), None)
    assert any(r.startswith(f"drift: the latest check of champion v{v1}") for r in decide(cfg, "0" * 64)["reasons"])


WRITER = """
import sys, time
from datetime import datetime, timezone
from cmunext_serving.prediction_log import PredictionLog
plog = PredictionLog(sys.argv[1], "mon-test", flush_seconds=0.05)
i = 0
while True:
    plog.add({"time": datetime.now(timezone.utc).isoformat(), "request_id": str(i)})
    i += 1
    time.sleep(0.0005)
"""


def test_a_killed_writer_loses_only_its_unflushed_buffer(tmp_path):
    """SIGKILL mid-stream: every batch written is whole and readable, and the records read are the first N added."""
    import signal
    import sys

    from cmunext.monitoring import records

    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)])
    time.sleep(3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    window = records.read(str(tmp_path), MODEL)
    ids = sorted(int(r["request_id"]) for r in window.records)
    assert window.torn == [] and len(ids) > 100
    assert ids == list(range(len(ids)))  # no gap: only the newest, unflushed records are gone


def test_a_data_change_made_of_corrections_alone_is_counted(state_home, monkeypatch):
    """The chain of `data feedback import` records from the champion's data digest to today's: corrections alone
    are counted (what monitoring.min_feedback weighs); any other change on the way breaks the chain."""
    from cmunext.monitoring.history import corrections_between, log_feedback_import

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    log_feedback_import("m", "a.dir", "b.dir", ["feedback-1", "feedback-2"], None)
    log_feedback_import("m", "b.dir", "c.dir", ["feedback-3"], "0f0f0f")
    assert corrections_between("m", "a.dir", "c.dir") == 3
    assert corrections_between("m", "b.dir", "c.dir") == 1
    assert corrections_between("m", "x.dir", "c.dir") is None  # the champion's data differs by more than corrections
    assert corrections_between("m", "a.dir", "d.dir") is None  # something else changed after the last import
    assert corrections_between("other", "a.dir", "c.dir") is None
