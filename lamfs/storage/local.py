"""LocalStorage: objects are plain files under a root directory.

Role: the local-directory backend of `lamfs.storage.base.Storage` (the embedded default instance
and tests). Writes go to a temp file next to the target (name starting with TEMP_PREFIX), are
fsynced and renamed into place, so a reader sees the old or the new file, never a partial one,
and a crash leaves at most a stale temp file that `list()` ignores.

Imports: the standard library, `lamfs.errors`, `lamfs.storage.base`.
"""
from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import secrets
import stat
from collections.abc import Iterable, Iterator
from os import PathLike

from lamfs.errors import (
    AccessDenied,
    ContentChanged,
    InvalidKey,
    LamfsError,
    NameTooLong,
    NotFound,
    StorageError,
)
from lamfs.storage.base import (
    TEMP_PREFIX,
    ObjectInfo,
    ProgressCallback,
    Storage,
    cumulative_progress,
    fsync_dir,
    make_temp_file,
    validate_key,
    validate_prefix,
)

_CHUNK_BYTES = 1024 * 1024


def local_etag(st: os.stat_result) -> str:
    """Content identity of a local file: changes whenever the file is rewritten or replaced."""
    return f"{st.st_mtime_ns:x}-{st.st_size:x}-{st.st_ino:x}"


def _info(key: str, st: os.stat_result) -> ObjectInfo:
    return ObjectInfo(key=key, size=st.st_size, etag=local_etag(st), mtime_ns=st.st_mtime_ns)


def _map_os_error(exc: OSError, what: str, *, writing: bool = False) -> LamfsError:
    """OSError → lamfs exception; `what` names the operation and path (goes into the message).

    When writing, ENOENT/ENOTDIR/EEXIST mean "a parent of the key is a file" (or the tree changed
    under us), which is a storage error, not a missing object."""
    if writing and exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EEXIST):
        return StorageError(f"{what}: a parent of the key is not a directory ({exc.strerror})")
    if isinstance(exc, FileNotFoundError) or exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return NotFound(f"{what}: not found")
    if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EPERM):
        return AccessDenied(f"{what}: permission denied")
    if exc.errno == errno.ENAMETOOLONG:
        return NameTooLong(f"{what}: name too long")
    return StorageError(f"{what}: {exc.strerror or exc}")


def _copy_fd(src_fd: int, dst_fd: int, on_delta) -> int:
    """Copy src_fd from its current offset to dst_fd; returns bytes copied."""
    total = 0
    buf = bytearray(_CHUNK_BYTES)
    view = memoryview(buf)
    while True:
        n = os.readv(src_fd, [buf])
        if n == 0:
            return total
        written = 0
        while written < n:
            written += os.write(dst_fd, view[written:n])
        total += n
        if on_delta is not None:
            on_delta(n)


