"""Free space on the local disk(s) under a mount: the margin kept free, and how many bytes writes may
still take.

Why: the catalog (SQLite), the block cache and the staging copies of files being written usually
share one filesystem (the instance's home). A write through the mount that fills it to the last byte
leaves the catalog unable to commit ("database or disk is full", then "cannot rollback - no
transaction is active"): one big file breaks every small one after it. So writes stop short of a
margin that is kept free for the catalog, journals and temp files, as mountpoint-s3 (5%) and JuiceFS
(10%) do. A full disk then is an ordinary ENOSPC on write(2), not a breakdown.

The margin of a filesystem is 5% of its size, clamped to 64 MiB..4 GiB, and never more than 10% of it
(a 40 MB filesystem keeps 4 MB, not 64 MiB), unless `lamfs mount --disk-margin SIZE` sets it.

Standard library only; everything here is blocking (statvfs) and thread-safe.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

MARGIN_FRACTION = 0.05
MARGIN_MIN = 64 << 20
MARGIN_MAX = 4 << 30
MARGIN_CAP_FRACTION = 0.10  # a small filesystem keeps at most this much of itself free

#: How long a statvfs result is trusted, as long as the bytes written since stay within what it
#: allowed. Other processes on the same disk are not counted meanwhile: the margin absorbs that.
#: Measured on the 2-core dev VM (ext4 and tmpfs, three directories on one disk): `reserve` costs
#: 0.3-0.4 us on the cached path and ~5 us when it checks again (one os.statvfs is ~2 us; finding the
#: filesystems of the directories, a stat and an exists() per directory, took 40 us and is redone only
#: every RESOLVE_EVERY_S). A 128 KiB write through the mount took 250-330 us end to end (the pwrite
#: alone ~8 us): the check adds ~0.15% on the cached path, ~2% near the margin where every write checks.
CHECK_EVERY_S = 0.5
#: How long the directories' filesystems are trusted (a cache dir created or mounted over later).
RESOLVE_EVERY_S = 10.0


def default_margin(total_bytes: int) -> int:
    """The margin kept free on a filesystem of `total_bytes`."""
    margin = min(max(int(total_bytes * MARGIN_FRACTION), MARGIN_MIN), MARGIN_MAX)
    return min(margin, int(total_bytes * MARGIN_CAP_FRACTION))


@dataclass(frozen=True)
class DiskSpace:
    """One filesystem as seen now: its size, what an unprivileged writer may still use, the margin."""

    path: str  # the first directory (of those watched) that lives on it
    total_bytes: int
    free_bytes: int  # f_bavail: what a non-root writer could still use
    margin_bytes: int

    @property
    def usable_bytes(self) -> int:
        """What writes may still take before they reach the margin (negative: inside it)."""
        return self.free_bytes - self.margin_bytes

    def as_dict(self) -> dict:
        return {"path": self.path, "total_bytes": self.total_bytes, "free_bytes": self.free_bytes,
                "margin_bytes": self.margin_bytes, "usable_bytes": self.usable_bytes}


def _existing(path: Path) -> Path:
    """The directory itself, or its nearest existing ancestor (a cache dir not created yet lives on
    the filesystem of its parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def mount_root(path: str | os.PathLike) -> str:
    """The mount point of the filesystem holding `path` (what a person recognises in `df`)."""
    path = _existing(Path(path)).resolve()
    dev = os.stat(path).st_dev
    while path != path.parent and os.stat(path.parent).st_dev == dev:
        path = path.parent
    return str(path)


def filesystems(paths: list[str | os.PathLike]) -> list[str]:
    """Blocking: one directory per distinct filesystem holding `paths` (the first one on it)."""
    seen: dict[int, str] = {}
    for p in paths:
        where = _existing(Path(p))
        seen.setdefault(os.stat(where).st_dev, str(where))
    return list(seen.values())


def disk_space(paths: list[str | os.PathLike], margin: int | None = None) -> list[DiskSpace]:
    """Blocking: one DiskSpace per distinct filesystem holding `paths` (margin None: the default)."""
    return [_statvfs(where, margin) for where in filesystems(paths)]


def _statvfs(where: str, margin: int | None) -> DiskSpace:
    st = os.statvfs(where)
    total = st.f_blocks * st.f_frsize
    return DiskSpace(path=where, total_bytes=total, free_bytes=st.f_bavail * st.f_frsize,
                     margin_bytes=default_margin(total) if margin is None else margin)


def catalog_path(catalog_url: str) -> Path | None:
    """The SQLite file of a catalog URL (None for a server catalog: not on our disk)."""
    prefix = "sqlite:///"
    return Path(catalog_url[len(prefix):]) if catalog_url.startswith(prefix) else None


class SpaceGuard:
    """The per-write check: may `n` more bytes be written to the watched filesystems?

    `reserve(n)` is called before every write with the bytes it may add, and `written(n)` once that
    write is over (done or failed). It trusts the last statvfs for CHECK_EVERY_S while the bytes
    reserved since stay within what that check allowed, so the common case is a lock and an addition;
    close to the margin every write checks again, so space freed by anyone (a deleted file, an evicted
    block) is seen at once. Bytes reserved and not yet written are not in a statvfs taken meanwhile:
    they are counted apart (without that, an 8 MiB cache block being written while another was allowed
    was counted as free, and the disk went into its margin)."""

    def __init__(self, paths: list[str | os.PathLike], margin: int | None = None,
                 check_every_s: float = CHECK_EVERY_S):
        self.paths = [Path(p) for p in paths]
        self.margin = margin
        self.check_every_s = check_every_s
        self._lock = threading.Lock()
        self._targets: list[str] = []  # one directory per filesystem (see filesystems)
        self._resolved = float("-inf")
        self._checked = float("-inf")  # monotonic time of the last statvfs
        self._allowed = 0  # usable bytes at the last statvfs (the tightest filesystem)
        self._taken = 0  # bytes reserved since
        self._inflight = 0  # bytes reserved whose writes are not over (not in any statvfs yet)
        self.refusals = 0

    def disks(self) -> list[DiskSpace]:
        """Blocking: the watched filesystems now (for stats; does not touch the cached check)."""
        return disk_space(self.paths, self.margin)

    def _check_locked(self) -> None:
        now = time.monotonic()
        if now - self._resolved > RESOLVE_EVERY_S:
            self._targets, self._resolved = filesystems(self.paths), now
        try:
            disks = [_statvfs(where, self.margin) for where in self._targets]
        except FileNotFoundError:  # a directory removed meanwhile: find the filesystems again
            self._targets, self._resolved = filesystems(self.paths), now
            disks = [_statvfs(where, self.margin) for where in self._targets]
        self._allowed = min((d.usable_bytes for d in disks), default=1 << 62) - self._inflight
        self._taken = 0
        self._checked = now

    def reserve(self, n: int) -> bool:
        """Blocking (a statvfs now and then): True if `n` bytes fit before the margin (and count them:
        call written(n) after the write), False if not (nothing counted)."""
        with self._lock:
            if self._taken + n <= self._allowed and time.monotonic() - self._checked < self.check_every_s:
                self._taken += n
                self._inflight += n
                return True
            self._check_locked()
            if n <= self._allowed:
                self._taken = n
                self._inflight += n
                return True
            return False

    def written(self, n: int) -> None:
        """The write `n` bytes were reserved for is over (written or failed): statvfs counts it now."""
        with self._lock:
            self._inflight -= n

    def refused(self) -> None:
        """Count a write refused for want of space (shown by `lamfs status`)."""
        with self._lock:
            self.refusals += 1

    def shortfall(self, n: int) -> int:
        """Blocking: how many bytes must be freed for `n` to fit now (0: it fits)."""
        with self._lock:
            self._check_locked()
            return max(0, n - self._allowed)

    def stats(self) -> dict:
        """Blocking: what the margin holds back on each filesystem, for `lamfs status`."""
        disks = self.disks()
        return {"margin_bytes": sum(d.margin_bytes for d in disks), "refusals": self.refusals,
                "disks": [dict(d.as_dict(), mount=mount_root(d.path)) for d in disks]}
