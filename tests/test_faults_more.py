"""Storage faults through a real mount on the S3 test server: injected 5xx answers, cut and truncated
connections, delays past the read timeout, and a full outage (the server stops listening).

- transient faults (fewer than the retry budget) are retried transparently: reads return the right
  bytes, close(2) succeeds, the catalog is right;
- persistent faults and outages turn into EIO, with nothing committed (catalog, storage and the mount's
  view unchanged), and a failed close is never committed behind the user's back later;
- the daemon stays up during the outage (metadata keeps working: it needs no storage request) and
  recovers when the server returns;
- a failed delete after a commit leaves an orphan, which `lamfs fsck --repair` removes.

The mount runs with LAMFS_S3_MAX_ATTEMPTS=3 and short timeouts so that all this takes seconds.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import time

import pytest

import lamfs

from .conftest import DATA
from .conftest_mount import is_mounted, lamfs_cli

pytestmark = [pytest.mark.mount, pytest.mark.s3]

ATTEMPTS = 3
FAULTS_FIRED = {"total": 0}


@pytest.fixture
def s3m(s3_bucket, s3_server, mount_factory, monkeypatch, tmp_path):
    monkeypatch.setenv("LAMFS_S3_MAX_ATTEMPTS", str(ATTEMPTS))
    monkeypatch.setenv("LAMFS_S3_CONNECT_TIMEOUT_S", "1")
    monkeypatch.setenv("LAMFS_S3_READ_TIMEOUT_S", "2")
    m = mount_factory(f"{s3_bucket}/faults", name="faults")
    lamfs.setup.connect(m.instance)
    yield m
    s3_server.start()  # a failed test must not leave the session's server down
    fired = s3_server.stats().get("faults_fired", 0)
    FAULTS_FIRED["total"] += fired
    print(f"\nfaults injected: {fired} (this test), {FAULTS_FIRED['total']} (this run)")
    log = m.log()
    assert "unexpected error" not in log, log[-5000:]


def api_file(tmp_path, key: str, data: bytes, wait: bool = True) -> lamfs.Artifact:
    """An artifact made through the API: the mount's kernel page cache has never seen its bytes, so reads
    through the mount really go to the daemon (and the daemon's block cache is cold for it)."""
    src = tmp_path / "src" / key
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_bytes(data)
    a = lamfs.Artifact(src, key=key).save()
    if wait:
        time.sleep(1.1)  # the mount's kernel caches (TTL 1 s)
    return a


def read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def write(path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def catalog_state():
    return sorted((r.uid, r.key, r.size, r.hash, r.storage_key, r.branch)
                  for r in lamfs.settings.service.catalog.all_artifacts())


def objects(s3_client) -> dict:
    listing = s3_client.list_objects_v2(Bucket="lamfs-test", Prefix="faults/")
    return {o["Key"]: o["ETag"] for o in listing.get("Contents", [])}


def test_transient_read_faults_are_retried(s3m, s3_server, tmp_path):
    """Each kind of fault, fewer times than the retry budget: the read returns the right bytes."""
    faults = [
        {"status": 503, "count": ATTEMPTS - 1},
        {"status": 500, "count": 1},
        {"mode": "cut", "count": 1},
        {"mode": "truncate", "after_bytes": 1000, "count": 1},
        {"delay_s": 3.0, "count": 1},  # longer than the read timeout (2 s)
    ]
    for i, spec in enumerate(faults):
        data = os.urandom(300_000 + i)
        a = api_file(tmp_path, f"r{i}.bin", data)
        before = s3_server.stats()["faults_fired"]
        s3_server.fault(method="GET", path_contains=a.storage_key, **spec)
        assert read(s3m.path / f"r{i}.bin") == data, spec
        assert s3_server.stats()["faults_fired"] - before == spec["count"], spec
        s3_server.clear_faults()


def test_outage_reads_fail_cleanly_daemon_stays_up_and_recovers(s3m, s3_server, tmp_path):
    data = os.urandom(3 * 1024 * 1024)
    api_file(tmp_path, "big.bin", data)
    api_file(tmp_path, "small.txt", b"small\n")
    catalog_before = catalog_state()
    s3_server.stop()
    try:
        t0 = time.monotonic()
        with pytest.raises(OSError) as err:
            read(s3m.path / "big.bin")
        assert err.value.errno == errno.EIO
        assert time.monotonic() - t0 < 30, "retries must be bounded"
        with pytest.raises(OSError) as err:
            read(s3m.path / "small.txt")
        assert err.value.errno == errno.EIO
        # the daemon is up: everything that needs only the catalog still works
        assert is_mounted(s3m.path)
        assert sorted(os.listdir(s3m.path)) == [".lamfs", "big.bin", "small.txt"]
        assert os.stat(s3m.path / "big.bin").st_size == len(data)
        os.mkdir(s3m.path / "made-during-outage")
        # a write cannot be stored: close fails, nothing is committed, the bytes are kept locally
        with pytest.raises(OSError) as err:
            write(s3m.path / "new.txt", b"written during the outage\n")
        assert err.value.errno == errno.EIO
        with pytest.raises(OSError) as err:
            write(s3m.path / "small.txt", b"replaced during the outage\n")
        assert err.value.errno == errno.EIO
        time.sleep(1.5)  # the release of those descriptors must not commit anything either
        assert catalog_state() == catalog_before
    finally:
        s3_server.start()
    # recovery: the same reads and writes work again, and nothing of the failed ones appeared
    assert read(s3m.path / "big.bin") == data
    assert read(s3m.path / "small.txt") == b"small\n"
    assert not (s3m.path / "new.txt").exists()
    write(s3m.path / "after.txt", b"after the outage\n")
    assert lamfs.Artifact.get(key="after.txt").cache().read_bytes() == b"after the outage\n"
    assert "kept at" in s3m.log()


def test_persistent_read_fault_is_eio_then_recovers(s3m, s3_server, tmp_path):
    data = os.urandom(200_000)
    a = api_file(tmp_path, "p.bin", data)
    s3_server.fault(method="GET", path_contains=a.storage_key, status=503)
    with pytest.raises(OSError) as err:
        read(s3m.path / "p.bin")
    assert err.value.errno == errno.EIO
    assert s3_server.stats()["faults_fired"] >= ATTEMPTS  # it did retry
    s3_server.clear_faults()
    assert read(s3m.path / "p.bin") == data


def test_transient_write_faults_are_retried_on_close(s3m, s3_server, s3_client):
    # a new file and a replace, each with a transient 503 on its PUT: close succeeds
    s3_server.fault(method="PUT", status=503, count=ATTEMPTS - 1)
    write(s3m.path / "n.csv", (DATA / "iris.csv").read_bytes())
    assert s3_server.stats()["faults_fired"] == ATTEMPTS - 1
    a = lamfs.Artifact.get(key="n.csv")
    assert (a.size, a.hash) == (224, "iwc1TmF1TW_l5weDvscSHw")
    s3_server.fault(method="PUT", status=500, count=1)
    write(s3m.path / "n.csv", (DATA / "new_iris.csv").read_bytes())
    b = lamfs.Artifact.get(key="n.csv")
    assert b.uid == a.uid and b.hash == "lp2-ycXcKcaliUTnR_TqHA"
    body = s3_client.get_object(Bucket="lamfs-test", Key=f"faults/{b.storage_key}")["Body"].read()
    assert body == (DATA / "new_iris.csv").read_bytes()
    # a multipart upload (above 8 MiB) with a failing part: the part is retried
    big = os.urandom(10 * 1024 * 1024)
    s3_server.fault(op="UploadPart", status=500, count=1)
    write(s3m.path / "big.bin", big)
    c = lamfs.Artifact.get(key="big.bin")
    body = s3_client.get_object(Bucket="lamfs-test", Key=f"faults/{c.storage_key}")["Body"].read()
    assert hashlib.md5(body).digest() == hashlib.md5(big).digest() and c.size == len(big)
    assert s3_server.stats()["faults_fired"] == ATTEMPTS + 1


def test_failed_close_is_never_committed_later(s3m, s3_server, s3_client):
    """Regression: close(2) answered EIO, and the release that follows retried the commit behind the
    user's back once storage answered again (the file changed although the user was told it failed)."""
    write(s3m.path / "a.csv", (DATA / "iris.csv").read_bytes())
    catalog_before, objects_before = catalog_state(), objects(s3_client)
    s3_server.fault(method="PUT", status=503)
    for name in ("a.csv", "b.csv"):  # a replace and a new file
        fd = os.open(s3m.path / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, b"this write failed\n")
        with pytest.raises(OSError) as err:
            os.close(fd)
        assert err.value.errno == errno.EIO
    s3_server.clear_faults()  # storage is back before the kernel's RELEASE arrives
    time.sleep(1.5)
    assert catalog_state() == catalog_before
    assert objects(s3_client) == objects_before
    assert read(s3m.path / "a.csv") == (DATA / "iris.csv").read_bytes()
    assert not (s3m.path / "b.csv").exists()


def test_rename_over_during_a_write_outage_is_atomic(s3m, s3_server, s3_client):
    """A rename over an existing file is one catalog transaction (the target takes over the source's
    object, with an intent to settle those bytes at its own key); the copy home comes after. With
    every PUT and DELETE failing it still succeeds, atomically; the settle is left pending, reads
    work meanwhile, and fsck --repair (or the next start's healing) finishes it."""
    write(s3m.path / "a.csv", (DATA / "iris.csv").read_bytes())
    write(s3m.path / "b.csv", (DATA / "new_iris.csv").read_bytes())
    a, b = lamfs.Artifact.get(key="a.csv"), lamfs.Artifact.get(key="b.csv")
    s3_server.fault(method="PUT", status=503)  # CopyObject / UploadPartCopy are PUTs
    s3_server.fault(method="DELETE", status=503)
    s3_server.fault(method="POST", query_contains="delete", status=503)
    os.rename(s3m.path / "a.csv", s3m.path / "b.csv")
    s3_server.clear_faults()
    assert read(s3m.path / "b.csv") == (DATA / "iris.csv").read_bytes() and not (s3m.path / "a.csv").exists()
    after = lamfs.Artifact.get(key="b.csv")
    assert (after.uid, after.hash) == (b.uid, a.hash) and after.storage_key == a.storage_key  # a's object, b's row
    assert [x.key for x in lamfs.Artifact.filter()] == ["b.csv"]
    intents = lamfs.settings.service.catalog.intents()
    assert [(i.storage_key, i.new_hash) for i in intents] == [(b.storage_key, a.hash)]  # the settle to do
    s3m.stop()
    report = json.loads(lamfs_cli("fsck", "--instance", s3m.instance, "--json", "--min-age", "0", "--hashes",
                                  env=s3m.env, check=False).stdout)
    assert [(p["kind"], p["storage_key"], p["action"]) for p in report["problems"]] == [
        ("pending_intent", b.storage_key, "settle")]
    lamfs_cli("fsck", "--instance", s3m.instance, "--json", "--min-age", "0", "--repair", env=s3m.env)
    assert objects(s3_client).keys() == {f"faults/{b.storage_key}"}  # a's bytes, at b's own key
    settled = lamfs.Artifact.get(key="b.csv")
    assert (settled.storage_key, settled.hash) == (b.storage_key, a.hash)
    assert lamfs.settings.service.catalog.intents() == []


def test_rename_over_settles_on_the_targets_own_key(s3m, s3_client):
    write(s3m.path / "a.csv", (DATA / "iris.csv").read_bytes())
    write(s3m.path / "b.csv", (DATA / "new_iris.csv").read_bytes())
    a, b = lamfs.Artifact.get(key="a.csv"), lamfs.Artifact.get(key="b.csv")
    os.rename(s3m.path / "a.csv", s3m.path / "b.csv")
    after = lamfs.Artifact.get(key="b.csv")
    assert (after.uid, after.hash, after.storage_key) == (b.uid, a.hash, b.storage_key)  # LaminDB's layout again
    assert objects(s3_client).keys() == {f"faults/{b.storage_key}"}
    assert read(s3m.path / "b.csv") == (DATA / "iris.csv").read_bytes()


def test_failed_delete_leaves_an_orphan_that_fsck_repairs(s3m, s3_server, s3_client):
    """A rename that changes the suffix moves the object: copy, commit, then delete the old one. If the
    delete fails the rename still succeeds (the commit happened); the old object is an orphan."""
    write(s3m.path / "a.csv", (DATA / "iris.csv").read_bytes())
    old_key = lamfs.Artifact.get(key="a.csv").storage_key
    s3_server.fault(method="DELETE", status=503)
    s3_server.fault(method="POST", query_contains="delete", status=503)  # DeleteObjects
    os.rename(s3m.path / "a.csv", s3m.path / "a.data")
    s3_server.clear_faults()
    new = lamfs.Artifact.get(key="a.data")
    assert new.storage_key != old_key and read(s3m.path / "a.data") == (DATA / "iris.csv").read_bytes()
    assert f"faults/{old_key}" in objects(s3_client)  # the orphan
    s3m.stop()
    env = s3m.env
    report = json.loads(lamfs_cli("fsck", "--instance", s3m.instance, "--json", "--min-age", "0", env=env,
                                  check=False).stdout)
    assert [(p["kind"], p["storage_key"]) for p in report["problems"]] == [("orphan_object", old_key)]
    repaired = json.loads(lamfs_cli("fsck", "--instance", s3m.instance, "--json", "--min-age", "0", "--repair",
                                    env=env).stdout)
    assert repaired["ok"] and f"faults/{old_key}" not in objects(s3_client)
    assert json.loads(lamfs_cli("fsck", "--instance", s3m.instance, "--json", "--min-age", "0", env=env).stdout)["ok"]
    assert f"faults/{new.storage_key}" in objects(s3_client)
