"""The `lamfs` command line. Plain-language errors (no tracebacks for user errors) and exit codes
scripts can rely on: 0 ok, 1 operation failed, 2 usage error / bad input."""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import __version__
from . import instance as inst
from .errors import LamfsError

log = logging.getLogger("lamfs")

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
DEFAULT_CACHE_SIZE = "10G"
STATS_FILE = "block-stats.json"  # written by a running mount, read by `lamfs cache stats`


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


def configure_daemon_logging(level: int, log_file: str | None) -> None:
    handler = logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    # under systemd journald adds timestamps; keep one line per event either way
    fmt = "%(levelname)s %(name)s: %(message)s" if os.environ.get("INVOCATION_ID") else \
        "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "aiobotocore", "s3fs", "fsspec"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    logging.getLogger("lamfs").handlers[:] = []


# -- instances ----------------------------------------------------------------------------------------------

def cmd_init(args) -> int:
    config = inst.create_config(args.storage, catalog=args.catalog, name=args.name)
    instance = inst.Instance(config)  # creates the catalog schema and registers the storage root
    instance.close()
    inst.set_current(config.name)
    out(args, config.describe(), f"initialized instance {config.name!r}: storage {config.storage}")
    return EXIT_OK


def cmd_instances(args) -> int:
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


def out(args, data, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if getattr(args, "json", False) else text)


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
    if not mountpoint.is_dir():
        raise CliError(f"mountpoint {mountpoint} does not exist or is not a directory", EXIT_USAGE)
    if _is_mounted(mountpoint):
        raise CliError(f"{mountpoint} is already a mount point", EXIT_FAIL)
    config = _mount_config(args)
    cache_size = parse_size(args.cache_size)
    if args.foreground:
        return _mount_foreground(args, config, mountpoint.resolve(), cache_size)
    log_dir = inst.home() / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    tag = hashlib.sha1(str(mountpoint.resolve()).encode()).hexdigest()[:8]
    log_file = Path(args.log_file) if args.log_file else log_dir / f"mount-{config.name}-{tag}.log"
    cmd = [sys.executable, "-m", "lamfs.cli", "mount", str(mountpoint.resolve()), "--foreground",
           "--instance", config.name, "--cache-size", args.cache_size, "--entry-ttl", str(args.entry_ttl),
           "--attr-ttl", str(args.attr_ttl), "--log-file", str(log_file)]
    for flag in ("read_only", "allow_other", "debug"):
        if getattr(args, flag):
            cmd.append("--" + flag.replace("_", "-"))
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

    configure_daemon_logging(logging.DEBUG if args.debug else logging.INFO, args.log_file)
    instance = inst.Instance(config)
    cache_dir = Path(args.cache_dir or config.cache_dir)
    storage = instance.storage

    def fetch(storage_key: str, start: int, length: int, identity: str) -> bytes:
        etag = None if identity.startswith("h:") else identity
        return storage.get_range(storage_key, start, length, etag=etag)

    blocks = None
    if not storage.is_local:  # local roots are read in place; only remote bytes need a cache
        from .cache.blocks import BlockCache

        blocks = BlockCache(cache_dir / "blocks", max_bytes=cache_size, fetch=fetch)
    try:
        run_mount(instance.service, mountpoint, block_cache=blocks, staging_dir=cache_dir / "staging",
                  read_only=args.read_only, allow_other=args.allow_other, debug=args.debug,
                  entry_ttl_s=args.entry_ttl, attr_ttl_s=args.attr_ttl, fsname=f"lamfs:{config.name}",
                  stats_path=cache_dir / STATS_FILE)
    finally:
        if blocks is not None:
            blocks.close()
        instance.close()
    return EXIT_OK


def cmd_umount(args) -> int:
    mountpoint = Path(args.mountpoint).expanduser()
    if not _is_mounted(mountpoint):
        raise CliError(f"{mountpoint} is not mounted", EXIT_FAIL)
    cmd = ["fusermount3", "-u"] + (["-z"] if args.lazy else []) + [str(mountpoint)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode:
        raise CliError(f"unmount failed: {result.stderr.strip() or result.stdout.strip()}"
                       + (" (files still open? close them or use --lazy)" if "busy" in result.stderr else ""))
    print(f"unmounted {mountpoint}")
    return EXIT_OK


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
    stats = {k: v for k, v in stats.items() if k not in ("pid", "updated_ns")}
    if args.json:
        print(json.dumps(dict(stats, instance=config.name, cache_dir=str(cache_dir)), indent=2))
    else:
        print(f"block cache of {config.name!r} at {cache_dir / 'blocks'} ({source})")
        for key in ("max_bytes", "used_bytes", "entries", "objects", "hits", "misses", "bytes_fetched", "evictions"):
            value = stats.get(key, 0)
            human = f" ({value / (1 << 20):.1f} MiB)" if key.endswith("bytes") or key == "bytes_fetched" else ""
            print(f"  {key:<14} {value}{human}")
    return EXIT_OK


# -- parser -----------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lamfs", description="Versioned data artifacts as ordinary files.")
    p.add_argument("--version", action="version", version=f"lamfs {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    s = sub.add_parser("init", help="create an instance (storage root + catalog)")
    s.add_argument("--storage", required=True, help="s3://bucket[/prefix] or a local directory")
    s.add_argument("--name", help="instance name (default: last part of the storage path)")
    s.add_argument("--catalog", help="sqlite:///path or postgresql://user@host/db (default: SQLite under LAMFS_HOME)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_init)

    s = sub.add_parser("instances", help="list instances")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_instances)

    s = sub.add_parser("mount", help="mount an instance as a directory tree")
    s.add_argument("mountpoint")
    s.add_argument("--instance", help="instance name (default: current, else the embedded default)")
    s.add_argument("--storage", help="one-step form: create or reuse the instance for this storage root")
    s.add_argument("--foreground", action="store_true", help="stay attached (for systemd)")
    s.add_argument("--read-only", action="store_true")
    s.add_argument("--allow-other", action="store_true", help="let other users access the mount (off by default)")
    s.add_argument("--cache-dir", help="cache directory (default: the instance's)")
    s.add_argument("--cache-size", default=DEFAULT_CACHE_SIZE, help=f"read cache bound (default {DEFAULT_CACHE_SIZE})")
    s.add_argument("--entry-ttl", type=float, default=1.0, help="kernel name cache TTL in seconds (default 1)")
    s.add_argument("--attr-ttl", type=float, default=1.0, help="kernel attribute cache TTL in seconds (default 1)")
    s.add_argument("--debug", action="store_true")
    s.add_argument("--log-file", help="daemon log file (background mode default: LAMFS_HOME/logs/)")
    s.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the mount to be ready")
    s.set_defaults(func=cmd_mount)

    s = sub.add_parser("cache", help="block cache statistics, or clear it")
    s.add_argument("action", choices=["stats", "clear"])
    s.add_argument("--instance", help="instance name (default: current, else the embedded default)")
    s.add_argument("--cache-dir", help="cache directory (default: the instance's)")
    s.add_argument("--cache-size", default=DEFAULT_CACHE_SIZE, help="bound to report when no mount runs")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_cache)

    s = sub.add_parser("umount", help="unmount (finishes in-flight commits first)")
    s.add_argument("mountpoint")
    s.add_argument("--lazy", action="store_true", help="detach now even if files are open")
    s.set_defaults(func=cmd_umount)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CliError as exc:
        print(f"lamfs: {exc}", file=sys.stderr)
        return exc.code
    except LamfsError as exc:
        print(f"lamfs: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, (ValueError,)) else EXIT_FAIL
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
