"""The `lamfs` command line. Plain-language errors (no tracebacks for user errors) and exit codes
scripts can rely on: 0 ok, 1 operation failed, 2 usage error / bad input. Results go to stdout
(`--json` where they are data); messages, warnings and progress bars go to stderr.

The top layer: it builds an Instance (catalog + storage + service) per command and calls the
service; the rules live there (lamfs/service/), not here.
"""
from __future__ import annotations

import argparse
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from . import instance as inst
from .errors import AlreadyExists, InstanceError, InvalidKey, LamfsError, NotFound, StorageUnavailable
from .fuse.writeback import DEFAULT_THREADS as DEFAULT_WRITE_BACK_THREADS
from .logs import configure_cli_logging
from .logs import configure_daemon_logging as _configure_daemon_logging

log = logging.getLogger("lamfs")

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
DEFAULT_CACHE_SIZE = "10G"
STATS_FILE = "block-stats.json"  # written by a running mount, read by `lamfs cache stats`

#: S3 client settings for CLI commands (not the mount): an unreachable endpoint fails within
#: seconds, not minutes. LAMFS_S3_MAX_ATTEMPTS / _CONNECT_TIMEOUT_S / _READ_TIMEOUT_S override them.
CLI_S3_DEFAULTS = {"max_attempts": 3, "connect_timeout_s": 5.0, "read_timeout_s": 30.0}
#: `lamfs add` shows a progress bar on a terminal for transfers at least this large
PROGRESS_MIN_BYTES = 8 << 20
UID_RE = re.compile(r"[0-9A-Za-z]{16}(?:[0-9A-Za-z]{4})?")


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAIL):
        super().__init__(message)
        self.code = code


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", text, re.IGNORECASE)
    if not m:
        raise CliError(f"invalid size {text!r}: use e.g. 500M, 10G", EXIT_USAGE)
    factor = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[m.group(2).upper()]
    return int(float(m.group(1)) * factor)


def parse_duration(text: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text, re.IGNORECASE)
    if not m:
        raise CliError(f"invalid duration {text!r}: use e.g. 0, 90s, 15m, 1h, 2d", EXIT_USAGE)
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2).lower()]


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def human_duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def configure_daemon_logging(level: int, log_file: str | None) -> None:
    _configure_daemon_logging(level, log_file)


def out(args, data, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if getattr(args, "json", False) else text)


def open_instance(config: inst.InstanceConfig) -> inst.Instance:
    """An Instance for a CLI command: S3 clients fail fast (CLI_S3_DEFAULTS) unless the environment
    says otherwise."""
    from .storage import open_storage

    options = inst.storage_options_from_env(config.storage)
    if config.storage.startswith("s3://"):
        options = {**CLI_S3_DEFAULTS, **options}
    storage = open_storage(config.storage, **options)
    try:
        return inst.Instance(config, storage=storage)
    except BaseException:
        storage.close()
        raise


@contextmanager
def instance_for(args):
    instance = open_instance(inst.resolve_config(getattr(args, "instance", None)))
    try:
        yield instance
    finally:
        instance.close()


# -- instances ----------------------------------------------------------------------------------------------

def cmd_init(args) -> int:
    config = inst.create_config(args.storage, catalog=args.catalog, name=args.name)
    instance = inst.Instance(config)  # creates the catalog schema and registers the storage root
    instance.close()
    inst.set_current(config.name)
    out(args, config.describe(), f"initialized instance {config.name!r}: storage {config.storage}")
    return EXIT_OK


def cmd_instances(args) -> int:
    action = getattr(args, "action", None) or "list"
    if action == "connect":
        config = inst.load_config(args.name)
        inst.set_current(config.name)
        out(args, config.describe(), f"connected to instance {config.name!r} ({config.storage}); "
                                     f"commands without --instance use it now")
        return EXIT_OK
    if action == "delete":
        return _delete_instance(args)
    current = inst.current_name()
    rows = [dict(c.describe(), current=c.name == current) for c in inst.list_instances()]
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print("no instances yet: `lamfs mount DIR` uses the embedded default one; `lamfs init --storage URL` makes more")
    else:
        for r in rows:
            print(f"{'*' if r['current'] else ' '} {r['name']:<20} {r['storage']}  ({r['catalog']})")
    return EXIT_OK


def _delete_instance(args) -> int:
    from .catalog import open_catalog

    config = inst.load_config(args.name)
    mounted = [m.mountpoint for m in lamfs_mounts() if m.instance == config.name]
    if mounted:
        raise CliError(f"instance {config.name!r} is mounted at {', '.join(mounted)}: unmount it first "
                       f"(lamfs umount DIR)")
    catalog = open_catalog(config.catalog)
    try:
        n = len(catalog.filter_artifacts(include_trashed=True, latest_only=False))
    finally:
        catalog.close()
    if n and not args.force:
        raise CliError(f"instance {config.name!r} has {n} artifact(s) in its catalog; pass --force to forget it "
                       f"anyway (the objects in {config.storage} are never deleted)")
    inst.delete_config(config.name)
    out(args, dict(config.describe(), deleted=True, artifacts=n),
        f"deleted instance {config.name!r} (its config, local catalog and cache); the objects in "
        f"{config.storage} were kept")
    return EXIT_OK


# -- mounts on this machine ---------------------------------------------------------------------------------

@dataclass
class MountEntry:
    fsname: str
    mountpoint: str
    fstype: str
    options: str

    @property
    def instance(self) -> str:
        return self.fsname.split(":", 1)[1]

    @property
    def read_only(self) -> bool:
        return "ro" in self.options.split(",")


