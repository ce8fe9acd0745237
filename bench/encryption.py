"""Encryption cost: PUT and GET MB/s through an encrypting proxy ÷ the same through a plaintext
proxy, both started in this run on the same machine, disk and client.

Both proxies use the filesystem backend and a bucket with compression off (so every object is
stored as-is and the only difference is AES-256-GCM); the encrypted one is in
``aes256-gcm-proxy`` mode. Rounds alternate between the two proxies so background noise hits both
alike; each figure is the best of its rounds (the machine is shared). A ranged GET of 1 MB from
the middle of the largest object shows the frame-exact range path. Goal: ratio >= 0.9.

    .venv/bin/python bench/encryption.py [--sizes 1,64,256] [--rounds 5] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import boto3
import requests
from botocore.config import Config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support.server import ACCESS_KEY, SECRET_KEY, ProxyServer

MB = 1_000_000
KEY = "5e" * 32
CONFIG = """
storage:
  buckets:
    bench:
      compression: false
"""
ENCRYPTION = """
  backend_encryption:
    mode: aes256-gcm-proxy
    key_id: bench
"""


def put(url: str, source: Path) -> None:
    with open(source, "rb") as body:
        response = requests.put(url, data=body, headers={"content-length": str(source.stat().st_size)})
    response.raise_for_status()


def get(url: str, expected: int, headers: dict[str, str] | None = None) -> None:
    received = 0
    with requests.get(url, stream=True, headers=headers or {}) as response:
        response.raise_for_status()
        for chunk in response.iter_content(1024 * 1024):
            received += len(chunk)
    if received != expected:
        raise RuntimeError(f"GET returned {received} bytes, expected {expected}")


def best(action: Callable[[], None], repeat: int) -> float:
    started = time.perf_counter()
    for _ in range(repeat):
        action()
    return (time.perf_counter() - started) / repeat


def start(workdir: Path, name: str, encrypted: bool) -> ProxyServer:
    root = workdir / name
    root.mkdir()
    config = root / "config.yaml"
    config.write_text(CONFIG + (ENCRYPTION if encrypted else ""))
    env = {"DGP_ENCRYPTION_KEY": KEY} if encrypted else {}
    return ProxyServer(data_dir=root / "data", env=env, args=["-c", str(config)]).start()


def presign(proxy: ProxyServer, method: str, key: str) -> str:
    s3 = boto3.client(
        "s3",
        endpoint_url=proxy.endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name="us-east-1",
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )
    if method == "create":
        s3.create_bucket(Bucket="bench")
        return ""
    return str(s3.generate_presigned_url(method, Params={"Bucket": "bench", "Key": key}, ExpiresIn=3600))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,64,256", help="object sizes in MB, comma separated")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per size (best is kept)")
    parser.add_argument("--dir", default=None, help="where data and spool live (default: a temp dir)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    with tempfile.TemporaryDirectory(dir=args.dir) as temp:
        workdir = Path(temp)
        proxies = {"plain": start(workdir, "plain", False), "encrypted": start(workdir, "encrypted", True)}
        try:
            for proxy in proxies.values():
                presign(proxy, "create", "")
            print(f"{'size':>7} {'op':>9} {'plain MB/s':>11} {'encrypted MB/s':>15} {'ratio':>7}")
            ratios: list[float] = []
            for size_mb in sizes:
                size = size_mb * MB
                source = workdir / f"source-{size_mb}"
                with open(source, "wb") as out:
                    for _ in range(size_mb):
                        out.write(os.urandom(MB))
                # Enough transfers per figure that one scheduler hiccup on the shared VM does not
                # decide it: about 0.5 GB per figure, at least 3 transfers.
                repeat = max(3, min(20, 512 // size_mb))
                key = f"object-{size_mb}"
                urls = {
                    name: (presign(p, "put_object", key), presign(p, "get_object", key))
                    for name, p in proxies.items()
                }
                times: dict[tuple[str, str], float] = {}
                for _ in range(args.rounds):
                    for name, (put_url, get_url) in urls.items():
                        for op, action in (
                            ("PUT", lambda: put(put_url, source)),  # noqa: B023
                            ("GET", lambda: get(get_url, size)),  # noqa: B023
                        ):
                            elapsed = best(action, repeat)
                            times[(name, op)] = min(times.get((name, op), elapsed), elapsed)
                    if size_mb == max(sizes) and size > 4 * MB:
                        middle = {"range": f"bytes={size // 2}-{size // 2 + MB - 1}"}
                        for name, (_, get_url) in urls.items():
                            elapsed = best(lambda: get(get_url, MB, middle), 20)  # noqa: B023
                            times[(name, "GET 1MB@")] = min(times.get((name, "GET 1MB@"), elapsed), elapsed)
                source.unlink()
                for op in ("PUT", "GET", "GET 1MB@"):
                    if ("plain", op) not in times:
                        continue
                    moved = MB if op == "GET 1MB@" else size
                    plain = moved / MB / times[("plain", op)]
                    encrypted = moved / MB / times[("encrypted", op)]
                    ratio = encrypted / plain
                    if op != "GET 1MB@":
                        ratios.append(ratio)
                    print(f"{size_mb:>5}MB {op:>9} {plain:11.0f} {encrypted:15.0f} {ratio:7.2f}")
            print(f"worst PUT/GET ratio {min(ratios):.2f} (goal >= 0.9; shared machine: expect noise)")
        finally:
            for proxy in proxies.values():
                proxy.stop()


if __name__ == "__main__":
    main()
