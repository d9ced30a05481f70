"""FaultyStorage: a Storage wrapper that injects failures and delays, for tests.

Role: lets service/cache/FUSE tests provoke storage outages, slow requests and lost responses
deterministically, against any real backend (local or S3), and count the calls each layer makes.

    fs = FaultyStorage(LocalStorage(tmp))
    fs.fail({"put_file"}, times=1)          # next put_file raises StorageUnavailable, writes nothing
    fs.fail("all", exc=AccessDenied)        # every operation raises AccessDenied until heal()
    fs.fail({"put_bytes"}, after=True)      # the write happens, then the caller sees an error
    fs.delay("get_range", 0.5)
    fs.calls["get_range"]                   # how many times it was called (failed ones included)
    fs.heal()

A failure injected *before* the call (the default) never reaches the inner storage, so a failed
upload leaves no object, partial or whole. `after=True` models a lost response: the operation
completed but the caller is told it failed (orphans, idempotent retries).

Imports: the standard library, `lamfs.errors`, `lamfs.storage.base`.
"""
from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from os import PathLike
from typing import Any

from lamfs.errors import StorageUnavailable
from lamfs.storage.base import ObjectInfo, ProgressCallback, Storage

#: The operations faults and delays can target.
OPS = frozenset(
    {
        "head",
        "exists",
        "get_range",
        "download_file",
        "put_file",
        "put_bytes",
        "copy",
        "delete",
        "delete_many",
        "list",
    }
)

ExcSpec = type[BaseException] | BaseException | Callable[[str], BaseException]


@dataclass
class _Fault:
    ops: frozenset[str]
    exc: ExcSpec
    remaining: int | None  # None: until heal()
    after: bool
    key_contains: str | None

    def matches(self, op: str, desc: str) -> bool:
        if op not in self.ops:
            return False
        if self.key_contains is not None and self.key_contains not in desc:
            return False
        return self.remaining is None or self.remaining > 0

    def make(self, op: str, desc: str) -> BaseException:
        message = f"injected fault: {op} {desc}"
        exc = self.exc
        if isinstance(exc, BaseException):
            return exc
        return exc(message)  # an exception class or a factory


def _ops(ops: str | Iterable[str]) -> frozenset[str]:
    if ops == "all":
        return OPS
    chosen = frozenset([ops]) if isinstance(ops, str) else frozenset(ops)
    unknown = chosen - OPS
    if unknown:
        raise ValueError(f"unknown storage operation(s) {sorted(unknown)}; known: {sorted(OPS)}")
    return chosen


class FaultyStorage(Storage):
    def __init__(self, inner: Storage):
        self.inner = inner
        self.root = inner.root
        self.is_local = inner.is_local
        #: calls per operation name, counted whether or not a fault fired.
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._delays: dict[str, float] = {}

    # -- control -------------------------------------------------------------------------------

    def fail(
        self,
        ops: str | Iterable[str] = "all",
        exc: ExcSpec = StorageUnavailable,
        times: int | None = None,
        *,
        after: bool = False,
        key_contains: str | None = None,
    ) -> None:
        """Make the next `times` calls (None: all until heal()) of `ops` raise `exc` (a class, an
        instance, or a callable taking the message). `key_contains` limits it to calls whose
        key/path arguments contain that text. Faults are checked in the order they were added."""
        with self._lock:
            self._faults.append(_Fault(_ops(ops), exc, times, after, key_contains))

    def delay(self, ops: str | Iterable[str], seconds: float) -> None:
        """Sleep `seconds` before each call of `ops` (0 removes the delay)."""
        with self._lock:
            for op in _ops(ops):
                if seconds > 0:
                    self._delays[op] = seconds
                else:
                    self._delays.pop(op, None)

    def heal(self) -> None:
        """Remove all faults and delays (call counters are kept; use calls.clear())."""
        with self._lock:
            self._faults.clear()
            self._delays.clear()

    # -- plumbing ------------------------------------------------------------------------------

    def _run(self, op: str, desc: str, fn: Callable[[], Any]) -> Any:
        with self._lock:
            self.calls[op] += 1
            fault = next((f for f in self._faults if f.matches(op, desc)), None)
            if fault is not None and fault.remaining is not None:
                fault.remaining -= 1
            delay_s = self._delays.get(op, 0.0)
        if delay_s:
            time.sleep(delay_s)  # outside the lock: other threads' calls are not serialized
        if fault is not None and not fault.after:
            raise fault.make(op, desc)
        result = fn()
        if fault is not None:
            raise fault.make(op, desc)
        return result

    # -- Storage -------------------------------------------------------------------------------

    def url(self, key: str) -> str:
        return self.inner.url(key)

    def local_path(self, key: str):
        return self.inner.local_path(key)

    def head(self, key: str) -> ObjectInfo:
        return self._run("head", key, lambda: self.inner.head(key))

    def exists(self, key: str) -> bool:
        return self._run("exists", key, lambda: self.inner.exists(key))

    def get_range(self, key: str, start: int, length: int, *, etag: str | None = None) -> bytes:
        return self._run("get_range", key, lambda: self.inner.get_range(key, start, length, etag=etag))

    def download_file(
        self,
        key: str,
        dest: str | PathLike[str],
        *,
        etag: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> ObjectInfo:
        return self._run(
            "download_file",
            f"{key} -> {dest}",
            lambda: self.inner.download_file(key, dest, etag=etag, progress=progress),
        )

    def put_file(
        self, src: str | PathLike[str], key: str, *, progress: ProgressCallback | None = None
    ) -> ObjectInfo:
        return self._run("put_file", f"{src} -> {key}", lambda: self.inner.put_file(src, key, progress=progress))

    def put_bytes(self, data: bytes, key: str) -> ObjectInfo:
        return self._run("put_bytes", key, lambda: self.inner.put_bytes(data, key))

    def copy(self, src_key: str, dst_key: str) -> ObjectInfo:
        return self._run("copy", f"{src_key} -> {dst_key}", lambda: self.inner.copy(src_key, dst_key))

    def delete(self, key: str) -> None:
        return self._run("delete", key, lambda: self.inner.delete(key))

    def delete_many(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        return self._run("delete_many", " ".join(keys), lambda: self.inner.delete_many(keys))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # The fault fires at call time; iteration itself is the inner backend's.
        return self._run("list", prefix, lambda: self.inner.list(prefix))

    def warm_up(self) -> None:
        self.inner.warm_up()  # best effort by contract: no fault to inject

    def incomplete_uploads(self) -> list[tuple[str, str, int]]:
        return self._run("incomplete_uploads", "", self.inner.incomplete_uploads)

    def abort_upload(self, key: str, upload_id: str) -> None:
        return self._run("abort_upload", key, lambda: self.inner.abort_upload(key, upload_id))

    def close(self) -> None:
        self.inner.close()

    def __repr__(self) -> str:
        return f"FaultyStorage({self.inner!r})"
