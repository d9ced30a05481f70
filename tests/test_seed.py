"""A port of the LaminDB notebook in ../shared/seeds/000_89b20b6c72d7a3b1.txt (add, replace, cache,
delete), run against a local root and an S3 root on the local S3 server. Sizes, hashes, storage
paths, messages and error texts are the seed's."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest


def messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("lamfs")]


def synthetic_anndata():
    import anndata as ad

    rng = np.random.default_rng(0)
    obs = pd.DataFrame({"cell_type": rng.choice(["B", "T", "NK"], 60)}, index=[f"cell{i}" for i in range(60)])
    var = pd.DataFrame(index=[f"gene{i}" for i in range(25)])
    return ad.AnnData(X=rng.random((60, 25), dtype=np.float32), obs=obs, var=var)


def test_seed_notebook(lf, data_dir, caplog, tmp_path):
    AUTO_KEY_PREFIX = lf.AUTO_KEY_PREFIX
    root = lf.settings.storage.root
    assert AUTO_KEY_PREFIX == ".lamindb/"

    # -- Save with auto-managed (key=None)
    artifact = lf.Artifact(data_dir / "iris.csv", description="iris.csv")
    artifact.save()
    assert (artifact.size, artifact.hash, artifact.suffix) == (224, "iwc1TmF1TW_l5weDvscSHw", ".csv")
    assert artifact.uid.endswith("0000") and len(artifact.uid) == 20 and artifact.key is None
    assert artifact.otype == "DataFrame"
    key_path = root / f"{AUTO_KEY_PREFIX}{artifact.uid}{artifact.suffix}"
    assert key_path.exists()
    cache_csv_path = artifact.cache()
    assert cache_csv_path.suffix == ".csv"
    assert cache_csv_path.read_bytes() == (data_dir / "iris.csv").read_bytes()
    uid = artifact.uid
    artifact.replace(data_dir / "iris.data")
    artifact.save()
    assert (artifact.uid, artifact.size, artifact.hash, artifact.suffix) == (uid, 182, "42Br6no9CjB6s5ZbmO-bmw", ".data")
    old_key_path = key_path
    new_key_path = root / f"{AUTO_KEY_PREFIX}{artifact.uid}{artifact.suffix}"
    assert not old_key_path.exists()
    assert new_key_path.exists()
    cache_data_path = artifact.cache()
    assert cache_data_path.suffix == ".data"
    assert cache_data_path.read_bytes() == (data_dir / "iris.data").read_bytes()
    assert cache_data_path.stat().st_mtime >= cache_csv_path.stat().st_mtime if cache_csv_path.exists() else True
    artifact.delete(permanent=True)
    assert not new_key_path.exists()
    assert lf.Artifact.filter(uid=uid) == []

    # -- Save with manually passed real key
    lf.settings.creation._artifact_use_virtual_keys = False
    artifact = lf.Artifact(data_dir / "iris.csv", key="iris.csv")
    artifact.save()
    key_path = root / "iris.csv"
    assert key_path.exists()
    caplog.clear()
    artifact.replace(data_dir / "new_iris.csv")
    artifact.save()
    assert (artifact.size, artifact.hash, artifact.key) == (229, "lp2-ycXcKcaliUTnR_TqHA", "iris.csv")
    if root.__class__.__name__ == "StoragePath":
        assert any(m.startswith("replacing the existing cache path") and m.endswith("iris.csv") for m in messages(caplog))
    old_key_path = key_path
    new_key_path = root / "new_iris.csv"
    assert old_key_path.exists()
    assert not new_key_path.exists()
    caplog.clear()
    artifact.replace(data_dir / "iris.data")
    assert "replacing the file will replace key 'iris.csv' with 'iris.data' and delete 'iris.csv' upon `save()`" \
        in messages(caplog)
    artifact.save()
    assert (artifact.key, artifact.size, artifact.hash, artifact.suffix) == ("iris.data", 182, "42Br6no9CjB6s5ZbmO-bmw", ".data")
    new_key_path = root / "iris.data"
    assert not old_key_path.exists()
    assert new_key_path.exists()
    artifact.delete(permanent=True, storage=True)
    assert not new_key_path.exists()

    # -- Save from memory
    iris = pd.read_csv(data_dir / "iris.csv")
    artifact = lf.Artifact.from_dataframe(iris, description="iris_store", key="iris.parquet")
    artifact.save()
    assert (artifact.suffix, artifact.kind, artifact.otype, artifact.n_observations) == (".parquet", "dataset", "DataFrame", 6)
    parquet_hash = artifact.hash
    key_path = root / "iris.parquet"
    assert key_path.exists()
    artifact.replace(data=iris[:-1])
    assert artifact.key == "iris.parquet"
    artifact.save()
    assert artifact.hash != parquet_hash and artifact.n_observations == 5
    assert key_path.exists()
    pd.testing.assert_frame_equal(artifact.load(), iris[:-1])
    caplog.clear()
    artifact.replace(data_dir / "new_iris.csv")
    assert "replacing the file will replace key 'iris.parquet' with 'iris.csv' and delete 'iris.parquet' upon `save()`" \
        in messages(caplog)
    artifact.save()
    assert (artifact.key, artifact.size, artifact.hash, artifact.suffix) == ("iris.csv", 229, "lp2-ycXcKcaliUTnR_TqHA", ".csv")
    old_key_path = key_path
    new_key_path = root / "iris.csv"
    assert not old_key_path.exists()
    assert new_key_path.exists()
    path_in_storage = artifact.path
    caplog.clear()
    artifact.delete(permanent=True, storage=False)
    assert f"a file/folder remains here: {path_in_storage}" in messages(caplog)
    assert path_in_storage.exists()

    # -- Save with manually passed virtual key
    lf.settings.creation._artifact_use_virtual_keys = True
    artifact = lf.Artifact(data_dir / "iris.csv", key="iris.csv")
    artifact.save()
    assert artifact.storage_key == f".lamindb/{artifact.uid}.csv"
    with pytest.raises(ValueError) as err:
        artifact.replace(path_in_storage)
    assert str(err.value).startswith("Can only replace with a local path not in any Storage.")
    caplog.clear()
    assert artifact == artifact.replace(data_dir / "iris.csv")
    assert any(m.startswith("returning artifact with same hash") for m in messages(caplog))
    fpath = artifact.path
    assert fpath.suffix == ".csv" and fpath.stem == artifact.uid
    caplog.clear()
    artifact.replace(data_dir / "iris.data")
    assert not any(m.startswith("replacing the file will replace key") for m in messages(caplog))
    artifact.save()
    assert artifact.key == "iris.data"
    assert not fpath.exists()
    fpath = artifact.path
    assert fpath.suffix == ".data" and fpath.stem == artifact.uid
    artifact.delete(permanent=True, storage=True)
    assert not fpath.exists()

    # -- Save in existing storage with a virtual key
    artifact = lf.Artifact(path_in_storage, key="iris_test.csv").save()
    assert artifact._real_key.endswith("iris.csv")
    assert artifact.hash == "lp2-ycXcKcaliUTnR_TqHA"
    caplog.clear()
    artifact.replace(data_dir / "iris.data")
    assert ("replacing the file will replace key 'iris_test.csv' with 'iris_test.data', _real_key 'iris.csv' with "
            "'iris.data' and delete 'iris.csv' upon `save()`") in messages(caplog)
    assert artifact._real_key.endswith("iris.data")
    assert artifact._clear_storagekey.endswith("iris.csv")
    assert artifact.key == "iris_test.data"
    artifact.save()
    assert (artifact.size, artifact.hash) == (182, "42Br6no9CjB6s5ZbmO-bmw")
    path = artifact.path
    assert path.name == "iris.data"
    assert path.exists()
    assert not path_in_storage.exists()
    artifact.delete(permanent=True, storage=True)
    assert not path.exists()

    # -- Replace with folder artifacts
    adata = synthetic_anndata()
    zarr_path = data_dir / "pbmc68k.zarr"
    adata.write_zarr(zarr_path)
    artifact = lf.Artifact(zarr_path, key="pbmc68k.zarr").save()
    assert artifact.otype == "AnnData" and artifact.n_files > 1
    save_hash, save_n_files = artifact.hash, artifact.n_files
    with pytest.raises(ValueError) as err:
        artifact.replace(data_dir / "iris.csv")
    assert err.exconly().endswith("It is not allowed to replace a folder with a file.")
    assert save_hash is not None
    assert artifact.path.is_dir()
    adata.obs["add_new_col"] = "new"
    adata.obsm["extra"] = np.zeros((adata.n_obs, 2))  # more files, as in the seed's n_files change
    new_path = data_dir / "pbmc68k_new.zarr"
    adata.write_zarr(new_path)
    artifact.replace(new_path)
    artifact.save()
    assert artifact.key == "pbmc68k.zarr"
    assert artifact.hash != save_hash
    assert artifact.n_files != save_n_files
    assert artifact.path.is_dir()
    if root.__class__.__name__ == "StoragePath":
        shutil.rmtree(artifact.cache())
    with artifact.open() as store:
        assert "add_new_col" in store.obs
    # open() read from storage without syncing
    if root.__class__.__name__ == "StoragePath":
        assert not artifact._cache_path.exists()
    shutil.rmtree(zarr_path)
    shutil.rmtree(new_path)
    folder_path = artifact.path
    artifact.delete(permanent=True, storage=True)
    assert not folder_path.exists()
    assert lf.Artifact.filter(include_trashed=True) == []
