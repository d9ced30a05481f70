"""Storage contract tests: the same behaviour from LocalStorage and S3Storage (moto over HTTP on
127.0.0.1, see tests/s3server.py), plus S3-only tests of multipart paths, retries, outages and
O(range) reads, and FaultyStorage.

Imports: pytest, the standard library, lamfs.storage, lamfs.errors, the fixtures of
tests/conftest_s3.py (boto3 only through the s3_client fixture, to look behind lamfs's back).
"""
from __future__ import annotations

import os
import socket
import stat
import threading
import time
from pathlib import Path

import pytest

from lamfs.errors import (
    AccessDenied,
    ContentChanged,
    InvalidKey,
    NotFound,
    StorageError,
    StorageUnavailable,
)
from lamfs.storage import TEMP_PREFIX, FaultyStorage, LocalStorage, ObjectInfo, Storage, open_storage
from tests.conftest_s3 import BUCKET, S3_TEST_PREFIX

MiB = 1024 * 1024

SPECIAL_KEYS = [
    "a%b.txt",
    "a_b.txt",
    "aXb.txt",
    "a\\b.txt",
    "a%25b.txt",
    "plus+sign.txt",
    "q?x#y&z=1.txt",
    "sp ace/f i le.txt",
    "ünï/cödé ✓.txt",
    "Mixed/Case.TXT",
    "mixed/case.txt",
    "100%/x",
    "dir/sub/deep.txt",
    "dir.txt",
    "dir-x/y",
    "tilde~/semi;colon'quote\".txt",
]


def keys_of(infos) -> list[str]:
    return [i.key for i in infos]


def temp_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if p.name.startswith(TEMP_PREFIX))


