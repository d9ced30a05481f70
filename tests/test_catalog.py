"""Catalog contract tests: the same tests on SQLite and on a real PostgreSQL server (tests/conftest_pg.py).

What must hold on both: migrations (idempotent, concurrent), artifact rows (insert, update, delete,
lookups), the tree (implicit and explicit directories, listings, moving a directory with many keys in
one transaction, pruning), exact prefix filters (no LIKE wildcards, no case folding, no collation
surprises), the partial unique index on live paths, versions, intents, folder manifests, timestamps
in UTC, transient errors retried (SQLite locks; PostgreSQL serialization failures, deadlocks, a
restarted server), connections not leaked, credentials never shown, writer locks across processes.
"""
from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import peewee as pw
import pytest

from lamfs.catalog import MAIN_BRANCH, ROOT_DIR_ID, TRASH_BRANCH, open_catalog, redact_url
from lamfs.catalog.catalog import prefix_upper_bound
from lamfs.catalog.migrations import MIGRATIONS
from lamfs.errors import AlreadyExists, CatalogBusy, InvalidKey, IsADirectory, NotADirectory, NotEmpty, NotFound
from tests.conftest_pg import PG_PASSWORD

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def catalog_url(backend, tmp_path, request) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def cat(catalog_url):
    c = open_catalog(catalog_url)
    yield c
    c.close()


_uids = iter(range(10**9))


def new_uid(stem: str | None = None, version: str = "0000") -> str:
    stem = stem or f"{next(_uids):016d}"
    return stem + version


def add(cat, key: str | None, *, uid: str | None = None, storage_key: str | None = None, **fields):
    """Insert one artifact in its own transaction (the way the service does)."""
    uid = uid or new_uid()
    root = cat.storage_root("s3://bucket/root")
    values = dict(uid=uid, key=key, size=fields.pop("size", 3), hash=fields.pop("hash", f"h-{uid}"),
                  hash_type="md5", storage_id=root.id, storage_key=storage_key or f".lamindb/{uid}.txt",
                  suffix=".txt")
    values.update(fields)
    return cat.retrying(cat.insert_artifact, **values)


def listing(cat, path: str = "") -> tuple[list[str], list[str]]:
    d = cat.dir_by_path(path)
    dirs, arts = cat.list_dir(d.id)
    return [x.name for x in dirs], [a.name for a in arts]


# -- migrations ------------------------------------------------------------------------------------------


def test_migrations_are_recorded_and_idempotent(catalog_url, cat):
    assert cat.migrate() == []  # open_catalog already applied everything
    again = open_catalog(catalog_url)
    try:
        assert again.migrate() == []
        applied = [(m.id, m.name) for m in again.m.Migration.select().order_by(again.m.Migration.id)]
        assert applied == [(n, name) for n, name, _ in MIGRATIONS]
        root = again.dir_by_id(ROOT_DIR_ID)
        assert (root.parent_id, root.name, root.path, root.explicit) == (None, "", "", True)
        # the root row was inserted with an explicit id: the next directory must still get a fresh one
        assert again.retrying(again.ensure_dir, "first").id == ROOT_DIR_ID + 1
    finally:
        again.close()


def test_fresh_catalog_migrates_once_when_opened_concurrently(backend, tmp_path, request):
    url = f"sqlite:///{tmp_path / 'c.db'}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    errors, catalogs = [], []
    barrier = threading.Barrier(6)

    def opener():
        try:
            barrier.wait()
            catalogs.append(open_catalog(url))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=opener) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    c = catalogs[0]
    assert [m.id for m in c.m.Migration.select()] == [n for n, _, _ in MIGRATIONS]
    assert len(list(c.m.Directory.select())) == 1  # one root row, not one per opener
    for c in catalogs:
        c.close()


# -- artifact rows -----------------------------------------------------------------------------------------


