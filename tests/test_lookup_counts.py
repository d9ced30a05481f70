"""FUSE lookup counts (regression for the test_concurrency[local] ENOENT flake seen in CI).

The kernel counts every entry it is handed (lookup, create, mkdir, each readdirplus entry) and later
sends FORGET(inode, n) for n of them. It also sends FORGET(inode, 1) for a dentry-revalidation reply it
discards, while it may hold the same number from another, concurrent lookup. lamfs used to drop an
alias inode at the first FORGET: a reader holding that number then got ENOENT from open.

These tests drive LamfsOperations' handlers directly on a trio loop, with a real catalog and local
storage, in the order the kernel may send them; no kernel is involved, so the one kernel notification
the handlers send (invalidate_inode after a first open) is replaced by a no-op.
"""
from __future__ import annotations

import errno
import os

import pyfuse3
import pytest
import trio

from lamfs.catalog import open_catalog
from lamfs.fuse.ops import LamfsOperations, art_ino
from lamfs.service import ArtifactService
from lamfs.storage import open_storage


@pytest.fixture
def ops(tmp_path, monkeypatch):
    monkeypatch.setattr(pyfuse3, "invalidate_inode", lambda *a, **k: None)
    storage = open_storage(tmp_path / "root")
    catalog = open_catalog(f"sqlite:///{tmp_path / 'cat.db'}")
    service = ArtifactService(catalog, storage, tmp_path / "cache")
    return LamfsOperations(service, staging_dir=tmp_path / "staging")


def _save(ops, tmp_path, key: str, data: bytes):
    src = tmp_path / f"src-{len(data)}"
    src.write_bytes(data)
    return ops.service.save(ops.service.draft(src, key=key))


async def _read_all(ops, ino: int) -> bytes:
    fi = await ops.open(ino, os.O_RDONLY, None)
    try:
        return await ops.read(fi.fh, 0, 1 << 20)
    finally:
        await ops.release(fi.fh)


def test_alias_survives_a_partial_forget(ops, tmp_path):
    """Two lookups hand out the same alias; FORGET(alias, 1) must leave it usable; the last FORGET frees it."""
    rec = _save(ops, tmp_path, "k.bin", b"version one")

    async def scenario():
        attr = await ops.lookup(pyfuse3.ROOT_INODE, b"k.bin", None)
        assert attr.st_ino == art_ino(rec.id)
        old = await ops.open(attr.st_ino, os.O_RDONLY, None)  # a reader keeps version one open
        src = tmp_path / "v2.bin"
        src.write_bytes(b"version two, longer")
        ops.service.replace(ops.service.draft_replace(rec, src))
        # the canonical inode is now a ghost (its reader holds version one): lookups give an alias
        first = await ops.lookup(pyfuse3.ROOT_INODE, b"k.bin", None)
        second = await ops.lookup(pyfuse3.ROOT_INODE, b"k.bin", None)
        alias = first.st_ino
        assert alias != art_ino(rec.id) and second.st_ino == alias
        assert first.st_size == len(b"version two, longer")
        await ops.forget([(alias, 1)])  # one of the two lookups dropped (a discarded revalidation)
        assert await _read_all(ops, alias) == b"version two, longer"
        assert await ops.read(old.fh, 0, 100) == b"version one"
        await ops.release(old.fh)
        await ops.forget([(alias, 1)])  # the kernel forgot the number entirely: lamfs may too
        with pytest.raises(pyfuse3.FUSEError) as exc:
            await ops.open(alias, os.O_RDONLY, None)
        assert exc.value.errno == errno.ESTALE  # an inode lamfs no longer knows: the kernel looks the name up again
        assert alias not in ops.nlookup and alias not in ops.alias

    trio.run(scenario)
