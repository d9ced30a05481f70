"""Artifact keys (the paths users see) and suffixes: validation and small pure helpers. Stdlib only.

A key is a '/'-separated relative path. It is kept exactly as given: no unicode normalization and no
case folding, so two keys that differ only in case or normal form are two artifacts, as on ext4.
"""
from __future__ import annotations

from pathlib import PurePosixPath

from .errors import InvalidKey, NameTooLong

AUTO_KEY_PREFIX = ".lamindb/"
RESERVED_TOP = (".lamindb", ".lamfs")
NAME_MAX_BYTES = 255
KEY_MAX_BYTES = 1024  # S3's limit for a whole object key

# Multi-part suffixes LaminDB keeps whole; anything else uses only the last suffix.
KNOWN_SUFFIXES = (
    ".anndata.zarr", ".spatialdata.zarr", ".ome.zarr", ".vitessce.json",
    ".tar.gz", ".tar.bz2", ".tar.xz", ".csv.gz", ".tsv.gz", ".txt.gz", ".json.gz",
    ".fastq.gz", ".fq.gz", ".fasta.gz", ".fa.gz", ".vcf.gz", ".bed.gz", ".gtf.gz", ".gff.gz", ".mtx.gz",
)


def check_name(name: str) -> str:
    """One path segment, as the mount and the key validator accept it."""
    if not name:
        raise InvalidKey("empty path segment")
    if name in (".", ".."):
        raise InvalidKey(f"'{name}' is not allowed as a path segment")
    if "/" in name:
        raise InvalidKey(f"'/' is not allowed in a name: {name!r}")
    if any(ord(ch) < 0x20 or ch == "\x7f" for ch in name):
        # NUL can never be in a POSIX name; other control characters break logs, shells and S3 tools
        raise InvalidKey(f"control characters are not allowed in names: {name!r}")
    if len(name.encode("utf-8", "surrogateescape")) > NAME_MAX_BYTES:
        raise NameTooLong(f"name longer than {NAME_MAX_BYTES} bytes: {name[:40]!r}…")
    return name


def validate_key(key: str, *, allow_reserved: bool = False) -> str:
    """Return the key unchanged if valid, else raise InvalidKey with a plain message."""
    if not isinstance(key, str):
        raise InvalidKey(f"key must be a string, not {type(key).__name__}")
    if key == "":
        raise InvalidKey("key must not be empty")
    if "\x00" in key:
        raise InvalidKey("key must not contain NUL")
    if key.startswith("/"):
        raise InvalidKey(f"key must be relative, without a leading '/': {key!r}")
    if key.endswith("/"):
        raise InvalidKey(f"key must not end with '/': {key!r}")
    try:
        encoded = key.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidKey(f"key is not valid unicode: {key!r}") from exc
    parts = key.split("/")
    for part in parts:
        if part == "":
            raise InvalidKey(f"key must not contain empty segments ('//'): {key!r}")
        check_name(part)
    if not allow_reserved and parts[0] in RESERVED_TOP:
        raise InvalidKey(f"keys under '{parts[0]}/' are reserved for lamfs: {key!r}")
    if len(encoded) > KEY_MAX_BYTES:
        raise NameTooLong(f"key longer than {KEY_MAX_BYTES} bytes")
    return key


def split_key(key: str) -> tuple[str, str]:
    """'a/b/c.csv' -> ('a/b', 'c.csv'); 'c.csv' -> ('', 'c.csv')."""
    head, _, name = key.rpartition("/")
    return head, name


def join_key(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def is_below(key: str, prefix_dir: str) -> bool:
    """True if key lies strictly below the directory prefix_dir (plain string logic, no wildcards)."""
    return prefix_dir == "" or key.startswith(prefix_dir + "/")


def extract_suffix(name: str) -> str:
    """LaminDB's suffix rules: known compound suffixes whole, else the last one; digits are no suffix."""
    path = PurePosixPath(name)
    suffixes = path.suffixes
    if len(suffixes) > 1:
        total = "".join(suffixes)
        for known in sorted(KNOWN_SUFFIXES, key=len, reverse=True):
            if total.endswith(known):
                return known
    suffix = path.suffix
    if suffix[1:].isdigit():
        return ""
    return suffix


def replace_suffix(key: str, old_suffix: str, new_suffix: str) -> str:
    if old_suffix and key.endswith(old_suffix):
        return key[: -len(old_suffix)] + new_suffix
    return key + new_suffix