def test_insert_lookup_update_delete(cat):
    rec = add(cat, "data/iris.csv", description="first")
    assert cat.artifact_by_id(rec.id) == rec
    assert cat.artifact_by_uid(rec.uid) == rec
    assert cat.artifact_by_key("data/iris.csv") == rec
    assert cat.artifact_by_storage_key(rec.storage_id, rec.storage_key) == rec
    assert cat.artifacts_by_hash(rec.hash) == [rec]
    assert isinstance(rec.is_latest, bool) and rec.is_latest is True
    assert isinstance(rec.key_is_virtual, bool) and rec.key_is_virtual is True
    assert rec.branch == MAIN_BRANCH and rec.mode == 0o100644

    updated = cat.retrying(cat.update_artifact, rec.id, size=10, hash="new-hash", description=None)
    assert (updated.size, updated.hash, updated.description) == (10, "new-hash", None)
    assert updated.updated_at >= rec.updated_at
    assert cat.artifacts_by_hash(rec.hash) == []

    cat.retrying(cat.delete_artifact, rec.id)
    with pytest.raises(NotFound):
        cat.artifact_by_id(rec.id)
    assert cat.artifact_by_key("data/iris.csv") is None
    assert cat.dir_by_path("data") is None  # implicit directory pruned with its last entry


def test_big_integers_roundtrip(cat):
    big = 2**62 + 12345
    rec = add(cat, "big.bin", size=big, mtime_ns=big, n_observations=big)
    again = cat.artifact_by_id(rec.id)
    assert (again.size, again.mtime_ns, again.n_observations) == (big, big, big)


def test_timestamps_are_utc_aware_and_exact(cat):
    when = datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    rec = add(cat, "t.txt", created_at=when, updated_at=when)
    again = cat.artifact_by_id(rec.id)
    assert again.created_at == when  # the same instant ...
    assert again.created_at.utcoffset() == timedelta(0)  # ... in UTC, whatever the server's time zone
    intent_id = cat.retrying(cat.add_intent, artifact_id=rec.id, storage_id=rec.storage_id, storage_key="k",
                             new_hash="h", new_size=1)
    intent = next(i for i in cat.intents() if i.id == intent_id)
    assert intent.created_at.utcoffset() == timedelta(0)
    assert abs((datetime.now(timezone.utc) - intent.created_at).total_seconds()) < 60


def test_pg_timestamps_with_a_non_utc_session_time_zone(pg_url):
    url = pg_url + "?options=-c%20TimeZone%3DAmerica/Los_Angeles"
    c = open_catalog(url)
    try:
        assert c.db.execute_sql("SHOW TimeZone").fetchone()[0] == "America/Los_Angeles"
        when = datetime(2024, 7, 1, 12, 0, tzinfo=timezone.utc)
        rec = add(c, "tz.txt", created_at=when, updated_at=when)
        assert c.artifact_by_id(rec.id).created_at == when
        assert c.artifact_by_id(rec.id).created_at.tzinfo == timezone.utc
    finally:
        c.close()


def test_key_lookup_is_case_exact(cat):
    upper = add(cat, "Data.CSV")
    lower = add(cat, "data.csv")
    assert cat.artifact_by_key("Data.CSV") == upper
    assert cat.artifact_by_key("data.csv") == lower
    assert cat.artifact_by_key("DATA.CSV") is None
    assert listing(cat) == ([], ["Data.CSV", "data.csv"])


def test_trash_and_restore_move_the_edge(cat):
    rec = add(cat, "a/x.txt")
    trashed = cat.retrying(cat.update_artifact, rec.id, branch=TRASH_BRANCH)
    assert trashed.dir_id is None and trashed.key == "a/x.txt"
    assert cat.artifact_by_key("a/x.txt") is None
    assert cat.artifact_by_key("a/x.txt", include_trashed=True) == trashed
    assert cat.dir_by_path("a") is None
    assert cat.filter_artifacts(trashed_only=True) == [trashed]
    # a new live artifact may take the path while the old one is in trash
    other = add(cat, "a/x.txt")
    with pytest.raises(AlreadyExists):
        cat.retrying(cat.update_artifact, rec.id, branch=MAIN_BRANCH)
    cat.retrying(cat.delete_artifact, other.id)
    restored = cat.retrying(cat.update_artifact, rec.id, branch=MAIN_BRANCH)
    assert restored.dir_id == cat.dir_by_path("a").id and restored.name == "x.txt"


