"""The one place where exceptions become errno. pyfuse3 only understands FUSEError: anything else
escaping a handler would kill the mount, so `fuse_errors` turns every exception into one; an
unexpected exception is logged once with its traceback and answered with EIO."""
from __future__ import annotations

import errno
import functools
import logging

import pyfuse3

from ..errors import LamfsError, StaleInode

log = logging.getLogger("lamfs.fuse")

# errors that are normal answers, not incidents: logged at DEBUG
QUIET = {errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY, errno.ENODATA, errno.ENOTDIR, errno.EISDIR, errno.ENOTSUP}


def to_errno(exc: BaseException) -> int:
    if isinstance(exc, LamfsError):
        return exc.errno
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.EIO


def fuse_errors(handler):
    """Decorator for every Operations method (must not block: it only wraps the coroutine)."""
    name = handler.__name__

    @functools.wraps(handler)
    async def wrapper(*args, **kwargs):
        try:
            return await handler(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except LamfsError as exc:
            code = exc.errno
            # a stale inode is a name changed elsewhere: the kernel looks it up again, nothing failed
            level = logging.DEBUG if code in QUIET or isinstance(exc, StaleInode) else logging.WARNING
            log.log(level, "%s: %s (%s)", name, exc, errno.errorcode.get(code, code))
            raise pyfuse3.FUSEError(code) from None
        except OSError as exc:
            code = to_errno(exc)
            log.log(logging.DEBUG if code in QUIET else logging.WARNING, "%s: %s", name, exc)
            raise pyfuse3.FUSEError(code) from None
        except Exception:  # noqa: BLE001 - the mount must survive any handler bug
            log.exception("%s: unexpected error, answering EIO", name)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper
