"""The `lamfs` command line, run the way a user runs it: a subprocess (`python -m lamfs.cli`) on a real
instance with a local or S3 (test server) root. Checks stdout, stderr and exit codes (0 ok, 1 failed,
2 usage/bad input), including wrong arguments, a missing instance and an unreachable S3 endpoint."""
from __future__ import annotations

import json
import os
import signal
import socket
import time
import uuid

import pytest

from .conftest import DATA
from .conftest_mount import is_mounted, lamfs_cli

COMMANDS = ["init", "instances", "status", "add", "ls", "info", "mv", "rm", "trash", "fsck", "mount", "cache",
            "umount"]


@pytest.fixture
def env(lamfs_home):
    return dict(os.environ, LAMFS_HOME=str(lamfs_home))


def refresh(env):
    """After the S3 fixtures patched the process environment (AWS_* for the test server, no proxies)."""
    env.clear()
    env.update(os.environ)


def cli(env, *args, timeout=120):
    return lamfs_cli(*args, env=env, check=False, timeout=timeout)


def ok(env, *args):
    r = cli(env, *args)
    assert r.returncode == 0, f"lamfs {' '.join(args)} → {r.returncode}\n{r.stdout}\n{r.stderr}"
    assert "Traceback" not in r.stderr
    return r


def plain_error(r, code: int, *texts: str):
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    for text in texts:
        assert text in r.stderr, (text, r.stderr)


@pytest.fixture
def instance(request, root_kind, env, tmp_path):
    """A fresh instance named 'cli' (current), on a local directory or the S3 test server."""
    if root_kind == "s3":
        request.getfixturevalue("s3_bucket")
        refresh(env)
        storage = "s3://lamfs-test/cli"
    else:
        storage = str(tmp_path / "root")
    ok(env, "init", "--storage", storage, "--name", "cli")
    return storage


def objects(root_kind, storage, s3_client_factory):
    """Keys of all objects under the root, looked up behind lamfs's back."""
    if root_kind == "s3":
        client = s3_client_factory()
        resp = client.list_objects_v2(Bucket="lamfs-test", Prefix="cli/")
        return sorted(o["Key"][len("cli/"):] for o in resp.get("Contents", []))
    root = storage
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


@pytest.fixture
def list_objects(request, root_kind, instance):
    return lambda: objects(root_kind, instance, lambda: request.getfixturevalue("s3_client"))


# -- help, version, usage errors -------------------------------------------------------------------------------

def test_version_and_help(env):
    r = ok(env, "--version")
    assert r.stdout.strip().startswith("lamfs ") and r.stdout.strip().split()[1][0].isdigit()
    top = ok(env, "--help").stdout
    for command in COMMANDS:
        assert f"    {command} " in top, command
        assert "usage: lamfs " + command in ok(env, command, "--help").stdout
    for sub in (("instances", "connect"), ("instances", "delete"), ("trash", "restore"), ("trash", "empty")):
        assert ok(env, *sub, "--help").stdout.startswith("usage: lamfs " + " ".join(sub))


@pytest.mark.parametrize("args, code, text", [
    ((), 2, "required"),
    (("frobnicate",), 2, "invalid choice"),
    (("ls", "--bogus"), 2, "unrecognized arguments"),
    (("add",), 2, "the following arguments are required: PATH"),
    (("trash",), 2, "required"),
    (("trash", "restore"), 2, "KEY|UID"),
    (("fsck", "--min-age", "soon"), 2, "invalid duration 'soon'"),
    (("mv", "only-one"), 2, "NEW"),
    (("instances", "connect"), 2, "name"),
])
def test_usage_errors_exit_2_without_traceback(env, args, code, text):
    plain_error(cli(env, *args), code, text)


def test_bad_input_exit_2(env, tmp_path):
    ok(env, "init", "--storage", str(tmp_path / "root"), "--name", "bad")
    plain_error(cli(env, "add", str(tmp_path / "nope.csv")), 2, "no such file or directory")
    plain_error(cli(env, "add", str(DATA / "iris.csv"), "--key", "iris.txt"), 2,
                "The suffix '.txt' of the provided key is incorrect, it should be '.csv'.")
    plain_error(cli(env, "add", str(DATA / "iris.csv"), "--key", "a/../iris.csv"), 2, "'..'")
    plain_error(cli(env, "add", str(DATA / "iris.csv"), "--key", ".lamindb/iris.csv"), 2, "reserved")
    plain_error(cli(env, "add", str(DATA / "iris.csv"), str(DATA / "iris.data"), "--key", "x.csv"), 2,
                "several paths")
    plain_error(cli(env, "mv", "nothing.csv", "other.csv"), 1, "no artifact or directory 'nothing.csv'")
    plain_error(cli(env, "info", "nothing.csv"), 1, "no artifact with key or uid 'nothing.csv'")
    assert ok(env, "ls").stdout == ""  # nothing was added by any of the above


