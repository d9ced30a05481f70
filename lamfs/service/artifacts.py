"""The artifact lifecycle. Thread-safe, synchronous, blocking (storage + catalog I/O): the mount
calls it from worker threads.

Commit ordering, everywhere: new bytes are stored before the catalog commit that points to them;
old objects are deleted only after the commit that stops referencing them. So a row always names an
object holding exactly its bytes, and a crash at any point leaves the old state or the new one.

A replace never writes over the object its row names. Its bytes go to a fresh *staged* key (under
STAGED_PREFIX, lamfs's own); one commit switches the row to it and records an intent "these bytes
belong at K" (K: the artifact's home, `.lamindb/{uid}{suffix}` or its real key). Then the bytes are
*settled*: copied to K server-side (a hard link on local roots), the row switched to K in a
compare-and-set commit that also drops the intent, and the staged object deleted. A crash before
the first commit leaves an unreferenced staged object; after it, a pending settle. Healing
(service/healing.py) finishes both, with no human step.
"""
from __future__ import annotations

import logging
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..cache.copies import CopyCache, Identity, copy_into
from ..catalog import MAIN_BRANCH, TRASH_BRANCH, ArtifactRecord, Catalog
from ..errors import AlreadyExists, CatalogBusy, InvalidKey, IsADirectory, NotFound, SourceChanged, StorageError
from ..hashing import ContentHash, hash_path
from ..keys import AUTO_KEY_PREFIX, extract_suffix, replace_suffix, validate_key
from ..storage import Storage
from ..uids import new_uid, next_version_uid
from .crashpoints import crash_point

log = logging.getLogger("lamfs")

# where a replace uploads its bytes before the commit that makes them the artifact's: lamfs's own
# prefix, so nothing a crash leaves here is mistaken for a user's file
STAGED_PREFIX = f"{AUTO_KEY_PREFIX}.lamfs/staged/"


def staged_key(uid: str, suffix: str) -> str:
    """A fresh staged key for new bytes of artifact `uid` (the nonce keeps two writers apart)."""
    return f"{STAGED_PREFIX}{uid}-{secrets.token_hex(6)}{suffix}"


def is_staged(storage_key: str) -> bool:
    return storage_key.startswith(STAGED_PREFIX)


def staged_uid(storage_key: str) -> str | None:
    """The artifact uid a staged key was made for."""
    if not is_staged(storage_key):
        return None
    return storage_key[len(STAGED_PREFIX):].split("/", 1)[0].split("-", 1)[0] or None


def auto_key(uid: str, suffix: str) -> str:
    """The storage key of an auto-managed artifact: its home under `.lamindb/`."""
    return f"{AUTO_KEY_PREFIX}{uid}{suffix}"


def settles_to(record: ArtifactRecord, intent) -> bool:
    """Whether `intent` is a pending settle of `record`: its bytes, committed elsewhere, still to be
    moved to the intent's key (the one rule home_key, settle_locked, healing and fsck share)."""
    return (intent.storage_key != record.storage_key
            and (intent.new_hash, intent.new_size) == (record.hash, record.size))


# move(): how often a rename looks again at a target that another process created or deleted meanwhile
MOVE_ATTEMPTS = 8


class TargetChanged(NotFound):
    """The file a rename was about to replace was deleted meanwhile (move() then looks again)."""


DATAFRAME_SUFFIXES = {".csv", ".tsv", ".parquet"}
ANNDATA_SUFFIXES = {".h5ad", ".anndata.zarr"}


@dataclass
class Draft:
    """A new artifact, hashed and placed, not yet saved."""

    source: Path
    uid: str
    key: str | None
    key_is_virtual: bool
    storage_key: str
    suffix: str
    content: ContentHash
    in_place: bool
    description: str | None = None
    kind: str | None = None
    otype: str | None = None
    n_observations: int | None = None
    revises: ArtifactRecord | None = None
    cleanup: list[Path] = field(default_factory=list)
    mtime_ns: int | None = None  # the file's mtime to record (the mount passes the writer's); None: now


@dataclass
class ReplaceDraft:
    record: ArtifactRecord
    source: Path
    content: ContentHash
    suffix: str
    key: str | None
    storage_key: str
    message: str | None
    kind: str | None
    otype: str | None
    n_observations: int | None
    cleanup: list[Path] = field(default_factory=list)
    mtime_ns: int | None = None  # as in Draft

    @property
    def old_storage_key(self) -> str | None:
        return self.record.storage_key if self.record.storage_key != self.storage_key else None


def _check_unchanged(unchanged) -> None:
    if unchanged is not None and not unchanged():
        raise SourceChanged("the file changed while it was being stored; nothing was committed")


def infer_otype(source: Path, suffix: str) -> str | None:
    if suffix in DATAFRAME_SUFFIXES:
        return "DataFrame"
    if suffix in ANNDATA_SUFFIXES:
        return "AnnData"
    if source.is_dir() and suffix.endswith(".zarr"):
        attrs = [source / "zarr.json", source / ".zattrs"]
        for attr in attrs:
            try:
                if '"anndata"' in attr.read_text():
                    return "AnnData"
            except OSError:
                continue
    return None


