#!/usr/bin/env python3
"""lamfs vs rclone mount vs s3fs-fuse, plus local-disk and boto3 baselines (issue 7).

Run through `scripts/bench` (installs rclone/s3fs and the venv). Root only: it mounts and drops the
page cache. Everything talks to one local S3 server (tests/s3server.py on 127.0.0.1), whose
counters give the S3 requests and bytes each filesystem caused.

Each filesystem gets its own prefix of bucket `bench` (lamfs: one instance per workload,
`s3://bench/lamfs/<workload>`; rclone: `bench/rclone/<workload>`; s3fs: `bench:/s3fs/<workload>`).
Every repetition of every workload starts from a fresh mount with its cache directory emptied and
the page cache dropped; the S3 counters are zeroed after the mount is up.

Populating: objects the workloads read are put into the server before the mount (boto3
upload_file for big ones, the server's bulk /_lamfs/seed for thousands of small ones, which costs
no request each); for lamfs the same objects are registered in its catalog (the rows `save()`
writes: uid, key, size, hash, storage key, ETag), so each filesystem starts with the same data.

"Durable" times poll the server (unsigned ListObjectsV2 requests sent by this script; they are
subtracted from the counters) until the bytes are in storage: a new object of the right size, or
an object with the new ETag. Timings of shell commands include starting the command (cp, cat,
head, ls, find, mv, dd, cmp), for every filesystem and the local disk alike.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))

from tests.s3server import S3ServerProcess  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
BUCKET = "bench"
FS_NAMES = ("lamfs", "lamfs-wb", "rclone", "s3fs")
#: lamfs --write-back only changes when close(2) returns: it is measured on the write workloads only
WRITE_BACK_WORKLOADS = ("write", "small", "overwrite")
WORKLOADS = ("write", "read", "ttfb", "small", "list", "rename", "overwrite", "stream")
OP_TIMEOUT_S = 900
DURABLE_TIMEOUT_S = 600

log_lock = threading.Lock()


def say(msg: str) -> None:
    with log_lock:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------------------------------
# small helpers


TOOLS = ("cat /dev/null; head -c 0 /dev/null; ls -lR /dev/null; find /dev/null; cp /dev/null /dev/null; "
         "mv --version; dd if=/dev/null of=/dev/null status=none; cmp /dev/null /dev/null; /usr/bin/python3 -c pass")


def drop_caches() -> None:
    """Drop the page cache, then load the command-line tools again: the measures are about the
    filesystem's data, not about reading /usr/bin/head from disk."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")
    subprocess.run(TOOLS, shell=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def sh(cmd: list[str] | str, *, env: dict | None = None, timeout: float = OP_TIMEOUT_S, capture: bool = False,
       check: bool = True) -> tuple[float, subprocess.CompletedProcess]:
    """Run a command; returns (seconds, completed). Raises with stderr on failure."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, shell=isinstance(cmd, str), env=env, timeout=timeout, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE if capture else subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - t0
    if check and proc.returncode:
        raise RuntimeError(f"{cmd if isinstance(cmd, str) else ' '.join(map(str, cmd))} -> rc {proc.returncode}: "
                           f"{proc.stderr.decode(errors='replace').strip()[-600:]}")
    return elapsed, proc


def is_mounted(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == target for line in f)


def write_random_file(path: Path, size: int) -> None:
    block = os.urandom(MiB)
    with open(path, "wb") as f:
        left = size
        i = 0
        while left > 0:
            # a different first 8 bytes per MiB: no two MiB blocks alike
            chunk = i.to_bytes(8, "little") + block[8:]
            f.write(chunk[:left])
            left -= MiB
            i += 1


def md5_file(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(8 * MiB), b""):
            h.update(chunk)
    return h.hexdigest()


def proc_status(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def dir_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def load_avg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


# ----------------------------------------------------------------------------------------------------
# S3 traffic accounting


class Traffic:
    """Server counters minus this script's own polling requests."""

    def __init__(self, server: S3ServerProcess):
        self.server = server
        self.own_requests = 0
        self.own_bytes_out = 0
        self.own_ops: dict[str, int] = {}
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def reset(self) -> None:
        self.server.reset_stats()
        self.own_requests = self.own_bytes_out = 0
        self.own_ops = {}

    def read(self) -> dict:
        s = self.server.stats()
        by_op = dict(s["by_op"])
        for op, n in self.own_ops.items():
            by_op[op] = by_op.get(op, 0) - n
            if by_op[op] <= 0:
                del by_op[op]
        return {"requests": s["requests"] - self.own_requests, "bytes_in": s["bytes_in"],
                "bytes_out": s["bytes_out"] - self.own_bytes_out, "by_op": by_op}

    def list(self, prefix: str) -> dict[str, tuple[int, str]]:
        """key -> (size, etag) under prefix, by unsigned ListObjectsV2 requests (counted as ours)."""
        out: dict[str, tuple[int, str]] = {}
        token = None
        ns = "{http://s3.amazonaws.com/doc/2006-03-01/}"
        while True:
            q = {"list-type": "2", "prefix": prefix, "max-keys": "1000"}
            if token:
                q["continuation-token"] = token
            url = f"{self.server.endpoint_url}/{BUCKET}?{urllib.parse.urlencode(q)}"
            with self._opener.open(url, timeout=60) as resp:
                body = resp.read()
            self.own_requests += 1
            self.own_bytes_out += len(body)
            self.own_ops["ListObjectsV2"] = self.own_ops.get("ListObjectsV2", 0) + 1
            root = ET.fromstring(body)
            for c in root.iter(f"{ns}Contents"):
                out[c.findtext(f"{ns}Key")] = (int(c.findtext(f"{ns}Size")), (c.findtext(f"{ns}ETag") or "").strip('"'))
            if root.findtext(f"{ns}IsTruncated") == "true":
                token = root.findtext(f"{ns}NextContinuationToken")
            else:
                return out

    def wait_for(self, prefix: str, done, *, timeout: float = DURABLE_TIMEOUT_S, interval: float = 0.05) -> float:
        """Poll until done(listing) is true; returns perf_counter() when it first was."""
        deadline = time.monotonic() + timeout
        while True:
            if done(self.list(prefix)):
                return time.perf_counter()
            if time.monotonic() > deadline:
                raise TimeoutError(f"not in storage after {timeout:.0f} s (prefix {prefix})")
            time.sleep(interval)


# ----------------------------------------------------------------------------------------------------
# the filesystems


class Bench:
    """Shared state: the server, boto3, work dirs, environments."""

    def __init__(self, args):
        self.args = args
        self.work = Path(args.workdir or tempfile.mkdtemp(prefix="lamfs-bench-", dir="/var/tmp")).resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        self.server = S3ServerProcess(log_path=str(self.work / "s3server.log"))
        self.server.start()
        self.traffic = Traffic(self.server)
        base = {k: v for k, v in os.environ.items()
                if not k.startswith(("AWS_", "RCLONE_", "LAMFS_")) and not k.lower().endswith("_proxy")}
        base["NO_PROXY"] = base["no_proxy"] = "127.0.0.1,localhost"
        (self.work / "aws").mkdir(exist_ok=True)
        for name in ("config", "credentials"):
            (self.work / "aws" / name).write_text("")
        self.aws_env = dict(base, AWS_ENDPOINT_URL=self.server.endpoint_url, AWS_ACCESS_KEY_ID="bench",
                            AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1", AWS_REGION="us-east-1",
                            AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE=str(self.work / "aws" / "config"),
                            AWS_SHARED_CREDENTIALS_FILE=str(self.work / "aws" / "credentials"),
                            LAMFS_HOME=str(self.work / "lamfs-home"))
        # rclone and s3fs: no AWS variables at all (rclone refuses AWS_CA_BUNDLE with a custom transport),
        # an empty HOME so no user config is read.
        (self.work / "peer-home").mkdir(exist_ok=True)
        self.peer_env = dict(base, HOME=str(self.work / "peer-home"), RCLONE_CONFIG="/dev/null")
        os.environ.clear()
        os.environ.update(self.aws_env)
        import boto3
        from botocore.config import Config

        self.s3 = boto3.client("s3", endpoint_url=self.server.endpoint_url,
                               config=Config(s3={"addressing_style": "path"}))
        self.s3.create_bucket(Bucket=BUCKET)
        self.files = self.work / "files"
        self.files.mkdir(exist_ok=True)

    def close(self) -> None:
        self.server.terminate()


class FS:
    name = "?"
    kind = "fs"  # or "local"

    def __init__(self, bench: Bench):
        self.b = bench
        self.mnt = bench.work / f"mnt-{self.name}"
        self.mnt.mkdir(exist_ok=True)
        self.cache = bench.work / f"cache-{self.name}"
        self.logs = bench.work / "logs"
        self.logs.mkdir(exist_ok=True)
        self.space: str | None = None

    # a "space" is one workload's area: its own prefix (and for lamfs its own instance)
    def prefix(self, space: str) -> str:
        return f"{self.name}/{space}/"

    def root(self) -> Path:
        return self.mnt

    def setup_space(self, space: str) -> None:
        self.b.s3.put_object(Bucket=BUCKET, Key=self.prefix(space), Body=b"")  # the directory marker

    def mount(self, space: str, *, keep_cache: bool = False) -> None:
        raise NotImplementedError

    def umount(self) -> None:
        raise NotImplementedError

    def pid(self) -> int | None:
        return None

    def seed_file(self, space: str, rel: str, local: Path) -> None:
        self.b.s3.upload_file(str(local), BUCKET, self.prefix(space) + rel)

    def seed_many(self, space: str, rels: list[str], body: str) -> None:
        for i in range(0, len(rels), 2000):
            self.b.server.seed(BUCKET, [self.prefix(space) + r for r in rels[i:i + 2000]], body)

    def _wait_mounted(self, proc: subprocess.Popen | None, log: Path, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not is_mounted(self.mnt):
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited (rc {proc.returncode}): {log.read_text(errors='replace')[-800:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} did not mount within {timeout} s")
            time.sleep(0.02)

    def _fusermount_u(self) -> None:
        if not is_mounted(self.mnt):
            return
        for attempt in range(50):
            r = subprocess.run(["fusermount3", "-u", str(self.mnt)], capture_output=True)
            if r.returncode == 0 or not is_mounted(self.mnt):
                return
            time.sleep(0.2)
        subprocess.run(["fusermount3", "-uz", str(self.mnt)], capture_output=True)


class LamfsFS(FS):
    name = "lamfs"

    def __init__(self, bench: Bench, cache_size: str = "10G"):
        super().__init__(bench)
        self.cache_size = cache_size
        self._pid: int | None = None
        self.instances: dict[str, object] = {}

    mount_options: tuple[str, ...] = ()
    instance_prefix = "bench"

    def prefix(self, space: str) -> str:
        return f"{self.name}/{space}/"

    def _instance(self, space: str):
        from lamfs import instance as inst

        if space not in self.instances:
            config = inst.create_config(f"s3://{BUCKET}/{self.name}/{space}", name=f"{self.instance_prefix}-{space}")
            self.instances[space] = inst.Instance(config)
        return self.instances[space]

    def setup_space(self, space: str) -> None:
        self._instance(space)

    def _register(self, space: str, rows: list[dict]) -> None:
        """Catalog rows as save() writes them, in one transaction."""
        instance = self._instance(space)
        catalog, service = instance.catalog, instance.service
        with catalog.transaction():
            for row in rows:
                catalog.insert_artifact(key_is_virtual=True, storage_id=service.storage_id, **row)

    def seed_file(self, space: str, rel: str, local: Path) -> None:
        from lamfs.hashing import hash_path
        from lamfs.keys import extract_suffix
        from lamfs.uids import new_uid

        uid = new_uid()
        suffix = extract_suffix(Path(rel).name)
        storage_key = f".lamindb/{uid}{suffix}"
        self.b.s3.upload_file(str(local), BUCKET, self.prefix(space) + storage_key)
        etag = self.b.s3.head_object(Bucket=BUCKET, Key=self.prefix(space) + storage_key)["ETag"].strip('"')
        content = hash_path(local)
        self._register(space, [dict(uid=uid, key=rel, suffix=suffix, size=content.size, hash=content.hash,
                                    hash_type=content.hash_type, storage_key=storage_key, storage_etag=etag)])

    def seed_many(self, space: str, rels: list[str], body: str) -> None:
        from lamfs.hashing import b64
        from lamfs.keys import extract_suffix
        from lamfs.uids import new_uid

        data = body.encode()
        md5 = hashlib.md5(data)
        rows, keys = [], []
        for rel in rels:
            uid = new_uid()
            suffix = extract_suffix(rel.rsplit("/", 1)[-1])
            storage_key = f".lamindb/{uid}{suffix}"
            keys.append(self.prefix(space) + storage_key)
            rows.append(dict(uid=uid, key=rel, suffix=suffix, size=len(data), hash=b64(md5.digest()),
                             hash_type="md5", storage_key=storage_key, storage_etag=md5.hexdigest()))
        for i in range(0, len(keys), 2000):
            self.b.server.seed(BUCKET, keys[i:i + 2000], body)
        self._register(space, rows)

    def mount(self, space: str, *, keep_cache: bool = False) -> None:
        self._instance(space)
        if not keep_cache:
            shutil.rmtree(self.cache, ignore_errors=True)
        log = self.logs / f"lamfs-{space}.log"
        cmd = [sys.executable, "-m", "lamfs.cli", "mount", str(self.mnt), "--instance", f"{self.instance_prefix}-{space}",
               "--cache-dir", str(self.cache), "--cache-size", self.cache_size, "--log-file", str(log),
               *self.mount_options]
        sh(cmd, env=self.b.aws_env, timeout=120)
        self._wait_mounted(None, log)
        self._pid = self._find_pid()
        self.space = space

    def _find_pid(self) -> int | None:
        from lamfs.cli import daemon_pids

        return next(iter(daemon_pids(self.mnt)), None)

    def pid(self) -> int | None:
        return self._pid

    def umount(self) -> None:
        self._fusermount_u()
        pid, self._pid = self._pid, None
        deadline = time.monotonic() + 60
        while pid is not None and Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            try:  # reap-less wait: the daemon is not our child
                if Path(f"/proc/{pid}/status").read_text().find("State:\tZ") >= 0:
                    break
            except OSError:
                break
            time.sleep(0.02)

    def close(self) -> None:
        for instance in self.instances.values():
            instance.close()


class LamfsWriteBackFS(LamfsFS):
    """lamfs mounted with --write-back (close returns before the upload; uploads run in parallel)."""
    name = "lamfs-wb"
    mount_options = ("--write-back",)
    instance_prefix = "benchwb"


class RcloneFS(FS):
    name = "rclone"

    def __init__(self, bench: Bench):
        super().__init__(bench)
        self.proc: subprocess.Popen | None = None

    def remote(self, space: str) -> str:
        # connection-string remote: no config file; provider Other, explicit local endpoint, path style
        return (f":s3,provider=Other,endpoint='{self.b.server.endpoint_url}',access_key_id=bench,"
                f"secret_access_key=bench,region=us-east-1,force_path_style=true:{BUCKET}/{self.prefix(space).rstrip('/')}")

    def mount(self, space: str, *, keep_cache: bool = False) -> None:
        if not keep_cache:
            shutil.rmtree(self.cache, ignore_errors=True)
        log = self.logs / f"rclone-{space}.log"
        cmd = ["rclone", "mount", self.remote(space), str(self.mnt), "--vfs-cache-mode", "full",
               "--cache-dir", str(self.cache), "--log-file", str(log), "--log-level", "NOTICE"]
        self.proc = subprocess.Popen(cmd, env=self.b.peer_env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(log, "ab"))
        self._wait_mounted(self.proc, log)
        self.space = space

    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def umount(self) -> None:
        self._fusermount_u()
        if self.proc is not None:
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


class S3fsFS(FS):
    name = "s3fs"

    def __init__(self, bench: Bench):
        super().__init__(bench)
        self.proc: subprocess.Popen | None = None
        self.passwd = bench.work / "s3fs.passwd"
        self.passwd.write_text("bench:bench\n")
        self.passwd.chmod(0o600)

    def mount(self, space: str, *, keep_cache: bool = False) -> None:
        # s3fs's defaults: no use_cache (no local disk cache across opens), so there is nothing to empty
        log = self.logs / f"s3fs-{space}.log"
        opts = ",".join([f"url={self.b.server.endpoint_url}", "use_path_request_style", f"passwd_file={self.passwd}",
                         "endpoint=us-east-1", f"logfile={log}", "dbglevel=warn"])
        cmd = ["s3fs", f"{BUCKET}:/{self.prefix(space).rstrip('/')}", str(self.mnt), "-f", "-o", opts]
        self.proc = subprocess.Popen(cmd, env=self.b.peer_env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(self.logs / f"s3fs-{space}.stderr", "ab"))
        self._wait_mounted(self.proc, log)
        self.space = space

    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    umount = RcloneFS.umount


class LocalFS(FS):
    """The local-disk baseline: the same commands on a directory; 'durable' = after sync(1)."""

    name = "local"
    kind = "local"

    def root(self) -> Path:
        return self.mnt / (self.space or "")

    def setup_space(self, space: str) -> None:
        (self.mnt / space).mkdir(parents=True, exist_ok=True)

    def mount(self, space: str, *, keep_cache: bool = False) -> None:
        self.space = space
        (self.mnt / space).mkdir(parents=True, exist_ok=True)

    def umount(self) -> None:
        pass

    def seed_file(self, space: str, rel: str, local: Path) -> None:
        dest = self.mnt / space / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, dest)

    def seed_many(self, space: str, rels: list[str], body: str) -> None:
        data = body.encode()
        for rel in rels:
            dest = self.mnt / space / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
        os.sync()


# ----------------------------------------------------------------------------------------------------
# workloads: each rep returns {measure: {"s": seconds, "traffic": {...}, extra...}}


class Workloads:
    def __init__(self, bench: Bench, sizes: dict):
        self.b = bench
        self.z = sizes
        self.t = bench.traffic

    # -- preparation (once per filesystem) ---------------------------------------------------------

    def source(self, name: str, size: int) -> Path:
        path = self.b.files / name
        if not path.exists() or path.stat().st_size != size:
            write_random_file(path, size)
        return path

    def prepare(self, fs: FS, workload: str) -> None:
        z = self.z
        if workload == "write":
            fs.setup_space("write")
            self.source("write.bin", z["big"])
        elif workload == "read":
            fs.setup_space("read")
            fs.seed_file("read", "read.bin", self.source("read.bin", z["big"]))
        elif workload == "ttfb":
            fs.setup_space("ttfb")
            fs.seed_file("ttfb", "huge.bin", self.source("huge.bin", z["huge"]))
        elif workload == "small":
            fs.setup_space("small")
        elif workload == "list":
            fs.setup_space("list")
            rels = [f"d{d:03d}/f{i:05d}.txt" for d in range(z["list_dirs"]) for i in range(z["list_files"] // z["list_dirs"])]
            fs.seed_many("list", rels, "x" * 100)
        elif workload == "rename":
            fs.setup_space("rename")
            rels = [f"r{rep}/f{i:04d}.bin" for rep in range(self.b.args.repeat) for i in range(z["rename"])]
            fs.seed_many("rename", rels, "y" * 4096)
        elif workload == "overwrite":
            fs.setup_space("overwrite")
            src = self.source("overwrite-old.bin", MiB)
            for rep in range(self.b.args.repeat):
                fs.seed_file("overwrite", f"o{rep}.bin", src)
            self.source("overwrite-new.bin", MiB)
        elif workload == "stream":
            fs.setup_space("stream")
            fs.seed_file("stream", "stream.bin", self.source("stream.bin", z["stream"]))

    # -- helpers -----------------------------------------------------------------------------------

    def fresh(self, fs: FS, space: str, *, keep_cache: bool = False) -> None:
        fs.mount(space, keep_cache=keep_cache)
        drop_caches()
        self.t.reset()

    def traffic(self, fs: FS) -> dict:
        return self.t.read() if fs.kind == "fs" else {"requests": 0, "bytes_in": 0, "bytes_out": 0, "by_op": {}}

    def durable(self, fs: FS, space: str, t0: float, done, snapshot_prefix: str | None = None) -> float:
        if fs.kind == "local":
            os.sync()
            return time.perf_counter() - t0
        return self.t.wait_for(snapshot_prefix or fs.prefix(space), done) - t0

    # -- the workloads -------------------------------------------------------------------------------

    def write(self, fs: FS, rep: int) -> dict:
        size = self.z["big"]
        src = self.source("write.bin", size)
        self.fresh(fs, "write")
        sh(["cat", str(src)], timeout=120)  # the source in the page cache: measure the filesystem, not our disk
        prefix = fs.prefix("write")
        before = set(self.t.list(prefix)) if fs.kind == "fs" else set()
        self.t.reset()
        t0 = time.perf_counter()
        sh(["cp", str(src), str(fs.root() / f"w{rep}.bin")])
        t_return = time.perf_counter() - t0
        t_durable = self.durable(fs, "write", t0, lambda objs: any(
            k not in before and s == size for k, (s, _e) in objs.items()))
        traffic = self.traffic(fs)
        fs.umount()
        return {"write_return": {"s": t_return, "bytes": size, "traffic": traffic},
                "write_durable": {"s": t_durable, "bytes": size, "traffic": traffic}}

    def read(self, fs: FS, rep: int) -> dict:
        size = self.z["big"]
        out = {}
        self.fresh(fs, "read")
        t, _ = sh(["cat", str(fs.root() / "read.bin")])
        out["read_cold"] = {"s": t, "bytes": size, "traffic": self.traffic(fs)}
        self.t.reset()
        t, _ = sh(["cat", str(fs.root() / "read.bin")])
        out["read_warm"] = {"s": t, "bytes": size, "traffic": self.traffic(fs)}
        fs.umount()
        self.fresh(fs, "read", keep_cache=True)
        t, _ = sh(["cat", str(fs.root() / "read.bin")])
        out["read_warm_remount"] = {"s": t, "bytes": size, "traffic": self.traffic(fs)}
        fs.umount()
        return out

    def ttfb(self, fs: FS, rep: int) -> dict:
        self.fresh(fs, "ttfb")
        t, _ = sh(f"head -c 4096 '{fs.root() / 'huge.bin'}' > /dev/null")
        traffic = self.traffic(fs)
        fs.umount()
        return {"ttfb": {"s": t, "bytes": 4096, "traffic": traffic}}

    SMALL_SCRIPT = ("import os,sys\n"
                    "d,n=sys.argv[1],int(sys.argv[2]); os.mkdir(d)\n"
                    "for i in range(n):\n"
                    "    fd=os.open(os.path.join(d,'f%04d.bin'%i),os.O_WRONLY|os.O_CREAT|os.O_TRUNC,0o644)\n"
                    "    os.write(fd,os.urandom(4096)); os.close(fd)\n")

    def small(self, fs: FS, rep: int) -> dict:
        n = self.z["small"]
        self.fresh(fs, "small")
        prefix = fs.prefix("small")
        before = set(self.t.list(prefix)) if fs.kind == "fs" else set()
        self.t.reset()
        t0 = time.perf_counter()
        sh(["/usr/bin/python3", "-c", self.SMALL_SCRIPT, str(fs.root() / f"s{rep}"), str(n)])
        t_return = time.perf_counter() - t0
        t_durable = self.durable(fs, "small", t0, lambda objs: sum(
            1 for k, (s, _e) in objs.items() if k not in before and s == 4096) >= n, )
        traffic = self.traffic(fs)
        self.t.reset()
        t_ls, proc = sh(["ls", "-lR", str(fs.root() / f"s{rep}")], capture=True)
        listed = sum(1 for line in proc.stdout.decode(errors="replace").splitlines() if line.startswith("-"))
        ls_traffic = self.traffic(fs)
        fs.umount()
        return {"small_create": {"s": t_return, "files": n, "traffic": traffic},
                "small_durable": {"s": t_durable, "files": n, "traffic": traffic},
                "small_ls": {"s": t_ls, "files": n, "traffic": ls_traffic, "ok": listed == n, "listed": listed}}

    def list(self, fs: FS, rep: int) -> dict:
        n = self.z["list_files"]
        out = {}
        self.fresh(fs, "list")
        t, proc = sh(["ls", "-lR", str(fs.root())], capture=True)
        listed = sum(1 for line in proc.stdout.decode(errors="replace").splitlines()
                     if line.startswith("-") and line.endswith(".txt"))
        out["list_ls"] = {"s": t, "files": n, "traffic": self.traffic(fs), "ok": listed == n, "listed": listed}
        fs.umount()
        self.fresh(fs, "list")
        t, proc = sh(["find", str(fs.root())], capture=True)
        listed = sum(1 for line in proc.stdout.decode(errors="replace").splitlines() if line.endswith(".txt"))
        out["list_find"] = {"s": t, "files": n, "traffic": self.traffic(fs), "ok": listed == n, "listed": listed}
        fs.umount()
        return out

    def rename(self, fs: FS, rep: int) -> dict:
        n = self.z["rename"]
        self.fresh(fs, "rename")
        t0 = time.perf_counter()
        sh(["mv", str(fs.root() / f"r{rep}"), str(fs.root() / f"moved{rep}")])
        t_return = time.perf_counter() - t0
        traffic = self.traffic(fs)
        self.t.reset()
        t_ls, proc = sh(["ls", "-l", str(fs.root() / f"moved{rep}")], capture=True)
        listed = sum(1 for line in proc.stdout.decode(errors="replace").splitlines() if line.startswith("-"))
        old_gone = not (fs.root() / f"r{rep}").exists()
        fs.umount()
        return {"rename_dir": {"s": t_return, "files": n, "traffic": traffic, "ok": listed == n and old_gone,
                               "listed": listed}}

    def overwrite(self, fs: FS, rep: int) -> dict:
        new = self.source("overwrite-new.bin", MiB)
        new_md5 = md5_file(new)
        self.fresh(fs, "overwrite")
        sh(["cat", str(new)])
        # every rep writes the same new bytes (into its own file): "durable" = an object that did not
        # have them before has them now
        before = self.t.list(fs.prefix("overwrite")) if fs.kind == "fs" else {}
        self.t.reset()
        target = fs.root() / f"o{rep}.bin"
        t0 = time.perf_counter()
        sh(["dd", f"if={new}", f"of={target}", "bs=1M", "count=1", "conv=notrunc", "status=none"])
        t_return = time.perf_counter() - t0
        t_durable = self.durable(fs, "overwrite", t0, lambda objs: any(
            e == new_md5 and before.get(k, (0, ""))[1] != new_md5 for k, (_s, e) in objs.items()))
        traffic = self.traffic(fs)
        fs.umount()
        self.fresh(fs, "overwrite")
        t_read, proc = sh(["cmp", str(new), str(target)], check=False)
        read_traffic = self.traffic(fs)
        fs.umount()
        return {"overwrite_return": {"s": t_return, "bytes": MiB, "traffic": traffic},
                "overwrite_durable": {"s": t_durable, "bytes": MiB, "traffic": traffic},
                "overwrite_readback": {"s": t_read, "bytes": MiB, "traffic": read_traffic, "ok": proc.returncode == 0}}

    def stream(self, fs: FS, rep: int) -> dict:
        size = self.z["stream"]
        self.fresh(fs, "stream")
        pid = fs.pid()
        peak = {"cache": 0, "rss": 0}
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                if pid:
                    peak["rss"] = max(peak["rss"], proc_status(pid, "VmRSS"))
                peak["cache"] = max(peak["cache"], dir_bytes(fs.cache / "blocks") if fs.cache.exists() else 0)
                stop.wait(0.25)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t, _ = sh(["cat", str(fs.root() / "stream.bin")])
        stop.set()
        sampler.join()
        time.sleep(2.5)  # the daemon publishes its cache counters every 2 s
        hwm = proc_status(pid, "VmHWM") if pid else 0
        stats = {}
        try:
            stats = json.loads((fs.cache / "block-stats.json").read_text())
        except (OSError, ValueError):
            pass
        traffic = self.traffic(fs)
        fs.umount()
        return {"stream": {"s": t, "bytes": size, "traffic": traffic, "vmhwm": hwm, "rss_sampled": peak["rss"],
                           "cache_peak_bytes": peak["cache"], "cache_bound_bytes": getattr(fs, "cache_bound", None),
                           "block_stats": {k: stats.get(k) for k in ("used_bytes", "max_bytes", "evictions", "bytes_fetched")}}}


# ----------------------------------------------------------------------------------------------------
# boto3 baseline


def boto3_baseline(b: Bench, z: dict, repeat: int) -> dict:
    s3, t = b.s3, b.traffic
    from boto3.s3.transfer import TransferConfig

    cfg = TransferConfig()  # boto3's defaults: 8 MiB parts, 10 threads
    big = b.files / "write.bin"
    huge = b.files / "huge.bin"
    for name, size in (("write.bin", z["big"]), ("huge.bin", z["huge"])):
        if not (b.files / name).exists():
            write_random_file(b.files / name, size)
    s3.upload_file(str(huge), BUCKET, "boto3/huge.bin", Config=cfg)
    s3.put_object(Bucket=BUCKET, Key="boto3/overwrite.bin", Body=os.urandom(MiB))
    n_list = z["list_files"]
    b.server.seed(BUCKET, [f"boto3/list/d{d:03d}/f{i:05d}.txt" for d in range(z["list_dirs"])
                           for i in range(n_list // z["list_dirs"])], "x" * 100)
    for rep in range(repeat):
        b.server.seed(BUCKET, [f"boto3/rename/r{rep}/f{i:04d}.bin" for i in range(z["rename"])], "y" * 4096)
    runs: dict[str, list[dict]] = {}

    def timed(measure: str, fn, **extra) -> None:
        drop_caches()
        t.reset()
        t0 = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - t0
        runs.setdefault(measure, []).append(dict(extra, s=elapsed, traffic=t.read()))

    new = os.urandom(MiB)
    for rep in range(repeat):
        sh(["cat", str(big)])
        timed("write_durable", lambda: s3.upload_file(str(big), BUCKET, f"boto3/w{rep}.bin", Config=cfg), bytes=z["big"])
        out = b.work / "boto3-download.bin"
        timed("read_cold", lambda: s3.download_file(BUCKET, "boto3/w0.bin", str(out), Config=cfg), bytes=z["big"])
        out.unlink()
        timed("ttfb", lambda: s3.get_object(Bucket=BUCKET, Key="boto3/huge.bin", Range="bytes=0-4095")["Body"].read(),
              bytes=4096)

        def puts():
            for i in range(z["small"]):
                s3.put_object(Bucket=BUCKET, Key=f"boto3/small/s{rep}/f{i:04d}.bin", Body=os.urandom(4096))

        timed("small_durable", puts, files=z["small"])

        def list_all():
            n = 0
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="boto3/list/"):
                n += len(page.get("Contents", []))
            assert n == n_list, n

        timed("list_ls", list_all, files=n_list)

        def rename():  # what a client must do on S3: copy each object, then delete the old ones
            keys = [f"boto3/rename/r{rep}/f{i:04d}.bin" for i in range(z["rename"])]
            for k in keys:
                s3.copy_object(Bucket=BUCKET, Key=k.replace(f"/r{rep}/", f"/moved{rep}/"),
                               CopySource={"Bucket": BUCKET, "Key": k})
            for i in range(0, len(keys), 1000):
                s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]]})

        timed("rename_dir", rename, files=z["rename"])
        timed("overwrite_durable", lambda: s3.put_object(Bucket=BUCKET, Key="boto3/overwrite.bin", Body=new), bytes=MiB)
        timed("overwrite_readback", lambda: s3.get_object(Bucket=BUCKET, Key="boto3/overwrite.bin")["Body"].read(),
              bytes=MiB)
    return runs


# ----------------------------------------------------------------------------------------------------
# summary and markdown

MEASURES = [
    # key, label, unit ("MB/s" from bytes, "files/s" from files, or None)
    ("write_return", "write 256 MiB: `cp` returns", "MB/s"),
    ("write_durable", "write 256 MiB: object complete in storage", "MB/s"),
    ("read_cold", "cold read 256 MiB (`cat`)", "MB/s"),
    ("read_warm", "warm read 256 MiB, same mount", "MB/s"),
    ("read_warm_remount", "warm read after remount (disk cache kept, page cache dropped)", "MB/s"),
    ("ttfb", "time to first byte, `head -c 4096` of 1 GiB", None),
    ("small_create", "500 × 4 KiB: creates return", "files/s"),
    ("small_durable", "500 × 4 KiB: all in storage", "files/s"),
    ("small_ls", "500 × 4 KiB: `ls -lR` after", None),
    ("list_ls", "10,000 files / 100 dirs: `ls -lR`, fresh mount", "files/s"),
    ("list_find", "10,000 files / 100 dirs: `find`, fresh mount", "files/s"),
    ("rename_dir", "rename a directory of 1,000 files (`mv`)", "files/s"),
    ("overwrite_return", "overwrite 1 MiB in place (`dd conv=notrunc`) returns", None),
    ("overwrite_durable", "overwrite 1 MiB: new bytes in storage", None),
    ("overwrite_readback", "overwrite 1 MiB: read back via a fresh mount (`cmp`)", None),
    ("stream", "stream 2 GiB (`cat`), lamfs cache bound 1 GiB", "MB/s"),
]
COLUMNS = ("lamfs", "lamfs-wb", "rclone", "s3fs", "local", "boto3")


def summarize(runs: list[dict]) -> dict:
    ok_runs = [r for r in runs if "error" not in r]
    errors = [r["error"] for r in runs if "error" in r]
    if not ok_runs:
        return {"error": errors[0] if errors else "not run"}
    secs = [r["s"] for r in ok_runs]
    med = statistics.median(secs)
    out = {"median_s": med, "min_s": min(secs), "max_s": max(secs), "n": len(ok_runs)}
    if errors:
        out["errors"] = errors
    if "bytes" in ok_runs[0]:
        out["MBps"] = ok_runs[0]["bytes"] / MiB / med if med > 0 else None
    if "files" in ok_runs[0]:
        out["files_per_s"] = ok_runs[0]["files"] / med if med > 0 else None
    tr = [r["traffic"] for r in ok_runs]
    out["requests"] = statistics.median(x["requests"] for x in tr)
    out["bytes_out"] = statistics.median(x["bytes_out"] for x in tr)
    out["bytes_in"] = statistics.median(x["bytes_in"] for x in tr)
    out["by_op"] = tr[len(tr) // 2]["by_op"]
    if any("ok" in r for r in ok_runs):
        out["all_ok"] = all(r.get("ok", True) for r in ok_runs)
        out["listed"] = [r.get("listed") for r in ok_runs if "listed" in r]
    for extra in ("vmhwm", "rss_sampled", "cache_peak_bytes", "block_stats"):
        if extra in ok_runs[0]:
            out[extra] = ok_runs[-1][extra]
    return out


def human_bytes(n: float) -> str:
    if n >= GiB:
        return f"{n / GiB:.2f} GiB"
    if n >= MiB:
        return f"{n / MiB:.1f} MiB"
    if n >= 1024:
        return f"{n / 1024:.0f} KiB"
    return f"{n:.0f} B"


def fmt_s(x: float) -> str:
    return f"{x:.3g}" if x < 100 else f"{x:.0f}"


def cell(summary: dict | None, unit: str | None) -> str:
    if summary is None:
        return "—"
    if "error" in summary:
        return "FAILED: " + summary["error"].splitlines()[0][:80].replace("|", "/")
    text = f"{fmt_s(summary['median_s'])} s ({fmt_s(summary['min_s'])}–{fmt_s(summary['max_s'])})"
    if unit == "MB/s" and summary.get("MBps"):
        text += f"<br>{summary['MBps']:.0f} MB/s"
    elif unit == "files/s" and summary.get("files_per_s"):
        text += f"<br>{summary['files_per_s']:.0f} files/s"
    if summary.get("all_ok") is False:
        text += ("<br>**wrong result**" + (f" (listed {summary['listed']})" if summary.get("listed") else
                                          " (bytes read back differ)"))
    if summary.get("errors"):
        text += f"<br>{len(summary['errors'])} run(s) failed"
    return text


def traffic_cell(summary: dict | None) -> str:
    if summary is None or "error" in summary:
        return "—"
    ops = ", ".join(f"{op} {n}" for op, n in sorted(summary["by_op"].items(), key=lambda kv: -kv[1])[:4])
    return (f"{summary['requests']:.0f} req; ↓{human_bytes(summary['bytes_out'])} ↑{human_bytes(summary['bytes_in'])}"
            + (f"<br><small>{ops}</small>" if ops else ""))


def markdown(results: dict) -> str:
    s = results["summary"]
    lines = ["| workload | " + " | ".join(COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    for key, label, unit in MEASURES:
        if not any(key in s.get(col, {}) for col in COLUMNS):
            continue
        lines.append(f"| {label} | " + " | ".join(cell(s.get(col, {}).get(key), unit) for col in COLUMNS) + " |")
    lines += ["", "S3 requests and bytes caused (median run; ↓ = bytes sent by the server, ↑ = received; "
              "top operations):", "",
              "| workload | " + " | ".join(c for c in COLUMNS if c != "local") + " |",
              "|---|" + "---|" * (len(COLUMNS) - 1)]
    for key, label, _unit in MEASURES:
        if key in ("write_durable", "small_durable", "overwrite_durable"):
            continue  # same counters as the *_return row (counted until durable)
        if not any(key in s.get(col, {}) for col in COLUMNS):
            continue
        lines.append(f"| {label} | " + " | ".join(traffic_cell(s.get(col, {}).get(key))
                                                 for col in COLUMNS if col != "local") + " |")
    for variant in ("lamfs", "lamfs-wb"):
        if s.get(variant):
            lines += _ratio_rows(s, variant)
    st = s.get("lamfs", {}).get("stream")
    if st and "error" not in st:
        bs = st.get("block_stats") or {}
        lines += ["", f"lamfs daemon while streaming {human_bytes(results['sizes']['stream'])}: peak RSS (VmHWM) "
                  f"{human_bytes(st.get('vmhwm') or 0)}; block cache on disk peaked at "
                  f"{human_bytes(st.get('cache_peak_bytes') or 0)} against a bound of "
                  f"{human_bytes(bs.get('max_bytes') or 0)} (used at the end: {human_bytes(bs.get('used_bytes') or 0)}, "
                  f"{bs.get('evictions')} evictions)."]
    return "\n".join(lines) + "\n"


def _ratio_rows(s: dict, variant: str) -> list[str]:
    lines = ["", f"Ratios for {variant} (median times; > 1 means {variant} is faster):", "",
             f"| workload | best peer | {variant} vs best peer | {variant} vs local disk | {variant} vs boto3 |",
             "|---|---|---|---|---|"]
    for key, label, _unit in MEASURES:
        lam = s.get(variant, {}).get(key)
        if not lam or "error" in lam:
            continue
        peers = [(c, s.get(c, {}).get(key)) for c in ("rclone", "s3fs")]
        peers = [(c, p) for c, p in peers if p and "error" not in p and p.get("all_ok", True)]
        best = min(peers, key=lambda cp: cp[1]["median_s"]) if peers else None

        def ratio(other):
            if not other or "error" in other or lam["median_s"] <= 0:
                return "—"
            return f"{other['median_s'] / lam['median_s']:.2f}×"

        lines.append(f"| {label} | {best[0] if best else '—'} | {ratio(best[1]) if best else '—'} | "
                     f"{ratio(s.get('local', {}).get(key))} | {ratio(s.get('boto3', {}).get(key))} |")
    return lines


# ----------------------------------------------------------------------------------------------------


def wait_idle(minutes: float) -> None:
    deadline = time.monotonic() + minutes * 60
    while True:
        one = load_avg()[0]
        if one <= 1.0:
            say(f"load {one:.2f}: starting")
            return
        if time.monotonic() > deadline:
            say(f"load still {one:.2f} after {minutes} min: running anyway (noted in the results)")
            return
        say(f"1-minute load {one:.2f} > 1.0: waiting")
        time.sleep(30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--repeat", type=int, default=None, help="repetitions per measure (default 3; --quick 1)")
    ap.add_argument("--fs", default=",".join(FS_NAMES + ("local", "boto3")),
                    help="comma list of lamfs,rclone,s3fs,local,boto3")
    ap.add_argument("--only", default=",".join(WORKLOADS), help="comma list of " + ",".join(WORKLOADS))
    ap.add_argument("--out", default=None, help="results directory (default bench-results/<timestamp>)")
    ap.add_argument("--workdir", default=None, help="scratch directory (default a new one in /var/tmp, removed)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ap.add_argument("--wait-idle", type=float, default=0, help="wait up to N minutes for load < 1.0 first")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench: run as root", file=sys.stderr)
        return 2
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.quick:
        sizes = dict(big=32 * MiB, huge=128 * MiB, stream=256 * MiB, small=100, list_dirs=20, list_files=1000,
                     rename=200)
    else:
        sizes = dict(big=256 * MiB, huge=1 * GiB, stream=2 * GiB, small=500, list_dirs=100, list_files=10000,
                     rename=1000)
    wanted_fs = args.fs.split(",")
    wanted = args.only.split(",")
    if args.wait_idle:
        wait_idle(args.wait_idle)
    load_start = load_avg()
    started = time.time()
    out_dir = Path(args.out or HERE / "bench-results" / time.strftime("%Y%m%d-%H%M%S"))
    out_dir.mkdir(parents=True, exist_ok=True)
    bench = Bench(args)
    say(f"S3 server {bench.server.endpoint_url}; scratch {bench.work}; results {out_dir}")
    raw: dict[str, dict[str, list[dict]]] = {}
    w = Workloads(bench, sizes)
    results = {"sizes": sizes, "repeat": args.repeat, "quick": args.quick, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
               "load_start": load_start, "machine": machine_info(), "raw": raw}

    def save():
        results["summary"] = {fs: {m: summarize(rs) for m, rs in ms.items()} for fs, ms in raw.items()}
        (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=str))
        (out_dir / "results.md").write_text(markdown(results))

    filesystems: list[FS] = []
    for name in wanted_fs:
        if name == "lamfs":
            filesystems.append(LamfsFS(bench))
        elif name == "lamfs-wb":
            filesystems.append(LamfsWriteBackFS(bench))
        elif name == "rclone":
            filesystems.append(RcloneFS(bench))
        elif name == "s3fs":
            filesystems.append(S3fsFS(bench))
        elif name == "local":
            filesystems.append(LocalFS(bench))
    try:
        for fs in filesystems:
            raw[fs.name] = {}
            for workload in wanted:
                if workload == "stream" and fs.name != "lamfs":
                    continue  # the RSS/cache-bound measure is lamfs's own
                if fs.name == "lamfs-wb" and workload not in WRITE_BACK_WORKLOADS:
                    continue  # reads, listings and renames do not change with write-back
                if workload == "stream":
                    fs.umount()
                    fs.cache_size = "1G"
                    fs.cache_bound = GiB
                say(f"{fs.name}: {workload}")
                try:
                    w.prepare(fs, workload)
                except Exception as exc:  # noqa: BLE001 - record and go on
                    say(f"  preparation failed: {exc}")
                    raw[fs.name].setdefault(workload, []).append({"error": f"preparation: {exc}"})
                    continue
                reps = 1 if workload == "stream" else args.repeat
                for rep in range(reps):
                    try:
                        measures = getattr(w, workload)(fs, rep)
                    except Exception as exc:  # noqa: BLE001 - a failing peer is a result, not a crash
                        say(f"  rep {rep}: FAILED: {exc}")
                        (bench.work / "logs" / f"trace-{fs.name}-{workload}-{rep}.txt").write_text(traceback.format_exc())
                        try:
                            fs.umount()
                        except Exception:  # noqa: BLE001
                            pass
                        for m in [k for k, _l, _u in MEASURES if k.startswith(workload if workload != "list" else "list_")
                                  or (workload == "read" and k.startswith("read_"))]:
                            raw[fs.name].setdefault(m, []).append({"error": str(exc).splitlines()[0][:300] if str(exc) else repr(exc)})
                        continue
                    for m, r in measures.items():
                        raw[fs.name].setdefault(m, []).append(r)
                        extra = f" ok={r['ok']}" if "ok" in r else ""
                        say(f"  rep {rep}: {m} {r['s']:.3f} s, {r['traffic']['requests']} req{extra}")
                save()
            if isinstance(fs, LamfsFS):
                fs.close()
        if "boto3" in wanted_fs:
            say("boto3 baseline")
            try:
                raw["boto3"] = boto3_baseline(bench, sizes, args.repeat)
            except Exception as exc:  # noqa: BLE001
                say(f"  boto3 baseline FAILED: {exc}")
                raw["boto3"] = {"write_durable": [{"error": str(exc)}]}
        results["load_end"] = load_avg()
        results["elapsed_s"] = time.time() - started
        save()
        say(f"done in {results['elapsed_s']:.0f} s; load at start {load_start}, at end {results['load_end']}")
        print(markdown(results))
        print(f"results: {out_dir / 'results.json'} and {out_dir / 'results.md'}")
    finally:
        for fs in filesystems:
            try:
                fs.umount()
            except Exception:  # noqa: BLE001
                pass
        bench.close()
        if not args.keep and not args.workdir:
            shutil.rmtree(bench.work, ignore_errors=True)
    return 0


def machine_info() -> dict:
    mem = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem = int(line.split()[1]) * 1024
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break

    def version(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.splitlines()[0]
        except Exception:  # noqa: BLE001
            return "?"

    return {"cpus": os.cpu_count(), "cpu": cpu, "mem_bytes": mem, "kernel": platform.release(),
            "python": platform.python_version(), "rclone": version(["rclone", "version"]),
            "s3fs": version(["s3fs", "--version"]), "fuse3": version(["fusermount3", "-V"])}


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
    sys.exit(main())
