"""Write-back mode (`lamfs mount --write-back`, lamfs/fuse/writeback.py), driven through a real mount
on the S3 server: close returns before the upload, the mount shows the file at once, uploads land
(several at once), fsync waits, unmount drains, storage outages are ridden out, and a killed daemon's
queue is committed by the next mount."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

import lamfs
from lamfs.cli import daemon_pids

from .conftest_mount import is_mounted, lamfs_cli

DATA = Path(__file__).parent / "data"


def _wait(predicate, timeout_s: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _objects(s3_client, prefix: str) -> dict[str, bytes]:
    out = {}
    for obj in s3_client.list_objects_v2(Bucket="lamfs-test", Prefix=prefix).get("Contents", []):
        out[obj["Key"]] = s3_client.get_object(Bucket="lamfs-test", Key=obj["Key"])["Body"].read()
    return out


def _catalog(instance: str) -> dict[str, tuple[str, int]]:
    """key -> (hash, size) of the live artifacts, read fresh from the catalog."""
    lamfs.settings._disconnect()
    lamfs.setup.connect(instance)
    return {a.key: (a.hash, a.size) for a in lamfs.Artifact.filter()}


def _daemon_pid(mountpoint: Path) -> int:
    pids = daemon_pids(mountpoint)
    assert pids, f"no daemon for {mountpoint}"
    return pids[0]


@pytest.fixture
def wb_mount(s3_bucket, mount_factory):
    return mount_factory(f"{s3_bucket}/wb", name="wb", extra=("--write-back", "--write-back-threads", "4"))


def test_close_returns_before_upload_and_everything_lands(wb_mount, s3_server, s3_client):
    m = wb_mount
    # slow storage: each PUT takes 0.5 s; with write-back, close does not wait for it
    s3_server.fault(op="PutObject", delay_s=0.5, count=20)
    payloads = {f"d/f{i:02d}.txt": os.urandom(1000 + i) for i in range(20)}
    os.mkdir(m.path / "d")
    started = time.monotonic()
    for key, data in payloads.items():
        (m.path / key).write_bytes(data)
    elapsed = time.monotonic() - started
    # 20 sequential 0.5 s PUTs would take 10 s; the closes returned long before (4 uploaders)
    assert elapsed < 5.0, elapsed
    # the mount shows every file with its bytes at once, committed or not
    for key, data in payloads.items():
        assert (m.path / key).read_bytes() == data
    assert sorted(os.listdir(m.path / "d")) == sorted(k.split("/")[1] for k in payloads)
    _wait(lambda: len(_catalog("wb")) == 20, 60, "20 commits")
    cat = _catalog("wb")
    objs = _objects(s3_client, "wb/.lamindb/")
    assert sorted(len(b) for b in objs.values()) == sorted(len(d) for d in payloads.values())
    assert {k: s for k, (_h, s) in cat.items()} == {k: len(d) for k, d in payloads.items()}
    # the daemon publishes its counters every 2 s
    _wait(lambda: "write-back: 0 file(s) queued for upload, 20 committed" in
          lamfs_cli("cache", "stats", "--instance", "wb", env=m.env).stdout, 10, "the published counters")


def test_fsync_waits_for_the_commit(wb_mount, s3_server, s3_client):
    m = wb_mount
    s3_server.fault(op="PutObject", delay_s=0.8, count=1)
    started = time.monotonic()
    fd = os.open(m.path / "synced.csv", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, (DATA / "iris.csv").read_bytes())
    os.fsync(fd)  # durable at this point: in storage and in the catalog
    assert time.monotonic() - started >= 0.8
    assert _catalog("wb")["synced.csv"][1] == (DATA / "iris.csv").stat().st_size
    os.close(fd)
    assert list(_objects(s3_client, "wb/.lamindb/").values()) == [(DATA / "iris.csv").read_bytes()]


def test_fsync_reports_a_failed_upload(wb_mount, s3_server, monkeypatch):
    m = wb_mount
    s3_server.fault(method="PUT", status=403, count=100)  # not retried by botocore: an error at once
    fd = os.open(m.path / "denied.csv", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"a,b\n")
    with pytest.raises(OSError) as err:
        os.fsync(fd)
    assert err.value.errno == errno.EACCES  # the storage said "access denied"
    s3_server.clear_faults()
    os.close(fd)  # queued now; the uploader retries and succeeds
    _wait(lambda: "denied.csv" in _catalog("wb"), 30, "the retried upload")
    assert (m.path / "denied.csv").read_bytes() == b"a,b\n"


def test_rename_and_delete_right_after_close(wb_mount, s3_server, s3_client):
    m = wb_mount
    s3_server.fault(op="PutObject", delay_s=0.5, count=50)
    os.mkdir(m.path / "src")
    for i in range(5):
        (m.path / "src" / f"{i}.txt").write_bytes(f"file {i}\n".encode())
    (m.path / "gone.txt").write_bytes(b"deleted before its upload\n")
    (m.path / "a.txt").write_bytes(b"A\n")
    (m.path / "b.txt").write_bytes(b"B\n")
    # while uploads are queued: move the directory, delete one file, rename one file over another
    os.rename(m.path / "src", m.path / "dst")
    os.unlink(m.path / "gone.txt")
    os.rename(m.path / "b.txt", m.path / "a.txt")
    assert sorted(os.listdir(m.path / "dst")) == [f"{i}.txt" for i in range(5)]
    assert not (m.path / "gone.txt").exists()
    assert (m.path / "a.txt").read_bytes() == b"B\n"
    m.stop()  # the unmount waits for the queue
    cat = _catalog("wb")
    assert sorted(cat) == ["a.txt"] + [f"dst/{i}.txt" for i in range(5)]
    assert cat["a.txt"][1] == 2
    # the deleted file is not live (if its upload was already under way, it went to the trash)
    lamfs.settings._disconnect()
    lamfs.setup.connect("wb")
    assert [a.key for a in lamfs.Artifact.filter(key="gone.txt")] == []
    assert b"B\n" in _objects(s3_client, "wb/.lamindb/").values()


def test_outage_is_ridden_out(wb_mount, s3_server, s3_client):
    m = wb_mount
    s3_server.stop()  # connection refused, like a network outage
    try:
        (m.path / "during-outage.csv").write_bytes((DATA / "new_iris.csv").read_bytes())  # close succeeds
        assert (m.path / "during-outage.csv").read_bytes() == (DATA / "new_iris.csv").read_bytes()
        time.sleep(2.0)  # a few failed attempts
    finally:
        s3_server.start()
    _wait(lambda: "during-outage.csv" in _catalog("wb"), 60, "the upload after the outage")
    assert list(_objects(s3_client, "wb/.lamindb/").values()) == [(DATA / "new_iris.csv").read_bytes()]
    assert "not committed" not in m.log()


def test_killed_daemon_queue_is_committed_by_the_next_mount(wb_mount, s3_server, s3_client):
    m = wb_mount
    (m.path / "old.csv").write_bytes(b"v1\n")
    _wait(lambda: "old.csv" in _catalog("wb"), 30, "the first commit")
    first = lamfs.Artifact.get(key="old.csv")
    s3_server.fault(op="PutObject", delay_s=30, count=100)  # nothing gets through before the kill
    (m.path / "new.csv").write_bytes((DATA / "iris.csv").read_bytes())
    (m.path / "old.csv").write_bytes(b"v2, replaced\n")
    os.mkdir(m.path / "dir")
    (m.path / "dir" / "inner.txt").write_bytes(b"inner\n")
    (m.path / "dropped.txt").write_bytes(b"deleted after close\n")
    os.unlink(m.path / "dropped.txt")
    pid = _daemon_pid(m.path)
    os.kill(pid, signal.SIGKILL)
    _wait(lambda: not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2],
          10, "the daemon to die")
    subprocess.run(["fusermount3", "-uz", str(m.path)], check=False)
    assert set(_catalog("wb")) == {"old.csv"}  # nothing of the queue was committed
    s3_server.clear_faults()
    m.start()  # durable-on-close mode this time: recovery does not depend on the mode
    assert "write-back recovery: 3 file(s) committed" in m.log()
    cat = _catalog("wb")
    assert set(cat) == {"old.csv", "new.csv", "dir/inner.txt"}
    assert (m.path / "new.csv").read_bytes() == (DATA / "iris.csv").read_bytes()
    assert (m.path / "old.csv").read_bytes() == b"v2, replaced\n"
    replaced = lamfs.Artifact.get(key="old.csv")
    assert replaced.uid == first.uid and replaced.hash != first.hash  # replaced in place, as a write does
    assert (m.path / "dir" / "inner.txt").read_bytes() == b"inner\n"
    # and lamfs fsck agrees that the catalog and storage match
    # every catalog row has its object (uploads cut by the kill may have left orphans: allowed)
    report = json.loads(lamfs_cli("fsck", "--instance", "wb", "--min-age", "0s", "--json", env=m.env,
                                  check=False).stdout)
    assert [p for p in report["problems"] if p["kind"] in ("missing_object", "size_mismatch", "hash_mismatch")] == []
    # what the kill left (orphans of cut uploads, the intent of a cut replace) is cleaned up by --repair
    m.stop()
    lamfs_cli("fsck", "--instance", "wb", "--min-age", "0s", "--repair", env=m.env)
    assert lamfs_cli("fsck", "--instance", "wb", "--min-age", "0s", env=m.env, check=False).returncode == 0


def test_bad_thread_count_is_refused(s3_bucket, lamfs_home, tmp_path):
    env = dict(os.environ, LAMFS_HOME=str(lamfs_home))
    lamfs_cli("init", "--storage", f"{s3_bucket}/wb-bad", "--name", "wbbad", env=env)
    (tmp_path / "m").mkdir()
    proc = lamfs_cli("mount", str(tmp_path / "m"), "--instance", "wbbad", "--write-back", "--write-back-threads", "0",
                     env=env, check=False)
    assert proc.returncode != 0 and "--write-back-threads must be between 1 and 64" in proc.stderr
    assert not is_mounted(tmp_path / "m")


def test_fstab_options_turn_write_back_on(lamfs_home, tmp_path):
    """mount.lamfs (fstab): `write_back,write_back_threads=2` give a write-back mount, on a local root too."""
    import sys

    with_home = dict(os.environ, LAMFS_HOME=str(lamfs_home))
    lamfs_cli("init", "--storage", str(tmp_path / "root"), "--name", "fstabwb", env=with_home)
    mnt, log = tmp_path / "mnt", tmp_path / "wb.log"
    mnt.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "LAMFS_HOME"}
    r = subprocess.run([sys.executable, "-m", "lamfs.mount_helper", "fstabwb", str(mnt), "-o",
                        f"write_back,write_back_threads=2,log_file={log},home={lamfs_home}"],
                       env=env, capture_output=True, text=True, timeout=120)
    try:
        assert r.returncode == 0, r.stderr
        (mnt / "a.txt").write_bytes(b"through fstab\n")
        assert "(write-back, 2 uploaders)" in log.read_text()
    finally:
        lamfs_cli("umount", str(mnt), env=with_home, check=False)
    assert not is_mounted(mnt)
    # the unmount waited for the queue: the file is committed
    assert _catalog("fstabwb") == {"a.txt": (_catalog("fstabwb")["a.txt"][0], 14)}