def write_random(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


# =================================================================================================
# Contract: both backends
# =================================================================================================


def test_put_head_get_range(storage: Storage):
    data = bytes(range(256)) * 40  # 10240 bytes
    info = storage.put_bytes(data, "dir/obj.bin")
    assert isinstance(info, ObjectInfo)
    assert info.key == "dir/obj.bin" and info.size == len(data) and info.etag
    assert info.mtime_ns > 0
    head = storage.head("dir/obj.bin")
    assert (head.size, head.etag) == (info.size, info.etag)
    assert storage.exists("dir/obj.bin")

    assert storage.get_range("dir/obj.bin", 0, len(data)) == data
    assert storage.get_range("dir/obj.bin", 100, 50) == data[100:150]
    assert storage.get_range("dir/obj.bin", 10000, 1000) == data[10000:]  # shorter at EOF
    assert storage.get_range("dir/obj.bin", len(data), 10) == b""  # at EOF
    assert storage.get_range("dir/obj.bin", len(data) + 5, 10) == b""  # past EOF
    assert storage.get_range("dir/obj.bin", 5, 0) == b""
    assert storage.get_range("dir/obj.bin", 100, 50, etag=info.etag) == data[100:150]
    with pytest.raises(ValueError):
        storage.get_range("dir/obj.bin", -1, 5)


def test_empty_object(storage: Storage, tmp_path: Path):
    info = storage.put_bytes(b"", "empty")
    assert info.size == 0
    assert storage.get_range("empty", 0, 10) == b""
    assert storage.get_range("empty", 0, 10, etag=info.etag) == b""
    dest = tmp_path / "dl" / "empty"
    assert storage.download_file("empty", dest).size == 0
    assert dest.read_bytes() == b""


def test_get_range_etag_mismatch(storage: Storage):
    old = storage.put_bytes(b"version one", "k")
    new = storage.put_bytes(b"version two!", "k")
    assert old.etag != new.etag
    with pytest.raises(ContentChanged):
        storage.get_range("k", 0, 5, etag=old.etag)
    assert storage.get_range("k", 0, 7, etag=new.etag) == b"version"
    # If-Match is checked before the range: a stale etag wins over "past EOF".
    with pytest.raises(ContentChanged):
        storage.get_range("k", 1000, 5, etag=old.etag)


def test_not_found(storage: Storage, tmp_path: Path):
    assert not storage.exists("nope/missing")
    with pytest.raises(NotFound):
        storage.head("nope/missing")
    with pytest.raises(NotFound):
        storage.get_range("nope/missing", 0, 10)
    with pytest.raises(NotFound):
        storage.copy("nope/missing", "other")
    dest = tmp_path / "dl" / "missing"
    with pytest.raises(NotFound):
        storage.download_file("nope/missing", dest)
    assert not dest.exists()
    assert not dest.parent.exists() or list(dest.parent.iterdir()) == []
    # NotFound is also a FileNotFoundError, for callers that think in OS terms.
    with pytest.raises(FileNotFoundError):
        storage.head("nope/missing")


def test_download_file(storage: Storage, tmp_path: Path):
    src = tmp_path / "src.bin"
    data = write_random(src, 300_000)
    put = storage.put_file(src, "d/x.bin")
    dest_dir = tmp_path / "cache"
    dest = dest_dir / "x.bin"
    seen: list[int] = []
    got = storage.download_file("d/x.bin", dest, progress=seen.append)
    assert dest.read_bytes() == data
    assert (got.size, got.etag) == (put.size, put.etag)
    assert seen and seen[-1] == len(data)
    assert temp_files(dest_dir) == []

    # Wrong etag: ContentChanged, and an existing dest is left untouched.
    dest.write_bytes(b"keep me")
    with pytest.raises(ContentChanged):
        storage.download_file("d/x.bin", dest, etag="0123456789abcdef")
    assert dest.read_bytes() == b"keep me"
    assert temp_files(dest_dir) == []
    # Right etag: replaced.
    storage.download_file("d/x.bin", dest, etag=put.etag)
    assert dest.read_bytes() == data


def test_put_file_replaces_and_reports_progress(storage: Storage, tmp_path: Path):
    src = tmp_path / "a.bin"
    data = write_random(src, 3 * MiB + 17)
    seen: list[int] = []
    info = storage.put_file(src, "p/a.bin", progress=seen.append)
    assert info.size == len(data)
    assert seen[-1] == len(data)
    assert storage.get_range("p/a.bin", 0, len(data)) == data
    (tmp_path / "b.bin").write_bytes(b"short now")
    info2 = storage.put_file(tmp_path / "b.bin", "p/a.bin")
    assert info2.size == 9 and info2.etag != info.etag
    assert storage.get_range("p/a.bin", 0, 100) == b"short now"
    with pytest.raises(NotFound):
        storage.put_file(tmp_path / "no-such-source", "p/c.bin")
    assert not storage.exists("p/c.bin")


@pytest.mark.parametrize("kind", ["local", pytest.param("s3", marks=pytest.mark.s3)])
def test_put_file_large_multipart(kind, make_storage, tmp_path: Path, request):
    st = make_storage(kind, multipart_threshold_bytes=5 * MiB, multipart_chunksize_bytes=5 * MiB) if kind == "s3" else make_storage(kind)
    src = tmp_path / "big.bin"
    data = write_random(src, 20 * MiB)
    info = st.put_file(src, "big/one.bin")
    assert info.size == len(data)
    if kind == "s3":
        stats = request.getfixturevalue("s3_server").stats()
        assert stats["by_op"].get("CreateMultipartUpload") == 1
        assert any(r["method"] == "POST" and "uploads" in r["query"] for r in stats["recent"])
        assert stats["by_op"].get("UploadPart") == 4
        assert stats["by_op"].get("CompleteMultipartUpload") == 1
        assert "-4" in info.etag  # multipart etag: md5-of-md5s "-" part count
        assert stats["bytes_in"] >= len(data)
        request.getfixturevalue("s3_server").reset_stats()
    dest = tmp_path / "out" / "big.bin"
    got = st.download_file("big/one.bin", dest)
    assert got.etag == info.etag
    assert dest.read_bytes() == data
    assert st.get_range("big/one.bin", 7 * MiB - 3, 10, etag=info.etag) == data[7 * MiB - 3 : 7 * MiB + 7]
    if kind == "s3":
        # One HEAD (ours), then 4 ranged GETs pinned to the etag, served in O(range).
        stats = request.getfixturevalue("s3_server").stats()
        assert stats["by_op"] == {"HeadObject": 1, "GetObject": 5}
        assert stats["ranged_fast_path"] == 5
        assert len(data) <= stats["bytes_out"] < len(data) + 64 * 1024
    else:
        assert temp_files(Path(st.root)) == []


@pytest.mark.parametrize("kind", ["local", pytest.param("s3", marks=pytest.mark.s3)])
def test_failed_put_leaves_old_object(kind, make_storage, tmp_path: Path):
    """An exception in the middle of an upload (here: from the progress callback) leaves the old
    object in place, no partial object and no temp file."""
    # (botocore retries a request whose body reader raised; one attempt keeps this test quick)
    storage = make_storage(kind, max_attempts=1) if kind == "s3" else make_storage(kind)
    storage.put_bytes(b"old content", "keep/me")
    src = tmp_path / "new.bin"
    write_random(src, 2 * MiB)

    def boom(done: int) -> None:
        if done > 0:
            raise RuntimeError("caller gave up")

    with pytest.raises(RuntimeError, match="caller gave up"):
        storage.put_file(src, "keep/me", progress=boom)
    assert storage.get_range("keep/me", 0, 100) == b"old content"
    with pytest.raises(RuntimeError):
        storage.put_file(src, "fresh/key", progress=boom)
    assert not storage.exists("fresh/key")
    if storage.is_local:
        assert temp_files(Path(storage.root)) == []


def test_copy(storage: Storage):
    storage.put_bytes(b"copy me", "c/src")
    info = storage.copy("c/src", "c/dst/deeper")
    assert info.key == "c/dst/deeper" and info.size == 7
    assert storage.get_range("c/dst/deeper", 0, 100) == b"copy me"
    assert storage.exists("c/src")
    # Overwrites an existing destination.
    storage.put_bytes(b"other", "c/other")
    storage.copy("c/other", "c/dst/deeper")
    assert storage.get_range("c/dst/deeper", 0, 100) == b"other"
    # Copy onto itself is a no-op.
    assert storage.copy("c/src", "c/src").size == 7


def test_delete_idempotent(storage: Storage):
    storage.put_bytes(b"x", "del/one")
    storage.delete("del/one")
    assert not storage.exists("del/one")
    storage.delete("del/one")
    storage.delete("never/existed")


def test_delete_many(storage: Storage, request):
    keys = [f"many/{i // 100:02d}/obj-{i:04d}" for i in range(2500)]
    if storage.is_local:
        for k in keys:  # plain files: set-up, not what is under test (put_bytes fsyncs each)
            path = storage.local_path(k)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")
    else:
        # 2,500 PUTs through moto take ~20 s; the server creates them in memory in a blink.
        s3_server = request.getfixturevalue("s3_server")
        assert s3_server.seed(BUCKET, [f"{S3_TEST_PREFIX}/{k}" for k in keys]) == 2500
    storage.put_bytes(b"survivor", "many-not/this")
    assert len(list(storage.list("many/"))) == 2500
    if not storage.is_local:
        request.getfixturevalue("s3_server").reset_stats()
    storage.delete_many(keys + ["many/absent-is-fine"])
    assert list(storage.list("many/")) == []
    assert keys_of(storage.list("many")) == ["many-not/this"]
    if not storage.is_local:
        stats = request.getfixturevalue("s3_server").stats()
        assert stats["by_op"].get("DeleteObjects") == 3  # batches of 1000
    storage.delete_many([])


def test_list_prefix_is_literal_and_keys_round_trip(storage: Storage, tmp_path: Path):
    for i, key in enumerate(SPECIAL_KEYS):
        storage.put_bytes(f"content {i}".encode(), key)
    assert keys_of(storage.list()) == sorted(SPECIAL_KEYS)
    for i, key in enumerate(SPECIAL_KEYS):
        assert storage.head(key).key == key
        assert storage.get_range(key, 0, 100) == f"content {i}".encode()
        dest = tmp_path / "dl" / f"{i}.bin"
        storage.download_file(key, dest)
        assert dest.read_bytes() == f"content {i}".encode()
    # No wildcards: '_' and '%' are themselves, '\' is not an escape, case is exact.
    assert keys_of(storage.list("a_")) == ["a_b.txt"]
    assert keys_of(storage.list("a%")) == ["a%25b.txt", "a%b.txt"]
    assert keys_of(storage.list("a%2")) == ["a%25b.txt"]
    assert keys_of(storage.list("a\\")) == ["a\\b.txt"]
    assert keys_of(storage.list("Mixed/")) == ["Mixed/Case.TXT"]
    assert keys_of(storage.list("mixed")) == ["mixed/case.txt"]
    assert keys_of(storage.list("MIXED")) == []
    assert keys_of(storage.list("100%")) == ["100%/x"]
    assert keys_of(storage.list("ünï/c")) == ["ünï/cödé ✓.txt"]
    assert keys_of(storage.list("sp ace/")) == ["sp ace/f i le.txt"]
    # A string prefix, not a directory: "dir" matches dir-x/, dir.txt and dir/.
    assert keys_of(storage.list("dir")) == ["dir-x/y", "dir.txt", "dir/sub/deep.txt"]
    assert keys_of(storage.list("dir/")) == ["dir/sub/deep.txt"]
    assert keys_of(storage.list("dir/sub/deep.txt")) == ["dir/sub/deep.txt"]
    assert keys_of(storage.list("nothing-here/")) == []


@pytest.mark.parametrize(
    "bad",
    ["", "/abs/key", "../escape", "a/../../escape", "a/..", "..", ".", "./a", "a//b", "a/", "nul\x00byte", f"d/{TEMP_PREFIX}x"],
)
def test_keys_escaping_the_root_are_refused(storage: Storage, tmp_path: Path, bad: str):
    src = tmp_path / "f"
    src.write_bytes(b"x")
    storage.put_bytes(b"fine", "ok")
    attempts = [
        lambda: storage.head(bad),
        lambda: storage.exists(bad),
        lambda: storage.get_range(bad, 0, 1),
        lambda: storage.put_bytes(b"x", bad),
        lambda: storage.put_file(src, bad),
        lambda: storage.download_file(bad, tmp_path / "out"),
        lambda: storage.copy("ok", bad),
        lambda: storage.copy(bad, "ok2"),
        lambda: storage.delete(bad),
        lambda: storage.delete_many(["ok", bad]),
        lambda: storage.url(bad),
    ]
    for attempt in attempts:
        with pytest.raises(InvalidKey):
            attempt()
    assert storage.exists("ok")  # delete_many refused the whole batch
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "escape").exists()