# -- the tree ---------------------------------------------------------------------------------------------


def test_tree_dirs_listing_and_collisions(cat):
    add(cat, "a/b/c.txt")
    add(cat, "a/top.txt")
    assert listing(cat) == (["a"], [])
    assert listing(cat, "a") == (["b"], ["top.txt"])
    assert listing(cat, "a/b") == ([], ["c.txt"])
    b = cat.dir_by_path("a/b")
    assert (b.path, b.explicit) == ("a/b", False)
    assert cat.dir_path(b.id) == "a/b"
    assert cat.child_dir(cat.dir_by_path("a").id, "b") == b
    assert cat.live_child_artifact(b.id, "c.txt").key == "a/b/c.txt"
    assert cat.descendant_dirs(cat.dir_by_path("a").id) == [cat.dir_by_path("a").id, b.id]
    with pytest.raises(IsADirectory):
        add(cat, "a/b")  # a directory is there
    with pytest.raises(NotADirectory):
        add(cat, "a/top.txt/inside.txt")  # a file is there
    with pytest.raises(AlreadyExists):
        add(cat, "a/top.txt")
    with pytest.raises(NotEmpty):
        cat.retrying(cat.remove_dir, cat.dir_by_path("a").id)
    with pytest.raises(NotEmpty):
        cat.retrying(cat.remove_dir, ROOT_DIR_ID)


def test_explicit_dirs_stay_implicit_dirs_are_pruned(cat):
    made = cat.retrying(cat.ensure_dir, "keep/me", explicit=True)
    assert made.explicit and cat.dir_by_path("keep").explicit is False
    rec = add(cat, "keep/me/x.txt")
    imp = add(cat, "gone/deep/y.txt")
    cat.retrying(cat.delete_artifact, rec.id)
    cat.retrying(cat.delete_artifact, imp.id)
    assert cat.dir_by_path("keep/me") is not None  # mkdir'ed: stays
    assert cat.dir_by_path("gone") is None and cat.dir_by_path("gone/deep") is None
    assert cat.dir_is_empty(made.id)
    cat.retrying(cat.remove_dir, made.id)
    assert cat.dir_by_path("keep/me") is None
    cat.retrying(cat.prune_implicit_dirs, cat.dir_by_path("keep").id)
    assert listing(cat) == ([], [])


def test_move_dir_with_many_keys_in_one_transaction(cat):
    n = 600
    keys = [f"src/{'sub/' if i % 3 else ''}f{i:04d}.txt" for i in range(n)]
    for start in range(0, n, 100):  # batches, so this test spends its time in move_dir, not in setup
        def batch(start=start):
            for key in keys[start:start + 100]:
                add(cat, key)
        cat.retrying(batch)
    before = {r.key: r.id for r in cat.filter_artifacts(key_prefix="src/")}
    assert len(before) == n
    src = cat.dir_by_path("src")

    # a failure after the move inside the same transaction leaves everything as it was
    def move_then_fail():
        cat.move_dir(src.id, ROOT_DIR_ID, "dst")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        cat.retrying(move_then_fail)
    assert {r.key: r.id for r in cat.filter_artifacts(key_prefix="src/")} == before
    assert cat.dir_by_path("dst") is None

    target = cat.retrying(cat.ensure_dir, "new/parent")
    changed = cat.retrying(cat.move_dir, src.id, target.id, "moved")
    assert changed == n
    after = {r.key: r.id for r in cat.filter_artifacts(key_prefix="new/parent/moved/")}
    assert after == {"new/parent/moved/" + k[len("src/"):]: i for k, i in before.items()}
    assert cat.filter_artifacts(key_prefix="src/") == []
    assert cat.dir_by_path("src") is None
    moved = cat.dir_by_path("new/parent/moved")
    assert moved.id == src.id and moved.explicit  # the same directory row, kept by the rename
    assert cat.artifact_by_key("new/parent/moved/sub/f0001.txt").id == before["src/sub/f0001.txt"]
    with pytest.raises(InvalidKey):
        cat.retrying(cat.move_dir, cat.dir_by_path("new").id, moved.id, "loop")


