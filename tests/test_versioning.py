"""Dataset versioning with DVC: local and S3 remotes, exact read-back of past revisions from a
fresh clone, and clear errors for a dead endpoint, refused or missing credentials, unknown revisions.

Every test works in its own temporary git repository; none touches the project's git."""
from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
from pathlib import Path

import boto3
import numpy as np
import pytest
from conftest import VENV_BIN, free_port, stop, wait_for_port
from PIL import Image

from cmunext.data import versioning as V
from cmunext_serving.imageio import DataError


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def _new_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    _git(path, "init", "-q", "-b", "main")
    _git(path, "config", "user.name", "Test")
    _git(path, "config", "user.email", "test@example.com")
    return path


def _clone(src: Path, dst: Path) -> Path:
    subprocess.run(["git", "clone", "-q", str(src), str(dst)], check=True, capture_output=True)
    return dst


def _same_tree(a: Path, b: Path) -> bool:
    fa = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    fb = sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    return fa == fb and all(filecmp.cmp(a / f, b / f, shallow=False) for f in fa)


def _change_data(data: Path) -> None:
    """v2: one pair removed, one mask edited, one pair added."""
    (data / "images" / "synth_00000.png").unlink()
    (data / "masks" / "synth_00000.png").unlink()
    m = data / "masks" / "synth_00001.png"
    with Image.open(m) as img:
        a = 255 - np.asarray(img)
    Image.fromarray(a).save(m)
    shutil.copy(data / "images" / "synth_00002.png", data / "images" / "extra_00000.png")
    shutil.copy(data / "masks" / "synth_00002.png", data / "masks" / "extra_00000.png")


@pytest.fixture
def project(tmp_path, synth_dataset, state_home) -> Path:
    root = _new_repo(tmp_path / "project")
    shutil.copytree(synth_dataset, root / "data")
    return root


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """The moto server's credentials in the environment; the endpoint only in the DVC config."""
    for k, v in s3_server.env().items():
        if k.startswith("AWS_") and k != "AWS_ENDPOINT_URL":
            monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # failures in seconds, not after retries
    return s3_server


def test_local_remote_round_trip(project, tmp_path, state_home, capfd, monkeypatch):
    monkeypatch.setenv("DVC_IGNORE_ISATTY", "true")  # DVC would draw progress bars as on a terminal
    info = V.ensure_dvc(project)
    assert info["initialized"] and info["remote"] == "local"
    assert Path(info["url"]) == state_home / "dvc-remote"
    assert "dvc" in _git(project, "log", "-1", "--format=%s")  # config committed before any data
    assert V.ensure_dvc(project)["revision"] is None  # idempotent: nothing new to commit

    v1 = V.version_data(project)
    assert capfd.readouterr() == ("", "")  # DVC's messages and progress bars are kept out of the console
    shutil.copytree(project / "data", tmp_path / "v1")
    pointer = (project / "data.dvc").read_text()
    assert v1["revision"] == _git(project, "rev-parse", "HEAD") and v1["committed"]
    assert v1["md5"].endswith(".dir") and f"md5: {v1['md5']}" in pointer and v1["files"] == 48
    assert _git(project, "status", "--porcelain") == ""  # data.dvc and .gitignore committed, data/ ignored
    again = V.version_data(project)
    assert again["revision"] == v1["revision"] and not again["committed"]

    _change_data(project / "data")
    assert V.materialize(project, "workspace", tmp_path / "ws")["md5"] != v1["md5"]
    v2 = V.version_data(project, message="second version")
    assert v2["md5"] != v1["md5"] and v2["files"] == 48
    assert _git(project, "log", "-1", "--format=%s") == "second version"
    assert V.materialize(project, "workspace", tmp_path / "ws2")["md5"] == v2["md5"]

    clone = _clone(project, tmp_path / "clone")  # no DVC cache there: files come from the remote
    m1 = V.materialize(clone, v1["revision"], tmp_path / "m1")
    assert (m1["revision"], m1["md5"], m1["files"], m1["cached"]) == (v1["revision"], v1["md5"], 48, False)
    assert _same_tree(tmp_path / "m1", tmp_path / "v1")
    m2 = V.materialize(clone, "HEAD", tmp_path / "m2")
    assert m2["md5"] == v2["md5"] and _same_tree(tmp_path / "m2", project / "data")

    # a second request is served from the md5 cache, even with the remote gone
    shutil.rmtree(state_home / "dvc-remote")
    again = V.materialize(clone, v1["revision"][:10], tmp_path / "m1b")
    assert again["cached"] and _same_tree(tmp_path / "m1b", tmp_path / "v1")
    assert V.materialize(clone, v1["revision"], tmp_path / "m1")["md5"] == v1["md5"]  # already there: kept
    with pytest.raises(V.VersioningError, match="already holds different data"):
        V.materialize(clone, v1["revision"], tmp_path / "m2")
    assert V.materialize(clone, v1["revision"], tmp_path / "m2", overwrite=True)["md5"] == v1["md5"]
    assert _same_tree(tmp_path / "m2", tmp_path / "v1")


