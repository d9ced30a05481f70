"""`artifact.open()` / `lamfs.open()` read straight from storage: the right object per format, the
right values, no cache fill, and for S3 only a fraction of the bytes for a one-column / one-slice
read (counted at the S3 server)."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

import lamfs


@pytest.fixture
def s3_lf(lamfs_home, s3_bucket):
    lamfs.setup.init(storage=f"{s3_bucket}/open")
    return lamfs


def _anndata(n_obs=2000, n_vars=400):
    import anndata as ad

    rng = np.random.default_rng(7)
    obs = pd.DataFrame({"cell_type": pd.Categorical(rng.choice(["B", "T"], n_obs))},
                       index=[f"c{i}" for i in range(n_obs)])
    return ad.AnnData(X=rng.random((n_obs, n_vars), dtype=np.float32), obs=obs,
                      var=pd.DataFrame(index=[f"g{i}" for i in range(n_vars)]))


def _bytes_out(server) -> int:
    return server.stats()["bytes_out"]


def test_open_zarr_anndata_reads_a_slice(s3_lf, s3_server, tmp_path):
    adata = _anndata()
    adata.write_zarr(tmp_path / "a.zarr", chunks=(100, 100))
    a = lamfs.Artifact(tmp_path / "a.zarr", key="a.zarr").save()
    cache_path = a.cache_path
    if cache_path.exists():
        import shutil

        shutil.rmtree(cache_path)
    s3_server.reset_stats()
    with a.open() as store:
        assert type(store).__name__ == "AnnDataAccessor"
        assert list(store.obs.index[:3]) == ["c0", "c1", "c2"]
        np.testing.assert_array_equal(store.X[100:200, 0:100], adata.X[100:200, 0:100])
    assert not cache_path.exists()
    assert _bytes_out(s3_server) < a.size / 4, (s3_server.stats()["bytes_out"], a.size)


def test_open_h5ad_reads_a_slice(s3_lf, s3_server, tmp_path):
    adata = _anndata()
    adata.write_h5ad(tmp_path / "a.h5ad")
    a = lamfs.Artifact(tmp_path / "a.h5ad", key="a.h5ad").save()
    lamfs.settings.service.copies.remove(lamfs.settings.service.cache_rel(a._record))
    s3_server.reset_stats()
    with lamfs.open(a) as store:
        assert store.obs["cell_type"].tolist()[:5] == adata.obs["cell_type"].tolist()[:5]
        np.testing.assert_array_equal(store.X[10:20], adata.X[10:20])
    assert not a.cache_path.exists()
    assert _bytes_out(s3_server) < a.size / 4, (_bytes_out(s3_server), a.size)


def test_open_parquet_reads_one_column(s3_lf, s3_server, tmp_path):
    rng = np.random.default_rng(3)
    df = pd.DataFrame({f"c{i}": rng.random(50_000) for i in range(20)})
    path = tmp_path / "wide.parquet"
    df.to_parquet(path, row_group_size=10_000)
    a = lamfs.Artifact(path, key="wide.parquet").save()
    lamfs.settings.service.copies.remove(lamfs.settings.service.cache_rel(a._record))
    s3_server.reset_stats()
    with lamfs.open("wide.parquet") as ds:
        table = ds.to_table(columns=["c7"])
    np.testing.assert_array_equal(table.column("c7").to_numpy(), df["c7"].to_numpy())
    assert not a.cache_path.exists()
    assert _bytes_out(s3_server) < a.size / 5, (_bytes_out(s3_server), a.size)


def test_open_csv_and_other_files(s3_lf, tmp_path):
    df = pd.DataFrame({"x": [1, 2, 3], "y": ["a", "b", "c"]})
    df.to_csv(tmp_path / "t.csv", index=False)
    a = lamfs.Artifact(tmp_path / "t.csv", key="t.csv").save()
    with a.open() as ds:
        pd.testing.assert_frame_equal(ds.to_pandas(), df)
    payload = os.urandom(3 << 20)
    (tmp_path / "blob.bin").write_bytes(payload)
    b = lamfs.Artifact(tmp_path / "blob.bin", key="blob.bin").save()
    with b.open() as f:
        f.seek(1 << 20)
        assert f.read(100) == payload[1 << 20:(1 << 20) + 100]
        f.seek(-10, os.SEEK_END)
        assert f.read() == payload[-10:]


def test_open_after_replace_sees_new_content(s3_lf, tmp_path):
    pd.DataFrame({"v": [1]}).to_parquet(tmp_path / "v1.parquet")
    pd.DataFrame({"v": [2, 3]}).to_parquet(tmp_path / "v2.parquet")
    a = lamfs.Artifact(tmp_path / "v1.parquet", key="v.parquet").save()
    with a.open() as ds:
        assert ds.to_pandas()["v"].tolist() == [1]
    a.replace(tmp_path / "v2.parquet")
    a.save()
    with lamfs.open("v.parquet") as ds:
        assert ds.to_pandas()["v"].tolist() == [2, 3]


def test_load(s3_lf, tmp_path):
    df = pd.DataFrame({"x": [1, 2]})
    a = lamfs.Artifact.from_dataframe(df, key="d.parquet").save()
    pd.testing.assert_frame_equal(a.load(), df)
    adata = _anndata(50, 10)
    b = lamfs.Artifact.from_anndata(adata, key="s.h5ad").save()
    np.testing.assert_array_equal(b.load().X, adata.X)
    (tmp_path / "n.txt").write_bytes(b"hello")
    assert lamfs.Artifact(tmp_path / "n.txt", key="n.txt").save().load() == b"hello"


@pytest.mark.mount
def test_open_mount_path_reads_storage_not_fuse(s3_bucket, s3_server, mount_factory, tmp_path):
    m = mount_factory(f"{s3_bucket}/open-mnt")
    lamfs.setup.connect(m.instance)
    adata = _anndata(300, 50)
    adata.obs["add_new_col"] = "new"
    adata.write_zarr(tmp_path / "x.zarr")
    lamfs.Artifact(tmp_path / "x.zarr", key="sub/x.zarr").save()
    lamfs.setup.disconnect()  # lamfs.open must find the instance from the mount itself
    m.run("sleep 1.2")
    s3_server.reset_stats()
    with lamfs.open(str(m.path / "sub" / "x.zarr")) as store:
        assert "add_new_col" in store.obs
        np.testing.assert_array_equal(store.X[5:9], adata.X[5:9])
    assert s3_server.stats()["gets"] > 0  # read from S3 ...
    m.run("sleep 2.5")  # the daemon publishes its cache counters every 2 s
    import json

    from .conftest_mount import lamfs_cli

    stats = json.loads(lamfs_cli("cache", "stats", "--json", "--instance", m.instance, env=m.env).stdout)
    assert stats["bytes_fetched"] == 0 and stats["misses"] == 0  # ... not through the mount