# -- prefixes, ordering, collation ----------------------------------------------------------------------------

NASTY = [
    "a%b.txt", "aXb.txt", "a_b.txt", "a\\b.txt", "a\\\\b.txt", "ab.txt", "A_b.txt",
    "100%/x.txt", "100x/x.txt", "under_score/x.txt", "underXscore/x.txt",
    "Straße/ä.txt", "STRASSE/a.txt", "strasse/ä.txt", "e\u0301.txt", "\u00e9.txt", "E.txt", "e.txt",
    "日本/データ.csv", "emoji/😀.txt", "sp ace/x y.txt", "z\U0010fffd.txt",
]


def test_prefix_filters_are_exact_without_wildcards_or_case_folding(cat):
    for key in NASTY:
        add(cat, key)

    def keys(prefix):
        return sorted(r.key for r in cat.filter_artifacts(key_prefix=prefix))

    assert keys("a%") == ["a%b.txt"]
    assert keys("a_") == ["a_b.txt"]
    assert keys("a\\") == ["a\\\\b.txt", "a\\b.txt"]
    assert keys("a\\\\") == ["a\\\\b.txt"]
    assert keys("A") == ["A_b.txt"]
    assert keys("100%/") == ["100%/x.txt"]
    assert keys("under_") == ["under_score/x.txt"]
    assert keys("Straße/") == ["Straße/ä.txt"]
    assert keys("strasse/") == ["strasse/ä.txt"]
    assert keys("STRASSE") == ["STRASSE/a.txt"]
    assert keys("e\u0301") == ["e\u0301.txt"]  # no unicode normalisation
    assert keys("\u00e9") == ["\u00e9.txt"]
    assert keys("e") == sorted(["e.txt", "e\u0301.txt", "emoji/😀.txt"])
    assert keys("日本/") == ["日本/データ.csv"]
    assert keys("emoji/😀") == ["emoji/😀.txt"]
    assert keys("z\U0010fffd") == ["z\U0010fffd.txt"]
    assert keys("sp ace/x ") == ["sp ace/x y.txt"]
    assert keys("") == sorted(NASTY)
    assert keys("nothing") == []
    for key in NASTY:
        assert cat.artifact_by_key(key).key == key


def test_prefix_upper_bound():
    assert prefix_upper_bound("ab") == "ac"
    assert prefix_upper_bound("a\U0010ffff") == "b"
    assert prefix_upper_bound("\U0010ffff") is None
    assert prefix_upper_bound("a\ud7ff") == "a\ue000"
    assert prefix_upper_bound("") is None


def test_listing_order_is_code_point_order_whatever_the_collation(cat, backend):
    names = ["b.txt", "B.txt", "a.txt", "A.txt", "_x.txt", "%x.txt", "~x.txt", "Z.txt", "é.txt", "e.txt",
             "10.txt", "9.txt", "a b.txt", "a-b.txt", "ab.txt"]
    for name in names:
        add(cat, f"dir/{name}")
        cat.retrying(cat.ensure_dir, f"dir/{name[:-4]}-d", explicit=True)
    dirs, arts = listing(cat, "dir")
    assert arts == sorted(names)  # Python's str order = code point order = SQLite BINARY = COLLATE "C"
    assert dirs == sorted(n[:-4] + "-d" for n in names)
    if backend == "postgresql":
        # the test database really has a locale-aware default collation: without COLLATE "C" the
        # order would differ, so the assertions above can fail
        provider, icu = cat.db.execute_sql(
            "SELECT datlocprovider, daticulocale FROM pg_database WHERE datname = current_database()").fetchone()
        assert (provider, icu) == ("i", "en-US")
        plain = [r[0] for r in cat.db.execute_sql(
            "SELECT name FROM artifact WHERE dir_id = %s ORDER BY name", (cat.dir_by_path("dir").id,))]
        assert plain != sorted(names)


