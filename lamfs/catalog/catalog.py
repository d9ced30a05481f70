"""The catalog: the only place that talks peewee. Every public method runs its own query or
transaction and returns frozen records (records.py). Methods block (SQLite/PostgreSQL I/O): call
them from worker threads, never on the trio loop.

The tree is modelled as edges: a directory row is (parent_id, name); an artifact with a key has
(dir_id, name). Lookups and listings are index scans; a directory rename moves one edge and
rewrites the denormalised `key` column of everything below it in the same transaction.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator
from urllib.parse import parse_qs, urlparse

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
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def redact_url(url: str) -> str:
    """A catalog URL fit for logs and messages: no password."""
    parsed = urlparse(url)
    if parsed.password:
        netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@")
        return parsed._replace(netloc=netloc).geturl()
    return url


class Catalog:
    def __init__(self, db: pw.Database, url: str):
        self.db = db
        self.url = url
        self.m = make_models(db)
        self.is_sqlite = isinstance(db, pw.SqliteDatabase)
        self._lock = threading.Lock()

    # -- connection & transactions -------------------------------------------------------

    def migrate(self) -> list[int]:
        return apply_migrations(self.db, self.m.Migration)

    def close(self) -> None:
        if not self.db.is_closed():
            self.db.close()

    @contextmanager
    def transaction(self):
        """A write transaction. SQLite: BEGIN IMMEDIATE, so two writers queue on the busy timeout
        instead of deadlocking on a lock upgrade."""
        txn = self.db.atomic("IMMEDIATE") if self.is_sqlite else self.db.atomic()
        with txn:
            yield

    def retrying(self, fn, *args, attempts: int = 8, **kwargs):
        """Run fn in a transaction, retrying transient lock/serialization/connection errors with
        backoff; users never see 'database is locked'."""
        delay = 0.05
        for attempt in range(attempts):
            try:
                with self.transaction():
                    return fn(*args, **kwargs)
            except (pw.OperationalError, pw.InterfaceError) as exc:
                text = str(exc).lower()
                transient = any(
                    word in text
                    for word in ("locked", "busy", "could not serialize", "deadlock", "connection", "closed")
                )
                if not transient or attempt == attempts - 1:
                    if transient:
                        raise CatalogBusy(f"catalog busy after {attempts} attempts: {exc}") from exc
                    raise
                log.debug("catalog transient error (%s); retrying", exc)
                if not self.is_sqlite:
                    self.db.close()  # drop a broken connection; the next query reconnects
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 2.0)

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

    def storage_roots(self) -> list[StorageRecord]:
        S = self.m.StorageRoot
        return [StorageRecord(r.id, r.root) for r in S.select().order_by(S.id)]

    # -- artifact queries -----------------------------------------------------------------

    def artifact_by_id(self, artifact_id: int) -> ArtifactRecord:
        A = self.m.Artifact
        row = A.get_or_none(A.id == artifact_id)
        if row is None:
            raise NotFound(f"no artifact with id {artifact_id}")
        return self._artifact(row)

    def artifact_by_uid(self, uid: str) -> ArtifactRecord | None:
        A = self.m.Artifact
        row = A.get_or_none(A.uid == uid)
        return None if row is None else self._artifact(row)

    def artifact_by_key(self, key: str, *, include_trashed: bool = False) -> ArtifactRecord | None:
        """The latest artifact with this exact key (case-exact, no wildcards)."""
        A = self.m.Artifact
        q = A.select().where((A.key == key) & (A.is_latest == True))  # noqa: E712
        if not include_trashed:
            q = q.where(A.branch == MAIN_BRANCH)
        row = q.order_by(A.branch.desc(), A.id.desc()).first()
        return None if row is None else self._artifact(row)

    def artifacts_by_hash(self, hash_: str) -> list[ArtifactRecord]:
        A = self.m.Artifact
        rows = A.select().where((A.hash == hash_) & (A.branch == MAIN_BRANCH)).order_by(A.id)
        return [self._artifact(r) for r in rows]

    def artifact_by_storage_key(self, storage_id: int, storage_key: str) -> ArtifactRecord | None:
        A = self.m.Artifact
        row = A.get_or_none((A.storage_id == storage_id) & (A.storage_key == storage_key))
        return None if row is None else self._artifact(row)

    def versions(self, stem_uid: str) -> list[ArtifactRecord]:
        A = self.m.Artifact
        return [self._artifact(r) for r in A.select().where(A.stem_uid == stem_uid).order_by(A.uid)]

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
            # substr equality, not LIKE: '%', '_' and '\' in keys are plain characters, case-exact
            q = q.where(pw.fn.SUBSTR(A.key, 1, len(key_prefix)) == key_prefix)
        if trashed_only:
            q = q.where(A.branch != MAIN_BRANCH)
        elif not include_trashed:
            q = q.where(A.branch == MAIN_BRANCH)
        if latest_only:
            q = q.where(A.is_latest == True)  # noqa: E712
        return [self._artifact(r) for r in q.order_by(A.id)]

    def all_artifacts(self) -> Iterator[ArtifactRecord]:
        A = self.m.Artifact
        for row in A.select().order_by(A.id).iterator():
            yield self._artifact(row)

    # -- artifact writes (call inside transaction() or via retrying) ------------------------

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
        D = self.m.Directory
        if D.select().where((D.parent_id == dir_id) & (D.name == name)).exists():
            raise IsADirectory(f"{key!r} is a directory")
        existing = self.live_child_artifact(dir_id, name)
        if existing is not None and existing.id != moving_id:
            raise AlreadyExists(f"an artifact already exists at {key!r}")
        return dir_id, name

    def live_child_artifact(self, dir_id: int, name: str) -> ArtifactRecord | None:
        A = self.m.Artifact
        row = A.get_or_none(
            (A.dir_id == dir_id) & (A.name == name) & (A.branch == MAIN_BRANCH) & (A.is_latest == True)  # noqa: E712
        )
        return None if row is None else self._artifact(row)

    # -- directories ------------------------------------------------------------------------

    def dir_by_id(self, dir_id: int) -> DirectoryRecord:
        D = self.m.Directory
        row = D.get_or_none(D.id == dir_id)
        if row is None:
            raise NotFound(f"no directory with id {dir_id}")
        return self._dir(row, self.dir_path(dir_id))

    def dir_path(self, dir_id: int) -> str:
        D = self.m.Directory
        parts = []
        while dir_id != ROOT_DIR_ID:
            row = D.get_by_id(dir_id)
            parts.append(row.name)
            dir_id = row.parent_id
        return "/".join(reversed(parts))

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

    def child_dir(self, dir_id: int, name: str) -> DirectoryRecord | None:
        D = self.m.Directory
        row = D.get_or_none((D.parent_id == dir_id) & (D.name == name))
        return None if row is None else self._dir(row, join_key(self.dir_path(dir_id), name))

    def ensure_dir(self, path: str, *, explicit: bool = False) -> DirectoryRecord:
        """Create the directory and its parents if missing (inside the caller's transaction)."""
        D = self.m.Directory
        dir_id, row = ROOT_DIR_ID, None
        parts = path.split("/") if path else []
        for i, part in enumerate(parts):
            row = D.get_or_none((D.parent_id == dir_id) & (D.name == part))
            if row is None:
                if self.live_child_artifact(dir_id, part) is not None:
                    raise NotADirectory(f"{'/'.join(parts[: i + 1])!r} is a file, not a directory")
                last = i == len(parts) - 1
                row = D.create(parent=dir_id, name=part, explicit=explicit and last,
                               mtime_ns=time.time_ns(), mode=DIR_MODE)
            elif explicit and i == len(parts) - 1 and not row.explicit:
                D.update(explicit=True).where(D.id == row.id).execute()
            dir_id = row.id
        if row is None:
            return self.dir_by_id(ROOT_DIR_ID)
        return self._dir(D.get_by_id(dir_id), path)

    def list_dir(self, dir_id: int) -> tuple[list[DirectoryRecord], list[ArtifactRecord]]:
        D, A = self.m.Directory, self.m.Artifact
        base = self.dir_path(dir_id)
        dirs = [self._dir(r, join_key(base, r.name)) for r in D.select().where(D.parent_id == dir_id).order_by(D.name)]
        arts = [
            self._artifact(r)
            for r in A.select()
            .where((A.dir_id == dir_id) & (A.branch == MAIN_BRANCH) & (A.is_latest == True))  # noqa: E712
            .order_by(A.name)
        ]
        return dirs, arts

    def dir_is_empty(self, dir_id: int) -> bool:
        D, A = self.m.Directory, self.m.Artifact
        if D.select().where(D.parent_id == dir_id).exists():
            return False
        return not A.select().where(
            (A.dir_id == dir_id) & (A.branch == MAIN_BRANCH) & (A.is_latest == True)  # noqa: E712
        ).exists()

    def remove_dir(self, dir_id: int) -> None:
        if dir_id == ROOT_DIR_ID:
            raise NotEmpty("cannot remove the root directory")
        if not self.dir_is_empty(dir_id):
            raise NotEmpty(f"directory {self.dir_path(dir_id)!r} is not empty")
        A, D = self.m.Artifact, self.m.Directory
        # trashed / old versions keep their key but let go of the edge
        A.update(dir_id=None, name=None).where(A.dir_id == dir_id).execute()
        D.delete().where(D.id == dir_id).execute()

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

    def set_dir_attrs(self, dir_id: int, *, mtime_ns: int | None = None, mode: int | None = None) -> None:
        D = self.m.Directory
        fields = {}
        if mtime_ns is not None:
            fields["mtime_ns"] = mtime_ns
        if mode is not None:
            fields["mode"] = mode
        if fields:
            D.update(explicit=True, **fields).where(D.id == dir_id).execute()

    def descendant_dirs(self, dir_id: int) -> list[int]:
        D = self.m.Directory
        found, frontier = [dir_id], [dir_id]
        while frontier:
            frontier = [r.id for r in D.select(D.id).where(D.parent_id.in_(frontier))]
            found.extend(frontier)
        return found

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
        changed = 0
        below = self.descendant_dirs(dir_id)
        for row in A.select(A.id, A.key).where(A.dir_id.in_(below)):
            new_key = new_path + row.key[len(old_path):]
            A.update(key=new_key, updated_at=utcnow()).where(A.id == row.id).execute()
            changed += 1
        if old_parent != new_parent_id:
            self.prune_implicit_dirs(old_parent)
        return changed

    # -- folder manifests -------------------------------------------------------------------

    def set_folder_files(self, artifact_id: int, files: Iterable[tuple[str, int]]) -> None:
        F = self.m.FolderFile
        F.delete().where(F.artifact_id == artifact_id).execute()
        rows = [{"artifact": artifact_id, "path": p, "size": s} for p, s in files]
        for start in range(0, len(rows), 500):
            F.insert_many(rows[start:start + 500]).execute()

    def folder_files(self, artifact_id: int) -> list[FolderFileRecord]:
        F = self.m.FolderFile
        return [FolderFileRecord(r.path, r.size) for r in F.select().where(F.artifact_id == artifact_id).order_by(F.path)]

    # -- intents (write-ahead records for crash recovery) -----------------------------------

    def add_intent(self, *, artifact_id: int | None, storage_id: int, storage_key: str, new_hash: str, new_size: int) -> int:
        row = self.m.Intent.create(artifact_id=artifact_id, storage=storage_id, storage_key=storage_key,
                                   new_hash=new_hash, new_size=new_size, created_at=utcnow())
        return row.id

    def remove_intent(self, intent_id: int) -> None:
        I = self.m.Intent
        I.delete().where(I.id == intent_id).execute()

    def intents(self) -> list[IntentRecord]:
        I = self.m.Intent
        return [IntentRecord(r.id, r.artifact_id, r.storage_id, r.storage_key, r.new_hash, r.new_size, _aware(r.created_at))
                for r in I.select().order_by(I.id)]


def open_catalog(url: str, *, migrate: bool = True) -> Catalog:
    """`sqlite:///abs/path.db` (WAL, foreign keys, busy timeout) or `postgresql://user:pw@host:port/db`."""
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
        from playhouse.pool import PooledPostgresqlDatabase

        query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        db = PooledPostgresqlDatabase(
            (parsed.path or "/").lstrip("/") or "postgres",
            user=parsed.username,
            password=parsed.password,
            host=parsed.hostname or "127.0.0.1",
            port=parsed.port or 5432,
            max_connections=int(query.pop("max_connections", 16)),
            stale_timeout=300,
            **query,
        )
    else:
        raise ValueError(f"unsupported catalog URL {redact_url(url)!r}: use sqlite:///path or postgresql://…")
    catalog = Catalog(db, url)
    if migrate:
        catalog.migrate()
    return catalog
