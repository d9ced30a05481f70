"""The block cache with a streaming fetch (what the mount uses on S3): a reader gets its range as
soon as those bytes have arrived, not when the whole block has; everything else (one fetch per
block, errors reaching every reader, nothing bad stored, the bound) is as with a plain fetch.
And S3Storage.iter_range, which feeds it: chunks in order, resumed after a cut body.
"""
from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from lamfs.cache.blocks import BlockCache, ObjectId
from lamfs.errors import ContentChanged, StorageError

KiB, MiB = 1024, 1024**2
B = 64 * KiB
CHUNK = 4 * KiB


def rand_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


class StreamSource:
    """In-memory storage with a streaming fetch; `gate` (if set) is waited for after the first chunk."""

    def __init__(self, data: bytes):
        self.data = data
        self.obj = ObjectId("k", "e1", len(data))
        self.calls: list[tuple[int, int]] = []
        self.lock = threading.Lock()
        self.gate: threading.Event | None = None
        self.first_chunk_sent = threading.Event()
        self.fail_after: int | None = None  # raise after this many bytes
        self.short_by = 0

    def fetch(self, key, start, length, etag):  # the plain fetch must not be used when streaming
        raise AssertionError("plain fetch called")

    def stream(self, key, start, length, etag):
        with self.lock:
            self.calls.append((start, length))
        end = start + length - self.short_by
        pos = start
        while pos < end:
            chunk = self.data[pos:min(pos + CHUNK, end)]
            if self.fail_after is not None and pos - start >= self.fail_after:
                raise StorageError("connection lost mid-body")
            yield chunk
            pos += len(chunk)
            if pos - start == CHUNK:
                self.first_chunk_sent.set()
                if self.gate is not None:
                    assert self.gate.wait(10), "test gate never opened"


def make(tmp_path, src, **kw):
    return BlockCache(tmp_path / "cache", block_bytes=B, readahead_blocks=0, fetch=src.fetch,
                      fetch_stream=src.stream, **kw)


def test_reader_gets_its_range_before_the_block_is_complete(tmp_path):
    src = StreamSource(rand_bytes(3 * B, 1))
    src.gate = threading.Event()
    cache = make(tmp_path, src)
    try:
        # returns while the fetch is parked after its first chunk: it did not wait for the block
        assert cache.read(src.obj, 0, 4096) == src.data[:4096]
        assert not cache.contains(src.obj, 0, 1)
        src.gate.set()
        # a read further into the same block joins the same fetch
        assert cache.read(src.obj, B - 100, 100) == src.data[B - 100:B]
    finally:
        cache.close()
    assert src.calls == [(0, B)]
    with make(tmp_path, src) as again:  # stored whole: a restart serves it without fetching
        assert again.read(src.obj, 0, B) == src.data[:B]
    assert src.calls == [(0, B)]


def test_reads_across_chunks_are_answered_from_the_chunks_received(tmp_path):
    """Ranges spanning several odd-sized chunks, inside what has arrived, are answered (exactly)
    while the rest of the block is still on its way."""
    src = StreamSource(rand_bytes(B, 7))
    parked, gate = threading.Event(), threading.Event()

    def stream(key, start, length, etag):  # 1000-byte chunks; parks after 50 of them
        src.calls.append((start, length))
        for pos in range(start, start + length, 1000):
            if pos - start == 50_000:
                parked.set()
                assert gate.wait(10), "test gate never opened"
            yield src.data[pos:min(pos + 1000, start + length)]

    cache = BlockCache(tmp_path / "cache", block_bytes=B, readahead_blocks=0, fetch=src.fetch, fetch_stream=stream)
    try:
        assert cache.read(src.obj, 0, 1) == src.data[:1]
        assert parked.wait(10)
        for off, n in [(999, 2), (1000, 1000), (1500, 3000), (0, 50_000), (49_999, 1), (12_345, 23_456)]:
            assert cache.read(src.obj, off, n) == src.data[off:off + n], (off, n)
        assert not cache.contains(src.obj, 0, 1)  # still streaming: nothing stored yet
        gate.set()
        assert cache.read(src.obj, 49_000, B - 49_000) == src.data[49_000:B]
    finally:
        gate.set()
        cache.close()
    assert src.calls == [(0, B)]


