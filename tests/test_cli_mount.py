"""Mount lifecycle the way users and systemd run it: one-step `--storage`, `--foreground` with
SIGTERM, `lamfs umount`, clear CLI errors."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from .conftest import DATA
from .conftest_mount import is_mounted, lamfs_cli

pytestmark = pytest.mark.mount


def wait_for(cond, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


def test_one_step_storage_mount_and_umount(lamfs_home, tmp_path):
    env = dict(os.environ, LAMFS_HOME=str(lamfs_home))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    out = lamfs_cli("mount", str(mnt), "--storage", str(tmp_path / "root"), env=env).stdout
    assert "mounted instance 'root'" in out and "log:" in out
    try:
        subprocess.run(["cp", str(DATA / "iris.csv"), str(mnt / "iris.csv")], check=True)
        again = lamfs_cli("mount", str(mnt), "--storage", str(tmp_path / "root"), env=env, check=False)
        assert again.returncode == 1 and "already a mount point" in again.stderr
    finally:
        lamfs_cli("umount", str(mnt), env=env)
    assert not is_mounted(mnt)
    listed = lamfs_cli("instances", "--json", env=env).stdout
    assert '"name": "root"' in listed
    # the same root again reuses the instance and its data
    lamfs_cli("mount", str(mnt), "--storage", str(tmp_path / "root"), env=env)
    try:
        assert (mnt / "iris.csv").read_bytes() == (DATA / "iris.csv").read_bytes()
    finally:
        lamfs_cli("umount", str(mnt), env=env)


def test_foreground_sigterm_unmounts_cleanly(lamfs_home, tmp_path):
    env = dict(os.environ, LAMFS_HOME=str(lamfs_home))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "lamfs.cli", "mount", str(mnt), "--foreground"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_for(lambda: is_mounted(mnt)), "mount did not come up"
        (mnt / "a.txt").write_text("hello")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert not is_mounted(mnt)
    finally:
        if proc.poll() is None:
            proc.kill()
            subprocess.run(["fusermount3", "-uz", str(mnt)], check=False)
    log = proc.stdout.read()
    assert "unmounted" in log
    # the embedded default instance kept the file
    lamfs_cli("mount", str(mnt), env=env)
    try:
        assert (mnt / "a.txt").read_text() == "hello"
    finally:
        lamfs_cli("umount", str(mnt), env=env)


def test_cli_errors_are_plain(lamfs_home, tmp_path):
    env = dict(os.environ, LAMFS_HOME=str(lamfs_home))
    r = lamfs_cli("mount", str(tmp_path / "missing"), env=env, check=False)
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    r = lamfs_cli("mount", str(tmp_path), "--instance", "nope", env=env, check=False)
    assert r.returncode != 0 and "no instance named 'nope'" in r.stderr and "Traceback" not in r.stderr
    r = lamfs_cli("umount", str(tmp_path), env=env, check=False)
    assert r.returncode == 1 and "not mounted" in r.stderr
    r = lamfs_cli("init", "--storage", "ftp://x", env=env, check=False)
    assert r.returncode != 0 and "unsupported storage" in r.stderr
