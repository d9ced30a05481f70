"""Numbered, transactional, recorded schema migrations. Tests and production build the schema the
same way: `apply_migrations(db)`. Each migration is a list of portable SQL statements; `{pk}` and
`{ts}` expand per dialect; a `(dialect, sql)` pair runs on that dialect only ("sqlite" |
"postgresql"). Never edit a released migration: add the next number.

Several processes may migrate one catalog at once (two mounts starting together): SQLite
serialises them with BEGIN IMMEDIATE; PostgreSQL with an advisory lock held while migrating.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone

import peewee as pw

MIGRATIONS: list[tuple[int, str, list[str | tuple[str, str]]]] = [
    (
        1,
        "initial schema",
        [
            """CREATE TABLE storage_root (
                id {pk},
                root TEXT NOT NULL UNIQUE,
                created_at {ts} NOT NULL)""",
            """CREATE TABLE directory (
                id {pk},
                parent_id INTEGER REFERENCES directory(id),
                name TEXT NOT NULL,
                explicit BOOLEAN NOT NULL DEFAULT FALSE,
                mtime_ns BIGINT NOT NULL,
                mode INTEGER NOT NULL)""",
            # (parent, name) is the tree edge: lookups and listings are index scans
            "CREATE UNIQUE INDEX directory_parent_name ON directory (parent_id, name)",
            """CREATE TABLE artifact (
                id {pk},
                uid VARCHAR(20) NOT NULL UNIQUE,
                stem_uid VARCHAR(16) NOT NULL,
                key TEXT,
                key_is_virtual BOOLEAN NOT NULL DEFAULT TRUE,
                dir_id INTEGER REFERENCES directory(id),
                name TEXT,
                description TEXT,
                suffix TEXT NOT NULL DEFAULT '',
                kind TEXT,
                otype TEXT,
                size BIGINT NOT NULL,
                hash VARCHAR(86) NOT NULL,
                hash_type VARCHAR(16) NOT NULL,
                n_files BIGINT,
                n_observations BIGINT,
                version_tag TEXT,
                is_latest BOOLEAN NOT NULL DEFAULT TRUE,
                storage_id INTEGER NOT NULL REFERENCES storage_root(id),
                storage_key TEXT NOT NULL,
                storage_etag TEXT,
                branch INTEGER NOT NULL DEFAULT 1,
                created_at {ts} NOT NULL,
                updated_at {ts} NOT NULL,
                mtime_ns BIGINT NOT NULL,
                mode INTEGER NOT NULL)""",
            "CREATE INDEX artifact_stem_uid ON artifact (stem_uid)",
            "CREATE INDEX artifact_key ON artifact (key)",
            "CREATE INDEX artifact_hash ON artifact (hash)",
            # one artifact per storage object, whatever its state (trash still owns its bytes)
            "CREATE UNIQUE INDEX artifact_storage_key ON artifact (storage_id, storage_key)",
            # at most one live, latest artifact per path
            """CREATE UNIQUE INDEX artifact_live_path ON artifact (dir_id, name)
               WHERE branch = 1 AND is_latest = TRUE AND dir_id IS NOT NULL""",
            "CREATE INDEX artifact_dir ON artifact (dir_id)",
            """CREATE TABLE folder_file (
                id {pk},
                artifact_id INTEGER NOT NULL REFERENCES artifact(id) ON DELETE CASCADE,
                path TEXT NOT NULL,
                size BIGINT NOT NULL)""",
            "CREATE UNIQUE INDEX folder_file_path ON folder_file (artifact_id, path)",
            """CREATE TABLE intent (
                id {pk},
                artifact_id INTEGER,
                storage_id INTEGER NOT NULL REFERENCES storage_root(id),
                storage_key TEXT NOT NULL,
                new_hash VARCHAR(86) NOT NULL,
                new_size BIGINT NOT NULL,
                created_at {ts} NOT NULL)""",
            # the root directory: every top-level entry has parent_id = 1
            "INSERT INTO directory (id, parent_id, name, explicit, mtime_ns, mode) VALUES (1, NULL, '', TRUE, {now_ns}, 16877)",
            # an explicit id does not advance a PostgreSQL sequence: the next directory must get 2
            ("postgresql", "SELECT setval('directory_id_seq', (SELECT MAX(id) FROM directory))"),
        ],
    ),
    (
        2,
        "code-point key index for prefix filters on PostgreSQL",
        [
            # the default collation may be locale-aware; prefix ranges compare COLLATE "C" (SQLite's
            # artifact_key index is already binary)
            ("postgresql", 'CREATE INDEX artifact_key_c ON artifact (key COLLATE "C")'),
        ],
    ),
]

#: pg_advisory_lock key that serialises migrations ("lamfs" in ASCII)
PG_MIGRATION_LOCK = 0x6C616D6673


def _dialect(db: pw.Database) -> dict[str, str]:
    if isinstance(db, pw.PostgresqlDatabase):
        return {"dialect": "postgresql", "pk": "BIGSERIAL PRIMARY KEY", "ts": "TIMESTAMP WITH TIME ZONE"}
    return {"dialect": "sqlite", "pk": "INTEGER PRIMARY KEY AUTOINCREMENT", "ts": "TIMESTAMP"}


def apply_migrations(db: pw.Database, migration_model) -> list[int]:
    """Apply every migration not yet recorded, each in its own transaction. Returns those applied.
    Call with a connection held (the catalog's session): PostgreSQL's advisory lock is per session."""
    subs = dict(_dialect(db))
    postgres = subs["dialect"] == "postgresql"
    if postgres:
        db.execute_sql("SELECT pg_advisory_lock(%s)", (PG_MIGRATION_LOCK,))
    try:
        db.execute_sql(
            "CREATE TABLE IF NOT EXISTS lamfs_migration (id INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMP NOT NULL)"
        )
        applied: list[int] = []
        for number, name, statements in MIGRATIONS:
            with _write_txn(db):
                # checked inside the transaction: two processes racing to migrate apply each step once
                if migration_model.select().where(migration_model.id == number).exists():
                    continue
                for statement in statements:
                    if isinstance(statement, tuple):
                        only, statement = statement
                        if only != subs["dialect"]:
                            continue
                    db.execute_sql(statement.format(now_ns=time.time_ns(), **subs))
                # a naive UTC timestamp: the column has no time zone on either backend
                migration_model.create(id=number, name=name, applied_at=datetime.now(timezone.utc).replace(tzinfo=None))
                applied.append(number)
        return applied
    finally:
        if postgres:
            db.execute_sql("SELECT pg_advisory_unlock(%s)", (PG_MIGRATION_LOCK,))


def _write_txn(db: pw.Database):
    if isinstance(db, pw.SqliteDatabase):
        return db.atomic("IMMEDIATE")
    return db.atomic()
