"""S3Storage: objects in an S3 bucket under an optional key prefix (AWS or any S3-compatible server).

Role: the S3 backend of `lamfs.storage.base.Storage`. This is the ONLY lamfs module that imports
boto3/botocore/s3transfer; every botocore/s3transfer exception is translated here into lamfs's
own exceptions (`raise … from exc`), with messages naming the object, never credentials.

Configuration comes from the standard boto3 chain (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_PROFILE,
AWS_DEFAULT_REGION, config/credentials files); `endpoint_url=`, `region_name=`, `profile_name=`
override it. One botocore client is created at init and shared by all threads (botocore clients
are thread-safe). Requests use the "standard" retry mode (backs off on throttling, 5xx and
connection errors) and bounded connect/read timeouts, so an unreachable endpoint fails with
StorageUnavailable in bounded time.

Imports: the standard library, boto3/botocore/s3transfer/urllib3, `lamfs.errors`,
`lamfs.storage.base`.
"""
from __future__ import annotations

import calendar
import email.utils
import logging
import os
import pathlib
import random
import stat
import threading
import time
from collections.abc import Iterable, Iterator
from os import PathLike
from typing import Any
from urllib.parse import urlparse

import boto3
import botocore.exceptions as bce
import botocore.loaders
import botocore.session
import urllib3.exceptions
from boto3.s3.transfer import ProgressCallbackInvoker, TransferConfig, create_transfer_manager
from botocore.config import Config
from s3transfer.subscribers import BaseSubscriber

from lamfs.errors import (
    AccessDenied,
    ContentChanged,
    LamfsError,
    NotFound,
    StorageError,
    StorageUnavailable,
)
from lamfs.storage.base import (
    ObjectInfo,
    ProgressCallback,
    Storage,
    cumulative_progress,
    fsync_dir,
    make_temp_file,
    validate_key,
    validate_prefix,
)

log = logging.getLogger(__name__)

MiB = 1024 * 1024
GiB = 1024 * MiB

#: S3 caps DeleteObjects at 1000 keys per request.
_DELETE_BATCH = 1000

_NOT_FOUND_CODES = {"NoSuchKey", "NotFound", "404", "NoSuchVersion"}
_PRECONDITION_CODES = {"PreconditionFailed", "412"}
_DENIED_CODES = {
    "AccessDenied",
    "403",
    "Forbidden",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "AllAccessDisabled",
    "AccountProblem",
}
_UNAVAILABLE_CODES = {
    "SlowDown",
    "ServiceUnavailable",
    "InternalError",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "RequestTimeout",
    "RequestTimeoutException",
    "PriorRequestNotComplete",
}

#: Errors that mean "the network or the server did not answer properly": worth retrying, and
#: StorageUnavailable once retries are exhausted.
_TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    bce.ConnectionError,  # EndpointConnectionError, ConnectTimeoutError, ProxyConnectionError
    bce.HTTPClientError,  # ConnectionClosedError, ReadTimeoutError, ResponseStreamingError
    bce.IncompleteReadError,
    urllib3.exceptions.HTTPError,  # ProtocolError, ReadTimeoutError raised while streaming
    ConnectionError,  # builtin: reset/refused/aborted
    TimeoutError,
)

_CREDENTIAL_ERRORS: tuple[type[BaseException], ...] = (
    bce.NoCredentialsError,
    bce.PartialCredentialsError,
    bce.CredentialRetrievalError,
    bce.ProfileNotFound,
)


_loader_lock = threading.Lock()
_loader: Any = None


def _shared_loader() -> Any:
    """botocore's loader of its bundled JSON service models. Each new session would parse the S3
    model again (~0.1 s per S3Storage); the data is static, so one loader serves every session."""
    global _loader
    with _loader_lock:
        if _loader is None:
            _loader = botocore.loaders.create_loader()
        return _loader


def _strip_etag(etag: str | None) -> str:
    return (etag or "").strip('"')


def _quote_etag(etag: str) -> str:
    # RFC 7232 entity-tags are quoted; S3 accepts both, strict S3-compatible servers want quotes.
    return etag if etag.startswith('"') else f'"{etag}"'


