"""What observability costs per S3 request, against a baseline measured in the same run:

* baseline: one ``HEAD`` of a small object through a running proxy on loopback (presigned, so the
  client does no signing work), i.e. the cheapest complete request the proxy serves;
* observed: the work the edge adds to every request, done in this process the same way the
  gateway does it — ``Metrics.observe_request`` (4 series), one JSON access-log line formatted,
  one audit entry recorded (writes only) — and one ``/_/metrics`` render with the registry as
  populated by the run (what each Prometheus scrape costs, once per 15 s).

Prints microseconds and the ratio to the baseline request.

    .venv/bin/python bench/observability_overhead.py [--rounds 2000]
"""

from __future__ import annotations

import argparse
import logging
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

from deltaglider_proxy.observability.audit import AuditRing
from deltaglider_proxy.observability.logs import JsonFormatter
from deltaglider_proxy.observability.metrics import Metrics


def per_call(action: Callable[[], object], rounds: int) -> float:
    started = time.perf_counter()
    for _ in range(rounds):
        action()
    return (time.perf_counter() - started) / rounds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2000)
    rounds = parser.parse_args().rounds

    with tempfile.TemporaryDirectory() as tmp:
        server = ProxyServer(data_dir=Path(tmp) / "data")
        (Path(tmp) / "data").mkdir()
        server.start()
        try:
            s3 = boto3.client(
                "s3",
                endpoint_url=server.endpoint,
                aws_access_key_id=ACCESS_KEY,
                aws_secret_access_key=SECRET_KEY,
                region_name="us-east-1",
                config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"),
            )
            s3.create_bucket(Bucket="bench")
            s3.put_object(Bucket="bench", Key="small.txt", Body=b"x" * 100)
            url = s3.generate_presigned_url(
                "head_object", Params={"Bucket": "bench", "Key": "small.txt"}, ExpiresIn=3600
            )
            session = requests.Session()
            session.head(url).raise_for_status()
            baseline = per_call(lambda: session.head(url), max(rounds // 4, 50))
        finally:
            server.stop()

    metrics = Metrics(version="bench", backend_type="filesystem")
    operations = ["get_object", "put_object", "head_object", "list_objects"]
    counter = iter(range(10**9))

    def observe() -> None:
        n = next(counter)
        metrics.observe_request("GET", operations[n % 4], 200, 0.003, None, 1000 + n % 5000)

    record = logging.LogRecord("deltaglider_proxy.access", logging.INFO, __file__, 0, "request", (), None)
    for name, value in {
        "method": "GET",
        "bucket": "bench",
        "key": "releases/app-1.2.3.zip",
        "operation": "get_object",
        "principal": "$bootstrap",
        "access_key": ACCESS_KEY,
        "status": 200,
        "bytes_in": 0,
        "bytes_out": 1000,
        "duration_ms": 3.1,
        "storage": "filesystem",
        "client_ip": "127.0.0.1",
    }.items():
        setattr(record, name, value)
    formatter = JsonFormatter()
    logging.getLogger("deltaglider_proxy.audit").disabled = True  # time the ring, not stderr
    ring = AuditRing()

    observed = per_call(observe, rounds)
    logged = per_call(lambda: formatter.format(record), rounds)
    audited = per_call(lambda: ring.record("s3_put", user="$bootstrap", bucket="bench", path="k"), rounds)
    render = per_call(metrics.render, max(rounds // 20, 20))

    print(f"baseline  HEAD through the proxy        {baseline * 1e6:9.1f} µs   1.000")
    for label, seconds in (
        ("metrics   observe_request             ", observed),
        ("log       one JSON access line        ", logged),
        ("audit     one ring entry (writes)     ", audited),
        ("scrape    /_/metrics render (per 15 s)", render),
    ):
        print(f"{label} {seconds * 1e6:9.1f} µs   {seconds / baseline:.3f}")
    per_request = observed + logged
    print(
        f"per request (metrics + log line)        {per_request * 1e6:9.1f} µs   {per_request / baseline:.3f}"
    )


if __name__ == "__main__":
    main()
