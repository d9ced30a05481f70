"""Two mounts sharing one PostgreSQL catalog and one S3 bucket, as two machines would: two `lamfs mount`
daemons (separate processes, separate instance configs, separate cache directories) on the test S3
server and the test PostgreSQL server.

Close-to-open consistency between them: a file written and closed on A is readable on B after the
kernel TTL (1 s); a replace on A is never served stale on B; renames and deletes on A show on B;
concurrent replaces of one key from A and B end with one winner, the catalog and the stored object
agreeing, no intent or unreferenced object left behind, and nothing like "database is locked".
Also: `lamfs init --catalog postgresql://…` and `lf.setup.init(..., catalog=...)`.
"""
from __future__ import annotations

import errno
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

import lamfs
from lamfs.hashing import hash_bytes
from tests.conftest_mount import lamfs_cli
from tests.conftest_pg import PG_PASSWORD

pytestmark = [pytest.mark.mount, pytest.mark.s3]

TTL_S = 1.2  # the mounts' entry/attr TTL is 1 s
PREFIX = "shared"
BAD_LOG_WORDS = ("database is locked", "Traceback", "unexpected error", "CatalogBusy", PG_PASSWORD)


@pytest.fixture
def pair(s3_bucket, pg_url, mount_factory):
    storage = f"{s3_bucket}/{PREFIX}"
    a = mount_factory(storage, name="node-a", catalog=pg_url)
    b = mount_factory(storage, name="node-b", catalog=pg_url)
    lamfs.setup.connect("node-a")  # this process looks at the same catalog, to check it
    yield a, b
    for m in (a, b):
        log = m.log()
        for word in BAD_LOG_WORDS:
            assert word not in log, f"{word!r} in the log of {m.instance}:\n{log[-5000:]}"


def configs(home: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (home / "instances").glob("*.json")}


def service():
    return lamfs.settings.service


def stored_objects(s3_client) -> dict[str, bytes]:
    out = {}
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket="lamfs-test", Prefix=PREFIX + "/"):
        for obj in page.get("Contents", []):
            out[obj["Key"][len(PREFIX) + 1:]] = s3_client.get_object(Bucket="lamfs-test", Key=obj["Key"])["Body"].read()
    return out


def assert_consistent(s3_client) -> None:
    """Every committed row's object exists with the row's size, hash and etag; every object belongs to
    a row; no intent is pending."""
    cat = service().catalog
    assert cat.intents() == []
    rows = {r.storage_key: r for r in cat.all_artifacts()}
    objects = stored_objects(s3_client)
    assert sorted(objects) == sorted(rows), "objects without rows, or rows without objects"
    for key, rec in rows.items():
        data = objects[key]
        assert (len(data), hash_bytes(data).hash) == (rec.size, rec.hash), (
            f"{rec.key} ({rec.uid}, {'trashed' if rec.is_trashed else 'live'}) at {key}: the object has "
            f"{len(data)} bytes starting {data[:24]!r}; the row says {rec.size} bytes, hash {rec.hash}")
        head = s3_client.head_object(Bucket="lamfs-test", Key=f"{PREFIX}/{key}")
        assert head["ETag"].strip('"') == rec.storage_etag, rec