class LocalStorage(Storage):
    is_local = True

    def __init__(self, root: str | PathLike[str], *, create: bool = True):
        path = pathlib.Path(root).expanduser()
        if create:
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise _map_os_error(exc, f"create storage root {str(path)!r}") from exc
        self._root = path.resolve()
        if not self._root.is_dir():
            raise StorageError(f"storage root is not a directory: {str(self._root)!r}")
        self.root = str(self._root)

    # -- paths ---------------------------------------------------------------------------------

    def _path(self, key: str) -> pathlib.Path:
        """The file for `key`, refusing anything that resolves outside the root (`..`, absolute
        keys, and symlinks inside the root that point out of it)."""
        validate_key(key)
        path = self._root / key
        # resolve() follows symlinks of the existing part of the path; a key is only legal if the
        # real location is still under the root.
        try:
            real = path.resolve()
        except (OSError, RuntimeError) as exc:  # symlink loops
            raise InvalidKey(f"storage key cannot be resolved under the root: {key!r}") from exc
        if real != self._root and self._root not in real.parents:
            raise InvalidKey(f"storage key escapes the storage root: {key!r}")
        return path

    def url(self, key: str) -> str:
        return str(self._path(key))

    def local_path(self, key: str) -> pathlib.Path:
        return self._path(key)

    def _what(self, op: str, key: str) -> str:
        return f"{op} {str(self._root / key)!r}"

    # -- reads ---------------------------------------------------------------------------------

    def _stat_file(self, path: pathlib.Path, key: str, op: str) -> os.stat_result:
        try:
            st = os.stat(path)
        except OSError as exc:
            raise _map_os_error(exc, self._what(op, key)) from exc
        if not stat.S_ISREG(st.st_mode):
            # Directories are implied by keys; only regular files are objects.
            raise NotFound(f"{self._what(op, key)}: not a file")
        return st

    def head(self, key: str) -> ObjectInfo:
        path = self._path(key)
        return _info(key, self._stat_file(path, key, "head"))

    def _open_checked(self, key: str, op: str, etag: str | None) -> tuple[int, os.stat_result]:
        """Open for reading and check the etag on the *opened* file (fstat), so the check and the
        bytes read refer to the same inode even if the path is replaced concurrently."""
        path = self._path(key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise _map_os_error(exc, self._what(op, key)) from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise NotFound(f"{self._what(op, key)}: not a file")
            if etag is not None and local_etag(st) != etag:
                raise ContentChanged(
                    f"{self._what(op, key)}: content changed (etag {local_etag(st)} != {etag})"
                )
        except BaseException:
            os.close(fd)
            raise
        return fd, st

    def get_range(self, key: str, start: int, length: int, *, etag: str | None = None) -> bytes:
        if start < 0 or length < 0:
            raise ValueError(f"invalid range start={start} length={length}")
        fd, st = self._open_checked(key, "get_range", etag)
        try:
            end = min(start + length, st.st_size)
            if end <= start:
                return b""
            parts = []
            pos = start
            while pos < end:
                chunk = os.pread(fd, end - pos, pos)
                if not chunk:  # truncated under us: return what exists
                    break
                parts.append(chunk)
                pos += len(chunk)
            return b"".join(parts) if len(parts) != 1 else parts[0]
        except OSError as exc:
            raise _map_os_error(exc, self._what("get_range", key)) from exc
        finally:
            os.close(fd)

    def download_file(
        self,
        key: str,
        dest: str | PathLike[str],
        *,
        etag: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> ObjectInfo:
        dest = pathlib.Path(dest)
        fd, st = self._open_checked(key, "download", etag)
        try:
            try:
                if dest.exists() and os.path.samefile(dest, self._path(key)):
                    # The cache path of a local root *is* the storage path (SEMANTICS §2 rule 1):
                    # copying it onto itself would only change its etag.
                    return _info(key, st)
            except OSError:
                pass

            def unchanged() -> None:
                # Rewritten in place while we copied: what we wrote may be torn. Do not keep it.
                if local_etag(os.fstat(fd)) != local_etag(st):
                    raise ContentChanged(f"{self._what('download', key)}: changed during the download")

            what = self._what("download", key) + f" to {str(dest)!r}"
            self._write_atomically(dest, fd, progress, what=what, check=unchanged)
        finally:
            os.close(fd)
        return _info(key, st)

    # -- writes --------------------------------------------------------------------------------

    def _write_atomically(
        self,
        target: pathlib.Path,
        src_fd: int | None,
        progress,
        *,
        what: str,
        data: bytes | None = None,
        check=None,
    ) -> None:
        """Copy src_fd (or `data`) into a temp file next to `target`, fsync, call `check()`, rename
        over `target`. On failure the temp file is removed and `target` is untouched."""
        try:
            tmp_fd, tmp_name = make_temp_file(target.parent)
        except OSError as exc:
            raise _map_os_error(exc, what, writing=True) from exc
        try:
            try:
                if data is not None:
                    view = memoryview(data)
                    written = 0
                    while written < len(view):
                        written += os.write(tmp_fd, view[written:])
                else:
                    _copy_fd(src_fd, tmp_fd, cumulative_progress(progress))
                os.fsync(tmp_fd)
            finally:
                os.close(tmp_fd)
            if check is not None:
                check()
            os.replace(tmp_name, target)
        except BaseException as exc:
            try:
                os.unlink(tmp_name)
            except OSError:
                pass
            if isinstance(exc, OSError):
                raise _map_os_error(exc, what, writing=True) from exc
            raise
        fsync_dir(target.parent)

    def put_file(
        self, src: str | PathLike[str], key: str, *, progress: ProgressCallback | None = None
    ) -> ObjectInfo:
        target = self._path(key)
        src = pathlib.Path(src)
        try:
            src_fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            # The source is the caller's file, not a storage object: a missing source is a plain
            # FileNotFoundError-flavoured NotFound naming the source path.
            raise _map_os_error(exc, f"put_file: read source {str(src)!r}") from exc
        try:
            if not stat.S_ISREG(os.fstat(src_fd).st_mode):
                raise StorageError(f"put_file: source is not a regular file: {str(src)!r}")
            try:
                if target.exists() and os.path.samefile(src, target):
                    return self.head(key)  # registering a file in place: nothing to copy
            except OSError:
                pass
            self._write_atomically(target, src_fd, progress, what=self._what("put", key))
        finally:
            os.close(src_fd)
        return self.head(key)

    def put_bytes(self, data: bytes, key: str) -> ObjectInfo:
        target = self._path(key)
        self._write_atomically(target, None, None, what=self._what("put", key), data=data)
        return self.head(key)

    def copy(self, src_key: str, dst_key: str) -> ObjectInfo:
        target = self._path(dst_key)
        if src_key == dst_key:
            return self.head(src_key)
        if self._link_into_place(src_key, target):
            return self.head(dst_key)
        fd, _st = self._open_checked(src_key, "copy", None)
        try:
            self._write_atomically(target, fd, None, what=self._what("copy", src_key) + f" to {dst_key!r}")
        finally:
            os.close(fd)
        return self.head(dst_key)

    def _link_into_place(self, src_key: str, target: pathlib.Path) -> bool:
        """A copy without moving bytes: hard-link the source to a temp name, rename it over the target.
        Safe because lamfs never rewrites an object in place (every write is temp + rename), so two
        names of one inode never see each other's changes. False where links are not possible (another
        filesystem, a filesystem without hard links): the caller copies the bytes."""
        src = self._path(src_key)
        try:
            if os.path.samefile(src, target):  # linked by an earlier, interrupted settle: done already
                return True
        except OSError:
            pass
        for attempt in range(8):
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
            except OSError:
                return False
            tmp_name = str(target.parent / f"{TEMP_PREFIX}{secrets.token_hex(8)}")
            try:
                os.link(src, tmp_name)
                break
            except FileNotFoundError as exc:
                # the source is gone, or the target's directory was pruned (local roots remove empty
                # parents) by a concurrent delete since the mkdir: then make it again
                if not src.exists() or attempt == 7:
                    raise _map_os_error(exc, self._what("copy", src_key)) from exc
            except OSError:
                return False
        try:
            # (rename(2) onto another link of the same inode does nothing and leaves the source name:
            # hence the samefile check above, and the unlink below for a race with another linker)
            os.replace(tmp_name, target)
            if os.path.lexists(tmp_name):
                os.unlink(tmp_name)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
            raise _map_os_error(exc, self._what("copy", src_key), writing=True) from exc
        fsync_dir(target.parent)
        return True

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            os.unlink(path)
            self._prune_empty_parents(path)
        except FileNotFoundError:
            return
        except NotADirectoryError:
            return  # a parent is a file: the key cannot exist
        except IsADirectoryError as exc:
            raise StorageError(f"{self._what('delete', key)}: is a directory") from exc
        except OSError as exc:
            if exc.errno == errno.EISDIR or (exc.errno == errno.EPERM and path.is_dir()):
                raise StorageError(f"{self._what('delete', key)}: is a directory") from exc
            raise _map_os_error(exc, self._what("delete", key)) from exc

    def _prune_empty_parents(self, path: pathlib.Path) -> None:
        # S3 has no directories: once a folder artifact's last file is gone, so is its folder here
        root = pathlib.Path(self.root)
        parent = path.parent
        while parent != root and root in parent.parents:
            try:
                parent.rmdir()
            except OSError:
                return
            parent = parent.parent

    def delete_many(self, keys: Iterable[str]) -> None:
        keys = [validate_key(k) for k in keys]  # refuse the whole batch before deleting anything
        failed: list[str] = []
        first_exc: BaseException | None = None
        for key in keys:
            try:
                self.delete(key)
            except (StorageError, InvalidKey) as exc:
                failed.append(key)
                first_exc = first_exc or exc
        if failed:
            shown = ", ".join(repr(k) for k in failed[:10])
            more = f" and {len(failed) - 10} more" if len(failed) > 10 else ""
            raise StorageError(
                f"delete_many under {self.root!r}: {len(failed)} key(s) failed: {shown}{more}"
            ) from first_exc

    # -- listing -------------------------------------------------------------------------------

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        # Walk only the deepest directory the prefix names completely; filter by string prefix
        # (so 'a/b' matches 'a/b/c' and 'a/bc', and no character in it is a wildcard).
        dir_part = prefix.rpartition("/")[0]
        start = self._root / dir_part if dir_part else self._root
        if dir_part:
            real = start.resolve()
            if self._root not in real.parents:
                raise InvalidKey(f"storage prefix escapes the storage root: {prefix!r}")
        found: list[ObjectInfo] = []
        base = f"{dir_part}/" if dir_part else ""
        self._walk(start, base, prefix, found)
        found.sort(key=lambda info: info.key)
        return iter(found)

    def _walk(self, directory: pathlib.Path, base: str, prefix: str, out: list[ObjectInfo]) -> None:
        try:
            it = os.scandir(directory)
        except FileNotFoundError:
            return
        except NotADirectoryError:
            return
        except OSError as exc:
            raise _map_os_error(exc, f"list {str(directory)!r}") from exc
        with it:
            for entry in it:
                name = entry.name
                try:
                    name.encode("utf-8")
                except UnicodeEncodeError:
                    continue  # undecodable file name: cannot be a key
                key = base + name
                try:
                    if entry.is_dir(follow_symlinks=False):
                        # Descend only if keys below could match the prefix.
                        sub = key + "/"
                        if sub.startswith(prefix) or prefix.startswith(sub):
                            self._walk(pathlib.Path(entry.path), sub, prefix, out)
                        continue
                    if not entry.is_file(follow_symlinks=False):
                        continue  # symlinks, sockets, fifos are not objects
                    if name.startswith(TEMP_PREFIX) or not key.startswith(prefix):
                        continue
                    out.append(_info(key, entry.stat(follow_symlinks=False)))
                except FileNotFoundError:
                    continue  # removed while listing
