#!/usr/bin/env python
"""A local S3 server for lamfs tests: moto's S3 in server mode, plus counters, O(range) ranged
GETs and fault injection. See tests/README.md.

Run standalone (it only ever binds loopback by default):

    python tests/s3server.py --port 5000                 # until Ctrl-C / SIGTERM
    python tests/s3server.py --port 0 --control-stdin    # what the pytest fixture does

It prints one line to stdout when listening: "LAMFS_S3SERVER LISTENING <port>". With
--control-stdin it obeys lines on stdin: "stop" closes the listening socket (connection refused,
like an outage) but keeps every bucket and object in memory, "start" listens again on the same
port, "quit" (or EOF, i.e. the test process died) exits.

HTTP endpoints of ours, next to the S3 API:
    GET    /_lamfs/stats          counters (JSON)            POST /_lamfs/stats/reset
    GET    /_lamfs/faults         active faults (JSON)       DELETE /_lamfs/faults
    POST   /_lamfs/seed           {"bucket": b, "keys": [...], "body": "x"}: bulk-create objects
    POST   /_lamfs/faults         add a fault, JSON body, e.g.
           {"method": "PUT", "path_contains": "iris", "status": 503, "count": 3}
           {"op": "UploadPart", "delay_s": 2}
           {"method": "GET", "mode": "cut"}                     close without answering
           {"method": "GET", "mode": "truncate", "after_bytes": 1000}   send headers + 1000 bytes, close
    POST   /moto-api/reset        moto's own: wipe all buckets

This module is also imported by tests/conftest_s3.py for `S3ServerProcess` (the client-side
controller); that import must stay light, so moto/werkzeug are imported only inside `main()`.
Imports: the standard library; moto and werkzeug in the server process only.
"""
from __future__ import annotations

import argparse
import collections
import itertools
import json
import logging
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from typing import Any

READY_PREFIX = "LAMFS_S3SERVER LISTENING"
STOPPED_LINE = "LAMFS_S3SERVER STOPPED"
CONTROL_PREFIX = "/_lamfs"

log = logging.getLogger("lamfs.tests.s3server")


# =================================================================================================
# Client side: start/stop/talk to the server subprocess (used by the pytest fixtures)
# =================================================================================================