def test_versions_in_uid_order(cat):
    stem = "V" * 16
    tags = ["0000", "0009", "000A", "000Z", "000a", "000z", "0010"]
    for i, tag in enumerate(tags):
        add(cat, None, uid=stem + tag, is_latest=(tag == "0010"), size=i)
    versions = cat.versions(stem)
    assert [v.uid[16:] for v in versions] == sorted(tags)  # base62: 0-9 < A-Z < a-z, as code points
    assert [v.uid for v in versions if v.is_latest] == [stem + "0010"]
    assert cat.versions("W" * 16) == []


def test_filter_by_fields(cat):
    a = add(cat, "f/a.txt", kind="dataset")
    add(cat, "f/b.txt", kind="model")
    keyless = add(cat, None, kind="dataset")
    assert [r.id for r in cat.filter_artifacts(kind="dataset")] == [a.id, keyless.id]
    assert [r.id for r in cat.filter_artifacts(key=None)] == [keyless.id]
    assert [r.id for r in cat.filter_artifacts(kind="dataset", key_prefix="f/")] == [a.id]
    with pytest.raises(InvalidKey):
        cat.filter_artifacts(nope=1)
    assert [r.id for r in cat.all_artifacts()] == sorted(r.id for r in cat.filter_artifacts(latest_only=False))


# -- the partial unique index -----------------------------------------------------------------------------


def test_partial_unique_index_on_live_latest_paths(cat):
    rec = add(cat, "p/x.txt")
    A = cat.m.Artifact
    base = dict(stem_uid="S" * 16, key="p/x.txt", size=1, hash="h", hash_type="md5", storage=rec.storage_id,
                suffix=".txt", created_at=rec.created_at, updated_at=rec.updated_at, mtime_ns=1, mode=0o100644,
                dir=rec.dir_id, name="x.txt")
    # bypassing the catalog's own checks: the database itself refuses a second live latest row there
    with pytest.raises(pw.IntegrityError):
        with cat.transaction():
            A.create(uid="S" * 16 + "0000", storage_key="other-1", **base)
    # ... but not an old version, nor a trashed one, at the same edge
    with cat.transaction():
        A.create(uid="S" * 16 + "0001", storage_key="other-2", is_latest=False, **base)
        A.create(uid="S" * 16 + "0002", storage_key="other-3", branch=TRASH_BRANCH, **base)
    assert cat.live_child_artifact(rec.dir_id, "x.txt") == cat.artifact_by_id(rec.id)
    # one row per storage object, whatever its state
    with pytest.raises(AlreadyExists):
        add(cat, "p/y.txt", storage_key=rec.storage_key)


def test_concurrent_inserts_at_one_path_have_one_winner(catalog_url, cat):
    """Two catalogs (as two mounts) racing to create one key: one wins, the other gets AlreadyExists,
    never an IntegrityError or 'database is locked'."""
    other = open_catalog(catalog_url)
    results: list = []
    barrier = threading.Barrier(2)

    def create(c):
        barrier.wait()
        try:
            results.append(add(c, "race/same.txt"))
        except Exception as exc:  # noqa: BLE001 - asserted below
            results.append(exc)

    try:
        threads = [threading.Thread(target=create, args=(c,)) for c in (cat, other)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        other.close()
    winners = [r for r in results if not isinstance(r, Exception)]
    losers = [r for r in results if isinstance(r, Exception)]
    assert len(winners) == 1 and len(losers) == 1, results
    assert isinstance(losers[0], AlreadyExists)
    assert cat.artifact_by_key("race/same.txt") == winners[0]


def test_concurrent_get_or_create_of_dirs_and_storage_roots(catalog_url):
    catalogs = [open_catalog(catalog_url) for _ in range(4)]
    barrier = threading.Barrier(len(catalogs))
    out, errors = [], []

    def work(c):
        try:
            barrier.wait()
            out.append((c.retrying(c.ensure_dir, "x/y/z").id, c.storage_root("s3://b/shared").id))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(c,)) for c in catalogs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in catalogs:
        c.close()
    assert errors == []
    assert len(set(out)) == 1  # everybody got the same directory and the same storage root


