"""The catalog: the only place that talks peewee. Every public method runs its own query or
transaction and returns frozen records (records.py). Methods block (SQLite/PostgreSQL I/O): call
them from worker threads, never on the trio loop.

The tree is modelled as edges: a directory row is (parent_id, name); an artifact with a key has
(dir_id, name). Lookups and listings are index scans; a directory rename moves one edge and
rewrites the denormalised `key` column of everything below it in the same transaction.

Units of work: every public method is one. Called at top level it borrows a connection (SQLite: the
thread's own; PostgreSQL: one from the pool, given back when the method returns, so threads that come
and go never leak connections), runs in a transaction if it writes, and retries transient errors
(SQLite busy/locked; PostgreSQL serialization failures, deadlocks, dropped connections and a
restarting server; a unique-index race) with backoff. Called from inside another unit (`retrying`,
`transaction`) it simply runs as part of it. Text is ordered and prefix-matched by code point on
both backends (PostgreSQL: COLLATE "C"), whatever the database's default collation.
"""
from __future__ import annotations

import functools
import logging
import os
import random
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator
from urllib.parse import parse_qs, unquote, urlparse

import peewee as pw

from ..errors import AlreadyExists, CatalogBusy, InvalidKey, IsADirectory, NotADirectory, NotEmpty, NotFound
from ..keys import join_key, split_key
from .migrations import apply_migrations
from .models import make_models
from .records import (
    MAIN_BRANCH,
    ROOT_DIR_ID,
    ArtifactRecord,
    DirectoryRecord,
    FolderFileRecord,
    IntentRecord,
    StorageRecord,
)

log = logging.getLogger("lamfs.catalog")

DIR_MODE = 0o40755
FILE_MODE = 0o100644
BUSY_TIMEOUT_MS = 30_000

ARTIFACT_FIELDS = (
    "id uid key key_is_virtual dir_id name description suffix kind otype size hash hash_type n_files "
    "n_observations version_tag is_latest storage_id storage_key storage_etag branch created_at "
    "updated_at mtime_ns mode"
).split()


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _aware(value: datetime) -> datetime:
    if isinstance(value, str):  # SQLite may hand back text for timestamps with offsets
        value = datetime.fromisoformat(value)
    # PostgreSQL hands back the session's time zone; records always carry UTC
    return value.astimezone(timezone.utc) if value.tzinfo else value.replace(tzinfo=timezone.utc)


def redact_url(url: str) -> str:
    """A catalog URL fit for logs and messages: no password (neither in the netloc nor as a
    `password=` query parameter)."""
    parsed = urlparse(url)
    changed = False
    if parsed.password:
        userinfo, _, hostport = parsed.netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        parsed, changed = parsed._replace(netloc=f"{user}:***@{hostport}"), True
    if "password=" in parsed.query.lower():
        parts = [("password=***" if p.lower().startswith("password=") else p) for p in parsed.query.split("&")]
        parsed, changed = parsed._replace(query="&".join(parts)), True
    return parsed.geturl() if changed else url


def prefix_upper_bound(prefix: str) -> str | None:
    """The smallest string greater (in code point order) than every string starting with `prefix`,
    or None if there is none. Lets a prefix filter be an index range scan."""
    chars = list(prefix)
    while chars:
        code = ord(chars.pop()) + 1
        if code == 0xD800:  # surrogates cannot occur in stored text
            code = 0xE000
        if code <= 0x10FFFF:
            return "".join(chars) + chr(code)
    return None


#: SQLSTATEs worth retrying: serialization failure, deadlock; the server shutting down, crashing,
#: starting up, out of connection slots. Class 08 (connection exceptions) is matched by prefix.
PG_BUSY_CODES = {"40001", "40P01"}
PG_CONNECTION_CODES = {"57P01", "57P02", "57P03", "53300"}
#: connection-time failures that retrying will not fix
PG_PERMANENT_TEXT = ("authentication failed", "does not exist", "permission denied", "no password supplied",
                     "invalid dsn", "invalid connection option", "could not translate host name")


def _unit(*, txn: bool):
    """Decorator: the method is one unit of work (see the module docstring)."""

    def decorate(method):
        @functools.wraps(method)
        def wrapper(self: "Catalog", *args, **kwargs):
            if self._depth():
                return method(self, *args, **kwargs)
            return self._unit_of_work(functools.partial(method, self, *args, **kwargs), txn=txn)

        return wrapper

    return decorate


read = _unit(txn=False)
write = _unit(txn=True)