class S3ServerProcess:
    """Controller for one `tests/s3server.py` subprocess on 127.0.0.1.

    start() spawns it (first time) or re-opens its listening socket (after stop()); stop()
    closes the listening socket but keeps the process and its data (an outage); terminate()
    ends the process. Talks to it only through loopback, bypassing any HTTP proxy settings.
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, log_path: str | None = None):
        self.host = host
        self.port = port
        self.log_path = log_path
        self._proc: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._log_file: Any = None
        self.listening = False
        # Never route test traffic through a proxy, whatever the environment says.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, timeout_s: float = 30.0) -> None:
        if self._proc is None or self._proc.poll() is not None:
            self._spawn(timeout_s)
        elif not self.listening:
            self._send("start")
            self._expect(READY_PREFIX, timeout_s)
            self.listening = True
        self._wait_answering(timeout_s)

    def _spawn(self, timeout_s: float) -> None:
        script = os.path.abspath(__file__)
        cmd = [sys.executable, script, "--host", self.host, "--port", str(self.port), "--control-stdin"]
        if self._log_file is None:
            self._log_file = open(self.log_path, "a") if self.log_path else subprocess.DEVNULL
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            text=True,
            bufsize=1,
            env=env,
        )
        self._lines = queue.Queue()
        threading.Thread(target=self._pump, args=(self._proc, self._lines), daemon=True).start()
        line = self._expect(READY_PREFIX, timeout_s)
        self.port = int(line.split()[-1])  # --port 0: the server picked a free port
        self.listening = True

    @staticmethod
    def _pump(proc: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    def _expect(self, prefix: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"s3server: no {prefix!r} line within {timeout_s}s{self._log_hint()}")
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(f"s3server exited (rc={self._proc and self._proc.poll()}){self._log_hint()}")
            if line.startswith(prefix):
                return line

    def _send(self, command: str) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(command + "\n")
        self._proc.stdin.flush()

    def _wait_answering(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.stats()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Outage: the port refuses connections; buckets and objects are kept for start()."""
        if self._proc is None or self._proc.poll() is not None or not self.listening:
            return
        self._send("stop")
        self._expect(STOPPED_LINE, timeout_s)
        self.listening = False

    def terminate(self) -> None:
        proc, self._proc = self._proc, None
        self.listening = False
        if proc is not None and proc.poll() is None:
            try:
                self._send_to(proc, "quit")
                proc.wait(timeout=5)
            except Exception:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self._log_file not in (None, subprocess.DEVNULL):
            self._log_file.close()
        self._log_file = None

    @staticmethod
    def _send_to(proc: subprocess.Popen[str], command: str) -> None:
        assert proc.stdin is not None
        proc.stdin.write(command + "\n")
        proc.stdin.flush()

    def _log_hint(self) -> str:
        return f"; see {self.log_path}" if self.log_path else ""

    def log_text(self) -> str:
        if not self.log_path or not os.path.exists(self.log_path):
            return ""
        with open(self.log_path, errors="replace") as f:
            return f.read()

    # -- HTTP control API ----------------------------------------------------------------------

    def _call(self, method: str, path: str, body: Any = None, timeout_s: float = 10.0) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.endpoint_url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with self._opener.open(req, timeout=timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:  # our 400s carry the reason in a JSON body
            detail = exc.read().decode(errors="replace")
            raise ValueError(f"s3server {method} {path}: HTTP {exc.code}: {detail}") from None
        return json.loads(raw) if raw.strip().startswith((b"{", b"[")) else raw

    def stats(self) -> dict[str, Any]:
        return self._call("GET", f"{CONTROL_PREFIX}/stats")

    def reset_stats(self) -> None:
        self._call("POST", f"{CONTROL_PREFIX}/stats/reset")

    def fault(self, **spec: Any) -> dict[str, Any]:
        """Add a fault (see the module docstring); returns it with its id."""
        return self._call("POST", f"{CONTROL_PREFIX}/faults", spec)

    def faults(self) -> list[dict[str, Any]]:
        return self._call("GET", f"{CONTROL_PREFIX}/faults")

    def clear_faults(self) -> None:
        self._call("DELETE", f"{CONTROL_PREFIX}/faults")

    def seed(self, bucket: str, keys: list[str], body: str = "") -> int:
        """Create `keys` (full S3 keys) in `bucket` directly in the server's memory: test set-up
        for thousands of objects without thousands of requests (not counted in stats)."""
        return self._call("POST", f"{CONTROL_PREFIX}/seed", {"bucket": bucket, "keys": keys, "body": body})["created"]

    def reset(self) -> None:
        """moto's reset: every bucket and object is gone."""
        self._call("POST", "/moto-api/reset")


# =================================================================================================
# Server side
# =================================================================================================


def _s3_op(method: str, path: str, query: str, environ: dict[str, Any]) -> str:
    """A best-effort S3 operation name for a path-style request (for counters and `op` faults)."""
    params = {p.split("=", 1)[0] for p in query.split("&") if p}
    parts = path.lstrip("/").split("/", 1)
    bucket = parts[0]
    key = parts[1] if len(parts) > 1 else ""
    copy_source = "HTTP_X_AMZ_COPY_SOURCE" in environ
    if not bucket:
        return "ListBuckets"
    if not key:
        if method == "GET":
            if "uploads" in params:
                return "ListMultipartUploads"
            if "versions" in params:
                return "ListObjectVersions"
            if "location" in params:
                return "GetBucketLocation"
            return "ListObjectsV2" if "list-type" in params else "ListObjects"
        if method == "POST" and "delete" in params:
            return "DeleteObjects"
        return {"PUT": "CreateBucket", "DELETE": "DeleteBucket", "HEAD": "HeadBucket"}.get(method, "Bucket" + method)
    if method == "GET":
        return "ListParts" if "uploadId" in params else "GetObject"
    if method == "HEAD":
        return "HeadObject"
    if method == "PUT":
        if "uploadId" in params and "partNumber" in params:
            return "UploadPartCopy" if copy_source else "UploadPart"
        if "tagging" in params:
            return "PutObjectTagging"
        return "CopyObject" if copy_source else "PutObject"
    if method == "POST":
        if "uploads" in params:
            return "CreateMultipartUpload"
        if "uploadId" in params:
            return "CompleteMultipartUpload"
    if method == "DELETE":
        return "AbortMultipartUpload" if "uploadId" in params else "DeleteObject"
    return "Object" + method


class Stats:
    """Request counters. One lock; every S3 request updates them twice (begin, end)."""

    def __init__(self, recent_n: int):
        self._lock = threading.Lock()
        self._recent_n = recent_n
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.requests = 0
            self.by_method: collections.Counter[str] = collections.Counter()
            self.by_op: collections.Counter[str] = collections.Counter()
            self.by_status: collections.Counter[str] = collections.Counter()
            self.bytes_in = 0
            self.bytes_out = 0
            self.faults_fired = 0
            self.ranged_fast_path = 0
            self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=self._recent_n)

    def begin(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self.requests += 1
            self.by_method[entry["method"]] += 1
            self.by_op[entry["op"]] += 1
            if entry.get("fault") is not None:
                self.faults_fired += 1
            self.recent.append(entry)

    def set_status(self, entry: dict[str, Any], status: int | str) -> None:
        with self._lock:
            entry["status"] = status
            self.by_status[str(status)] += 1

    def add_in(self, entry: dict[str, Any], n: int) -> None:
        with self._lock:
            entry["bytes_in"] += n
            self.bytes_in += n

    def add_out(self, entry: dict[str, Any], n: int) -> None:
        with self._lock:
            entry["bytes_out"] += n
            self.bytes_out += n

    def fast_path(self, entry: dict[str, Any]) -> None:
        with self._lock:
            entry["fast_path"] = True
            self.ranged_fast_path += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self.requests,
                "by_method": dict(self.by_method),
                "gets": self.by_method.get("GET", 0),
                "by_op": dict(self.by_op),
                "by_status": dict(self.by_status),
                "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out,
                "faults_fired": self.faults_fired,
                "ranged_fast_path": self.ranged_fast_path,
                "recent": [dict(e) for e in self.recent],
            }


