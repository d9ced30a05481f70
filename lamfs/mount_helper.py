"""`mount.lamfs`: the helper mount(8) runs for /etc/fstab entries of type `lamfs`.

    # /etc/fstab
    datasets  /mnt/datasets  lamfs  _netdev,nofail,home=/var/lib/lamfs,cache_size=20G,allow_other  0 0

mount(8) calls `mount.lamfs SOURCE DIR [-sfnv] [-o OPTIONS]`. SOURCE is an instance name, or a
storage root (`s3://bucket/prefix` or an absolute directory) for the one-step form. OPTIONS:

    ro                  --read-only               allow_other     --allow-other
    cache_size=SIZE     --cache-size SIZE         cache_dir=DIR   --cache-dir DIR
    entry_ttl=S         --entry-ttl S             attr_ttl=S      --attr-ttl S
    log_file=PATH       --log-file PATH           log_level=L     --log-level L
    write_back          --write-back              write_back_threads=N  --write-back-threads N
    home=DIR            LAMFS_HOME=DIR (where the instance configs live; root's default otherwise)

Generic mount options (rw, defaults, auto/noauto, user/users/nouser, _netdev, nofail, nosuid,
nodev, noatime, x-systemd.*, comment=…) are accepted and left to mount(8)/systemd. Anything else
is an error (or ignored with -s). The mount daemon is started in the background, as `lamfs mount`
does, and this helper returns once the mount is ready.

Exit codes follow mount(8): 0 mounted, 1 bad invocation or options, 32 mount failure.

Imports: the standard library and lamfs.cli (top layer).
"""
from __future__ import annotations

import os
import sys

USAGE = "usage: mount.lamfs INSTANCE|STORAGE DIR [-sfnv] [-o option[,option...]]"

EXIT_OK, EXIT_USAGE, EXIT_MOUNT_FAILED = 0, 1, 32

FLAG_OPTIONS = {"ro": "--read-only", "allow_other": "--allow-other", "debug": "--debug", "write_back": "--write-back"}
VALUE_OPTIONS = {"cache_size": "--cache-size", "cache_dir": "--cache-dir", "entry_ttl": "--entry-ttl",
                 "attr_ttl": "--attr-ttl", "log_file": "--log-file", "log_level": "--log-level",
                 "write_back_threads": "--write-back-threads"}
GENERIC = {"rw", "defaults", "auto", "noauto", "user", "users", "nouser", "owner", "group", "_netdev", "nofail",
           "exec", "noexec", "suid", "nosuid", "dev", "nodev", "async", "sync", "atime", "noatime", "relatime",
           "norelatime", "strictatime", "nodiratime", "diratime", "lazytime", "nolazytime", "loud", "silent",
           "dirsync", "nomand", "mand"}
GENERIC_PREFIXES = ("x-", "comment=", "helper=")


class UsageError(Exception):
    pass


def parse(argv: list[str]) -> tuple[str, str, list[str], dict, bool]:
    """→ (source, mountpoint, option list, environment additions, fake)."""
    positional, options, sloppy, fake = [], [], False, False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "-o":
            if i + 1 == len(argv):
                raise UsageError("-o needs a value")
            options += [o for o in argv[i + 1].split(",") if o]
            i += 2
            continue
        if arg.startswith("-o") and len(arg) > 2:
            options += [o for o in arg[2:].split(",") if o]
        elif arg in ("-N", "-t"):  # namespace / type: nothing for us to do
            i += 2
            continue
        elif arg.startswith("-") and len(arg) > 1 and set(arg[1:]) <= set("sfnvh"):
            if "h" in arg:
                raise UsageError(USAGE)
            sloppy = sloppy or "s" in arg
            fake = fake or "f" in arg
        elif arg.startswith("-"):
            raise UsageError(f"unknown flag {arg!r}")
        else:
            positional.append(arg)
        i += 1
    if len(positional) != 2:
        raise UsageError(USAGE)
    source, mountpoint = positional
    cli_args: list[str] = []
    env: dict = {}
    for opt in options:
        name, eq, value = opt.partition("=")
        if opt in GENERIC or opt.startswith(GENERIC_PREFIXES):
            continue
        if name in FLAG_OPTIONS and not eq:
            cli_args.append(FLAG_OPTIONS[name])
        elif name in VALUE_OPTIONS and eq and value:
            cli_args += [VALUE_OPTIONS[name], value]
        elif name == "home" and eq and value:
            env["LAMFS_HOME"] = value
        elif not sloppy:
            raise UsageError(f"unknown mount option {opt!r} (see `pydoc lamfs.mount_helper`)")
    if "://" in source or source.startswith("/"):
        cli_args = ["--storage", source] + cli_args
    else:
        cli_args = ["--instance", source] + cli_args
    return source, mountpoint, cli_args, env, fake


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        _source, mountpoint, cli_args, env, fake = parse(argv)
    except UsageError as exc:
        print(f"mount.lamfs: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if fake:
        return EXIT_OK
    os.environ.update(env)
    from . import cli

    code = cli.main(["mount", mountpoint, *cli_args])
    return EXIT_OK if code == 0 else EXIT_USAGE if code == cli.EXIT_USAGE else EXIT_MOUNT_FAILED


if __name__ == "__main__":
    sys.exit(main())
