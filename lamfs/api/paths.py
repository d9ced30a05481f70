"""Path objects the Python API hands out for storage locations: `pathlib.Path` for local roots,
`StoragePath` for S3 roots (enough of pathlib for `root / key`, `.exists()`, `.suffix`, `.stem`,
`.name`, `.is_dir()`). Imports only the storage interface."""
from __future__ import annotations

from pathlib import Path, PurePosixPath

from ..errors import NotFound
from ..storage import Storage


class StoragePath:
    def __init__(self, storage: Storage, key: str = ""):
        self.storage = storage
        self.key = key.strip("/")

    def __truediv__(self, other: str) -> "StoragePath":
        other = str(other)
        return StoragePath(self.storage, f"{self.key}/{other}" if self.key else other)

    def __str__(self) -> str:
        return self.storage.url(self.key) if self.key else self.storage.root

    def __repr__(self) -> str:
        return f"StoragePath({str(self)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, StoragePath) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    @property
    def _pure(self) -> PurePosixPath:
        return PurePosixPath(self.key or "/")

    name = property(lambda self: self._pure.name)
    suffix = property(lambda self: self._pure.suffix)
    stem = property(lambda self: self._pure.stem)
    suffixes = property(lambda self: self._pure.suffixes)

    @property
    def parent(self) -> "StoragePath":
        return StoragePath(self.storage, str(self._pure.parent).lstrip("/").rstrip("."))

    def is_file(self) -> bool:
        try:
            self.storage.head(self.key)
            return True
        except NotFound:
            return False

    def is_dir(self) -> bool:
        return next(iter(self.storage.list(self.key + "/" if self.key else "")), None) is not None

    def exists(self) -> bool:
        return self.is_file() or self.is_dir()

    def stat_size(self) -> int:
        return self.storage.head(self.key).size


def storage_path(storage: Storage, key: str = "") -> Path | StoragePath:
    local = storage.local_path(key) if key else (Path(storage.root) if storage.is_local else None)
    return local if local is not None else StoragePath(storage, key)
