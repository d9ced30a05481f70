"""Peewee models, built per database by `make_models(db)` so that two catalogs in one process
(tests, a CLI touching two instances) never share a binding. The schema itself is created by the
numbered migrations in `migrations.py`; these classes only map it. Only portable field types:
the same models run on SQLite and PostgreSQL.
"""
from __future__ import annotations

from types import SimpleNamespace

import peewee as pw


def make_models(db: pw.Database) -> SimpleNamespace:
    class Base(pw.Model):
        class Meta:
            database = db
            legacy_table_names = False

    class StorageRoot(Base):
        id = pw.AutoField()
        root = pw.TextField(unique=True)
        created_at = pw.DateTimeField()

        class Meta:
            table_name = "storage_root"

    class Directory(Base):
        id = pw.AutoField()
        parent = pw.ForeignKeyField("self", null=True, column_name="parent_id", backref="children")
        name = pw.TextField()
        explicit = pw.BooleanField(default=False)
        mtime_ns = pw.BigIntegerField()
        mode = pw.IntegerField()

        class Meta:
            table_name = "directory"

    class Artifact(Base):
        id = pw.AutoField()
        uid = pw.CharField(max_length=20, unique=True)
        stem_uid = pw.CharField(max_length=16, index=True)
        key = pw.TextField(null=True)
        key_is_virtual = pw.BooleanField(default=True)
        dir = pw.ForeignKeyField(Directory, null=True, column_name="dir_id")
        name = pw.TextField(null=True)
        description = pw.TextField(null=True)
        suffix = pw.TextField(default="")
        kind = pw.TextField(null=True)
        otype = pw.TextField(null=True)
        size = pw.BigIntegerField()
        hash = pw.CharField(max_length=86)
        hash_type = pw.CharField(max_length=16)
        n_files = pw.BigIntegerField(null=True)
        n_observations = pw.BigIntegerField(null=True)
        version_tag = pw.TextField(null=True)
        is_latest = pw.BooleanField(default=True)
        storage = pw.ForeignKeyField(StorageRoot, column_name="storage_id")
        storage_key = pw.TextField()
        storage_etag = pw.TextField(null=True)
        branch = pw.IntegerField(default=1)
        created_at = pw.DateTimeField()
        updated_at = pw.DateTimeField()
        mtime_ns = pw.BigIntegerField()
        mode = pw.IntegerField()

        class Meta:
            table_name = "artifact"

    class FolderFile(Base):
        id = pw.AutoField()
        artifact = pw.ForeignKeyField(Artifact, column_name="artifact_id", on_delete="CASCADE")
        path = pw.TextField()
        size = pw.BigIntegerField()

        class Meta:
            table_name = "folder_file"

    class Intent(Base):
        id = pw.AutoField()
        artifact_id = pw.IntegerField(null=True)
        storage = pw.ForeignKeyField(StorageRoot, column_name="storage_id")
        storage_key = pw.TextField()
        new_hash = pw.CharField(max_length=86)
        new_size = pw.BigIntegerField()
        created_at = pw.DateTimeField()

        class Meta:
            table_name = "intent"

    class Migration(Base):
        id = pw.IntegerField(primary_key=True)
        name = pw.TextField()
        applied_at = pw.DateTimeField()

        class Meta:
            table_name = "lamfs_migration"

    return SimpleNamespace(
        StorageRoot=StorageRoot,
        Directory=Directory,
        Artifact=Artifact,
        FolderFile=FolderFile,
        Intent=Intent,
        Migration=Migration,
    )
