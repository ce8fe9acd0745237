"""Passthrough throughput: PUT and GET MB/s of 1 MB, 64 MB and 512 MB objects through the proxy,
beside two ceilings measured in the same run on the same machine:

* disk: writing the same bytes to a file on the same disk, with fsync;
* asgi: a bare ASGI app on the same HTTP server (granian) that drops PUT bodies and streams GETs.

Every HTTP leg uses the same client (``requests`` streaming a file, presigned URLs for the proxy so
client-side hashing is identical), so the ratios isolate what the proxy itself costs.

    .venv/bin/python bench/passthrough.py [--sizes 1,64,512] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import boto3
import requests
from botocore.config import Config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support.server import ACCESS_KEY, SECRET_KEY, ProxyServer, free_port

MB = 1_000_000
ROUNDS_FOR_SMALL = 20  # a 1 MB transfer is too short to time once


def timed(action: Callable[[], None], rounds: int) -> float:
    started = time.perf_counter()
    for _ in range(rounds):
        action()
    return (time.perf_counter() - started) / rounds


def disk_write(source: Path, target: Path) -> None:
    with open(source, "rb") as src, open(target, "wb") as dst:
        while chunk := src.read(1024 * 1024):
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    target.unlink()


def http_put(url: str, source: Path) -> None:
    with open(source, "rb") as body:
        response = requests.put(url, data=body, headers={"content-length": str(source.stat().st_size)})
    response.raise_for_status()


def http_get(url: str, expected: int) -> None:
    received = 0
    with requests.get(url, stream=True) as response:
        response.raise_for_status()
        for chunk in response.iter_content(1024 * 1024):
            received += len(chunk)
    if received != expected:
        raise RuntimeError(f"GET returned {received} bytes, expected {expected}")


def start_sink(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "granian"),
            "--interface",
            "asgi",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "asgi_sink:app",
        ],
        cwd=Path(__file__).parent,
        stdout=open(workdir / "sink.log", "wb"),  # noqa: SIM115 - lives with the process
        stderr=subprocess.STDOUT,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            requests.get(f"{endpoint}/?size=0", timeout=1)
            return process, endpoint
        except requests.ConnectionError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the ASGI sink did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,64,512", help="object sizes in MB, comma separated")
    parser.add_argument("--dir", default=None, help="where data and spool live (default: a temp dir)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    with tempfile.TemporaryDirectory(dir=args.dir) as temp:
        workdir = Path(temp)
        proxy = ProxyServer(data_dir=workdir / "data").start()
        sink, sink_endpoint = start_sink(workdir)
        try:
            s3 = boto3.client(
                "s3",
                endpoint_url=proxy.endpoint,
                aws_access_key_id=ACCESS_KEY,
                aws_secret_access_key=SECRET_KEY,
                region_name="us-east-1",
                config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
            )
            s3.create_bucket(Bucket="bench")
            print(
                f"{'size':>7} {'op':>4} {'disk MB/s':>10} {'asgi MB/s':>10} {'proxy MB/s':>11} "
                f"{'proxy/disk':>11} {'proxy/asgi':>11}"
            )
            for size_mb in sizes:
                size = size_mb * MB
                source = workdir / f"source-{size_mb}"
                with open(source, "wb") as out:
                    for _ in range(size_mb):
                        out.write(os.urandom(MB))
                rounds = ROUNDS_FOR_SMALL if size_mb < 16 else 1
                key = f"object-{size_mb}"
                put_url = s3.generate_presigned_url(
                    "put_object", Params={"Bucket": "bench", "Key": key}, ExpiresIn=3600
                )
                get_url = s3.generate_presigned_url(
                    "get_object", Params={"Bucket": "bench", "Key": key}, ExpiresIn=3600
                )
                disk = timed(lambda: disk_write(source, workdir / "disk-copy"), rounds)  # noqa: B023
                sink_put = timed(lambda: http_put(sink_endpoint, source), rounds)  # noqa: B023
                proxy_put = timed(lambda: http_put(put_url, source), rounds)  # noqa: B023
                sink_get = timed(lambda: http_get(f"{sink_endpoint}/?size={size}", size), rounds)  # noqa: B023
                proxy_get = timed(lambda: http_get(get_url, size), rounds)  # noqa: B023
                source.unlink()
                for op, ceiling_disk, ceiling_http, measured in (
                    ("PUT", disk, sink_put, proxy_put),
                    ("GET", None, sink_get, proxy_get),
                ):
                    rate = size / MB / measured
                    disk_rate = f"{size / MB / ceiling_disk:10.0f}" if ceiling_disk else f"{'-':>10}"
                    disk_ratio = f"{ceiling_disk / measured:11.2f}" if ceiling_disk else f"{'-':>11}"
                    print(
                        f"{size_mb:>5}MB {op:>4} {disk_rate} {size / MB / ceiling_http:10.0f} {rate:11.0f} "
                        f"{disk_ratio} {ceiling_http / measured:11.2f}"
                    )
            print("PUT goal: proxy/min(disk, asgi) >= 0.6")
        finally:
            sink.terminate()
            sink.wait(10)
            proxy.stop()


if __name__ == "__main__":
    main()
