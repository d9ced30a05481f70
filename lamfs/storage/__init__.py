"""Storage layer: where artifact bytes live. See `lamfs.storage.base` for the interface.

`open_storage(url)` is the one entry point the composition root uses:

    open_storage("s3://bucket/prefix", max_attempts=5)   # S3Storage (boto3)
    open_storage("/data/lamfs")                          # LocalStorage
    open_storage("file:///data/lamfs")                   # LocalStorage

Imports: `lamfs.errors` and this package's modules. boto3 is imported only when an S3 root is
opened (lamfs.storage.s3 is the only module importing it), so local-only use never pays for it.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from lamfs.errors import StorageError
from lamfs.storage.base import TEMP_PREFIX, ObjectInfo, Storage, validate_key, validate_prefix
from lamfs.storage.faulty import FaultyStorage
from lamfs.storage.local import LocalStorage

if TYPE_CHECKING:
    from lamfs.storage.s3 import S3Storage

__all__ = [
    "TEMP_PREFIX",
    "FaultyStorage",
    "LocalStorage",
    "ObjectInfo",
    "S3Storage",
    "Storage",
    "open_storage",
    "validate_key",
    "validate_prefix",
]


def open_storage(url: str | os.PathLike[str], **options: Any) -> Storage:
    """Open the storage root at `url`.

    - "s3://bucket" or "s3://bucket/prefix" → S3Storage(url, **options) (see its options:
      endpoint_url, max_attempts, connect_timeout_s, read_timeout_s, multipart_threshold_bytes, ...)
    - "file:///abs/dir" or a local path (relative paths are resolved against the current
      directory) → LocalStorage, created if missing.
    Other schemes → StorageError.
    """
    text = os.fspath(url)
    if not isinstance(text, str):
        text = os.fsdecode(text)
    parsed = urlparse(text)
    scheme = parsed.scheme.lower()
    if scheme == "s3":
        from lamfs.storage.s3 import S3Storage

        return S3Storage(text, **options)
    if scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise StorageError(f"file:// url with a remote host is not supported: {text!r}")
        return LocalStorage(unquote(parsed.path), **options)
    if scheme and len(scheme) > 1:  # (a one-letter "scheme" would be a Windows drive letter)
        raise StorageError(f"unsupported storage url scheme {scheme!r}: {text!r}")
    return LocalStorage(text, **options)


def __getattr__(name: str) -> Any:
    # S3Storage on demand, so `import lamfs.storage` does not import boto3.
    if name == "S3Storage":
        from lamfs.storage.s3 import S3Storage

        return S3Storage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
