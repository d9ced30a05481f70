"""The mounted filesystem driven by ordinary tools (a real FUSE mount in a subprocess), against a
local root and the S3 server. After each step the catalog is checked through the Python API."""
from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

import lamfs
from lamfs.hashing import hash_bytes

from .conftest import DATA

pytestmark = pytest.mark.mount


def art(key):
    return lamfs.Artifact.get(key=key)


def test_cp_cat_ls_find_du(mounted):
    m = mounted
    m.run(f"cp {DATA}/iris.csv . && mkdir -p runs/2024 && cp {DATA}/iris.data runs/2024/")
    assert (m.path / "iris.csv").read_bytes() == (DATA / "iris.csv").read_bytes()
    m.run(f"cmp iris.csv {DATA}/iris.csv && cmp runs/2024/iris.data {DATA}/iris.data")
    st = os.stat(m.path / "iris.csv")
    assert st.st_size == 224 and st.st_ino == 2 * lamfs.settings.service.get(key="iris.csv").id
    a = art("iris.csv")
    assert (a.size, a.hash, a.suffix) == (224, "iwc1TmF1TW_l5weDvscSHw", ".csv")
    assert art("runs/2024/iris.data").hash == "42Br6no9CjB6s5ZbmO-bmw"
    found = sorted(m.run("find . -path ./.lamfs -prune -o -type f -print").stdout.split())
    assert found == ["./iris.csv", "./runs/2024/iris.data"]
    ls = m.run("ls -l runs/2024").stdout
    assert "182" in ls and "iris.data" in ls
    du = int(m.run("du -sb runs").stdout.split()[0])
    assert du >= 182
    # cp -r of a tree, rm -r, rmdir
    tree = m.path.parent / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    for i in range(5):
        (tree / "a" / "b" / f"f{i}.txt").write_text(f"file {i}\n")
    m.run(f"cp -r {tree} copied")
    assert sorted(os.listdir(m.path / "copied" / "a" / "b")) == [f"f{i}.txt" for i in range(5)]
    assert art("copied/a/b/f3.txt").size == len("file 3\n")
    m.run("rm -r copied")
    assert not (m.path / "copied").exists()
    assert lamfs.Artifact.filter(key__startswith="copied/") == []
    os.mkdir(m.path / "empty")
    with pytest.raises(OSError) as err:
        os.rmdir(m.path / "runs")
    assert err.value.errno == errno.ENOTEMPTY
    os.rmdir(m.path / "empty")
    assert not (m.path / "empty").exists()


def test_inodes_stable_across_rename_and_remount(mounted):
    m = mounted
    m.run(f"cp {DATA}/iris.csv a.csv && mkdir d")
    ino_file, ino_dir = os.stat(m.path / "a.csv").st_ino, os.stat(m.path / "d").st_ino
    m.run("mv a.csv d/b.csv && mv d e")
    assert os.stat(m.path / "e" / "b.csv").st_ino == ino_file
    assert os.stat(m.path / "e").st_ino == ino_dir
    m.restart()
    assert os.stat(m.path / "e" / "b.csv").st_ino == ino_file
    assert (m.path / "e" / "b.csv").read_bytes() == (DATA / "iris.csv").read_bytes()


@pytest.mark.parametrize("how", ["cp", "redirect", "append", "truncate", "sed", "rsync", "python_rw"])
def test_overwrite_is_replace(mounted, how):
    m = mounted
    m.run(f"cp {DATA}/iris.csv x.csv")
    before = art("x.csv")
    original = (DATA / "iris.csv").read_bytes()
    cmds = {
        "cp": (f"cp {DATA}/new_iris.csv x.csv", (DATA / "new_iris.csv").read_bytes()),
        "redirect": ("printf 'a,b\\n1,2\\n' > x.csv", b"a,b\n1,2\n"),
        "append": ("printf '9,9,9,9,\"X\"\\n' >> x.csv", original + b'9,9,9,9,"X"\n'),
        "truncate": ("truncate -s 10 x.csv", original[:10]),
        "sed": ("sed -i 's/Setosa/SETOSA/g' x.csv", original.replace(b"Setosa", b"SETOSA")),
        "rsync": (f"rsync {DATA}/new_iris.csv x.csv", (DATA / "new_iris.csv").read_bytes()),
        "python_rw": (None, original[:5] + b"XXXX" + original[9:]),
    }
    cmd, expected = cmds[how]
    if cmd is None:
        with open(m.path / "x.csv", "r+b") as f:
            f.seek(5)
            f.write(b"XXXX")
    else:
        m.run(cmd)
    assert (m.path / "x.csv").read_bytes() == expected
    after = art("x.csv")
    assert after.uid == before.uid
    assert (after.size, after.hash) == (len(expected), hash_bytes(expected).hash)
    assert [a.uid for a in lamfs.Artifact.filter()] == [after.uid]  # temp files of sed/rsync are gone
    # the bytes in storage are the new ones
    assert after.cache().read_bytes() == expected