def _unescape_mount_field(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def lamfs_mounts() -> list[MountEntry]:
    """Active lamfs mounts (fsname `lamfs:NAME`) from /proc/self/mounts."""
    found = []
    try:
        with open("/proc/self/mounts") as f:
            lines = f.readlines()
    except OSError:
        return []
    for line in lines:
        fields = line.split()
        if len(fields) >= 4 and fields[0].startswith("lamfs:") and fields[2] in ("fuse.lamfs", "fuse"):
            found.append(MountEntry(_unescape_mount_field(fields[0]), _unescape_mount_field(fields[1]),
                                    fields[2], fields[3]))
    return found


def find_daemon(mountpoint: str) -> dict | None:
    """The `lamfs mount --foreground` process serving `mountpoint` (however it was started: the
    CLI's background mode, systemd, mount.lamfs): pid, log, uptime, memory."""
    target = os.path.realpath(mountpoint)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            argv = [a.decode(errors="surrogateescape") for a in
                    Path(entry.path, "cmdline").read_bytes().split(b"\0") if a]
        except OSError:
            continue
        if "mount" not in argv or "--foreground" not in argv:
            continue
        if not any(a == "lamfs.cli" or os.path.basename(a) == "lamfs" for a in argv[:4]):
            continue
        if not any(a.startswith("/") and os.path.realpath(a) == target for a in argv):
            continue
        pid = int(entry.name)
        info: dict = {"pid": pid}
        if "--log-file" in argv[:-1]:
            info["log"] = argv[argv.index("--log-file") + 1]
        else:
            try:
                env = Path(entry.path, "environ").read_bytes().split(b"\0")
                info["log"] = "journal" if any(e.startswith(b"INVOCATION_ID=") for e in env) else "stderr"
            except OSError:
                info["log"] = "stderr"
        try:
            ticks = int(Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[19])
            uptime = float(Path("/proc/uptime").read_text().split()[0])
            info["uptime_s"] = round(uptime - ticks / os.sysconf("SC_CLK_TCK"), 1)
            for line in Path(entry.path, "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    info["rss_bytes"] = int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
        return info
    return None


def probe_mount(mountpoint: str, timeout_s: float = 3.0) -> str:
    """'ok', 'disconnected' (the daemon is gone: a dead FUSE mount), 'not responding', or an error.
    Reads the root directory, which always goes to the daemon (a cached stat might not)."""
    result: dict = {}

    def run() -> None:
        try:
            with os.scandir(mountpoint) as it:
                next(it, None)
            result["state"] = "ok"
        except OSError as exc:
            result["state"] = "disconnected" if exc.errno == errno.ENOTCONN else f"error: {exc.strerror}"

    t = threading.Thread(target=run, daemon=True)  # a hung FUSE request must not hang `lamfs status`
    t.start()
    t.join(timeout_s)
    return result.get("state", "not responding")


def _dir_bytes(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def cmd_status(args) -> int:
    current = inst.current_name()
    configs = [inst.load_config(args.instance)] if args.instance else inst.list_instances()
    mounts = []
    for m in lamfs_mounts():
        if args.instance and m.instance != args.instance:
            continue
        daemon = find_daemon(m.mountpoint)
        health = probe_mount(m.mountpoint)
        row = {"instance": m.instance, "mountpoint": m.mountpoint, "read_only": m.read_only,
               "health": health, "daemon": daemon}
        config = next((c for c in configs if c.name == m.instance), None)
        if config is not None and daemon is not None:
            live = _live_stats(Path(config.cache_dir))
            if live is not None and live.get("pid") == daemon["pid"]:
                if "space" in live:
                    row["disk_space"] = live["space"]
                if "healing" in live:
                    row["healing"] = live["healing"]
                if "max_bytes" in live:  # a mount of a local root has no block cache
                    row["block_cache"] = {k: v for k, v in live.items()
                                          if k not in ("pid", "updated_ns", "space", "healing")}
        mounts.append(row)
    instances = []
    for c in configs:
        cache_dir = Path(c.cache_dir)
        instances.append(dict(c.describe(), current=c.name == current,
                              cache_bytes=_dir_bytes(cache_dir) if cache_dir.exists() else 0,
                              mounts=[m["mountpoint"] for m in mounts if m["instance"] == c.name]))
    unhealthy = [m for m in mounts if m["health"] != "ok"]
    if args.json:
        print(json.dumps({"home": str(inst.home()), "instances": instances, "mounts": mounts}, indent=2))
        return EXIT_FAIL if unhealthy else EXIT_OK
    print(f"instances ({inst.home()}):" if instances else f"no instances in {inst.home()}")
    for r in instances:
        where = f"  mounted at {', '.join(r['mounts'])}" if r["mounts"] else ""
        print(f"{'*' if r['current'] else ' '} {r['name']:<20} {r['storage']}  cache {human_size(r['cache_bytes'])}"
              f"{where}")
    print("mounts:" if mounts else "mounts: none")
    for m in mounts:
        d = m["daemon"]
        daemon = (f"pid {d['pid']}, up {human_duration(d.get('uptime_s', 0))}, "
                  f"{human_size(d.get('rss_bytes', 0))} RSS, log {d['log']}") if d else "daemon not found"
        mode = "ro" if m["read_only"] else "rw"
        print(f"  {m['instance']:<20} {m['mountpoint']}  {m['health']}  ({mode}; {daemon})")
        if m["health"] == "disconnected":
            print(f"    the daemon is gone: `lamfs umount --lazy {m['mountpoint']}` cleans up, then mount again")
        if m.get("healing"):
            print(f"    healing at start: {m['healing'].get('summary')}")
        sp = m.get("disk_space")
        if sp:
            disks = "; ".join(f"{human_size(d['margin_bytes'])} kept free on {d.get('mount', d['path'])} "
                              f"({human_size(d['free_bytes'])} free of {human_size(d['total_bytes'])})"
                              for d in sp["disks"])
            print(f"    disk margin: {disks}; {sp['refusals']} write(s) refused with ENOSPC")
        bc = m.get("block_cache")
        if bc and "max_bytes" in bc:
            print(f"    block cache {human_size(bc.get('used_bytes', 0))} of {human_size(bc.get('max_bytes', 0))}, "
                  f"{bc.get('hits', 0)} hits, {bc.get('misses', 0)} misses")
    return EXIT_FAIL if unhealthy else EXIT_OK


# -- artifacts ------------------------------------------------------------------------------------------------

def _record_dict(service, rec) -> dict:
    return {
        "uid": rec.uid, "key": rec.key, "description": rec.description, "suffix": rec.suffix, "kind": rec.kind,
        "otype": rec.otype, "size": rec.size, "hash": rec.hash, "hash_type": rec.hash_type,
        "n_files": rec.n_files, "n_observations": rec.n_observations, "version": rec.uid[16:],
        "version_tag": rec.version_tag, "is_latest": rec.is_latest, "is_folder": rec.is_folder,
        "trashed": rec.is_trashed, "key_is_virtual": rec.key_is_virtual, "storage_key": rec.storage_key,
        "storage_path": service.url(rec), "storage_etag": rec.storage_etag,
        "created_at": rec.created_at.isoformat(), "updated_at": rec.updated_at.isoformat(),
    }


def _display_key(rec) -> str:
    if rec.key is None:
        return f"(no key: .lamfs/by-uid/{rec.uid}{rec.suffix})"
    return rec.key + ("/" if rec.is_folder else "")


def _by_uid(catalog, text: str):
    if not UID_RE.fullmatch(text):
        return None
    if len(text) == 20:
        return catalog.artifact_by_uid(text)
    versions = catalog.versions(text)
    latest = [v for v in versions if v.is_latest]
    return (latest or sorted(versions, key=lambda v: v.uid))[-1] if versions else None


def resolve_artifact(service, target: str, *, trashed: bool | None = False):
    """KEY or UID (20 characters, or the 16-character stem for the latest version).
    trashed=False: live artifacts only; True: trashed ones only; None: either (live first)."""
    catalog = service.catalog
    candidates = []
    if trashed is not True:
        candidates.append(catalog.artifact_by_key(target))
    candidates.append(_by_uid(catalog, target))
    if trashed is not False:
        in_trash = catalog.filter_artifacts(key=target, trashed_only=True, latest_only=False)
        if len(in_trash) > 1:
            raise CliError(f"{len(in_trash)} artifacts in the trash have key {target!r}; name one by uid: "
                           + ", ".join(r.uid for r in in_trash), EXIT_USAGE)
        candidates.extend(in_trash)
    for rec in candidates:
        if rec is None:
            continue
        if trashed is False and rec.is_trashed:
            raise NotFound(f"{target!r} is in the trash (lamfs trash list; lamfs trash restore {rec.uid})")
        if trashed is True and not rec.is_trashed:
            raise NotFound(f"{target!r} is not in the trash")
        return rec
    where = " in the trash" if trashed is True else ""
    raise NotFound(f"no artifact with key or uid {target!r}{where}")


class ProgressBar:
    """`progress(bytes_done_total)` receiver that draws on stderr: redrawn in place on a terminal,
    a line per 10% otherwise. Thread-safe (S3 uploads report from several threads)."""

    def __init__(self, total: int, label: str, stream=None):
        self.total = max(int(total), 1)
        self.label = label if len(label) <= 32 else "…" + label[-31:]
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.start = time.monotonic()
        self.last_draw = 0.0
        self.last_step = -1
        self.done = 0
        self.lock = threading.Lock()

    def __call__(self, done: int) -> None:
        with self.lock:
            self.done = min(int(done), self.total)
            now = time.monotonic()
            if self.tty:
                if now - self.last_draw >= 0.1 or self.done >= self.total:
                    self.last_draw = now
                    self.stream.write("\r" + self._line(now) + "\x1b[K")
                    self.stream.flush()
            else:
                step = int(self.done * 10 / self.total)
                if step > self.last_step:
                    self.last_step = step
                    self.stream.write(self._line(now) + "\n")
                    self.stream.flush()

    def _line(self, now: float) -> str:
        frac = self.done / self.total
        filled = int(frac * 24)
        rate = self.done / max(now - self.start, 1e-3)
        eta = (self.total - self.done) / rate if rate > 0 else 0
        return (f"{self.label} [{'#' * filled}{'.' * (24 - filled)}] {frac * 100:5.1f}% "
                f"{human_size(self.done)}/{human_size(self.total)} {human_size(rate)}/s ETA {human_duration(eta)}")

    def close(self) -> None:
        with self.lock:
            if self.tty:
                self.stream.write("\n")
                self.stream.flush()


def _path_size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def cmd_add(args) -> int:
    from .catalog import ArtifactRecord
    from .keys import extract_suffix, validate_key

    if len(args.paths) > 1 and args.key is not None and not args.key.endswith("/"):
        raise CliError("several paths need --key to be a directory (ending in '/') or no --key", EXIT_USAGE)
    if args.no_key and args.key is not None:
        raise CliError("--key and --no-key exclude each other", EXIT_USAGE)
    jobs = []
    for text in args.paths:
        path = Path(text).expanduser()
        if not path.exists():
            raise CliError(f"{text}: no such file or directory", EXIT_USAGE)
        name = path.resolve().name
        key = None if args.no_key else args.key if args.key is not None else name
        if key is not None and key.endswith("/"):
            key = key + name
        if key is not None:
            validate_key(key)
            key_suffix, path_suffix = extract_suffix(key.rsplit("/", 1)[-1]), extract_suffix(name)
            if key_suffix != path_suffix:
                raise CliError(f"The suffix '{key_suffix}' of the provided key is incorrect, it should be "
                               f"'{path_suffix}'.", EXIT_USAGE)
        jobs.append((path, key))
    results = []
    with instance_for(args) as instance:
        service = instance.service
        for path, key in jobs:
            draft = service.draft(path, key=key, description=args.description)
            if isinstance(draft, ArtifactRecord):
                results.append(dict(_record_dict(service, draft), status="existing"))
                if not args.json:
                    print(f"already stored: {_display_key(draft)} ({draft.uid}) has the same bytes")
                continue
            size = _path_size(path)
            show = args.progress if args.progress is not None else (sys.stderr.isatty() and size >= PROGRESS_MIN_BYTES)
            bar = ProgressBar(size, key or path.name) if show else None
            try:
                rec = service.save(draft, keep_copy=False, progress=bar)
            finally:
                if bar is not None:
                    bar.close()
            status = "new version" if draft.revises is not None else "added"
            results.append(dict(_record_dict(service, rec), status=status))
            if not args.json:
                what = f"new version {rec.uid[16:]} of" if draft.revises is not None else "added"
                print(f"{what} {_display_key(rec)} ({rec.uid}, {human_size(rec.size)}"
                      f"{f', {rec.n_files} files' if rec.is_folder else ''})")
    if args.json:
        print(json.dumps(results, indent=2))
    return EXIT_OK


def cmd_ls(args) -> int:
    prefix = (args.prefix or "").lstrip("/")
    with instance_for(args) as instance:
        service = instance.service
        recs = service.catalog.filter_artifacts(key_prefix=prefix) if prefix else service.catalog.filter_artifacts()
        recs.sort(key=lambda r: (r.key is None, r.key or "", r.uid))
        if args.json:
            print(json.dumps([_record_dict(service, r) for r in recs], indent=2))
            return EXIT_OK
        for r in recs:
            if args.long:
                desc = f"  # {r.description}" if r.description else ""
                files = f" ({r.n_files} files)" if r.is_folder else ""
                print(f"{r.uid}  {r.size:>12}  {r.updated_at:%Y-%m-%d %H:%M}  {r.hash_type:<7} {r.hash}  "
                      f"{r.otype or '-':<9} {_display_key(r)}{files}{desc}")
            else:
                print(f"{r.uid}  {human_size(r.size):>10}  {_display_key(r)}")
    return EXIT_OK


def cmd_info(args) -> int:
    with instance_for(args) as instance:
        service = instance.service
        rec = resolve_artifact(service, args.target, trashed=None)
        data = _record_dict(service, rec)
        if not service.storage.is_local:
            data["cache_path"] = str(service.cache_path(rec))
        if rec.is_folder:
            data["files"] = [{"path": f.path, "size": f.size} for f in service.folder_files(rec)]
        data["versions"] = [{"uid": v.uid, "version": v.uid[16:], "size": v.size, "hash": v.hash,
                             "is_latest": v.is_latest, "trashed": v.is_trashed, "key": v.key,
                             "created_at": v.created_at.isoformat()} for v in service.catalog.versions(rec.stem_uid)]
        if args.json:
            print(json.dumps(data, indent=2))
            return EXIT_OK
        for name, value in data.items():
            if name in ("versions", "files"):
                continue
            print(f"{name:<16} {value if value is not None else '-'}")
        if rec.is_folder:
            print(f"files            {len(data['files'])}")
            for f in data["files"][:20]:
                print(f"  {human_size(f['size']):>10}  {f['path']}")
            if len(data["files"]) > 20:
                print(f"  … and {len(data['files']) - 20} more (--json lists all)")
        print("versions:")
        for v in data["versions"]:
            flags = ", ".join(x for x in ("latest" if v["is_latest"] else "", "trashed" if v["trashed"] else "") if x)
            print(f"  {v['uid']}  {human_size(v['size']):>10}  {v['hash']}  {v['created_at'][:19]}"
                  f"{f'  ({flags})' if flags else ''}")
    return EXIT_OK


def cmd_mv(args) -> int:
    from .keys import validate_key

    old = args.old.lstrip("/")
    new = args.new.lstrip("/")
    with instance_for(args) as instance:
        service = instance.service
        catalog = service.catalog
        try:
            src = resolve_artifact(service, old, trashed=False)
        except NotFound:
            src = None
        if src is None and (not old.strip("/") or catalog.dir_by_path(old.rstrip("/")) is None):
            raise NotFound(f"no artifact or directory {args.old!r}")
        base = (src.key.rsplit("/", 1)[-1] if src.key else f"{src.uid}{src.suffix}") if src else \
            old.rstrip("/").rsplit("/", 1)[-1]
        if new in ("", "/"):
            new = base
        elif new.endswith("/") or catalog.dir_by_path(new) is not None:
            new = new.rstrip("/") + "/" + base
        validate_key(new)
        if src is None:
            n = service.rename_dir(old.rstrip("/"), new)
            out(args, {"old": old.rstrip("/"), "new": new, "artifacts": n},
                f"moved directory {old.rstrip('/')}/ to {new}/ ({n} artifact(s))")
            return EXIT_OK
        dst = catalog.artifact_by_key(new)
        if dst is not None and dst.id == src.id:
            out(args, _record_dict(service, src), f"{new} is already there")
            return EXIT_OK
        if dst is not None:
            if not args.force:
                raise CliError(f"{new!r} exists; pass --force to replace its bytes with those of "
                               f"{_display_key(src)} (its uid {dst.uid} is kept)")
            rec = service.rename_over(src, dst)
        else:
            rec = service.rename(src, new)
        out(args, _record_dict(service, rec), f"moved {_display_key(src)} to {rec.key} ({rec.uid})")
    return EXIT_OK


def _delete_one(service, rec, permanent: bool) -> str:
    url = service.delete(rec, permanent=permanent)
    if not permanent:
        return f"moved {_display_key(rec)} ({rec.uid}) to the trash"
    line = f"deleted {_display_key(rec)} ({rec.uid}) permanently"
    return line + (f"; a file/folder remains here: {url}" if url else "")


def cmd_rm(args) -> int:
    failed = 0
    with instance_for(args) as instance:
        service = instance.service
        catalog = service.catalog
        for target in args.targets:
            target = target.lstrip("/")
            try:
                rec = resolve_artifact(service, target, trashed=None if args.permanent else False)
            except NotFound as exc:
                directory = catalog.dir_by_path(target.rstrip("/")) if target.strip("/") else None
                if directory is None:
                    print(f"lamfs: {exc}", file=sys.stderr)
                    failed += 1
                    continue
                if not args.recursive:
                    print(f"lamfs: {target!r} is a directory (use -r to remove everything below it)",
                          file=sys.stderr)
                    failed += 1
                    continue
                path = target.rstrip("/")
                for r in catalog.filter_artifacts(key_prefix=path + "/"):
                    print(_delete_one(service, r, args.permanent))
                for dir_id in reversed(catalog.descendant_dirs(directory.id)):  # deepest first
                    try:
                        service.rmdir(dir_id)
                    except (LamfsError, NotFound):
                        pass
                continue
            print(_delete_one(service, rec, args.permanent))
    return EXIT_FAIL if failed else EXIT_OK


def cmd_trash(args) -> int:
    with instance_for(args) as instance:
        service = instance.service
        if args.action == "list":
            recs = service.catalog.filter_artifacts(trashed_only=True, latest_only=False)
            if args.json:
                print(json.dumps([_record_dict(service, r) for r in recs], indent=2))
            elif not recs:
                print("the trash is empty")
            for r in recs if not args.json else []:
                print(f"{r.uid}  {human_size(r.size):>10}  {r.updated_at:%Y-%m-%d %H:%M}  {_display_key(r)}")
            return EXIT_OK
        if args.action == "restore":
            rec = resolve_artifact(service, args.target, trashed=True)
            try:
                rec = service.restore(rec)
            except AlreadyExists as exc:
                raise CliError(f"cannot restore {_display_key(rec)} ({rec.uid}): {exc}; move that one away first "
                               f"(lamfs mv)") from exc
            out(args, _record_dict(service, rec), f"restored {_display_key(rec)} ({rec.uid})")
            return EXIT_OK
        # empty
        recs = service.catalog.filter_artifacts(trashed_only=True, latest_only=False)
        lines = [_delete_one(service, r, True) for r in recs]
        if args.json:
            print(json.dumps({"deleted": [r.uid for r in recs]}, indent=2))
        else:
            for line in lines:
                print(line)
            print(f"emptied the trash: {len(recs)} artifact(s) deleted permanently")
    return EXIT_OK


# -- fsck -------------------------------------------------------------------------------------------------------

FSCK_LABELS = {
    "pending_intent": "pending write", "missing_object": "missing object", "size_mismatch": "size mismatch",
    "hash_mismatch": "hash mismatch", "changed_object": "changed object", "orphan_object": "orphan object",
    "unregistered_object": "unregistered", "temp_file": "temp file", "incomplete_upload": "incomplete upload",
}


def cmd_fsck(args) -> int:
    from .service.fsck import fsck

    config = inst.resolve_config(args.instance)
    min_age_s = parse_duration(args.min_age)
    if args.repair:
        mounted = [m.mountpoint for m in lamfs_mounts() if m.instance == config.name]
        if mounted:
            raise CliError(f"instance {config.name!r} is mounted at {', '.join(mounted)}: unmount it before "
                           f"`fsck --repair` (a write in progress looks like an orphan)")
    instance = open_instance(config)
    try:
        report = fsck(instance.service, repair=args.repair, hashes=args.hashes, min_age_s=min_age_s,
                      delete_unregistered=args.delete_unregistered)
    finally:
        instance.close()
    if args.json:
        print(json.dumps(dict(report.to_dict(), instance=config.name), indent=2))
        return EXIT_OK if report.ok else EXIT_FAIL
    for p in report.problems:
        if p.repaired:
            state = f"repaired: {p.action}"
        elif p.error:
            state = f"repair failed: {p.error}"
        elif p.recent:
            state = f"recent, left alone (younger than --min-age {args.min_age})"
        elif p.action:
            state = f"--repair will {p.action}"
        else:
            state = "needs you"
        print(f"{FSCK_LABELS[p.kind]}: {p.detail} [{state}]")
    checked = (f"{report.artifacts} artifact(s), {report.objects} object(s)"
               + (f", {report.hashed} rehashed" if args.hashes else ""))
    repaired = sum(p.repaired for p in report.problems)
    if not report.problems:
        print(f"fsck {config.name}: ok ({checked})")
    else:
        left = len(report.unresolved)
        print(f"fsck {config.name}: {len(report.problems)} problem(s), {repaired} repaired, {left} left ({checked})")
        if left and not args.repair and any(p.action and not p.recent for p in report.unresolved):
            print("run `lamfs fsck --repair` to fix the safe ones", file=sys.stderr)
    return EXIT_OK if report.ok else EXIT_FAIL


# -- mount ----------------------------------------------------------------------------------------------------

def _mount_config(args) -> inst.InstanceConfig:
    if args.storage:
        existing = inst.find_by_storage(args.storage)
        return existing or inst.create_config(args.storage, name=args.instance)
    return inst.resolve_config(args.instance)


def _is_mounted(path: Path) -> bool:
    target = str(path.resolve())
    try:
        with open("/proc/self/mounts") as f:
            return any(line.split()[1].replace("\\040", " ") == target for line in f)
    except OSError:
        return os.path.ismount(target)


def cmd_mount(args) -> int:
    mountpoint = Path(args.mountpoint).expanduser()
    if _is_mounted(mountpoint):
        if probe_mount(str(mountpoint)) == "disconnected":
            raise CliError(f"{mountpoint} is a dead mount (its daemon exited): `lamfs umount --lazy {mountpoint}` "
                           f"first", EXIT_FAIL)
        raise CliError(f"{mountpoint} is already a mount point", EXIT_FAIL)
    if not mountpoint.is_dir():
        raise CliError(f"mountpoint {mountpoint} does not exist or is not a directory", EXIT_USAGE)
    config = _mount_config(args)
    cache_size = parse_size(args.cache_size)
    if args.disk_margin is not None:
        parse_size(args.disk_margin)  # a usage error now, not in the daemon's log
    if args.write_back_threads is not None and not 1 <= args.write_back_threads <= 64:
        raise CliError("--write-back-threads must be between 1 and 64", EXIT_USAGE)
    if args.foreground:
        return _mount_foreground(args, config, mountpoint.resolve(), cache_size)
    log_dir = inst.home() / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    tag = hashlib.sha1(str(mountpoint.resolve()).encode()).hexdigest()[:8]
    log_file = Path(args.log_file) if args.log_file else log_dir / f"mount-{config.name}-{tag}.log"
    cmd = [sys.executable, "-m", "lamfs.cli", "mount", str(mountpoint.resolve()), "--foreground",
           "--instance", config.name, "--cache-size", args.cache_size, "--entry-ttl", str(args.entry_ttl),
           "--attr-ttl", str(args.attr_ttl), "--log-file", str(log_file), "--log-level", args.log_level]
    if args.disk_margin is not None:
        cmd += ["--disk-margin", args.disk_margin]
    for flag in ("read_only", "allow_other", "debug", "write_back"):
        if getattr(args, flag):
            cmd.append("--" + flag.replace("_", "-"))
    if args.write_back_threads is not None:
        cmd += ["--write-back-threads", str(args.write_back_threads)]
    if args.cache_dir:
        cmd += ["--cache-dir", args.cache_dir]
    with open(os.devnull, "rb") as devnull, open(log_file, "ab") as logf:
        proc = subprocess.Popen(cmd, stdin=devnull, stdout=logf, stderr=logf, start_new_session=True)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if _is_mounted(mountpoint):
            print(f"mounted instance {config.name!r} ({config.storage}) at {mountpoint} — log: {log_file}")
            return EXIT_OK
        if proc.poll() is not None:
            tail = log_file.read_text(errors="replace").splitlines()[-15:]
            raise CliError("the mount daemon exited:\n  " + "\n  ".join(tail) + f"\n(log: {log_file})")
        time.sleep(0.05)
    proc.terminate()
    raise CliError(f"mount did not become ready within {args.timeout:.0f}s (log: {log_file})")


def _mount_foreground(args, config, mountpoint: Path, cache_size: int) -> int:
    from .fuse.daemon import run_mount

    level = logging.DEBUG if args.debug else getattr(logging, args.log_level.upper())
    configure_daemon_logging(level, args.log_file)
    instance = inst.Instance(config)
    cache_dir = Path(args.cache_dir or config.cache_dir)
    storage = instance.storage

    def fetch(storage_key: str, start: int, length: int, identity: str) -> bytes:
        etag = None if identity.startswith("h:") else identity
        return storage.get_range(storage_key, start, length, etag=etag)

    def fetch_stream(storage_key: str, start: int, length: int, identity: str):
        etag = None if identity.startswith("h:") else identity
        return storage.iter_range(storage_key, start, length, etag=etag)

    from .space import SpaceGuard, catalog_path

    # the disk(s) the mount writes to: staging and blocks under the cache dir, and the SQLite catalog;
    # writes and cached blocks stop short of a margin kept free there (lamfs/space.py)
    db = catalog_path(config.catalog)
    space = SpaceGuard([cache_dir / "staging", cache_dir / "blocks"] + ([db.parent] if db is not None else []),
                       margin=None if args.disk_margin is None else parse_size(args.disk_margin))
    blocks = None
    if not storage.is_local:  # local roots are read in place; only remote bytes need a cache
        from .cache.blocks import MOUNT_FRESH_BLOCKS, BlockCache

        # a reader gets the first bytes of a block as they arrive (time to first byte), when the
        # storage can stream a range
        blocks = BlockCache(cache_dir / "blocks", max_bytes=cache_size, fetch=fetch,
                            fetch_stream=fetch_stream if hasattr(storage, "iter_range") else None,
                            fresh_blocks=MOUNT_FRESH_BLOCKS, space=space)
    try:
        run_mount(instance.service, mountpoint, block_cache=blocks, staging_dir=cache_dir / "staging",
                  read_only=args.read_only, allow_other=args.allow_other, debug=args.debug,
                  entry_ttl_s=args.entry_ttl, attr_ttl_s=args.attr_ttl, fsname=f"lamfs:{config.name}",
                  stats_path=cache_dir / STATS_FILE,
                  write_back_threads=(args.write_back_threads or DEFAULT_WRITE_BACK_THREADS) if args.write_back else 0,
                  space=space)
    finally:
        if blocks is not None:
            blocks.close()
        instance.close()
    return EXIT_OK


def cmd_umount(args) -> int:
    mountpoint = Path(args.mountpoint).expanduser()
    if not _is_mounted(mountpoint):
        raise CliError(f"{mountpoint} is not mounted", EXIT_FAIL)
    daemons = daemon_pids(mountpoint)
    cmd = ["fusermount3", "-u"] + (["-z"] if args.lazy else []) + [str(mountpoint)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode:
        raise CliError(f"unmount failed: {result.stderr.strip() or result.stdout.strip()}"
                       + (" (files still open? close them or use --lazy)" if "busy" in result.stderr else ""))
    print(f"unmounted {mountpoint}")
    if not args.no_wait:
        # a write-back mount commits what is still queued after the unmount: its daemon's exit is the
        # moment everything written through it is in storage
        started = time.monotonic()
        told = False
        from .fuse.writeback import lamfs_process_alive

        while any(lamfs_process_alive(pid) for pid in daemons):
            if not told and time.monotonic() - started > 2:
                print("waiting for the mount daemon to finish its uploads (pid "
                      + ", ".join(map(str, daemons)) + "; Ctrl-C leaves them to it)", flush=True)
                told = True
            time.sleep(0.05)
    return EXIT_OK


def daemon_pids(mountpoint: Path) -> list[int]:
    """The lamfs daemons serving `mountpoint` (foreground processes with it on their command line)."""
    target = os.fsencode(str(mountpoint.resolve()))
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--foreground" in argv and target in argv and any(b"lamfs" in a for a in argv[:3]):
            pids.append(int(proc.name))
    return pids


# -- cache ----------------------------------------------------------------------------------------------------

def _live_stats(cache_dir: Path) -> dict | None:
    path = cache_dir / STATS_FILE
    try:
        stats = json.loads(path.read_text())
        os.kill(stats["pid"], 0)  # the mount that wrote it is alive
        return stats
    except (OSError, ValueError, KeyError):
        return None


def cmd_cache(args) -> int:
    from .cache.blocks import BlockCache, CacheRootError

    config = inst.resolve_config(args.instance)
    cache_dir = Path(args.cache_dir or config.cache_dir)
    live = _live_stats(cache_dir)
    if live is not None and not {"max_bytes", "write_back"} & live.keys():
        live = None  # a mount without block cache nor write-back publishes only its disk margin
    if args.action == "clear":
        if live is not None:
            os.kill(live["pid"], signal.SIGUSR1)  # the mount clears its own cache (pinned blocks stay)
            time.sleep(0.5)
            print(f"asked the running mount (pid {live['pid']}) to clear the block cache of {config.name!r}")
        else:
            try:
                with BlockCache(cache_dir / "blocks", max_bytes=parse_size(args.cache_size),
                                fetch=lambda *a: b"") as blocks:
                    blocks.clear()
            except CacheRootError as exc:
                raise CliError(str(exc)) from exc
            print(f"cleared the block cache of {config.name!r}")
        removed = 0
        for child in cache_dir.iterdir() if cache_dir.exists() else []:
            if child.name not in ("blocks", "staging", STATS_FILE):  # copies made by artifact.cache()
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
                removed += 1
        if removed:
            print(f"removed {removed} cached-copy folder(s) of artifact.cache()")
        return EXIT_OK
    if live is not None:
        stats, source = live, f"live, mount pid {live['pid']}"
    else:
        try:
            with BlockCache(cache_dir / "blocks", max_bytes=parse_size(args.cache_size),
                            fetch=lambda *a: b"") as blocks:
                stats, source = blocks.stats(), "on disk, no mount running"
        except CacheRootError as exc:
            raise CliError(str(exc)) from exc
    stats = {k: v for k, v in stats.items() if k not in ("pid", "updated_ns", "space")}
    if args.json:
        print(json.dumps(dict(stats, instance=config.name, cache_dir=str(cache_dir)), indent=2))
    else:
        print(f"block cache of {config.name!r} at {cache_dir / 'blocks'} ({source})")
        for key in ("max_bytes", "used_bytes", "entries", "objects", "hits", "misses", "bytes_fetched", "evictions"):
            value = stats.get(key, 0)
            human = f" ({value / (1 << 20):.1f} MiB)" if key.endswith("bytes") or key == "bytes_fetched" else ""
            print(f"  {key:<14} {value}{human}")
        wb = stats.get("write_back")
        if isinstance(wb, dict):
            print(f"write-back: {wb['queued']} file(s) queued for upload, {wb['committed']} committed, "
                  f"{wb['retries']} retries, {wb['threads']} uploader threads")
    return EXIT_OK


# -- parser -----------------------------------------------------------------------------------------------------

INSTANCE_HELP = "instance name (default: the current one, else the embedded default)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lamfs", description="Versioned data artifacts as ordinary files.",
        epilog="Exit codes: 0 ok, 1 the operation failed, 2 usage error or bad input. "
               "`lamfs COMMAND --help` describes each command.")
    p.add_argument("--version", action="version", version=f"lamfs {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more messages on stderr (-vv: debug)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    s = sub.add_parser("init", help="create an instance (storage root + catalog)")
    s.add_argument("--storage", required=True, help="s3://bucket[/prefix] or a local directory")
    s.add_argument("--name", help="instance name (default: last part of the storage path)")
    s.add_argument("--catalog", help="sqlite:///path or postgresql://user@host/db (default: SQLite under LAMFS_HOME)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_init)

    s = sub.add_parser("instances", help="list instances; connect to one; delete one",
                       description="Without an action: list the instances (* marks the current one).")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_instances, action=None)
    isub = s.add_subparsers(dest="action", metavar="ACTION")
    i = isub.add_parser("list", help="list instances (the default)")
    i.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    i = isub.add_parser("connect", help="make NAME the current instance (the default of --instance)")
    i.add_argument("name")
    i.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    i = isub.add_parser("delete", help="forget an instance: its config, local catalog and cache (never its objects)")
    i.add_argument("name")
    i.add_argument("--force", action="store_true", help="even if its catalog still has artifacts")
    i.add_argument("--json", action="store_true", default=argparse.SUPPRESS)

    s = sub.add_parser("status", help="instances, active mounts, daemon health, cache use",
                       description="Exit code 1 if a mount is unhealthy (daemon gone or not responding).")
    s.add_argument("--instance", help="only this instance")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("add", help="store files or folders as artifacts",
                       description="Store each PATH (a file or a folder) as an artifact. The key defaults to the "
                                   "file name, so it shows up in the mount under that name.")
    s.add_argument("paths", nargs="+", metavar="PATH")
    s.add_argument("--key", help="the artifact's key (path in the mount); ending in '/': a directory for the names")
    s.add_argument("--no-key", action="store_true", help="no key: reachable by uid only (.lamfs/by-uid/ in the mount)")
    s.add_argument("--description")
    s.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help=f"progress bar on stderr (default: on a terminal, for {PROGRESS_MIN_BYTES >> 20} MiB or more)")
    s.add_argument("--instance", help=INSTANCE_HELP)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_add)

    s = sub.add_parser("ls", help="list artifacts (key prefix filter)",
                       description="List live artifacts whose key starts with PREFIX (a plain string prefix: "
                                   "'runs/' lists a directory, 'runs' also matches 'runs2.csv').")
    s.add_argument("prefix", nargs="?", metavar="PREFIX")
    s.add_argument("-l", "--long", action="store_true", help="bytes, date, hash, type, description")
    s.add_argument("--instance", help=INSTANCE_HELP)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_ls)

    s = sub.add_parser("info", help="all fields, storage path and versions of one artifact")
    s.add_argument("target", metavar="KEY|UID")
    s.add_argument("--instance", help=INSTANCE_HELP)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("mv", help="rename an artifact or a directory (a catalog change; uid kept)")
    s.add_argument("old", metavar="OLD")
    s.add_argument("new", metavar="NEW", help="new key; an existing directory or a name ending in '/' moves OLD into it")
    s.add_argument("-f", "--force", action="store_true",
                   help="if NEW exists, replace its bytes with OLD's (NEW keeps its uid, OLD's record goes)")
    s.add_argument("--instance", help=INSTANCE_HELP)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_mv)

    s = sub.add_parser("rm", help="move artifacts to the trash (or delete them permanently)")
    s.add_argument("targets", nargs="+", metavar="KEY|UID")
    s.add_argument("-r", "--recursive", action="store_true", help="everything below a directory")
    s.add_argument("--permanent", action="store_true",
                   help="delete the record and (for auto-managed keys) the object; no trash")
    s.add_argument("--instance", help=INSTANCE_HELP)
    s.set_defaults(func=cmd_rm)

    s = sub.add_parser("trash", help="list, restore or empty the trash")
    tsub = s.add_subparsers(dest="action", metavar="ACTION")
    tsub.required = True
    for name, help_text in (("list", "trashed artifacts"), ("restore", "bring one back to its key"),
                            ("empty", "delete every trashed artifact permanently")):
        t = tsub.add_parser(name, help=help_text)
        if name == "restore":
            t.add_argument("target", metavar="KEY|UID")
        t.add_argument("--instance", help=INSTANCE_HELP)
        t.add_argument("--json", action="store_true")
        t.set_defaults(func=cmd_trash)

    s = sub.add_parser("fsck", help="check catalog against storage; --repair fixes the safe problems",
                       description="Reports catalog rows whose object is missing or has another size (or hash, "
                                   "with --hashes), objects no artifact references, stale temp files and "
                                   "pending writes left by a crash. --repair deletes orphans under .lamindb/ and "
                                   "temp files and resolves pending writes; it never deletes a catalog row or an "
                                   "object a row references. Exit code 1 while problems remain.")
    s.add_argument("--repair", action="store_true", help="fix the safe problems")
    s.add_argument("--hashes", action="store_true", help="read every object and compare its hash (slow)")
    s.add_argument("--min-age", default="1h",
                   help="leave objects and pending writes younger than this alone (may be in progress; default 1h)")
    s.add_argument("--delete-unregistered", action="store_true",
                   help="with --repair: also delete unreferenced objects outside .lamindb/ (maybe your own files)")
    s.add_argument("--instance", help=INSTANCE_HELP)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_fsck)

    s = sub.add_parser("mount", help="mount an instance as a directory tree")
    s.add_argument("mountpoint")
    s.add_argument("--instance", help=INSTANCE_HELP)
    s.add_argument("--storage", help="one-step form: create or reuse the instance for this storage root")
    s.add_argument("--foreground", action="store_true", help="stay attached (for systemd)")
    s.add_argument("--read-only", action="store_true")
    s.add_argument("--allow-other", action="store_true", help="let other users access the mount (off by default)")
    s.add_argument("--cache-dir", help="cache directory (default: the instance's)")
    s.add_argument("--cache-size", default=DEFAULT_CACHE_SIZE, help=f"read cache bound (default {DEFAULT_CACHE_SIZE})")
    s.add_argument("--disk-margin", default=None, metavar="SIZE",
                   help="free space kept on the disk(s) of the catalog, cache and staging; writes that would "
                        "eat into it get ENOSPC (default: 5%% of the disk, 64M..4G, at most 10%%)")
    s.add_argument("--entry-ttl", type=float, default=1.0, help="kernel name cache TTL in seconds (default 1)")
    s.add_argument("--attr-ttl", type=float, default=1.0, help="kernel attribute cache TTL in seconds (default 1)")
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="daemon log level (default info: one line per change, with its key)")
    s.add_argument("--debug", action="store_true", help="debug log level and FUSE debug output")
    s.add_argument("--log-file", help="daemon log file (background mode default: LAMFS_HOME/logs/)")
    s.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the mount to be ready")
    s.add_argument("--write-back", action="store_true",
                   help="close(2) returns before the upload; uploads run in the background, several at once "
                        "(fsync still waits; see docs/SEMANTICS.md). Default: durable on close")
    s.add_argument("--write-back-threads", type=int, default=None, metavar="N",
                   help=f"uploader threads in write-back mode (default {DEFAULT_WRITE_BACK_THREADS})")
    s.set_defaults(func=cmd_mount)

    s = sub.add_parser("cache", help="block cache statistics, or clear it")
    s.add_argument("action", choices=["stats", "clear"])
    s.add_argument("--instance", help=INSTANCE_HELP)
    s.add_argument("--cache-dir", help="cache directory (default: the instance's)")
    s.add_argument("--cache-size", default=DEFAULT_CACHE_SIZE, help="bound to report when no mount runs")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_cache)

    s = sub.add_parser("umount", help="unmount (finishes in-flight commits first)")
    s.add_argument("mountpoint")
    s.add_argument("--lazy", action="store_true", help="detach now even if files are open")
    s.add_argument("--no-wait", action="store_true",
                   help="return once unmounted, without waiting for a write-back mount's queued uploads")
    s.set_defaults(func=cmd_umount)
    return p


