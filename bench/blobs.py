"""Blob writes and reads per second: the store directory's folder against S3-compatible object storage.

    python bench/blobs.py [--count 2000] [--size 30000] [--endpoint http://host:port --bucket NAME]

Without ``--endpoint`` a local S3 server (moto's server mode, as the tests use) is started on
loopback, so the figure is the client and protocol cost on this machine, not a network's.
Writes are `put` of ``--count`` distinct random blobs (about a rendered image's size) and one
`flush` (the folder's sync, the bucket's concurrent uploads); reads are `get` of each key.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def measure(blobs, payloads: list[bytes]) -> tuple[float, float]:  # noqa: ANN001
    started = time.perf_counter()
    keys = [blobs.put(data, "webp") for data in payloads]
    blobs.flush()
    written = time.perf_counter() - started
    started = time.perf_counter()
    for key, data in zip(keys, payloads):
        assert blobs.get(key) == data
    read = time.perf_counter() - started
    return len(payloads) / written, len(payloads) / read


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--size", type=int, default=30000, help="bytes per blob (a 128 px lossless render: ~30 KB)")
    parser.add_argument("--endpoint", help="an S3 endpoint URL (default: a local moto server)")
    parser.add_argument("--bucket", default="microscope-bench")
    args = parser.parse_args()

    import httpx

    from app.core.store.blobs import FolderBlobs, ObjectBlobs
    from tests.support.s3 import CREDENTIALS, s3_server

    payloads = [os.urandom(args.size) for _ in range(args.count)]
    with tempfile.TemporaryDirectory() as folder:
        folder_rates = measure(FolderBlobs(Path(folder)), payloads)
    with (nullcontext(args.endpoint) if args.endpoint else s3_server()) as endpoint:
        os.environ.update({**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint})
        if not args.endpoint:
            httpx.put(f"{endpoint}/{args.bucket}")
        bucket_rates = measure(ObjectBlobs(f"s3://{args.bucket}/bench-{os.getpid()}"), payloads)
    print(f"{args.count} blobs of {args.size:,} bytes")
    print("| store | writes/s | reads/s |")
    print("|---|---|---|")
    print(f"| folder | {folder_rates[0]:,.0f} | {folder_rates[1]:,.0f} |")
    print(f"| S3 ({'local moto server' if not args.endpoint else args.endpoint}) | {bucket_rates[0]:,.0f} | {bucket_rates[1]:,.0f} |")
    print(f"ratio folder/S3: writes {folder_rates[0] / bucket_rates[0]:.1f}x, reads {folder_rates[1] / bucket_rates[1]:.1f}x")


if __name__ == "__main__":
    main()
