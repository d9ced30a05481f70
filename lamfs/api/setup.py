"""`lamfs.setup`: create, connect to and delete instances (LaminDB's `ln.setup`)."""
from __future__ import annotations

import logging

from .. import instance as inst
from ..errors import InstanceError
from .settings import settings

log = logging.getLogger("lamfs")


def init(storage, catalog: str | None = None, name: str | None = None) -> inst.Instance:
    """Create an instance for a storage root (s3://bucket/prefix or a local directory) and connect."""
    config = inst.create_config(storage, catalog=catalog, name=name)
    instance = settings._connect(config)
    inst.set_current(config.name)
    log.info("initialized lamfs instance %r: %s", config.name, config.storage)
    return instance


def connect(name: str | None = None) -> inst.Instance:
    config = inst.resolve_config(name)
    instance = settings._connect(config)
    inst.set_current(config.name)
    log.info("connected lamfs instance %r", config.name)
    return instance


def disconnect() -> None:
    settings._disconnect()
    inst.set_current(None)


def delete(name: str, force: bool = False) -> None:
    """Forget an instance (config, catalog, cache). Refuses while it has artifacts unless force=True.
    Objects in storage are never deleted by this."""
    config = inst.load_config(name)
    if not force:
        probe = inst.Instance(config)
        try:
            n = len(probe.catalog.filter_artifacts(include_trashed=True, latest_only=False))
        finally:
            probe.close()
        if n:
            raise InstanceError(f"instance {name!r} has {n} artifacts; pass force=True to delete it anyway")
    if settings._instance is not None and settings._instance.name == name:
        settings._disconnect()
    inst.delete_config(name)
    log.info("deleted lamfs instance %r (storage objects kept at %s)", name, config.storage)
