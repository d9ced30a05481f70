#!/usr/bin/env python3
"""Read-path benchmark of the lamfs mount on a local S3 server (tests/s3server.py: moto with
O(range) ranged GETs), for one large object. Prints: time to first byte and bytes fetched for
`head -c 4096`, cold sequential read MB/s, warm read MB/s (after a remount: from the on-disk cache;
and again: from the kernel page cache), and boto3 directly against the same server for comparison.

Usage (root, from the repo, after scripts/setup.sh):  .venv/bin/python scripts/bench_cache.py [--size-mib 1024]
Talks only to 127.0.0.1. Each number is the median of --repeat runs."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))

from tests.conftest_s3 import S3ServerProcess  # noqa: E402

MiB = 1 << 20


def sh(cmd: str, env: dict) -> None:
    subprocess.run(cmd, shell=True, check=True, env=env, stdout=subprocess.DEVNULL)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def drop_page_cache() -> None:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        pass  # not root: warm numbers then include the page cache anyway


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lamfs-bench-"))
    server = S3ServerProcess(log_path=str(work / "s3.log"))
    server.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ENDPOINT_URL=server.endpoint_url, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
               AWS_DEFAULT_REGION="us-east-1", AWS_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true",
               LAMFS_HOME=str(work / "home"), NO_PROXY="127.0.0.1")
    os.environ.clear()
    os.environ.update(env)
    import boto3

    s3 = boto3.client("s3", endpoint_url=server.endpoint_url)
    s3.create_bucket(Bucket="bench")
    big = work / "big.bin"
    with open(big, "wb") as f:
        block = os.urandom(MiB)
        for _ in range(args.size_mib):
            f.write(block)
    lamfs = [sys.executable, "-m", "lamfs.cli"]
    subprocess.run(lamfs + ["init", "--storage", "s3://bench/data", "--name", "bench"], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    import lamfs as lf

    lf.setup.connect("bench")
    t_upload = timed(lambda: lf.Artifact(big, key="big.bin").save())
    key = lf.Artifact.get(key="big.bin").storage_key
    shutil.rmtree(lf.settings.cache_dir / "bench", ignore_errors=True)  # the copy save() keeps
    mnt = work / "mnt"
    mnt.mkdir()
    cache_dir = work / "cache"

    def mount():
        subprocess.run(lamfs + ["mount", str(mnt), "--instance", "bench", "--cache-dir", str(cache_dir)],
                       check=True, env=env, stdout=subprocess.DEVNULL)

    def umount():
        subprocess.run(lamfs + ["umount", str(mnt)], check=True, env=env, stdout=subprocess.DEVNULL)

    size = args.size_mib * MiB
    results: dict[str, list[float]] = {k: [] for k in ("ttfb_s", "head_bytes", "cold_MBps", "warm_disk_MBps",
                                                       "warm_page_MBps", "boto3_download_MBps", "boto3_range_s")}
    for _ in range(args.repeat):
        shutil.rmtree(cache_dir, ignore_errors=True)
        drop_page_cache()
        mount()
        server.reset_stats()
        results["ttfb_s"].append(timed(lambda: sh(f"head -c 4096 {mnt}/big.bin > /dev/null", env)))
        results["head_bytes"].append(server.stats()["bytes_out"])
        umount(); drop_page_cache(); shutil.rmtree(cache_dir, ignore_errors=True); mount()
        results["cold_MBps"].append(size / MiB / timed(lambda: sh(f"cat {mnt}/big.bin > /dev/null", env)))
        umount(); drop_page_cache(); mount()
        results["warm_disk_MBps"].append(size / MiB / timed(lambda: sh(f"cat {mnt}/big.bin > /dev/null", env)))
        results["warm_page_MBps"].append(size / MiB / timed(lambda: sh(f"cat {mnt}/big.bin > /dev/null", env)))
        umount()
        out = work / "direct.bin"
        results["boto3_download_MBps"].append(size / MiB / timed(lambda: s3.download_file("bench", f"data/{key}", str(out))))
        out.unlink()
        results["boto3_range_s"].append(timed(lambda: s3.get_object(Bucket="bench", Key=f"data/{key}", Range="bytes=0-4095")["Body"].read()))
    server.terminate()
    summary = {k: {"median": statistics.median(v), "min": min(v), "max": max(v)} for k, v in results.items()}
    print(f"object: {args.size_mib} MiB; upload through the API: {size / MiB / t_upload:.0f} MB/s")
    for k, v in summary.items():
        print(f"{k:<22} median {v['median']:>12.4g}   min {v['min']:>12.4g}   max {v['max']:>12.4g}")
    print(json.dumps(summary))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