def test_revision_errors(project, tmp_path, monkeypatch):
    V.ensure_dvc(project)
    with pytest.raises(V.RevisionError, match=r"unknown revision 'no-such-tag'") as e:
        V.materialize(project, "no-such-tag", tmp_path / "m")
    assert isinstance(e.value, DataError)
    with pytest.raises(V.RevisionError, match=r"revision 'HEAD' .* has no data.dvc"):
        V.materialize(project, "HEAD", tmp_path / "m")
    v1 = V.version_data(project)
    _git(project, "tag", "data-v1")
    assert V.materialize(project, "data-v1", tmp_path / "m")["revision"] == v1["revision"]

    # a version whose files never reached the remote
    clone = _clone(project, tmp_path / "clone")
    shutil.rmtree(Path(V.ensure_dvc(project)["url"]))
    monkeypatch.setenv("CMUNEXT_HOME", str(tmp_path / "other-state"))  # and no md5 cache either
    with pytest.raises(V.RemoteDataError, match=r"files are missing from DVC remote 'local'"):
        V.materialize(clone, "data-v1", tmp_path / "m3")
    assert not (tmp_path / "m3").exists()


def test_usage_errors(tmp_path, state_home, synth_dataset):
    with pytest.raises(V.NotAGitRepoError, match="not a git repository"):
        V.version_data(tmp_path)
    root = _new_repo(tmp_path / "p")
    (root / "data").mkdir()
    with pytest.raises(V.NotAGitRepoError, match="not the top of its git repository"):
        V.ensure_dvc(root / "data")
    with pytest.raises(V.VersioningError, match="data folder is empty"):
        V.version_data(root)
    shutil.copytree(synth_dataset, root / "data", dirs_exist_ok=True)
    _git(root, "add", "data")
    with pytest.raises(V.VersioningError, match=r"tracked by git.*git rm -r --cached data"):
        V.version_data(root)
    with pytest.raises(V.VersioningError, match="unsupported remote"):
        V.set_remote(root, "gs://bucket/x")
    with pytest.raises(V.VersioningError, match="must not carry credentials"):
        V.set_remote(root, "s3://bucket/x", "http://key:secret@127.0.0.1:9000")