# -- versions, intents, folder files ----------------------------------------------------------------------------


def test_intents_roundtrip(cat):
    rec = add(cat, "i.txt")
    first = cat.retrying(cat.add_intent, artifact_id=rec.id, storage_id=rec.storage_id, storage_key=rec.storage_key,
                         new_hash="nh", new_size=2**40)
    second = cat.retrying(cat.add_intent, artifact_id=None, storage_id=rec.storage_id, storage_key="k/2",
                          new_hash="nh2", new_size=0)
    got = cat.intents()
    assert [(i.id, i.artifact_id, i.storage_key, i.new_hash, i.new_size) for i in got] == [
        (first, rec.id, rec.storage_key, "nh", 2**40), (second, None, "k/2", "nh2", 0)]
    cat.retrying(cat.remove_intent, first)
    assert [i.id for i in cat.intents()] == [second]


def test_folder_files_replace_order_and_cascade(cat):
    rec = add(cat, "f.zarr", n_files=3, suffix=".zarr")
    cat.retrying(cat.set_folder_files, rec.id, [("b/2", 2), ("a/1", 1), ("B/0", 0), ("_/x", 5), ("%/y", 6)])
    assert [(f.path, f.size) for f in cat.folder_files(rec.id)] == sorted(
        [("b/2", 2), ("a/1", 1), ("B/0", 0), ("_/x", 5), ("%/y", 6)])
    many = [(f"chunk/{i:05d}", i) for i in range(1234)]
    cat.retrying(cat.set_folder_files, rec.id, many)  # replaces, in batches
    assert [(f.path, f.size) for f in cat.folder_files(rec.id)] == many
    cat.retrying(cat.delete_artifact, rec.id)
    assert cat.folder_files(rec.id) == []
    assert cat.m.FolderFile.select().count() == 0


# -- transient errors, connections, credentials ---------------------------------------------------------------------


def test_sqlite_writers_wait_for_each_other_instead_of_failing(tmp_path):
    url = f"sqlite:///{tmp_path / 'busy.db'}"
    a, b = open_catalog(url), open_catalog(url)
    holding = threading.Event()

    def hold():
        with a.transaction():
            a.ensure_dir("held")
            holding.set()
            time.sleep(0.7)

    t = threading.Thread(target=hold)
    t.start()
    holding.wait(5)
    t0 = time.monotonic()
    rec = add(b, "while-locked.txt")  # must wait for a's write transaction, not raise "database is locked"
    waited = time.monotonic() - t0
    t.join()
    assert rec.key == "while-locked.txt" and waited > 0.3
    a.close()
    b.close()


def test_pg_restart_between_operations(pg_server, pg_url, caplog):
    caplog.set_level(logging.DEBUG, logger="lamfs")
    cat = open_catalog(pg_url)
    try:
        rec = add(cat, "before/restart.txt")
        readers = [threading.Thread(target=lambda: cat.artifact_by_id(rec.id)) for _ in range(3)]
        for t in readers:  # several pooled connections, all of which the restart kills
            t.start()
        for t in readers:
            t.join()
        pg_server.restart()
        assert cat.artifact_by_id(rec.id) == rec  # a read on a dead pooled connection
        pg_server.restart()
        again = add(cat, "after/restart.txt")  # a write transaction
        assert cat.artifact_by_key("after/restart.txt") == again
        pg_server.restart()
        assert cat.retrying(cat.move_dir, cat.dir_by_path("after").id, ROOT_DIR_ID, "moved") == 1
        assert "catalog transient error (connection" in caplog.text  # it really was retried
        assert PG_PASSWORD not in caplog.text
    finally:
        cat.close()


