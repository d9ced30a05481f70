"""Unit tests of lamfs.cache.blocks.BlockCache (the on-disk block cache).

The cache knows nothing of S3: it is handed a fetch callable, so these tests use an in-memory fake
storage that counts every fetch. No conftest fixture is used (tmp_path only); run with
`.venv/bin/pytest --noconftest -p no:cacheprovider tests/test_block_cache.py -q`.
"""
from __future__ import annotations

import collections
import hashlib
import json
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lamfs.cache import blocks
from lamfs.cache.blocks import BlockCache, CacheRootError, ObjectId
from lamfs.errors import ContentChanged

KiB, MiB, GiB = 1024, 1024**2, 1024**3
B = 64 * KiB  # block size used by most tests
FULL = blocks._file_bytes(B)  # bytes on disk of one full block (payload + header)
SPEC_STATS = {"max_bytes", "used_bytes", "entries", "objects", "hits", "misses", "bytes_fetched", "evictions"}


class Source:
    """Fake storage: key -> (etag, bytes). Counts fetches per (key, start, etag)."""

    def __init__(self, delay_s: float = 0.0):
        self.objects: dict[str, tuple[str, bytes]] = {}
        self.calls: collections.Counter = collections.Counter()
        self.lock = threading.Lock()
        self.delay_s = delay_s
        self.active = self.max_active = 0
        self.before = None  # optional hook(key, start, length, etag), called without the lock

    def put(self, key: str, data: bytes, etag: str | None = None) -> ObjectId:
        etag = etag or hashlib.md5(data).hexdigest()
        self.objects[key] = (etag, data)
        return ObjectId(key, etag, len(data))

    def data(self, obj: ObjectId) -> bytes:
        return self.objects[obj.storage_key][1]

    @property
    def n_calls(self) -> int:
        return sum(self.calls.values())

    def fetch(self, key: str, start: int, length: int, etag: str) -> bytes:
        with self.lock:
            self.calls[(key, start, etag)] += 1
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            if self.before is not None:
                self.before(key, start, length, etag)
            if self.delay_s:
                time.sleep(self.delay_s)
            current_etag, data = self.objects[key]
            if etag != current_etag:
                raise ContentChanged(f"{key}: etag {etag} is not the current {current_etag}")
            return data[start:start + length]
        finally:
            with self.lock:
                self.active -= 1


def rand_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def disk_bytes(root: Path) -> int:
    """Sum of the sizes of all files under root (files may vanish while we walk)."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            try:
                total += os.stat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                pass
    return total


def block_files(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("??/*/*/*") if p.is_file() and not p.name.startswith("."))


def expected_block_path(root: Path, obj: ObjectId, idx: int) -> Path:
    """The documented layout, computed independently of the module."""
    key = hashlib.sha256(json.dumps(obj.storage_key).encode()).hexdigest()
    ver = hashlib.sha256(json.dumps([obj.storage_key, obj.etag, obj.size]).encode()).hexdigest()
    return root / key[:2] / key / ver / f"{idx:09d}"


class DiskMonitor(threading.Thread):
    """Samples bytes on disk and the cache's own accounting until stopped."""

    def __init__(self, root: Path, cache: BlockCache):
        super().__init__(daemon=True)
        self.root, self.cache = root, cache
        self.max_disk = self.max_accounted = self.samples = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            s = self.cache.stats()
            self.max_accounted = max(self.max_accounted, s["used_bytes"] + s["reserved_bytes"])
            self.max_disk = max(self.max_disk, disk_bytes(self.root))
            self.samples += 1

    def __enter__(self) -> "DiskMonitor":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.join()


def run_threads(n: int, target) -> None:
    with ThreadPoolExecutor(n) as pool:
        for f in [pool.submit(target, i) for i in range(n)]:
            f.result()  # re-raise assertion errors from the threads