def test_init_with_a_postgres_catalog_cli_and_api(s3_bucket, pg_url, lamfs_home, s3_env):
    env = os.environ.copy()
    env["LAMFS_HOME"] = str(lamfs_home)
    out = lamfs_cli("init", "--storage", f"{s3_bucket}/{PREFIX}", "--name", "via-cli", "--catalog", pg_url, env=env)
    assert PG_PASSWORD not in out.stdout + out.stderr
    listed = lamfs_cli("instances", env=env).stdout
    assert "via-cli" in listed and PG_PASSWORD not in listed
    # the Python API: a second instance config on the same storage and catalog (a second machine)
    inst = lamfs.setup.init(storage=f"{s3_bucket}/{PREFIX}", catalog=pg_url, name="via-api")
    assert inst.catalog.url == pg_url and not inst.catalog.is_sqlite
    cfgs = configs(lamfs_home)
    assert cfgs["via-cli"]["catalog"] == cfgs["via-api"]["catalog"] == pg_url
    assert cfgs["via-cli"]["cache_dir"] != cfgs["via-api"]["cache_dir"]
    for name in ("via-cli", "via-api"):  # the password is on disk only for its owner
        assert (lamfs_home / "instances" / f"{name}.json").stat().st_mode & 0o077 == 0
    data_file = lamfs_home.parent / "x.csv"
    data_file.write_text("a,b\n1,2\n")
    rec = lamfs.Artifact(data_file, key="from-api.csv").save()
    assert inst.catalog.m.Artifact.select().count() == 1
    lamfs.setup.connect("via-cli")  # the other config sees the same catalog
    assert lamfs.Artifact.get(key="from-api.csv").uid == rec.uid
    assert repr(lamfs.settings.instance.catalog).count(PG_PASSWORD) == 0
    with pytest.raises(Exception) as err:
        lamfs.setup.init(storage=f"{s3_bucket}/{PREFIX}", catalog=pg_url.replace(PG_PASSWORD, "wrong-pw-X1"),
                         name="bad-pw")
    assert "wrong-pw-X1" not in str(err.value) and "password authentication failed" in str(err.value)


def test_written_on_a_readable_on_b_after_the_ttl(pair, s3_client):
    a, b = pair
    assert b.run("ls").stdout.split() == []
    a.run("printf 'hello from a\\n' > greeting.txt && mkdir -p deep/er && printf x > deep/er/f.bin")
    time.sleep(TTL_S)
    assert (b.path / "greeting.txt").read_bytes() == b"hello from a\n"
    assert (b.path / "deep" / "er" / "f.bin").read_bytes() == b"x"
    assert sorted(os.listdir(b.path)) == [".lamfs", "deep", "greeting.txt"]
    # both mounts show the same stable inode numbers: they come from the shared catalog
    assert os.stat(a.path / "greeting.txt").st_ino == os.stat(b.path / "greeting.txt").st_ino
    # and back: B writes, A reads
    payload = os.urandom(3 << 20)
    (b.path / "from-b.bin").write_bytes(payload)
    time.sleep(TTL_S)
    assert (a.path / "from-b.bin").read_bytes() == payload
    assert_consistent(s3_client)


def test_replace_on_a_is_never_served_stale_on_b(pair, s3_client):
    a, b = pair
    size = 5 << 20 | 123  # same size every time: only the content identity tells the versions apart
    versions = [os.urandom(size) for _ in range(4)]
    (a.path / "model.bin").write_bytes(versions[0])
    time.sleep(TTL_S)
    uid = service().get(key="model.bin").uid
    assert (b.path / "model.bin").read_bytes() == versions[0]  # now in B's block cache and page cache
    for version in versions[1:]:
        with open(a.path / "model.bin", "r+b") as f:  # an in-place rewrite: a replace, same uid
            f.write(version)
        time.sleep(TTL_S)
        assert (b.path / "model.bin").read_bytes() == version
        assert os.stat(b.path / "model.bin").st_size == size
    rec = service().get(key="model.bin")
    assert rec.uid == uid and rec.hash == hash_bytes(versions[-1]).hash
    # B's on-disk cache is not the thing that decides: a remount of B reads the new version too
    b.restart()
    assert (b.path / "model.bin").read_bytes() == versions[-1]
    assert_consistent(s3_client)


