#!/usr/bin/env python3
"""What a replace costs: requests and time per replace of a small file and of a big one, on the local
S3 test server (tests/s3server.py) and on a local root, through the service API (what a mount's
close and `artifact.replace(); save()` both run).

A replace uploads to a staged key, commits, then settles the bytes at the artifact's home (one
server-side copy, one delete, one more commit; a hard link on a local root). Creates are timed too,
for comparison (one upload, one commit, plus the small intent commit before the upload).

Usage (from the repo, after scripts/setup.sh):
    .venv/bin/python scripts/bench_replace.py [--small 200] [--big-mib 1024]
Prints a table and a JSON line. Talks only to 127.0.0.1.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))

from tests.s3server import S3ServerProcess  # noqa: E402

BUCKET = "bench-replace"


def s3_environment(server: S3ServerProcess, home: Path) -> None:
    for name in list(os.environ):
        if name.startswith("AWS_"):
            del os.environ[name]
    (home / "aws").mkdir()
    (home / "aws" / "config").write_text("")
    (home / "aws" / "credentials").write_text("")
    os.environ.update({
        "AWS_ENDPOINT_URL": server.endpoint_url, "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(home / "aws" / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "aws" / "credentials"),
        "AWS_EC2_METADATA_DISABLED": "true", "NO_PROXY": "127.0.0.1,localhost",
    })


def service_for(root: str, home: Path):
    from lamfs.catalog import open_catalog
    from lamfs.service import ArtifactService
    from lamfs.storage import open_storage

    return ArtifactService(open_catalog(f"sqlite:///{home / 'catalog.db'}"), open_storage(root), home / "cache")


def run(service, home: Path, small: int, big_bytes: int, server: S3ServerProcess | None) -> dict:
    src = home / "src"
    src.mkdir()
    out: dict = {}

    def requests() -> dict:
        return dict(server.stats()["by_op"]) if server else {}

    def delta(before: dict, after: dict) -> dict:
        return {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}

    # small files: create each once, then replace each once
    files = []
    for i in range(small):
        p = src / f"s{i}.bin"
        p.write_bytes(os.urandom(4096))
        files.append(p)
    before, t0 = requests(), time.perf_counter()
    recs = [service.save(service.draft(p, key=f"small/{p.name}"), keep_copy=False) for p in files]
    out["create_4k_ms"] = (time.perf_counter() - t0) * 1000 / small
    out["create_4k_requests"] = {k: v / small for k, v in delta(before, requests()).items()}
    for p in files:
        p.write_bytes(os.urandom(4096))
    before, t0 = requests(), time.perf_counter()
    for rec, p in zip(recs, files):
        service.replace(service.draft_replace(rec, p), keep_copy=False)
    out["replace_4k_ms"] = (time.perf_counter() - t0) * 1000 / small
    out["replace_4k_requests"] = {k: v / small for k, v in delta(before, requests()).items()}
    # one big file
    big = src / "big.bin"
    with open(big, "wb") as f:
        for _ in range(big_bytes // (1 << 20)):
            f.write(os.urandom(1 << 20))
    t0 = time.perf_counter()
    rec = service.save(service.draft(big, key="big.bin"), keep_copy=False)
    out["create_big_s"] = time.perf_counter() - t0
    with open(big, "r+b") as f:
        f.write(os.urandom(4096))
    before, t0 = requests(), time.perf_counter()
    service.replace(service.draft_replace(rec, big), keep_copy=False)
    out["replace_big_s"] = time.perf_counter() - t0
    out["replace_big_requests"] = delta(before, requests())
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=200, help="small files to create and replace (4 KiB each)")
    parser.add_argument("--big-mib", type=int, default=1024, help="size of the big file, MiB")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-replace-") as tmp:
        tmp = Path(tmp)
        server = S3ServerProcess(log_path=str(tmp / "s3server.log"))
        server.start()
        try:
            (tmp / "s3").mkdir()
            s3_environment(server, tmp / "s3")
            import boto3

            boto3.client("s3", endpoint_url=server.endpoint_url).create_bucket(Bucket=BUCKET)
            server.reset_stats()
            results["s3"] = run(service_for(f"s3://{BUCKET}/root", tmp / "s3"), tmp / "s3", args.small,
                                args.big_mib << 20, server)
        finally:
            server.terminate()
        (tmp / "local").mkdir()
        results["local"] = run(service_for(str(tmp / "local" / "root"), tmp / "local"), tmp / "local", args.small,
                               args.big_mib << 20, None)
    print(f"{'root':<6} {'create 4K ms':>12} {'replace 4K ms':>13} {'create big s':>12} {'replace big s':>13}")
    for root, r in results.items():
        print(f"{root:<6} {r['create_4k_ms']:>12.1f} {r['replace_4k_ms']:>13.1f} {r['create_big_s']:>12.2f} "
              f"{r['replace_big_s']:>13.2f}")
    print("S3 requests per 4 KiB create :", results["s3"]["create_4k_requests"])
    print("S3 requests per 4 KiB replace:", results["s3"]["replace_4k_requests"])
    print(f"S3 requests for the {args.big_mib} MiB replace:", results["s3"]["replace_big_requests"])
    print(json.dumps(dict(results, small=args.small, big_mib=args.big_mib)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