@pytest.mark.parametrize("bad", ["/abs", "../x", "a/../b", "a//b", "x\x00"])
def test_list_prefix_escaping_the_root_is_refused(storage: Storage, bad: str):
    with pytest.raises(InvalidKey):
        storage.list(bad)


def test_invalid_key_is_a_value_error(storage: Storage):
    with pytest.raises(ValueError):
        storage.head("../x")


def test_concurrent_reads(storage: Storage):
    data = os.urandom(256 * 1024)
    info = storage.put_bytes(data, "conc/obj")
    errors: list[BaseException] = []

    def reader(n: int) -> None:
        try:
            for j in range(10):
                start = (n * 7919 + j * 104729) % len(data)
                assert storage.get_range("conc/obj", start, 4096, etag=info.etag) == data[start : start + 4096]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# =================================================================================================
# open_storage and roots
# =================================================================================================


def test_open_storage_local(tmp_path: Path, monkeypatch):
    root = tmp_path / "new" / "root"
    st = open_storage(str(root))
    assert isinstance(st, LocalStorage) and st.is_local
    assert st.root == str(root) and root.is_dir()
    assert st.url("a/b") == str(root / "a" / "b")
    assert st.local_path("a/b") == root / "a" / "b"
    assert open_storage(f"file://{tmp_path}/new/root/").root == str(root)
    assert open_storage(root).root == str(root)  # a Path works too
    monkeypatch.chdir(tmp_path)
    assert open_storage("rel/dir").root == str(tmp_path / "rel" / "dir")
    with pytest.raises(StorageError):
        open_storage("gs://bucket/x")
    with pytest.raises(StorageError):
        open_storage("file://otherhost/x")