def test_rename_and_delete_on_a_show_on_b(pair, s3_client):
    a, b = pair
    a.run("mkdir -p proj/run1 && for i in $(seq 1 30); do echo $i > proj/run1/f$i.txt; done && echo k > keep.txt")
    time.sleep(TTL_S)
    assert len(os.listdir(b.path / "proj" / "run1")) == 30
    assert (b.path / "keep.txt").read_text() == "k\n"
    ino = os.stat(b.path / "keep.txt").st_ino
    a.run("mv keep.txt kept.txt && mv proj/run1 proj/run2 && rm proj/run2/f7.txt")
    time.sleep(TTL_S)
    assert not (b.path / "keep.txt").exists()
    assert (b.path / "kept.txt").read_text() == "k\n" and os.stat(b.path / "kept.txt").st_ino == ino
    assert not (b.path / "proj" / "run1").exists()
    assert sorted(os.listdir(b.path / "proj" / "run2")) == sorted(f"f{i}.txt" for i in range(1, 31) if i != 7)
    assert (b.path / "proj" / "run2" / "f30.txt").read_text() == "30\n"
    # rename over an existing file on A (write-temp-then-rename): B sees the new bytes
    a.run("echo new > tmp.txt && mv tmp.txt kept.txt")
    time.sleep(TTL_S)
    assert (b.path / "kept.txt").read_text() == "new\n"
    a.run("rm -r proj kept.txt")
    time.sleep(TTL_S)
    assert sorted(os.listdir(b.path)) == [".lamfs"]
    with pytest.raises(FileNotFoundError):
        os.stat(b.path / "kept.txt")
    trashed = service().catalog.filter_artifacts(trashed_only=True)
    assert len(trashed) == 31  # 30 files + kept.txt: rm moves to trash, objects stay, owned by their rows
    assert_consistent(s3_client)