@pytest.mark.parametrize("args", [("ls",), ("info", "x.csv"), ("add", str(DATA / "iris.csv")), ("rm", "x.csv"),
                                  ("trash", "list"), ("fsck",), ("status",), ("cache", "stats"),
                                  ("instances", "connect", "nope"), ("instances", "delete", "nope")])
def test_missing_instance(env, args):
    full = list(args) if args[0] == "instances" else [*args, "--instance", "nope"]
    plain_error(cli(env, *full), 2, "no instance named 'nope'")


# -- the artifact commands on local and S3 roots -----------------------------------------------------------------

def test_add_ls_info_mv_rm_trash(env, instance, root_kind, list_objects, tmp_path):
    added = json.loads(ok(env, "add", str(DATA / "iris.csv"), "--description", "the iris data", "--json").stdout)
    assert [(a["key"], a["size"], a["hash"], a["status"]) for a in added] == [
        ("iris.csv", 224, "iwc1TmF1TW_l5weDvscSHw", "added")]
    uid = added[0]["uid"]
    assert list_objects() == [f".lamindb/{uid}.csv"]

    # same bytes again: the existing artifact, nothing stored
    r = ok(env, "add", str(DATA / "iris.csv"))
    assert r.stdout.startswith(f"already stored: iris.csv ({uid})")
    # a directory key and a key-less artifact
    r = ok(env, "add", str(DATA / "iris.data"), str(DATA / "new_iris.csv"), "--key", "runs/2024/")
    assert "added runs/2024/iris.data (" in r.stdout and "added runs/2024/new_iris.csv (" in r.stdout
    folder = tmp_path / "store.zarr"
    (folder / "a").mkdir(parents=True)
    (folder / "a" / "0").write_bytes(b"x" * 100)
    (folder / ".zattrs").write_text("{}")
    r = ok(env, "add", str(folder), "--no-key")
    assert "(no key: .lamfs/by-uid/" in r.stdout and "2 files" in r.stdout

    listing = ok(env, "ls").stdout.splitlines()
    assert [line.split()[-1] for line in listing[:3]] == ["iris.csv", "runs/2024/iris.data", "runs/2024/new_iris.csv"]
    assert listing[0].split()[:3] == [uid, "224", "B"]
    assert "(no key: .lamfs/by-uid/" in listing[3]
    assert ok(env, "ls", "runs/").stdout.count("\n") == 2
    assert ok(env, "ls", "/runs/2024/new").stdout.split()[-1] == "runs/2024/new_iris.csv"
    assert ok(env, "ls", "nothing/").stdout == ""
    long = ok(env, "ls", "--long", "iris").stdout
    assert "iwc1TmF1TW_l5weDvscSHw" in long and "# the iris data" in long and "  224  " in long
    rows = json.loads(ok(env, "ls", "--json").stdout)
    assert len(rows) == 4 and {r["key"] for r in rows} == {"iris.csv", "runs/2024/iris.data",
                                                            "runs/2024/new_iris.csv", None}
    zarr = next(r for r in rows if r["key"] is None)
    assert zarr["is_folder"] and zarr["n_files"] == 2 and zarr["size"] == 102

    # info by key and by uid: all fields, storage path, versions
    info = json.loads(ok(env, "info", "iris.csv", "--json").stdout)
    assert info == json.loads(ok(env, "info", uid, "--json").stdout)
    assert info["description"] == "the iris data" and info["hash_type"] == "md5"
    assert info["storage_path"].endswith(f"/.lamindb/{uid}.csv")
    assert info["storage_path"].startswith("s3://lamfs-test/cli/" if root_kind == "s3" else instance)
    assert [v["uid"] for v in info["versions"]] == [uid]
    text = ok(env, "info", "iris.csv").stdout
    assert f"uid              {uid}" in text and "versions:" in text and "(latest)" in text
    assert json.loads(ok(env, "info", zarr["uid"], "--json").stdout)["files"] == [
        {"path": ".zattrs", "size": 2}, {"path": "a/0", "size": 100}]
    # a new version through a key that exists
    other = tmp_path / "iris.csv"
    other.write_bytes((DATA / "iris.csv").read_bytes() + b"1,2,3,4,x\n")
    r = ok(env, "add", str(other))
    assert r.stdout.startswith("new version 0001 of iris.csv")
    versions = json.loads(ok(env, "info", "iris.csv", "--json").stdout)["versions"]
    assert [(v["version"], v["is_latest"]) for v in versions] == [("0000", False), ("0001", True)]
    v1 = versions[1]["uid"]

    # mv: a key change (virtual keys: no object moves), into a directory, refusing to overwrite
    before = list_objects()
    ok(env, "mv", "iris.csv", "flowers/iris.csv")
    assert list_objects() == before
    assert json.loads(ok(env, "info", "flowers/iris.csv", "--json").stdout)["uid"] == v1
    ok(env, "mv", "runs/2024/iris.data", "flowers/")
    assert ok(env, "ls", "flowers/").stdout.split()[3::4] == ["flowers/iris.csv", "flowers/iris.data"]
    r = cli(env, "mv", "runs/2024/new_iris.csv", "flowers/iris.csv")
    plain_error(r, 1, "'flowers/iris.csv' exists; pass --force")
    ok(env, "mv", "runs", "archive")  # a directory, in one transaction
    assert ok(env, "ls", "archive/").stdout.split()[-1] == "archive/2024/new_iris.csv"

    # rm → trash → restore; rm --permanent; trash empty
    r = ok(env, "rm", "flowers/iris.csv")
    assert r.stdout.strip() == f"moved flowers/iris.csv ({v1}) to the trash"
    assert "flowers/iris.csv" not in ok(env, "ls").stdout
    trash = json.loads(ok(env, "trash", "list", "--json").stdout)
    assert [t["uid"] for t in trash] == [v1] and trash[0]["trashed"]
    plain_error(cli(env, "rm", "flowers/iris.csv"), 1, "no artifact with key or uid 'flowers/iris.csv'")
    plain_error(cli(env, "rm", v1), 1, "is in the trash")
    assert f"restored flowers/iris.csv ({v1})" in ok(env, "trash", "restore", "flowers/iris.csv").stdout
    assert ok(env, "trash", "list").stdout.strip() == "the trash is empty"
    plain_error(cli(env, "trash", "restore", v1), 1, "not in the trash")
    plain_error(cli(env, "rm", "flowers"), 1, "is a directory (use -r")
    r = ok(env, "rm", "-r", "flowers")
    assert r.stdout.count("to the trash") == 2
    # restoring onto a key that is taken again is refused with a plain message
    ok(env, "add", str(DATA / "iris.data"), "--key", "flowers/iris.data")
    plain_error(cli(env, "trash", "restore", "flowers/iris.data"), 1, "cannot restore flowers/iris.data")
    r = cli(env, "rm", "archive/2024/new_iris.csv", "no-such.csv", "--permanent")
    assert r.returncode == 1 and "deleted archive/2024/new_iris.csv" in r.stdout and "no-such.csv" in r.stderr
    r = ok(env, "trash", "empty")
    assert "emptied the trash: 2 artifact(s) deleted permanently" in r.stdout
    assert ok(env, "trash", "list").stdout.strip() == "the trash is empty"
    remaining = json.loads(ok(env, "ls", "--json").stdout)
    # deleting the latest version of iris.csv made the first one the latest again (LaminDB's rule)
    assert sorted(r["key"] or "" for r in remaining) == ["", "flowers/iris.data", "iris.csv"]
    assert next(r for r in remaining if r["key"] == "iris.csv")["uid"] == uid
    # auto-managed objects of permanently deleted artifacts are gone; the live ones stay
    expected = sorted([r["storage_key"] for r in remaining if not r["is_folder"]]
                      + [f"{zarr['storage_key']}/.zattrs", f"{zarr['storage_key']}/a/0"])
    assert list_objects() == expected
    assert ok(env, "fsck", "--hashes").stdout.startswith("fsck cli: ok")


