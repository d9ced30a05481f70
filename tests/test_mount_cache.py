"""The mount's read cache against the S3 server: ranged first bytes, reuse after a restart, no stale
bytes after a replace (requests and bytes counted at the server)."""
from __future__ import annotations

import os

import pytest

import lamfs

pytestmark = pytest.mark.mount
MiB = 1 << 20


@pytest.fixture
def s3_mount(s3_bucket, mount_factory):
    m = mount_factory(f"{s3_bucket}/cache")
    lamfs.setup.connect(m.instance)
    return m


def test_first_bytes_of_large_object_fetch_few_blocks(s3_mount, s3_server, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(MiB) * 96)  # 96 MiB
    lamfs.Artifact(big, key="big.bin").save()
    s3_server.reset_stats()
    s3_mount.run("sleep 1.2")
    head = s3_mount.run("head -c 4096 big.bin | wc -c").stdout.strip()
    assert head == "4096"
    stats = s3_server.stats()
    assert stats["bytes_out"] <= 3 * 8 * MiB, stats  # a few 8 MiB blocks, not 96 MiB


def test_restart_reuses_cache_and_replace_is_never_stale(s3_mount, s3_server, tmp_path):
    data = os.urandom(20 * MiB)
    (tmp_path / "f.bin").write_bytes(data)
    lamfs.Artifact(tmp_path / "f.bin", key="f.bin").save()
    s3_mount.run("sleep 1.2")
    s3_server.reset_stats()
    assert (s3_mount.path / "f.bin").read_bytes() == data
    assert s3_server.stats()["gets"] > 0  # the first read did go to the server
    s3_mount.restart()
    s3_server.reset_stats()
    assert (s3_mount.path / "f.bin").read_bytes() == data
    stats = s3_server.stats()
    assert stats["gets"] == 0, stats  # served from the persisted cache
    new = os.urandom(20 * MiB)
    (tmp_path / "g.bin").write_bytes(new)
    a = lamfs.Artifact.get(key="f.bin")
    a.replace(tmp_path / "g.bin")
    a.save()
    s3_mount.run("sleep 1.2")
    assert (s3_mount.path / "f.bin").read_bytes() == new


def test_cache_stats_and_clear_cli(s3_mount, tmp_path):
    import json

    from .conftest_mount import lamfs_cli

    data = os.urandom(3 * MiB)
    (tmp_path / "s.bin").write_bytes(data)
    lamfs.Artifact(tmp_path / "s.bin", key="s.bin").save()
    s3_mount.run("sleep 1.2")
    assert (s3_mount.path / "s.bin").read_bytes() == data
    s3_mount.run("sleep 2.5")  # the mount publishes its counters every 2 s
    stats = json.loads(lamfs_cli("cache", "stats", "--json", "--instance", s3_mount.instance, env=s3_mount.env).stdout)
    assert stats["used_bytes"] >= len(data) and stats["bytes_fetched"] >= len(data) and stats["misses"] >= 1
    assert stats["max_bytes"] == 10 << 30
    text = lamfs_cli("cache", "stats", "--instance", s3_mount.instance, env=s3_mount.env).stdout
    assert "used_bytes" in text and "live, mount pid" in text
    lamfs_cli("cache", "clear", "--instance", s3_mount.instance, env=s3_mount.env)
    s3_mount.run("sleep 2.5")
    after = json.loads(lamfs_cli("cache", "stats", "--json", "--instance", s3_mount.instance, env=s3_mount.env).stdout)
    assert after["used_bytes"] == 0
    assert (s3_mount.path / "s.bin").read_bytes() == data  # refetched


def _dir_bytes(path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_size
            except FileNotFoundError:
                pass
    return total


def test_bound_holds_under_concurrent_readers_of_more_than_the_bound(s3_bucket, mount_factory, tmp_path):
    """8 readers of objects that together exceed a 32 MiB cache: every byte read is right and the
    block files on disk never exceed the bound plus one 8 MiB block per reader; an object larger
    than the whole bound is still readable."""
    import threading

    m = mount_factory(f"{s3_bucket}/bound")
    m.restart("--cache-size", "32M")
    lamfs.setup.connect(m.instance)
    payloads = {}
    for i in range(8):
        data = os.urandom(MiB) * (6 + i)  # 6..13 MiB each, 76 MiB in all
        (tmp_path / f"o{i}.bin").write_bytes(data)
        lamfs.Artifact(tmp_path / f"o{i}.bin", key=f"o{i}.bin").save()
        payloads[f"o{i}.bin"] = data
    big = os.urandom(MiB) * 40  # larger than the whole bound
    (tmp_path / "big.bin").write_bytes(big)
    lamfs.Artifact(tmp_path / "big.bin", key="big.bin").save()
    m.run("sleep 1.2")
    blocks_dir = lamfs.settings.cache_dir / "blocks"
    peak, stop = [0], threading.Event()

    def monitor():
        while not stop.is_set():
            peak[0] = max(peak[0], _dir_bytes(blocks_dir))
            time.sleep(0.01)

    errors = []

    def reader(name):
        try:
            for _ in range(2):
                if (m.path / name).read_bytes() != payloads[name]:
                    errors.append(name)
        except Exception as exc:  # noqa: BLE001
            errors.append(repr(exc))

    import time

    mon = threading.Thread(target=monitor)
    mon.start()
    threads = [threading.Thread(target=reader, args=(n,)) for n in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert (m.path / "big.bin").read_bytes() == big
    stop.set()
    mon.join()
    assert errors == []
    assert 0 < peak[0] <= 32 * MiB + 8 * 8 * MiB + 64 * 1024, peak[0]
