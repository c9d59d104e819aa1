"""Registry operations on the embedded SQLite store: promotion history, rollback, compare-and-set."""
from __future__ import annotations

import json
import subprocess

import pytest

from cmunext.config import load_config
from conftest import ROOT, VENV_BIN


@pytest.fixture
def registry_with_versions(state_home, tmp_path, monkeypatch):
    """Three registered versions of one small model in a private SQLite store."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from cmunext.engine.weights import save_weights
    from cmunext.models import create_model
    from cmunext.tracking import mlflow_runs, registry

    cfg = load_config(ROOT / "configs" / "ci-tiny.yaml")
    weights = save_weights(create_model("cmunext_s"), tmp_path / "w.safetensors", "cmunext_s", 64)
    run_id = mlflow_runs.start(cfg, "workspace", "0" * 64)
    uri = mlflow_runs.log_model(run_id, weights, 64, 3)
    versions = [registry.register(uri, "reg-test", {"i": str(i)}) for i in range(3)]
    return registry, versions


def test_promote_history_and_rollback(registry_with_versions):
    registry, (v1, v2, v3) = registry_with_versions
    assert registry.champion("reg-test") is None
    registry.promote("reg-test", v1, "first")
    registry.promote("reg-test", v2, "better")
    registry.promote("reg-test", v3, "best")
    info = registry.show("reg-test")
    assert info["champion"]["version"] == v3
    assert [(h["version"], h["replaced"]) for h in info["history"]] == [(v1, None), (v2, v1), (v3, v2)]
    import getpass
    assert {h["user"] for h in info["history"]} == {f"local:{getpass.getuser()}"}  # no MLflow login: the account
    assert registry.version_tags("reg-test", v3)["promoted_by"] == f"local:{getpass.getuser()}"
    registry.rollback("reg-test", "v3 misbehaves in production")
    assert registry.champion("reg-test")["version"] == v2
    registry.rollback("reg-test")
    assert registry.champion("reg-test")["version"] == v1
    with pytest.raises(registry.RegistryError, match="nothing to roll back"):
        registry.rollback("reg-test")
    assert registry.show("reg-test")["history"][-1]["event"] == "rolled_back"


def test_history_keeps_alias_moves_when_rejections_pile_up(registry_with_versions):
    registry, (v1, v2, _) = registry_with_versions
    registry.promote("reg-test", v1, "first")
    registry.promote("reg-test", v2, "second")
    for i in range(registry.KEEP["other"] + 5):
        registry.record_rejection("reg-test", f"run-{i}", ["test IoU misses"])
    hist = registry.show("reg-test")["history"]
    assert [h["event"] for h in hist[:2]] == ["promoted", "promoted"]  # what rollback reads is still there
    assert sum(h["event"] == "rejected" for h in hist) == registry.KEEP["other"] and hist[-1]["run_id"] == "run-24"
    registry.rollback("reg-test")
    assert registry.champion("reg-test")["version"] == v1


def test_stale_champion_is_refused(registry_with_versions):
    registry, (v1, v2, v3) = registry_with_versions
    registry.promote("reg-test", v1, "first")
    # a run gated against v1 while another run promoted v2 in the meantime
    registry.promote("reg-test", v2, "concurrent run")
    with pytest.raises(registry.StaleChampion, match=f"champion is now version {v2}"):
        registry.promote("reg-test", v3, "gated against v1", expected_champion=v1)
    assert registry.champion("reg-test")["version"] == v2


def test_racing_promotions_leave_one_consistent_champion(registry_with_versions, state_home):
    """Two processes promote different versions, both decided against 'no champion': one wins,
    the other is refused as stale, and the history records exactly the winner."""
    _, (v1, v2, _) = registry_with_versions
    code = ("import sys; from cmunext.tracking import registry\n"
            "try:\n    registry.promote('reg-test', sys.argv[1], 'race', expected_champion=None); print('won')\n"
            "except registry.StaleChampion: print('stale')\n")
    procs = [subprocess.Popen([str(VENV_BIN / "python"), "-c", code, v], stdout=subprocess.PIPE, text=True)
             for v in (v1, v2)]
    results = sorted(p.communicate(timeout=120)[0].strip() for p in procs)
    assert results == ["stale", "won"]
    from cmunext.tracking import registry
    info = registry.show("reg-test")
    assert len(info["history"]) == 1 and info["history"][0]["version"] == info["champion"]["version"]


def test_registry_cli(registry_with_versions, state_home):
    _, (v1, v2, _) = registry_with_versions

    def cli(*args):
        return subprocess.run([str(VENV_BIN / "cmunext"), "registry", *args, "--model-name", "reg-test"],
                              capture_output=True, text=True, cwd=ROOT)
    assert json.loads(cli("show", "--json").stdout)["champion"] is None
    assert cli("promote", v1, "--reason", "reviewed by A. Reviewer").returncode == 0
    assert cli("promote", v2, "--reason", "reviewed").returncode == 0
    shown = json.loads(cli("show", "--json").stdout)
    assert shown["model"] == "reg-test" and shown["champion"]["version"] == v2
    assert "manual: reviewed by A. Reviewer" in shown["history"][0]["reason"]
    assert cli("rollback").returncode == 0
    assert json.loads(cli("show", "--json").stdout)["champion"]["version"] == v1
    bad = cli("promote", "99", "--reason", "typo")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_the_registry_follows_a_canary_flagger_refused(registry_with_versions, tmp_path):
    """`cmunext registry follow-canary --from FILE` (what the CronJob asks the API server): while the canary
    progresses nothing moves; once Flagger failed it, the version it refused (the target Deployment's image) stops
    being champion, with Flagger's reason; run again, nothing more happens."""
    registry, (v1, v2, _) = registry_with_versions
    registry.promote("reg-test", v1, "first")
    registry.promote("reg-test", v2, "second")

    def follow(phase: str, version: str) -> str:
        state = tmp_path / "state.json"
        state.write_text(json.dumps({"kind": "List", "items": [
            {"kind": "Canary", "status": {"phase": phase, "conditions": [
                {"type": "Promoted", "message": "Canary analysis failed, Deployment scaled to zero."}]}},
            {"kind": "Deployment", "spec": {"template": {"spec": {"containers": [
                {"name": "bento", "image": f"registry.example/cmunext-serving:reg-test-v{version}"}]}}}}]}))
        proc = subprocess.run([str(VENV_BIN / "cmunext"), "registry", "follow-canary", "--model-name", "reg-test",
                               "--from", str(state)], capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout
    assert "none: the canary is Progressing" in follow("Progressing", v2)
    assert registry.champion("reg-test")["version"] == v2
    assert "follow-canary: rolled_back" in follow("Failed", v2)
    assert registry.champion("reg-test")["version"] == v1
    last = registry.history("reg-test")[-1]
    assert last["event"] == "rolled_back" and "Flagger rolled the canary back (Canary analysis failed" in last["reason"]
    assert "already followed" in follow("Failed", v2)
