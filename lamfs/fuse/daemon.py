"""Running the mount: pyfuse3.init, the trio main loop, readiness notification (systemd's
NOTIFY_SOCKET), and a clean shutdown on SIGTERM/SIGINT or `fusermount3 -u` that lets in-flight
commits finish first."""
from __future__ import annotations

import logging
import os
import signal
import socket
from pathlib import Path

import pyfuse3
import trio

from .ops import LamfsOperations

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


async def _serve(ops: LamfsOperations) -> None:
    async with trio.open_nursery() as nursery:
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
              fsname: str = "lamfs") -> None:
    ops = LamfsOperations(service, block_cache=block_cache, staging_dir=staging_dir, read_only=read_only,
                          entry_ttl_s=entry_ttl_s, attr_ttl_s=attr_ttl_s)
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
    pyfuse3.init(ops, str(mountpoint), options)
    log.info("mounted %s at %s%s", fsname, mountpoint, " (read-only)" if read_only else "")
    sd_notify("READY=1")
    try:
        trio.run(_serve, ops)
    finally:
        # unmount even after a crash of the loop: a dead mount ("transport endpoint is not connected")
        # helps nobody
        pyfuse3.close(unmount=True)
        log.info("unmounted %s", mountpoint)
