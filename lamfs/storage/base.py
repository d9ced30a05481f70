"""The storage interface: where artifact bytes live (an S3 bucket/prefix or a local directory).

Role: one small, synchronous, thread-safe interface (head, ranged get, download to a file, put a
file, server-side copy, delete, list) that the service and the cache code against, with S3 and
local-directory implementations and a fault-injecting wrapper for tests.

Imports: the standard library and `lamfs.errors` only. Nothing here knows about the catalog,
the cache or FUSE. Implementations raise lamfs's own exceptions (`NotFound`, `ContentChanged`,
`StorageUnavailable`, `AccessDenied`, `StorageError`, `InvalidKey`), never backend exceptions.

Keys are '/'-separated paths relative to the storage root. The catalog validates them; this
layer re-checks (defence in depth) that no key can escape the root: see `validate_key`.
"""
from __future__ import annotations

import os
import pathlib
import tempfile
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from os import PathLike

from lamfs.errors import InvalidKey, NotFound

#: Called with the cumulative number of bytes transferred so far (may go down if a part is retried).
ProgressCallback = Callable[[int], None]

#: Temp files written next to their target start with this; `list()` never reports them and a
#: cleanup (fsck) may remove stale ones.
TEMP_PREFIX = ".lamfs-tmp-"


@dataclass(frozen=True)
class ObjectInfo:
    """What storage knows about one object. `etag` is the content identity used for cache freshness
    and for conditional reads: S3's ETag without quotes; local: f"{mtime_ns:x}-{size:x}-{ino:x}"."""

    key: str
    size: int
    etag: str
    mtime_ns: int


def validate_key(key: str) -> str:
    """Refuse keys that could escape the root or alias another key; return the key unchanged.

    Refused: non-str, empty, NUL, a leading '/', empty segments ('a//b', trailing '/'), '.' and
    '..' segments, and segments starting with TEMP_PREFIX (reserved for our temp files, which
    listings hide). Everything else ('%', '_', '\\', spaces, unicode, mixed case) is a plain
    string to storage and must round-trip exactly.
    """
    if not isinstance(key, str):
        raise InvalidKey(f"storage key must be a str, not {type(key).__name__}")
    if not key:
        raise InvalidKey("empty storage key")
    if "\x00" in key:
        raise InvalidKey(f"storage key contains NUL: {key!r}")
    if key.startswith("/"):
        raise InvalidKey(f"storage key must be relative to the root: {key!r}")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidKey(f"storage key has an empty, '.' or '..' segment: {key!r}")
        if segment.startswith(TEMP_PREFIX):
            raise InvalidKey(f"storage key segments starting with {TEMP_PREFIX!r} are reserved: {key!r}")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates: not representable on S3 nor in the catalog
        raise InvalidKey(f"storage key is not valid unicode: {key!r}") from exc
    return key


def validate_prefix(prefix: str) -> str:
    """A listing prefix is a string prefix of keys: '' (everything), 'dir/', 'dir/fi'.

    Every complete segment (all but the last) must be a valid key segment, so that a listing can
    never walk outside the root; the last, partial segment is free text (it only filters).
    """
    if not isinstance(prefix, str):
        raise InvalidKey(f"storage prefix must be a str, not {type(prefix).__name__}")
    if not prefix:
        return prefix
    if "\x00" in prefix:
        raise InvalidKey(f"storage prefix contains NUL: {prefix!r}")
    if prefix.startswith("/"):
        raise InvalidKey(f"storage prefix must be relative to the root: {prefix!r}")
    for segment in prefix.split("/")[:-1]:
        if segment in ("", ".", ".."):
            raise InvalidKey(f"storage prefix has an empty, '.' or '..' segment: {prefix!r}")
    return prefix


