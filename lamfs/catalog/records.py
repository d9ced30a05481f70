"""Plain frozen records: what leaves the catalog. No peewee here, so no lazy query can run on the
event loop or in another thread by accident."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

MAIN_BRANCH = 1
TRASH_BRANCH = -1
ROOT_DIR_ID = 1


@dataclass(frozen=True)
class StorageRecord:
    id: int
    root: str


@dataclass(frozen=True)
class DirectoryRecord:
    id: int
    parent_id: int | None
    name: str
    path: str  # '' for the root
    explicit: bool
    mtime_ns: int
    mode: int


@dataclass(frozen=True)
class ArtifactRecord:
    id: int
    uid: str
    key: str | None
    key_is_virtual: bool
    dir_id: int | None
    name: str | None
    description: str | None
    suffix: str
    kind: str | None
    otype: str | None
    size: int
    hash: str
    hash_type: str
    n_files: int | None
    n_observations: int | None
    version_tag: str | None
    is_latest: bool
    storage_id: int
    storage_key: str
    storage_etag: str | None
    branch: int
    created_at: datetime
    updated_at: datetime
    mtime_ns: int
    mode: int

    @property
    def stem_uid(self) -> str:
        return self.uid[:16]

    @property
    def is_folder(self) -> bool:
        return self.n_files is not None

    @property
    def is_trashed(self) -> bool:
        return self.branch == TRASH_BRANCH


@dataclass(frozen=True)
class FolderFileRecord:
    path: str  # relative to the folder artifact, '/'-separated
    size: int


@dataclass(frozen=True)
class IntentRecord:
    """A write that was started but not yet committed: used to recover after a crash."""

    id: int
    artifact_id: int | None
    storage_id: int
    storage_key: str
    new_hash: str
    new_size: int
    created_at: datetime