@pytest.mark.parametrize("root_kind", ["local", "s3"])
def test_add_progress_bar(env, instance, root_kind, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(12 << 20))  # above the S3 multipart threshold too
    r = ok(env, "add", str(big), "--progress")
    lines = [line for line in r.stderr.splitlines() if line.startswith("big.bin [")]
    assert lines and "100.0%" in lines[-1] and "12.0 MiB/12.0 MiB" in lines[-1]
    percents = [float(line.split("]")[1].split("%")[0]) for line in lines]
    assert percents == sorted(percents) and len(lines) >= 3
    assert "added big.bin" in r.stdout
    # not a terminal and no --progress: no bar
    folder = tmp_path / "folder"
    folder.mkdir()
    for i in range(3):
        (folder / f"part-{i}").write_bytes(os.urandom(3 << 20))
    r = ok(env, "add", str(folder))
    assert r.stderr == "" and "added folder/ (" in r.stdout and "3 files" in r.stdout
    (folder / "part-3").write_bytes(os.urandom(1 << 20))
    r = ok(env, "add", str(folder), "--key", "folder2", "--progress")
    last = [line for line in r.stderr.splitlines() if line.startswith("folder2 [")][-1]
    assert "100.0%" in last and "10.0 MiB/10.0 MiB" in last  # one bar over the whole folder


