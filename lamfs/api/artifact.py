"""`lamfs.Artifact`: LaminDB's artifact API over the service layer. Holds either a saved record, or
a pending draft (new or replace) that `save()` commits."""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from ..catalog import ArtifactRecord
from ..errors import NotFound
from ..keys import AUTO_KEY_PREFIX, extract_suffix
from ..service import Draft, ReplaceDraft
from .paths import storage_path
from .settings import settings

log = logging.getLogger("lamfs")

FIELDS = ("uid", "key", "description", "suffix", "kind", "otype", "size", "hash", "n_files", "n_observations",
          "version_tag", "is_latest")


class ArtifactList(list):
    def first(self):
        return self[0] if self else None

    def one(self):
        if len(self) != 1:
            raise NotFound(f"expected exactly one artifact, found {len(self)}")
        return self[0]


def _write_object(data: Any, suffix: str) -> tuple[Path, list[Path], dict]:
    """Serialize an in-memory DataFrame / AnnData to a temp file; returns (path, cleanup, fields)."""
    import pandas as pd

    tmpdir = Path(tempfile.mkdtemp(prefix="lamfs-obj-"))
    path = tmpdir / f"object{suffix}"
    if isinstance(data, pd.DataFrame):
        if suffix == ".csv":
            data.to_csv(path, index=False)
        else:
            data.to_parquet(path)
        return path, [tmpdir], {"kind": "dataset", "otype": "DataFrame", "n_observations": len(data)}
    try:
        import anndata as ad
    except ImportError:  # pragma: no cover - anndata is a dependency
        ad = None
    if ad is not None and isinstance(data, ad.AnnData):
        if suffix.endswith(".zarr"):
            data.write_zarr(path)
        else:
            data.write_h5ad(path)
        return path, [tmpdir], {"kind": "dataset", "otype": "AnnData", "n_observations": data.n_obs}
    raise ValueError(f"cannot store an object of type {type(data).__name__}: pass a path, DataFrame or AnnData")


