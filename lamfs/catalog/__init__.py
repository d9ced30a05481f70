"""Catalog layer: peewee models, migrations and queries. The only package that imports peewee;
everything it returns is a frozen record."""
from .catalog import Catalog, open_catalog, redact_url
from .records import MAIN_BRANCH, ROOT_DIR_ID, TRASH_BRANCH, ArtifactRecord, DirectoryRecord, StorageRecord

__all__ = [
    "Catalog", "open_catalog", "redact_url", "ArtifactRecord", "DirectoryRecord", "StorageRecord",
    "MAIN_BRANCH", "TRASH_BRANCH", "ROOT_DIR_ID",
]
