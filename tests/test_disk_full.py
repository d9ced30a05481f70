"""A full local disk under a mount (issue 13, item 6): the instance's home (catalog, cache, staging) on a
40 MB tmpfs made by the test, storage elsewhere. A write larger than the free space gets ENOSPC, its
partial staging copy is deleted when the file is released, and the mount goes on working without a
remount: small files are written, read, renamed, deleted and committed; `lamfs status` shows the
margin. Against the S3 server, cached blocks are evicted before a write is refused."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

import lamfs
from lamfs.hashing import hash_bytes
from lamfs import space
from lamfs.space import DiskSpace, SpaceGuard, default_margin

from .conftest_mount import lamfs_cli

MiB = 1 << 20
TMPFS_BYTES = 40 * MiB
MARGIN = 4 * MiB  # default_margin of a 40 MiB filesystem: 5% clamped up to 64 MiB, capped at 10%


def _mounted(path: Path) -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == str(path) for line in f)


@pytest.fixture
def lamfs_home(tmp_path, monkeypatch):
    """Overrides conftest's: LAMFS_HOME on a 40 MB tmpfs of its own, unmounted at the end whatever
    happened (mount_factory, which depends on this, has unmounted lamfs before)."""
    home = tmp_path / "lamfs-home"
    home.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(home)], check=True)
    monkeypatch.setenv("LAMFS_HOME", str(home))
    lamfs.settings._disconnect()
    lamfs.settings.creation.artifact_use_virtual_keys = True
    try:
        yield home
    finally:
        lamfs.settings._disconnect()  # its SQLite connection lives on the tmpfs
        lamfs.settings.creation.artifact_use_virtual_keys = True
        if subprocess.run(["umount", str(home)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(home)], check=False)
        assert not _mounted(home)


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _wait(cond, timeout: float, what: str, explain=lambda: ""):
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} {explain()}")
        time.sleep(0.05)


def _holders(home: Path) -> str:
    """What holds space on the tmpfs: its files, and the open descriptors of files under it."""
    lines = [f"free {_free(home)}"]
    lines += [f"{p} {p.stat().st_size}" for p in home.rglob("*") if p.is_file()]
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(str(home)):
            lines.append(f"open: {fd} -> {target}")
    return "\n".join(lines)


def _staged(home: Path, instance: str) -> list[Path]:
    staging = home / "cache" / instance / "staging"
    return sorted(staging.iterdir()) if staging.exists() else []


def _read_through_mount(path: Path) -> bytes:
    """Read a file from the daemon, not from the kernel's page cache (which the write or an earlier
    read left filled)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


@pytest.fixture
def full_disk_mount(root_kind, mount_factory, lamfs_home, tmp_path, request):
    assert os.statvfs(lamfs_home).f_blocks * os.statvfs(lamfs_home).f_frsize == TMPFS_BYTES
    if root_kind == "s3":
        storage = request.getfixturevalue("s3_bucket") + "/df"
    else:
        storage = str(tmp_path / "storage")  # not on the tmpfs
    m = mount_factory(storage, name="df")
    lamfs.setup.connect(m.instance)
    return m


