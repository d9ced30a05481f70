"""lamfs's own exceptions. Every layer raises these; the FUSE adapter maps them to errno in one place.

Imports nothing from lamfs. Each class carries the errno a mount should answer with, so the
mapping is total and lives with the meaning of the error.
"""
from __future__ import annotations

import errno


class LamfsError(Exception):
    """Base class. `errno` is what the mount answers; `user_error` means: no traceback in the CLI."""

    errno = errno.EIO
    user_error = True


class InvalidKey(LamfsError, ValueError):
    errno = errno.EINVAL


class NameTooLong(InvalidKey):
    errno = errno.ENAMETOOLONG


class NotFound(LamfsError, FileNotFoundError):
    errno = errno.ENOENT


class StaleInode(NotFound):
    """An inode the mount no longer knows (its artifact or directory is gone, or was replaced by another
    one at the same name): ESTALE, so the kernel looks the name up again instead of failing a
    name that exists with ENOENT."""

    errno = errno.ESTALE


class SourceChanged(LamfsError):
    """The local file being committed changed during its hashing or upload: nothing was committed."""

    errno = errno.EAGAIN


class AlreadyExists(LamfsError, FileExistsError):
    errno = errno.EEXIST


class NotEmpty(LamfsError):
    errno = errno.ENOTEMPTY


class IsADirectory(LamfsError, ValueError):
    errno = errno.EISDIR


class NotADirectory(LamfsError, ValueError):
    errno = errno.ENOTDIR


class ReadOnly(LamfsError):
    """Writes into .lamfs/, folder artifacts, or a read-only mount."""

    errno = errno.EROFS


class NotPermitted(LamfsError):
    errno = errno.EPERM


class InstanceError(LamfsError):
    """Missing, duplicate or misconfigured instance."""

    errno = errno.EINVAL


class StorageError(LamfsError):
    """A storage request failed for a reason that retrying will not fix."""

    errno = errno.EIO


class StorageUnavailable(StorageError):
    """The storage backend did not answer (after retries): network, 5xx, throttling."""


class ContentChanged(StorageError):
    """The object no longer has the content identity (etag) the caller expected."""

    errno = errno.ESTALE


class AccessDenied(StorageError):
    errno = errno.EACCES


class NoSpace(LamfsError):
    """The local disk under the mount (staging, cache, catalog) is down to its free-space margin."""

    errno = errno.ENOSPC


class CatalogBusy(LamfsError):
    """The catalog stayed locked/unreachable after retries."""

    errno = errno.EAGAIN
    user_error = False
