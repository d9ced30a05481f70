"""Instances: named (catalog URL, storage root, cache dir) triples stored as small JSON files, and
the composition root that builds catalog + storage + service for one of them.

Layout under LAMFS_HOME (default: $XDG_DATA_HOME/lamfs, i.e. ~/.local/share/lamfs):
    instances/<name>.json      one per instance
    current                    the name `lamfs` and `lamfs.settings` use by default
    default/catalog.db         the embedded default instance (SQLite)
    default/storage/           ... and its local storage root
Cache directories live under $XDG_CACHE_HOME/lamfs/<name> (or LAMFS_HOME/cache/<name> when
LAMFS_HOME is set, so tests relocate everything with one variable).
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from .catalog import Catalog, open_catalog, redact_url
from .errors import InstanceError
from .service import ArtifactService
from .storage import Storage, open_storage

DEFAULT_NAME = "default"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def home() -> Path:
    env = os.environ.get("LAMFS_HOME")
    if env:
        return Path(env).expanduser().resolve()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "lamfs"


def cache_home() -> Path:
    if os.environ.get("LAMFS_HOME"):
        return home() / "cache"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lamfs"


def normalize_storage(storage: str | os.PathLike) -> str:
    text = str(storage)
    if text.startswith("s3://"):
        bucket_prefix = text[len("s3://"):].strip("/")
        if not bucket_prefix:
            raise InstanceError("storage URL needs a bucket: s3://bucket[/prefix]")
        return "s3://" + bucket_prefix
    if "://" in text and not text.startswith("file://"):
        raise InstanceError(f"unsupported storage {text!r}: use s3://bucket[/prefix] or a local directory")
    return str(Path(text.removeprefix("file://")).expanduser().resolve())


def default_name_for(storage: str) -> str:
    name = storage.rstrip("/").rsplit("/", 1)[-1] or DEFAULT_NAME
    name = re.sub(r"[^A-Za-z0-9._-]", "-", name).lstrip(".-_") or DEFAULT_NAME
    return name[:64]


@dataclass(frozen=True)
class InstanceConfig:
    name: str
    storage: str
    catalog: str
    cache_dir: str

    def describe(self) -> dict:
        return {**asdict(self), "catalog": redact_url(self.catalog)}


def _config_path(name: str) -> Path:
    return home() / "instances" / f"{name}.json"


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.chmod(tmp, 0o600)  # a postgres URL may carry a password
    os.replace(tmp, path)


def check_name(name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise InstanceError(f"invalid instance name {name!r}: use letters, digits, '.', '_', '-' (max 64)")
    return name


def list_instances() -> list[InstanceConfig]:
    folder = home() / "instances"
    return [load_config(p.stem) for p in sorted(folder.glob("*.json"))] if folder.exists() else []


def load_config(name: str) -> InstanceConfig:
    path = _config_path(check_name(name))
    if not path.exists():
        known = ", ".join(c.name for c in list_instances()) or "none"
        raise InstanceError(f"no instance named {name!r} (known: {known}); create it with `lamfs init --storage URL`")
    try:
        return InstanceConfig(**json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise InstanceError(f"instance file {path} is damaged: {exc}") from exc


def find_by_storage(storage: str) -> InstanceConfig | None:
    storage = normalize_storage(storage)
    return next((c for c in list_instances() if c.storage == storage), None)


def create_config(storage: str | os.PathLike, *, catalog: str | None = None, name: str | None = None) -> InstanceConfig:
    """Create (or return the identical existing) instance config. Does not touch storage."""
    storage = normalize_storage(storage)
    name = check_name(name or default_name_for(storage))
    if catalog is None:
        catalog = f"sqlite:///{home() / 'instances' / name / 'catalog.db'}"
    if _config_path(name).exists():
        existing = load_config(name)
        if existing.storage != storage:
            raise InstanceError(f"instance {name!r} already exists with storage {existing.storage}")
        return existing
    config = InstanceConfig(name=name, storage=storage, catalog=catalog, cache_dir=str(cache_home() / name))
    _write_json(_config_path(name), asdict(config))
    return config


def default_config() -> InstanceConfig:
    """The embedded default instance: SQLite + local storage under LAMFS_HOME, created on first use."""
    if _config_path(DEFAULT_NAME).exists():
        return load_config(DEFAULT_NAME)
    base = home() / DEFAULT_NAME
    (base / "storage").mkdir(parents=True, exist_ok=True)
    config = InstanceConfig(
        name=DEFAULT_NAME, storage=str(base / "storage"), catalog=f"sqlite:///{base / 'catalog.db'}",
        cache_dir=str(cache_home() / DEFAULT_NAME),
    )
    _write_json(_config_path(DEFAULT_NAME), asdict(config))
    return config


def current_name() -> str | None:
    path = home() / "current"
    return path.read_text().strip() or None if path.exists() else None


def set_current(name: str | None) -> None:
    path = home() / "current"
    if name is None:
        path.unlink(missing_ok=True)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name + "\n")


def resolve_config(name: str | None = None) -> InstanceConfig:
    """An explicit name, else the current instance, else the embedded default."""
    if name:
        return load_config(name)
    current = current_name()
    if current and _config_path(current).exists():
        return load_config(current)
    return default_config()


def delete_config(name: str) -> InstanceConfig:
    """Forget an instance: its config, SQLite catalog (if under LAMFS_HOME) and cache. Stored objects
    are never deleted here: the data outlives the instance."""
    config = load_config(name)
    if config.catalog.startswith("sqlite:///"):
        db = Path(config.catalog[len("sqlite:///"):])
        if db.is_relative_to(home()):
            for suffix in ("", "-wal", "-shm", ".locks"):
                Path(str(db) + suffix).unlink(missing_ok=True)
    shutil.rmtree(config.cache_dir, ignore_errors=True)
    _config_path(name).unlink(missing_ok=True)
    if current_name() == name:
        set_current(None)
    return config


def storage_options_from_env(storage: str) -> dict:
    """S3 client tuning from the environment (LAMFS_S3_MAX_ATTEMPTS, LAMFS_S3_CONNECT_TIMEOUT_S,
    LAMFS_S3_READ_TIMEOUT_S); endpoint and credentials come from the standard AWS chain."""
    if not storage.startswith("s3://"):
        return {}
    options = {}
    for env, option, cast in (("LAMFS_S3_MAX_ATTEMPTS", "max_attempts", int),
                              ("LAMFS_S3_CONNECT_TIMEOUT_S", "connect_timeout_s", float),
                              ("LAMFS_S3_READ_TIMEOUT_S", "read_timeout_s", float)):
        if os.environ.get(env):
            try:
                options[option] = cast(os.environ[env])
            except ValueError as exc:
                raise InstanceError(f"{env} must be a number, not {os.environ[env]!r}") from exc
    return options


class Instance:
    """Composition root: builds catalog, storage and service for one config."""

    def __init__(self, config: InstanceConfig, *, storage: Storage | None = None, catalog: Catalog | None = None,
                 use_virtual_keys: bool = True):
        self.config = config
        self.catalog = catalog or open_catalog(config.catalog)
        self.storage = storage or open_storage(config.storage, **storage_options_from_env(config.storage))
        Path(config.cache_dir).mkdir(parents=True, exist_ok=True)
        self.service = ArtifactService(self.catalog, self.storage, config.cache_dir, use_virtual_keys=use_virtual_keys)

    @property
    def name(self) -> str:
        return self.config.name

    def close(self) -> None:
        self.catalog.close()
        self.storage.close()
