"""kill -9 of the server in the middle of a large PUT: after a restart the key is either absent or
still the old version — never torn — and no temporary file shows up in a listing."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import make_client
from tests.support.server import ProxyServer
from tests.support.signing import presigned_url

MIB = 1024 * 1024
UPLOAD_SIZE = 256 * MIB
SENT_BEFORE_KILL = 48 * MIB


@pytest.fixture
def crashable(tmp_path: Path) -> Iterator[ProxyServer]:
    server = ProxyServer(data_dir=tmp_path / "data").start()
    yield server
    server.stop()


def _spool_bytes(data_dir: Path) -> int:
    spool = data_dir / ".deltaglider" / "spool"
    return sum(f.stat().st_size for f in spool.iterdir() if f.is_file()) if spool.exists() else 0


def _start_partial_put(url: str) -> socket.socket:
    """Send the headers and part of a large body, then leave the request hanging."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80))
    head = (
        f"PUT {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Content-Length: {UPLOAD_SIZE}\r\n\r\n"
    )
    sock.sendall(head.encode())
    block = os.urandom(MIB)
    for _ in range(SENT_BEFORE_KILL // MIB):
        sock.sendall(block)
    return sock


def _wait_for_spool(data_dir: Path, at_least: int) -> None:
    deadline = time.monotonic() + 30
    while _spool_bytes(data_dir) < at_least:
        assert time.monotonic() < deadline, "the server never spooled the partial upload"
        time.sleep(0.05)


def _listing(s3: Any, bucket: str) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


@pytest.mark.parametrize("existing", [True, False], ids=["overwrite", "new-key"])
def test_kill_during_large_put(crashable: ProxyServer, existing: bool) -> None:
    s3 = make_client(crashable.endpoint)
    s3.create_bucket(Bucket="crash")
    old = os.urandom(3 * MIB)
    s3.put_object(Bucket="crash", Key="other.bin", Body=b"unrelated")
    if existing:
        s3.put_object(Bucket="crash", Key="big.bin", Body=old)

    url = presigned_url("PUT", f"{crashable.endpoint}/crash/big.bin")
    sock = _start_partial_put(url)
    try:
        _wait_for_spool(crashable.data_dir, SENT_BEFORE_KILL // 2)
        crashable.kill()
    finally:
        sock.close()

    crashable.start()
    expected = ["big.bin", "other.bin"] if existing else ["other.bin"]
    assert _listing(s3, "crash") == expected
    if existing:
        body = s3.get_object(Bucket="crash", Key="big.bin")["Body"].read()
        assert hashlib.sha256(body).hexdigest() == hashlib.sha256(old).hexdigest()
    else:
        with pytest.raises(s3.exceptions.NoSuchKey):
            s3.get_object(Bucket="crash", Key="big.bin")
    # The interrupted body never reached the bucket: nothing under it is as large as what was sent.
    bucket_dir = crashable.data_dir / "crash"
    sizes = [p.stat().st_size for p in bucket_dir.rglob("*") if p.is_file()]
    assert all(size < SENT_BEFORE_KILL // 2 for size in sizes), sizes
    # The spool left by the dead process is cleared on start.
    assert _spool_bytes(crashable.data_dir) == 0
    # And the service is healthy afterwards: the same upload now succeeds.
    fresh = os.urandom(2 * MIB)
    s3.put_object(Bucket="crash", Key="big.bin", Body=fresh)
    assert s3.get_object(Bucket="crash", Key="big.bin")["Body"].read() == fresh