def test_rename_over_existing_keeps_target_uid(mounted):
    m = mounted
    m.run(f"cp {DATA}/iris.csv a.csv && cp {DATA}/new_iris.csv b.csv")
    target_uid = art("b.csv").uid
    m.run("mv a.csv b.csv")
    assert not (m.path / "a.csv").exists()
    assert (m.path / "b.csv").read_bytes() == (DATA / "iris.csv").read_bytes()
    b = art("b.csv")
    assert b.uid == target_uid and b.hash == "iwc1TmF1TW_l5weDvscSHw"
    assert [x.key for x in lamfs.Artifact.filter()] == ["b.csv"]


def test_suffix_change_by_rename(mounted):
    m = mounted
    m.run(f"cp {DATA}/iris.csv a.csv && mv a.csv a.data")
    a = art("a.data")
    assert a.suffix == ".data" and a.storage_key == f".lamindb/{a.uid}.data"
    assert (m.path / "a.data").read_bytes() == (DATA / "iris.csv").read_bytes()


def test_rename_directory_of_1000_files_is_catalog_only(mounted, request):
    m = mounted
    src = m.path.parent / "many"
    src.mkdir()
    for i in range(1000):
        (src / f"f{i:04d}.txt").write_text(str(i))
    m.run(f"cp -r {src} d1")
    service = lamfs.settings.service
    before = {r.uid: r.storage_key for r in service.catalog.filter_artifacts(key_prefix="d1/")}
    assert len(before) == 1000
    objects_before = sorted(i.key for i in service.storage.list(""))
    if m.storage.startswith("s3://"):
        server = request.getfixturevalue("s3_server")
        server.reset_stats()
    m.run("mv d1 d2")
    after = {r.uid: r.storage_key for r in service.catalog.filter_artifacts(key_prefix="d2/")}
    assert after == before  # same artifacts, same storage keys: nothing copied
    assert service.catalog.filter_artifacts(key_prefix="d1/") == []
    assert sorted(i.key for i in service.storage.list("")) == objects_before
    if m.storage.startswith("s3://"):
        stats = server.stats()
        assert stats["by_method"].get("PUT", 0) == 0, stats
    assert (m.path / "d2" / "f0999.txt").read_text() == "999"
    assert len(os.listdir(m.path / "d2")) == 1000


def test_rm_moves_to_trash_and_restore(mounted):
    m = mounted
    m.run(f"cp {DATA}/iris.csv a.csv")
    uid = art("a.csv").uid
    m.run("rm a.csv")
    assert not (m.path / "a.csv").exists()
    trashed = lamfs.settings.service.get(uid=uid, include_trashed=True)
    assert trashed.is_trashed
    lamfs.Artifact._wrap(trashed).restore()
    m.run("sleep 1.2")  # kernel entry TTL
    assert (m.path / "a.csv").read_bytes() == (DATA / "iris.csv").read_bytes()


