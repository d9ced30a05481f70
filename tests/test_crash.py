"""Crash consistency: the mount daemon is killed with SIGKILL at random moments while a writer creates,
replaces (in place and by rename over), appends, renames and deletes files through it.

The writer records each operation in a manifest outside the mount: a `begin` line before it starts, a
`done` line once it returned (close(2) or rename(2) succeeded), each line fsynced. After every kill:
`fusermount3 -uz`, then
- `lamfs fsck --hashes` finds every catalog row's object with exactly the row's bytes (what the kill
  left is only unreferenced objects and unsettled intents);
- the instance is remounted and the API connects, WITHOUT fsck: both heal what the kill left;
- the live artifacts are exactly the manifest's files, with exactly their bytes — read from storage
  with the cache emptied — allowing only the one operation in flight at the kill to have happened or
  not (atomically: the old bytes or the new, never a mix);
- the mount shows the same, and fsck finds nothing left but new-file uploads too young to delete.
Then the next round continues the same manifest on the remounted instance.

Rounds: LAMFS_CRASH_KILLS on a local root (default 8), LAMFS_CRASH_KILLS_S3 on the S3 test server
(default 3); scripts/reliability_long.sh runs many more.
"""
from __future__ import annotations

import errno
import hashlib
import json
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import time
import traceback
from pathlib import Path

import pytest

from lamfs.cli import daemon_pids

import lamfs

from .conftest_mount import is_mounted, lamfs_cli

pytestmark = pytest.mark.mount

KILLS = {"local": int(os.environ.get("LAMFS_CRASH_KILLS", "8")), "s3": int(os.environ.get("LAMFS_CRASH_KILLS_S3", "3"))}
STATS = {"kills": 0, "operations_done": 0, "in_flight_at_kill": 0, "in_flight_landed": 0, "left_by_kill": 0,
         "healed_by_mount": 0, "checked_files": 0}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the writer (a spawned process) ---------------------------------------------------------------------

def writer(mnt: str, manifest: str, state_json: str, seed: int) -> None:
    """Random operations until the mount dies under it. `state_json`: the files it may assume exist."""
    rng = random.Random(seed)
    files: dict[str, str] = json.loads(state_json)  # key -> sha256
    root = Path(mnt, "w")
    seq = 0
    with open(manifest, "a") as log:
        def record(entry: dict) -> None:
            log.write(json.dumps(entry) + "\n")
            log.flush()
            os.fsync(log.fileno())

        def content() -> bytes:
            size = rng.choice([0, 17, 4096, 100_000, 1_500_000, rng.randrange(1, 3_000_000)])
            return f"v{seed}-{seq}\n".encode() + rng.randbytes(size)

        try:
            while True:
                seq += 1
                names = sorted(files)
                kind = rng.choice(["create", "create", "replace", "replace_fsync", "append", "create_tmp",
                                   "rename", "rename_over", "unlink"] if names else ["create"])
                tmps = [n for n in names if n.startswith(".tmp-")]
                if tmps:  # the editor / rsync way to replace: a temp file, then rename it over the file
                    others = [n for n in names if not n.startswith(".tmp-")]
                    kind = "rename_over" if others else "rename"
                op: dict = {"seq": seq, "seed": seed, "op": kind}
                if kind == "create":
                    name = f"f{seed}-{seq}.bin"
                    data = content()
                    op.update(key=name, sha=sha(data))
                elif kind in ("replace", "replace_fsync"):
                    name, data = rng.choice(names), content()
                    op.update(key=name, sha=sha(data))
                elif kind == "create_tmp":
                    name, data = f".tmp-{seed}-{seq}.bin", content()
                    op.update(op="create", key=name, sha=sha(data))
                    kind = "create"
                elif kind == "append":
                    name = rng.choice(names)
                    extra = rng.randbytes(rng.choice([1, 5000, 300_000]))
                    old = (root / name).read_bytes()
                    assert sha(old) == files[name], f"{name} changed under the writer"
                    data = old + extra
                    op.update(key=name, sha=sha(data))
                elif kind == "rename":
                    name = tmps[0] if tmps else rng.choice(names)
                    op.update(key=name, to=f"m{seed}-{seq}.bin")
                elif kind == "rename_over":
                    if tmps:
                        name, other = tmps[0], rng.choice(others)
                    elif len(names) < 2:
                        continue
                    else:
                        name, other = rng.sample(names, 2)
                    op.update(key=name, to=other)
                else:
                    name = rng.choice(names)
                    op.update(key=name)
                record({"begin": op})
                if kind in ("create", "replace", "replace_fsync"):
                    with open(root / name, "wb") as f:
                        f.write(data)
                        if kind == "replace_fsync":
                            f.flush()
                            os.fsync(f.fileno())
                    files[name] = op["sha"]
                elif kind == "append":
                    with open(root / name, "ab") as f:
                        f.write(extra)
                    files[name] = op["sha"]
                elif kind in ("rename", "rename_over"):
                    os.rename(root / name, root / op["to"])
                    files[op["to"]] = files.pop(name)
                else:
                    os.unlink(root / name)
                    del files[name]
                record({"done": seq, "seed": seed})
        except OSError as exc:  # the mount died under us: the end of this round
            record({"stopped": seq, "seed": seed, "error": repr(exc)})
        except BaseException:  # noqa: BLE001
            record({"stopped": seq, "seed": seed, "error": traceback.format_exc()})


