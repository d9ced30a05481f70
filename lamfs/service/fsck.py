"""Consistency check (and safe repair) of one instance: catalog rows against storage objects.

Role: the logic of `lamfs fsck`. It finds
- catalog rows whose object is missing, has another size, another hash (`hashes=True`: the
  bytes are read again and rehashed) or another etag than the one recorded at commit (rewritten
  outside lamfs: the mount's conditional reads of it would fail);
- objects under the root that no row references: *orphans* under `.lamindb/` (lamfs's own
  namespace) or inside a folder artifact's prefix but not in its file list, *unregistered*
  objects elsewhere (maybe the user's own files), and stale `.lamfs-tmp-*` temp files of
  interrupted local writes;
- S3 multipart uploads never completed nor aborted (a process killed mid-upload of a large file):
  parts that use storage but are no object;
- pending intents: bytes committed at a staged key (or at a renamed-over file's object) and not
  yet settled at their home key, and write-ahead rows left by older lamfs versions that
  uploaded over the live object.

`repair=True` fixes only what is safe: deletes orphans and stale temp files, aborts stale incomplete
uploads (unregistered objects
only with `delete_unregistered=True`), resolves intents (a pending settle is finished; an old-style
intent whose object has its hash and size rolls the row forward, otherwise it is dropped), and, when
the bytes were rehashed and match, records an object's new etag. It never deletes a catalog row
or an object a row references: those problems are reported for the user to decide.

Anything younger than `min_age_s` (objects by mtime, intents by creation time) is reported but
left alone: it may be an upload whose commit has not happened yet, on this or another machine.

Imports: the standard library, lamfs.catalog records, lamfs.errors, lamfs.hashing, lamfs.keys,
lamfs.storage, and the ArtifactService (for its catalog, storage and storage id). No CLI code.
Blocking (storage + catalog I/O).
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from ..catalog import ArtifactRecord
from ..errors import ContentChanged, LamfsError, NotFound, StorageError
from ..hashing import CHUNK_BYTES, ContentHash, b64, hash_from_hashes
from ..keys import AUTO_KEY_PREFIX
from ..storage import TEMP_PREFIX, ObjectInfo
from .artifacts import ArtifactService, settles_to

log = logging.getLogger("lamfs.fsck")

READ_BYTES = 8 * 1024 * 1024

# problem kinds, in the order they are reported
INTENT = "pending_intent"
MISSING = "missing_object"
SIZE = "size_mismatch"
HASH = "hash_mismatch"
CHANGED = "changed_object"
ORPHAN = "orphan_object"
UNREGISTERED = "unregistered_object"
TEMP = "temp_file"
UPLOAD = "incomplete_upload"
KIND_ORDER = (INTENT, MISSING, SIZE, HASH, CHANGED, ORPHAN, UNREGISTERED, TEMP, UPLOAD)

# repair actions
DELETE = "delete"
ABORT = "abort"
ROLL_FORWARD = "roll forward"
DROP_INTENT = "drop intent"
SETTLE = "settle"
REFRESH_ETAG = "refresh etag"


@dataclass
class Problem:
    kind: str
    storage_key: str
    detail: str
    uid: str | None = None
    key: str | None = None
    size: int | None = None
    #: what --repair does (or did) about it; None: only the user can decide
    action: str | None = None
    #: left alone this time because it is younger than min_age_s
    recent: bool = False
    repaired: bool = False
    error: str | None = None
    _apply: Callable[[], None] | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("_apply")
        return d


@dataclass
class FsckReport:
    storage_root: str
    repair: bool
    hashes: bool
    artifacts: int = 0
    objects: int = 0
    hashed: int = 0
    other_roots: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def unresolved(self) -> list[Problem]:
        return [p for p in self.problems if not p.repaired]

    @property
    def ok(self) -> bool:
        return not self.unresolved

    def to_dict(self) -> dict:
        return {
            "storage_root": self.storage_root, "repair": self.repair, "hashes": self.hashes,
            "artifacts": self.artifacts, "objects": self.objects, "hashed": self.hashed,
            "other_roots": self.other_roots, "ok": self.ok,
            "problems": [p.to_dict() for p in self.problems],
        }


# -- hashing objects in place (bounded memory, no temp files, pinned to one version by etag) ------

def _ranges(storage, key: str, start: int, end: int, etag: str | None):
    pos = start
    while pos < end:
        data = storage.get_range(key, pos, min(READ_BYTES, end - pos), etag=etag)
        if not data:
            raise StorageError(f"{storage.url(key)} ended at {pos} bytes, expected {end}")
        yield data
        pos += len(data)


def hash_object(storage, info: ObjectInfo) -> ContentHash:
    """LaminDB's hash of one stored object, read by ranges (only the first and last 50 MiB of a
    large object are read, as the hash needs no more)."""
    size, key, etag = info.size, info.key, info.etag or None
    if size <= CHUNK_BYTES:
        h = hashlib.md5()
        for chunk in _ranges(storage, key, 0, size, etag):
            h.update(chunk)
        return ContentHash(b64(h.digest()), "md5", size)
    first, last = hashlib.sha1(), hashlib.sha1()
    for chunk in _ranges(storage, key, 0, CHUNK_BYTES, etag):
        first.update(chunk)
    for chunk in _ranges(storage, key, size - CHUNK_BYTES, size, etag):
        last.update(chunk)
    return ContentHash(b64(hashlib.sha1(first.digest() + last.digest()).digest()), "sha1-fl", size)


def hash_folder_objects(storage, infos: list[ObjectInfo]) -> ContentHash:
    hashes = [hash_object(storage, i).hash for i in infos]
    return ContentHash(hash_from_hashes(hashes), "md5-d", sum(i.size for i in infos), n_files=len(infos))


# -- the check ------------------------------------------------------------------------------------------

class _Fsck:
    def __init__(self, service: ArtifactService, *, repair: bool, hashes: bool, min_age_s: float,
                 delete_unregistered: bool, now: float | None):
        self.service = service
        self.catalog = service.catalog
        self.storage = service.storage
        self.storage_id = service.storage_id
        self.repair = repair
        self.hashes = hashes
        self.min_age_s = min_age_s
        self.delete_unregistered = delete_unregistered
        self.now = time.time() if now is None else now
        self.report = FsckReport(storage_root=self.storage.root, repair=repair, hashes=hashes)

    def add(self, problem: Problem) -> Problem:
        self.report.problems.append(problem)
        return problem

    def _too_recent(self, mtime_s: float) -> bool:
        return self.now - mtime_s < self.min_age_s

    # -- intents ---------------------------------------------------------------------------------

    def _decide_intent(self, intent) -> tuple[ArtifactRecord | None, str, str, ContentHash | None]:
        """→ (artifact, action, explanation, content found at the intent's key)."""
        try:
            rec = self.catalog.artifact_by_id(intent.artifact_id) if intent.artifact_id is not None else None
        except NotFound:
            rec = None
        where = f"intent #{intent.id} for {intent.storage_key}"
        if intent.artifact_id is None:
            return None, DROP_INTENT, (f"{where}: the upload of a new file, not committed (killed, or still "
                                       f"uploading); its object is an orphan once the intent is dropped"), None
        if rec is None:
            return None, DROP_INTENT, f"{where}: its artifact no longer exists", None
        if settles_to(rec, intent):
            return rec, SETTLE, (f"{where}: the bytes are committed at {rec.storage_key} and still to be moved "
                                 f"to their home (healing does this by itself)"), None
        try:
            content = self._content_at(intent.storage_key, rec.is_folder)
        except ContentChanged:
            content = None
        wanted = content is not None and (content.hash, content.size) == (intent.new_hash, intent.new_size)
        if wanted and (rec.hash, rec.size, rec.storage_key) == (intent.new_hash, intent.new_size, intent.storage_key):
            return rec, DROP_INTENT, f"{where}: the write was committed; only the intent was left", content
        if wanted:
            return rec, ROLL_FORWARD, (f"{where}: the object has the new bytes ({intent.new_size} bytes, hash "
                                       f"{intent.new_hash}) but the catalog was not updated (crash between upload "
                                       f"and commit)"), content
        return rec, DROP_INTENT, (f"{where}: the object does not have the new bytes (the upload did not finish); "
                                  f"the catalog row stands"), content

    def check_intents(self) -> set[int]:
        """Returns the ids of artifacts whose rows an unresolved intent may change (their size/hash
        checks are skipped: the intent is the problem to report)."""
        pending: set[int] = set()
        for intent in self.catalog.intents():
            if intent.storage_id != self.storage_id:
                continue
            rec, action, detail, _content = self._decide_intent(intent)
            recent = self._too_recent(intent.created_at.timestamp())
            problem = self.add(Problem(INTENT, intent.storage_key, detail, uid=rec.uid if rec else None,
                                       key=rec.key if rec else None, size=intent.new_size, action=action,
                                       recent=recent))
            problem._apply = lambda i=intent, p=problem: self._resolve_intent(i, p)
            if rec is not None and (recent or not self.repair):
                pending.add(rec.id)
        return pending

    def _resolve_intent(self, intent, problem: Problem) -> None:
        """Under the artifact's write lock (the one replace() and rename-over hold from before their
        upload until after their commit): a writer still at work is waited for, and everything is
        decided again from what is there once we hold the lock."""
        if intent.artifact_id is None:
            self.catalog.retrying(self.catalog.remove_intent, intent.id)
            return
        with self.catalog.write_lock(intent.artifact_id):
            if intent.id not in {i.id for i in self.catalog.intents()}:
                problem.detail += " (its writer finished meanwhile)"
                return
            rec, action, _detail, content = self._decide_intent(intent)
            problem.action = action
            if action == SETTLE:
                self.service.settle_locked(rec.id)
                log.info("fsck: settled %s at %s", rec.key or rec.uid, intent.storage_key)
                return
            folder_files = None
            etag = None
            if action == ROLL_FORWARD:
                if rec.is_folder:
                    prefix = intent.storage_key + "/"
                    folder_files = [(i.key[len(prefix):], i.size) for i in self.storage.list(prefix)]
                else:
                    etag = self.storage.head(intent.storage_key).etag

            def commit() -> None:
                if intent.id not in {i.id for i in self.catalog.intents()}:
                    return
                if action == ROLL_FORWARD:
                    self.catalog.update_artifact(rec.id, size=content.size, hash=content.hash,
                                                 hash_type=content.hash_type, n_files=content.n_files,
                                                 storage_key=intent.storage_key, storage_etag=etag)
                    if folder_files is not None:
                        self.catalog.set_folder_files(rec.id, folder_files)
                self.catalog.remove_intent(intent.id)

            self.catalog.retrying(commit)
        log.info("fsck: %s %s (%s)", action, intent.storage_key, (rec.key or rec.uid) if rec else "no artifact")

    def _content_at(self, storage_key: str, is_folder: bool) -> ContentHash | None:
        if is_folder:
            infos = list(self.storage.list(storage_key + "/"))
            return hash_folder_objects(self.storage, infos) if infos else None
        try:
            info = self.storage.head(storage_key)
        except NotFound:
            return None
        return hash_object(self.storage, info)

    # -- catalog rows ----------------------------------------------------------------------------

    def check_rows(self, objects: dict[str, ObjectInfo], skip_ids: set[int]) -> set[str]:
        """Compare every row of this root with the listing; returns the object keys rows reference."""
        referenced: set[str] = set()
        for rec in self.catalog.all_artifacts():
            if rec.storage_id != self.storage_id:
                self.report.other_roots += 1
                continue
            self.report.artifacts += 1
            try:
                if rec.is_folder:
                    self._check_folder(rec, objects, referenced, skip_ids)
                else:
                    referenced.add(rec.storage_key)
                    self._check_file(rec, objects.get(rec.storage_key), skip_ids)
            except (ContentChanged, NotFound) as exc:
                # rewritten or deleted while we read it: say so rather than guess
                self.add(Problem(CHANGED, rec.storage_key, f"{self._label(rec)}: changed while being checked "
                                 f"({exc}); run fsck again", uid=rec.uid, key=rec.key, size=rec.size))
        return referenced

    def _label(self, rec: ArtifactRecord) -> str:
        trashed = ", in trash" if rec.is_trashed else ""
        return f"{rec.key or '(no key)'} (uid {rec.uid}{trashed})"

    def _still_missing(self, rec: ArtifactRecord, storage_key: str) -> bool:
        """Listing and rows are read at different moments: confirm before reporting."""
        try:
            self.catalog.artifact_by_id(rec.id)
        except NotFound:
            return False  # deleted meanwhile
        return not self.storage.exists(storage_key)

    def _check_file(self, rec: ArtifactRecord, info: ObjectInfo | None, skip_ids: set[int]) -> None:
        if info is None:
            if self._still_missing(rec, rec.storage_key):
                self.add(Problem(MISSING, rec.storage_key, f"{self._label(rec)}: its object "
                                 f"{self.storage.url(rec.storage_key)} is missing", uid=rec.uid, key=rec.key,
                                 size=rec.size))
            return
        if rec.id in skip_ids:
            return
        if info.size != rec.size:
            self.add(Problem(SIZE, rec.storage_key, f"{self._label(rec)}: the object has {info.size} bytes, "
                             f"the catalog says {rec.size}", uid=rec.uid, key=rec.key, size=info.size))
            return
        etag_changed = rec.storage_etag is not None and info.etag != rec.storage_etag
        if self.hashes:
            self.report.hashed += 1
            content = hash_object(self.storage, info)
            if content.hash != rec.hash:
                self.add(Problem(HASH, rec.storage_key, f"{self._label(rec)}: the object's hash is {content.hash}, "
                                 f"the catalog says {rec.hash}", uid=rec.uid, key=rec.key, size=info.size))
                return
        if etag_changed:
            if self.hashes:
                p = self.add(Problem(CHANGED, rec.storage_key, f"{self._label(rec)}: the object was rewritten "
                                     f"outside lamfs with the same bytes (etag {info.etag}, recorded "
                                     f"{rec.storage_etag})", uid=rec.uid, key=rec.key, size=info.size,
                                     action=REFRESH_ETAG))
                p._apply = lambda r=rec, e=info.etag: self._refresh_etag(r, e)
            else:
                self.add(Problem(CHANGED, rec.storage_key, f"{self._label(rec)}: the object was rewritten outside "
                                 f"lamfs (etag {info.etag}, recorded {rec.storage_etag}); run with --hashes to "
                                 f"compare the bytes", uid=rec.uid, key=rec.key, size=info.size))

    def _refresh_etag(self, rec: ArtifactRecord, etag: str) -> None:
        def commit() -> None:
            current = self.catalog.artifact_by_id(rec.id)
            if (current.storage_key, current.hash, current.storage_etag) == (rec.storage_key, rec.hash,
                                                                             rec.storage_etag):
                self.catalog.update_artifact(rec.id, storage_etag=etag)

        self.catalog.retrying(commit)
        log.info("fsck: recorded the new etag of %s (%s)", rec.storage_key, rec.key or rec.uid)

    def _check_folder(self, rec: ArtifactRecord, objects: dict[str, ObjectInfo], referenced: set[str],
                      skip_ids: set[int]) -> None:
        prefix = rec.storage_key + "/"
        manifest = self.catalog.folder_files(rec.id)
        missing, wrong_size, present = [], [], []
        for f in manifest:
            key = prefix + f.path
            referenced.add(key)
            info = objects.get(key)
            if info is None:
                missing.append(f.path)
            elif info.size != f.size:
                wrong_size.append(f"{f.path} ({info.size} bytes, catalog {f.size})")
            else:
                present.append(info)
        if missing:
            missing = [p for p in missing if self._still_missing(rec, prefix + p)]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            self.add(Problem(MISSING, rec.storage_key, f"{self._label(rec)}: {len(missing)} of its "
                             f"{len(manifest)} files are missing under {self.storage.url(rec.storage_key)}: {shown}",
                             uid=rec.uid, key=rec.key, size=rec.size))
        if rec.id in skip_ids or missing:
            return
        if wrong_size:
            shown = ", ".join(wrong_size[:5]) + (f" and {len(wrong_size) - 5} more" if len(wrong_size) > 5 else "")
            self.add(Problem(SIZE, rec.storage_key, f"{self._label(rec)}: files with another size: {shown}",
                             uid=rec.uid, key=rec.key, size=rec.size))
            return
        if self.hashes:
            self.report.hashed += 1
            content = hash_folder_objects(self.storage, sorted(present, key=lambda i: i.key))
            if content.hash != rec.hash:
                self.add(Problem(HASH, rec.storage_key, f"{self._label(rec)}: the folder's hash is {content.hash}, "
                                 f"the catalog says {rec.hash}", uid=rec.uid, key=rec.key, size=rec.size))

    # -- objects nobody references ------------------------------------------------------------------

    def _excluded(self) -> set[str]:
        """Files of lamfs itself that may sit inside a local root: a SQLite catalog, the cache."""
        if not self.storage.is_local:
            return set()
        root = Path(self.storage.root)
        out: set[str] = set()
        url = self.catalog.url
        if url.startswith("sqlite:///"):
            db = Path(url[len("sqlite:///"):]).resolve()
            for suffix in ("", "-wal", "-shm", "-journal", ".locks"):
                p = Path(str(db) + suffix)
                if p.is_relative_to(root):
                    out.add(p.relative_to(root).as_posix())
        return out

    def _cache_prefix(self) -> str | None:
        if not self.storage.is_local:
            return None
        cache = Path(self.service.copies.root).resolve()
        root = Path(self.storage.root)
        return cache.relative_to(root).as_posix() + "/" if cache.is_relative_to(root) and cache != root else None

    def _owned_prefixes(self) -> list[str]:
        return [AUTO_KEY_PREFIX]

    def _is_referenced(self, key: str) -> bool:
        """Re-check against the catalog right before deleting (rows may have been added since)."""
        if self.catalog.artifact_by_storage_key(self.storage_id, key) is not None:
            return True
        parts = key.split("/")
        for i in range(1, len(parts)):
            owner = self.catalog.artifact_by_storage_key(self.storage_id, "/".join(parts[:i]))
            if owner is not None and owner.is_folder:
                rel = "/".join(parts[i:])
                if any(f.path == rel for f in self.catalog.folder_files(owner.id)):
                    return True
        return False

    def check_orphans(self, objects: dict[str, ObjectInfo], referenced: set[str]) -> None:
        excluded = self._excluded()
        cache_prefix = self._cache_prefix()
        folders = {r.storage_key: r for r in self.catalog.all_artifacts()
                   if r.storage_id == self.storage_id and r.is_folder}
        # objects an unresolved intent is about (a folder's new files) are the intent's problem
        pending = [p.storage_key for p in self.report.problems if p.kind == INTENT and not p.repaired]
        for key, info in sorted(objects.items()):
            if key in referenced or key in excluded or (cache_prefix and key.startswith(cache_prefix)):
                continue
            if any(key == k or key.startswith(k + "/") for k in pending):
                continue
            parts = key.split("/")
            owner = next((folders[p] for p in ("/".join(parts[:i]) for i in range(1, len(parts))) if p in folders),
                         None)
            recent = self._too_recent(info.mtime_ns / 1e9)
            url = self.storage.url(key)
            if owner is not None:
                kind, detail = ORPHAN, (f"{url} ({info.size} bytes) is inside folder artifact "
                                        f"{self._label(owner)} but not one of its files")
                deletable = self.service.is_auto_managed(owner) or self.delete_unregistered
            elif key.startswith(AUTO_KEY_PREFIX):
                kind, detail = ORPHAN, f"{url} ({info.size} bytes) belongs to no artifact"
                deletable = True
            else:
                kind, detail = UNREGISTERED, (f"{url} ({info.size} bytes) is not registered: add it with "
                                              f"`lamfs add`, or delete it (fsck --repair --delete-unregistered)")
                deletable = self.delete_unregistered
            p = self.add(Problem(kind, key, detail, size=info.size, action=DELETE if deletable else None,
                                 recent=recent))
            p._apply = lambda k=key: self._delete_object(k)

    def _delete_object(self, key: str) -> None:
        if self._is_referenced(key):
            raise StorageError(f"{key} is referenced by the catalog now; left alone")
        self.storage.delete(key)
        log.info("fsck: deleted %s", self.storage.url(key))

    def check_temp_files(self) -> None:
        """Local roots only: temp files of writes that never finished (S3 writes are atomic)."""
        if not self.storage.is_local:
            return
        root = Path(self.storage.root)
        for dirpath, _dirnames, filenames in os.walk(root):
            for name in filenames:
                if not name.startswith(TEMP_PREFIX):
                    continue
                path = Path(dirpath) / name
                try:
                    st = path.lstat()
                except FileNotFoundError:
                    continue  # finished meanwhile
                rel = path.relative_to(root).as_posix()
                p = self.add(Problem(TEMP, rel, f"{path} ({st.st_size} bytes): temp file of an interrupted write",
                                     size=st.st_size, action=DELETE, recent=self._too_recent(st.st_mtime)))
                p._apply = lambda path=path: self._delete_temp(path)

    def check_incomplete_uploads(self) -> None:
        """S3: multipart uploads that were started and never completed nor aborted (a process killed
        mid-upload): their parts take space (and cost money) but are no object; --repair aborts them."""
        for key, upload_id, initiated_ns in self.storage.incomplete_uploads():
            url = self.storage.url(key)
            p = self.add(Problem(UPLOAD, key, f"{url}: multipart upload {upload_id[:16]}… started "
                                              f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(initiated_ns / 1e9))} UTC "
                                              "never completed (its parts use storage)",
                                 action=ABORT, recent=self._too_recent(initiated_ns / 1e9)))
            p._apply = lambda k=key, u=upload_id: self._abort(k, u)

    def _abort(self, key: str, upload_id: str) -> None:
        self.storage.abort_upload(key, upload_id)
        log.info("fsck: aborted the incomplete upload of %s", self.storage.url(key))

    def _delete_temp(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        log.info("fsck: deleted temp file %s", path)

    # -- driver ---------------------------------------------------------------------------------------

    def run(self) -> FsckReport:
        pending = self.check_intents()
        if self.repair:  # resolve intents first: rolling forward changes the rows checked below
            self._apply([p for p in self.report.problems if p.kind == INTENT])
        objects = {info.key: info for info in self.storage.list("")}
        self.report.objects = len(objects)
        referenced = self.check_rows(objects, pending)
        self.check_orphans(objects, referenced)
        self.check_temp_files()
        self.check_incomplete_uploads()
        if self.repair:
            self._apply([p for p in self.report.problems if p.kind != INTENT])
        order = {k: i for i, k in enumerate(KIND_ORDER)}
        self.report.problems.sort(key=lambda p: (order[p.kind], p.storage_key))
        return self.report

    def _apply(self, problems: list[Problem]) -> None:
        for p in problems:
            if p.action is None or p.recent or p.repaired or p._apply is None:
                continue
            try:
                p._apply()
                p.repaired = True
            except (LamfsError, OSError) as exc:
                p.error = str(exc)
                log.warning("fsck: could not %s %s: %s", p.action, p.storage_key, exc)


def fsck(service: ArtifactService, *, repair: bool = False, hashes: bool = False, min_age_s: float = 3600.0,
         delete_unregistered: bool = False, now: float | None = None) -> FsckReport:
    """Check the instance behind `service` (its storage root and the rows that point into it).
    See the module docstring for what is found and what `repair` does."""
    return _Fsck(service, repair=repair, hashes=hashes, min_age_s=min_age_s,
                 delete_unregistered=delete_unregistered, now=now).run()


def resolve_intent(service: ArtifactService, intent) -> str:
    """Resolve one intent now (under its artifact's write lock, decided again once held), as
    `fsck --repair` would; healing calls this. Returns the action taken."""
    check = _Fsck(service, repair=True, hashes=False, min_age_s=0.0, delete_unregistered=False, now=None)
    rec, action, detail, _content = check._decide_intent(intent)
    problem = Problem(INTENT, intent.storage_key, detail, uid=rec.uid if rec else None, action=action)
    check._resolve_intent(intent, problem)
    return problem.action
