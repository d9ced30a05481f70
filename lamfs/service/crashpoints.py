"""Test-only hooks that kill or fail this process between the steps of an operation.

`LAMFS_CRASH_AT=name[:N]` SIGKILLs the process the N-th time (default 1st) it passes the point `name`;
`LAMFS_FAIL_AT=name` raises an EIO-class `LamfsError` there instead (a commit that fails after a finished upload).
The crash tests use them to prove that every state between two steps is healed without a human step.
Unset (always, outside tests), a point costs one dict lookup."""
from __future__ import annotations

import os
import signal
import threading

from ..errors import LamfsError

# the points, in the order an operation passes them (the tests iterate over this tuple)
CRASH_POINTS = (
    "create.uploaded",     # a new file's bytes stored, no row yet
    "replace.uploaded",    # new bytes at the staged key, row unchanged
    "replace.committed",   # row names the staged key, intent "settle to K" recorded
    "settle.copied",       # bytes copied to K, row still names the staged key
    "settle.committed",    # row names K, the staged object not yet deleted
    "rename_over.committed",  # dst names src's object, intent recorded
)

_counts: dict[str, int] = {}
_lock = threading.Lock()


def _parse(value: str | None) -> tuple[str | None, int]:
    if not value:
        return None, 0
    name, _, nth = value.partition(":")
    return name, int(nth or 1)


def crash_point(name: str) -> None:
    crash, nth = _parse(os.environ.get("LAMFS_CRASH_AT"))
    if crash == name:
        with _lock:
            _counts[name] = _counts.get(name, 0) + 1
            hit = _counts[name] == nth
        if hit:
            os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get("LAMFS_FAIL_AT") == name:
        raise LamfsError(f"injected failure at {name} (LAMFS_FAIL_AT)")