def _write(path: Path, data: bytes, start: threading.Barrier, results: dict, name: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
            start.wait(10)  # both have written; now both close (commit) at once
        finally:
            os.close(fd)
        results[name] = "ok"
    except OSError as exc:
        results[name] = exc


def _race(a, b, key: str, data_a: bytes, data_b: bytes) -> dict:
    results: dict = {}
    start = threading.Barrier(2)
    threads = [threading.Thread(target=_write, args=(a.path / key, data_a, start, results, "a")),
               threading.Thread(target=_write, args=(b.path / key, data_b, start, results, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def test_concurrent_replaces_of_one_key_have_one_winner(pair, s3_client):
    a, b = pair
    (a.path / "contested.bin").write_bytes(b"original\n")
    time.sleep(TTL_S)
    uid = service().get(key="contested.bin").uid
    for round_ in range(6):
        data_a = os.urandom((1 << 20) + round_) + b"A"
        data_b = os.urandom((2 << 20) + round_) + b"B"
        results = _race(a, b, "contested.bin", data_a, data_b)
        assert results == {"a": "ok", "b": "ok"}  # writers take turns: the last to commit wins
        time.sleep(TTL_S)
        rec = service().get(key="contested.bin")
        final = (a.path / "contested.bin").read_bytes()
        assert final in (data_a, data_b)
        assert (b.path / "contested.bin").read_bytes() == final
        assert (rec.uid, rec.hash, rec.size) == (uid, hash_bytes(final).hash, len(final))
        assert_consistent(s3_client)


def test_interleaved_commits_cannot_split_object_and_row(pair, s3_client, s3_server):
    """The worst interleaving, forced: the HEAD that A makes right after its (multipart) upload is
    delayed, so B uploads and commits in between. Without a writer lock A would then commit its own
    hash with B's object (the catalog and the bytes disagreeing, A's bytes gone). With it B waits."""
    a, b = pair
    (a.path / "slow.bin").write_bytes(b"v0")
    time.sleep(TTL_S)
    key = service().get(key="slow.bin").storage_key
    # above the 8 MiB multipart threshold: a multipart upload is followed by a HEAD for its etag
    data_a, data_b = os.urandom(9 << 20) + b"A", os.urandom(9 << 20) + b"B"
    s3_server.fault(method="HEAD", path_contains=key, delay_s=2.0, count=1)
    results: dict = {}
    ta = threading.Thread(target=_write, args=(a.path / "slow.bin", data_a, threading.Barrier(1), results, "a"))
    ta.start()
    deadline = time.monotonic() + 20
    while not any(f.get("hits") for f in s3_server.faults()) and time.monotonic() < deadline:
        time.sleep(0.02)  # A has uploaded and is stuck in its HEAD
    assert any(f.get("hits") for f in s3_server.faults()), \
        "A made no HEAD after its upload: this test needs another way to stall A between upload and commit"
    _write(b.path / "slow.bin", data_b, threading.Barrier(1), results, "b")
    ta.join(60)
    assert results == {"a": "ok", "b": "ok"}
    time.sleep(TTL_S)
    rec = service().get(key="slow.bin")
    assert rec.hash == hash_bytes(data_b).hash  # B committed last
    assert (a.path / "slow.bin").read_bytes() == data_b == (b.path / "slow.bin").read_bytes()
    assert_consistent(s3_client)


def test_concurrent_creates_of_one_new_key(pair, s3_client):
    """Both mounts create the same new file at once: as on a local filesystem, both close(2) calls
    succeed and the last commit wins (the create that loses the race becomes a replace of the
    winner's file). One artifact, one version, with one writer's bytes on both mounts; no object
    left over."""
    a, b = pair
    for round_ in range(4):
        key = f"new-{round_}.bin"
        data_a, data_b = os.urandom(300_000) + b"A", os.urandom(300_000) + b"B"
        results = _race(a, b, key, data_a, data_b)
        assert results == {"a": "ok", "b": "ok"}, results
        time.sleep(TTL_S)
        final = (b.path / key).read_bytes()
        assert final in (data_a, data_b) and (a.path / key).read_bytes() == final
        versions = service().catalog.filter_artifacts(key=key, latest_only=False)
        assert [(v.hash, v.is_latest) for v in versions] == [(hash_bytes(final).hash, True)]
        assert_consistent(s3_client)


def test_a_name_replaced_on_another_mount_is_looked_up_again(pair):
    """B's kernel still holds the entry of a file that A deleted and created anew (another artifact,
    another inode). Opening the name on B must reach the new file: the daemon answers ESTALE for the
    dead inode and the kernel looks the name up again. Before, B got ENOENT for a name that exists —
    or wrote into the deleted file, where nobody would see the bytes."""
    a, b = pair
    b.restart("--entry-ttl", "60", "--attr-ttl", "60")  # B's kernel keeps entries for the whole test
    (a.path / "s").mkdir()
    (a.path / "s" / "f.txt").write_bytes(b"one\n")
    time.sleep(TTL_S)
    assert (b.path / "s" / "f.txt").read_bytes() == b"one\n"  # B's kernel now caches the entry
    os.unlink(a.path / "s" / "f.txt")
    (a.path / "s" / "f.txt").write_bytes(b"two\n")  # a new artifact at the same name
    assert (b.path / "s" / "f.txt").read_bytes() == b"two\n"
    with open(b.path / "s" / "f.txt", "wb") as f:  # O_CREAT | O_TRUNC through the cached entry
        f.write(b"three\n")
    time.sleep(TTL_S)
    assert (a.path / "s" / "f.txt").read_bytes() == b"three\n"
    live = service().catalog.filter_artifacts(key="s/f.txt")
    assert [r.hash for r in live] == [hash_bytes(b"three\n").hash]


@pytest.mark.parametrize("point,expect", [("replace.uploaded", "old"), ("replace.committed", "new"),
                                          ("settle.copied", "new")])
def test_reader_on_b_of_a_replace_that_crashed_on_a(pair, point, expect):
    """A is killed in the middle of a replace (at an injected point); B, still up, reads the file: the
    old bytes if the commit did not happen, the new ones if it did — never ESTALE, no repair step."""
    a, b = pair
    old, new = b"old\n" * 50_000, b"new\n" * 60_000
    (a.path / "f.bin").write_bytes(old)
    a.restart_with_env(LAMFS_CRASH_AT=point)
    with pytest.raises(OSError):  # A dies under the writer
        with open(a.path / "f.bin", "wb") as f:
            f.write(new)
    subprocess.run(["fusermount3", "-uz", str(a.path)], check=True)
    time.sleep(TTL_S)
    assert (b.path / "f.bin").read_bytes() == {"old": old, "new": new}[expect]
    a.start()  # and A, back, agrees (its healing settles in the background)
    assert (a.path / "f.bin").read_bytes() == {"old": old, "new": new}[expect]


CHURN_S = float(os.environ.get("LAMFS_CHURN_S", "8"))


def _churn_writer(root: Path, wid: str, names: list[str], until: float, seed: int, errors: list, counts: dict) -> None:
    import random

    rng = random.Random(seed)
    seq = 0
    while time.monotonic() < until:
        seq += 1
        name = rng.choice(names)
        data = f"{wid}-{seq}\n".encode() * rng.choice([1, 100, 20_000])
        op = rng.choice(["write", "write", "rename_over", "unlink"])
        try:
            if op == "write":  # a create or an overwrite, whichever the name is now
                with open(root / name, "wb") as f:
                    f.write(data)
            elif op == "rename_over":  # the editor / rsync way: a temp file, renamed over the name
                tmp = root / f".tmp-{wid}-{seq}"
                tmp.write_bytes(data)
                os.rename(tmp, root / name)
            else:
                os.unlink(root / name)
            counts[op] = counts.get(op, 0) + 1
        except OSError as exc:
            if op == "unlink" and exc.errno == errno.ENOENT:  # the other side removed it first
                counts["unlink_enoent"] = counts.get("unlink_enoent", 0) + 1
                continue
            errors.append(f"{wid} {op} {name}: {exc!r}")


def test_writers_on_two_mounts_churn_the_same_names(pair, s3_client, s3_server):
    """Three writers on each mount create, overwrite, rename over and delete the same three names at
    once. Allowed errors: ENOENT from unlink of a name the other side removed first. Nothing else
    fails; then both mounts agree on every file, each file's bytes are its row's, and storage and
    catalog agree (no intent, no object without a row)."""
    a, b = pair
    for m in (a, b):
        (m.path / "churn").mkdir(exist_ok=True)
    names = ["x.bin", "y.bin", "z.bin"]
    errors: list = []
    counts: dict = {}
    until = time.monotonic() + CHURN_S
    threads = [threading.Thread(target=_churn_writer, args=(m.path / "churn", f"{m.instance}-{i}", names, until,
                                                            hash((m.instance, i)) & 0xFFFF, errors, counts))
               for m in (a, b) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=CHURN_S + 120)
    assert not any(t.is_alive() for t in threads), "a writer hung"
    assert not errors, f"{len(errors)} failed operations ({counts}): {errors[:10]}"
    assert counts.get("write", 0) > 10 and counts.get("rename_over", 0) > 5, counts
    time.sleep(TTL_S)
    on_a = {p.name: p.read_bytes() for p in (a.path / "churn").iterdir()}
    on_b = {p.name: p.read_bytes() for p in (b.path / "churn").iterdir()}
    assert on_a == on_b
    live = {r.key.split("/", 1)[1]: r for r in service().catalog.filter_artifacts(key_prefix="churn/")}
    assert sorted(on_a) == sorted(live)
    for name, data in on_a.items():
        assert hash_bytes(data).hash == live[name].hash, name
    try:
        assert_consistent(s3_client)
    except AssertionError as exc:  # the storage requests and the daemons' lines about that artifact
        uid = str(exc).split("(", 1)[1].split(",", 1)[0]
        trail = [(r.get("method"), r.get("op"), r.get("path"), r.get("status"), r.get("bytes_in"))
                 for r in s3_server.stats()["recent"] if uid in str(r.get("path")) or uid in str(r.get("query"))]
        lines = [f"{m.instance}: {line}" for m in (a, b) for line in m.log().splitlines() if uid in line]
        raise AssertionError(f"{exc}\nS3 requests: {trail}\nlog: {lines}") from None