def test_open_storage_s3_urls(s3_env):
    from lamfs.storage import S3Storage

    st = open_storage("s3://bucket-name/pre/fix/")
    try:
        assert isinstance(st, S3Storage) and not st.is_local
        assert st.root == "s3://bucket-name/pre/fix"
        assert st.url("a/b.txt") == "s3://bucket-name/pre/fix/a/b.txt"
        assert st.local_path("a/b.txt") is None
    finally:
        st.close()
    with open_storage("s3://bucket-name") as st2:
        assert st2.root == "s3://bucket-name"
        assert st2.url("k") == "s3://bucket-name/k"
    with pytest.raises(StorageError):
        open_storage("s3://")
    with pytest.raises(InvalidKey):
        open_storage("s3://bucket/../x")


def test_s3_prefix_isolation(make_storage, s3_client):
    st = make_storage("s3")
    st.put_bytes(b"inside", "k")
    s3_client.put_object(Bucket=BUCKET, Key="outside-prefix", Body=b"x")
    s3_client.put_object(Bucket=BUCKET, Key=f"{S3_TEST_PREFIX}-sibling/k", Body=b"x")
    s3_client.put_object(Bucket=BUCKET, Key=f"{S3_TEST_PREFIX}/folder-marker/", Body=b"")
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert f"{S3_TEST_PREFIX}/k" in keys
    assert keys_of(st.list()) == ["k"]