class Artifact:
    def __init__(self, path=None, key: str | None = None, description: str | None = None, *,
                 revises: "Artifact | None" = None, kind: str | None = None, _record: ArtifactRecord | None = None,
                 _fields: dict | None = None, _cleanup: list[Path] | None = None):
        self._record: ArtifactRecord | None = _record
        self._draft: Draft | None = None
        self._replace: ReplaceDraft | None = None
        if _record is not None:
            return
        if path is None:
            raise ValueError("pass a path (or use Artifact.from_dataframe / from_anndata)")
        fields = dict(_fields or {})
        if kind is not None:
            fields["kind"] = kind
        service = settings.service
        if key is not None and not fields and "://" not in str(path):
            path_suffix, key_suffix = extract_suffix(Path(str(path)).name), extract_suffix(key.rsplit("/", 1)[-1])
            if path_suffix != key_suffix:
                raise ValueError(
                    f"The suffix '{key_suffix}' of the provided key is incorrect, it should be '{path_suffix}'."
                )
        result = service.draft(path, key=key, description=description, cleanup=_cleanup,
                               revises=revises._record if revises is not None else None, **fields)
        if isinstance(result, ArtifactRecord):
            self._record = result
            log.info("returning artifact with same hash: %r; to track this artifact as an input, use: "
                     "lf.Artifact.get()", self)
        else:
            self._draft = result

    # -- constructors ----------------------------------------------------------------------------

    @classmethod
    def from_dataframe(cls, df, key: str | None = None, description: str | None = None, **kwargs) -> "Artifact":
        suffix = ".csv" if key is not None and key.endswith(".csv") else ".parquet"
        path, cleanup, fields = _write_object(df, suffix)
        return cls(path, key=key, description=description, _fields=fields, _cleanup=cleanup, **kwargs)

    from_df = from_dataframe

    @classmethod
    def from_anndata(cls, adata, key: str | None = None, description: str | None = None, format: str | None = None,
                     **kwargs) -> "Artifact":
        if format is None:
            format = "zarr" if key is not None and key.endswith(".zarr") else "h5ad"
        if format not in ("h5ad", "zarr"):
            raise ValueError(f"format must be 'h5ad' or 'zarr', not {format!r}")
        path, cleanup, fields = _write_object(adata, f".{format}")
        return cls(path, key=key, description=description, _fields=fields, _cleanup=cleanup, **kwargs)

    @classmethod
    def _wrap(cls, record: ArtifactRecord) -> "Artifact":
        return cls(_record=record)

    @classmethod
    def get(cls, key: str | None = None, *, uid: str | None = None, **kwargs) -> "Artifact":
        if key is None and uid is None and kwargs:
            return cls.filter(**kwargs).one()
        if key is not None and len(key) in (16, 20) and "/" not in key and "." not in key and uid is None:
            try:  # LaminDB's Artifact.get("uid")
                return cls._wrap(settings.service.get(uid=key))
            except NotFound:
                pass
        return cls._wrap(settings.service.get(uid=uid, key=key))

    @classmethod
    def filter(cls, *, key__startswith: str | None = None, include_trashed: bool = False, **equal) -> ArtifactList:
        records = settings.service.catalog.filter_artifacts(key_prefix=key__startswith,
                                                             include_trashed=include_trashed, **equal)
        return ArtifactList(cls._wrap(r) for r in records)

    # -- fields ----------------------------------------------------------------------------------

    def _current(self) -> dict:
        if self._draft is not None:
            d = self._draft
            return {"uid": d.uid, "key": d.key, "description": d.description, "suffix": d.suffix, "kind": d.kind,
                    "otype": d.otype, "size": d.content.size, "hash": d.content.hash, "hash_type": d.content.hash_type,
                    "n_files": d.content.n_files, "n_observations": d.n_observations, "version_tag": None,
                    "is_latest": True, "storage_key": d.storage_key, "created_at": None, "updated_at": None}
        rec = self._record
        values = {f: getattr(rec, f) for f in FIELDS + ("hash_type", "storage_key", "created_at", "updated_at")}
        if self._replace is not None:
            r = self._replace
            values.update(key=r.key, suffix=r.suffix, size=r.content.size, hash=r.content.hash,
                          hash_type=r.content.hash_type, n_files=r.content.n_files, storage_key=r.storage_key,
                          otype=r.otype, kind=r.kind, n_observations=r.n_observations)
        return values

    def __getattr__(self, name: str):
        if name.startswith("__") or name in ("_record", "_draft", "_replace"):
            raise AttributeError(name)
        values = self._current()
        if name in values:
            return values[name]
        raise AttributeError(f"'Artifact' object has no attribute {name!r}")

    @property
    def is_saved(self) -> bool:
        return self._record is not None

    @property
    def _real_key(self) -> str | None:
        storage_key = self._current()["storage_key"]
        return None if storage_key.startswith(AUTO_KEY_PREFIX) else storage_key

    @property
    def _clear_storagekey(self) -> str | None:
        return self._replace.old_storage_key if self._replace is not None else None

    @property
    def path(self):
        if self._record is None and self._draft is not None and not self._draft.in_place:
            return self._draft.source
        return storage_path(settings.instance.storage, self._current()["storage_key"])

    @property
    def cache_path(self) -> Path:
        self._require_saved()
        return settings.service.cache_path(self._record)

    _cache_path = cache_path

    @property
    def versions(self) -> ArtifactList:
        self._require_saved()
        return ArtifactList(Artifact._wrap(r) for r in settings.service.catalog.versions(self._record.stem_uid))

    def _require_saved(self) -> None:
        if self._record is None:
            raise ValueError("save the artifact first: artifact.save()")

    # -- lifecycle -------------------------------------------------------------------------------

    def save(self) -> "Artifact":
        service = settings.service
        if self._draft is not None:
            self._record = service.save(self._draft)
            self._draft = None
        elif self._replace is not None:
            self._record = service.replace(self._replace)
            self._replace = None
        return self

    def replace(self, data=None, **kwargs) -> "Artifact":
        """Stage new bytes (a local path, DataFrame or AnnData) for this artifact; `save()` commits."""
        if data is None:
            data = kwargs.pop("path", None)
        self._require_saved()
        service = settings.service
        record = service.refresh(self._record)
        if isinstance(data, (str, Path)) or hasattr(data, "storage"):
            draft = service.draft_replace(record, data)
        else:
            suffix = record.suffix if record.suffix in (".csv", ".parquet", ".h5ad", ".zarr") else ".parquet"
            path, cleanup, fields = _write_object(data, suffix)
            draft = service.draft_replace(record, path, suffix=suffix, cleanup=cleanup, **fields)
        self._record = record
        if draft is None:
            self._replace = None
            log.info("returning artifact with same hash: %r; to track this artifact as an input, use: "
                     "lf.Artifact.get()", self)
            return self
        if draft.message:
            log.warning(draft.message)
        self._replace = draft
        return self

    def cache(self) -> Path:
        if self._record is None and self._draft is not None:
            return self._draft.source
        return settings.service.cache(self._record)

    def load(self):
        from .open import load

        self._require_saved()
        return load(self)

    def open(self, **kwargs):
        from .open import open_artifact

        self._require_saved()
        return open_artifact(self, **kwargs)

    def delete(self, permanent: bool | None = None, storage: bool | None = None) -> None:
        self._require_saved()
        settings.service.delete(self._record, permanent=permanent, storage=storage)
        self._record = settings.service.catalog.artifact_by_uid(self._record.uid) or self._record

    def restore(self) -> "Artifact":
        self._require_saved()
        self._record = settings.service.restore(self._record)
        return self

    def describe(self) -> dict:
        values = self._current()
        if self._record is not None:
            values["storage_path"] = str(self.path)
        return values

    def __eq__(self, other) -> bool:
        return isinstance(other, Artifact) and self.uid == other.uid and self.is_saved == other.is_saved

    def __hash__(self) -> int:
        return hash(self.uid)

    def __repr__(self) -> str:
        values = self._current()
        parts = [f"{f}={values[f]!r}" for f in FIELDS]
        created = values["created_at"]
        if created is not None:
            parts.append(f"created_at={created:%Y-%m-%d %H:%M:%S} UTC")
        return f"Artifact({', '.join(parts)})"