class Catalog:
    def __init__(self, db: pw.Database, url: str):
        self.db = db
        self.url = url
        self.m = make_models(db)
        self.is_sqlite = isinstance(db, pw.SqliteDatabase)
        self._lock = threading.Lock()
        self._local = threading.local()
        self._artifact_locks: dict[int, list] = {}  # artifact id -> [threading.Lock, users]
        self._idle_lock_conns: list = []  # PostgreSQL connections for write locks, kept for reuse
        self._compiled: dict[str, str] = {}  # hot query name -> its SQL text (see _query)

    def __repr__(self) -> str:
        return f"Catalog({redact_url(self.url)!r})"

    # -- connection & transactions -------------------------------------------------------

    def migrate(self) -> list[int]:
        """Apply pending migrations (idempotent, so a dropped connection is simply retried)."""
        return self._unit_of_work(lambda: apply_migrations(self.db, self.m.Migration), txn=False)

    def close(self) -> None:
        """Close this thread's connection; PostgreSQL: every pooled connection too."""
        if not self.db.is_closed():
            self.db.close()
        if not self.is_sqlite:
            self.db.close_all()
            with self._lock:
                idle, self._idle_lock_conns = self._idle_lock_conns, []
            for conn in idle:
                conn.close()

    def _depth(self) -> int:
        return getattr(self._local, "depth", 0)

    @contextmanager
    def _session(self):
        """Hold a connection for the duration (nested: the outer one's). PostgreSQL: borrowed from
        the pool and given back at the end (discarded there if it broke)."""
        depth = self._depth()
        opened = False
        if depth == 0 and not self.is_sqlite and self.db.is_closed():
            self.db.connect()
            opened = True
        self._local.depth = depth + 1
        try:
            yield
        finally:
            self._local.depth = depth
            if opened:
                try:
                    self.db.close()
                except Exception:  # noqa: BLE001 - a broken connection: drop it, the pool forgets it
                    self.db.dispose()

    def _atomic(self):
        return self.db.atomic("IMMEDIATE") if self.is_sqlite else self.db.atomic()

    @contextmanager
    def transaction(self):
        """A write transaction (not retried: use `retrying` for that). SQLite: BEGIN IMMEDIATE, so two
        writers queue on the busy timeout instead of deadlocking on a lock upgrade."""
        with self._session(), self._atomic():
            yield

    def retrying(self, fn, *args, attempts: int = 8, **kwargs):
        """Run fn in a transaction, retrying transient lock/serialization/connection errors with
        backoff; users never see 'database is locked'. Inside another unit of work: just runs fn
        in the caller's transaction."""
        call = functools.partial(fn, *args, **kwargs)
        if self._depth():
            with self._atomic():
                return call()
        return self._unit_of_work(call, txn=True, attempts=attempts)

    def _unit_of_work(self, call, *, txn: bool, attempts: int = 8):
        delay = 0.05
        conflicts = 0
        for attempt in range(attempts):
            try:
                with self._session():
                    if txn:
                        with self._atomic():
                            return call()
                    return call()
            except Exception as exc:  # noqa: BLE001 - classified below, re-raised unless transient
                kind = self._classify(exc)
                if kind is None:
                    raise
                if kind == "conflict":
                    # a unique index caught a concurrent insert: run again, the checks now see the row
                    conflicts += 1
                    if conflicts > 2:
                        raise
                elif attempt == attempts - 1:
                    what = "unreachable" if kind == "connection" else "busy"
                    raise CatalogBusy(f"catalog {what} after {attempts} attempts: {self._describe(exc)}") from None
                if kind == "connection" and not self.is_sqlite:
                    self.db.close_idle()  # after a restart every idle pooled connection is dead too
                log.debug("catalog transient error (%s: %s); retrying", kind, self._describe(exc))
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")

    def _describe(self, exc: BaseException) -> str:
        text = " ".join(str(exc).split())
        # drivers do not echo passwords, but never let one through
        password = urlparse(self.url).password
        for secret in {password, unquote(password)} if password else ():
            text = text.replace(secret, "***")
        return text

    def _classify(self, exc: BaseException) -> str | None:
        """'conflict' (unique-index race), 'busy' (locks, serialization, deadlock), 'connection'
        (dropped/refused/restarting), or None: not transient."""
        from playhouse.pool import MaxConnectionsExceeded

        if isinstance(exc, pw.IntegrityError) or (
                isinstance(exc, AlreadyExists) and isinstance(exc.__cause__, pw.IntegrityError)):
            return "conflict"
        if isinstance(exc, MaxConnectionsExceeded):
            return "busy"
        if not isinstance(exc, pw.DatabaseError):
            return None
        text = str(exc).lower()
        if self.is_sqlite:
            return "busy" if ("locked" in text or "busy" in text) else None
        orig = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else exc
        code = getattr(orig, "pgcode", None)
        if code:
            if code in PG_BUSY_CODES:
                return "busy"
            if code.startswith("08") or code in PG_CONNECTION_CODES:
                return "connection"
            return None
        if any(word in text for word in PG_PERMANENT_TEXT):
            return None
        if isinstance(exc, (pw.OperationalError, pw.InterfaceError)):
            # no SQLSTATE: the driver lost (or could not open) the connection
            return "connection"
        return None

    # -- writer locks -------------------------------------------------------------------------

    @contextmanager
    def write_lock(self, artifact_id: int):
        """Exclusive right to rewrite one artifact's object, across threads, processes and (with
        PostgreSQL) machines: held from before the upload until after the commit, so two writers of
        one file never overwrite each other's object between an upload and its commit (the last
        to take the lock wins; no one gets an error). Yields a `check()` callable that raises
        `CatalogBusy` if the lock may have been lost (its connection dropped): call it inside the
        commit, a writer that cannot prove it still holds the lock must not commit.

        PostgreSQL: a session advisory lock (key -artifact_id) on a dedicated connection, so the
        pool and the retries of ordinary queries are untouched. SQLite: a byte-range lock at offset
        artifact_id of `<catalog>.locks` (one machine; released by the kernel if the process dies).
        Within a process a per-artifact threading lock comes first."""
        with self._lock:
            local = self._artifact_locks.setdefault(artifact_id, [threading.Lock(), 0])
            local[1] += 1
        try:
            with local[0]:
                if self.is_sqlite:
                    with self._file_lock(artifact_id):
                        yield lambda: None
                else:
                    with self._advisory_lock(artifact_id) as check:
                        yield check
        finally:
            with self._lock:
                local[1] -= 1
                if not local[1]:
                    self._artifact_locks.pop(artifact_id, None)

    @contextmanager
    def _file_lock(self, artifact_id: int):
        import fcntl
        import struct

        # Open-file-description locks (F_OFD_*), not lockf()/POSIX record locks: those belong to the
        # process, so closing ANY fd of this file (another thread finishing its lock of another artifact)
        # silently released this lock, and two catalogs in one process never excluded each other.
        def flock(kind: int) -> bytes:  # struct flock: l_type, l_whence, l_start, l_len, l_pid (0 for OFD)
            return struct.pack("hhqqi4x", kind, os.SEEK_SET, artifact_id, 1, 0)

        path = Path(self.db.database + ".locks")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLKW, flock(fcntl.F_WRLCK))
            try:
                yield
            finally:
                fcntl.fcntl(fd, fcntl.F_OFD_SETLK, flock(fcntl.F_UNLCK))
        finally:
            os.close(fd)

    @contextmanager
    def _advisory_lock(self, artifact_id: int):
        import psycopg2

        key = -artifact_id  # negative keys: artifact writers; positive: migrations
        conn, failures, wait_s = None, 0, 0.02
        while True:  # try without holding a statement open while another writer uploads
            try:
                if conn is None:
                    conn = self._lock_connection()
                with conn.cursor() as cur:
                    cur.execute("SELECT pg_try_advisory_lock(%s)", (key,))
                    if cur.fetchone()[0]:
                        break
                pause, wait_s = wait_s, min(wait_s * 1.5, 0.5)  # another writer holds it
            except psycopg2.Error as exc:
                if conn is not None:
                    conn.close()
                conn = None
                failures += 1
                if failures >= 8:
                    raise CatalogBusy(f"catalog unreachable while locking artifact {artifact_id} for writing: "
                                      f"{self._describe(exc)}") from None
                log.debug("write lock for artifact %d: %s; retrying", artifact_id, self._describe(exc))
                pause = min(0.05 * 2 ** failures, 2.0)
            time.sleep(pause * (1 + random.random()))

        def check() -> None:
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT 1")
            except psycopg2.Error as exc:
                raise CatalogBusy(f"lost the write lock of artifact {artifact_id} (catalog connection dropped: "
                                  f"{self._describe(exc)}); not committed") from None

        try:
            yield check
        finally:
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT pg_advisory_unlock(%s)", (key,))
                with self._lock:
                    if len(self._idle_lock_conns) < 4:
                        self._idle_lock_conns.append(conn)
                        conn = None
            except psycopg2.Error:
                pass  # a dead connection has released it already
            if conn is not None:
                conn.close()

    def _lock_connection(self):
        """A connection for advisory locks: an idle one kept from earlier (saves a log-in per
        write), or a new one."""
        import psycopg2

        with self._lock:
            conn = self._idle_lock_conns.pop() if self._idle_lock_conns else None
        if conn is not None and not conn.closed:
            return conn
        conn = psycopg2.connect(dbname=self.db.database, **self.db.connect_params)
        conn.autocommit = True
        return conn

    def _text(self, column):
        """A text column compared/ordered by code point (SQLite's BINARY default; PostgreSQL's
        default collation may be ICU/libc locale-aware: '_' < '%', 'a' < 'A' < 'b')."""
        return column if self.is_sqlite else column.collate('"C"')

    # -- hot queries ----------------------------------------------------------------------

    def _query(self, name: str, model, build, *params):
        """Run a hot, fixed-shape SELECT with new parameters without building it again. Peewee spends
        ~70% of a lookup's CPU turning the query tree into SQL (the artifact table has ~30 columns);
        the text is the same every time, so it is built once per catalog (`build()` with these very
        parameters, which must be the query's parameters in order) and then run as a raw query,
        which still converts column values like any model query."""
        sql = self._compiled.get(name)
        if sql is None:
            sql, built = build().sql()
            if list(built) != list(params):  # a programming error: caught at the first call
                raise AssertionError(f"hot query {name}: parameters {built!r} != {params!r}")
            self._compiled[name] = sql
        return model.raw(sql, *params)

    def _first(self, name: str, model, build, *params):
        for row in self._query(name, model, build, *params):
            return row
        return None

    # -- records --------------------------------------------------------------------------

    def _artifact(self, row) -> ArtifactRecord:
        values = {f: getattr(row, f) for f in ARTIFACT_FIELDS}
        values["created_at"] = _aware(values["created_at"])
        values["updated_at"] = _aware(values["updated_at"])
        return ArtifactRecord(**values)

    def _dir(self, row, path: str) -> DirectoryRecord:
        return DirectoryRecord(row.id, row.parent_id, row.name, path, row.explicit, row.mtime_ns, row.mode)

    # -- storage roots --------------------------------------------------------------------

    def storage_root(self, root: str) -> StorageRecord:
        S = self.m.StorageRoot

        def get_or_create():
            row = S.get_or_none(S.root == root)
            if row is None:
                row = S.create(root=root, created_at=utcnow())
            return StorageRecord(row.id, row.root)

        return self.retrying(get_or_create)

    @read
    def storage_roots(self) -> list[StorageRecord]:
        S = self.m.StorageRoot
        return [StorageRecord(r.id, r.root) for r in S.select().order_by(S.id)]

    # -- artifact queries -----------------------------------------------------------------

    @read
    def artifact_by_id(self, artifact_id: int) -> ArtifactRecord:
        A = self.m.Artifact
        row = self._first("artifact_by_id", A, lambda: A.select().where(A.id == artifact_id), artifact_id)
        if row is None:
            raise NotFound(f"no artifact with id {artifact_id}")
        return self._artifact(row)

    @read
    def artifact_by_uid(self, uid: str) -> ArtifactRecord | None:
        A = self.m.Artifact
        row = A.get_or_none(A.uid == uid)
        return None if row is None else self._artifact(row)

    @read
    def artifact_by_key(self, key: str, *, include_trashed: bool = False) -> ArtifactRecord | None:
        """The latest artifact with this exact key (case-exact, no wildcards)."""
        A = self.m.Artifact

        def build():
            q = A.select().where((A.key == key) & (A.is_latest == True))  # noqa: E712
            if not include_trashed:
                q = q.where(A.branch == MAIN_BRANCH)
            return q.order_by(A.branch.desc(), A.id.desc()).limit(1)

        params = (key, True) if include_trashed else (key, True, MAIN_BRANCH)
        row = self._first(f"artifact_by_key:{include_trashed}", A, build, *params, 1)
        return None if row is None else self._artifact(row)

    @read
    def artifacts_by_hash(self, hash_: str, key: str | None = None) -> list[ArtifactRecord]:
        """Artifacts with these bytes, oldest first; with `key`: only those at that key (a save
        dedups within its key, and many files may share bytes, e.g. empty ones)."""
        A = self.m.Artifact

        def build():
            where = (A.hash == hash_) & (A.branch == MAIN_BRANCH)
            if key is not None:
                where &= A.key == key
            return A.select().where(where).order_by(A.id)

        params = (hash_, MAIN_BRANCH) if key is None else (hash_, MAIN_BRANCH, key)
        return [self._artifact(r) for r in self._query(f"artifacts_by_hash:{key is None}", A, build, *params)]

    @read
    def artifact_by_storage_key(self, storage_id: int, storage_key: str) -> ArtifactRecord | None:
        A = self.m.Artifact
        row = A.get_or_none((A.storage_id == storage_id) & (A.storage_key == storage_key))
        return None if row is None else self._artifact(row)

    @read
    def versions(self, stem_uid: str) -> list[ArtifactRecord]:
        A = self.m.Artifact
        return [self._artifact(r) for r in A.select().where(A.stem_uid == stem_uid).order_by(self._text(A.uid))]

    @read
    def filter_artifacts(
        self, *, key_prefix: str | None = None, include_trashed: bool = False, trashed_only: bool = False,
        latest_only: bool = True, **equal,
    ) -> list[ArtifactRecord]:
        A = self.m.Artifact
        q = A.select()
        for field, value in equal.items():
            if field not in ARTIFACT_FIELDS:
                raise InvalidKey(f"cannot filter on unknown field {field!r}")
            column = getattr(A, field)
            q = q.where(column.is_null() if value is None else column == value)
        if key_prefix is not None:
            # substr equality, not LIKE: '%', '_' and '\' in keys are plain characters, case-exact;
            # the code-point range in front lets the key index narrow the scan
            key = self._text(A.key)
            q = q.where(key >= key_prefix)
            upper = prefix_upper_bound(key_prefix)
            if upper is not None:
                q = q.where(key < upper)
            q = q.where(pw.fn.SUBSTR(A.key, 1, len(key_prefix)) == key_prefix)
        if trashed_only:
            q = q.where(A.branch != MAIN_BRANCH)
        elif not include_trashed:
            q = q.where(A.branch == MAIN_BRANCH)
        if latest_only:
            q = q.where(A.is_latest == True)  # noqa: E712
        return [self._artifact(r) for r in q.order_by(A.id)]

    def all_artifacts(self) -> Iterator[ArtifactRecord]:
        return iter(self._all_artifacts())

    @read
    def _all_artifacts(self) -> list[ArtifactRecord]:
        A = self.m.Artifact
        return [self._artifact(row) for row in A.select().order_by(A.id)]

    # -- artifact writes (call inside transaction() or via retrying) ------------------------

    @write
    def insert_artifact(self, **fields) -> ArtifactRecord:
        A = self.m.Artifact
        key = fields.get("key")
        now = utcnow()
        fields.setdefault("created_at", now)
        fields.setdefault("updated_at", now)
        fields.setdefault("mtime_ns", time.time_ns())
        fields.setdefault("mode", FILE_MODE)
        fields["stem_uid"] = fields["uid"][:16]
        if key is not None and fields.get("branch", MAIN_BRANCH) == MAIN_BRANCH and fields.get("is_latest", True):
            fields["dir_id"], fields["name"] = self._place(key, fields.get("n_files") is not None)
        elif key is not None:
            fields["dir_id"], fields["name"] = None, None
        try:
            row = A.create(**fields)
        except pw.IntegrityError as exc:
            raise AlreadyExists(f"an artifact already exists at {key or fields.get('storage_key')!r}") from exc
        return self._artifact(row)

    @write
    def update_artifact(self, artifact_id: int, **fields) -> ArtifactRecord:
        A = self.m.Artifact
        current = self.artifact_by_id(artifact_id)
        fields.setdefault("updated_at", utcnow())
        new_key = fields.get("key", current.key)
        branch = fields.get("branch", current.branch)
        latest = fields.get("is_latest", current.is_latest)
        placed = new_key is not None and branch == MAIN_BRANCH and latest
        if placed and (new_key != current.key or current.dir_id is None):
            fields["dir_id"], fields["name"] = self._place(new_key, current.is_folder, moving_id=artifact_id)
        elif not placed:
            fields["dir_id"], fields["name"] = None, None
        try:
            A.update(**fields).where(A.id == artifact_id).execute()
        except pw.IntegrityError as exc:
            raise AlreadyExists(f"an artifact already exists at {new_key!r}") from exc
        if "dir_id" in fields and current.dir_id not in (None, fields["dir_id"]):
            self.prune_implicit_dirs(current.dir_id)
        return self.artifact_by_id(artifact_id)

    @write
    def delete_artifact(self, artifact_id: int) -> None:
        A, F = self.m.Artifact, self.m.FolderFile
        current = self.artifact_by_id(artifact_id)
        F.delete().where(F.artifact_id == artifact_id).execute()
        A.delete().where(A.id == artifact_id).execute()
        if current.dir_id is not None:
            self.prune_implicit_dirs(current.dir_id)

    def _place(self, key: str, is_folder: bool, moving_id: int | None = None) -> tuple[int, str]:
        """Directory id + name for a key, creating implicit parent directories. Refuses a key
        that collides with a directory, or that lies inside a file or folder artifact."""
        parent, name = split_key(key)
        dir_id = self.ensure_dir(parent).id if parent else ROOT_DIR_ID
        if self._child_dir_row(dir_id, name) is not None:
            raise IsADirectory(f"{key!r} is a directory")
        existing = self.live_child_artifact(dir_id, name)
        if existing is not None and existing.id != moving_id:
            raise AlreadyExists(f"an artifact already exists at {key!r}")
        return dir_id, name

    @read
    def live_child_artifact(self, dir_id: int, name: str) -> ArtifactRecord | None:
        A = self.m.Artifact
        row = self._first("live_child_artifact", A, lambda: A.select().where(
            (A.dir_id == dir_id) & (A.name == name) & (A.branch == MAIN_BRANCH) & (A.is_latest == True)  # noqa: E712
        ).limit(1), dir_id, name, MAIN_BRANCH, True, 1)
        return None if row is None else self._artifact(row)

    def _child_dir_row(self, dir_id: int, name: str):
        D = self.m.Directory
        return self._first("child_dir", D, lambda: D.select().where((D.parent_id == dir_id) & (D.name == name)).limit(1),
                           dir_id, name, 1)

    def _dir_row(self, dir_id: int):
        D = self.m.Directory
        return self._first("dir_by_id", D, lambda: D.select().where(D.id == dir_id), dir_id)

    # -- directories ------------------------------------------------------------------------

    @read
    def dir_by_id(self, dir_id: int) -> DirectoryRecord:
        row = self._dir_row(dir_id)
        if row is None:
            raise NotFound(f"no directory with id {dir_id}")
        return self._dir(row, self._path_above(row))

    @read
    def dir_path(self, dir_id: int) -> str:
        if dir_id == ROOT_DIR_ID:
            return ""
        row = self._dir_row(dir_id)
        if row is None:
            raise NotFound(f"no directory with id {dir_id}")
        return self._path_above(row)

    def _path_above(self, row) -> str:
        """The path of directory `row`, walking up its parents."""
        parts = []
        while row.id != ROOT_DIR_ID:
            parts.append(row.name)
            parent = row.parent_id
            row = self._dir_row(parent)
            if row is None:
                raise NotFound(f"no directory with id {parent}")
        return "/".join(reversed(parts))

    @read
    def dir_by_path(self, path: str) -> DirectoryRecord | None:
        D = self.m.Directory
        dir_id = ROOT_DIR_ID
        row = D.get_by_id(ROOT_DIR_ID)
        for part in path.split("/") if path else []:
            row = D.get_or_none((D.parent_id == dir_id) & (D.name == part))
            if row is None:
                return None
            dir_id = row.id
        return self._dir(row, path)

    @read
    def child_dir(self, dir_id: int, name: str) -> DirectoryRecord | None:
        row = self._child_dir_row(dir_id, name)
        return None if row is None else self._dir(row, join_key(self.dir_path(dir_id), name))

    @write
    def ensure_dir(self, path: str, *, explicit: bool = False) -> DirectoryRecord:
        """Create the directory and its parents if missing (inside the caller's transaction)."""
        D = self.m.Directory
        dir_id, row = ROOT_DIR_ID, None
        parts = path.split("/") if path else []
        for i, part in enumerate(parts):
            row = self._child_dir_row(dir_id, part)
            if row is None:
                if self.live_child_artifact(dir_id, part) is not None:
                    raise NotADirectory(f"{'/'.join(parts[: i + 1])!r} is a file, not a directory")
                last = i == len(parts) - 1
                row = D.create(parent=dir_id, name=part, explicit=explicit and last,
                               mtime_ns=time.time_ns(), mode=DIR_MODE)
            elif explicit and i == len(parts) - 1 and not row.explicit:
                D.update(explicit=True).where(D.id == row.id).execute()
                row.explicit = True
            dir_id = row.id
        if row is None:
            return self.dir_by_id(ROOT_DIR_ID)
        return self._dir(row, path)

    @read
    def list_dir(self, dir_id: int) -> tuple[list[DirectoryRecord], list[ArtifactRecord]]:
        D, A = self.m.Directory, self.m.Artifact
        base = self.dir_path(dir_id)
        dirs = [self._dir(r, join_key(base, r.name))
                for r in D.select().where(D.parent_id == dir_id).order_by(self._text(D.name))]
        arts = [
            self._artifact(r)
            for r in A.select()
            .where((A.dir_id == dir_id) & (A.branch == MAIN_BRANCH) & (A.is_latest == True))  # noqa: E712
            .order_by(self._text(A.name))
        ]
        return dirs, arts

    @read
    def dir_is_empty(self, dir_id: int) -> bool:
        D, A = self.m.Directory, self.m.Artifact
        if D.select().where(D.parent_id == dir_id).exists():
            return False
        return not A.select().where(
            (A.dir_id == dir_id) & (A.branch == MAIN_BRANCH) & (A.is_latest == True)  # noqa: E712
        ).exists()

    @write
    def remove_dir(self, dir_id: int) -> None:
        if dir_id == ROOT_DIR_ID:
            raise NotEmpty("cannot remove the root directory")
        if not self.dir_is_empty(dir_id):
            raise NotEmpty(f"directory {self.dir_path(dir_id)!r} is not empty")
        A, D = self.m.Artifact, self.m.Directory
        # trashed / old versions keep their key but let go of the edge
        A.update(dir_id=None, name=None).where(A.dir_id == dir_id).execute()
        D.delete().where(D.id == dir_id).execute()

    @write
    def prune_implicit_dirs(self, dir_id: int) -> None:
        """Directories that exist only because of keys vanish with their last entry; mkdir'ed ones stay."""
        D = self.m.Directory
        while dir_id != ROOT_DIR_ID:
            row = D.get_or_none(D.id == dir_id)
            if row is None or row.explicit or not self.dir_is_empty(dir_id):
                return
            parent = row.parent_id
            self.remove_dir(dir_id)
            dir_id = parent

    @write
    def set_dir_attrs(self, dir_id: int, *, mtime_ns: int | None = None, mode: int | None = None) -> None:
        D = self.m.Directory
        fields = {}
        if mtime_ns is not None:
            fields["mtime_ns"] = mtime_ns
        if mode is not None:
            fields["mode"] = mode
        if fields:
            D.update(explicit=True, **fields).where(D.id == dir_id).execute()

    @read
    def descendant_dirs(self, dir_id: int) -> list[int]:
        D = self.m.Directory
        found, frontier = [dir_id], [dir_id]
        while frontier:
            frontier = [r.id for r in D.select(D.id).where(D.parent_id.in_(frontier))]
            found.extend(frontier)
        return found

    @write
    def move_dir(self, dir_id: int, new_parent_id: int, new_name: str) -> int:
        """Move a directory edge and rewrite the keys of every artifact below it (one transaction:
        the caller's). Returns the number of artifacts whose key changed."""
        D, A = self.m.Directory, self.m.Artifact
        if dir_id == ROOT_DIR_ID:
            raise NotEmpty("cannot move the root directory")
        if new_parent_id in self.descendant_dirs(dir_id):
            raise InvalidKey("cannot move a directory inside itself")
        old_path = self.dir_path(dir_id)
        new_path = join_key(self.dir_path(new_parent_id), new_name)
        old_parent = D.get_by_id(dir_id).parent_id
        D.update(parent=new_parent_id, name=new_name, explicit=True).where(D.id == dir_id).execute()
        below = self.descendant_dirs(dir_id)
        # one statement, not one per artifact (1,000 files: 0.1 s of Python per rename):
        # key = new_path || substr(key, len(old_path) + 1)  (1-based, in characters, as key[len(old_path):])
        new_key = pw.Value(new_path).concat(pw.fn.SUBSTR(A.key, len(old_path) + 1))
        changed = A.update(key=new_key, updated_at=utcnow()).where(A.dir_id.in_(below)).execute()
        if old_parent != new_parent_id:
            self.prune_implicit_dirs(old_parent)
        return changed

    # -- folder manifests -------------------------------------------------------------------

    @write
    def set_folder_files(self, artifact_id: int, files: Iterable[tuple[str, int]]) -> None:
        F = self.m.FolderFile
        F.delete().where(F.artifact_id == artifact_id).execute()
        rows = [{"artifact": artifact_id, "path": p, "size": s} for p, s in files]
        for start in range(0, len(rows), 500):
            F.insert_many(rows[start:start + 500]).execute()

    @read
    def folder_files(self, artifact_id: int) -> list[FolderFileRecord]:
        F = self.m.FolderFile
        return [FolderFileRecord(r.path, r.size)
                for r in F.select().where(F.artifact_id == artifact_id).order_by(self._text(F.path))]

    # -- intents (write-ahead records for crash recovery) -----------------------------------

    @write
    def add_intent(self, *, artifact_id: int | None, storage_id: int, storage_key: str, new_hash: str, new_size: int) -> int:
        row = self.m.Intent.create(artifact_id=artifact_id, storage=storage_id, storage_key=storage_key,
                                   new_hash=new_hash, new_size=new_size, created_at=utcnow())
        return row.id

    @write
    def remove_intent(self, intent_id: int) -> None:
        I = self.m.Intent
        I.delete().where(I.id == intent_id).execute()

    @read
    def intents(self, artifact_id: int | None = None) -> list[IntentRecord]:
        """All intents, or those of one artifact."""
        I = self.m.Intent
        query = I.select().order_by(I.id)
        if artifact_id is not None:
            query = query.where(I.artifact_id == artifact_id)
        return [IntentRecord(r.id, r.artifact_id, r.storage_id, r.storage_key, r.new_hash, r.new_size, _aware(r.created_at))
                for r in query]


