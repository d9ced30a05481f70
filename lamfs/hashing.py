"""LaminDB-compatible content hashes. Pure functions over local files; imports only the stdlib.

- file <= 50 MiB: MD5 of the bytes ("md5");
- larger file: SHA-1 of (SHA-1 of the first 50 MiB + SHA-1 of the last 50 MiB) ("sha1-fl");
- folder: MD5 over the MD5 digests of the sorted per-file hash strings ("md5-d").
Hashes are the first 22 characters of URL-safe base64 without padding.
Hashing reads files: call it from a worker thread, never on the trio loop.
"""
from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

HASH_LENGTH = 22
CHUNK_BYTES = 50 * 1024 * 1024
_READ_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class ContentHash:
    hash: str
    hash_type: str
    size: int
    n_files: int | None = None


def b64(digest: bytes) -> str:
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")[:HASH_LENGTH]


def md5_hex_to_hash(md5_hex: str) -> str:
    """An S3 single-part ETag is the MD5 hex of the bytes; this gives the lamfs hash of it."""
    return b64(bytes.fromhex(md5_hex))


def _digest_stream(fp, hasher, limit: int) -> None:
    remaining = limit
    while remaining > 0:
        block = fp.read(min(_READ_BYTES, remaining))
        if not block:
            break
        hasher.update(block)
        remaining -= len(block)


def hash_file(path: str | os.PathLike, size_bytes: int | None = None) -> ContentHash:
    path = Path(path)
    if size_bytes is None:
        size_bytes = path.stat().st_size
    with open(path, "rb") as fp:
        if size_bytes <= CHUNK_BYTES:
            hasher = hashlib.md5()
            _digest_stream(fp, hasher, size_bytes)
            return ContentHash(b64(hasher.digest()), "md5", size_bytes)
        first, last = hashlib.sha1(), hashlib.sha1()
        _digest_stream(fp, first, CHUNK_BYTES)
        fp.seek(-CHUNK_BYTES, os.SEEK_END)
        _digest_stream(fp, last, CHUNK_BYTES)
        digest = hashlib.sha1(first.digest() + last.digest()).digest()
        return ContentHash(b64(digest), "sha1-fl", size_bytes)


def hash_bytes(data: bytes) -> ContentHash:
    if len(data) <= CHUNK_BYTES:
        return ContentHash(b64(hashlib.md5(data).digest()), "md5", len(data))
    digest = hashlib.sha1(
        hashlib.sha1(data[:CHUNK_BYTES]).digest() + hashlib.sha1(data[-CHUNK_BYTES:]).digest()
    ).digest()
    return ContentHash(b64(digest), "sha1-fl", len(data))


def hash_from_hashes(hashes: list[str]) -> str:
    # sorted, so the order in which a folder is walked does not change its hash
    digests = b"".join(hashlib.md5(h.encode("utf-8")).digest() for h in sorted(hashes))
    return b64(hashlib.md5(digests).digest())


def folder_files(path: str | os.PathLike) -> list[Path]:
    """All regular files below a folder, sorted by relative path."""
    root = Path(path)
    return sorted((p for p in root.rglob("*") if p.is_file()), key=lambda p: p.relative_to(root).as_posix())


def hash_folder(path: str | os.PathLike) -> ContentHash:
    files = folder_files(path)
    if not files:
        raise ValueError(f"folder {path} contains no files")
    hashes, total = [], 0
    for f in files:
        h = hash_file(f)
        hashes.append(h.hash)
        total += h.size
    return ContentHash(hash_from_hashes(hashes), "md5-d", total, n_files=len(files))


def hash_path(path: str | os.PathLike) -> ContentHash:
    return hash_folder(path) if Path(path).is_dir() else hash_file(path)