@pytest.mark.mount
@pytest.mark.parametrize("root_kind", ["local", "s3"])
def test_full_disk_is_enospc_and_the_mount_recovers(full_disk_mount, lamfs_home, tmp_path):
    m, home = full_disk_mount, lamfs_home
    m.run("printf 'old bytes\\n' > f.txt")
    assert lamfs.Artifact.get(key="f.txt").size == 10
    free_before = _free(home)
    assert free_before > 30 * MiB

    # 1. a shell overwrites an existing file with more than the disk holds
    out = m.run("head -c 80000000 /dev/urandom > f.txt", check=False)
    assert out.returncode != 0 and "No space left on device" in out.stderr, out
    # the kernel's RELEASE comes after close(2) returned: wait for the partial copy to go
    _wait(lambda: not _staged(home, m.instance), 20, "the partial staging copy to be deleted")
    _wait(lambda: _free(home) > free_before - 2 * MiB, 10, "the space to come back", lambda: _holders(home))
    # the partial bytes were not committed: the file keeps its last complete version, in the mount and
    # the catalog (the empty one: the shell's O_TRUNC reaches the mount as a truncate, committed at once)
    assert (m.path / "f.txt").read_bytes() in (b"", b"old bytes\n")
    assert lamfs.Artifact.get(key="f.txt").size in (0, 10)

    # 2. a program writing a new file: ENOSPC from write (or at the latest from close)
    chunk = os.urandom(MiB)
    got = None
    f = open(m.path / "new.bin", "wb", buffering=0)
    try:
        for _ in range(80):
            f.write(chunk)
    except OSError as exc:
        got = exc.errno
    finally:
        try:
            f.close()
        except OSError as exc:
            got = got or exc.errno
            assert exc.errno in (errno.ENOSPC, errno.EIO)
    assert got == errno.ENOSPC
    _wait(lambda: not _staged(home, m.instance), 20, "the second partial copy to be deleted")
    _wait(lambda: _free(home) > free_before - 2 * MiB, 10, "the space to come back", lambda: _holders(home))
    assert not (m.path / "new.bin").exists()
    assert lamfs.Artifact.filter(key="new.bin") == []

    # 3. without a remount: small files are written, read back, renamed and deleted; the catalog commits
    for i in range(10):
        (m.path / f"small{i}.txt").write_text(f"small file {i}\n")
    for i in range(10):
        assert (m.path / f"small{i}.txt").read_text() == f"small file {i}\n"
    os.rename(m.path / "small0.txt", m.path / "renamed.txt")
    os.unlink(m.path / "small1.txt")
    m.run("printf 'new bytes\\n' > f.txt")  # the file that failed can be replaced now
    assert (m.path / "f.txt").read_bytes() == b"new bytes\n"
    keys = sorted(a.key for a in lamfs.Artifact.filter())
    assert keys == sorted(["f.txt", "renamed.txt"] + [f"small{i}.txt" for i in range(2, 10)])
    listed = lamfs_cli("ls", "--instance", m.instance, env=m.env).stdout
    assert "renamed.txt" in listed and "small1.txt" not in listed and "small9.txt" in listed
    assert lamfs.Artifact.get(key="renamed.txt").cache().read_text() == "small file 0\n"

    # 4. `lamfs status` shows what the margin holds back (the daemon publishes every 2 s)
    def status_line():
        text = lamfs_cli("status", "--instance", m.instance, env=m.env).stdout
        return next((ln for ln in text.splitlines() if "disk margin" in ln and "write(s) refused" in ln
                     and "0 write(s)" not in ln), None)

    line = _wait(status_line, 10, "`lamfs status` to show the margin and the refusals")
    assert f"4.0 MiB kept free on {home}" in line, line

    def published():  # the two refusals above (the file may have been published between them)
        disk = json.loads(lamfs_cli("status", "--json", "--instance", m.instance, env=m.env).stdout)
        disk = disk["mounts"][0]["disk_space"]
        return disk if disk["refusals"] >= 2 else None

    space = _wait(published, 10, "the published refusals")
    assert space["margin_bytes"] == MARGIN and space["refusals"] == 2, space
    assert [d["mount"] for d in space["disks"]] == [str(home)]  # catalog, cache and staging: one disk


