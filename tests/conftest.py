"""Shared fixtures. The S3 server fixtures live in conftest_s3.py (a real moto server subprocess on
127.0.0.1), the PostgreSQL ones in conftest_pg.py (a real server on 127.0.0.1), the mount ones in
conftest_mount.py; everything lamfs writes goes under a per-test LAMFS_HOME."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

pytest_plugins = ["tests.conftest_s3", "tests.conftest_mount", "tests.conftest_pg"]

DATA = Path(__file__).parent / "data"


@pytest.fixture
def data_dir(tmp_path) -> Path:
    """A writable copy of the seed's test files (iris.csv, iris.data, new_iris.csv)."""
    target = tmp_path / "test-files"
    shutil.copytree(DATA, target)
    for p in target.iterdir():
        p.chmod(0o644)
    return target


@pytest.fixture
def lamfs_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "lamfs-home"
    monkeypatch.setenv("LAMFS_HOME", str(home))
    import lamfs

    lamfs.settings._disconnect()
    lamfs.settings.creation.artifact_use_virtual_keys = True
    yield home
    lamfs.settings._disconnect()
    lamfs.settings.creation.artifact_use_virtual_keys = True


@pytest.fixture(params=["local", "s3"])
def root_kind(request) -> str:
    return request.param


@pytest.fixture
def lf(root_kind, lamfs_home, tmp_path, request, caplog):
    """`import lamfs as lf`, connected to a fresh instance on a local root or the S3 server."""
    import lamfs

    caplog.set_level(logging.INFO, logger="lamfs")
    if root_kind == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        storage = f"{bucket}/test-add-replace-cache"
    else:
        storage = str(tmp_path / "storage" / "test-add-replace-cache")
    lamfs.setup.init(storage=storage)
    return lamfs