def test_concurrent_readers_of_one_block_share_one_fetch(tmp_path):
    src = StreamSource(rand_bytes(B, 2))
    src.gate = threading.Event()
    with make(tmp_path, src) as cache:
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(cache.read, src.obj, off, 1000) for off in range(0, B - 1000, B // 8)]
            assert src.first_chunk_sent.wait(10)
            src.gate.set()
            for off, f in zip(range(0, B - 1000, B // 8), futures):
                assert f.result(10) == src.data[off:off + 1000]
    assert src.calls == [(0, B)]


def test_error_mid_stream_reaches_the_reader_and_nothing_is_stored(tmp_path):
    src = StreamSource(rand_bytes(B, 3))
    src.fail_after = 3 * CHUNK
    with make(tmp_path, src) as cache:
        with pytest.raises(StorageError):
            cache.read(src.obj, B - 10, 10)  # its bytes never arrive
        assert not cache.contains(src.obj, 0, 1)
        assert cache.stats()["used_bytes"] == 0
        src.fail_after = None
        assert cache.read(src.obj, B - 10, 10) == src.data[B - 10:]  # fetched again
    assert len(src.calls) == 2


def test_short_stream_is_content_changed(tmp_path):
    src = StreamSource(rand_bytes(B, 4))
    src.short_by = 100
    with make(tmp_path, src) as cache:
        with pytest.raises(ContentChanged):
            cache.read(src.obj, B - 50, 50)
        assert not cache.contains(src.obj, 0, 1)


def test_random_reads_with_readahead_match_the_source(tmp_path):
    data = rand_bytes(20 * B + 123, 5)
    src = StreamSource(data)
    rng = random.Random(6)
    with BlockCache(tmp_path / "c", block_bytes=B, readahead_blocks=4, max_bytes=8 * B, fetch=src.fetch,
                    fetch_stream=src.stream) as cache:
        pos = 0
        while pos < len(data):  # a sequential pass (read-ahead kicks in), then random reads
            assert cache.read(src.obj, pos, 16 * KiB) == data[pos:pos + 16 * KiB]
            pos += 16 * KiB
        for _ in range(200):
            off = rng.randrange(len(data))
            n = rng.randrange(1, 3 * B)
            assert cache.read(src.obj, off, n) == data[off:off + n]
        assert cache.stats()["used_bytes"] <= 8 * B


@pytest.mark.s3
def test_s3_iter_range_streams_and_resumes_after_a_cut(make_storage, s3_server, tmp_path):
    st = make_storage("s3", max_attempts=3)
    data = rand_bytes(3 * MiB + 5, 7)
    src = tmp_path / "x.bin"
    src.write_bytes(data)
    info = st.put_file(src, "x.bin")
    assert info.etag and info.size == len(data)
    chunks = list(st.iter_range("x.bin", 1000, 2 * MiB, etag=info.etag, chunk_bytes=256 * KiB))
    assert len(chunks) > 1 and b"".join(chunks) == data[1000:1000 + 2 * MiB]
    s3_server.reset_stats()
    s3_server.fault(method="GET", mode="truncate", after_bytes=300 * KiB, count=1)
    got = b"".join(st.iter_range("x.bin", 0, len(data), etag=info.etag))
    assert got == data
    gets = [r for r in s3_server.stats()["recent"] if r["op"] == "GetObject"]
    assert len(gets) == 2 and gets[1]["range"].startswith("bytes=") and not gets[1]["range"].startswith("bytes=0-")
    assert list(st.iter_range("x.bin", len(data), 10)) == []  # at EOF: nothing