@pytest.mark.mount
@pytest.mark.parametrize("root_kind", ["s3"])
def test_cached_blocks_make_room_for_writes(full_disk_mount, lamfs_home):
    """The block cache gives way to writes: a write that fits only once cached blocks are gone
    succeeds, and the blocks are evicted."""
    m, home = full_disk_mount, lamfs_home
    first = os.urandom(16 * MiB)
    (m.path / "first.bin").write_bytes(first)
    _wait(lambda: not _staged(home, m.instance), 20, "the committed file's staging copy to go")
    assert (m.path / "first.bin").read_bytes() == first  # through the block cache, onto the tmpfs
    blocks = home / "cache" / "df" / "blocks"

    def cached_bytes():
        return sum(p.stat().st_size for p in blocks.rglob("*") if p.is_file() and not p.name.startswith("."))

    # a reader returns as soon as its bytes arrived; the block is stored by a filler thread after
    cached = _wait(lambda: cached_bytes() >= 16 * MiB and cached_bytes(), 10, "the blocks to be stored")
    # more than what is free minus the margin (~20 MiB), less than that plus the cached blocks; its last
    # block (5 MiB) is what takes the disk into its margin below, unless the cache evicts for it
    size = 21 * MiB
    assert _free(home) - MARGIN < size < _free(home) - MARGIN + cached
    second = os.urandom(size)
    (m.path / "second.bin").write_bytes(second)
    assert cached_bytes() < cached
    assert lamfs.Artifact.get(key="second.bin").hash == hash_bytes(second).hash
    # reading both back would take more than the disk minus its margin: the cache keeps within it
    # (older blocks go; a block that does not fit is served without being stored)
    assert _read_through_mount(m.path / "first.bin") == first
    assert _read_through_mount(m.path / "second.bin") == second
    read_ns = time.time_ns()

    def settled():  # stats published after the reads, with no block fetch in progress
        stats = json.loads((home / "cache" / "df" / "block-stats.json").read_text())
        return stats["updated_ns"] > read_ns and stats["reserved_bytes"] == 0

    _wait(settled, 10, "the block cache to settle")
    assert _free(home) >= MARGIN - 512 * 1024, _holders(home)
    stats = _wait(lambda: (s := json.loads(lamfs_cli("cache", "stats", "--json", "--instance", m.instance,
                                                     env=m.env).stdout))["evictions"] > 0 and s,
                  10, "the eviction counter")
    assert stats["evictions"] > 0


def test_margin_of_a_filesystem():
    assert default_margin(TMPFS_BYTES) == MARGIN  # never more than 10% of a small disk
    assert default_margin(1 << 30) == 64 * MiB  # 5% is 51 MiB: at least 64 MiB
    assert default_margin(100 << 30) == 4 << 30  # 5% is 5 GiB: at most 4 GiB
    assert default_margin(20 << 30) == (20 << 30) // 20


def test_guard_counts_bytes_between_checks(tmp_path, monkeypatch):
    free = [50 * MiB]
    checks = []

    def statvfs(where, margin):
        checks.append(where)
        return DiskSpace(where, 100 * MiB, free[0], margin)

    monkeypatch.setattr(space, "_statvfs", statvfs)
    guard = SpaceGuard([tmp_path], margin=40 * MiB, check_every_s=60)
    assert guard.reserve(6 * MiB) and len(checks) == 1
    assert guard.reserve(3 * MiB) and len(checks) == 1  # within what the last check allowed: no statvfs
    guard.written(9 * MiB)
    free[0] = 41 * MiB  # the 9 MiB were written
    # 11 MiB in all: more than the last check allowed, so the disk is checked again (space may have
    # been freed meanwhile): 1 MiB left before the margin
    assert not guard.reserve(2 * MiB) and len(checks) == 2
    assert guard.shortfall(3 * MiB) == 2 * MiB
    free[0] = 60 * MiB  # space came back
    assert guard.reserve(15 * MiB) and len(checks) == 4
    # 15 MiB reserved and not written yet (a statvfs does not see them): 5 MiB left, not 20
    assert guard.shortfall(6 * MiB) == 1 * MiB
    guard.written(15 * MiB)
    free[0] = 45 * MiB  # the 15 MiB are on disk now
    assert guard.shortfall(6 * MiB) == 1 * MiB


def test_disk_margin_flag_is_parsed(lamfs_home, tmp_path):
    (tmp_path / "mnt").mkdir()
    env = dict(os.environ, LAMFS_HOME=str(lamfs_home))
    lamfs_cli("init", "--storage", str(tmp_path / "storage"), "--name", "flag", env=env)
    out = lamfs_cli("mount", str(tmp_path / "mnt"), "--instance", "flag", "--disk-margin", "lots", env=env,
                    check=False)
    assert out.returncode == 2 and "invalid size 'lots'" in out.stderr
