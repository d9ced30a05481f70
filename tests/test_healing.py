"""Healing and the staged replace, driven through the service API (no mount): folder replaces are
atomic (a failure half-way leaves the old folder whole), a settle that fails leaves the row on an
object with exactly its bytes until healing finishes it, and healing deletes only staged objects no
row references. The mount-level crash tests are in test_crash.py."""
from __future__ import annotations

import pytest

from lamfs.catalog import open_catalog
from lamfs.errors import StorageUnavailable
from lamfs.hashing import hash_bytes
from lamfs.service import ArtifactService
from lamfs.service.artifacts import STAGED_PREFIX, staged_key
from lamfs.service.fsck import fsck
from lamfs.service.healing import heal
from lamfs.storage import open_storage
from lamfs.storage.faulty import FaultyStorage


@pytest.fixture
def svc(tmp_path):
    storage = FaultyStorage(open_storage(tmp_path / "root"))
    catalog = open_catalog(f"sqlite:///{tmp_path / 'cat.db'}")
    service = ArtifactService(catalog, storage, tmp_path / "cache")
    yield service
    catalog.close()


def make_folder(path, files: dict[str, bytes]):
    path.mkdir(parents=True, exist_ok=True)
    for old in path.iterdir():
        old.unlink()
    for name, data in files.items():
        (path / name).write_bytes(data)
    return path


def folder_in_storage(svc, rec) -> dict[str, bytes]:
    """The folder's files as its row lists them, read from the object the row names."""
    rec = svc.refresh(rec)
    return {f.path: svc.storage.get_range(f"{rec.storage_key}/{f.path}", 0, f.size) if f.size else b""
            for f in svc.catalog.folder_files(rec.id)}


def staged(svc) -> list[str]:
    return [i.key for i in svc.storage.list(STAGED_PREFIX)]


OLD = {"a": b"a" * 10, "b": b"b" * 20}
NEW = {"a": b"A" * 11, "c": b"c" * 30, "d": b"d" * 5}


def test_folder_replace_failing_half_way_leaves_the_old_folder_whole(svc, tmp_path):
    rec = svc.save(svc.draft(make_folder(tmp_path / "d.zarr", OLD), key="d.zarr"))
    svc.storage.fail("put_file", key_contains="/c")  # the new version's upload dies after some files
    with pytest.raises(StorageUnavailable):
        svc.replace(svc.draft_replace(rec, make_folder(tmp_path / "d.zarr", NEW)))
    svc.storage.heal()
    assert folder_in_storage(svc, rec) == OLD
    assert svc.refresh(rec).hash == rec.hash and svc.catalog.intents() == []
    assert staged(svc) == []  # the partial upload was removed
    assert fsck(svc, hashes=True, min_age_s=0).ok


def test_folder_replace_whose_settle_fails_is_whole_and_healed(svc, tmp_path):
    rec = svc.save(svc.draft(make_folder(tmp_path / "d.zarr", OLD), key="d.zarr"))
    home = rec.storage_key
    svc.storage.fail("copy", key_contains="/d")  # the settle's copy home dies half-way
    new = svc.replace(svc.draft_replace(rec, make_folder(tmp_path / "d.zarr", NEW)))  # committed: no error
    svc.storage.heal()
    assert new.storage_key.startswith(STAGED_PREFIX)  # the row names the staged copy until healed
    assert folder_in_storage(svc, rec) == NEW  # and every read gets the new folder, whole
    assert [i.storage_key for i in svc.catalog.intents()] == [home]
    report = heal(svc)
    assert (report.settled, report.errors) == (1, [])
    healed = svc.refresh(rec)
    assert healed.storage_key == home and svc.catalog.intents() == [] and staged(svc) == []
    assert folder_in_storage(svc, rec) == NEW
    # the old version's file that the new one does not have is gone from the home prefix
    assert sorted(i.key[len(home) + 1:] for i in svc.storage.list(home + "/")) == ["a", "c", "d"]
    assert fsck(svc, hashes=True, min_age_s=0).ok


def test_file_replace_whose_settle_fails_reads_new_bytes_and_is_healed(svc, tmp_path):
    src = tmp_path / "x.csv"
    src.write_bytes(b"old\n")
    rec = svc.save(svc.draft(src, key="x.csv"))
    src.write_bytes(b"new, longer\n")
    svc.storage.fail("copy")
    new = svc.replace(svc.draft_replace(rec, src))
    svc.storage.heal()
    assert new.hash == hash_bytes(b"new, longer\n").hash
    assert svc.storage.get_range(new.storage_key, 0, new.size) == b"new, longer\n"
    # the artifact's home still holds the old bytes, which no row names any more
    assert svc.storage.get_range(rec.storage_key, 0, 4) == b"old\n"
    # a later replace settles the pending one first, then goes through
    src.write_bytes(b"newest\n")
    newest = svc.replace(svc.draft_replace(svc.refresh(rec), src))
    assert newest.storage_key == rec.storage_key and svc.catalog.intents() == [] and staged(svc) == []
    assert svc.storage.get_range(rec.storage_key, 0, newest.size) == b"newest\n"
    assert heal(svc).changed is False


def test_healing_deletes_only_staged_objects_no_row_names(svc, tmp_path):
    src = tmp_path / "x.csv"
    src.write_bytes(b"one\n")
    rec = svc.save(svc.draft(src, key="x.csv"))
    abandoned = staged_key(rec.uid, ".csv")  # a replace killed between its upload and its commit
    svc.storage.put_bytes(b"never committed\n", abandoned)
    orphan_of_gone = staged_key("ZZZZZZZZZZZZZZZZ0000", ".csv")  # of an artifact that no longer exists
    svc.storage.put_bytes(b"x", orphan_of_gone)
    src.write_bytes(b"two\n")
    svc.storage.fail("copy")
    pending = svc.replace(svc.draft_replace(rec, src))  # a staged object a row does name
    svc.storage.heal()
    report = heal(svc)
    assert (report.settled, report.staged_deleted, report.errors) == (1, 2, [])
    assert staged(svc) == []
    now = svc.refresh(rec)
    assert now.storage_key == rec.storage_key and svc.storage.get_range(now.storage_key, 0, 4) == b"two\n"
    assert pending.hash == now.hash
    assert fsck(svc, hashes=True, min_age_s=0).ok
