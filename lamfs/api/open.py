"""`artifact.open()` / `lamfs.open()` and `artifact.load()`.

open() reads straight from storage (ranged reads for S3 roots, in place for local roots) and never
fills the cache; every result is a context manager that releases its connections. load() brings
the whole artifact into memory through `cache()`.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..storage.fsspec_fs import filesystem_for


class _Closing:
    """Mixin: context manager over a close() method."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class AnnDataAccessor(_Closing):
    """Backed AnnData-style access over a zarr group or an h5py file: `.obs` and `.var` load on
    first use (small), `.X` and `.layers[...]` stay lazy (zarr/h5py arrays, sliceable)."""

    def __init__(self, group, closer=None):
        self._group = group
        self._closer = closer
        self._cache: dict = {}

    def _elem(self, name):
        from anndata.io import read_elem

        if name not in self._cache:
            self._cache[name] = read_elem(self._group[name])
        return self._cache[name]

    @property
    def obs(self):
        return self._elem("obs")

    @property
    def var(self):
        return self._elem("var")

    @property
    def obs_names(self):
        return self.obs.index

    @property
    def var_names(self):
        return self.var.index

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.obs), len(self.var))

    @property
    def n_obs(self) -> int:
        return self.shape[0]

    @property
    def X(self):
        x = self._group["X"]
        if hasattr(x, "shape"):
            return x  # dense: a lazy zarr / h5py array
        from anndata.experimental import sparse_dataset

        return sparse_dataset(x)

    @property
    def layers(self):
        return self._group["layers"] if "layers" in self._group else {}

    def __contains__(self, name: str) -> bool:
        return name in self._group

    def __getitem__(self, name: str):
        return self._group[name]

    def to_memory(self):
        from anndata.io import read_elem

        return read_elem(self._group)

    def close(self) -> None:
        if self._closer is not None:
            self._closer()
            self._closer = None

    def __repr__(self) -> str:
        return f"AnnDataAccessor(n_obs={self.n_obs}, n_vars={len(self.var)}, keys={list(self._group.keys())})"


class ZarrGroup(_Closing):
    def __init__(self, group):
        self.group = group

    def __getattr__(self, name):
        return getattr(self.group, name)

    def __getitem__(self, name):
        return self.group[name]

    def __contains__(self, name):
        return name in self.group

    def close(self) -> None:
        pass