def test_instances_connect_delete(env, tmp_path):
    ok(env, "init", "--storage", str(tmp_path / "a"), "--name", "alpha")
    ok(env, "init", "--storage", str(tmp_path / "b"), "--name", "beta")
    listing = ok(env, "instances").stdout.splitlines()
    assert [line.split()[:2] for line in listing] == [["alpha", str(tmp_path / "a")], ["*", "beta"]]
    r = ok(env, "instances", "connect", "alpha")
    assert "connected to instance 'alpha'" in r.stdout
    rows = json.loads(ok(env, "instances", "list", "--json").stdout)
    assert [(r["name"], r["current"]) for r in rows] == [("alpha", True), ("beta", False)]
    ok(env, "add", str(DATA / "iris.csv"))  # goes to the current instance: alpha
    assert "iris.csv" in ok(env, "ls").stdout
    assert ok(env, "ls", "--instance", "beta").stdout == ""
    r = cli(env, "instances", "delete", "alpha")
    plain_error(r, 1, "instance 'alpha' has 1 artifact(s)", "--force")
    assert (tmp_path / "a" / ".lamindb").is_dir()
    ok(env, "instances", "delete", "beta")
    r = ok(env, "instances", "delete", "alpha", "--force")
    assert "the objects in" in r.stdout and "were kept" in r.stdout
    assert len(list((tmp_path / "a" / ".lamindb").iterdir())) == 1  # data outlives the instance
    assert "no instances yet" in ok(env, "instances").stdout
    plain_error(cli(env, "instances", "delete", "alpha"), 2, "no instance named 'alpha'")


# -- status, against a real mount -------------------------------------------------------------------------------

@pytest.mark.mount
def test_status_mounts_health_and_refusals(env, mount_factory, tmp_path, lamfs_home):
    name = f"st-{uuid.uuid4().hex[:8]}"  # other test runs on this machine may have mounts too
    m = mount_factory(str(tmp_path / "root"), name=name)
    (m.path / "hello.txt").write_text("hello")
    r = ok(env, "status", "--instance", name, "--json")
    status = json.loads(r.stdout)
    [mount] = status["mounts"]
    assert mount["mountpoint"] == str(m.path) and mount["health"] == "ok" and not mount["read_only"]
    pid = mount["daemon"]["pid"]
    assert b"lamfs.cli" in open(f"/proc/{pid}/cmdline", "rb").read()
    assert mount["daemon"]["log"] == str(m.log_file) and mount["daemon"]["rss_bytes"] > 0
    [inst] = status["instances"]
    assert inst["name"] == name and inst["mounts"] == [str(m.path)]
    text = ok(env, "status").stdout
    assert f"{name}" in text and f"{m.path}  ok  (rw; pid {pid}" in text
    # operations that must not run under a live mount say so
    plain_error(cli(env, "instances", "delete", name, "--force"), 1, f"is mounted at {m.path}")
    plain_error(cli(env, "fsck", "--repair", "--instance", name), 1, "unmount it before `fsck --repair`")
    assert ok(env, "fsck", "--instance", name).returncode == 0  # a read-only check is fine
    # the daemon dies: status reports the dead mount and fails, umount --lazy cleans up
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}"):
        time.sleep(0.05)
    r = cli(env, "status", "--instance", name, "--json")
    assert r.returncode == 1
    [mount] = json.loads(r.stdout)["mounts"]
    assert mount["health"] == "disconnected" and mount["daemon"] is None
    r = cli(env, "status", "--instance", name)
    assert r.returncode == 1 and "disconnected" in r.stdout and "umount --lazy" in r.stdout
    plain_error(cli(env, "mount", str(m.path), "--instance", name), 1, "is a dead mount", "umount --lazy")
    ok(env, "umount", "--lazy", str(m.path))
    assert not is_mounted(m.path)
    assert json.loads(ok(env, "status", "--instance", name, "--json").stdout)["mounts"] == []
    assert "hello.txt" in ok(env, "ls", "--instance", name).stdout  # the committed file survived