_FAULT_FIELDS = {
    "method", "op", "path_contains", "query_contains", "status", "code", "message",
    "delay_s", "mode", "after_bytes", "count", "skip",
}  # fmt: skip

_DEFAULT_CODES = {
    400: "BadRequest",
    403: "AccessDenied",
    404: "NoSuchKey",
    409: "OperationAborted",
    412: "PreconditionFailed",
    429: "TooManyRequests",
    500: "InternalError",
    501: "NotImplemented",
    503: "SlowDown",
}


class Faults:
    """Active faults, checked in insertion order; the first that matches a request applies.

    A fault matches when every given criterion matches: method (str or list), op (S3 operation
    name, see _s3_op), path_contains (decoded path), query_contains (raw query). `skip` lets that
    many matching requests through first; `count` (default: unlimited) limits how many it hits.
    Effects: delay_s (then continue, or fail if status/mode is also given), status (+code, message),
    mode "cut" (close the connection without answering), mode "truncate" (answer, but close after
    `after_bytes` bytes of body).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[dict[str, Any]] = []
        self._ids = itertools.count(1)

    def add(self, spec: dict[str, Any]) -> dict[str, Any]:
        unknown = set(spec) - _FAULT_FIELDS
        if unknown:
            raise ValueError(f"unknown fault field(s) {sorted(unknown)}; known: {sorted(_FAULT_FIELDS)}")
        if not any(k in spec for k in ("status", "delay_s", "mode")):
            raise ValueError("a fault needs status, delay_s or mode")
        if spec.get("mode") not in (None, "cut", "truncate"):
            raise ValueError("mode must be 'cut' or 'truncate'")
        fault = dict(spec)
        methods = fault.get("method")
        if isinstance(methods, str):
            methods = [methods]
        fault["method"] = [m.upper() for m in methods] if methods else None
        fault.setdefault("count", None)
        fault.setdefault("skip", 0)
        fault["hits"] = 0
        with self._lock:
            fault["id"] = next(self._ids)
            self._faults.append(fault)
            return dict(fault)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(f) for f in self._faults]

    def match(self, method: str, op: str, path: str, query: str) -> dict[str, Any] | None:
        with self._lock:
            for f in self._faults:
                if f["method"] and method not in f["method"]:
                    continue
                if f.get("op") and f["op"] != op:
                    continue
                if f.get("path_contains") and f["path_contains"] not in path:
                    continue
                if f.get("query_contains") and f["query_contains"] not in query:
                    continue
                if f["count"] is not None and f["hits"] >= f["count"]:
                    continue
                if f["skip"] > 0:
                    f["skip"] -= 1
                    continue
                f["hits"] += 1
                return dict(f)
            return None


class _CountingInput:
    """wsgi.input wrapper counting request-body bytes as moto reads them."""

    def __init__(self, stream: Any, on_bytes: Any):
        self._stream = stream
        self._on_bytes = on_bytes

    def read(self, *args: Any) -> bytes:
        data = self._stream.read(*args)
        self._on_bytes(len(data))
        return data

    def readinto(self, buf: Any) -> int:
        n = self._stream.readinto(buf)
        self._on_bytes(n or 0)
        return n

    def readline(self, *args: Any) -> bytes:
        data = self._stream.readline(*args)
        self._on_bytes(len(data))
        return data

    def readlines(self, *args: Any) -> list[bytes]:
        lines = self._stream.readlines(*args)
        self._on_bytes(sum(len(x) for x in lines))
        return lines

    def __iter__(self) -> Iterator[bytes]:
        for line in self._stream:
            self._on_bytes(len(line))
            yield line

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _Cut(ConnectionAbortedError):
    """Raised inside the WSGI app after shutting the socket: werkzeug treats ConnectionError as
    a dropped connection and sends nothing more."""


def _cut_connection(environ: dict[str, Any]) -> None:
    sock = environ.get("werkzeug.socket")
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    raise _Cut("lamfs s3server fault: connection cut")


def _xml_error(code: str, message: str, resource: str, extra: str = "") -> bytes:
    from xml.sax.saxutils import escape

    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
        f"<Resource>{escape(resource)}</Resource>{extra}<RequestId>lamfs-s3server</RequestId></Error>"
    ).encode()


_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
_LOCAL_HOST_RE = re.compile(r"^(localhost|\d{1,3}(\.\d{1,3}){3})(:\d+)?$")
_FAST_PATH_CHUNK = 1024 * 1024


class LamfsS3App:
    """WSGI middleware around moto's app: control endpoints, counters, faults, O(range) GETs."""

    def __init__(self, moto_app: Any, *, recent_n: int = 1000):
        self.moto_app = moto_app
        self.stats = Stats(recent_n)
        self.faults = Faults()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        # PATH_INFO is percent-decoded by werkzeug and carried as latin-1 (the WSGI "dance").
        path = environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8", "replace")
        if path == CONTROL_PREFIX or path.startswith(CONTROL_PREFIX + "/"):
            return self._control(environ, start_response, path)
        if path.startswith("/moto-api") or path == "/favicon.ico":
            return self.moto_app(environ, start_response)
        return self._s3(environ, start_response, path)

    # -- control API ---------------------------------------------------------------------------

    def _control(self, environ: dict[str, Any], start_response: Any, path: str) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        sub = path[len(CONTROL_PREFIX):]
        try:
            if sub == "/stats" and method == "GET":
                return _json(start_response, 200, self.stats.snapshot())
            if sub == "/stats/reset" and method == "POST":
                self.stats.reset()
                return _json(start_response, 200, {"ok": True})
            if sub == "/faults" and method == "GET":
                return _json(start_response, 200, self.faults.list())
            if sub == "/faults" and method == "POST":
                length = int(environ.get("CONTENT_LENGTH") or 0)
                spec = json.loads(environ["wsgi.input"].read(length) or b"{}")
                return _json(start_response, 200, self.faults.add(spec))
            if sub == "/faults" and method == "DELETE":
                self.faults.clear()
                return _json(start_response, 200, {"ok": True})
            if sub == "/seed" and method == "POST":
                length = int(environ.get("CONTENT_LENGTH") or 0)
                spec = json.loads(environ["wsgi.input"].read(length) or b"{}")
                return _json(start_response, 200, {"created": _seed(spec)})
        except (ValueError, TypeError) as exc:
            return _json(start_response, 400, {"error": str(exc)})
        return _json(start_response, 404, {"error": f"no such control endpoint: {method} {path}"})

    # -- S3 ------------------------------------------------------------------------------------

    def _s3(self, environ: dict[str, Any], start_response: Any, path: str) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        query = environ.get("QUERY_STRING", "")
        op = _s3_op(method, path, query, environ)
        fault = self.faults.match(method, op, path, query)
        entry: dict[str, Any] = {
            "method": method,
            "op": op,
            "path": path,
            "query": query,
            "range": environ.get("HTTP_RANGE"),
            "status": None,
            "bytes_in": 0,
            "bytes_out": 0,
            "fault": fault["id"] if fault else None,
            "fast_path": False,
        }
        self.stats.begin(entry)
        counter = _CountingInput(environ["wsgi.input"], lambda n: self.stats.add_in(entry, n))
        environ["wsgi.input"] = counter

        if fault is not None:
            if fault.get("delay_s"):
                time.sleep(float(fault["delay_s"]))
            if fault.get("mode") == "cut":
                self.stats.set_status(entry, "cut")
                _cut_connection(environ)
            if fault.get("status"):
                _drain(environ, counter)  # so the client reads our answer, not a reset
                status = int(fault["status"])
                code = fault.get("code") or _DEFAULT_CODES.get(status, "InternalError")
                message = fault.get("message") or f"lamfs s3server injected fault #{fault['id']}"
                body = b"" if method == "HEAD" else _xml_error(code, message, path)
                self.stats.set_status(entry, status)
                start_response(
                    f"{status} {code}",
                    [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))],
                )
                self.stats.add_out(entry, len(body))
                return [body]

        def counting_start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
            self.stats.set_status(entry, int(status.split(None, 1)[0]))
            return start_response(status, headers, exc_info)

        body_iter = None
        if method == "GET" and environ.get("HTTP_RANGE"):
            body_iter = self._ranged_get(environ, path, query, counting_start_response, entry)
        if body_iter is None:
            body_iter = self.moto_app(environ, counting_start_response)
        truncate_after = None
        if fault is not None and fault.get("mode") == "truncate":
            truncate_after = int(fault.get("after_bytes") or 0)
        return self._count_out(body_iter, entry, environ, truncate_after)

    def _count_out(
        self, body_iter: Iterable[bytes], entry: dict[str, Any], environ: dict[str, Any], truncate_after: int | None
    ) -> Iterator[bytes]:
        sent = 0
        try:
            for chunk in body_iter:
                if truncate_after is not None and sent + len(chunk) >= truncate_after:
                    part = chunk[: truncate_after - sent]
                    self.stats.add_out(entry, len(part))
                    yield part  # werkzeug writes the headers (full Content-Length) and this part
                    self.stats.set_status(entry, "truncated")
                    _cut_connection(environ)
                self.stats.add_out(entry, len(chunk))
                sent += len(chunk)
                yield chunk
            if truncate_after is not None:  # body shorter than after_bytes: cut at the end
                yield b""
                self.stats.set_status(entry, "truncated")
                _cut_connection(environ)
        finally:
            close = getattr(body_iter, "close", None)
            if close is not None:
                close()

    # -- O(range) ranged GET -------------------------------------------------------------------

    def _ranged_get(
        self, environ: dict[str, Any], path: str, query: str, start_response: Any, entry: dict[str, Any]
    ) -> Iterable[bytes] | None:
        """Answer a single-range GET of a plain object by reading just that slice of moto's
        stored value. Returns None (→ moto answers) for anything unusual.

        moto's own answer would build the whole object in memory (FakeKey.value copies the full
        SpooledTemporaryFile) and then slice it: O(size) per request, which hides O(range)
        behaviour of the client and makes big-object tests slow.
        """
        if not _LOCAL_HOST_RE.match(environ.get("HTTP_HOST", "")):
            return None  # virtual-hosted style: let moto parse it
        params = urllib.parse.parse_qs(query, keep_blank_values=True)
        if set(params) - {"x-id"}:
            return None  # versionId, partNumber, response-* overrides, ...
        if any(
            h in environ
            for h in (
                "HTTP_IF_NONE_MATCH",
                "HTTP_IF_MODIFIED_SINCE",
                "HTTP_IF_UNMODIFIED_SINCE",
                "HTTP_X_AMZ_SERVER_SIDE_ENCRYPTION_CUSTOMER_ALGORITHM",
            )
        ):
            return None
        m = _RANGE_RE.match(environ["HTTP_RANGE"].strip())
        if not m or (not m.group(1) and not m.group(2)):
            return None
        # Raw URI (not PATH_INFO) so that '%2F', '+' etc. in keys decode exactly as the client meant.
        raw_path = environ.get("RAW_URI") or environ.get("REQUEST_URI") or ""
        raw_path = raw_path.encode("latin-1").decode("utf-8", "replace").split("?", 1)[0]
        if raw_path.startswith(("http://", "https://")):
            return None
        bucket_name, _, key_name = raw_path.lstrip("/").partition("/")
        bucket_name = urllib.parse.unquote(bucket_name)
        key_name = urllib.parse.unquote(key_name)
        if not bucket_name or not key_name:
            return None

        from moto.s3.models import FakeKey, s3_backends
        from moto.s3.utils import ARCHIVE_STORAGE_CLASSES

        where = s3_backends.bucket_accounts.get(bucket_name)
        if where is None:
            return None
        partition, account_id = where
        bucket = s3_backends[account_id][partition].buckets.get(bucket_name)
        key = bucket.keys.get(key_name) if bucket is not None else None
        if not isinstance(key, FakeKey) or key.disposed or key.storage_class in ARCHIVE_STORAGE_CLASSES:
            return None

        with key.lock:  # moto computes (and caches) the etag by seeking the shared buffer
            etag = key.etag  # quoted
        if_match = environ.get("HTTP_IF_MATCH")
        if if_match is not None and etag not in (if_match, f'"{if_match}"'):
            body = _xml_error("PreconditionFailed", "At least one of the pre-conditions you specified did not hold", path)
            start_response("412 Precondition Failed", [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
            return [body]

        size = key.size
        first, last = m.group(1), m.group(2)
        if first:
            begin = int(first)
            end = min(int(last), size - 1) if last else size - 1
            if last and int(last) < begin:
                return None  # invalid spec: S3 ignores the Range; so does moto
        else:  # suffix range "bytes=-N"
            n = int(last)
            begin, end = max(0, size - n), size - 1
            if n == 0:
                begin = size  # unsatisfiable
        if begin >= size or size == 0:
            extra = f"<RangeRequested>{environ['HTTP_RANGE']}</RangeRequested><ActualObjectSize>{size}</ActualObjectSize>"
            body = _xml_error("InvalidRange", "The requested range is not satisfiable", path, extra)
            start_response("416 Requested Range Not Satisfiable", [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
            return [body]

        length = end - begin + 1
        try:
            first_chunk = _read_slice(key, begin, min(length, _FAST_PATH_CHUNK))
        except ValueError:  # buffer closed: the key was deleted/overwritten just now
            return None

        headers: dict[str, str] = {}
        for name, value in list(key.response_dict.items()) + list(key.metadata.items()):
            headers[name.lower()] = str(value)
        headers.pop("x-amz-sdk-checksum-algorithm", None)  # ranged answers carry no checksum
        headers.update(
            {
                "etag": etag,
                "accept-ranges": "bytes",
                "content-range": f"bytes {begin}-{end}/{size}",
                "content-length": str(length),
                "x-amz-request-id": "lamfs-s3server",
            }
        )
        self.stats.fast_path(entry)
        start_response("206 Partial Content", list(headers.items()))
        return _slice_iter(key, begin, length, first_chunk)


def _seed(spec: dict[str, Any]) -> int:
    """Create many objects straight in moto's backend (test set-up without one HTTP request
    per object): {"bucket": "b", "keys": ["k1", ...], "body": "text"} (body optional, default "")."""
    from moto.s3.models import s3_backends

    bucket_name = spec["bucket"]
    body = str(spec.get("body", "")).encode()
    where = s3_backends.bucket_accounts.get(bucket_name)
    if where is None:
        raise ValueError(f"no such bucket: {bucket_name!r}")
    partition, account_id = where
    backend = s3_backends[account_id][partition]
    keys = spec["keys"]
    for key in keys:
        backend.put_object(bucket_name, key, body)
    return len(keys)


def _read_slice(key: Any, offset: int, n: int) -> bytes:
    # FakeKey keeps its bytes in a SpooledTemporaryFile guarded by key.lock; seek+read copies only
    # the slice (moto's FakeKey.value would copy the whole object).
    with key.lock:
        buf = key._value_buffer
        buf.seek(offset)
        return buf.read(n)


def _slice_iter(key: Any, begin: int, length: int, first_chunk: bytes) -> Iterator[bytes]:
    yield first_chunk
    pos = begin + len(first_chunk)
    end = begin + length
    while pos < end:
        try:
            chunk = _read_slice(key, pos, min(_FAST_PATH_CHUNK, end - pos))
        except ValueError as exc:  # deleted mid-stream: cut, like a real server losing the object
            raise _Cut("object went away mid-response") from exc
        if not chunk:
            raise _Cut("object shrank mid-response")
        pos += len(chunk)
        yield chunk


def _drain(environ: dict[str, Any], stream: Any) -> None:
    """Read and discard the request body (bounded by Content-Length, or to EOF when chunked)."""
    length = environ.get("CONTENT_LENGTH")
    try:
        if length:
            remaining = int(length)
            while remaining > 0:
                chunk = stream.read(min(remaining, 1 << 20))
                if not chunk:
                    return
                remaining -= len(chunk)
        elif environ.get("wsgi.input_terminated"):
            while stream.read(1 << 20):
                pass
    except (OSError, ValueError):
        pass


def _json(start_response: Any, status: int, obj: Any) -> list[bytes]:
    body = json.dumps(obj).encode()
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}.get(status, "")
    start_response(f"{status} {reason}", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


class _Listener:
    """Owns the listening socket: stop() closes it (clients get ECONNREFUSED), start() reopens it
    on the same port. The WSGI app (and moto's in-memory state) outlives both."""

    def __init__(self, host: str, port: int, app: Any):
        self.host = host
        self.port = port
        self.app = app
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        from moto.moto_server.werkzeug_app import MotoRequestHandler
        from werkzeug.serving import make_server

        deadline = time.monotonic() + 10
        while True:
            try:
                self._server = make_server(self.host, self.port, self.app, threaded=True, request_handler=MotoRequestHandler)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)  # the old socket may take a moment to release the port
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5000, help="port; 0 picks a free one (printed)")
    parser.add_argument("--recent", type=int, default=1000, help="how many recent requests /_lamfs/stats lists")
    parser.add_argument("--control-stdin", action="store_true", help="obey stop/start/quit lines on stdin; exit at EOF")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # werkzeug logs every request at INFO; keep the log for warnings and errors.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    app = LamfsS3App(DomainDispatcherApplication(create_backend_app), recent_n=args.recent)
    listener = _Listener(args.host, args.port, app)
    port = listener.start()
    print(f"{READY_PREFIX} {port}", flush=True)

    def on_signal(signum: int, frame: Any) -> None:
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    try:
        if not args.control_stdin:
            while True:
                time.sleep(3600)
        for line in sys.stdin:
            command = line.strip()
            if command == "stop":
                listener.stop()
                print(STOPPED_LINE, flush=True)
            elif command == "start":
                listener.start()
                print(f"{READY_PREFIX} {listener.port}", flush=True)
            elif command == "quit":
                break
            elif command:
                log.warning("unknown command on stdin: %r", command)
    finally:
        listener.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
