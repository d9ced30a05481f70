"""`lamfs.settings`: the instance the Python API talks to (connected lazily: the current
instance, else the embedded default), plus LaminDB-style creation settings."""
from __future__ import annotations

import logging
import threading
from pathlib import Path

from .. import instance as inst
from .paths import storage_path

log = logging.getLogger("lamfs")


def _healed(instance: inst.Instance) -> inst.Instance:
    """Finish what a killed process left behind before the notebook sees anything (see
    service/healing.py); a failure is logged, never fatal: the next connect tries again."""
    from ..service.healing import heal

    try:
        heal(instance.service)
    except Exception as exc:  # noqa: BLE001
        log.warning("healing at connect failed (the next connect tries again): %s", exc)
    return instance


class CreationSettings:
    def __init__(self, owner: "Settings"):
        self._owner = owner

    @property
    def artifact_use_virtual_keys(self) -> bool:
        return self._owner._use_virtual_keys

    @artifact_use_virtual_keys.setter
    def artifact_use_virtual_keys(self, value: bool) -> None:
        self._owner._use_virtual_keys = bool(value)
        if self._owner._instance is not None:
            self._owner._instance.service.use_virtual_keys = bool(value)

    # LaminDB spells it with a leading underscore
    _artifact_use_virtual_keys = artifact_use_virtual_keys


class StorageSettings:
    def __init__(self, owner: "Settings"):
        self._owner = owner

    @property
    def root(self):
        return storage_path(self._owner.instance.storage)

    @property
    def root_as_str(self) -> str:
        return self._owner.instance.storage.root


class Settings:
    def __init__(self):
        self._instance: inst.Instance | None = None
        self._use_virtual_keys = True
        self._lock = threading.Lock()
        self.creation = CreationSettings(self)
        self.storage = StorageSettings(self)

    @property
    def instance(self) -> inst.Instance:
        with self._lock:
            if self._instance is None:
                self._instance = _healed(inst.Instance(inst.resolve_config(), use_virtual_keys=self._use_virtual_keys))
            return self._instance

    def _connect(self, config: inst.InstanceConfig) -> inst.Instance:
        with self._lock:
            if self._instance is not None:
                self._instance.close()
            self._instance = _healed(inst.Instance(config, use_virtual_keys=self._use_virtual_keys))
            return self._instance

    def _disconnect(self) -> None:
        with self._lock:
            if self._instance is not None:
                self._instance.close()
            self._instance = None

    @property
    def service(self):
        return self.instance.service

    @property
    def cache_dir(self) -> Path:
        return Path(self.instance.config.cache_dir)

    @property
    def instance_name(self) -> str:
        return self.instance.name

    def __repr__(self) -> str:
        if self._instance is None:
            return "Settings(not connected)"
        c = self._instance.config.describe()
        return f"Settings(instance={c['name']!r}, storage={c['storage']!r}, catalog={c['catalog']!r})"


settings = Settings()