def test_pg_outage_gives_a_clear_error_without_credentials(pg_server, pg_url):
    cat = open_catalog(pg_url)
    rec = add(cat, "x.txt")
    pg_server.stop()
    try:
        t0 = time.monotonic()
        with pytest.raises(CatalogBusy) as err:
            cat.artifact_by_id(rec.id)
        assert time.monotonic() - t0 < 60
        assert "unreachable" in str(err.value)
        assert PG_PASSWORD not in str(err.value) and PG_PASSWORD not in repr(err.value)
        assert err.value.__cause__ is None and err.value.__suppress_context__  # no driver text with the DSN
    finally:
        pg_server._run(str(pg_server.bin / "pg_ctl"), "-D", str(pg_server.data), "-l", str(pg_server.log_path),
                       "-w", "start")
    assert cat.artifact_by_id(rec.id) == rec  # and it recovers by itself
    cat.close()


def test_pg_wrong_password_fails_fast_and_never_shows_it(pg_server, pg_url):
    wrong = pg_url.replace(PG_PASSWORD, "not-the-Secret-pw")
    t0 = time.monotonic()
    with pytest.raises(pw.OperationalError) as err:
        open_catalog(wrong)
    assert time.monotonic() - t0 < 5  # not retried: retrying cannot fix it
    assert "password authentication failed" in str(err.value)
    assert "not-the-Secret-pw" not in str(err.value)
    assert "not-the-Secret-pw" not in redact_url(wrong) and "***" in redact_url(wrong)


def test_pg_credentials_from_the_environment(pg_server, pg_url, monkeypatch):
    """The URL may leave the password (or everything but the database) to libpq's environment."""
    db = pg_url.rsplit("/", 1)[1]
    monkeypatch.setenv("PGPASSWORD", PG_PASSWORD)
    cat = open_catalog(f"postgresql://lamfs@127.0.0.1:{pg_server.port}/{db}")
    try:
        assert add(cat, "env.txt").key == "env.txt"
    finally:
        cat.close()
    monkeypatch.setenv("PGHOST", "127.0.0.1")
    monkeypatch.setenv("PGPORT", str(pg_server.port))
    monkeypatch.setenv("PGUSER", "lamfs")
    cat = open_catalog(f"postgresql:///{db}")
    try:
        assert cat.artifact_by_key("env.txt") is not None
    finally:
        cat.close()


def test_pg_serialization_failures_are_retried(pg_server, pg_url):
    """An administrator may make every transaction SERIALIZABLE; concurrent read-modify-write units
    then fail with SQLSTATE 40001, which the catalog retries until each has applied once."""
    db = pg_url.rsplit("/", 1)[1]
    pg_server.admin_sql(f"ALTER DATABASE \"{db}\" SET default_transaction_isolation TO 'serializable'")
    catalogs = [open_catalog(pg_url) for _ in range(4)]
    rec = add(catalogs[0], "counter.txt", size=0)
    attempts = []
    barrier = threading.Barrier(len(catalogs))
    errors = []

    def bump(c):
        def txn():
            attempts.append(1)
            current = c.artifact_by_id(rec.id)
            time.sleep(0.05)  # widen the window: everybody reads before anybody writes
            c.update_artifact(rec.id, size=current.size + 1)

        try:
            barrier.wait()
            for _ in range(5):
                c.retrying(txn)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=bump, args=(c,)) for c in catalogs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    isolation = catalogs[0].db.execute_sql("SHOW transaction_isolation").fetchone()[0]
    for c in catalogs:
        c.close()
    assert isolation == "serializable"
    assert errors == []
    assert open_catalog(pg_url).artifact_by_id(rec.id).size == 20  # no lost update
    assert len(attempts) > 20  # some attempts failed with 40001 and ran again