def wait_until(predicate, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


# ------------------------------------------------------------------ correctness and layout


@pytest.mark.parametrize("block_bytes,max_blocks", [(1000, 7), (150_000, 5), (B, 1000)])
def test_random_reads_match_source(tmp_path, block_bytes, max_blocks):
    src = Source()
    sizes = [0, 1, block_bytes - 1, block_bytes, block_bytes + 1, 3 * block_bytes + 17, 400_001]
    objs = [src.put(f"dir/obj{i}", rand_bytes(n, i)) for i, n in enumerate(sizes)]
    max_bytes = max_blocks * blocks._file_bytes(block_bytes)
    cache = BlockCache(tmp_path / "c", max_bytes=max_bytes, block_bytes=block_bytes, fetch=src.fetch)

    @settings(max_examples=150, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.data())
    def check(data):
        obj = data.draw(st.sampled_from(objs))
        offset = data.draw(st.integers(0, obj.size + 10))
        length = data.draw(st.integers(0, 3 * block_bytes + 5))
        assert cache.read(obj, offset, length) == src.data(obj)[offset:offset + length]
        stats = cache.stats()
        assert stats["used_bytes"] + stats["reserved_bytes"] <= max_bytes

    check()
    cache.close()
    assert disk_bytes(tmp_path / "c") <= max_bytes + 200  # + marker file


def test_block_files_follow_documented_layout(tmp_path):
    src = Source()
    obj = src.put("a/b.csv", rand_bytes(2 * B + 5, 1))
    with BlockCache(tmp_path, block_bytes=B, fetch=src.fetch) as cache:
        assert cache.read(obj, 0, obj.size) == src.data(obj)
        files = block_files(tmp_path)
        assert files == [expected_block_path(tmp_path, obj, i) for i in range(3)]
        assert [p.stat().st_size for p in files] == [FULL, FULL, blocks._file_bytes(5)]
        assert cache.stats()["used_bytes"] == sum(p.stat().st_size for p in files)
        assert not [p for p in tmp_path.rglob(".tmp-*")]


def test_stats_counts_hits_misses_and_bytes_fetched(tmp_path):
    src = Source()
    obj = src.put("k", rand_bytes(3 * B, 2))
    with BlockCache(tmp_path, block_bytes=B, readahead_blocks=0, fetch=src.fetch) as cache:
        cache.read(obj, 10, 100)
        cache.read(obj, 200, 100)
        cache.read(obj, B - 10, 20)  # spans blocks 0 (hit) and 1 (miss)
        s = cache.stats()
        assert SPEC_STATS <= s.keys()
        assert (s["hits"], s["misses"], s["entries"], s["objects"]) == (2, 2, 2, 1)
        assert s["bytes_fetched"] == 2 * B
        assert s["max_bytes"] == blocks.DEFAULT_MAX_BYTES
        assert s["used_bytes"] == 2 * FULL and s["evictions"] == 0


def test_free_evicts_least_recently_used_unpinned_blocks(tmp_path):
    """free(n): a write through the mount needs disk space; pinned blocks stay."""
    src = Source()
    a, b, c = (src.put(k, rand_bytes(2 * B, i)) for i, k in enumerate("abc"))
    with BlockCache(tmp_path, block_bytes=B, readahead_blocks=0, fetch=src.fetch) as cache:
        for obj in (a, b, c):  # block by block: a two-block read hands its second block to the pool
            cache.read(obj, 0, B)
            cache.read(obj, B, B)
        with cache.open(a):  # a is read by an open file
            assert cache.free(FULL) == FULL  # b's first block: the least recently used unpinned one
            assert not cache.contains(b, 0, B) and cache.contains(b, B, B)
            assert cache.free(10 * FULL) == 3 * FULL  # everything unpinned, no more
            assert cache.contains(a) and not cache.contains(c)
            assert cache.stats()["used_bytes"] == 2 * FULL and cache.stats()["evictions"] == 4
            assert cache.free(FULL) == 0
        assert cache.read(c, 0, 2 * B) == src.data(c)


def test_disk_margin_refused_serves_without_storing(tmp_path):
    """space (the mount's free-space margin): older blocks make room first; a block that still does
    not fit is served and not stored."""
    src = Source()
    a, b = src.put("a", rand_bytes(B, 1)), src.put("b", rand_bytes(B, 2))

    class Disk:  # room for one block file
        inflight = 0

        def reserve(self, n):
            if n + self.inflight > FULL - cache.stats()["used_bytes"]:
                return False
            self.inflight += n
            return True

        def written(self, n):
            self.inflight -= n

    disk = Disk()
    with BlockCache(tmp_path, block_bytes=B, readahead_blocks=0, fetch=src.fetch, space=disk) as cache:
        assert cache.read(a, 0, B) == src.data(a) and cache.contains(a)
        assert cache.read(b, 0, B) == src.data(b)
        assert cache.contains(b) and not cache.contains(a)  # a made room for b
        with cache.open(b):
            assert cache.read(a, 0, B) == src.data(a)  # b is pinned: a is served, not stored
            assert not cache.contains(a) and cache.contains(b)
        assert disk.inflight == 0  # every reservation was followed by written()


def test_short_fetch_raises_and_stores_nothing(tmp_path):
    src = Source()
    obj = src.put("k", rand_bytes(2 * B, 3))
    lying = ObjectId("k", obj.etag, 3 * B)  # claims a third block the storage does not have
    with BlockCache(tmp_path, block_bytes=B, fetch=src.fetch) as cache:
        with pytest.raises(ContentChanged):
            cache.read(lying, 2 * B, 10)
        assert not cache.contains(lying, 2 * B, 10)
        assert cache.stats()["reserved_bytes"] == 0 and block_files(tmp_path) == []
        assert cache.read(obj, 0, 10) == src.data(obj)[:10]  # the cache is still usable


# ------------------------------------------------------------------ the bound


def test_bound_holds_under_8_concurrent_readers(tmp_path):
    src = Source(delay_s=0.0005)
    objs = [src.put(f"obj{i}", rand_bytes(6 * B + 1234 * i, 100 + i)) for i in range(8)]  # ~49 blocks
    max_bytes = 12 * FULL + 5000
    cache = BlockCache(tmp_path, max_bytes=max_bytes, block_bytes=B, readahead_blocks=4, fetch=src.fetch)

    def reader(i: int) -> None:
        rng = random.Random(i)
        for rep in range(3):
            obj = objs[(i + rep) % 8]
            data = src.data(obj)
            for off in range(0, obj.size, 16 * KiB):  # sequential pass: triggers read-ahead
                assert cache.read(obj, off, 16 * KiB) == data[off:off + 16 * KiB]
            for _ in range(10):
                off, n = rng.randrange(obj.size), rng.randrange(1, 2 * B)
                assert cache.read(obj, off, n) == data[off:off + n]

    with DiskMonitor(tmp_path, cache) as monitor:
        run_threads(8, reader)
    cache.close()
    assert monitor.samples > 10
    assert monitor.max_disk <= max_bytes + 8 * B
    assert monitor.max_accounted <= max_bytes  # reservations make the accounting itself strict
    s = cache.stats()
    assert s["evictions"] > 0 and s["reserved_bytes"] == 0
    assert s["used_bytes"] == sum(p.stat().st_size for p in block_files(tmp_path))


@pytest.mark.parametrize("pinned", [False, True])
def test_object_larger_than_bound_is_readable(tmp_path, pinned):
    src = Source()
    obj = src.put("big", rand_bytes(40 * B + 123, 7))
    max_bytes = 4 * FULL
    cache = BlockCache(tmp_path, max_bytes=max_bytes, block_bytes=B, readahead_blocks=4, fetch=src.fetch)
    pin = cache.open(obj) if pinned else None
    chunks = []
    with DiskMonitor(tmp_path, cache) as monitor:
        for off in range(0, obj.size, 20_000):
            chunks.append(cache.read(obj, off, 20_000))
    assert b"".join(chunks) == src.data(obj)
    assert monitor.max_disk <= max_bytes + 8 * B
    assert monitor.max_accounted <= max_bytes
    # Each block is fetched about once: no thrashing between read-ahead and the reader.
    assert cache.stats()["bytes_fetched"] <= 1.5 * obj.size
    if pin:
        assert cache.contains(obj, 0, 4 * B)  # the first blocks filled the cache and stayed
        pin.close()
    cache.close()


def test_pinned_blocks_survive_eviction_pressure(tmp_path):
    src = Source()
    pinned = src.put("pinned", rand_bytes(4 * B, 1))
    control = src.put("control", rand_bytes(2 * B, 2))
    others = [src.put(f"other{i}", rand_bytes(3 * B, 10 + i)) for i in range(10)]
    cache = BlockCache(tmp_path, max_bytes=8 * FULL, block_bytes=B, readahead_blocks=0, fetch=src.fetch)
    pin = cache.open(pinned)
    second_pin = cache.open(pinned)
    assert cache.read(pinned, 0, pinned.size) == src.data(pinned)
    cache.read(control, 0, control.size)
    for obj in others:
        assert cache.read(obj, 0, obj.size) == src.data(obj)
    assert not cache.contains(control)  # there was pressure: unpinned blocks went
    assert cache.contains(pinned)
    calls = src.n_calls
    assert cache.read(pinned, 0, pinned.size) == src.data(pinned)
    assert src.n_calls == calls
    second_pin.close()
    for obj in others:
        cache.read(obj, 0, obj.size)
    assert cache.contains(pinned)  # still one pin open
    pin.close()
    pin.close()  # idempotent
    for obj in others:
        cache.read(obj, 0, obj.size)
    assert not cache.contains(pinned)  # evictable again
    cache.close()


def test_everything_pinned_streams_without_storing(tmp_path):
    src = Source()
    a = src.put("a", rand_bytes(4 * B, 1))
    b = src.put("b", rand_bytes(6 * B + 9, 2))
    cache = BlockCache(tmp_path, max_bytes=4 * FULL, block_bytes=B, fetch=src.fetch)
    with cache.open(a), cache.open(b):
        cache.read(a, 0, a.size)  # fills the whole bound with pinned blocks
        with DiskMonitor(tmp_path, cache) as monitor:
            assert cache.read(b, 0, b.size) == src.data(b)
        assert not cache.contains(b, 0, 1)
        assert monitor.max_accounted <= 4 * FULL
        fetched = cache.stats()["bytes_fetched"]
        assert cache.read(b, 0, 10) == src.data(b)[:10]  # streamed again
        assert cache.stats()["bytes_fetched"] == fetched + B
    assert cache.contains(a)
    cache.close()


def test_block_larger_than_bound_streams(tmp_path):
    src = Source()
    obj = src.put("k", rand_bytes(3 * B, 4))
    with BlockCache(tmp_path, max_bytes=B // 2, block_bytes=B, fetch=src.fetch) as cache:
        assert cache.read(obj, 0, obj.size) == src.data(obj)
        assert cache.stats()["entries"] == 0 and disk_bytes(tmp_path) < 200


# ------------------------------------------------------------------ fetching: range, read-ahead, single-flight


def synthetic(start: int, length: int) -> bytes:
    """Bytes of a virtual object: byte i is (i * 7 + i // 251) % 256, computed per 251-byte period."""
    out = bytearray()
    i = start
    while len(out) < length:
        period = i // 251
        base = bytes(((k * 7) + period) % 256 for k in range(251))
        take = min(251 - i % 251, length - len(out))
        out += base[i % 251:i % 251 + take]
        i += take
    return bytes(out)


def test_head_of_1gib_object_fetches_one_block(tmp_path):
    calls = []

    def fetch(key, start, length, etag):
        calls.append((start, length))
        return synthetic(start, length) if length <= 64 * KiB else bytes(length)

    big = ObjectId("huge.bin", "etag1", 1 * GiB)
    cache = BlockCache(tmp_path, max_bytes=256 * MiB, fetch=fetch)  # default 8 MiB blocks
    # `head -c 4096` through FUSE: a 4 KiB read, perhaps a kernel read-ahead request after it.
    assert cache.read(big, 0, 4096) == bytes(4096)
    assert cache.read(big, 4096, 124 * KiB) == bytes(124 * KiB)
    cache.close()  # waits for any read-ahead
    assert len(calls) <= 2
    assert calls[0] == (0, 8 * MiB)
    assert sum(n for _, n in calls) <= 2 * 8 * MiB


def test_synthetic_ranges_are_served_at_their_offsets(tmp_path):
    """Large virtual object with small blocks: every block is fetched by its own range."""
    big = ObjectId("huge.bin", "e", 1 * GiB)
    calls = []

    def fetch(key, start, length, etag):
        calls.append(start)
        return synthetic(start, length)

    with BlockCache(tmp_path, block_bytes=16 * KiB, readahead_blocks=0, fetch=fetch) as cache:
        for off in (0, 5 * 16 * KiB - 3, GiB - 100, 123_456_789):
            assert cache.read(big, off, 300) == synthetic(off, min(300, GiB - off))
    assert len(calls) == 5  # 1 + 2 (the second read straddles a block boundary) + 1 + 1
    assert max(calls) < GiB


def test_sequential_reads_trigger_readahead_without_blocking_the_reader(tmp_path):
    src = Source()
    obj = src.put("seq", rand_bytes(20 * B, 5))
    gate = threading.Event()
    src.before = lambda key, start, length, etag: start > 0 and gate.wait(5)
    cache = BlockCache(tmp_path, block_bytes=B, readahead_blocks=4, fetch=src.fetch)
    data = src.data(obj)
    assert cache.read(obj, 0, 16 * KiB) == data[:16 * KiB]
    assert cache.read(obj, 16 * KiB, 16 * KiB) == data[16 * KiB:32 * KiB]
    time.sleep(0.05)
    assert src.n_calls == 1  # two reads are not yet a sequential stream: no read-ahead

    result = []
    reader = threading.Thread(target=lambda: result.append(cache.read(obj, 32 * KiB, 16 * KiB)))
    reader.start()
    reader.join(2)
    assert result == [data[32 * KiB:48 * KiB]]  # returned while read-ahead is stuck at the gate
    assert wait_until(lambda: src.n_calls == 5)  # blocks 1..4 requested in parallel
    gate.set()
    assert wait_until(lambda: cache.contains(obj, B, 4 * B))
    cache.close()
    assert sorted(start for (_k, start, _e) in src.calls) == [i * B for i in range(5)]
    assert not cache.contains(obj, 5 * B, 1)


def test_multi_block_read_fetches_blocks_in_parallel(tmp_path):
    src = Source()
    obj = src.put("k", rand_bytes(4 * B, 6))
    barrier = threading.Barrier(4, timeout=5)
    src.before = lambda *a: barrier.wait()  # deadlocks (BrokenBarrierError) if fetched one by one
    with BlockCache(tmp_path, block_bytes=B, readahead_blocks=4, fetch=src.fetch) as cache:
        assert cache.read(obj, 0, obj.size) == src.data(obj)
    assert src.max_active == 4


def test_concurrent_readers_of_one_object_fetch_each_block_once(tmp_path):
    src = Source(delay_s=0.02)
    obj = src.put("shared", rand_bytes(10 * B + 77, 8))
    data = src.data(obj)
    cache = BlockCache(tmp_path, block_bytes=B, readahead_blocks=4, fetch=src.fetch)
    start = threading.Barrier(8)

    def reader(i: int) -> None:
        start.wait()
        order = list(range(0, obj.size, 32 * KiB))
        if i % 2:
            order.reverse()
        for off in order:
            assert cache.read(obj, off, 32 * KiB) == data[off:off + 32 * KiB]

    run_threads(8, reader)
    cache.close()
    assert set(src.calls.values()) == {1}
    assert sorted(start for (_k, start, _e) in src.calls) == [i * B for i in range(11)]
    assert cache.stats()["bytes_fetched"] == obj.size


def test_different_blocks_fetch_in_parallel(tmp_path):
    src = Source()
    obj = src.put("k", rand_bytes(8 * B, 9))
    barrier = threading.Barrier(2, timeout=5)
    src.before = lambda *a: barrier.wait()  # both fetches must be running at once
    with BlockCache(tmp_path, block_bytes=B, readahead_blocks=0, fetch=src.fetch) as cache:
        run_threads(2, lambda i: cache.read(obj, i * 5 * B, 10))
    assert src.n_calls == 2


def test_failed_fetch_reaches_every_waiter_and_is_not_cached(tmp_path):
    src = Source(delay_s=0.05)
    obj = src.put("k", rand_bytes(B, 10))
    fail = [True]

    def before(*a):
        if fail[0]:
            raise ContentChanged("storage said no")

    src.before = before
    with BlockCache(tmp_path, block_bytes=B, readahead_blocks=0, fetch=src.fetch) as cache:
        errors = []

        def reader(i):
            try:
                cache.read(obj, 0, 10)
            except ContentChanged as exc:
                errors.append(exc)

        run_threads(4, reader)
        assert len(errors) == 4 and cache.stats()["reserved_bytes"] == 0
        fail[0] = False
        assert cache.read(obj, 0, 10) == src.data(obj)[:10]


# ------------------------------------------------------------------ persistence


def test_restart_reuses_blocks_with_zero_fetches(tmp_path):
    src = Source()
    objs = [src.put(f"k{i}", rand_bytes(3 * B + i, i)) for i in range(4)]
    first = BlockCache(tmp_path, block_bytes=B, fetch=src.fetch)
    for obj in objs:
        first.read(obj, 0, obj.size)
    before = first.stats()
    first.close()

    src.calls.clear()
    second = BlockCache(tmp_path, block_bytes=B, fetch=src.fetch)
    after = second.stats()
    assert (after["entries"], after["objects"], after["used_bytes"]) == \
        (before["entries"], before["objects"], before["used_bytes"])
    assert all(second.contains(obj) for obj in objs)
    for obj in objs:
        assert second.read(obj, 0, obj.size) == src.data(obj)
    assert src.n_calls == 0 and second.stats()["bytes_fetched"] == 0
    assert second.stats()["hits"] == before["entries"] == 15
    second.close()


def test_lru_order_after_restart_follows_mtime(tmp_path):
    src = Source()
    x, y, z, w = (src.put(k, rand_bytes(2 * B, i)) for i, k in enumerate("xyzw"))
    cache = BlockCache(tmp_path, max_bytes=6 * FULL, block_bytes=B, readahead_blocks=0, fetch=src.fetch)
    for obj in (x, y, z):
        cache.read(obj, 0, obj.size)
    cache.close()
    now = time.time()
    for obj, age_s in ((y, 3000), (x, 2000), (z, 1000)):  # y least recently used, z most
        for i in range(2):
            os.utime(expected_block_path(tmp_path, obj, i), (now - age_s, now - age_s))
    cache = BlockCache(tmp_path, max_bytes=6 * FULL, block_bytes=B, readahead_blocks=0, fetch=src.fetch)
    cache.read(w, 0, w.size)
    assert not cache.contains(y, 0, 1) and not cache.contains(y, B, 1)
    assert cache.contains(x) and cache.contains(z) and cache.contains(w)
    cache.close()


def test_hit_refreshes_mtime_for_the_next_start(tmp_path, monkeypatch):
    monkeypatch.setattr(blocks, "TOUCH_INTERVAL_NS", 0)
    src = Source()
    obj = src.put("k", rand_bytes(B, 1))
    with BlockCache(tmp_path, block_bytes=B, fetch=src.fetch) as cache:
        cache.read(obj, 0, 1)
        path = expected_block_path(tmp_path, obj, 0)
        os.utime(path, (1_000_000, 1_000_000))
        cache.read(obj, 0, 1)
        assert path.stat().st_mtime > time.time() - 60


def test_restart_sweeps_temp_files_and_strays(tmp_path):
    src = Source()
    obj = src.put("k", rand_bytes(2 * B, 3))
    with BlockCache(tmp_path, block_bytes=B, fetch=src.fetch) as cache:
        cache.read(obj, 0, obj.size)
    obj_dir = expected_block_path(tmp_path, obj, 0).parent
    planted = [obj_dir / ".tmp-abc123", tmp_path / ".tmp-marker", obj_dir / "junk", obj_dir / "000000009"]
    for p in planted:
        p.write_bytes(b"x" * 1000 if p.name != "000000009" else b"tiny")
    empty = tmp_path / "ab" / ("ab" + "0" * 62) / ("1" * 64)
    empty.mkdir(parents=True)
    src.calls.clear()
    with BlockCache(tmp_path, block_bytes=B, fetch=src.fetch) as cache:
        assert not any(p.exists() for p in planted)
        assert not (tmp_path / "ab").exists() or not any((tmp_path / "ab").iterdir())
        assert cache.stats()["entries"] == 2
        assert cache.stats()["used_bytes"] == sum(p.stat().st_size for p in block_files(tmp_path))
        assert cache.read(obj, 0, obj.size) == src.data(obj)
    assert src.n_calls == 0


def test_restart_with_smaller_bound_evicts_down_to_it(tmp_path):
    src = Source()
    objs = [src.put(f"k{i}", rand_bytes(2 * B, i)) for i in range(5)]
    with BlockCache(tmp_path, block_bytes=B, fetch=src.fetch) as cache:
        for obj in objs:
            cache.read(obj, 0, obj.size)
    with BlockCache(tmp_path, max_bytes=3 * FULL, block_bytes=B, fetch=src.fetch) as cache:
        assert cache.stats()["used_bytes"] <= 3 * FULL
        assert disk_bytes(tmp_path) <= 3 * FULL + 200


def test_block_size_change_drops_old_blocks(tmp_path):
    src = Source()
    obj = src.put("k", rand_bytes(4 * B, 1))
    with BlockCache(tmp_path, block_bytes=B, fetch=src.fetch) as cache:
        cache.read(obj, 0, obj.size)
    with BlockCache(tmp_path, block_bytes=B // 2, fetch=src.fetch) as cache:
        assert cache.stats()["entries"] == 0 and block_files(tmp_path) == []
        assert cache.read(obj, 100, B) == src.data(obj)[100:100 + B]


def test_root_is_exclusive_and_foreign_dirs_are_refused(tmp_path):
    src = Source()
    first = BlockCache(tmp_path / "c", fetch=src.fetch)
    with pytest.raises(CacheRootError):
        BlockCache(tmp_path / "c", fetch=src.fetch)
    first.close()
    BlockCache(tmp_path / "c", fetch=src.fetch).close()
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "thesis.tex").write_text("precious")
    with pytest.raises(CacheRootError):
        BlockCache(tmp_path / "home", fetch=src.fetch)
    assert (tmp_path / "home" / "thesis.tex").read_text() == "precious"


# ------------------------------------------------------------------ never serve bad or stale bytes

BB = 150_000  # three checksum chunks per block


def _damage(path: Path, how: str, other_idx: Path, other_obj: Path) -> None:
    raw = bytearray(path.read_bytes())
    if how == "flip_payload":
        raw[-5] ^= 0x01
    elif how == "flip_header":
        raw[20] ^= 0x80
    elif how == "flip_chunk_table":
        raw[blocks._FIXED.size + 1] ^= 0x01
    elif how == "truncate":
        raw = raw[:-1000]
    elif how == "extend":
        raw += b"\0"
    elif how == "empty":
        raw = bytearray()
    elif how == "foreign_index":  # the right object's block 2 under block 1's name
        raw = bytearray(other_idx.read_bytes()[:len(raw)])
    elif how == "foreign_object":  # another object's block 1
        raw = bytearray(other_obj.read_bytes())
    elif how == "garbage":
        raw = bytearray(os.urandom(len(raw)))
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("restart", [False, True])
@pytest.mark.parametrize("how", ["flip_payload", "flip_header", "flip_chunk_table", "truncate", "extend",
                                 "empty", "foreign_index", "foreign_object", "garbage"])
def test_corrupt_block_is_detected_and_refetched(tmp_path, how, restart):
    src = Source()
    obj = src.put("k", rand_bytes(3 * BB + 10, 1))
    other = src.put("other", rand_bytes(3 * BB + 10, 2))
    cache = BlockCache(tmp_path, block_bytes=BB, readahead_blocks=0, fetch=src.fetch)
    cache.read(obj, 0, obj.size)
    cache.read(other, 0, other.size)
    target = expected_block_path(tmp_path, obj, 1)
    _damage(target, how, expected_block_path(tmp_path, obj, 2), expected_block_path(tmp_path, other, 1))
    if restart:
        cache.close()
        cache = BlockCache(tmp_path, block_bytes=BB, readahead_blocks=0, fetch=src.fetch)
    src.calls.clear()
    assert cache.read(obj, 0, obj.size) == src.data(obj)
    assert dict(src.calls) == {("k", BB, obj.etag): 1}  # only the damaged block, once
    # (a file too short to hold a header is swept by the start-up scan instead)
    assert cache.stats()["corrupt_blocks"] == (0 if restart and how == "empty" else 1)
    assert target.stat().st_size == blocks._file_bytes(BB)  # rewritten whole
    assert cache.read(obj, 0, obj.size) == src.data(obj)
    assert src.n_calls == 1
    cache.close()


def test_reads_verify_only_the_chunks_they_return(tmp_path):
    src = Source()
    obj = src.put("k", rand_bytes(BB, 1))
    with BlockCache(tmp_path, block_bytes=BB, fetch=src.fetch) as cache:
        cache.read(obj, 0, obj.size)
        path = expected_block_path(tmp_path, obj, 0)
        raw = bytearray(path.read_bytes())
        raw[-5] ^= 0xFF  # last chunk
        path.write_bytes(bytes(raw))
        assert cache.read(obj, 0, 1000) == src.data(obj)[:1000]  # first chunk intact: served
        assert src.n_calls == 1
        assert cache.read(obj, BB - 10, 10) == src.data(obj)[-10:]  # damaged chunk: refetched
        assert src.n_calls == 2


def test_new_etag_never_serves_old_bytes_and_invalidate_removes_all_versions(tmp_path):
    src = Source()
    v1 = src.put("data/x.parquet", rand_bytes(3 * B, 1), etag="e1")
    with BlockCache(tmp_path, block_bytes=B, fetch=src.fetch) as cache:
        assert cache.read(v1, 0, v1.size) == src.data(v1)
        old = src.data(v1)
        v2 = src.put("data/x.parquet", rand_bytes(3 * B, 2), etag="e2")  # replaced, same size
        assert cache.read(v2, 0, v2.size) == src.data(v2) != old
        assert {e for (_k, _s, e) in src.calls} == {"e1", "e2"}
        assert cache.contains(v1) and cache.contains(v2)  # two versions, two identities
        cache.invalidate("data/x.parquet")
        assert not cache.contains(v1, 0, 1) and not cache.contains(v2, 0, 1)
        assert block_files(tmp_path) == [] and cache.stats()["used_bytes"] == 0
        assert cache.read(v2, B, 10) == src.data(v2)[B:B + 10]


def test_invalidate_during_fetch_keeps_old_bytes_out(tmp_path):
    src = Source()
    v1 = src.put("k", rand_bytes(B, 1), etag="e1")
    started, release = threading.Event(), threading.Event()

    def before(*a):
        started.set()
        release.wait(5)

    src.before = before
    with BlockCache(tmp_path, block_bytes=B, fetch=src.fetch) as cache:
        result = []
        reader = threading.Thread(target=lambda: result.append(cache.read(v1, 0, 10)))
        reader.start()
        assert started.wait(5)
        cache.invalidate("k")
        release.set()
        reader.join(5)
        assert result == [src.data(v1)[:10]]  # the reader gets the version it asked for...
        assert not cache.contains(v1, 0, 1) and block_files(tmp_path) == []  # ...but it is not kept


def test_invalidate_while_pinned_keeps_that_version_until_unpinned(tmp_path):
    src = Source()
    v1 = src.put("k", rand_bytes(2 * B, 1), etag="e1")
    with BlockCache(tmp_path, block_bytes=B, fetch=src.fetch) as cache:
        pin = cache.open(v1)
        cache.read(v1, 0, v1.size)
        cache.invalidate("k")
        assert cache.contains(v1)
        calls = src.n_calls
        assert cache.read(v1, 0, v1.size) == src.data(v1)
        assert src.n_calls == calls
        pin.close()
        assert not cache.contains(v1, 0, 1) and block_files(tmp_path) == []


def test_clear_drops_everything_not_pinned(tmp_path):
    src = Source()
    a, b = src.put("a", rand_bytes(2 * B, 1)), src.put("b", rand_bytes(2 * B, 2))
    with BlockCache(tmp_path, block_bytes=B, fetch=src.fetch) as cache:
        with cache.open(a):
            cache.read(a, 0, a.size)
            cache.read(b, 0, b.size)
            cache.clear()
            assert cache.contains(a) and not cache.contains(b, 0, 1)
            assert cache.stats()["used_bytes"] == sum(p.stat().st_size for p in block_files(tmp_path)) == 2 * FULL


# ------------------------------------------------------------------ fresh blocks in memory (what the mount uses)


def test_fresh_blocks_are_served_from_memory_then_from_their_files(tmp_path):
    """With fresh_blocks=2 the last two blocks fetched are read back from memory (their files are
    not even opened: a damaged file goes unnoticed and is not refetched); an older block is read
    from its file, checked, and refetched when damaged. Invalidation drops the memory copies."""
    src = Source()
    obj = src.put("k", rand_bytes(4 * B, 1))
    with BlockCache(tmp_path, block_bytes=B, readahead_blocks=0, fetch=src.fetch, fresh_blocks=2) as cache:
        for idx in range(4):  # one block per read: fetched in this order (a multi-block read fetches in parallel)
            assert cache.read(obj, idx * B, B) == src.data(obj)[idx * B:(idx + 1) * B]
        assert src.n_calls == 4
        for idx in range(4):
            path = expected_block_path(tmp_path, obj, idx)
            raw = bytearray(path.read_bytes())
            raw[-1] ^= 0xFF  # damage the payload of every block file
            path.write_bytes(raw)
        # blocks 2 and 3 (the last fetched) come from memory: right bytes, no check, no fetch
        assert cache.read(obj, 2 * B, 2 * B) == src.data(obj)[2 * B:]
        assert src.n_calls == 4 and cache.stats()["corrupt_blocks"] == 0
        # block 0 is read from its file: the damage is caught and the block fetched again
        assert cache.read(obj, 0, B) == src.data(obj)[:B]
        assert src.n_calls == 5 and cache.stats()["corrupt_blocks"] == 1
        cache.invalidate("k")  # memory copies go with the blocks
        assert cache.read(obj, 3 * B, B) == src.data(obj)[3 * B:]
        assert src.n_calls == 6


def test_fresh_blocks_must_not_be_negative(tmp_path):
    with pytest.raises(ValueError, match="fresh_blocks"):
        BlockCache(tmp_path, fetch=Source().fetch, fresh_blocks=-1)
