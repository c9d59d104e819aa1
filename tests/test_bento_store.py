"""The bento store (cmunext/serving/store.py): archives put in a folder or on a real S3-protocol server, fetched
into an empty BentoML home only when they are the archive recorded, and clear errors naming the store."""
from __future__ import annotations

import pytest

from conftest import free_port


def test_folder_store_round_trip_into_an_empty_home(tiny_bento, tmp_path):
    from cmunext.serving import store
    uri = store.archive_uri(str(tmp_path / "store"), "cmunext-tiny", 1, tiny_bento["bento_tag"])
    assert uri.endswith(f"/cmunext-tiny/v1/{tiny_bento['bento_tag'].replace(':', '-')}.bento")
    digest = store.put(tiny_bento["archive"], uri)
    tag = store.fetch(uri, digest, tmp_path / "empty-home")
    assert tag == tiny_bento["bento_tag"]
    assert (tmp_path / "empty-home" / "bentos" / "cmunext-service").is_dir()
    assert (tmp_path / "empty-home" / "models" / "cmunext-segmenter").is_dir()  # its model came with it


def test_an_archive_that_is_not_the_recorded_one_is_refused(tiny_bento, tmp_path):
    from cmunext.serving import store
    uri = str(tmp_path / "store" / "x.bento")
    digest = store.put(tiny_bento["archive"], uri)
    with open(uri, "ab") as f:
        f.write(b"tampered")
    with pytest.raises(store.BentoStoreError, match="is not the archive the package step recorded"):
        store.fetch(uri, digest, tmp_path / "home")
    assert not (tmp_path / "home" / "bentos").exists()


def test_s3_store_round_trip(tiny_bento, s3_server, tmp_path, monkeypatch):
    from cmunext.serving import store
    s3_server.make_bucket("bento-store")
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    uri = store.archive_uri("s3://bento-store/prod", "cmunext-tiny", 1, tiny_bento["bento_tag"])
    digest = store.put(tiny_bento["archive"], uri)
    key = uri.removeprefix("s3://bento-store/")
    assert [o["Key"] for o in s3_server.client().list_objects_v2(Bucket="bento-store")["Contents"]] == [key]
    assert store.fetch(uri, digest, tmp_path / "home") == tiny_bento["bento_tag"]


def test_an_unreachable_s3_store_names_the_endpoint(tiny_bento, monkeypatch):
    from cmunext.serving import store
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(store.BentoStoreError, match=rf"cannot write the bento archive to s3://b/x.bento \(endpoint {dead}\)"):
        store.put(tiny_bento["archive"], "s3://b/x.bento")


def test_store_root_comes_from_the_environment_first(monkeypatch, tmp_path):
    from cmunext.serving import store
    monkeypatch.setenv("CMUNEXT_HOME", str(tmp_path))
    monkeypatch.delenv(store.ENV, raising=False)
    assert store.root(None) == str(tmp_path / "bento-store")
    assert store.root("s3://configured/p") == "s3://configured/p"
    monkeypatch.setenv(store.ENV, "s3://from-env/q")
    assert store.root("s3://configured/p") == "s3://from-env/q"
