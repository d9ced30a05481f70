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