# =================================================================================================
# LocalStorage specifics
# =================================================================================================


def test_local_symlink_escape_refused(tmp_path: Path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    st = LocalStorage(tmp_path / "root")
    (tmp_path / "root" / "link").symlink_to(outside)
    with pytest.raises(InvalidKey):
        st.head("link/secret")
    with pytest.raises(InvalidKey):
        st.put_bytes(b"x", "link/new")
    assert not (outside / "new").exists()
    with pytest.raises(InvalidKey):
        st.list("link/")
    assert keys_of(st.list()) == []  # symlinks are not objects


def test_local_temp_files_and_modes(tmp_path: Path):
    st = LocalStorage(tmp_path / "root")
    st.put_bytes(b"x", "d/real")
    (tmp_path / "root" / "d" / (TEMP_PREFIX + "stale")).write_bytes(b"partial")
    assert keys_of(st.list()) == ["d/real"]
    mode = stat.S_IMODE(os.stat(tmp_path / "root" / "d" / "real").st_mode)
    umask = os.umask(0o022)
    os.umask(umask)
    assert mode == 0o666 & ~umask  # not mkstemp's 0600
    info = st.head("d/real")
    st_ = os.stat(tmp_path / "root" / "d" / "real")
    assert info.etag == f"{st_.st_mtime_ns:x}-{st_.st_size:x}-{st_.st_ino:x}"


def test_local_parent_is_a_file(tmp_path: Path):
    st = LocalStorage(tmp_path / "root")
    st.put_bytes(b"x", "file")
    with pytest.raises(StorageError) as excinfo:
        st.put_bytes(b"y", "file/child")
    assert not isinstance(excinfo.value, NotFound)
    assert not st.exists("file/child")
    st.delete("file/child")  # absent: fine
    assert st.get_range("file", 0, 10) == b"x"


def test_local_directories_are_not_objects(tmp_path: Path):
    st = LocalStorage(tmp_path / "root")
    st.put_bytes(b"x", "dir/file")
    with pytest.raises(NotFound):
        st.head("dir")
    with pytest.raises(NotFound):
        st.get_range("dir", 0, 1)
    with pytest.raises(StorageError):
        st.delete("dir")


def test_local_download_onto_itself_is_a_no_op(tmp_path: Path):
    st = LocalStorage(tmp_path / "root")
    info = st.put_bytes(b"abc", "x")
    assert st.download_file("x", st.local_path("x")) == info
    assert st.head("x") == info
    assert st.put_file(st.local_path("x"), "x") == info


# =================================================================================================
# S3 specifics: multipart copy, retries, outages, O(range)
# =================================================================================================

@pytest.mark.s3
def test_s3_multipart_copy(make_storage, s3_server, tmp_path: Path):
    st = make_storage("s3", copy_threshold_bytes=5 * MiB, copy_chunksize_bytes=5 * MiB)
    src = tmp_path / "src"
    data = write_random(src, 12 * MiB)
    st.put_file(src, "copy/src")
    s3_server.reset_stats()
    info = st.copy("copy/src", "copy/dst")
    assert info.size == len(data)
    stats = s3_server.stats()
    assert stats["by_op"].get("UploadPartCopy") == 3
    assert stats["by_op"].get("CopyObject") is None
    assert st.get_range("copy/dst", 0, len(data)) == data
    # Below the threshold: one CopyObject.
    st.put_bytes(b"small", "copy/small")
    s3_server.reset_stats()
    st.copy("copy/small", "copy/small2")
    assert s3_server.stats()["by_op"].get("CopyObject") == 1


@pytest.mark.s3
def test_s3_put_retried_after_503(make_storage, s3_server):
    st = make_storage("s3", max_attempts=3)
    s3_server.fault(method="PUT", path_contains="iris", status=503, count=2)
    info = st.put_bytes(b"sepal,petal\n", "iris.csv")
    assert info.size == 12
    puts = [(r["op"], r["status"]) for r in s3_server.stats()["recent"] if r["method"] == "PUT"]
    assert puts == [("PutObject", 503), ("PutObject", 503), ("PutObject", 200)]
    assert st.get_range("iris.csv", 0, 100) == b"sepal,petal\n"


@pytest.mark.s3
def test_s3_persistent_503_is_unavailable_and_writes_nothing(make_storage, s3_server, s3_client, tmp_path: Path):
    st = make_storage("s3", max_attempts=2, multipart_threshold_bytes=5 * MiB, multipart_chunksize_bytes=5 * MiB)
    s3_server.fault(method="PUT", status=503)
    t0 = time.monotonic()
    with pytest.raises(StorageUnavailable) as excinfo:
        st.put_bytes(b"data", "iris.csv")
    assert time.monotonic() - t0 < 15
    assert "iris.csv" in str(excinfo.value)
    assert "testing" not in str(excinfo.value)  # no credentials in messages
    assert s3_server.stats()["by_status"].get("503") == 2  # first try + one retry
    # A multipart upload failing on every part: aborted, nothing visible, nothing pending.
    src = tmp_path / "big"
    write_random(src, 11 * MiB)
    with pytest.raises(StorageUnavailable):
        st.put_file(src, "big.bin")
    s3_server.clear_faults()
    assert not st.exists("iris.csv")
    assert not st.exists("big.bin")
    assert s3_client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
    assert "AbortMultipartUpload" in s3_server.stats()["by_op"]


@pytest.mark.s3
@pytest.mark.parametrize(
    "status, code, expected",
    [(403, "AccessDenied", AccessDenied), (500, "InternalError", StorageUnavailable), (400, "InvalidArgument", StorageError)],
)
def test_s3_error_mapping(make_storage, s3_server, status, code, expected):
    st = make_storage("s3", max_attempts=2)
    st.put_bytes(b"x", "obj")
    s3_server.fault(method="GET", status=status, code=code)
    with pytest.raises(expected) as excinfo:
        st.get_range("obj", 0, 1)
    assert type(excinfo.value) is expected
    assert excinfo.value.__cause__ is not None  # raise ... from exc
    assert "obj" in str(excinfo.value)


@pytest.mark.s3
def test_s3_missing_bucket(s3_bucket, s3_env):
    with open_storage("s3://lamfs-no-such-bucket/x", max_attempts=1) as st:
        with pytest.raises(StorageError):
            st.put_bytes(b"x", "k")
        with pytest.raises(StorageError):
            list(st.list())


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.s3
def test_s3_unreachable_endpoint_fails_in_bounded_time(s3_env, tmp_path: Path):
    port = _closed_port()
    with open_storage(
        "s3://lamfs-test", endpoint_url=f"http://127.0.0.1:{port}", max_attempts=2, connect_timeout_s=1, read_timeout_s=1
    ) as st:
        for op in (
            lambda: st.head("k"),
            lambda: st.get_range("k", 0, 1),
            lambda: st.put_bytes(b"x", "k"),
            lambda: list(st.list()),
            lambda: st.download_file("k", tmp_path / "dl"),
        ):
            t0 = time.monotonic()
            with pytest.raises(StorageUnavailable):
                op()
            assert time.monotonic() - t0 < 8
    assert not (tmp_path / "dl").exists()


@pytest.mark.s3
def test_s3_silent_endpoint_times_out(s3_env):
    """A server that accepts connections but never answers: the read timeout bounds the wait."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        with open_storage(
            "s3://lamfs-test", endpoint_url=f"http://127.0.0.1:{port}", max_attempts=2, connect_timeout_s=1, read_timeout_s=0.5
        ) as st:
            t0 = time.monotonic()
            with pytest.raises(StorageUnavailable):
                st.head("k")
            assert time.monotonic() - t0 < 8


@pytest.mark.s3
def test_s3_outage_and_recovery(make_storage, s3_server):
    st = make_storage("s3", max_attempts=2, connect_timeout_s=1)
    st.put_bytes(b"survives", "outage/k")
    s3_server.stop()
    try:
        with pytest.raises(StorageUnavailable):
            st.head("outage/k")
        with pytest.raises(StorageUnavailable):
            st.put_bytes(b"lost", "outage/new")
    finally:
        s3_server.start()
    assert st.get_range("outage/k", 0, 100) == b"survives"  # the server kept its data
    assert not st.exists("outage/new")


@pytest.mark.s3
def test_s3_download_connection_cut(make_storage, s3_server, tmp_path: Path):
    st = make_storage("s3", max_attempts=2)
    data = os.urandom(200_000)
    st.put_bytes(data, "cut/obj")
    dest_dir = tmp_path / "cache"
    dest = dest_dir / "obj"
    dest_dir.mkdir()
    dest.write_bytes(b"previous")

    # Every GET is cut mid-body: StorageUnavailable, dest untouched, no temp file.
    s3_server.fault(method="GET", mode="truncate", after_bytes=5000)
    with pytest.raises(StorageUnavailable):
        st.download_file("cut/obj", dest)
    assert dest.read_bytes() == b"previous"
    assert temp_files(dest_dir) == []
    with pytest.raises(StorageUnavailable):
        st.get_range("cut/obj", 0, 100_000)

    # Connection closed before any answer.
    s3_server.clear_faults()
    s3_server.fault(method="GET", mode="cut")
    with pytest.raises(StorageUnavailable):
        st.download_file("cut/obj", dest)
    assert dest.read_bytes() == b"previous"
    assert temp_files(dest_dir) == []

    # A single cut is retried transparently.
    s3_server.clear_faults()
    s3_server.fault(method="GET", mode="truncate", after_bytes=1000, count=1)
    st.download_file("cut/obj", dest)
    assert dest.read_bytes() == data
    s3_server.fault(method="GET", mode="truncate", after_bytes=10, count=1)
    assert st.get_range("cut/obj", 10, 50_000) == data[10:50_010]


@pytest.mark.s3
def test_s3_download_object_vanishes(make_storage, s3_server, tmp_path: Path):
    st = make_storage("s3")
    st.put_bytes(b"here for now", "gone/obj")
    # HEAD still sees it, the GET does not (deleted in between).
    s3_server.fault(method="GET", path_contains="gone/obj", status=404, code="NoSuchKey")
    dest = tmp_path / "cache" / "obj"
    with pytest.raises(NotFound):
        st.download_file("gone/obj", dest)
    assert not dest.exists()
    assert temp_files(tmp_path / "cache") == []


@pytest.mark.s3
def test_s3_download_changed_between_head_and_get(make_storage, s3_server, tmp_path: Path):
    st = make_storage("s3")
    st.put_bytes(b"v1", "race/obj")
    # The object is replaced after our HEAD: the GET's If-Match fails.
    s3_server.fault(method="GET", path_contains="race/obj", status=412, code="PreconditionFailed")
    dest = tmp_path / "cache" / "obj"
    with pytest.raises(ContentChanged):
        st.download_file("race/obj", dest)
    assert not dest.exists()
    assert temp_files(tmp_path / "cache") == []


@pytest.mark.s3
def test_s3_ranged_get_is_o_range(make_storage, s3_server, tmp_path: Path):
    st = make_storage("s3")
    src = tmp_path / "huge"
    data = write_random(src, 64 * MiB)
    info = st.put_file(src, "huge.bin")
    s3_server.reset_stats()
    got = st.get_range("huge.bin", 40 * MiB + 123, MiB, etag=info.etag)
    assert got == data[40 * MiB + 123 : 41 * MiB + 123]
    tail = st.get_range("huge.bin", len(data) - 10, MiB)
    assert tail == data[-10:]
    stats = s3_server.stats()
    assert stats["gets"] == 2
    assert stats["ranged_fast_path"] == 2
    assert stats["bytes_out"] < MiB + 64 * 1024  # about the range, not the object
    with pytest.raises(ContentChanged):
        st.get_range("huge.bin", 0, 10, etag="not-the-etag")


# =================================================================================================
# FaultyStorage
# =================================================================================================


def test_faulty_storage(tmp_path: Path):
    inner = LocalStorage(tmp_path / "root")
    fs = FaultyStorage(inner)
    assert fs.root == inner.root and fs.is_local
    src = tmp_path / "src"
    src.write_bytes(b"payload")

    fs.fail({"put_file"}, times=1)
    with pytest.raises(StorageUnavailable, match="injected"):
        fs.put_file(src, "k")
    assert not inner.exists("k")  # nothing written, not even partially
    assert temp_files(tmp_path / "root") == []
    assert fs.put_file(src, "k").size == 7  # times=1: healed by itself
    assert fs.calls["put_file"] == 2

    fs.fail("all", exc=AccessDenied)
    for op in (lambda: fs.head("k"), lambda: fs.get_range("k", 0, 1), lambda: fs.list(), lambda: fs.delete("k")):
        with pytest.raises(AccessDenied):
            op()
    fs.heal()
    assert fs.get_range("k", 0, 3) == b"pay"

    fs.fail("put_bytes", after=True)  # a lost response: the write happened
    with pytest.raises(StorageUnavailable):
        fs.put_bytes(b"new", "lost-response")
    assert inner.exists("lost-response")
    fs.heal()

    fs.fail({"get_range"}, key_contains="only-this", exc=ContentChanged("custom"))
    assert fs.get_range("k", 0, 1) == b"p"
    fs.put_bytes(b"x", "only-this")
    with pytest.raises(ContentChanged, match="custom"):
        fs.get_range("only-this", 0, 1)
    fs.heal()

    fs.delay("head", 0.2)
    t0 = time.monotonic()
    fs.head("k")
    assert time.monotonic() - t0 >= 0.2
    fs.heal()
    with pytest.raises(ValueError):
        fs.fail({"no_such_op"})
    assert keys_of(fs.list()) == ["k", "lost-response", "only-this"]


@pytest.mark.s3
def test_s3_warm_up_is_one_get_and_never_raises(make_storage, s3_server):
    """A mount warms its S3 client with one GET of a missing key (botocore loads GetObject's model
    and the connection opens, off the first real read); an unreachable endpoint is no error."""
    st = make_storage("s3")
    s3_server.reset_stats()
    st.warm_up()
    stats = s3_server.stats()
    assert stats["by_op"] == {"GetObject": 1}, stats["by_op"]
    assert stats["by_status"].get("404") == 1, stats["by_status"]
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = open_storage(st.root, endpoint_url=f"http://127.0.0.1:{port}", max_attempts=1, connect_timeout_s=1)
    dead.warm_up()  # returns; the error shows in real requests
    with pytest.raises(StorageError):
        dead.head("anything")
