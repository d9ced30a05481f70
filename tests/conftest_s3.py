"""pytest plugin: a real S3 server (moto, subprocess, 127.0.0.1) and storage fixtures.

Load it from tests/conftest.py with `pytest_plugins = ["tests.conftest_s3"]`.

Fixtures:
    s3_server   (session)  the running tests/s3server.py: .endpoint_url, .stats(), .reset_stats(),
                           .fault(**spec), .faults(), .clear_faults(), .seed(), .reset(),
                           .stop(), .start()
    s3_env      (function) sets every AWS_* variable boto3 reads (and drops proxies); yields the dict
    s3_client   (function) a plain boto3 client on the server, for inspecting what tests stored
    s3_bucket   (function) moto wiped, bucket "lamfs-test" created, faults cleared, stats zeroed;
                           yields "s3://lamfs-test"
    storage     (function, params local|s3) an opened Storage: tmp dir, or s3://lamfs-test/some-prefix
    make_storage(function) factory make_storage(kind, **options) → Storage, closed at teardown

Imports: pytest, the standard library, tests.s3server (light), lamfs.storage; boto3 only inside
the s3_client fixture (tests may use boto3 directly to look behind lamfs's back).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from lamfs.storage import Storage, open_storage
from tests.s3server import S3ServerProcess

BUCKET = "lamfs-test"
S3_TEST_PREFIX = "some-prefix"

#: Options the S3 storage fixtures use: quick failure in tests that provoke outages, but enough
#: attempts that a transient fault is retried.
S3_TEST_OPTIONS: dict[str, Any] = {"max_attempts": 3, "connect_timeout_s": 5.0, "read_timeout_s": 30.0}


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3ServerProcess]:
    log_path = tmp_path_factory.mktemp("s3server") / "s3server.log"
    server = S3ServerProcess(log_path=str(log_path))
    server.start()
    try:
        yield server
    finally:
        server.terminate()


@pytest.fixture
def s3_env(
    s3_server: S3ServerProcess, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """Point the whole boto3 configuration chain at the test server and nothing else.

    Every AWS_* variable already in the environment is removed first (AWS_CA_BUNDLE,
    AWS_PROFILE, AWS_SESSION_TOKEN, AWS_ENDPOINT_URL_S3, ...), config/credentials files are empty
    ones, IMDS is disabled, proxies are dropped. The yielded dict holds the variables set; the
    process environment is already patched, so `os.environ.copy()` is a ready subprocess env.
    """
    for name in list(os.environ):
        if name.startswith("AWS_") or name.lower() in ("http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.delenv(name)
    aws_dir = tmp_path_factory.mktemp("aws-empty")
    config_file = aws_dir / "config"
    credentials_file = aws_dir / "credentials"
    config_file.write_text("")
    credentials_file.write_text("")
    env = {
        "AWS_ENDPOINT_URL": s3_server.endpoint_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(config_file),
        "AWS_SHARED_CREDENTIALS_FILE": str(credentials_file),
        # Never ask 169.254.169.254 for credentials or region.
        "AWS_EC2_METADATA_DISABLED": "true",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    yield env


@pytest.fixture
def s3_client(s3_server: S3ServerProcess, s3_env: dict[str, str]) -> Iterator[Any]:
    import boto3
    from botocore.config import Config

    client = boto3.session.Session().client(
        "s3", endpoint_url=s3_server.endpoint_url, config=Config(s3={"addressing_style": "path"})
    )
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def s3_bucket(s3_server: S3ServerProcess, s3_client: Any) -> Iterator[str]:
    s3_server.start()  # no-op when listening; recovers from a test that stopped it and failed
    s3_server.clear_faults()
    s3_server.reset()
    s3_client.create_bucket(Bucket=BUCKET)
    s3_server.reset_stats()
    try:
        yield f"s3://{BUCKET}"
    finally:
        s3_server.clear_faults()


@pytest.fixture
def make_storage(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Callable[..., Storage]]:
    """make_storage("local" | "s3", **options): local roots live under tmp_path/storage-root,
    S3 roots at s3://lamfs-test/some-prefix (the s3_bucket fixture is set up on first use)."""
    opened: list[Storage] = []

    def make(kind: str, **options: Any) -> Storage:
        if kind == "local":
            st = open_storage(tmp_path / "storage-root", **options)
        elif kind == "s3":
            bucket_url = request.getfixturevalue("s3_bucket")
            st = open_storage(f"{bucket_url}/{S3_TEST_PREFIX}", **{**S3_TEST_OPTIONS, **options})
        else:
            raise ValueError(f"unknown storage kind {kind!r}")
        opened.append(st)
        return st

    try:
        yield make
    finally:
        for st in opened:
            st.close()


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def storage(request: pytest.FixtureRequest, make_storage: Callable[..., Storage]) -> Storage:
    return make_storage(request.param)
