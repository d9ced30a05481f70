"""pytest plugin: real lamfs mounts in a subprocess (`lamfs mount`, background mode, as a user
runs it). The mount never runs inside the test process; teardown unmounts (lazily if a test left
files open) and a failed test prints the daemon's log."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest


def lamfs_cli(*args: str, env: dict | None = None, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "lamfs.cli", *args], env=env or os.environ.copy(),
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode:
        raise AssertionError(f"lamfs {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def is_mounted(path: Path) -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == str(path) for line in f)


@dataclass
class Mount:
    path: Path
    instance: str
    env: dict
    log_file: Path
    storage: str

    def start(self, *extra: str) -> "Mount":
        self.path.mkdir(parents=True, exist_ok=True)
        lamfs_cli("mount", str(self.path), "--instance", self.instance, "--log-file", str(self.log_file), *extra,
                  env=self.env)
        assert is_mounted(self.path)
        return self

    def stop(self) -> None:
        if not is_mounted(self.path):
            return
        proc = lamfs_cli("umount", str(self.path), env=self.env, check=False)
        if proc.returncode:
            subprocess.run(["fusermount3", "-uz", str(self.path)], check=False)
        for _ in range(200):  # the daemon exits after the unmount
            if not is_mounted(self.path):
                break
            time.sleep(0.05)

    def restart(self, *extra: str) -> "Mount":
        self.stop()
        time.sleep(0.2)
        return self.start(*extra)

    def restart_with_env(self, **env: str) -> "Mount":
        """Restart with extra variables in the daemon's environment only (test hooks such as
        LAMFS_CRASH_AT); later starts do not see them."""
        self.stop()
        saved = dict(self.env)
        self.env.update(env)
        try:
            return self.start()
        finally:
            self.env.clear()
            self.env.update(saved)

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else "(no log)"

    def run(self, cmd: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        """A shell command with the mount as working directory."""
        proc = subprocess.run(cmd, shell=True, cwd=self.path, env=self.env, capture_output=True, text=True,
                              timeout=kwargs.pop("timeout", 120), **kwargs)
        if check and proc.returncode:
            raise AssertionError(f"{cmd!r} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc


@pytest.fixture
def mount_factory(request, lamfs_home, tmp_path, monkeypatch):
    mounts: list[Mount] = []

    def make(storage: str, name: str = "mnt-test", mountpoint: Path | None = None, extra: tuple = (),
             catalog: str | None = None) -> Mount:
        """`extra`: more `lamfs mount` options, e.g. ("--entry-ttl", "0", "--attr-ttl", "0");
        `catalog`: a catalog URL (e.g. a shared PostgreSQL one) instead of the instance's own SQLite."""
        env = os.environ.copy()
        env["LAMFS_HOME"] = str(lamfs_home)
        lamfs_cli("init", "--storage", storage, "--name", name, *(("--catalog", catalog) if catalog else ()), env=env)
        m = Mount(path=mountpoint or tmp_path / f"mnt-{len(mounts)}", instance=name, env=env,
                  log_file=tmp_path / f"mount-{len(mounts)}.log", storage=storage)
        mounts.append(m)
        return m.start(*extra)

    yield make
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for m in mounts:
        m.stop()
        if failed:
            print(f"\n--- daemon log {m.log_file} ---\n{m.log()[-20000:]}")


@contextmanager
def module_mount(base: Path, storage: str, name: str, *extra: str):
    """A mount shared by a whole test module (for module-scoped fixtures: mounting costs ~1.5 s): its own
    LAMFS_HOME under `base`, `lamfs` in this process connected to it. Unmounts and restores the
    environment at the end, and prints the daemon's log tail if the mount had unexpected errors."""
    import lamfs

    patch = pytest.MonkeyPatch()
    patch.setenv("LAMFS_HOME", str(base / "lamfs-home"))
    lamfs.settings._disconnect()
    env = os.environ.copy()
    m = Mount(path=base / "mnt", instance=name, env=env, log_file=base / "mount.log", storage=storage)
    try:
        lamfs_cli("init", "--storage", storage, "--name", name, env=env)
        m.start(*extra)
        lamfs.setup.connect(name)
        yield m
    finally:
        m.stop()
        if "unexpected error" in m.log() or "Traceback" in m.log():
            print(f"\n--- daemon log {m.log_file} ---\n{m.log()[-20000:]}")
        lamfs.settings._disconnect()
        patch.undo()


@pytest.fixture
def mounted(root_kind, mount_factory, request, tmp_path):
    """A mounted instance on a local root or on the S3 server; `lamfs` in this process is connected to
    the same instance (for asserting catalog state)."""
    import lamfs

    if root_kind == "s3":
        storage = request.getfixturevalue("s3_bucket") + "/mnt"
    else:
        storage = str(tmp_path / "storage")
    m = mount_factory(storage)
    lamfs.setup.connect(m.instance)
    return m


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