def test_pg_deadlocks_are_retried(pg_url):
    c1, c2 = open_catalog(pg_url), open_catalog(pg_url)
    x, y = add(c1, "dl/x.txt"), add(c1, "dl/y.txt")
    barrier = threading.Barrier(2, timeout=10)
    calls, errors = [], []

    def txn(c, first, second):
        def run():
            calls.append(1)
            c.update_artifact(first.id, size=1)
            if len(calls) <= 2:  # the first runs: both hold their first row lock, and each then
                barrier.wait()  # wants the other's: PostgreSQL aborts one with 40P01
            c.update_artifact(second.id, size=2)

        try:
            c.retrying(run)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=txn, args=(c1, x, y)), threading.Thread(target=txn, args=(c2, y, x))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    c1.close()
    c2.close()
    assert errors == []
    assert len(calls) >= 3  # the deadlock victim ran again


def test_pg_connections_are_not_leaked_by_short_lived_threads(pg_server, pg_url):
    cat = open_catalog(pg_url + "?max_connections=4")
    rec = add(cat, "x.txt")
    db = pg_url.rsplit("/", 1)[1]
    for _ in range(60):  # e.g. trio's worker threads come and go
        t = threading.Thread(target=lambda: cat.artifact_by_id(rec.id))
        t.start()
        t.join()
    assert cat.artifact_by_id(rec.id) == rec
    assert len(cat.db._in_use) == 0
    assert pg_server.connections(db) <= 4
    cat.close()
    assert pg_server.connections(db) == 0


def test_redact_url():
    assert redact_url("postgresql://u:s3cr%40t@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact_url("postgresql://u:p@ss:w@h/db") == "postgresql://u:***@h/db"
    assert redact_url("postgresql://h/db?user=u&password=pw&sslmode=require") == \
        "postgresql://h/db?user=u&password=***&sslmode=require"
    assert redact_url("postgresql://u@h/db") == "postgresql://u@h/db"
    assert redact_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"


def test_percent_encoded_credentials(pg_server, pg_url):
    pg_server.admin_sql("DROP ROLE IF EXISTS \"odd user\"", "CREATE ROLE \"odd user\" LOGIN PASSWORD 'p@ss:w/rd%'")
    db = pg_url.rsplit("/", 1)[1]
    cat = open_catalog(f"postgresql://odd%20user:p%40ss%3Aw%2Frd%25@127.0.0.1:{pg_server.port}/{db}", migrate=False)
    try:
        assert cat.db.execute_sql("SELECT current_user").fetchone()[0] == "odd user"
        assert "p%40ss" not in repr(cat) and "p@ss" not in repr(cat)
    finally:
        cat.close()


# -- writer locks ------------------------------------------------------------------------------------------------------

LOCKER = """
import sys, time
from lamfs.catalog import open_catalog
cat = open_catalog(sys.argv[1])
with cat.write_lock(int(sys.argv[2])) as check:
    print("locked", flush=True)
    time.sleep(float(sys.argv[3]))
    check()
print("released", flush=True)
"""


def test_write_lock_excludes_other_processes(catalog_url, cat):
    """Two processes (as two mounts) rewriting one artifact's object take turns."""
    rec = add(cat, "locked.txt")
    other = add(cat, "free.txt")
    proc = subprocess.Popen([sys.executable, "-c", LOCKER, catalog_url, str(rec.id), "2.0"], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        t0 = time.monotonic()
        with cat.write_lock(other.id):  # another artifact's lock is independent ...
            assert time.monotonic() - t0 < 1.0
        with cat.write_lock(rec.id) as check:  # ... this one waits for the other process
            waited = time.monotonic() - t0
            check()
            assert proc.poll() is not None or proc.stdout.readline().strip() == "released"
        assert waited > 0.8, waited
    finally:
        assert proc.wait(30) == 0


def test_write_lock_check_fails_after_the_connection_dropped(pg_server, pg_url):
    cat = open_catalog(pg_url)
    rec = add(cat, "x.txt")
    with cat.write_lock(rec.id) as check:
        check()
        pg_server.restart()  # the advisory lock is gone with its session
        with pytest.raises(CatalogBusy, match="lost the write lock"):
            check()
    with cat.write_lock(rec.id) as check:  # and can be taken again
        check()
    cat.close()
