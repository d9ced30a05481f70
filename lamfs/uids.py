"""base62 uids: a random 16-character stem + a 4-character version ("0000" first). Stdlib only."""
from __future__ import annotations

import secrets
import string

BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
STEM_LENGTH = 16
VERSION_LENGTH = 4
UID_LENGTH = STEM_LENGTH + VERSION_LENGTH


def _base62(n_chars: int) -> str:
    return "".join(secrets.choice(BASE62) for _ in range(n_chars))


def new_uid() -> str:
    return _base62(STEM_LENGTH) + "0000"


def encode_version(number: int) -> str:
    if not 0 <= number < 62**VERSION_LENGTH:
        raise ValueError(f"version number out of range: {number}")
    chars = []
    for _ in range(VERSION_LENGTH):
        number, rem = divmod(number, 62)
        chars.append(BASE62[rem])
    return "".join(reversed(chars))


def decode_version(version: str) -> int:
    number = 0
    for ch in version:
        number = number * 62 + BASE62.index(ch)
    return number


def next_version_uid(uid: str) -> str:
    stem, version = uid[:STEM_LENGTH], uid[STEM_LENGTH:]
    return stem + encode_version(decode_version(version) + 1)


def is_uid(text: str) -> bool:
    return len(text) == UID_LENGTH and all(ch in BASE62 for ch in text)
