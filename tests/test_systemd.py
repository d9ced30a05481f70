"""The systemd units and the fstab helper.

- `systemd-analyze verify` accepts both unit templates (instantiated as lamfs@demo.service), and
  does catch a broken unit (so a pass means something).
- The daemon is started the way the user unit's ExecStartPre/ExecStart lines do (parsed from the unit
  file, specifiers and $VARIABLES substituted as systemd does, NOTIFY_SOCKET and the journal stream
  set up as systemd would) and stopped the way ExecStop/ExecStopPost do, including after a kill -9.
- `mount.lamfs` mounts with fstab-style arguments.
"""
from __future__ import annotations

import errno
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from .conftest import DATA
from .conftest_mount import is_mounted, lamfs_cli

UNITS = Path(__file__).resolve().parent.parent / "systemd"
USER_UNIT = UNITS / "user" / "lamfs@.service"
SYSTEM_UNIT = UNITS / "system" / "lamfs@.service"


# -- reading units the way systemd does (enough of it for these files) -----------------------------------------

def parse_unit(path: Path) -> dict[str, list[str]]:
    """{"Section.Key": [values in order]}; comments and continuation lines handled."""
    out: dict[str, list[str]] = {}
    section = None
    pending = ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return out


def expand_specifiers(text: str, instance: str, home: Path) -> str:
    values = {"i": instance, "I": instance, "h": str(home), "n": f"lamfs@{instance}.service", "p": "lamfs",
              "u": os.environ.get("USER", "root"), "U": str(os.getuid()), "%": "%"}
    return re.sub(r"%(.)", lambda m: values[m.group(1)], text)


def command(line: str, instance: str, home: Path, env: dict) -> tuple[list[str], bool]:
    """An Exec*= line → (argv, failure ignored). `$VAR` as a word is split on whitespace (zero or more
    words), `${VAR}` is replaced in place, as systemd.service(5) says."""
    ignore = line.startswith("-")
    line = expand_specifiers(line.lstrip("-@:+!"), instance, home)
    argv: list[str] = []
    for word in shlex.split(line):
        m = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        if m:
            argv += env.get(m.group(1), "").split()
        else:
            argv.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: env.get(m.group(1), ""), word))
    return argv, ignore


def unit_environment(unit: dict, instance: str, home: Path) -> dict[str, str]:
    env = {}
    for assignment in unit.get("Service.Environment", []):
        for item in shlex.split(expand_specifiers(assignment, instance, home)):
            key, _, value = item.partition("=")
            env[key] = value
    return env


# -- systemd-analyze verify ----------------------------------------------------------------------------------

def verify(unit_file: Path, tmp_path: Path, *, user: bool) -> subprocess.CompletedProcess:
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze is missing: scripts/setup.sh installs Debian's systemd package"
    units = tmp_path / f"units-{uuid.uuid4().hex[:6]}"
    units.mkdir()
    shutil.copy(unit_file, units / "lamfs@.service")
    runtime = tmp_path / "xdg-runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime), SYSTEMD_LOG_LEVEL="notice")
    args = [tool, "verify"] + (["--user"] if user else []) + [str(units / "lamfs@demo.service")]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("unit_file, user", [(USER_UNIT, True), (SYSTEM_UNIT, False)], ids=["user", "system"])
def test_units_pass_systemd_analyze_verify(unit_file, user, tmp_path):
    r = verify(unit_file, tmp_path, user=user)
    assert r.returncode == 0 and r.stderr.strip() == "" and r.stdout.strip() == "", (r.stdout, r.stderr)


def test_verify_does_catch_broken_units(tmp_path):
    text = USER_UNIT.read_text()
    typo = tmp_path / "typo" / "lamfs@.service"
    typo.parent.mkdir()
    typo.write_text(text.replace("Type=notify", "Type=notfy"))
    r = verify(typo, tmp_path, user=True)
    assert "Failed to parse service type" in r.stderr
    missing = tmp_path / "missing" / "lamfs@.service"
    missing.parent.mkdir()
    missing.write_text(text.replace("ExecStart=/usr/bin/env", "ExecStart=/usr/bin/no-such-env"))
    r = verify(missing, tmp_path, user=True)
    assert r.returncode != 0 and "no-such-env" in r.stderr