def test_s3_round_trip_from_a_fresh_clone(project, tmp_path, s3_env, monkeypatch):
    bucket = s3_env.make_bucket("cmunext-data-rt")
    r = V.set_remote(project, f"s3://{bucket}/project", s3_env.url)
    assert r["remote"] == "s3" and r["revision"]
    tracked = (project / ".dvc" / "config").read_text()
    assert f"s3://{bucket}/project" in tracked and s3_env.url in tracked
    assert s3_env.key not in tracked and s3_env.secret not in tracked  # credentials stay in the environment

    v1 = V.version_data(project)
    shutil.copytree(project / "data", tmp_path / "v1")
    _change_data(project / "data")
    v2 = V.version_data(project)
    keys = [o["Key"] for o in s3_env.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert all(k.startswith("project/files/md5/") for k in keys)
    assert len(keys) == 48 + 1 + 2  # v1's files, v2's edited mask, two listings (the added pair is a copy)
    for md5 in (v1["md5"], v2["md5"]):
        assert f"project/files/md5/{md5[:2]}/{md5[2:]}" in keys

    clone = _clone(project, tmp_path / "clone")
    monkeypatch.setenv("CMUNEXT_HOME", str(tmp_path / "clone-state"))  # nothing cached: read from S3
    m1 = V.materialize(clone, v1["revision"], tmp_path / "m1")
    m2 = V.materialize(clone, v2["revision"], tmp_path / "m2")
    assert not m1["cached"] and not m2["cached"]
    assert (m1["md5"], m2["md5"]) == (v1["md5"], v2["md5"])
    assert _same_tree(tmp_path / "m1", tmp_path / "v1")
    assert _same_tree(tmp_path / "m2", project / "data")


def test_old_versions_still_read_after_moving_to_s3(project, tmp_path, s3_env, monkeypatch):
    """v1 went to the local remote only; after switching to S3, v1 is found where its revision says."""
    v1 = V.version_data(project)
    shutil.copytree(project / "data", tmp_path / "v1")
    V.set_remote(project, f"s3://{s3_env.make_bucket('cmunext-moved')}/p", s3_env.url)
    _change_data(project / "data")
    v2 = V.version_data(project)
    assert v2["remote"] == "s3"
    clone = _clone(project, tmp_path / "clone")
    monkeypatch.setenv("CMUNEXT_HOME", str(tmp_path / "clone-state"))
    assert V.materialize(clone, v1["revision"], tmp_path / "m1")["md5"] == v1["md5"]
    assert _same_tree(tmp_path / "m1", tmp_path / "v1")
    assert V.materialize(clone, v2["revision"], tmp_path / "m2")["md5"] == v2["md5"]


def test_s3_dead_endpoint(project, tmp_path, s3_env, monkeypatch):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(V.RemoteUnreachableError, match=rf"nothing answers at {dead}.*is the server running") as e:
        V.set_remote(project, "s3://cmunext-dead/x", dead)
    assert e.value.endpoint == dead and "Traceback" not in str(e.value)
    assert "cmunext-dead" not in (project / ".dvc" / "config").read_text()  # a failed check changes nothing

    V.set_remote(project, "s3://cmunext-dead/x", dead, check=False)
    with pytest.raises(V.RemoteUnreachableError, match=rf"cannot push data: nothing answers at {dead}.*"
                                                       r"data.dvc is updated but not committed"):
        V.version_data(project)
    # the same translation when DVC itself meets the refused connection (the fast pre-check skipped)
    monkeypatch.setattr(V, "_check_endpoint", lambda *a, **k: None)
    with pytest.raises(V.RemoteUnreachableError, match=rf"nothing answers at {dead} for DVC remote 's3'"):
        V.version_data(project)


def test_s3_missing_credentials_and_bucket(project, tmp_path, s3_env, monkeypatch):
    with pytest.raises(V.RemoteDataError, match=r"bucket 'cmunext-nobucket' .* does not exist"):
        V.set_remote(project, "s3://cmunext-nobucket/x", s3_env.url)
    bucket = s3_env.make_bucket("cmunext-nocreds")
    V.set_remote(project, f"s3://{bucket}/x", s3_env.url)
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(V.RemoteAuthError, match=rf"no S3 credentials found for DVC remote 's3' "
                                                rf"\(s3://{bucket}/x at {s3_env.url}\)"):
        V.version_data(project)


# ---- an S3 server that checks credentials (moto's IAM auth mode) -------------------------------

@pytest.fixture(scope="module")
def auth_s3(tmp_path_factory):
    """moto_server with authentication on: only an IAM user's keys, created at start, are accepted."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("s3auth") / "moto.log", "wb")
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3")  # the 3 IAM calls below go unchecked
    proc = subprocess.Popen([str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, proc)
        url = f"http://127.0.0.1:{port}"
        iam = boto3.client("iam", endpoint_url=url, region_name="us-east-1",
                           aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
        iam.create_user(UserName="ci")
        key = iam.create_access_key(UserName="ci")["AccessKey"]
        iam.put_user_policy(UserName="ci", PolicyName="all", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        creds = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
                 "AWS_DEFAULT_REGION": "us-east-1"}
        boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
                     aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"]).create_bucket(Bucket="cmunext-auth")
        yield url, creds
    finally:
        stop(proc)
        log.close()


def test_s3_wrong_credentials(project, tmp_path, auth_s3, monkeypatch):
    url, creds = auth_s3
    for k, v in creds.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    V.set_remote(project, "s3://cmunext-auth/x", url)
    v1 = V.version_data(project)  # the right keys work

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    expected = rf"{url} refused the credentials for DVC remote 's3' \(s3://cmunext-auth/[xy] at {url}\)"
    with pytest.raises(V.RemoteAuthError, match=expected) as e:
        V.set_remote(project, "s3://cmunext-auth/y", url)
    assert "SignatureDoesNotMatch" in str(e.value) or "403" in str(e.value)
    _change_data(project / "data")
    with pytest.raises(V.RemoteAuthError, match=expected):
        V.version_data(project)
    clone = _clone(project, tmp_path / "clone")
    monkeypatch.setenv("CMUNEXT_HOME", str(tmp_path / "clone-state"))
    with pytest.raises(V.RemoteAuthError, match=expected):
        V.materialize(clone, v1["revision"], tmp_path / "m1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNKEY000000")
    with pytest.raises(V.RemoteAuthError, match=expected):
        V.materialize(clone, v1["revision"], tmp_path / "m1")
    assert not (tmp_path / "m1").exists()