class ArtifactService:
    def __init__(self, catalog: Catalog, storage: Storage, cache_dir: str | Path, *, use_virtual_keys: bool = True):
        self.catalog = catalog
        self.storage = storage
        self.storage_id = catalog.storage_root(storage.root).id
        self.copies = CopyCache(cache_dir)
        self.use_virtual_keys = use_virtual_keys

    # -- lookups ---------------------------------------------------------------------------

    def get(self, *, uid: str | None = None, key: str | None = None, include_trashed: bool = False) -> ArtifactRecord:
        if uid is not None:
            rec = self.catalog.artifact_by_uid(uid) if len(uid) == 20 else self._by_stem(uid)
            if rec is None or (rec.is_trashed and not include_trashed):
                raise NotFound(f"no artifact with uid {uid!r}")
            return rec
        if key is not None:
            rec = self.catalog.artifact_by_key(key, include_trashed=include_trashed)
            if rec is None:
                raise NotFound(f"no artifact with key {key!r}")
            return rec
        raise InvalidKey("pass key= or uid=")

    def _by_stem(self, stem: str) -> ArtifactRecord | None:
        versions = [v for v in self.catalog.versions(stem[:16]) if v.is_latest]
        return versions[0] if versions else None

    def url(self, record: ArtifactRecord) -> str:
        return self.storage.url(record.storage_key)

    def is_auto_managed(self, record: ArtifactRecord) -> bool:
        return self.home_key(record).startswith(AUTO_KEY_PREFIX)

    def refresh(self, record: ArtifactRecord) -> ArtifactRecord:
        return self.catalog.artifact_by_id(record.id)

    # -- where a source lives ------------------------------------------------------------------

    def storage_key_of(self, source) -> str | None:
        """The storage key if `source` (a path, URL or StoragePath) lies inside this storage root."""
        text = str(source)
        if "://" in text and not text.startswith("file://"):
            root = self.storage.root.rstrip("/") + "/"
            return text[len(root):] if text.startswith(root) else None
        if self.storage.is_local:
            path = Path(text.removeprefix("file://")).expanduser().resolve()
            root = Path(self.storage.root).resolve()
            if path != root and path.is_relative_to(root):
                return path.relative_to(root).as_posix()
        return None

    def is_in_any_storage(self, source) -> bool:
        text = str(source)
        if "://" in text and not text.startswith("file://"):
            return True
        path = Path(text.removeprefix("file://")).expanduser().resolve()
        for root in self.catalog.storage_roots():
            if "://" not in root.root and path.is_relative_to(Path(root.root).resolve()):
                return True
        return False

    # -- creating ------------------------------------------------------------------------------

    def draft(
        self, source, *, key: str | None = None, description: str | None = None, revises: ArtifactRecord | None = None,
        kind: str | None = None, otype: str | None = None, n_observations: int | None = None,
        virtual: bool | None = None, suffix: str | None = None, cleanup: list[Path] | None = None,
        dedup_live_only: bool = False,
    ) -> Draft | ArtifactRecord:
        """Hash and place a new artifact. Returns the existing record instead when the same bytes
        are already registered with no key or the same key (LaminDB's dedup rule: that may be an older,
        non-latest version). `dedup_live_only` (the mount: a file written at a path must be that path's
        live artifact afterwards) counts only the live, latest artifact at `key` as the same."""
        if key is not None:
            validate_key(key)
        virtual = self.use_virtual_keys if virtual is None else virtual
        in_storage = self.storage_key_of(source)
        if in_storage is not None:
            existing = self.catalog.artifact_by_storage_key(self.storage_id, in_storage)
            if existing is not None:
                return existing
            local, cleanup_paths = self._fetch_for_hashing(in_storage)
        else:
            local = Path(str(source)).expanduser()
            if not local.exists():
                raise NotFound(f"path does not exist: {source}")
            cleanup_paths = []
        cleanup_paths += list(cleanup or [])
        content = hash_path(local)
        for rec in self.catalog.artifacts_by_hash(content.hash, key=key):  # at this key only, when given
            if dedup_live_only and not (rec.is_latest and not rec.is_trashed):
                continue
            self._cleanup(cleanup_paths)
            return rec
        if suffix is None:
            name = key.rsplit("/", 1)[-1] if key is not None else local.name
            suffix = extract_suffix(name) if key is not None else extract_suffix(Path(str(source)).name)
        if revises is None and key is not None:
            revises = self.catalog.artifact_by_key(key)
        uid = next_version_uid(self._latest_version(revises).uid) if revises is not None else new_uid()
        if in_storage is not None:
            if key is None:
                key, virtual = in_storage, False
            storage_key = in_storage
        elif key is None or virtual:
            storage_key = auto_key(uid, suffix)
        else:
            storage_key = key
            if revises is not None:
                raise AlreadyExists(f"an artifact with real key {key!r} exists: use artifact.replace() to change its bytes")
        return Draft(
            source=local, uid=uid, key=key, key_is_virtual=bool(virtual) if key is not None else True,
            storage_key=storage_key, suffix=suffix, content=content, in_place=in_storage is not None,
            description=description, kind=kind, otype=otype or infer_otype(local, suffix),
            n_observations=n_observations, revises=revises, cleanup=cleanup_paths,
        )

    def _latest_version(self, record: ArtifactRecord) -> ArtifactRecord:
        return max(self.catalog.versions(record.stem_uid), key=lambda r: r.uid)

    def _fetch_for_hashing(self, storage_key: str) -> tuple[Path, list[Path]]:
        local = self.storage.local_path(storage_key)
        if local is not None:
            if not local.exists():
                raise NotFound(f"path does not exist: {self.storage.url(storage_key)}")
            return local, []
        tmpdir = Path(tempfile.mkdtemp(prefix="lamfs-hash-"))
        target = tmpdir / Path(storage_key).name
        self._download(storage_key, target, is_folder=None)
        return target, [tmpdir]

    def save(self, draft: Draft, *, keep_copy: bool = True, progress=None, unchanged=None) -> ArtifactRecord:
        """`progress(bytes_done_total)` is called as the upload proceeds (CLI progress bars).
        `unchanged()`, if given, is asked inside the commit whether the source is still what was hashed
        and uploaded (the mount's staging copy may be written meanwhile): if not, SourceChanged and
        nothing is committed."""
        try:
            return self._save(draft, keep_copy, progress, unchanged)
        finally:
            self._cleanup(draft.cleanup)

    def _save(self, draft: Draft, keep_copy: bool, progress=None, unchanged=None) -> ArtifactRecord:
        is_folder = draft.source.is_dir()
        intent_id = None
        if not draft.in_place:
            if not draft.key_is_virtual and draft.key is not None:
                self._refuse_unregistered_object(draft.storage_key, is_folder)
            # an intent with no artifact marks the upload as ours until its commit: a crash in between
            # leaves an object healing can tell from a user's file (and delete once it is old enough
            # that no live writer can still commit it)
            intent_id = self.catalog.retrying(
                self.catalog.add_intent, artifact_id=None, storage_id=self.storage_id, storage_key=draft.storage_key,
                new_hash=draft.content.hash, new_size=draft.content.size)
            try:
                files, etag = self._upload_with_etag(draft.source, draft.storage_key, progress)
            except BaseException:
                self.delete_object(draft.storage_key, is_folder)
                self.catalog.retrying(self.catalog.remove_intent, intent_id)
                raise
            crash_point("create.uploaded")
        else:
            files, etag = (self._manifest(draft.source) if is_folder else []), None

        def commit() -> ArtifactRecord:
            _check_unchanged(unchanged)
            if draft.revises is not None:
                for version in self.catalog.versions(draft.revises.stem_uid):
                    if version.is_latest:
                        self.catalog.update_artifact(version.id, is_latest=False)
            rec = self.catalog.insert_artifact(
                uid=draft.uid, key=draft.key, key_is_virtual=draft.key_is_virtual, description=draft.description,
                suffix=draft.suffix, kind=draft.kind, otype=draft.otype, size=draft.content.size,
                hash=draft.content.hash, hash_type=draft.content.hash_type, n_files=draft.content.n_files,
                n_observations=draft.n_observations, storage_id=self.storage_id, storage_key=draft.storage_key,
                storage_etag=None if is_folder else (etag or self._etag(draft.storage_key)),
                **({"mtime_ns": draft.mtime_ns} if draft.mtime_ns else {}),
            )
            if is_folder:
                self.catalog.set_folder_files(rec.id, files)
            if intent_id is not None:
                self.catalog.remove_intent(intent_id)
            return rec

        try:
            record = self.catalog.retrying(commit)
        except BaseException:
            if not draft.in_place:
                self.delete_object(draft.storage_key, is_folder)  # ours, never referenced
                try:
                    self.catalog.retrying(self.catalog.remove_intent, intent_id)
                except CatalogBusy:
                    pass  # healing drops it later
            raise
        log.info("saved %s (%s, %d bytes)", record.key or record.uid, record.uid, record.size)
        if keep_copy:
            self._cache_after_save(record, draft.source)
        return record

    def _refuse_unregistered_object(self, storage_key: str, is_folder: bool) -> None:
        # a real key would overwrite whatever object sits there; never destroy bytes we do not own
        owner = self.catalog.artifact_by_storage_key(self.storage_id, storage_key)
        present = self.storage.exists(storage_key) or (is_folder and self._has_prefix(storage_key))
        if owner is None and present:
            raise AlreadyExists(
                f"{self.storage.url(storage_key)} exists in storage but is not registered; register it with "
                f"Artifact(path_in_storage, key=...) or choose another key"
            )

    def _has_prefix(self, storage_key: str) -> bool:
        return next(iter(self.storage.list(storage_key + "/")), None) is not None

    # -- replacing -----------------------------------------------------------------------------

    def draft_replace(
        self, record: ArtifactRecord, source, *, suffix: str | None = None, kind: str | None = None,
        otype: str | None = None, n_observations: int | None = None, cleanup: list[Path] | None = None,
    ) -> ReplaceDraft | None:
        """Validate and hash a replacement. None when the bytes are the same as now."""
        cleanup = list(cleanup or [])
        if self.is_in_any_storage(source):
            self._cleanup(cleanup)
            raise ValueError(f"Can only replace with a local path not in any Storage. Got: {source}")
        local = Path(str(source)).expanduser()
        if not local.exists():
            self._cleanup(cleanup)
            raise NotFound(f"path does not exist: {source}")
        if record.is_folder and not local.is_dir():
            self._cleanup(cleanup)
            raise IsADirectory("It is not allowed to replace a folder with a file.")
        if not record.is_folder and local.is_dir():
            self._cleanup(cleanup)
            raise IsADirectory("It is not allowed to replace a file with a folder.")
        content = hash_path(local)
        if content.hash == record.hash and content.size == record.size:
            self._cleanup(cleanup)
            return None
        new_suffix = extract_suffix(local.name) if suffix is None else suffix
        key, storage_key, message = record.key, self.home_key(record), None
        if new_suffix != record.suffix:
            if key is not None:
                key = replace_suffix(key, record.suffix, new_suffix)
            storage_key = self._home_with_suffix(record, new_suffix)
            if not self.is_auto_managed(record):
                if record.key_is_virtual and record.key is not None:
                    message = (
                        f"replacing the file will replace key '{record.key}' with '{key}', _real_key "
                        f"'{record.storage_key}' with '{storage_key}' and delete '{record.storage_key}' upon `save()`"
                    )
                else:
                    message = (
                        f"replacing the file will replace key '{record.key}' with '{key}' and delete "
                        f"'{record.storage_key}' upon `save()`"
                    )
        return ReplaceDraft(
            record=record, source=local, content=content, suffix=new_suffix, key=key, storage_key=storage_key,
            message=message, kind=kind or record.kind, otype=otype or record.otype,
            n_observations=n_observations if n_observations is not None else record.n_observations, cleanup=cleanup,
        )

    def replace(self, draft: ReplaceDraft, *, keep_copy: bool = True, unchanged=None) -> ArtifactRecord:
        """`unchanged`: as in save()."""
        try:
            # one writer of this artifact's object at a time, also across mounts sharing the catalog:
            # otherwise two uploads to one storage key can leave the object and the row disagreeing
            with self.catalog.write_lock(draft.record.id) as still_locked:
                return self._replace(draft, keep_copy, still_locked, unchanged)
        finally:
            self._cleanup(draft.cleanup)

    def commit_file(self, path: Path, *, over: ArtifactRecord | None = None, key: str | None = None,
                    mtime_ns: int | None = None, unchanged=None) -> ArtifactRecord:
        """Store a finished local file (a mount's staging copy; moved into storage, not copied): as the
        new bytes of `over` (a replace; the same bytes change nothing), or else as the file at `key` (a
        save; an identical live artifact there is reused). `mtime_ns` is the file's modification time,
        recorded in the same commit; `unchanged` as in save(). What the mount does on close and write-back
        recovery does later."""
        if over is None:
            # another mount may have created this file since ours was opened: then this close replaces
            # it (last commit wins, as between two replaces) instead of failing or forking a version
            over = self._live_file_at(key)
        if over is not None:
            rec = self._replace_file(path, over, mtime_ns, unchanged)
        else:
            result = self.draft(path, key=key, suffix=extract_suffix(key.rsplit("/", 1)[-1]), dedup_live_only=True)
            if isinstance(result, ArtifactRecord):
                rec = result
            else:
                if mtime_ns:
                    result.mtime_ns = mtime_ns
                try:
                    rec = self.save(result, keep_copy=False, unchanged=unchanged)
                except AlreadyExists:  # lost the race by a hair: the winner's row is there now
                    over = self._live_file_at(key)
                    if over is None:
                        raise
                    rec = self._replace_file(path, over, mtime_ns, unchanged)
        if mtime_ns and rec.mtime_ns != mtime_ns:
            rec = self.set_attrs(rec, mtime_ns=mtime_ns)
        return rec

    def _home_with_suffix(self, record: ArtifactRecord, suffix: str) -> str:
        """The home key `record`'s bytes get when a replace changes its suffix to `suffix`."""
        if self.is_auto_managed(record):
            return auto_key(record.uid, suffix)
        return replace_suffix(self.home_key(record), record.suffix, suffix)

    def _live_file_at(self, key: str | None) -> ArtifactRecord | None:
        rec = self.catalog.artifact_by_key(key) if key is not None else None
        return rec if rec is not None and not rec.is_folder else None

    def _replace_file(self, path: Path, over: ArtifactRecord, mtime_ns: int | None, unchanged=None) -> ArtifactRecord:
        draft = self.draft_replace(over, path, suffix=over.suffix)
        if draft is None:
            return over
        if mtime_ns:
            draft.mtime_ns = mtime_ns
        return self.replace(draft, keep_copy=False, unchanged=unchanged)

    def _replace(self, draft: ReplaceDraft, keep_copy: bool, still_locked=lambda: None, unchanged=None) -> ArtifactRecord:
        old = self.settle_locked(draft.record.id, still_locked)  # a pending settle first: one home at a time
        is_folder = old.is_folder
        old_home = self.home_key(old)
        # where the new bytes belong once settled, from the row as it is now that we hold the lock (the
        # draft's view may predate a concurrent rename over this file, which changed the row's object)
        home = old_home if draft.suffix == old.suffix else self._home_with_suffix(old, draft.suffix)
        if home != old_home:  # a suffix change: the artifact gets a new home
            owner = self.catalog.artifact_by_storage_key(self.storage_id, home)
            if owner is not None and owner.id != old.id:
                raise AlreadyExists(f"storage key {home!r} belongs to artifact {owner.uid}")
            if not old.key_is_virtual or not self.is_auto_managed(old):
                self._refuse_unregistered_object(home, is_folder)
        if draft.key is not None and draft.key != old.key:
            other = self.catalog.artifact_by_key(draft.key)
            if other is not None and other.id != old.id:
                raise AlreadyExists(f"an artifact already exists at {draft.key!r}")
        staged = staged_key(old.uid, draft.suffix)
        try:
            files, etag = self._upload_with_etag(draft.source, staged)
        except BaseException:
            self.delete_object(staged, is_folder)  # a partial upload no row references
            raise
        crash_point("replace.uploaded")

        def commit() -> ArtifactRecord:
            still_locked()
            _check_unchanged(unchanged)
            rec = self.catalog.update_artifact(
                old.id, key=draft.key, suffix=draft.suffix, size=draft.content.size, hash=draft.content.hash,
                hash_type=draft.content.hash_type, n_files=draft.content.n_files, storage_key=staged,
                storage_etag=None if is_folder else (etag or self._etag(staged)), kind=draft.kind,
                otype=draft.otype, n_observations=draft.n_observations,
                mtime_ns=draft.mtime_ns or time.time_ns(),
            )
            if is_folder:
                self.catalog.set_folder_files(rec.id, files)
            self.catalog.add_intent(artifact_id=old.id, storage_id=self.storage_id, storage_key=home,
                                    new_hash=draft.content.hash, new_size=draft.content.size)
            return rec

        try:
            crash_point("replace.commit")
            record = self.catalog.retrying(commit)
        except BaseException:
            self.delete_object(staged, is_folder)  # never committed: the old row and object stand
            raise
        crash_point("replace.committed")
        # the row no longer names the old home when the suffix changed: its bytes may go now
        if home != old_home:
            self.delete_object(old.storage_key, is_folder)
        record = self._settle_quietly(record.id, still_locked)
        had_copy = not self.storage.is_local and self.copies.exists(self.cache_rel(record))
        self._drop_cache(old)
        if keep_copy:
            self._cache_after_save(record, draft.source, existed=had_copy)
        log.info("replaced %s (%s): %d bytes, hash %s", record.key or record.uid, record.uid, record.size, record.hash)
        return record

    # -- settling: bytes committed elsewhere move to their home key -------------------------------

    def home_key(self, record: ArtifactRecord) -> str:
        """Where `record`'s bytes belong: its storage key, or, while a settle is pending, the key
        its intent names."""
        for intent in self.catalog.intents(record.id):
            if settles_to(record, intent):
                return intent.storage_key
        if is_staged(record.storage_key):  # no intent (removed by hand?): the auto-managed home
            return auto_key(record.uid, record.suffix)
        return record.storage_key

    def settle(self, record: ArtifactRecord) -> ArtifactRecord:
        """Finish a pending settle of `record` (nothing if none is pending), under its write lock."""
        if not self.catalog.intents(record.id):
            return self.refresh(record)
        with self.catalog.write_lock(record.id) as still_locked:
            return self.settle_locked(record.id, still_locked)

    def _settle_quietly(self, artifact_id: int, still_locked) -> ArtifactRecord:
        """Settle right after a commit the caller has been promised: a failure leaves the settle
        pending (healing finishes it), never an error for an operation that did commit."""
        try:
            return self.settle_locked(artifact_id, still_locked)
        except (StorageError, CatalogBusy, OSError) as exc:
            log.warning("the bytes of artifact #%d stay at their staged key for now (healed later): %s",
                        artifact_id, exc)
            return self.catalog.artifact_by_id(artifact_id)

    def settle_locked(self, artifact_id: int, still_locked=lambda: None) -> ArtifactRecord:
        """The caller holds the artifact's write lock. Copies the row's object to the key its intent
        names, switches the row there (compare-and-set: only if the row still names the object
        copied), drops the intent, deletes the former object. Idempotent: a crash anywhere in it
        is finished by running it again."""
        rec = self.catalog.artifact_by_id(artifact_id)
        intents = self.catalog.intents(rec.id)
        settle_to = [i for i in intents if settles_to(rec, i)]
        if not settle_to:
            done = [i.id for i in intents if i.storage_key == rec.storage_key and i.new_hash == rec.hash]
            if done:  # committed and settled; only the intents were left
                self.catalog.retrying(lambda: [self.catalog.remove_intent(i) for i in done])
            return rec
        source, home = rec.storage_key, settle_to[-1].storage_key
        etag = self._copy_object(source, home, rec.is_folder)
        crash_point("settle.copied")

        def commit() -> ArtifactRecord:
            still_locked()
            cur = self.catalog.artifact_by_id(rec.id)
            if cur.storage_key != source or cur.hash != rec.hash:
                return cur  # changed meanwhile (cannot happen under the lock; never trust it blindly)
            for intent in intents:
                self.catalog.remove_intent(intent.id)
            return self.catalog.update_artifact(rec.id, storage_key=home, storage_etag=etag)

        settled = self.catalog.retrying(commit)
        crash_point("settle.committed")
        if settled.storage_key == home:
            self.delete_object(source, rec.is_folder)
            if rec.is_folder:
                self._delete_stale_folder_files(home, {f.path for f in self.catalog.folder_files(rec.id)})
            log.debug("settled %s (%s) at %s", rec.key or rec.uid, rec.uid, home)
        return settled

    # -- deleting ------------------------------------------------------------------------------

    def trash(self, record: ArtifactRecord) -> ArtifactRecord:
        return self.catalog.retrying(self.catalog.update_artifact, record.id, branch=TRASH_BRANCH)

    def restore(self, record: ArtifactRecord) -> ArtifactRecord:
        restored = self.catalog.retrying(self.catalog.update_artifact, record.id, branch=MAIN_BRANCH)
        log.info("restored %s (%s) from trash", restored.key or restored.uid, restored.uid)
        return restored

    def delete(self, record: ArtifactRecord, *, permanent: bool | None = None, storage: bool | None = None) -> str | None:
        """Trash, or (permanent) remove the record and, for auto-managed keys or storage=True, the
        object. Returns the URL of an object left in place, if any."""
        record = self.refresh(record)
        if permanent or record.is_trashed:
            record = self.settle(record)  # its bytes at their home, so the right object goes
        if not permanent and not record.is_trashed:
            self.trash(record)
            log.info("moved %s (%s) to trash", record.key or record.uid, record.uid)
            return None
        delete_object = storage if storage is not None else self.is_auto_managed(record)

        def commit() -> None:
            for intent in self.catalog.intents(record.id):
                self.catalog.remove_intent(intent.id)
            self.catalog.delete_artifact(record.id)
            if record.is_latest:
                rest = [v for v in self.catalog.versions(record.stem_uid) if v.id != record.id]
                if rest:
                    self.catalog.update_artifact(max(rest, key=lambda r: r.uid).id, is_latest=True)

        self.catalog.retrying(commit)
        log.info("deleted %s (%s) permanently", record.key or record.uid, record.uid)
        self._drop_cache(record)
        if delete_object:
            self.delete_object(record.storage_key, record.is_folder)
            return None
        url = self.storage.url(record.storage_key)
        log.info("a file/folder remains here: %s", url)
        return url

    # -- renaming ------------------------------------------------------------------------------

    def rename(self, record: ArtifactRecord, new_key: str) -> ArtifactRecord:
        """Key change. Virtual keys: catalog only; real keys (or a suffix change): the object moves."""
        validate_key(new_key)
        record = self.settle(record)  # a pending settle would move the bytes back to the old key
        new_suffix = extract_suffix(new_key.rsplit("/", 1)[-1])
        real = not record.key_is_virtual and record.key is not None and record.storage_key == record.key
        if real:
            new_storage_key = new_key
        elif new_suffix != record.suffix and self.is_auto_managed(record):
            new_storage_key = auto_key(record.uid, new_suffix)
        else:
            # registered in place, or same suffix: the bytes stay where they are
            new_storage_key, new_suffix = record.storage_key, record.suffix
        moves = new_storage_key != record.storage_key
        fields = {"key": new_key}
        if moves:
            self._refuse_unregistered_object(new_storage_key, record.is_folder)
            etag = self._copy_object(record.storage_key, new_storage_key, record.is_folder)
            fields.update(storage_key=new_storage_key, suffix=new_suffix, storage_etag=etag)
        try:
            updated = self.catalog.retrying(self.catalog.update_artifact, record.id, **fields)
        except BaseException:
            if moves:
                self.delete_object(new_storage_key, record.is_folder)
            raise
        if moves:
            self.delete_object(record.storage_key, record.is_folder)
        log.info("renamed %s -> %s (%s)%s", record.key, new_key, record.uid, " (object moved)" if moves else "")
        return updated

    def move(self, src: ArtifactRecord, new_key: str) -> ArtifactRecord:
        """rename(2) of a file: to `new_key`, over whichever file is there when it commits. Another
        process (another mount) may create or delete the target between our look and our commit;
        then we look again, so rename(2) never fails for a target that came or went meanwhile.
        Returns the record now at `new_key`."""
        for _attempt in range(MOVE_ATTEMPTS):
            dst = self.catalog.artifact_by_key(new_key)
            if dst is not None and dst.id == src.id:
                return dst
            if dst is not None and dst.is_folder != src.is_folder:
                raise IsADirectory(f"{new_key} is a {'folder' if dst.is_folder else 'file'}")
            try:
                return self.rename(src, new_key) if dst is None else self.rename_over(src, dst)
            except TargetChanged:
                continue
            except AlreadyExists:
                if dst is not None:
                    raise
                continue  # a file appeared at new_key: rename over it
        raise AlreadyExists(f"{new_key!r} kept changing while renaming {src.key!r} onto it")

    def rename_over(self, src: ArtifactRecord, dst: ArtifactRecord) -> ArtifactRecord:
        """`mv src dst` with dst existing: dst is replaced by src's bytes (uid of dst kept, as editors and
        rsync expect), src's record goes away. Bytes are copied server-side, never through this host."""
        src = self.settle(src)
        with self.catalog.write_lock(dst.id) as still_locked:  # dst's object is rewritten: as in replace()
            return self._rename_over(src, dst, still_locked)

    def _rename_over(self, src: ArtifactRecord, dst: ArtifactRecord, still_locked) -> ArtifactRecord:
        """Atomic: ONE catalog transaction gives dst src's object (and size, hash, mtime, mode), records
        the intent to settle those bytes at dst's home, and removes src's record. No bytes move before
        it, so a crash leaves the old state or the new one, never dst rewritten while src still
        exists. Then the bytes are settled (see the module docstring)."""
        try:
            dst = self.settle_locked(dst.id, still_locked)
        except NotFound:
            raise TargetChanged(f"{dst.key!r} was deleted meanwhile") from None
        if dst.is_trashed:  # deleted meanwhile (by another mount): nothing to rename over any more
            raise TargetChanged(f"{dst.key!r} was deleted meanwhile")
        src = self.refresh(src)
        if src.id == dst.id:
            return dst
        if src.is_folder != dst.is_folder:
            raise IsADirectory("It is not allowed to replace a folder with a file." if dst.is_folder
                               else "It is not allowed to replace a file with a folder.")
        old_key, folder = dst.storage_key, dst.is_folder
        # dst's bytes belong at its own key: `.lamindb/{uid}{suffix}`, or the path of a real key
        home = self._home_with_suffix(dst, dst.suffix)

        def commit() -> ArtifactRecord:
            still_locked()
            cur = self.catalog.artifact_by_id(src.id)  # src as of this transaction
            files = [(f.path, f.size) for f in self.catalog.folder_files(cur.id)] if folder else None
            self.catalog.delete_artifact(cur.id)
            rec = self.catalog.update_artifact(
                dst.id, size=cur.size, hash=cur.hash, hash_type=cur.hash_type, n_files=cur.n_files,
                storage_key=cur.storage_key, storage_etag=cur.storage_etag, mtime_ns=cur.mtime_ns, mode=cur.mode)
            if files is not None:
                self.catalog.set_folder_files(rec.id, files)
            if cur.storage_key != home:
                self.catalog.add_intent(artifact_id=dst.id, storage_id=self.storage_id, storage_key=home,
                                        new_hash=cur.hash, new_size=cur.size)
            return rec

        record = self.catalog.retrying(commit)
        crash_point("rename_over.committed")
        self._drop_cache(src)
        self._drop_cache(dst)
        log.info("renamed %s over %s (%s now has the bytes of %s)", src.key, dst.key, dst.uid, src.uid)
        if old_key not in (home, record.storage_key):
            self.delete_object(old_key, folder)  # dst's previous bytes elsewhere: unreferenced since the commit
        return self._settle_quietly(dst.id, still_locked)

    def rename_dir(self, old_path: str, new_path: str) -> int:
        """Move a directory and every key below it in one catalog transaction. Artifacts stored at
        real keys have their objects copied first and the old ones deleted after the commit."""
        validate_key(new_path)
        if new_path == old_path or new_path.startswith(old_path + "/"):
            raise InvalidKey(f"cannot move {old_path!r} inside itself")
        source = self.catalog.dir_by_path(old_path)
        if source is None:
            raise NotFound(f"no directory {old_path!r}")
        # only artifacts at real keys have objects to move: ask for just those (a directory of
        # virtual keys, the default, then costs no record loads at all)
        below = self.catalog.filter_artifacts(key_prefix=old_path + "/", include_trashed=True, latest_only=False,
                                              key_is_virtual=False)
        below = [self.settle(r) for r in below]  # bytes at their home before the home moves
        real = [r for r in below if not r.key_is_virtual and r.storage_key == r.key]
        moved: list[tuple[ArtifactRecord, str, str | None]] = []  # (record, new key, its etag)
        try:
            for rec in real:
                new_key = new_path + rec.key[len(old_path):]
                self._refuse_unregistered_object(new_key, rec.is_folder)
                moved.append((rec, new_key, self._copy_object(rec.storage_key, new_key, rec.is_folder)))
        except BaseException:
            for rec, new_key, _etag in moved:
                self.delete_object(new_key, rec.is_folder)
            raise
        parent, name = (new_path.rsplit("/", 1) if "/" in new_path else ("", new_path))

        def commit() -> int:
            target_parent = self.catalog.ensure_dir(parent) if parent else self.catalog.dir_by_path("")
            if self.catalog.child_dir(target_parent.id, name) is not None:
                raise AlreadyExists(f"directory {new_path!r} exists")
            if self.catalog.live_child_artifact(target_parent.id, name) is not None:
                raise AlreadyExists(f"an artifact already exists at {new_path!r}")
            changed = self.catalog.move_dir(source.id, target_parent.id, name)
            for rec, new_key, etag in moved:
                self.catalog.update_artifact(rec.id, storage_key=new_key, storage_etag=etag)
            return changed

        try:
            changed = self.catalog.retrying(commit)
        except BaseException:
            for rec, new_key in moved:
                self.delete_object(new_key, rec.is_folder)
            raise
        for rec, _new_key in moved:
            self.delete_object(rec.storage_key, rec.is_folder)
        log.info("renamed directory %s -> %s (%d keys)", old_path, new_path, changed)
        return changed

    def set_attrs(self, record: ArtifactRecord, **fields) -> ArtifactRecord:
        """mode / mtime_ns / description: metadata only."""
        allowed = {k: v for k, v in fields.items() if k in ("mode", "mtime_ns", "description") }
        return self.catalog.retrying(self.catalog.update_artifact, record.id, **allowed)

    # -- the directory tree (for the mount) ---------------------------------------------------------

    def dir_by_id(self, dir_id: int):
        return self.catalog.dir_by_id(dir_id)

    def dir_by_path(self, path: str):
        return self.catalog.dir_by_path(path)

    def lookup_child(self, dir_id: int, name: str):
        """The directory or live artifact called `name` in directory `dir_id`, or None."""
        return self.catalog.child_dir(dir_id, name) or self.catalog.live_child_artifact(dir_id, name)

    def list_dir(self, dir_id: int):
        return self.catalog.list_dir(dir_id)

    def mkdir(self, path: str):
        validate_key(path)

        def make():
            parent, _, name = path.rpartition("/")
            parent_dir = self.catalog.ensure_dir(parent) if parent else self.catalog.dir_by_path("")
            if self.lookup_child(parent_dir.id, name) is not None:
                raise AlreadyExists(f"{path!r} exists")
            return self.catalog.ensure_dir(path, explicit=True)

        made = self.catalog.retrying(make)
        log.info("made directory %s", path)
        return made

    def rmdir(self, dir_id: int, *, prune_parent: bool = True) -> None:
        """Remove an empty directory; an implicit parent left empty by it vanishes too (as it would with
        its last file), unless the caller is about to put something there (`prune_parent=False`)."""

        def remove() -> None:
            parent_id = self.catalog.dir_by_id(dir_id).parent_id
            self.catalog.remove_dir(dir_id)
            if prune_parent:
                self.catalog.prune_implicit_dirs(parent_id)

        self.catalog.retrying(remove)

    def set_dir_attrs(self, dir_id: int, **fields) -> None:
        self.catalog.retrying(self.catalog.set_dir_attrs, dir_id, **fields)

    def folder_files(self, record: ArtifactRecord):
        return self.catalog.folder_files(record.id)

    def keyless(self) -> list[ArtifactRecord]:
        return self.catalog.filter_artifacts(key=None)

    # -- local copies --------------------------------------------------------------------------

    def cache_rel(self, record: ArtifactRecord) -> str:
        root = self.storage.root.split("://", 1)[-1].strip("/")
        return f"{root}/{record.key or record.storage_key}"

    def cache_path(self, record: ArtifactRecord) -> Path:
        local = self.storage.local_path(record.storage_key)
        return local if local is not None else self.copies.path_for(self.cache_rel(record))

    def identity(self, record: ArtifactRecord) -> Identity:
        return Identity(record.hash, record.size, record.storage_etag)

    def cache(self, record: ArtifactRecord) -> Path:
        """A local path with the artifact's bytes, never stale."""
        record = self.refresh(record)
        local = self.storage.local_path(record.storage_key)
        if local is not None:
            return local
        return self.copies.get(
            self.cache_rel(record), self.identity(record),
            lambda tmp: self._download(record.storage_key, tmp, is_folder=record.is_folder, etag=record.storage_etag),
        )

    def _cache_after_save(self, record: ArtifactRecord, source: Path, existed: bool | None = None) -> None:
        """LaminDB keeps a copy of what it uploads in the cache, so a later cache() costs nothing."""
        if self.storage.is_local:
            return
        rel = self.cache_rel(record)
        existed = self.copies.exists(rel) if existed is None else existed
        try:
            path = self.copies.store(rel, self.identity(record), copy_into(source))
        except OSError as exc:  # a full cache disk must not fail a committed save
            log.warning("could not keep a cached copy of %s: %s", record.key or record.uid, exc)
            return
        if existed:
            log.info("replacing the existing cache path %s", path)

    def _drop_cache(self, record: ArtifactRecord) -> None:
        if not self.storage.is_local:
            self.copies.remove(self.cache_rel(record))

    # -- storage helpers -------------------------------------------------------------------------

    def _manifest(self, folder: Path) -> list[tuple[str, int]]:
        return [(p.relative_to(folder).as_posix(), p.stat().st_size) for p in sorted(folder.rglob("*")) if p.is_file()]

    def _upload(self, source: Path, storage_key: str, progress=None) -> list[tuple[str, int]]:
        if not source.is_dir():
            self.storage.put_file(source, storage_key, progress=progress)
            return []
        files = self._manifest(source)
        done = 0  # progress over the whole folder
        for rel, size in files:
            self.storage.put_file(source / rel, f"{storage_key}/{rel}",
                                  progress=None if progress is None else (lambda n, base=done: progress(base + n)))
            done += size
        return files

    def _upload_with_etag(self, source: Path, storage_key: str, progress=None) -> tuple[list[tuple[str, int]], str | None]:
        """`_upload`, plus the ETag of a single file as the upload reported it (None for folders):
        no HEAD needed for the commit."""
        if not source.is_dir():
            return [], self.storage.put_file(source, storage_key, progress=progress).etag
        return self._upload(source, storage_key, progress), None

    def _etag(self, storage_key: str) -> str | None:
        try:
            return self.storage.head(storage_key).etag
        except NotFound:
            return None

    def _download(self, storage_key: str, target: Path, *, is_folder: bool | None, etag: str | None = None) -> None:
        if is_folder is None:
            is_folder = not self.storage.exists(storage_key) and self._has_prefix(storage_key)
        if not is_folder:
            self.storage.download_file(storage_key, target, etag=etag)
            return
        prefix = storage_key + "/"
        found = False
        for info in self.storage.list(prefix):
            found = True
            dest = target / info.key[len(prefix):]
            dest.parent.mkdir(parents=True, exist_ok=True)
            self.storage.download_file(info.key, dest)
        if not found:
            raise NotFound(f"no objects under {self.storage.url(storage_key)}")

    def _copy_object(self, src: str, dst: str, is_folder: bool) -> str | None:
        """Server-side copy; returns the copy's etag for a file (as the copy reported it: no HEAD
        needed for the commit), None for a folder."""
        if not is_folder:
            return self.storage.copy(src, dst).etag
        prefix = src + "/"
        for info in list(self.storage.list(prefix)):
            self.storage.copy(info.key, dst + "/" + info.key[len(prefix):])
        return None

    def delete_object(self, storage_key: str, is_folder: bool) -> None:
        try:
            if is_folder:
                self.storage.delete_many([i.key for i in self.storage.list(storage_key + "/")])
            else:
                self.storage.delete(storage_key)
        except StorageError as exc:
            # the catalog no longer references it: an orphan for fsck, not a user-facing failure
            log.warning("could not delete %s (left as an orphan for fsck): %s", self.storage.url(storage_key), exc)

    def _delete_stale_folder_files(self, storage_key: str, keep: set[str]) -> None:
        prefix = storage_key + "/"
        stale = [i.key for i in self.storage.list(prefix) if i.key[len(prefix):] not in keep]
        if stale:
            try:
                self.storage.delete_many(stale)
            except StorageError as exc:
                log.warning("could not delete stale files of %s: %s", self.storage.url(storage_key), exc)

    @staticmethod
    def _cleanup(paths: list[Path]) -> None:
        for p in paths:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