@pytest.mark.parametrize("unit_file", [USER_UNIT, SYSTEM_UNIT], ids=["user", "system"])
def test_units_have_readiness_restart_and_clean_unmount(unit_file):
    unit = parse_unit(unit_file)
    mountpoint = "%h/lamfs/%i" if unit_file == USER_UNIT else "/mnt/lamfs/%i"
    assert unit["Service.Type"] == ["notify"] and unit["Service.Restart"] == ["on-failure"]
    [start] = unit["Service.ExecStart"]
    assert "lamfs mount --foreground --instance %i" in start and start.endswith(mountpoint)
    assert unit["Service.ExecStop"] == [f"/usr/bin/env lamfs umount {mountpoint}"]
    assert unit["Service.ExecStopPost"] == [f"-/usr/bin/env fusermount3 -uz {mountpoint}"]
    assert f"-/usr/bin/env fusermount3 -uz {mountpoint}" in unit["Service.ExecStartPre"]
    assert not any("AWS_SECRET" in v or "password" in v.lower() for v in unit.get("Service.Environment", []))


# -- running the daemon the way the unit does ------------------------------------------------------------------

class UnitRunner:
    """Runs the Exec* lines of a unit as systemd would for one instance."""

    def __init__(self, unit_file: Path, instance: str, home: Path, env: dict, journal: Path, notify: socket.socket):
        self.unit = parse_unit(unit_file)
        self.instance, self.home, self.env = instance, home, env
        self.journal = journal
        self.notify = notify
        self.proc: subprocess.Popen | None = None

    def _run(self, key: str) -> None:
        for line in self.unit.get(f"Service.{key}", []):
            argv, ignore = command(line, self.instance, self.home, self.env)
            r = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=120)
            assert ignore or r.returncode == 0, f"{key}={line} failed: {r.stdout}{r.stderr}"

    def start(self) -> subprocess.Popen:
        self._run("ExecStartPre")
        [line] = self.unit["Service.ExecStart"]
        argv, _ = command(line, self.instance, self.home, self.env)
        with open(self.journal, "ab") as journal:
            st = os.fstat(journal.fileno())  # systemd tells the service which fd is the journal
            env = dict(self.env, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
            self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=journal, stderr=journal)
        self.notify.settimeout(60)
        message = self.notify.recv(4096)  # Type=notify: started = READY=1 received
        assert b"READY=1" in message.split(b"\n"), message
        return self.proc

    def stop(self) -> int:
        self._run("ExecStop")
        rc = self.proc.wait(timeout=60)
        self._run("ExecStopPost")
        return rc

    def crashed(self) -> None:
        """After the main process died, systemd runs ExecStopPost."""
        self._run("ExecStopPost")


