"""A failed upload changes nothing: record, object and cache stay as they were (API, service and
mount), and the mount answers EIO on close while keeping the written bytes locally."""
from __future__ import annotations

import errno
import os

import pytest

import lamfs
from lamfs.catalog import open_catalog
from lamfs.errors import StorageUnavailable
from lamfs.service import ArtifactService
from lamfs.storage import FaultyStorage, open_storage

from .conftest import DATA


def test_api_replace_with_failing_upload_changes_nothing_s3(lamfs_home, s3_bucket, s3_server, s3_client,
                                                             data_dir, monkeypatch):
    monkeypatch.setenv("LAMFS_S3_MAX_ATTEMPTS", "2")
    lamfs.setup.init(storage=f"{s3_bucket}/faults")
    a = lamfs.Artifact(data_dir / "iris.csv", key="iris.csv").save()
    cached = a.cache()
    before = (a.uid, a.hash, a.size, a.storage_key)
    s3_server.fault(method="PUT", status=503)
    a.replace(data_dir / "new_iris.csv")
    with pytest.raises(StorageUnavailable):
        a.save()
    s3_server.clear_faults()
    again = lamfs.Artifact.get(key="iris.csv")
    assert (again.uid, again.hash, again.size, again.storage_key) == before
    body = s3_client.get_object(Bucket="lamfs-test", Key=f"faults/{a.storage_key}")["Body"].read()
    assert body == (data_dir / "iris.csv").read_bytes()
    assert cached.read_bytes() == (data_dir / "iris.csv").read_bytes()
    assert again.cache() == cached and lamfs.settings.service.copies.is_fresh(
        lamfs.settings.service.cache_rel(again._record), lamfs.settings.service.identity(again._record))
    assert lamfs.settings.service.catalog.intents() == []


@pytest.mark.parametrize("suffix_change", [False, True])
def test_service_replace_with_failing_upload_changes_nothing_local(tmp_path, suffix_change):
    storage = FaultyStorage(open_storage(tmp_path / "root"))
    catalog = open_catalog(f"sqlite:///{tmp_path / 'cat.db'}")
    service = ArtifactService(catalog, storage, tmp_path / "cache")
    rec = service.save(service.draft(DATA / "iris.csv", key="iris.csv"))
    storage.fail({"put_file"})
    draft = service.draft_replace(rec, DATA / ("iris.data" if suffix_change else "new_iris.csv"))
    with pytest.raises(StorageUnavailable):
        service.replace(draft)
    storage.heal()
    after = catalog.artifact_by_id(rec.id)
    assert after == rec
    assert storage.local_path(rec.storage_key).read_bytes() == (DATA / "iris.csv").read_bytes()
    assert sorted(i.key for i in storage.list("")) == [rec.storage_key]
    assert catalog.intents() == []


def test_service_commit_failure_removes_new_object(tmp_path, monkeypatch):
    storage = open_storage(tmp_path / "root")
    catalog = open_catalog(f"sqlite:///{tmp_path / 'cat.db'}")
    service = ArtifactService(catalog, storage, tmp_path / "cache")
    rec = service.save(service.draft(DATA / "iris.csv", key="iris.csv"))
    draft = service.draft_replace(rec, DATA / "iris.data")  # suffix change: a new object

    def broken(*args, **kwargs):
        raise RuntimeError("catalog down")

    monkeypatch.setattr(catalog, "update_artifact", broken)
    with pytest.raises(RuntimeError):
        service.replace(draft)
    monkeypatch.undo()
    assert catalog.artifact_by_id(rec.id) == rec
    assert sorted(i.key for i in storage.list("")) == [rec.storage_key]


@pytest.mark.mount
def test_mount_close_returns_eio_and_keeps_bytes(s3_bucket, s3_server, mount_factory, monkeypatch):
    monkeypatch.setenv("LAMFS_S3_MAX_ATTEMPTS", "2")
    m = mount_factory(f"{s3_bucket}/mnt-faults")
    lamfs.setup.connect(m.instance)
    m.run(f"cp {DATA}/iris.csv a.csv")
    before = lamfs.Artifact.get(key="a.csv")
    s3_server.fault(method="PUT", status=503)
    fd = os.open(m.path / "a.csv", os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"new content that must not be lost\n")
    with pytest.raises(OSError) as err:
        os.close(fd)
    assert err.value.errno == errno.EIO
    # a new file fails the same way and leaves no artifact
    fd = os.open(m.path / "b.csv", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"x,y\n")
    with pytest.raises(OSError):
        os.close(fd)
    s3_server.clear_faults()
    after = lamfs.Artifact.get(key="a.csv")
    assert (after.uid, after.hash, after.size) == (before.uid, before.hash, before.size)
    assert lamfs.Artifact.filter(key="b.csv") == []
    m.run("sleep 1.2")
    assert (m.path / "a.csv").read_bytes() == (DATA / "iris.csv").read_bytes()
    log = m.log()
    assert "kept at" in log
    kept = [line.rsplit("kept at ", 1)[1].split(":")[0] for line in log.splitlines() if "kept at" in line]
    assert any(os.path.exists(p) and open(p, "rb").read() == b"new content that must not be lost\n" for p in kept)
    # the daemon is still up and works once the server answers again
    m.run(f"cp {DATA}/new_iris.csv c.csv")
    assert (m.path / "c.csv").read_bytes() == (DATA / "new_iris.csv").read_bytes()