# -- the model of what must be there ------------------------------------------------------------------

def apply(files: dict, op: dict, blobs_ok: bool = True) -> dict:
    files = dict(files)
    kind = op["op"]
    if kind in ("create", "replace", "replace_fsync", "append"):
        files[op["key"]] = op["sha"]
    elif kind in ("rename", "rename_over"):
        files[op["to"]] = files.pop(op["key"])
    elif kind == "unlink":
        files.pop(op["key"])
    return files


def replay(manifest: Path) -> tuple[dict, dict | None]:
    """(state with every done operation applied, the operation in flight at the end or None)."""
    files: dict = {}
    begun: dict | None = None
    for line in manifest.read_text().splitlines():
        entry = json.loads(line)
        if "begin" in entry:
            begun = entry["begin"]
        elif "done" in entry:
            assert begun is not None and begun["seq"] == entry["done"]
            files = apply(files, begun)
            begun = None
        elif "abandoned" in entry:  # in flight at a kill and did not happen
            begun = None
        elif "stopped" in entry:
            assert "Traceback" not in entry["error"], entry["error"]
    return files, begun


# -- the test ---------------------------------------------------------------------------------------------

def daemon_pid(mountpoint: Path) -> int:
    for pid in daemon_pids(mountpoint):
        return pid
    raise AssertionError(f"no lamfs daemon for {mountpoint}")


def fsck(m, *flags: str) -> dict:
    proc = lamfs_cli("fsck", "--instance", m.instance, "--json", "--min-age", "0", *flags, env=m.env, check=False)
    assert proc.returncode in (0, 1), proc.stderr
    return json.loads(proc.stdout)


