"""Write-back mode (`lamfs mount --write-back`): close(2) returns once the bytes are in the local
staging copy; uploader threads store and commit them afterwards, several at once.

The default stays durable-on-close (close returns after the upload and the catalog commit). With
write-back, a program that writes many small files is not held up by one round trip to storage per
file, at a price the user chooses knowingly:

- close(2) no longer reports upload errors. Failed uploads are retried with backoff until they
  succeed (the bytes stay in the staging directory meanwhile); fsync(2) still waits for the commit
  and reports errors, so a program that needs durability at a point asks for it as on a local disk.
- Other machines (and the API) see a file only once its commit ran, usually well under a second.
- Each queued file has a journal entry next to its staging copy (`<staging>.wb.json`). If the
  daemon dies (kill -9, a crash), the next mount of the instance commits what the journal names
  before it serves anything (`recover`). The journal is not fsynced: a power loss before the upload
  can lose the newest files, as with any write-back cache.
- Unmounting waits for the queue (`lamfs umount` waits for the daemon to exit); a second SIGTERM,
  or systemd's stop timeout, leaves the rest to the next mount.

This module holds the thread pool, the journal and the recovery; lamfs/fuse/ops.py decides what to
queue.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..errors import LamfsError, NotFound, StorageError

log = logging.getLogger("lamfs.fuse")

JOURNAL_SUFFIX = ".wb.json"
DEFAULT_THREADS = 8
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 30.0


def transient(exc: BaseException) -> bool:
    """Worth retrying: storage and network trouble, a busy catalog. Not: the file is gone, a name is
    refused (retrying would never succeed)."""
    if isinstance(exc, StorageError):
        return True
    return not isinstance(exc, LamfsError)


class WriteBack:
    """A pool of uploader threads and the count of files still to commit."""

    def __init__(self, threads: int = DEFAULT_THREADS):
        if threads < 1:
            raise ValueError("write-back needs at least one uploader thread")
        self.threads = threads
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="lamfs-upload")
        self._cv = threading.Condition()
        self.queued = 0       # files accepted and not yet committed (or given up)
        self.committed = 0
        self.retries = 0
        self.closing = threading.Event()  # unmounted: jobs that fail stop retrying after the drain deadline

    def submit(self, job, *args) -> None:
        with self._cv:
            self.queued += 1
        self._pool.submit(self._run, job, *args)

    def _run(self, job, *args) -> None:
        try:
            job(*args)
        except BaseException:  # noqa: BLE001 - a job logs its own failures; never kill the pool thread
            log.exception("write-back job failed")
        finally:
            with self._cv:
                self.queued -= 1
                self._cv.notify_all()

    def count_commit(self) -> None:
        with self._cv:
            self.committed += 1

    def backoff(self, attempt: int) -> bool:
        """Sleep before retry number `attempt`; False when unmounting and further waiting is pointless
        (the journal keeps the file for the next mount)."""
        with self._cv:
            self.retries += 1
        delay = min(RETRY_FIRST_S * (2 ** attempt), RETRY_MAX_S)
        return not self.closing.wait(delay)

    def drain(self, report_every_s: float = 10.0) -> None:
        """Block until every queued file is committed (or given up). Logs progress while waiting."""
        start = time.monotonic()
        with self._cv:
            while self.queued:
                if not self._cv.wait(timeout=report_every_s) and self.queued:
                    log.info("write-back: waiting for %d file(s) to reach storage (%.0f s so far)",
                             self.queued, time.monotonic() - start)

    def stop(self) -> None:
        """After drain: no retry keeps the process alive any longer."""
        self.closing.set()
        self._pool.shutdown(wait=True)

    def stats(self) -> dict:
        return {"queued": self.queued, "committed": self.committed, "retries": self.retries,
                "threads": self.threads}


# -- the journal ---------------------------------------------------------------------------------------

def journal_path(staging: Path) -> Path:
    return staging.with_name(staging.name + JOURNAL_SUFFIX)


def write_journal(staging: Path, *, key: str | None, artifact_id: int | None, dir_id: int | None,
                  name: str | None, mtime_ns: int) -> Path:
    """What to commit if the daemon dies before it does: the key (and, for a new file, the directory id
    and name, which survive a rename of the directory) or the artifact it replaces."""
    path = journal_path(staging)
    entry = {"staging": staging.name, "key": key, "artifact_id": artifact_id, "dir_id": dir_id, "name": name,
             "mtime_ns": mtime_ns, "pid": os.getpid(), "written_ns": time.time_ns()}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(entry))
    os.replace(tmp, path)
    return path


def lamfs_process_alive(pid: int) -> bool:
    """Is a lamfs daemon still running as `pid`? (A zombie is dead; a reused pid is another program.)"""
    if pid == os.getpid():
        return False  # an earlier daemon of ours cannot share our pid while we run
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, IndexError):
        return False
    return state != "Z" and b"lamfs" in cmdline


def pending_journals(staging_dir: Path) -> list[tuple[Path, dict]]:
    """Journal entries left by daemons that are no longer running, oldest first."""
    out = []
    for path in Path(staging_dir).glob("*" + JOURNAL_SUFFIX):
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError):
            log.warning("write-back: unreadable journal entry %s left as it is", path)
            continue
        if lamfs_process_alive(int(entry.get("pid", 0))):
            continue  # a running mount shares this cache directory: its own queue
        out.append((path, entry))
    out.sort(key=lambda pe: pe[1].get("written_ns", 0))
    return out


def recover(service, staging_dir: Path) -> dict:
    """Blocking, before a mount serves: commit the files a dead daemon had accepted in write-back mode
    and not yet committed. Each goes where the user last put it: the artifact it replaced if that is
    still live, else its directory and name (or its key). Failures are logged and kept for next time."""
    from ..keys import join_key

    done = failed = 0
    for jpath, entry in pending_journals(staging_dir):
        staging = Path(staging_dir) / entry["staging"]
        if not staging.exists():
            jpath.unlink(missing_ok=True)
            continue
        try:
            rec = None
            if entry.get("artifact_id") is not None:
                try:
                    current = service.catalog.artifact_by_id(entry["artifact_id"])
                except NotFound:
                    current = None
                if current is not None and not current.is_trashed and current.key is not None:
                    rec = service.commit_file(staging, over=current, mtime_ns=entry.get("mtime_ns"))
                elif current is not None and current.is_trashed:
                    log.info("write-back recovery: %s was deleted since it was written; dropped", entry["key"])
                    rec = current
            if rec is None:
                key = entry["key"]
                if entry.get("dir_id") is not None:
                    try:
                        key = join_key(service.dir_by_id(entry["dir_id"]).path, entry["name"])
                    except NotFound:
                        pass
                rec = service.commit_file(staging, key=key, mtime_ns=entry.get("mtime_ns"))
        except Exception as exc:  # noqa: BLE001 - keep the bytes and the journal for the next mount
            failed += 1
            log.error("write-back recovery of %s failed, kept at %s for the next mount: %s",
                      entry.get("key"), staging, exc)
            continue
        staging.unlink(missing_ok=True)
        jpath.unlink(missing_ok=True)
        done += 1
        log.info("write-back recovery: committed %s (written before the daemon stopped)", rec.key)
    return {"recovered": done, "failed": failed}