class Storage(ABC):
    """One storage root. Implementations are thread-safe; methods block (call them from worker
    threads, never on the trio loop)."""

    #: "s3://bucket/prefix" (no trailing slash) or an absolute local directory path.
    root: str
    is_local: bool

    @abstractmethod
    def url(self, key: str) -> str:
        """Full location of `key`: "s3://bucket/prefix/key" or "/abs/root/key"."""

    @abstractmethod
    def local_path(self, key: str) -> pathlib.Path | None:
        """The file holding `key` for local roots; None for remote roots."""

    @abstractmethod
    def head(self, key: str) -> ObjectInfo:
        """Size/etag/mtime of `key`; NotFound if absent."""

    def exists(self, key: str) -> bool:
        try:
            self.head(key)
        except NotFound:
            return False
        return True

    @abstractmethod
    def get_range(self, key: str, start: int, length: int, *, etag: str | None = None) -> bytes:
        """Bytes [start, start+length): shorter at EOF, b"" at/after EOF or when length == 0.

        With `etag`, raise ContentChanged if the object no longer has that etag.
        """

    @abstractmethod
    def download_file(
        self,
        key: str,
        dest: str | PathLike[str],
        *,
        etag: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> ObjectInfo:
        """Write the object to `dest` atomically (temp file in dest's directory, fsync, os.replace).

        On any failure `dest` is untouched and no temp file remains. Returns the info of the
        version written (its etag matches the bytes). With `etag`, ContentChanged if it differs.
        """

    @abstractmethod
    def put_file(
        self, src: str | PathLike[str], key: str, *, progress: ProgressCallback | None = None
    ) -> ObjectInfo:
        """Store the file `src` at `key`, replacing any object there. Readers see the old or the
        new object, never a partial one; a failed put leaves the old object (or none)."""

    @abstractmethod
    def put_bytes(self, data: bytes, key: str) -> ObjectInfo:
        """Store `data` at `key` (same guarantees as put_file)."""

    @abstractmethod
    def copy(self, src_key: str, dst_key: str) -> ObjectInfo:
        """Server-side copy within this root; NotFound if src is absent."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove `key`; absent is fine."""

    @abstractmethod
    def delete_many(self, keys: Iterable[str]) -> None:
        """Remove all `keys` (absent ones are fine); StorageError naming the keys that failed."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """All objects whose key starts with `prefix` (a plain string prefix, recursive), sorted by
        key (code point order, which is also S3's UTF-8 byte order)."""

    def warm_up(self) -> None:
        """Prepare for a first request without delay (a daemon calls it once at start); best effort,
        never raises. Nothing to do on local roots."""

    def incomplete_uploads(self) -> list[tuple[str, str, int]]:
        """Multipart uploads started and neither completed nor aborted, as (key, upload id,
        initiated ns): the parts are stored (and billed) but no object exists. None on local roots."""
        return []

    def abort_upload(self, key: str, upload_id: str) -> None:
        """Discard an incomplete upload's parts."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections/threads. Idempotent."""

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.root!r})"


def current_umask() -> int:
    """The process umask. os.umask() can only be read by setting it, which races with other
    threads; Linux reports it in /proc/self/status."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def make_temp_file(directory: pathlib.Path) -> tuple[int, str]:
    """Create a temp file (TEMP_PREFIX…) in `directory` (created if needed) with the mode a plain
    open() would give (mkstemp makes 0600 files). Returns (fd, path)."""
    for attempt in range(8):
        directory.mkdir(parents=True, exist_ok=True)
        try:
            fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=directory)
            break
        except FileNotFoundError:
            # a concurrent delete of the directory's last file pruned it (local roots remove empty
            # parents) between the mkdir and here: make it again
            if attempt == 7:
                raise
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
    except OSError:
        os.close(fd)
        os.unlink(name)
        raise
    return fd, name


def fsync_dir(path: pathlib.Path) -> None:
    """Make a rename in `path` durable; best effort (some filesystems refuse directory fsync)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def cumulative_progress(progress: ProgressCallback | None) -> Callable[[int], None] | None:
    """Adapt a cumulative `progress(bytes_done)` callback to a thread-safe delta receiver
    (s3transfer and our copy loops report increments, possibly from several threads)."""
    if progress is None:
        return None
    lock = threading.Lock()
    done = 0

    def on_delta(delta: int) -> None:
        nonlocal done
        with lock:
            done += delta
            total = done
            # Called under the lock so the callback sees a monotone sequence per retry-free run.
            progress(total)

    return on_delta