def _postgres_database(parsed) -> pw.Database:
    """A pooled PostgreSQL database for `postgresql://[user[:password]@][host][:port]/db[?opts]`.
    What the URL leaves out comes from libpq's environment (PGHOST, PGPORT, PGUSER, PGPASSWORD,
    ~/.pgpass, PGSSLMODE, ...), so credentials need not be in the instance config at all. Query
    options go to libpq (`sslmode=require`, `connect_timeout=5`, ...), except the pool's own
    `max_connections` (default 16) and `pool_timeout_s` (wait for a free connection, default 60)."""
    from playhouse.pool import PooledPostgresqlDatabase

    class LamfsPooledPostgresqlDatabase(PooledPostgresqlDatabase):
        def _is_closed(self, conn):
            # no `SELECT 1` round trip on every checkout: a connection that died while idle fails
            # its first statement, and the catalog retries that on a fresh one
            return bool(conn.closed) or self._adapter.txn_status(conn) == self._adapter.txn_unknown

    query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
    max_connections = int(query.pop("max_connections", 16))
    pool_timeout_s = float(query.pop("pool_timeout_s", 60))
    query.setdefault("connect_timeout", "10")
    query.setdefault("application_name", "lamfs")
    return LamfsPooledPostgresqlDatabase(
        unquote((parsed.path or "/").lstrip("/")) or "postgres",
        user=unquote(parsed.username) if parsed.username else None,
        password=unquote(parsed.password) if parsed.password else None,
        host=parsed.hostname or None,
        port=parsed.port or None,
        max_connections=max_connections,
        stale_timeout=300,
        timeout=pool_timeout_s,
        **query,
    )


def open_catalog(url: str, *, migrate: bool = True) -> Catalog:
    """`sqlite:///abs/path.db` (WAL, foreign keys, busy timeout) or `postgresql://user:pw@host:port/db`
    (pooled connections; see `_postgres_database`)."""
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else parsed.path
        if not path.startswith("/"):
            path = "/" + path if url.startswith("sqlite:////") else str(Path(path).resolve())
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        db = pw.SqliteDatabase(
            path,
            timeout=BUSY_TIMEOUT_MS / 1000,
            check_same_thread=False,
            pragmas={
                "journal_mode": "wal",
                "foreign_keys": 1,
                "busy_timeout": BUSY_TIMEOUT_MS,
                # FULL: a commit survives power loss, not only a killed process
                "synchronous": "full",
            },
        )
    elif parsed.scheme in ("postgresql", "postgres"):
        db = _postgres_database(parsed)
    else:
        raise ValueError(f"unsupported catalog URL {redact_url(url)!r}: use sqlite:///path or postgresql://…")
    catalog = Catalog(db, url)
    if migrate:
        catalog.migrate()
    return catalog
