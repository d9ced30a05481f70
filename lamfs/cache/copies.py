"""User-visible cached copies for `artifact.cache()` (LaminDB's layout: cache_dir/bucket/prefix/key).

Freshness is decided by content identity (hash + size + storage etag) recorded when the copy was
made, together with the copy's own size and mtime: an edited or truncated copy, or a copy of an
older version, is never served as fresh. Metadata lives beside the tree in `.lamfs-meta/` so the
copies themselves keep their plain names. Never imports storage: callers pass a fetch callable.
Blocking file I/O: call from worker threads.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

META_DIR = ".lamfs-meta"


@dataclass(frozen=True)
class Identity:
    hash: str
    size: int
    etag: str | None = None


class CopyCache:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def path_for(self, rel: str) -> Path:
        target = (self.root / rel).resolve()
        if not target.is_relative_to(self.root.resolve()) or rel.split("/")[0] == META_DIR:
            raise ValueError(f"cache path escapes the cache directory: {rel!r}")
        return target

    def _meta_path(self, rel: str) -> Path:
        return self.root / META_DIR / (rel + ".json")

    def _lock(self, rel: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(rel, threading.Lock())

    def _signature(self, path: Path) -> dict:
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
            return {"n": len(files), "bytes": sum(p.stat().st_size for p in files),
                    "mtime_ns": max((p.stat().st_mtime_ns for p in files), default=0)}
        st = path.stat()
        return {"n": 1, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}

    def is_fresh(self, rel: str, identity: Identity) -> bool:
        path, meta_path = self.path_for(rel), self._meta_path(rel)
        try:
            meta = json.loads(meta_path.read_text())
            return meta["identity"] == asdict(identity) and meta["signature"] == self._signature(path)
        except (OSError, ValueError, KeyError):
            return False

    def exists(self, rel: str) -> bool:
        return self.path_for(rel).exists()

    def remove(self, rel: str) -> bool:
        path = self.path_for(rel)
        existed = path.exists()
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif existed:
            path.unlink(missing_ok=True)
        self._meta_path(rel).unlink(missing_ok=True)
        return existed

    def store(self, rel: str, identity: Identity, fill: Callable[[Path], None]) -> Path:
        """Make a fresh copy: `fill(tmp)` writes the bytes (file or folder) to a temp path in the
        target's directory; it is then renamed into place and its identity recorded."""
        path = self.path_for(rel)
        with self._lock(rel):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".lamfs-tmp-", dir=path.parent)) / path.name
            try:
                fill(tmp)
                self._meta_path(rel).unlink(missing_ok=True)  # invalid while the old copy goes
                if path.is_dir():
                    shutil.rmtree(path)
                os.replace(tmp, path)
                meta_path = self._meta_path(rel)
                meta_path.parent.mkdir(parents=True, exist_ok=True)
                meta_tmp = meta_path.with_name(meta_path.name + ".tmp")
                meta_tmp.write_text(json.dumps({"identity": asdict(identity), "signature": self._signature(path)}))
                os.replace(meta_tmp, meta_path)
            finally:
                shutil.rmtree(tmp.parent, ignore_errors=True)
        return path

    def get(self, rel: str, identity: Identity, fill: Callable[[Path], None]) -> Path:
        if self.is_fresh(rel, identity):
            return self.path_for(rel)
        return self.store(rel, identity, fill)


def copy_into(src: Path) -> Callable[[Path], None]:
    """A fill callable copying a local file or folder."""
    def fill(tmp: Path) -> None:
        if src.is_dir():
            shutil.copytree(src, tmp)
        else:
            shutil.copyfile(src, tmp)
    return fill