def test_pandas_h5py_zarr_on_mount_paths(mounted):
    import anndata as ad
    import h5py

    m = mounted
    df = pd.DataFrame({"x": np.arange(100), "y": np.linspace(0, 1, 100)})
    df.to_csv(m.path / "df.csv", index=False)
    pd.testing.assert_frame_equal(pd.read_csv(m.path / "df.csv"), df)
    df.to_parquet(m.path / "df.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(m.path / "df.parquet"), df)
    assert art("df.parquet").suffix == ".parquet"
    rng = np.random.default_rng(1)
    adata = ad.AnnData(X=rng.random((200, 30), dtype=np.float32),
                       obs=pd.DataFrame(index=[f"c{i}" for i in range(200)]))
    adata.write_h5ad(m.path / "a.h5ad")
    with h5py.File(m.path / "a.h5ad", "r") as f:
        np.testing.assert_array_equal(f["X"][50:60, 3:7], adata.X[50:60, 3:7])
    # a folder artifact (zarr) added through the API is readable through the mount
    adata.write_zarr(m.path.parent / "z.zarr")
    lamfs.Artifact(m.path.parent / "z.zarr", key="z.zarr").save()
    m.run("sleep 1.2")
    back = ad.read_zarr(m.path / "z.zarr")
    np.testing.assert_array_equal(back.X, adata.X)
    with pytest.raises(OSError) as err:
        (m.path / "z.zarr" / "new.txt").write_text("x")
    assert err.value.errno in (errno.EROFS, errno.EACCES)


def test_xattrs(mounted):
    m = mounted
    m.run(f"cp {DATA}/iris.csv a.csv")
    a = art("a.csv")
    out = m.run("getfattr -d a.csv").stdout
    assert f'user.lamfs.uid="{a.uid}"' in out and 'user.lamfs.hash="iwc1TmF1TW_l5weDvscSHw"' in out
    assert os.getxattr(m.path / "a.csv", "user.lamfs.storage_path").decode() == str(a.path)
    m.run("setfattr -n user.lamfs.description -v 'my iris' a.csv")
    assert art("a.csv").description == "my iris"
    with pytest.raises(OSError) as err:
        os.setxattr(m.path / "a.csv", "user.lamfs.hash", b"x")
    assert err.value.errno == errno.EPERM


def test_bad_input(mounted):
    m = mounted
    with pytest.raises(OSError) as err:
        (m.path / ("n" * 256)).write_text("x")
    assert err.value.errno == errno.ENAMETOOLONG
    for reserved in (".lamindb", ".lamfs/x", ".lamfs/by-uid/y"):
        with pytest.raises(OSError) as err:
            (m.path / reserved).write_text("x")
        assert err.value.errno in (errno.EPERM, errno.EROFS, errno.EACCES), reserved
    with pytest.raises(OSError) as err:
        os.mkdir(m.path / ".lamindb")
    assert err.value.errno == errno.EPERM
    with pytest.raises(OSError) as err:
        os.symlink("x", m.path / "link")
    assert err.value.errno == errno.EPERM
    m.run(f"cp {DATA}/iris.csv a.csv")
    with pytest.raises(OSError) as err:
        os.link(m.path / "a.csv", m.path / "hard")
    assert err.value.errno == errno.EPERM
    odd = ["100%_done.csv", "back\\slash.txt", "with space.txt", "Ünïcödé ✓.txt", "MiXeD.TXT", "mixed.txt"]
    for name in odd:
        (m.path / name).write_bytes(name.encode())
    names = set(os.listdir(m.path))
    assert set(odd) <= names
    for name in odd:
        assert (m.path / name).read_bytes() == name.encode()
        assert art(name).key == name
    assert [a.key for a in lamfs.Artifact.filter(key__startswith="100%_")] == ["100%_done.csv"]
    assert lamfs.Artifact.filter(key__startswith="100_") == []


def test_keyless_artifacts_under_by_uid(mounted, data_dir):
    m = mounted
    a = lamfs.Artifact(data_dir / "iris.data", description="no key").save()
    m.run("sleep 1.2")
    entry = m.path / ".lamfs" / "by-uid" / f"{a.uid}.data"
    assert entry.read_bytes() == (DATA / "iris.data").read_bytes()
    assert f"{a.uid}.data" in os.listdir(m.path / ".lamfs" / "by-uid")
    with pytest.raises(OSError):
        entry.write_text("x")
    assert ".lamindb" not in os.listdir(m.path)


def test_api_change_visible_and_reader_keeps_version(mounted, data_dir):
    m = mounted
    m.run(f"cp {DATA}/iris.csv a.csv")
    with open(m.path / "a.csv", "rb") as reader:
        first = reader.read(10)
        a = art("a.csv")
        a.replace(data_dir / "new_iris.csv")
        a.save()
        rest = reader.read()
    assert first + rest == (DATA / "iris.csv").read_bytes()  # the version it opened
    m.run("sleep 1.2")
    assert (m.path / "a.csv").read_bytes() == (DATA / "new_iris.csv").read_bytes()


def test_chmod_utimens_cp_p_rsync_a(mounted):
    m = mounted
    src = m.path.parent / "srcdir"
    src.mkdir()
    (src / "f.txt").write_text("hello")
    os.utime(src / "f.txt", ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    m.run(f"cp -p {src}/f.txt p.txt")
    assert os.stat(m.path / "p.txt").st_mtime_ns == 1_600_000_000_000_000_000
    m.run(f"rsync -a {src}/ synced/")
    assert (m.path / "synced" / "f.txt").read_text() == "hello"
    assert os.stat(m.path / "synced" / "f.txt").st_mtime_ns == 1_600_000_000_000_000_000
    os.chmod(m.path / "p.txt", 0o600)
    assert os.stat(m.path / "p.txt").st_mode & 0o777 == 0o600
    s = os.statvfs(m.path)
    assert s.f_namemax == 255 and s.f_bavail > 0
