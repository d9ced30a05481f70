"""Hostile input: every bad name, key or path gets its documented errno (docs/SEMANTICS.md) or exception
and changes nothing — the catalog, the storage root (including temp files) and the cache directory
are compared before and after each attempt. Odd but legal names (`%`, `_`, `\\`, spaces, unicode in
both normal forms, mixed case) must work exactly. And the mount is private to its user.
"""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
import tempfile
import unicodedata
from pathlib import Path

import pytest

import lamfs
from lamfs.cache.copies import CopyCache
from lamfs.errors import InvalidKey, NameTooLong

from .conftest import DATA
from .conftest_mount import is_mounted, module_mount

pytestmark = pytest.mark.mount

OTHER_USER = "lamfs-other"


@pytest.fixture(scope="module")
def public_dir():
    """A directory every user can traverse (pytest's tmp dirs are private), removed after the test."""
    path = Path(tempfile.mkdtemp(prefix="lamfs-hostile-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    for mp in path.iterdir():
        if is_mounted(mp):
            subprocess.run(["fusermount3", "-uz", str(mp)], check=False)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def mnt(public_dir, tmp_path_factory):
    """One mount for the module (each test checks that its refused requests change nothing, and the
    files tests add do not disturb the others)."""
    base = public_dir / "shared"
    base.mkdir()
    with module_mount(base, str(base / "storage"), "hostile") as m:
        yield _populate(m, tmp_path_factory.mktemp("hostile-src"))


def _populate(m, tmp_path):
    m.run(f"cp {DATA}/iris.csv iris.csv && mkdir -p d && cp {DATA}/iris.data d/iris.data")
    src = tmp_path / "folder.zarr"
    (src / "sub").mkdir(parents=True)
    (src / "zarr.json").write_text("{}")
    (src / "sub" / "0").write_bytes(b"chunk")
    lamfs.Artifact(src, key="folder.zarr").save()
    keyless = tmp_path / "keyless.txt"
    keyless.write_text("no key\n")
    lamfs.Artifact(keyless).save()
    m.run("sleep 1.1")  # kernel TTL: the API's changes are visible
    return m


def state() -> dict:
    """Everything a bad request must not change: catalog rows and directories, every file under the
    storage root (temp files too) and under the cache directory."""
    service = lamfs.settings.service
    rows = [(r.id, r.uid, r.key, r.size, r.hash, r.storage_key, r.branch, r.is_latest, r.mtime_ns, r.mode,
             r.description) for r in service.catalog.all_artifacts()]
    D = service.catalog.m.Directory
    dirs = sorted((d.id, d.parent_id, d.name, d.explicit) for d in D.select())
    root = Path(service.storage.root)
    files = sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*") if p.is_file())
    cache = Path(lamfs.settings.cache_dir)
    cached = sorted(str(p.relative_to(cache)) for p in cache.rglob("*")
                    if p.is_file() and "staging" not in p.parts and not p.name.startswith("block-stats"))
    return {"rows": rows, "dirs": dirs, "files": files, "cache": cached, "intents": service.catalog.intents()}


def refused(fn, *, errnos=None, exc=None):
    """Call fn; require the given errno(s) or exception type, and no change anywhere."""
    before = state()
    if errnos is not None:
        with pytest.raises(OSError) as err:
            fn()
        allowed = errnos if isinstance(errnos, tuple) else (errnos,)
        assert err.value.errno in allowed, f"{errno.errorcode.get(err.value.errno)} not in " \
                                           f"{[errno.errorcode[e] for e in allowed]}"
    else:
        with pytest.raises(exc):
            fn()
    assert state() == before


def create(path: Path, data: bytes = b"x"):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


# -- names through the mount ------------------------------------------------------------------------------

def test_control_characters_are_einval(mnt):
    for name in ("a\nb.txt", "tab\there", "bell\x07", "esc\x1b[31m", "del\x7f", "cr\r"):
        p = mnt.path / name
        refused(lambda: create(p), errnos=errno.EINVAL)
        refused(lambda: os.mkdir(p), errnos=errno.EINVAL)
        refused(lambda: os.rename(mnt.path / "iris.csv", p), errnos=errno.EINVAL)
        refused(lambda: os.rename(mnt.path / "d", p), errnos=errno.EINVAL)
        refused(lambda: lamfs.Artifact(DATA / "iris.csv", key=f"d/{name}.csv"), exc=InvalidKey)
    assert (mnt.path / "iris.csv").read_bytes() == (DATA / "iris.csv").read_bytes()


def test_invalid_utf8_names_are_einval(mnt):
    base = os.fsencode(mnt.path)
    refused(lambda: create(base + b"/bad-\xff\xfe.txt"), errnos=errno.EINVAL)
    refused(lambda: os.mkdir(base + b"/bad-\xc3"), errnos=errno.EINVAL)
    refused(lambda: os.rename(mnt.path / "iris.csv", base + b"/bad-\xff.csv"), errnos=errno.EINVAL)
    # such names cannot exist: looking them up is ENOENT, not an I/O error
    for call in (os.stat, os.unlink, os.rmdir, lambda p: os.rename(p, mnt.path / "x.csv")):
        refused(lambda: call(base + b"/bad-\xff"), errnos=errno.ENOENT)


def test_long_names(mnt):
    ok = "n" * 251 + ".txt"  # exactly 255 bytes
    create(mnt.path / ok, b"longest")
    assert (mnt.path / ok).read_bytes() == b"longest" and lamfs.Artifact.get(key=ok).size == 7
    for name in ("n" * 256, "\u00e9" * 128, "d" * 300 + ".csv", "x" * 1000):
        refused(lambda: create(mnt.path / name), errnos=errno.ENAMETOOLONG)
        refused(lambda: os.mkdir(mnt.path / name), errnos=errno.ENAMETOOLONG)
        refused(lambda: os.rename(mnt.path / "iris.csv", mnt.path / name), errnos=errno.ENAMETOOLONG)


def test_dot_names(mnt):
    """'..' is resolved by the kernel (it never reaches lamfs); names that merely contain dots work."""
    refused(lambda: os.mkdir(mnt.path / "d" / ".."), errnos=errno.EEXIST)
    refused(lambda: os.rmdir(mnt.path / "d" / ".."), errnos=(errno.ENOTEMPTY, errno.EBUSY, errno.EINVAL))
    for name in ("...", "..x", ".hidden", "x..", "a.b.c"):
        create(mnt.path / name, name.encode())
        assert (mnt.path / name).read_bytes() == name.encode()
        assert lamfs.Artifact.get(key=name).key == name


def test_odd_names_round_trip_exactly(mnt):
    nfc, nfd = unicodedata.normalize("NFC", "caf\u00e9.txt"), unicodedata.normalize("NFD", "caf\u00e9.txt")
    assert nfc != nfd
    names = {nfc: b"nfc", nfd: b"nfd", "CAFE.txt": b"upper", "cafe.txt": b"lower", "Cafe.txt": b"title",
             "100%_done.csv": b"pct", "100__done.csv": b"under", "back\\slash.txt": b"bs", " lead space.txt": b"sp",
             "trail space .txt": b"sp2", "\u6570\u636e.txt": b"cjk", "emoji-\U0001f600.txt": b"emoji"}
    for name, data in names.items():
        create(mnt.path / name, data)
    listed = set(os.listdir(mnt.path))
    assert set(names) <= listed
    for name, data in names.items():
        assert (mnt.path / name).read_bytes() == data, name
        assert lamfs.Artifact.get(key=name).key == name
    # no normalization, no case folding, no LIKE wildcards in prefix filters
    assert [a.key for a in lamfs.Artifact.filter(key__startswith="100%")] == ["100%_done.csv"]
    assert [a.key for a in lamfs.Artifact.filter(key__startswith="100_")] == ["100__done.csv"]  # '_' is no wildcard
    assert [a.key for a in lamfs.Artifact.filter(key__startswith="caf\u00e9")] == [nfc]
    assert lamfs.Artifact.filter(key__startswith="back\\") [0].key == "back\\slash.txt"
    os.rename(mnt.path / nfc, mnt.path / "moved.txt")
    assert (mnt.path / nfd).read_bytes() == b"nfd" and (mnt.path / "moved.txt").read_bytes() == b"nfc"


# -- reserved places ---------------------------------------------------------------------------------------

def test_reserved_top_level_names(mnt):
    for name in (".lamindb", ".lamfs"):
        refused(lambda: create(mnt.path / name), errnos=(errno.EPERM, errno.EEXIST, errno.EISDIR))
        refused(lambda: os.mkdir(mnt.path / name), errnos=(errno.EPERM, errno.EEXIST))
        refused(lambda: os.rename(mnt.path / "iris.csv", mnt.path / name), errnos=(errno.EPERM, errno.EISDIR))
        refused(lambda: os.rename(mnt.path / "d", mnt.path / name), errnos=(errno.EPERM, errno.ENOTEMPTY))
    assert ".lamindb" not in os.listdir(mnt.path)
    refused(lambda: create(mnt.path / ".lamindb"), errnos=errno.EPERM)
    refused(lambda: os.mkdir(mnt.path / ".lamindb"), errnos=errno.EPERM)
    # lamfs's own objects are not reachable through the mount: .lamindb/ does not exist there
    uid = lamfs.Artifact.get(key="iris.csv").uid
    for path in (f".lamindb/{uid}.csv", ".lamindb/new.csv"):
        refused(lambda: create(mnt.path / path), errnos=errno.ENOENT)
        refused(lambda: open(mnt.path / path, "rb"), errnos=errno.ENOENT)
    # inside a directory the names are ordinary
    create(mnt.path / "d" / ".lamfs", b"ok")
    assert lamfs.Artifact.get(key="d/.lamfs").size == 2


def test_writes_under_dot_lamfs_are_eperm(mnt):
    by_uid = mnt.path / ".lamfs" / "by-uid"
    (entry,) = os.listdir(by_uid)
    assert (by_uid / entry).read_text() == "no key\n"
    refused(lambda: create(mnt.path / ".lamfs" / "new"), errnos=errno.EPERM)
    refused(lambda: create(by_uid / "new"), errnos=errno.EPERM)
    refused(lambda: os.mkdir(by_uid / "dir"), errnos=errno.EPERM)
    refused(lambda: open(by_uid / entry, "r+b"), errnos=errno.EPERM)
    refused(lambda: os.truncate(by_uid / entry, 0), errnos=errno.EPERM)
    refused(lambda: os.unlink(by_uid / entry), errnos=errno.EPERM)
    refused(lambda: os.rename(by_uid / entry, mnt.path / "stolen.txt"), errnos=errno.EPERM)
    refused(lambda: os.rename(mnt.path / "iris.csv", by_uid / "x.csv"), errnos=errno.EPERM)
    refused(lambda: os.rmdir(by_uid), errnos=errno.EPERM)


def test_writes_into_folder_artifacts_are_erofs(mnt):
    folder = mnt.path / "folder.zarr"
    assert sorted(os.listdir(folder)) == ["sub", "zarr.json"]
    refused(lambda: create(folder / "new"), errnos=errno.EROFS)
    refused(lambda: create(folder / "sub" / "new"), errnos=errno.EROFS)
    refused(lambda: open(folder / "zarr.json", "r+b"), errnos=errno.EROFS)
    refused(lambda: open(folder / "sub" / "0", "ab"), errnos=errno.EROFS)
    refused(lambda: os.truncate(folder / "zarr.json", 0), errnos=errno.EROFS)
    refused(lambda: os.mkdir(folder / "newdir"), errnos=errno.EROFS)
    refused(lambda: os.unlink(folder / "zarr.json"), errnos=errno.EROFS)
    refused(lambda: os.rmdir(folder / "sub"), errnos=errno.EROFS)
    refused(lambda: os.rename(folder / "zarr.json", folder / "z2.json"), errnos=errno.EROFS)
    refused(lambda: os.rename(mnt.path / "iris.csv", folder / "iris.csv"), errnos=errno.EROFS)
    refused(lambda: os.rename(folder / "sub" / "0", mnt.path / "out"), errnos=errno.EROFS)
    refused(lambda: os.unlink(folder), errnos=errno.EISDIR)
    refused(lambda: os.rmdir(folder), errnos=errno.ENOTEMPTY)
    # a file renamed over a folder artifact: the folder is not replaced by a file
    refused(lambda: os.rename(mnt.path / "iris.csv", folder), errnos=errno.EISDIR)
    assert (folder / "sub" / "0").read_bytes() == b"chunk"


def test_links_and_nodes_are_eperm(mnt):
    refused(lambda: os.symlink("iris.csv", mnt.path / "sym"), errnos=errno.EPERM)
    refused(lambda: os.link(mnt.path / "iris.csv", mnt.path / "hard"), errnos=errno.EPERM)
    refused(lambda: os.mkfifo(mnt.path / "fifo"), errnos=errno.EPERM)
    refused(lambda: os.setxattr(mnt.path / "iris.csv", "user.lamfs.hash", b"forged"), errnos=errno.EPERM)
    refused(lambda: os.setxattr(mnt.path / "iris.csv", "user.lamfs.uid", b"forged"), errnos=errno.EPERM)


# -- bad keys through the Python API -----------------------------------------------------------------------

def test_api_refuses_bad_keys(mnt):
    for key in ("../x.csv", "a/../../x.csv", "..", "./x.csv", "a/./x.csv", "/abs.csv", "a//x.csv", "a/", "",
                "nul\x00.csv", "new\nline.csv", "tab\t.csv", ".lamindb/x.csv", ".lamfs/x.csv", ".lamfs/by-uid/x.csv"):
        refused(lambda: lamfs.Artifact(DATA / "new_iris.csv", key=key).save(), exc=(InvalidKey, ValueError))
    for key in ("n" * 256 + ".csv", "d/" * 600 + "x.csv"):
        refused(lambda: lamfs.Artifact(DATA / "new_iris.csv", key=key).save(), exc=NameTooLong)


def test_api_nul_in_path_and_escaping_sources(mnt, tmp_path):
    refused(lambda: lamfs.Artifact(str(tmp_path / "a\x00b.csv"), key="x.csv"), exc=ValueError)
    artifact = lamfs.Artifact.get(key="iris.csv")
    # replacing with something inside the storage root, or the root's parent through '..': refused
    root = Path(lamfs.settings.service.storage.root)
    inside = root / artifact.storage_key
    refused(lambda: artifact.replace(inside), exc=ValueError)
    refused(lambda: artifact.replace(f"{root}/sub/../{artifact.storage_key}"), exc=ValueError)


def test_renames_into_reserved_keys_through_the_service(mnt):
    service = lamfs.settings.service
    rec = service.get(key="iris.csv")
    for key in ("../out.csv", ".lamindb/x.csv", "a/../b.csv", "x\x00.csv"):
        refused(lambda: service.rename(rec, key), exc=InvalidKey)
    refused(lambda: service.rename_dir("d", "../d2"), exc=InvalidKey)
    refused(lambda: service.rename_dir("d", "d/inside"), exc=InvalidKey)
    refused(lambda: service.mkdir(".lamfs/x"), exc=InvalidKey)


def test_storage_and_cache_keys_cannot_escape(mnt, tmp_path):
    storage = lamfs.settings.service.storage
    outside = Path(storage.root).parent
    before = sorted(p.name for p in outside.iterdir())
    for bad in ("../escape.txt", "a/../../escape.txt", "/etc/passwd"):
        refused(lambda: storage.put_bytes(b"x", bad), exc=InvalidKey)
        refused(lambda: storage.get_range(bad, 0, 1), exc=InvalidKey)
    assert sorted(p.name for p in outside.iterdir()) == before
    cache = CopyCache(tmp_path / "cache")
    for rel in ("../x", "a/../../x", "/etc/passwd", ".lamfs-meta/x.json"):
        with pytest.raises(ValueError):
            cache.path_for(rel)
        with pytest.raises(ValueError):
            cache.store(rel, None, lambda tmp: Path(tmp).write_bytes(b"x"))
    assert not (tmp_path / "x").exists()


# -- the mount is private to its user -----------------------------------------------------------------------

def ensure_other_user() -> str:
    if subprocess.run(["id", OTHER_USER], capture_output=True).returncode:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", OTHER_USER],
                       check=True, capture_output=True)
    return OTHER_USER


def as_user(user: str, *cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", user, "--", *cmd], capture_output=True, text=True, timeout=30)


@pytest.fixture
def own_mnt(public_dir, mount_factory, tmp_path):
    m = mount_factory(str(tmp_path / "storage"), name="private", mountpoint=public_dir / "private-mnt")
    lamfs.setup.connect(m.instance)
    return _populate(m, tmp_path)


def test_other_user_cannot_use_a_private_mount(own_mnt, public_dir):
    mnt = own_mnt
    user = ensure_other_user()
    control = public_dir / "control.txt"  # same directory permissions, outside the mount
    control.write_text("readable\n")
    control.chmod(0o644)
    assert as_user(user, "cat", str(control)).stdout == "readable\n"
    before = state()
    for cmd in (["cat", str(mnt.path / "iris.csv")], ["ls", str(mnt.path)], ["stat", str(mnt.path / "d")],
                ["sh", "-c", f"echo x > {mnt.path}/intruder.txt"], ["mkdir", str(mnt.path / "intruder")],
                ["rm", "-f", str(mnt.path / "iris.csv")], ["mv", str(mnt.path / "iris.csv"), str(mnt.path / "x")]):
        proc = as_user(user, *cmd)
        assert proc.returncode != 0 and "Permission denied" in proc.stderr, (cmd, proc)
    assert state() == before
    assert (mnt.path / "iris.csv").read_bytes() == (DATA / "iris.csv").read_bytes()
    # the denial comes from the mount being private: with --allow-other the same read works
    mnt.restart("--allow-other")
    assert as_user(user, "cat", str(mnt.path / "iris.csv")).stdout == (DATA / "iris.csv").read_text()
