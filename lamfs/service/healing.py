"""Healing: finish or clean up, with no human step, whatever a killed process left between the
steps of an operation (see service/artifacts.py for the steps).

- A pending settle (bytes committed at a staged key or at a renamed-over file's object, still to be
  moved home): finished. Until then the row names an object with exactly its bytes, so reads work
  all along; healing only restores the canonical layout and frees the staged copy.
- An intent left by an older lamfs version (it uploaded over the live object): rolled forward when
  the object has the intent's bytes, else dropped (fsck's rule).
- An upload of a new file killed before its commit (an intent with no artifact): its object is
  deleted once the intent is older than `abandoned_after_s` (default 10 minutes; an object is
  committed within moments of its upload's end, so by then no live writer can still want it), unless
  a row references it.
- A staged object no row references (a replace killed between its upload and its commit, or
  between its settle and the delete): deleted. Every writer holds its artifact's write lock from
  before its upload until after its settle, so once healing holds that lock, an unreferenced staged
  object of that artifact belongs to no live writer, on this machine or another.

Runs when a mount starts (in the background: nothing here keeps a file from being read) and when
the Python API connects. Blocking (storage + catalog I/O).
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field

from ..errors import LamfsError, NotFound
from .artifacts import STAGED_PREFIX, ArtifactService, settles_to, staged_uid
from .fsck import resolve_intent

log = logging.getLogger("lamfs")


@dataclass
class HealReport:
    settled: int = 0             # pending settles finished
    intents_resolved: int = 0    # old-style or leftover intents resolved
    staged_deleted: int = 0      # abandoned staged objects deleted
    uploads_deleted: int = 0     # objects of new files whose upload was never committed
    young: int = 0               # uploads not yet committed, too young to call abandoned
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return bool(self.settled or self.intents_resolved or self.staged_deleted or self.uploads_deleted
                    or self.errors)

    def summary(self) -> str:
        if not self.changed:
            return "nothing to heal"
        parts = [f"{self.settled} settle(s) finished", f"{self.intents_resolved} intent(s) resolved",
                 f"{self.staged_deleted} abandoned staged object(s) deleted",
                 f"{self.uploads_deleted} uncommitted upload(s) deleted"]
        if self.errors:
            parts.append(f"{len(self.errors)} left for the next start ({self.errors[0]})")
        return ", ".join(parts) + f" in {self.seconds:.1f} s"

    def to_dict(self) -> dict:
        return dict(asdict(self), summary=self.summary())


ABANDONED_AFTER_S = 600.0


def heal(service: ArtifactService, *, abandoned_after_s: float = ABANDONED_AFTER_S) -> HealReport:
    report = HealReport()
    start = time.monotonic()
    _heal_intents(service, report, abandoned_after_s)
    _delete_abandoned_staged(service, report)
    report.seconds = time.monotonic() - start
    if report.changed:
        log.info("healing: %s", report.summary())
    return report


def _heal_intents(service: ArtifactService, report: HealReport, abandoned_after_s: float) -> None:
    catalog = service.catalog
    now = time.time()
    for intent in catalog.intents():
        if intent.storage_id != service.storage_id:
            continue
        if intent.artifact_id is None:
            if now - intent.created_at.timestamp() >= abandoned_after_s:
                try:
                    _drop_abandoned_upload(service, intent)
                    report.uploads_deleted += 1
                except (LamfsError, OSError) as exc:
                    report.errors.append(f"upload {intent.storage_key}: {exc}")
            else:
                report.young += 1
            continue
        try:
            rec = catalog.artifact_by_id(intent.artifact_id) if intent.artifact_id is not None else None
        except NotFound:
            rec = None
        try:
            if rec is not None and settles_to(rec, intent):
                before = rec.storage_key
                if service.settle(rec).storage_key != before:
                    report.settled += 1
            else:
                resolve_intent(service, intent)
                report.intents_resolved += 1
        except (LamfsError, OSError) as exc:
            report.errors.append(f"intent #{intent.id} ({intent.storage_key}): {exc}")
            log.warning("healing: could not resolve intent #%d for %s: %s", intent.id, intent.storage_key, exc)


def _drop_abandoned_upload(service: ArtifactService, intent) -> None:
    catalog, key = service.catalog, intent.storage_key
    if catalog.artifact_by_storage_key(service.storage_id, key) is None:
        # a file or a folder's files: whichever there is
        service.delete_object(key, False)
        service.delete_object(key, True)
        log.info("healing: deleted %s, an upload killed before its commit", service.storage.url(key))
    catalog.retrying(catalog.remove_intent, intent.id)


def _delete_abandoned_staged(service: ArtifactService, report: HealReport) -> None:
    catalog, storage = service.catalog, service.storage
    staged: dict[str, bool] = {}  # staged key -> is a folder (has objects below it)
    for info in storage.list(STAGED_PREFIX):
        name, sep, _rest = info.key[len(STAGED_PREFIX):].partition("/")
        key = STAGED_PREFIX + name
        staged[key] = staged.get(key, False) or bool(sep)
    for key, is_folder in sorted(staged.items()):
        try:
            if catalog.artifact_by_storage_key(service.storage_id, key) is not None:
                continue  # committed, its settle pending (done above, or by its writer)
            uid = staged_uid(key)
            rec = catalog.artifact_by_uid(uid) if uid else None
            if rec is None:  # its artifact is gone: no writer can commit these bytes any more
                service.delete_object(key, is_folder)
            else:
                with catalog.write_lock(rec.id):  # its writer, if alive, is done once we hold this
                    if catalog.artifact_by_storage_key(service.storage_id, key) is not None:
                        continue
                    service.delete_object(key, is_folder)
            report.staged_deleted += 1
        except (LamfsError, OSError) as exc:
            report.errors.append(f"{key}: {exc}")
            log.warning("healing: could not delete the abandoned staged object %s: %s", key, exc)