# -- an unreachable S3 endpoint -------------------------------------------------------------------------------

def test_unreachable_s3_is_a_clear_error_in_bounded_time(env, s3_bucket, s3_server, tmp_path):
    refresh(env)
    ok(env, "init", "--storage", "s3://lamfs-test/down", "--name", "down")
    ok(env, "add", str(DATA / "iris.csv"))
    s3_server.stop()  # connections refused, as in an outage
    try:
        for args in (("add", str(DATA / "iris.data")), ("fsck",), ("fsck", "--hashes")):
            start = time.monotonic()
            r = cli(env, *args, timeout=60)
            elapsed = time.monotonic() - start
            plain_error(r, 1, "cannot reach the storage", "storage unavailable")
            assert elapsed < 30, (args, elapsed)  # default CLI retries, not the mount's
        # catalog-only commands keep working without the storage
        assert ok(env, "ls").stdout.split()[-1] == "iris.csv"
        assert json.loads(ok(env, "info", "iris.csv", "--json").stdout)["size"] == 224
        assert "iris.data" not in ok(env, "ls").stdout  # the failed add changed nothing
        # a permanent delete commits, then cannot remove the object: an orphan, said plainly
        start = time.monotonic()
        r = ok(env, "rm", "iris.csv", "--permanent")
        assert time.monotonic() - start < 30
        assert "deleted iris.csv" in r.stdout and "left as an orphan for fsck" in r.stderr
    finally:
        s3_server.start()
    r = cli(env, "fsck", "--min-age", "0", "--json")
    assert r.returncode == 1
    assert [p["kind"] for p in json.loads(r.stdout)["problems"]] == ["orphan_object"]
    ok(env, "fsck", "--repair", "--min-age", "0")
    assert ok(env, "fsck", "--min-age", "0").stdout.startswith("fsck down: ok (0 artifact(s), 0 object(s))")


def test_s3_endpoint_that_never_answers(env, s3_bucket, tmp_path):
    refresh(env)
    ok(env, "init", "--storage", "s3://lamfs-test/hang", "--name", "hang")
    with socket.socket() as sink:  # accepts connections (kernel backlog) and never says a word
        sink.bind(("127.0.0.1", 0))
        sink.listen(16)
        env.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{sink.getsockname()[1]}", LAMFS_S3_READ_TIMEOUT_S="1",
                   LAMFS_S3_MAX_ATTEMPTS="2")
        start = time.monotonic()
        r = cli(env, "add", str(DATA / "iris.csv"), timeout=60)
        assert time.monotonic() - start < 20
    plain_error(r, 1, "cannot reach the storage")
    env["LAMFS_S3_MAX_ATTEMPTS"] = "many"
    plain_error(cli(env, "fsck"), 2, "LAMFS_S3_MAX_ATTEMPTS must be a number")


# -- logging -------------------------------------------------------------------------------------------------------

def test_logs_never_show_secrets():
    import logging

    from lamfs.logs import CliFormatter, DaemonFormatter, redact

    secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
    lines = [
        f"GET https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4&X-Amz-Credential=AKIA/x&X-Amz-Signature={secret}",
        "catalog postgresql://lamfs:s3cr3t-Passw0rd@db.example.org:5432/lamfs",  # (URL userinfo has no '/')
        f"AWS_SECRET_ACCESS_KEY={secret}",
        f"{{'aws_session_token': '{secret}'}}",
        f"Authorization: AWS4-HMAC-SHA256 Credential=AKIA/x, Signature={secret}",
    ]
    for line in lines:
        assert secret not in redact(line) and "s3cr3t" not in redact(line) and "***" in redact(line), line
    assert redact("saved runs/x.csv (uid abc, 224 bytes)") == "saved runs/x.csv (uid abc, 224 bytes)"
    record = logging.LogRecord("lamfs", logging.WARNING, __file__, 1, "upload of %s failed: %s", ("a.csv", lines[0]),
                               None)
    for formatter in (CliFormatter(), DaemonFormatter(timestamps=True, journald=False)):
        assert secret not in formatter.format(record) and "a.csv" in formatter.format(record)
    journald = DaemonFormatter(timestamps=False, journald=True).format(record)
    assert journald.startswith("<4>WARNING lamfs: upload of a.csv failed")