def wait_for_healing(m, timeout_s: float = 60.0) -> dict:
    """The report of the mount's healing at start, once it is published (`lamfs status --json`)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = json.loads(lamfs_cli("status", "--json", "--instance", m.instance, env=m.env, check=False).stdout)
        for row in status["mounts"]:
            if row["mountpoint"] == str(m.path) and row.get("healing"):
                return row["healing"]
        time.sleep(0.2)
    raise AssertionError(f"the mount at {m.path} published no healing report within {timeout_s} s")


def live_files(cache_dir: Path) -> dict:
    """key -> sha256 of every live artifact under w/, read from storage with the cache emptied."""
    lamfs.settings._disconnect()
    shutil.rmtree(cache_dir, ignore_errors=True)
    out = {}
    for a in lamfs.Artifact.filter(key__startswith="w/"):
        path = a.cache()
        out[a.key[2:]] = sha(Path(path).read_bytes())
    return out


def mounted_files(m) -> dict:
    root = m.path / "w"
    return {p.name: sha(p.read_bytes()) for p in root.iterdir()}


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def crash_mount(mount_factory, tmp_path, request, monkeypatch):
    if request.param == "s3":
        monkeypatch.setenv("LAMFS_S3_MAX_ATTEMPTS", "3")
        storage = request.getfixturevalue("s3_bucket") + "/crash"
    else:
        storage = str(tmp_path / "storage")
    m = mount_factory(storage, name="crash")
    m.root_kind = request.param
    lamfs.setup.connect(m.instance)
    return m


def test_sigkill_loses_nothing(crash_mount, tmp_path):
    m = crash_mount
    kills = KILLS[m.root_kind]
    for k in STATS:
        STATS[k] = 0
    cache_dir = Path(lamfs.settings.cache_dir)
    os.mkdir(m.path / "w")
    manifest = tmp_path / "manifest.jsonl"
    manifest.touch()
    ctx = multiprocessing.get_context("spawn")
    rng = random.Random(int(os.environ.get("LAMFS_CRASH_SEED", "1")))
    state: dict = {}
    for round_ in range(kills):
        proc = ctx.Process(target=writer, args=(str(m.path), str(manifest), json.dumps(state), round_ + 1))
        proc.start()
        time.sleep(1.0 + rng.random() * 1.5)  # the spawned interpreter starts (~0.7 s), then writes a while
        pid = daemon_pid(m.path)
        os.kill(pid, signal.SIGKILL)
        STATS["kills"] += 1
        proc.join(timeout=60)
        assert not proc.is_alive(), "the writer hung on a dead mount"
        subprocess.run(["fusermount3", "-uz", str(m.path)], check=True)
        for _ in range(100):
            if not is_mounted(m.path):
                break
            time.sleep(0.05)

        done, in_flight = replay(manifest)
        # 1. every row names an object with exactly its bytes, right after the kill, before any healing
        report = fsck(m, "--hashes")
        kinds = [p["kind"] for p in report["problems"]]
        assert not {"missing_object", "size_mismatch", "hash_mismatch", "changed_object"} & set(kinds), report
        STATS["left_by_kill"] += len(report["problems"])
        # 2. no fsck, no repair: the remount heals what the kill left (in the background; reads work
        # meanwhile), and the mount shows exactly the manifest's files
        m.start()
        allowed = [done] + ([apply(done, in_flight)] if in_flight else [])
        shown = mounted_files(m)
        assert shown in allowed, f"round {round_}: the mount shows {sorted(shown.items())}, allowed: {allowed}"
        healing = wait_for_healing(m)
        STATS["healed_by_mount"] += healing.get("settled", 0) + healing.get("staged_deleted", 0)
        m.stop()
        # 3. the files are the manifest's, byte for byte, from storage through an emptied cache
        stored = live_files(cache_dir)
        assert stored == shown, (
            f"round {round_}: storage has {sorted(stored.items())}, the mount showed {sorted(shown.items())}")
        assert stored in allowed, (
            f"round {round_}: storage has {sorted(stored.items())}, the manifest allows {allowed} "
            f"(in flight: {in_flight})")
        if in_flight:
            STATS["in_flight_at_kill"] += 1
            STATS["in_flight_landed"] += stored != done
        STATS["checked_files"] += len(stored)
        # 4. after a remount the mount shows the same
        m.start()
        lamfs.setup.connect(m.instance)
        assert mounted_files(m) == stored
        # 5. and fsck finds nothing but uploads of new files killed before their commit, too young to
        # be called abandoned (healing deletes them later; test_kill_at_every_step checks that)
        healed = fsck(m, "--hashes")
        young = [p for p in healed["problems"] if p["kind"] == "pending_intent" and p["uid"] is None]
        young_keys = {p["storage_key"] for p in young}
        rest = [p for p in healed["problems"] if p not in young and not (
            p["kind"] in ("temp_file", "incomplete_upload") or p["storage_key"] in young_keys)]
        assert not rest, f"round {round_}: left after healing: {rest}"
        state = stored
        if in_flight:  # the manifest says what became of the operation in flight, for the next rounds
            with open(manifest, "a") as f:
                mark = "done" if stored != done else "abandoned"
                f.write(json.dumps({mark: in_flight["seq"], "seed": in_flight["seed"]}) + "\n")
    STATS["operations_done"] = sum('"done"' in line for line in manifest.read_text().splitlines())
    assert STATS["operations_done"] > kills  # the writer got work done between the kills
    print(f"\ncrash test ({m.root_kind}): {json.dumps(STATS)}")
    if os.environ.get("LAMFS_CRASH_STATS"):
        with open(os.environ["LAMFS_CRASH_STATS"], "a") as f:
            f.write(json.dumps(dict(STATS, root=m.root_kind)) + "\n")


def test_rename_over_that_never_commits_leaves_storage_as_the_catalog_says(tmp_path, monkeypatch):
    """Regression (found by the long crash run): a rename over an existing file copied the source's
    bytes over the target's object before its commit; killed in between, the target's row described
    bytes that were gone, and fsck could only roll forward — leaving both names. Now nothing in storage
    changes before the commit. The kill is simulated by an exception at the commit."""
    from lamfs.catalog import open_catalog
    from lamfs.hashing import hash_bytes
    from lamfs.service import ArtifactService
    from lamfs.storage import open_storage

    from .conftest import DATA

    storage = open_storage(tmp_path / "root")
    catalog = open_catalog(f"sqlite:///{tmp_path / 'cat.db'}")
    service = ArtifactService(catalog, storage, tmp_path / "cache")
    a = service.save(service.draft(DATA / "iris.csv", key="a.csv"))
    b = service.save(service.draft(DATA / "new_iris.csv", key="b.csv"))

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("SIGKILL")

    monkeypatch.setattr(catalog, "update_artifact", killed)
    with pytest.raises(KeyboardInterrupt):
        service.rename_over(a, b)
    monkeypatch.undo()
    rows = list(catalog.all_artifacts())
    assert [(r.key, r.hash) for r in rows] == [("a.csv", a.hash), ("b.csv", b.hash)]
    for r in rows:  # every row's object holds the row's bytes
        assert hash_bytes(storage.local_path(r.storage_key).read_bytes()).hash == r.hash, r.key
    assert catalog.intents() == []
    # and the rename itself, done: b has a's bytes under b's uid and key, a is gone, one object left
    done = service.rename_over(a, b)
    assert (done.uid, done.key, done.hash, done.storage_key) == (b.uid, "b.csv", a.hash, b.storage_key)
    assert [r.key for r in catalog.all_artifacts()] == ["b.csv"]
    assert sorted(i.key for i in storage.list("")) == [b.storage_key]


# -- kills at the injected points between the steps of each operation ----------------------------------

# what the operation that passes each point is, and what a reader must find after the kill and healing
POINT_CASES = {
    "create.uploaded": ("create", None),             # never committed: the file does not exist
    "replace.uploaded": ("replace", "old"),          # never committed: the old bytes stand
    "replace.committed": ("replace", "new"),         # committed: the new bytes, settled by healing
    "settle.copied": ("replace", "new"),
    "settle.committed": ("replace", "new"),
    "rename_over.committed": ("rename_over", "new"),
}


def test_every_crash_point_has_a_case():
    from lamfs.service.crashpoints import CRASH_POINTS

    assert set(POINT_CASES) == set(CRASH_POINTS)


def _kill_at(m, point: str, action) -> None:
    """Remount with the daemon set to SIGKILL itself at `point`, run `action` (which must fail: the
    mount dies under it), then clear the dead mount."""
    m.restart_with_env(LAMFS_CRASH_AT=point)
    with pytest.raises(OSError):
        action()
    subprocess.run(["fusermount3", "-uz", str(m.path)], check=True)
    for _ in range(100):
        if not is_mounted(m.path):
            break
        time.sleep(0.05)


def test_kill_at_every_step_is_healed(crash_mount):
    """SIGKILL at each injected point between the steps of create, replace, settle and rename-over;
    then a remount and the API's connect, WITHOUT fsck: the file holds exactly the old bytes or the
    new ones as the point dictates, nothing is pending, no staged object is left, and an upload
    killed before its commit is deleted by healing once it is old enough."""
    from lamfs.service.artifacts import STAGED_PREFIX
    from lamfs.service.healing import heal

    m = crash_mount
    (m.path / "w").mkdir()
    old = b"the old bytes\n" * 2000
    for point, (op, expect) in POINT_CASES.items():
        name = point.replace(".", "-")
        target, source = m.path / "w" / f"{name}.bin", m.path / "w" / f"{name}.src"
        new = f"the new bytes of {point}\n".encode() * 3000
        if op != "create":
            target.write_bytes(old)
        if op == "rename_over":
            source.write_bytes(new)

        def action():
            if op == "rename_over":
                os.rename(source, target)
            else:
                with open(target, "wb") as f:
                    f.write(new)

        _kill_at(m, point, action)
        m.start()
        lamfs.setup.connect(m.instance)  # heals (and so does the mount, in the background)
        got = target.read_bytes() if target.exists() else None
        want = {"old": old, "new": new, None: None}[expect]
        assert got == want, f"{point}: read {None if got is None else got[:40]!r}, want {expect}"
        if op == "rename_over":
            assert not source.exists(), point
        service = lamfs.settings.service
        left = [i for i in service.catalog.intents() if i.artifact_id is not None]
        assert left == [], f"{point}: intents left after healing: {left}"
        staged = [i.key for i in service.storage.list(STAGED_PREFIX)]
        assert staged == [], f"{point}: staged objects left after healing: {staged}"
        rec = lamfs.Artifact.get(key=f"w/{name}.bin") if expect else None
        if rec is not None:
            assert not rec._record.storage_key.startswith(STAGED_PREFIX), point
    # the upload of the killed create is too young for the mount's healing; once old enough it goes
    creates = [i for i in lamfs.settings.service.catalog.intents() if i.artifact_id is None]
    assert len(creates) == 1
    orphan = creates[0].storage_key
    assert lamfs.settings.service.storage.exists(orphan)
    report = heal(lamfs.settings.service, abandoned_after_s=0)
    assert report.uploads_deleted == 1 and not report.errors
    assert not lamfs.settings.service.storage.exists(orphan)
    assert lamfs.settings.service.catalog.intents() == []
    m.stop()
    final = fsck(m, "--hashes")
    assert [p for p in final["problems"] if p["kind"] not in ("temp_file", "incomplete_upload")] == [], final


def test_close_that_returned_eio_is_never_committed(crash_mount):
    """A commit that fails after a finished upload (injected): close(2) returns an error, the old
    bytes stay readable, nothing is committed later (not by a retry, not by healing), and the staged
    upload is gone."""
    from lamfs.service.artifacts import STAGED_PREFIX

    m = crash_mount
    target = m.path / "f.bin"
    target.write_bytes(b"committed\n")
    m.restart_with_env(LAMFS_FAIL_AT="replace.commit")
    with pytest.raises(OSError) as err:
        with open(target, "wb") as f:
            f.write(b"never committed\n")
    assert err.value.errno == errno.EIO
    assert target.read_bytes() == b"committed\n"
    m.restart()
    lamfs.setup.connect(m.instance)
    assert target.read_bytes() == b"committed\n"
    assert lamfs.settings.service.catalog.intents() == []
    assert list(lamfs.settings.service.storage.list(STAGED_PREFIX)) == []
