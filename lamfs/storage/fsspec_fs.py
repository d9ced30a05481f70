"""fsspec filesystems for reading artifacts in place (zarr stores, ranged file objects for h5py,
pyarrow datasets), configured from the same boto3-style environment as `s3.py`
(AWS_ENDPOINT_URL, credentials chain, region). Imports fsspec/s3fs lazily."""
from __future__ import annotations

import os


def filesystem_for(root: str):
    """(fs, base_path) for a storage root: s3fs for s3:// roots, the local filesystem otherwise."""
    if root.startswith("s3://"):
        import s3fs

        client_kwargs = {}
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            client_kwargs["endpoint_url"] = endpoint
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            client_kwargs["region_name"] = region
        # fresh instance (no fsspec instance cache): each open() gets its own connections to close
        fs = s3fs.S3FileSystem(client_kwargs=client_kwargs, skip_instance_cache=True,
                               config_kwargs={"s3": {"addressing_style": "path"}})
        return fs, root[len("s3://"):]
    from fsspec.implementations.local import LocalFileSystem

    return LocalFileSystem(), root


def arrow_filesystem_for(root: str):
    """(pyarrow filesystem, base_path): Arrow's native S3 client does ranged column-chunk reads;
    configured from the same AWS environment as boto3."""
    if root.startswith("s3://"):
        from urllib.parse import urlparse

        from pyarrow import fs as pafs

        kwargs = {}
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            parsed = urlparse(endpoint)
            kwargs["endpoint_override"] = parsed.netloc + parsed.path.rstrip("/")
            kwargs["scheme"] = parsed.scheme or "https"
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            kwargs["region"] = region
        if os.environ.get("AWS_ACCESS_KEY_ID"):
            kwargs["access_key"] = os.environ["AWS_ACCESS_KEY_ID"]
            kwargs["secret_key"] = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
            if os.environ.get("AWS_SESSION_TOKEN"):
                kwargs["session_token"] = os.environ["AWS_SESSION_TOKEN"]
        return pafs.S3FileSystem(**kwargs), root[len("s3://"):]
    from pyarrow import fs as pafs

    return pafs.LocalFileSystem(), root