@pytest.mark.mount
def test_daemon_started_by_execstart_stopped_by_execstop(lamfs_home, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    instance = "demo"
    unit = parse_unit(USER_UNIT)
    env = dict(os.environ, LAMFS_HOME=str(lamfs_home), HOME=str(home), INVOCATION_ID=uuid.uuid4().hex)
    env.update(unit_environment(unit, instance, home))
    # the documented drop-in for a virtualenv install: its bin directory first on PATH
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    notify_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    env["NOTIFY_SOCKET"] = str(notify_path)
    lamfs_cli("init", "--storage", str(tmp_path / "root"), "--name", instance, env=env)
    mountpoint = home / "lamfs" / instance
    journal = tmp_path / "journal.log"
    runner = UnitRunner(USER_UNIT, instance, home, env, journal, notify)
    try:
        runner.start()
        assert is_mounted(mountpoint)  # ExecStartPre made the directory; the mount is up at READY=1
        (mountpoint / "hello.txt").write_text("hello")
        (mountpoint / "iris.csv").write_bytes((DATA / "iris.csv").read_bytes())
        assert runner.stop() == 0  # a clean stop: systemd would not restart it
        assert not is_mounted(mountpoint)

        # journald-friendly log: priority prefixes, no timestamps, one line per event with its key
        log = journal.read_text()
        lines = log.splitlines()
        assert lines and all(re.match(r"<[0-7]>(DEBUG|INFO|WARNING|ERROR|CRITICAL) ", line) for line in lines), log
        assert not re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d", log)
        assert any(line.startswith("<6>INFO lamfs: saved hello.txt (") for line in lines), log
        assert any(line.startswith("<6>INFO lamfs.fuse: mounted lamfs:demo at ") for line in lines), log

        # a crash (kill -9) leaves a dead mount; a restart (ExecStartPre) cleans it up and mounts again
        proc = runner.start()
        proc.kill()
        proc.wait(timeout=30)
        with pytest.raises(OSError) as dead:
            os.listdir(mountpoint)
        assert dead.value.errno == errno.ENOTCONN
        proc = runner.start()  # Restart=on-failure
        assert (mountpoint / "hello.txt").read_text() == "hello"
        assert (mountpoint / "iris.csv").read_bytes() == (DATA / "iris.csv").read_bytes()
        # killed again, then stopped by systemd: ExecStopPost detaches the dead mount
        proc.kill()
        proc.wait(timeout=30)
        runner.crashed()
        assert not is_mounted(mountpoint)
        proc = runner.start()
        # `lamfs status` sees it as systemd left it: healthy, logging to the journal
        status = lamfs_cli("status", "--instance", instance, env=env).stdout
        assert f"{mountpoint}  ok  (rw; pid {proc.pid}" in status and "log journal" in status
        assert runner.stop() == 0 and not is_mounted(mountpoint)
    finally:
        if runner.proc is not None and runner.proc.poll() is None:
            runner.proc.kill()
        if is_mounted(mountpoint):
            subprocess.run(["fusermount3", "-uz", str(mountpoint)], check=False)
        notify.close()


# -- mount.lamfs (fstab) --------------------------------------------------------------------------------------

def mount_helper(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lamfs.mount_helper", *args], env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.mount
def test_mount_helper_takes_fstab_arguments(lamfs_home, tmp_path):
    with_home = dict(os.environ, LAMFS_HOME=str(lamfs_home))
    lamfs_cli("init", "--storage", str(tmp_path / "root"), "--name", "fstab", env=with_home)
    lamfs_cli("add", str(DATA / "iris.csv"), env=with_home)
    env = {k: v for k, v in os.environ.items() if k != "LAMFS_HOME"}  # mount(8) runs us with a bare environment
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    # what mount(8) runs for: fstab  /mnt  lamfs  noauto,_netdev,...,home=...  0 0
    opts = f"rw,noauto,_netdev,nofail,x-systemd.automount,ro,cache_size=64M,entry_ttl=0.5,home={lamfs_home}"
    r = mount_helper("fstab", str(mnt), "-n", "-o", opts, env=env)
    try:
        assert r.returncode == 0, r.stderr
        [line] = [x for x in open("/proc/self/mounts") if x.split()[1] == str(mnt)]
        fsname, _, fstype, options = line.split()[:4]
        assert fsname == "lamfs:fstab" and fstype == "fuse.lamfs" and "ro" in options.split(",")
        assert (mnt / "iris.csv").read_bytes() == (DATA / "iris.csv").read_bytes()
        with pytest.raises(OSError) as exc:
            (mnt / "new.txt").write_text("x")
        assert exc.value.errno == errno.EROFS
    finally:
        lamfs_cli("umount", str(mnt), env=with_home, check=False)
    assert not is_mounted(mnt)

    r = mount_helper("fstab", str(mnt), "-o", f"home={lamfs_home},bogus=1", env=env)
    assert r.returncode == 1 and "unknown mount option 'bogus=1'" in r.stderr and not is_mounted(mnt)
    r = mount_helper("fstab", str(mnt), "-f", "-o", f"home={lamfs_home}", env=env)  # -f: fake
    assert r.returncode == 0 and not is_mounted(mnt)
    r = mount_helper("nope", str(mnt), "-o", f"home={lamfs_home}", env=env)
    assert r.returncode == 1 and "no instance named 'nope'" in r.stderr and "Traceback" not in r.stderr
    r = mount_helper("fstab", env=env)
    assert r.returncode == 1 and "usage: mount.lamfs" in r.stderr
    r = mount_helper("fstab", str(tmp_path / "absent"), "-o", f"home={lamfs_home}", env=env)
    assert r.returncode == 1 and "does not exist" in r.stderr
    # -s (sloppy): unknown options are ignored
    r = mount_helper("fstab", str(mnt), "-s", "-o", f"home={lamfs_home},bogus=1", env=env)
    try:
        assert r.returncode == 0, r.stderr
        assert is_mounted(mnt)
    finally:
        lamfs_cli("umount", str(mnt), env=with_home, check=False)