def _mtime_ns(dt: Any) -> int:
    if dt is None:
        return 0
    return calendar.timegm(dt.utctimetuple()) * 1_000_000_000 + dt.microsecond * 1000


def _error_chain(exc: BaseException) -> list[BaseException]:
    """exc and what caused it (boto3/s3transfer wrap the real ClientError: S3UploadFailedError
    `from e`, RetriesExceededError.last_exception), deduplicated, outermost first."""
    out: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or any(e is seen for seen in out):
            continue
        out.append(e)
        todo.extend([getattr(e, "last_exception", None), e.__cause__, e.__context__])
    return out


class _ProvideSizeAndEtag(BaseSubscriber):
    """Hands s3transfer the size/etag we already got from our HEAD, so it skips its own HEAD and
    pins every ranged GET of a multipart download to that etag (IfMatch)."""

    def __init__(self, size: int, etag: str):
        self._size = size
        self._etag = etag

    def on_queued(self, future: Any, **kwargs: Any) -> None:
        future.meta.provide_transfer_size(self._size)
        future.meta.provide_object_etag(self._etag)


class S3Storage(Storage):
    is_local = False

    def __init__(
        self,
        url: str,
        *,
        endpoint_url: str | None = None,
        region_name: str | None = None,
        profile_name: str | None = None,
        max_attempts: int = 5,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 60.0,
        multipart_threshold_bytes: int = 8 * MiB,
        multipart_chunksize_bytes: int = 8 * MiB,
        copy_threshold_bytes: int = 5 * GiB,
        copy_chunksize_bytes: int = 64 * MiB,
        max_concurrency: int = 10,
        use_threads: bool = True,
        addressing_style: str = "path",
        botocore_config: dict[str, Any] | None = None,
    ):
        """`url` is "s3://bucket" or "s3://bucket/prefix". `max_attempts` counts the first try.

        Uploads larger than `multipart_threshold_bytes` use multipart upload; copies of objects of
        at least `copy_threshold_bytes` use multipart UploadPartCopy (S3's single CopyObject is
        limited to 5 GiB). `botocore_config` is merged into the botocore Config (e.g.
        {"request_checksum_calculation": "when_required"} for old S3-compatible servers).
        """
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise StorageError(f"not an S3 url (s3://bucket[/prefix]): {url!r}")
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self.bucket = parsed.netloc
        prefix = parsed.path.strip("/")
        if prefix:
            validate_key(prefix)
        self.prefix = prefix
        self._key_prefix = f"{prefix}/" if prefix else ""
        self.root = f"s3://{self.bucket}/{prefix}" if prefix else f"s3://{self.bucket}"
        self.max_attempts = max_attempts

        config_kwargs: dict[str, Any] = dict(
            retries={"mode": "standard", "total_max_attempts": max_attempts},
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            s3={"addressing_style": addressing_style},
            # s3transfer runs max_concurrency requests per transfer, several transfers may run at once.
            max_pool_connections=max(10, 4 * max_concurrency),
            user_agent_extra="lamfs",
        )
        config_kwargs.update(botocore_config or {})
        try:
            # A private session (not boto3's module-level default one), sharing only static data.
            core_session = botocore.session.get_session()
            core_session.register_component("data_loader", _shared_loader())
            session = boto3.session.Session(
                botocore_session=core_session, profile_name=profile_name, region_name=region_name
            )
            self._client = session.client("s3", endpoint_url=endpoint_url, config=Config(**config_kwargs))
        except bce.BotoCoreError as exc:
            raise StorageError(f"cannot configure S3 client for {self.root}: {exc}") from exc

        common = dict(
            max_concurrency=max_concurrency,
            use_threads=use_threads,
            num_download_attempts=max_attempts,
            # The classic (pure Python) transfer manager honours every setting above; the CRT one
            # may ignore them.
            preferred_transfer_client="classic",
        )
        self._transfer_config = TransferConfig(
            multipart_threshold=multipart_threshold_bytes,
            multipart_chunksize=multipart_chunksize_bytes,
            **common,
        )
        self._copy_config = TransferConfig(
            multipart_threshold=copy_threshold_bytes,
            multipart_chunksize=copy_chunksize_bytes,
            **common,
        )
        self._closed = False

    # -- naming --------------------------------------------------------------------------------

    def _s3key(self, key: str) -> str:
        return self._key_prefix + validate_key(key)

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._s3key(key)}"

    def local_path(self, key: str) -> None:
        validate_key(key)
        return None

    # -- errors --------------------------------------------------------------------------------

    def _translate(self, exc: BaseException, op: str, key: str | None = None) -> LamfsError:
        """botocore/s3transfer/socket exception → lamfs exception for operation `op` on `key`."""
        where = f"S3 {op} {self.root}/{key}" if key is not None else f"S3 {op} {self.root}"
        chain = _error_chain(exc)
        for e in chain:
            if isinstance(e, bce.ClientError):
                err = e.response.get("Error", {}) or {}
                code = str(err.get("Code", ""))
                status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
                detail = f"{code or status}: {err.get('Message') or e}"
                if code == "NoSuchBucket":
                    return StorageError(f"{where}: bucket {self.bucket!r} does not exist")
                if code in _NOT_FOUND_CODES or status == 404:
                    return NotFound(f"{where}: not found")
                if code in _PRECONDITION_CODES or status == 412:
                    return ContentChanged(f"{where}: content changed (etag no longer matches)")
                if code in _DENIED_CODES or status == 403:
                    return AccessDenied(f"{where}: access denied ({detail})")
                if code in _UNAVAILABLE_CODES or status >= 500 or status == 429:
                    return StorageUnavailable(f"{where}: storage unavailable after retries ({detail})")
                return StorageError(f"{where}: {detail}")
        for e in chain:
            if isinstance(e, _CREDENTIAL_ERRORS):
                return AccessDenied(f"{where}: no usable credentials ({type(e).__name__})")
            if "did not match expected ETag" in str(e):  # s3transfer's S3DownloadFailedError on 412
                return ContentChanged(f"{where}: content changed during the download")
        for e in chain:
            if isinstance(e, _TRANSIENT_ERRORS):
                return StorageUnavailable(f"{where}: storage unavailable ({type(e).__name__}: {e})")
        if any(type(e).__name__ == "RetriesExceededError" for e in chain):
            return StorageUnavailable(f"{where}: storage unavailable after retries ({exc})")
        return StorageError(f"{where}: {type(exc).__name__}: {exc}")

    # -- reads ---------------------------------------------------------------------------------

    def _head(self, key: str, *, etag: str | None = None) -> ObjectInfo:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._s3key(key)}
        if etag is not None:
            kwargs["IfMatch"] = _quote_etag(etag)
        try:
            resp = self._client.head_object(**kwargs)
        except (bce.ClientError, bce.BotoCoreError) as exc:
            raise self._translate(exc, "head", key) from exc
        return ObjectInfo(
            key=key,
            size=int(resp["ContentLength"]),
            etag=_strip_etag(resp.get("ETag")),
            mtime_ns=_mtime_ns(resp.get("LastModified")),
        )

    def head(self, key: str) -> ObjectInfo:
        return self._head(key)

    def get_range(self, key: str, start: int, length: int, *, etag: str | None = None) -> bytes:
        if start < 0 or length < 0:
            raise ValueError(f"invalid range start={start} length={length}")
        kwargs: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": self._s3key(key),
            "Range": f"bytes={start}-{start + length - 1}",
        }
        if length == 0:
            return b""
        if etag is not None:
            kwargs["IfMatch"] = _quote_etag(etag)
        last_exc: BaseException | None = None
        # botocore retries a request until response headers arrive; a connection cut while the
        # body streams is ours to retry (as s3transfer does for downloads).
        for attempt in range(1, self.max_attempts + 1):
            try:
                resp = self._client.get_object(**kwargs)
            except bce.ClientError as exc:
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if status == 416 or exc.response.get("Error", {}).get("Code") == "InvalidRange":
                    return b""  # start is at/after EOF (S3 evaluates If-Match before the range)
                raise self._translate(exc, "get_range", key) from exc
            except bce.BotoCoreError as exc:
                raise self._translate(exc, "get_range", key) from exc
            body = resp["Body"]
            try:
                data = body.read()
            except _TRANSIENT_ERRORS as exc:
                last_exc = exc
                log.debug("S3 get_range %s/%s: body read failed (attempt %d): %s", self.root, key, attempt, exc)
                time.sleep(min(2.0, 0.05 * 2**attempt) * random.random())
                continue
            finally:
                body.close()
            if not resp.get("ContentRange"):
                # The server ignored Range and sent the whole object (some S3-compatible servers
                # do for odd ranges): slice it ourselves.
                data = data[start : start + length]
            return data
        assert last_exc is not None
        raise self._translate(last_exc, "get_range", key) from last_exc

    def warm_up(self) -> None:
        """One ranged GET of a key that does not exist: botocore loads the GetObject model and its
        handlers on a client's first call of it, and the connection to the endpoint opens; both took
        ~4 ms off the first read of a fresh mount (its time to first byte)."""
        try:
            self._client.get_object(Bucket=self.bucket, Key=self._s3key(".lamfs-warm-up"), Range="bytes=0-0")
        except Exception as exc:  # noqa: BLE001 - NoSuchKey is the expected answer; trouble shows in real requests
            log.debug("S3 warm-up %s: %s", self.root, exc)

    def iter_range(self, key: str, start: int, length: int, *, etag: str | None = None,
                   chunk_bytes: int = 128 * 1024) -> Iterator[bytes]:
        """`get_range` as an iterator of chunks, in order, as they arrive (the block cache hands
        the first ones to a reader before the rest of the block is in). A connection lost while
        the body streams is resumed from the first missing byte (still IfMatch=etag); errors as
        get_range."""
        if start < 0 or length < 0:
            raise ValueError(f"invalid range start={start} length={length}")
        pos, end = start, start + length
        attempt = 0
        while pos < end:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._s3key(key), "Range": f"bytes={pos}-{end - 1}"}
            if etag is not None:
                kwargs["IfMatch"] = _quote_etag(etag)
            try:
                resp = self._client.get_object(**kwargs)
            except bce.ClientError as exc:
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if status == 416 or exc.response.get("Error", {}).get("Code") == "InvalidRange":
                    return  # at/after EOF
                raise self._translate(exc, "get_range", key) from exc
            except bce.BotoCoreError as exc:
                raise self._translate(exc, "get_range", key) from exc
            body = resp["Body"]
            try:
                if not resp.get("ContentRange"):
                    # the server ignored Range and sends the whole object: slice it ourselves
                    data = body.read()[pos:end]
                    pos = end
                    if data:
                        yield data
                    return
                for chunk in body.iter_chunks(chunk_bytes):
                    if chunk:
                        pos += len(chunk)
                        yield chunk
                if pos < end:  # the answer ended early (object shorter than asked): the caller checks
                    return
            except _TRANSIENT_ERRORS as exc:
                attempt += 1
                if attempt >= self.max_attempts:
                    raise self._translate(exc, "get_range", key) from exc
                log.debug("S3 iter_range %s/%s: body read failed at %d (attempt %d): %s", self.root, key, pos,
                          attempt, exc)
                time.sleep(min(2.0, 0.05 * 2**attempt) * random.random())
            finally:
                body.close()

    def download_file(
        self,
        key: str,
        dest: str | PathLike[str],
        *,
        etag: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> ObjectInfo:
        dest = pathlib.Path(dest)
        # One HEAD of ours: gives the size/etag we return and check, and (with etag) fails fast
        # with ContentChanged. Every GET below carries IfMatch=that etag, so the file we write is
        # exactly the version described by `info`.
        info = self._head(key, etag=etag)
        s3key = self._s3key(key)
        try:
            fd, tmp_name = make_temp_file(dest.parent)
        except OSError as exc:
            raise StorageError(f"download {self.root}/{key}: cannot create a temp file next to {str(dest)!r}: {exc}") from exc
        try:
            with os.fdopen(fd, "wb") as f:
                subscribers: list[BaseSubscriber] = [_ProvideSizeAndEtag(info.size, _quote_etag(info.etag))]
                on_delta = cumulative_progress(progress)
                if on_delta is not None:
                    subscribers.append(ProgressCallbackInvoker(on_delta))
                with create_transfer_manager(self._client, self._transfer_config) as manager:
                    future = manager.download(self.bucket, s3key, f, extra_args={}, subscribers=subscribers)
                    future.result()
                f.flush()
                written = os.fstat(f.fileno()).st_size
                if written != info.size:
                    raise StorageError(
                        f"download {self.root}/{key}: got {written} bytes, expected {info.size}"
                    )
                os.fsync(f.fileno())
            os.replace(tmp_name, dest)
        except BaseException as exc:
            try:
                os.unlink(tmp_name)
            except OSError:
                pass
            if isinstance(exc, LamfsError):
                raise
            if isinstance(exc, (bce.ClientError, bce.BotoCoreError, OSError)) or _is_transfer_error(exc):
                raise self._translate(exc, "download", key) from exc
            raise
        fsync_dir(dest.parent)
        return info

    # -- writes --------------------------------------------------------------------------------

    def put_file(
        self, src: str | PathLike[str], key: str, *, progress: ProgressCallback | None = None
    ) -> ObjectInfo:
        s3key = self._s3key(key)
        src = pathlib.Path(src)
        try:
            st = os.stat(src)
        except FileNotFoundError as exc:
            raise NotFound(f"put_file: source {str(src)!r} not found") from exc
        except OSError as exc:
            raise StorageError(f"put_file: cannot read source {str(src)!r}: {exc}") from exc
        if not stat.S_ISREG(st.st_mode):
            raise StorageError(f"put_file: source is not a regular file: {str(src)!r}")
        if progress is None and st.st_size < self._transfer_config.multipart_threshold:
            return self._put_small_file(src, key, s3key)
        subscribers: list[BaseSubscriber] = []
        on_delta = cumulative_progress(progress)
        if on_delta is not None:
            subscribers.append(ProgressCallbackInvoker(on_delta))
        try:
            # s3transfer: multipart above the threshold; on failure it aborts the multipart upload,
            # so readers never see a partial object and the old object (if any) stays.
            with create_transfer_manager(self._client, self._transfer_config) as manager:
                future = manager.upload(str(src), self.bucket, s3key, extra_args={}, subscribers=subscribers)
                future.result()
        except Exception as exc:
            if isinstance(exc, (bce.ClientError, bce.BotoCoreError, OSError)) or _is_transfer_error(exc):
                raise self._translate(exc, "put", key) from exc
            raise
        return self._head(key)

    def _put_small_file(self, src: pathlib.Path, key: str, s3key: str) -> ObjectInfo:
        """One PutObject and nothing else (no transfer manager, no HEAD afterwards): the ETag comes
        with the answer, and the server's Date stands in for LastModified (the same second). Small
        files are what the mount commits one by one, so each saved request counts."""
        try:
            with open(src, "rb") as body:
                size = os.fstat(body.fileno()).st_size
                resp = self._client.put_object(Bucket=self.bucket, Key=s3key, Body=body)
        except FileNotFoundError as exc:
            raise NotFound(f"put_file: source {str(src)!r} not found") from exc
        except (bce.ClientError, bce.BotoCoreError, OSError) as exc:
            raise self._translate(exc, "put", key) from exc
        etag = _strip_etag(resp.get("ETag"))
        if not etag:
            return self._head(key)  # an S3-compatible server that does not say: ask
        mtime_ns = time.time_ns()
        date = resp.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        if date:
            try:
                mtime_ns = int(email.utils.parsedate_to_datetime(date).timestamp()) * 1_000_000_000
            except (TypeError, ValueError):
                pass
        return ObjectInfo(key=key, size=size, etag=etag, mtime_ns=mtime_ns)

    def put_bytes(self, data: bytes, key: str) -> ObjectInfo:
        s3key = self._s3key(key)
        try:
            self._client.put_object(Bucket=self.bucket, Key=s3key, Body=data if isinstance(data, bytes) else bytes(data))
        except (bce.ClientError, bce.BotoCoreError) as exc:
            raise self._translate(exc, "put", key) from exc
        return self._head(key)

    def copy(self, src_key: str, dst_key: str) -> ObjectInfo:
        src = self._s3key(src_key)
        dst = self._s3key(dst_key)
        if src == dst:
            # S3 refuses a copy onto itself without a metadata change; the result is a no-op anyway.
            return self._head(src_key)
        try:
            with create_transfer_manager(self._client, self._copy_config) as manager:
                future = manager.copy(
                    copy_source={"Bucket": self.bucket, "Key": src},
                    bucket=self.bucket,
                    key=dst,
                    # a fresh checksum of the copy's own: copying an object uploaded in parts otherwise
                    # keeps the source's per-part composite checksum on some servers (moto), and clients
                    # that validate full-object checksums on GET then refuse the copy
                    extra_args={"ChecksumAlgorithm": "CRC32"},
                    source_client=self._client,
                )
                future.result()
        except Exception as exc:
            if isinstance(exc, (bce.ClientError, bce.BotoCoreError, OSError)) or _is_transfer_error(exc):
                raise self._translate(exc, "copy", f"{src_key} -> {dst_key}") from exc
            raise
        return self._head(dst_key)

    def delete(self, key: str) -> None:
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._s3key(key))
        except (bce.ClientError, bce.BotoCoreError) as exc:
            err = self._translate(exc, "delete", key)
            if isinstance(err, NotFound):
                return
            raise err from exc

    def delete_many(self, keys: Iterable[str]) -> None:
        s3keys = [self._s3key(k) for k in keys]  # refuse the whole batch before deleting anything
        failed: list[str] = []
        for i in range(0, len(s3keys), _DELETE_BATCH):
            batch = s3keys[i : i + _DELETE_BATCH]
            try:
                resp = self._client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
                )
            except (bce.ClientError, bce.BotoCoreError) as exc:
                raise self._translate(exc, f"delete_many ({len(batch)} keys from {batch[0]!r})") from exc
            for err in resp.get("Errors") or []:
                if err.get("Code") == "NoSuchKey":
                    continue
                failed.append(f"{err.get('Key', '')[len(self._key_prefix):]!r} ({err.get('Code')})")
        if failed:
            more = f" and {len(failed) - 10} more" if len(failed) > 10 else ""
            raise StorageError(
                f"S3 delete_many {self.root}: {len(failed)} key(s) failed: {', '.join(failed[:10])}{more}"
            )

    # -- listing -------------------------------------------------------------------------------

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        validate_prefix(prefix)  # eagerly, not at the first next()
        return self._iter_list(prefix)

    def _iter_list(self, prefix: str) -> Iterator[ObjectInfo]:
        strip = len(self._key_prefix)
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            # botocore asks for EncodingType=url and decodes keys, so any character round-trips;
            # S3 returns keys in UTF-8 byte order, which is Python's str order.
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key_prefix + prefix):
                for obj in page.get("Contents") or []:
                    key = obj["Key"][strip:]
                    if not key or key.endswith("/"):
                        continue  # "folder" marker objects made by consoles are not files
                    yield ObjectInfo(
                        key=key,
                        size=int(obj["Size"]),
                        etag=_strip_etag(obj.get("ETag")),
                        mtime_ns=_mtime_ns(obj.get("LastModified")),
                    )
        except (bce.ClientError, bce.BotoCoreError) as exc:
            raise self._translate(exc, f"list prefix {prefix!r}") from exc

    def incomplete_uploads(self) -> list[tuple[str, str, int]]:
        strip = len(self._key_prefix)
        out = []
        try:
            paginator = self._client.get_paginator("list_multipart_uploads")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key_prefix):
                for up in page.get("Uploads") or []:
                    out.append((up["Key"][strip:], up["UploadId"], _mtime_ns(up.get("Initiated"))))
        except (bce.ClientError, bce.BotoCoreError) as exc:
            raise self._translate(exc, "list incomplete uploads") from exc
        return out

    def abort_upload(self, key: str, upload_id: str) -> None:
        try:
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=self._s3key(key), UploadId=upload_id)
        except (bce.ClientError, bce.BotoCoreError) as exc:
            if "NoSuchUpload" in str(exc):
                return  # completed or aborted meanwhile
            raise self._translate(exc, "abort upload", key) from exc

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._client.close()


def _is_transfer_error(exc: BaseException) -> bool:
    """s3transfer/boto3 transfer exceptions (S3UploadFailedError, RetriesExceededError,
    S3DownloadFailedError, ...) wrap the real cause; anything else (e.g. an exception raised by a
    caller's progress callback) propagates unchanged."""
    module = type(exc).__module__ or ""
    return module.startswith(("s3transfer", "boto3"))