def _exit_code(exc: LamfsError) -> int:
    return EXIT_USAGE if isinstance(exc, (ValueError, InstanceError, InvalidKey)) else EXIT_FAIL


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "mount":  # the daemon sets up its own logging
        configure_cli_logging(logging.WARNING if args.verbose == 0 else
                              logging.INFO if args.verbose == 1 else logging.DEBUG)
    try:
        return args.func(args)
    except CliError as exc:
        print(f"lamfs: {exc}", file=sys.stderr)
        return exc.code
    except StorageUnavailable as exc:
        print(f"lamfs: cannot reach the storage: {exc}\n(check the network, AWS_ENDPOINT_URL and credentials; "
              f"LAMFS_S3_MAX_ATTEMPTS and LAMFS_S3_CONNECT_TIMEOUT_S set how long lamfs tries)", file=sys.stderr)
        return EXIT_FAIL
    except LamfsError as exc:
        print(f"lamfs: {exc}", file=sys.stderr)
        return _exit_code(exc)
    except ValueError as exc:  # the service's LaminDB-worded ValueErrors (bad input)
        print(f"lamfs: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `lamfs ls | head`
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError:
            pass
        return EXIT_OK
    except OSError as exc:  # unreadable source files, full disks, ...
        print(f"lamfs: {exc.strerror or exc}: {exc.filename}" if exc.filename else f"lamfs: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        print("lamfs: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
