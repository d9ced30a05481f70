"""Unit tests: hashes, uids, key validation, suffix rules."""
from __future__ import annotations

import hashlib
import os

import pytest

from lamfs import hashing, keys, uids
from lamfs.errors import InvalidKey, NameTooLong

from .conftest import DATA


@pytest.mark.parametrize("name,size,expected", [
    ("iris.csv", 224, "iwc1TmF1TW_l5weDvscSHw"),
    ("iris.data", 182, "42Br6no9CjB6s5ZbmO-bmw"),
    ("new_iris.csv", 229, "lp2-ycXcKcaliUTnR_TqHA"),
])
def test_seed_file_hashes(name, size, expected):
    h = hashing.hash_file(DATA / name)
    assert (h.size, h.hash, h.hash_type) == (size, expected, "md5")
    assert hashing.hash_bytes((DATA / name).read_bytes()).hash == expected


def test_large_file_uses_sha1_first_last(tmp_path):
    chunk = hashing.CHUNK_BYTES
    path = tmp_path / "big.bin"
    with open(path, "wb") as f:
        f.write(os.urandom(1024) * (chunk // 1024))
        f.write(b"tail" * 1000)
    data = path.read_bytes()
    expected = hashing.b64(hashlib.sha1(hashlib.sha1(data[:chunk]).digest() + hashlib.sha1(data[-chunk:]).digest()).digest())
    h = hashing.hash_file(path)
    assert (h.hash, h.hash_type, h.size) == (expected, "sha1-fl", len(data))


def test_folder_hash_is_order_independent_and_counts(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a.txt").write_text("a")
    (tmp_path / "d" / "sub" / "b.txt").write_text("bb")
    h = hashing.hash_folder(tmp_path / "d")
    per_file = [hashing.hash_bytes(b"a").hash, hashing.hash_bytes(b"bb").hash]
    assert h.hash == hashing.hash_from_hashes(list(reversed(per_file)))
    assert (h.hash_type, h.n_files, h.size) == ("md5-d", 2, 3)


def test_uids():
    uid = uids.new_uid()
    assert len(uid) == 20 and uid.endswith("0000") and uids.is_uid(uid)
    assert uids.next_version_uid(uid) == uid[:16] + "0001"
    assert uids.next_version_uid(uid[:16] + "000z") == uid[:16] + "0010"
    assert len({uids.new_uid() for _ in range(1000)}) == 1000


@pytest.mark.parametrize("bad", ["", "/abs", "a//b", "a/", "a/../b", "..", ".", "a/./b", "x\x00y",
                                 ".lamindb/x.csv", ".lamindb", ".lamfs/by-uid/x", "tab\there"])
def test_bad_keys_refused(bad):
    with pytest.raises(InvalidKey):
        keys.validate_key(bad)


def test_overlong_names_refused():
    with pytest.raises(NameTooLong):
        keys.validate_key("a" * 256)
    with pytest.raises(NameTooLong):
        keys.validate_key("é" * 128)  # 256 bytes in UTF-8
    assert keys.validate_key("a" * 255) == "a" * 255


@pytest.mark.parametrize("good", ["100%_done\\x.csv", "with space/Ünïcode ✓.txt", "MiXeD/Case.CSV", "a_b/c%d"])
def test_odd_keys_kept_exactly(good):
    assert keys.validate_key(good) == good


@pytest.mark.parametrize("name,suffix", [
    ("iris.csv", ".csv"), ("iris.data", ".data"), ("x.tar.gz", ".tar.gz"), ("pbmc.anndata.zarr", ".anndata.zarr"),
    ("v1.2.parquet", ".parquet"), ("file.123", ""), ("Makefile", ""), ("a.b.c", ".c"),
])
def test_suffix_rules(name, suffix):
    assert keys.extract_suffix(name) == suffix