class DatasetHandle(_Closing):
    """A pyarrow dataset plus the filesystem it reads through."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __getattr__(self, name):
        return getattr(self.dataset, name)

    def to_pandas(self, **kwargs):
        return self.dataset.to_table(**kwargs).to_pandas()

    def close(self) -> None:
        pass


def _is_anndata_zarr(group) -> bool:
    return group.attrs.get("encoding-type") == "anndata"


def open_storage_path(root: str, storage_key: str, suffix: str, *, is_folder: bool):
    """Open the object at `storage_key` under `root` in the natural form for its suffix."""
    fs, base = filesystem_for(root)
    path = f"{base.rstrip('/')}/{storage_key}"
    if suffix.endswith(".zarr"):
        import zarr
        from zarr.storage import FsspecStore, LocalStore

        store = LocalStore(path, read_only=True) if not root.startswith("s3://") else FsspecStore(
            fs=_async_fs(root), path=path, read_only=True)
        group = zarr.open_group(store=store, mode="r")
        return AnnDataAccessor(group) if _is_anndata_zarr(group) else ZarrGroup(group)
    if suffix in (".h5ad", ".h5", ".hdf5"):
        import h5py

        # HDF5 jumps between metadata and data: small cached blocks, not one long read-ahead
        handle = fs.open(path, "rb", block_size=256 << 10, cache_type="blockcache") if root.startswith("s3://") \
            else open(path, "rb")
        h5 = h5py.File(handle, "r")

        def closer():
            h5.close()
            handle.close()

        if suffix == ".h5ad":
            return AnnDataAccessor(h5, closer)
        return _H5File(h5, closer)
    if suffix in (".parquet", ".csv", ".tsv", ".arrow", ".feather", ".ipc"):
        import pyarrow.csv as pacsv
        import pyarrow.dataset as ds

        from ..storage.fsspec_fs import arrow_filesystem_for

        fmt = {".parquet": "parquet", ".csv": "csv",
               ".tsv": ds.CsvFileFormat(parse_options=pacsv.ParseOptions(delimiter="\t")),
               ".arrow": "ipc", ".feather": "ipc", ".ipc": "ipc"}[suffix]
        filesystem, arrow_base = arrow_filesystem_for(root)
        return DatasetHandle(ds.dataset(f"{arrow_base.rstrip('/')}/{storage_key}", format=fmt, filesystem=filesystem))
    if is_folder:
        raise ValueError(f"cannot open a folder artifact with suffix {suffix!r}; use cache()")
    handle = fs.open(path, "rb", block_size=1 << 20, cache_type="readahead") if root.startswith("s3://") \
        else open(path, "rb")
    return handle


class _H5File(_Closing):
    def __init__(self, h5, closer):
        self.file = h5
        self._closer = closer

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __getitem__(self, name):
        return self.file[name]

    def __contains__(self, name):
        return name in self.file

    def close(self) -> None:
        self._closer()


def _async_fs(root: str):
    fs, _ = filesystem_for(root)
    import s3fs

    return s3fs.S3FileSystem(asynchronous=True, client_kwargs=fs.client_kwargs, skip_instance_cache=True,
                             config_kwargs=fs.config_kwargs)


def open_artifact(artifact, **_kwargs):
    from .settings import settings

    record = settings.service.refresh(artifact._record)
    return open_storage_path(settings.instance.storage.root, record.storage_key, record.suffix,
                             is_folder=record.is_folder)


def load(artifact):
    path = Path(artifact.cache())
    suffix = artifact.suffix
    if suffix == ".csv":
        import pandas as pd

        return pd.read_csv(path)
    if suffix == ".tsv":
        import pandas as pd

        return pd.read_csv(path, sep="\t")
    if suffix == ".parquet":
        import pandas as pd

        return pd.read_parquet(path)
    if suffix == ".h5ad":
        import anndata as ad

        return ad.read_h5ad(path)
    if suffix.endswith(".zarr") and artifact.otype == "AnnData":
        import anndata as ad

        return ad.read_zarr(path)
    if suffix == ".json":
        return json.loads(path.read_text())
    if path.is_dir():
        return path
    return path.read_bytes()


def _lamfs_mount_of(path: str) -> tuple[str, str] | None:
    """(mountpoint, instance name) of the lamfs mount holding `path`, from /proc/self/mounts."""
    best = None
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                source, mountpoint, fstype = line.split()[:3]
                mountpoint = mountpoint.replace("\\040", " ")
                if fstype != "fuse.lamfs" or not source.startswith("lamfs:"):
                    continue
                if path == mountpoint or path.startswith(mountpoint.rstrip("/") + "/"):
                    if best is None or len(mountpoint) > len(best[0]):
                        best = (mountpoint, source[len("lamfs:"):])
    except OSError:
        return None
    return best


def open_mount_path(path: str, **_kwargs):
    """Open a path inside a running lamfs mount straight from storage: the uid comes from the
    `user.lamfs.uid` xattr (a metadata call, no data read through FUSE), the storage location
    from the mount's instance."""
    import os

    from .. import instance as inst

    found = _lamfs_mount_of(os.path.abspath(path))
    if found is None:
        return None
    _mountpoint, name = found
    uid = os.getxattr(path, "user.lamfs.uid").decode()
    from .settings import settings

    if settings._instance is not None and settings._instance.name == name:
        instance, owned = settings._instance, False
    else:
        instance, owned = inst.Instance(inst.load_config(name)), True
    try:
        record = instance.service.get(uid=uid)
        return open_storage_path(instance.storage.root, record.storage_key, record.suffix,
                                 is_folder=record.is_folder)
    finally:
        if owned:
            instance.catalog.close()
