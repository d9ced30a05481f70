"""Running the mount: pyfuse3.init, the trio main loop, readiness notification (systemd's
NOTIFY_SOCKET), and a clean shutdown on SIGTERM/SIGINT or `fusermount3 -u` that lets in-flight
commits finish first."""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pyfuse3
import trio

from ..service.healing import heal
from .ops import LamfsOperations
from .writeback import WriteBack, recover

log = logging.getLogger("lamfs.fuse")


def sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) about our state; a no-op outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.encode(), address)
    except OSError as exc:
        log.warning("sd_notify failed: %s", exc)


STATS_INTERVAL_S = 2.0

#: The kernel's read-ahead for this mount (its backing_dev_info). The default, 128 KiB, makes a
#: sequential reader cost one FUSE request (a thread hop and a block-cache lookup here) per 128 KiB;
#: a larger window lets the kernel ask for up to 1 MiB at a time (max_pages) and keep several
#: requests in flight. Random readers are unaffected: the kernel grows the window only on
#: sequential access. Needs root (sysfs); without it the default stays, silently.
try:
    KERNEL_READAHEAD_KB = int(os.environ.get("LAMFS_KERNEL_READAHEAD_KB", "4096"))
except ValueError:
    KERNEL_READAHEAD_KB = 4096


def raise_kernel_readahead(mountpoint: str | Path, kb: int = KERNEL_READAHEAD_KB) -> None:
    try:
        # the device number from mountinfo: a stat() of our own mountpoint would wait for this very
        # process to answer it
        target = str(mountpoint).replace(" ", "\\040")
        with open("/proc/self/mountinfo") as f:
            devs = [line.split()[2] for line in f if line.split()[4] == target]
        if not devs:
            return
        knob = Path(f"/sys/class/bdi/{devs[-1]}/read_ahead_kb")
        if kb > int(knob.read_text()):
            knob.write_text(f"{kb}\n")
            log.info("kernel read-ahead of the mount set to %d KiB", kb)
    except (OSError, ValueError) as exc:
        log.debug("kernel read-ahead left as it is (%s)", exc)


def _heal(service, ops: LamfsOperations) -> None:
    try:
        ops.healing = heal(service).to_dict()
    except Exception as exc:  # noqa: BLE001 - the mount keeps serving; the next start tries again
        log.warning("healing failed (the next start tries again): %s", exc)
        ops.healing = {"summary": f"failed: {exc}"}


def write_stats(ops: LamfsOperations, path: Path) -> None:
    """Blocking: publish the block cache's counters for `lamfs cache stats`, and the disk margin for
    `lamfs status` (temp file + rename)."""
    stats = dict(ops.blocks.stats() if ops.blocks is not None else {}, pid=os.getpid(), updated_ns=time.time_ns())
    if ops.write_back is not None:
        stats["write_back"] = ops.write_back.stats()
    if ops.healing is not None:
        stats["healing"] = ops.healing
    if ops.space is not None:
        try:
            stats["space"] = ops.space.stats()
        except OSError as exc:  # a cache dir removed under us: the other counters still count
            log.debug("disk space not published: %s", exc)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(stats))
    os.replace(tmp, path)


#: Worker threads kept ready (see keep_threads_warm) and how often they are touched.
WARM_THREADS = 4
WARM_EVERY_S = 5.0


async def keep_threads_warm(ops: LamfsOperations) -> None:
    """Trio's worker threads exit after 10 s without work, and a new thread opens a new catalog
    connection on its first query: the first requests after a mount or a quiet spell paid for both
    (lookup + open of a file took ~8 ms instead of ~3). Touching a few threads every few seconds,
    together (a barrier, so they are distinct threads), keeps them and their connections alive."""
    barrier = threading.Barrier(WARM_THREADS)

    def touch() -> None:
        try:
            barrier.wait(timeout=1.0)
        except threading.BrokenBarrierError:
            barrier.reset()
        try:
            ops.service.catalog.dir_by_id(1)
        except Exception as exc:  # noqa: BLE001 - a busy/unreachable catalog shows up in real requests
            log.debug("keeping threads warm: %s", exc)

    while True:
        async with trio.open_nursery() as nursery:
            for _ in range(WARM_THREADS):
                nursery.start_soon(ops._run, touch)
        await trio.sleep(WARM_EVERY_S)


