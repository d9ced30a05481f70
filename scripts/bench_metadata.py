#!/usr/bin/env python3
"""Metadata rates of lamfs on both catalog backends: SQLite (the embedded default) and PostgreSQL
(a throwaway server from tests/conftest_pg.py on 127.0.0.1, fsync on). Storage is the local S3 test
server (tests/s3server.py); metadata operations never touch it except where a create stores bytes.

Measured, per backend:
  catalog API (in process, one thread):
    create      rows/s, one committed transaction per artifact (as a mount commits a new file)
    stat        lookups/s of random keys (dir edge + live child: what a FUSE lookup does)
    readdir     time to list a directory of --entries artifacts (rows → records)
  through the mount (`lamfs mount`), kernel entry/attr TTL 0, so every call reaches the daemon:
    stat        os.stat/s of 2,000 random files of the big directory
    readdir     time for os.listdir of the big directory
    mkdir       dirs/s (metadata only)
    create      empty files/s (create + close: an empty object PUT + a commit)
  and with the default TTL (1 s): time for `ls -l` of the big directory (readdir + a stat each)

Usage (root, from the repo, after scripts/setup.sh): .venv/bin/python scripts/bench_metadata.py
    [--entries 10000] [--creates 2000] [--repeat 3] [--backends sqlite,postgresql]
Prints a table and a JSON line. Talks only to 127.0.0.1. Run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))

from tests.conftest_pg import PostgresServer  # noqa: E402
from tests.s3server import S3ServerProcess  # noqa: E402

LAMFS = [sys.executable, "-m", "lamfs.cli"]


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def median(values: list[float]) -> float:
    return statistics.median(values)


def bench_catalog(url: str, storage_root: str, entries: int, creates: int, repeat: int) -> dict:
    from lamfs.catalog import open_catalog

    cat = open_catalog(url)
    root = cat.storage_root(storage_root)
    n = iter(range(10**9))

    def fields(key: str) -> dict:
        i = next(n)
        uid = f"{i:016d}0000"
        return dict(uid=uid, key=key, size=1, hash=f"h{i}", hash_type="md5", storage_id=root.id,
                    storage_key=f".lamindb/{uid}.txt", suffix=".txt")

    # create: one transaction per artifact
    t = timed(lambda: [cat.retrying(cat.insert_artifact, **fields(f"api-create/f{i:06d}.txt")) for i in range(creates)])
    out = {"api_create_per_s": creates / t}

    # the big directory, filled in batches (setup, not measured)
    def fill(start: int, stop: int) -> None:
        for i in range(start, stop):
            cat.insert_artifact(**fields(f"big/f{i:06d}.txt"))

    for start in range(0, entries, 1000):
        cat.retrying(fill, start, min(start + 1000, entries))
    big = cat.dir_by_path("big")

    names = [f"f{i:06d}.txt" for i in range(entries)]
    lookups = min(5000, entries)

    def stat_random() -> None:
        for name in random.sample(names, lookups):
            if cat.child_dir(big.id, name) is None:
                assert cat.live_child_artifact(big.id, name) is not None

    out["api_stat_per_s"] = lookups / median([timed(stat_random) for _ in range(repeat)])

    def listing() -> None:
        dirs, arts = cat.list_dir(big.id)
        assert len(arts) == entries

    out["api_readdir_s"] = median([timed(listing) for _ in range(repeat)])
    cat.close()
    return out


def _mount(name: str, mnt: Path, env: dict, *ttl: str) -> None:
    subprocess.run(LAMFS + ["mount", str(mnt), "--instance", name, "--log-level", "warning", *ttl], check=True,
                   env=env, stdout=subprocess.DEVNULL)


def _umount(mnt: Path, env: dict) -> None:
    subprocess.run(LAMFS + ["umount", str(mnt)], env=env, check=False, stdout=subprocess.DEVNULL)


def bench_mount(name: str, mnt: Path, env: dict, entries: int, creates: int, repeat: int) -> dict:
    mnt.mkdir(parents=True, exist_ok=True)
    out: dict = {}
    big = mnt / "big"
    # kernel caches off: every stat/readdir reaches the daemon and the catalog
    _mount(name, mnt, env, "--entry-ttl", "0", "--attr-ttl", "0")
    try:
        sample = [big / f"f{i:06d}.txt" for i in random.sample(range(entries), min(2000, entries))]

        def stat_sample() -> None:
            for p in sample:
                os.stat(p)

        out["mount_stat_per_s"] = len(sample) / median([timed(stat_sample) for _ in range(repeat)])

        def listdir() -> None:
            assert len(os.listdir(big)) == entries

        out["mount_listdir_s"] = median([timed(listdir) for _ in range(repeat)])
        (mnt / "mkdirs").mkdir()
        n_mkdir = min(creates, 1000)
        out["mount_mkdir_per_s"] = n_mkdir / timed(lambda: [os.mkdir(mnt / "mkdirs" / f"d{i}") for i in range(n_mkdir)])
        (mnt / "touch").mkdir()
        n_touch = min(creates, 500)

        def touch() -> None:
            for i in range(n_touch):
                os.close(os.open(mnt / "touch" / f"t{i}.txt", os.O_WRONLY | os.O_CREAT, 0o644))

        out["mount_create_per_s"] = n_touch / timed(touch)
    finally:
        _umount(mnt, env)
    # default kernel caches (1 s), as users run it: `ls -l` = readdir(plus) + a stat per entry
    _mount(name, mnt, env)
    try:
        out["mount_ls_l_s"] = median([timed(lambda: subprocess.run(["ls", "-l", str(big)], check=True,
                                                                    stdout=subprocess.DEVNULL))
                                      for _ in range(repeat)])
    finally:
        _umount(mnt, env)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=10_000)
    ap.add_argument("--creates", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--backends", default="sqlite,postgresql")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lamfs-bench-meta-"))
    s3 = S3ServerProcess(log_path=str(work / "s3.log"))
    s3.start()
    pg = None
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ENDPOINT_URL=s3.endpoint_url, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
               AWS_DEFAULT_REGION="us-east-1", AWS_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true",
               LAMFS_HOME=str(work / "home"), NO_PROXY="127.0.0.1")
    os.environ.clear()
    os.environ.update(env)
    results: dict[str, dict] = {}
    try:
        import boto3

        boto3.client("s3", endpoint_url=s3.endpoint_url).create_bucket(Bucket="bench")
        for backend in args.backends.split(","):
            if backend == "postgresql":
                pg = PostgresServer(fsync=True).start()  # durable commits, as SQLite's synchronous=FULL
                url = pg.url(pg.create_database("bench"))
            else:
                url = f"sqlite:///{work / 'catalog.db'}"
            storage = f"s3://bench/{backend}"
            name = f"bench-{backend}"
            subprocess.run(LAMFS + ["init", "--storage", storage, "--catalog", url, "--name", name], check=True,
                           env=env, stdout=subprocess.DEVNULL)
            res = bench_catalog(url, storage, args.entries, args.creates, args.repeat)
            res.update(bench_mount(name, work / f"mnt-{backend}", env, args.entries, args.creates, args.repeat))
            results[backend] = res
            if pg is not None:
                pg.terminate()
                pg = None
    finally:
        if pg is not None:
            pg.terminate()
        s3.terminate()
        shutil.rmtree(work, ignore_errors=True)
    rows = [
        ("catalog API: create (rows/s, 1 txn each)", "api_create_per_s", "{:,.0f}"),
        ("catalog API: stat (lookups/s)", "api_stat_per_s", "{:,.0f}"),
        (f"catalog API: readdir of {args.entries:,} (s)", "api_readdir_s", "{:.3f}"),
        ("mount, TTL 0: stat (stats/s)", "mount_stat_per_s", "{:,.0f}"),
        (f"mount, TTL 0: listdir of {args.entries:,} (s)", "mount_listdir_s", "{:.3f}"),
        (f"mount, TTL 1 s: ls -l of {args.entries:,} (s)", "mount_ls_l_s", "{:.3f}"),
        ("mount, TTL 0: mkdir (dirs/s)", "mount_mkdir_per_s", "{:,.0f}"),
        ("mount, TTL 0: create empty file (files/s, incl. S3 PUT)", "mount_create_per_s", "{:,.0f}"),
    ]
    backends = list(results)
    print(f"{'measure':<58}" + "".join(f"{b:>14}" for b in backends))
    for label, key, fmt in rows:
        print(f"{label:<58}" + "".join(f"{fmt.format(results[b][key]):>14}" for b in backends))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