async def _serve(ops: LamfsOperations, stats_path: Path | None, mountpoint: Path | str | None = None) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(keep_threads_warm, ops)
        if mountpoint is not None:
            async def readahead():
                # only once the kernel's INIT has been answered: INIT caps the window at what the
                # kernel offered when it queued INIT (the 128 KiB default)
                for delay in (0.05, 0.25, 1.0):
                    await trio.sleep(delay)
                    await trio.to_thread.run_sync(raise_kernel_readahead, mountpoint)

            nursery.start_soon(readahead)
        if stats_path is not None:
            async def publish_stats():
                while True:
                    await trio.to_thread.run_sync(write_stats, ops, stats_path)
                    await trio.sleep(STATS_INTERVAL_S)

            async def clear_on_usr1():
                with trio.open_signal_receiver(signal.SIGUSR1) as signals:
                    async for _ in signals:
                        if ops.blocks is None:
                            continue
                        log.info("SIGUSR1: clearing the block cache (pinned blocks stay)")
                        await trio.to_thread.run_sync(ops.blocks.clear)
                        await trio.to_thread.run_sync(write_stats, ops, stats_path)

            nursery.start_soon(publish_stats)
            nursery.start_soon(clear_on_usr1)

        async def watch_signals():
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
                async for signum in signals:
                    log.info("received %s: finishing %d in-flight commits, then unmounting",
                             signal.Signals(signum).name, ops.inflight)
                    sd_notify("STOPPING=1")
                    while ops.inflight:
                        await trio.sleep(0.05)
                    pyfuse3.terminate()
                    return

        nursery.start_soon(watch_signals)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def run_mount(service, mountpoint: str | Path, *, block_cache, staging_dir: Path, read_only: bool = False,
              allow_other: bool = False, debug: bool = False, entry_ttl_s: float = 1.0, attr_ttl_s: float = 1.0,
              fsname: str = "lamfs", stats_path: Path | None = None, write_back_threads: int = 0,
              space=None) -> None:
    """Serve `mountpoint` until it is unmounted. write_back_threads > 0: write-back mode with that many
    uploader threads (fuse/writeback.py); 0: durable-on-close. space: the lamfs.space.SpaceGuard that
    keeps the disk margin (None: none is kept)."""
    staging_dir = Path(staging_dir)
    staging_dir.mkdir(parents=True, exist_ok=True)
    if not read_only:
        # files a write-back daemon accepted and did not commit before it died: commit them before
        # anyone can look (a no-op when there are none)
        outcome = recover(service, staging_dir)
        if outcome["recovered"] or outcome["failed"]:
            log.info("write-back recovery: %(recovered)d file(s) committed, %(failed)d kept for later", outcome)
    write_back = WriteBack(write_back_threads) if write_back_threads > 0 and not read_only else None
    ops = LamfsOperations(service, block_cache=block_cache, staging_dir=staging_dir, read_only=read_only,
                          entry_ttl_s=entry_ttl_s, attr_ttl_s=attr_ttl_s, write_back=write_back,
                          space=None if read_only else space)
    options = set(pyfuse3.default_options)
    options.add(f"fsname={fsname}")
    options.add("subtype=lamfs")
    options.add("noatime")
    if allow_other:
        options.add("allow_other")
    if read_only:
        options.add("ro")
    if debug:
        options.add("debug")
    # the first read then costs what every other one does; in the background, so that an unreachable
    # storage does not hold the mount up (its errors show in real requests)
    threading.Thread(target=service.storage.warm_up, name="lamfs-warm-up", daemon=True).start()
    pyfuse3.init(ops, str(mountpoint), options)
    log.info("mounted %s at %s%s", fsname, mountpoint,
             " (read-only)" if read_only else f" (write-back, {write_back.threads} uploaders)" if write_back else "")
    sd_notify("READY=1")
    if not read_only:
        # what a killed process left between two steps: nothing there keeps a file from being read,
        # so the mount serves at once and this runs beside it
        threading.Thread(target=_heal, args=(service, ops), name="lamfs-heal", daemon=True).start()
    try:
        trio.run(_serve, ops, stats_path, mountpoint)
    finally:
        # unmount even after a crash of the loop: a dead mount ("transport endpoint is not connected")
        # helps nobody
        ops.unmounted = True
        pyfuse3.close(unmount=True)
        if write_back is not None:
            if write_back.queued:
                log.info("unmounted %s; committing %d file(s) still queued for upload", mountpoint, write_back.queued)
            write_back.drain()
            write_back.stop()
        if stats_path is not None:
            stats_path.unlink(missing_ok=True)
        log.info("unmounted %s", mountpoint)
