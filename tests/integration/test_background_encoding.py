"""Background delta encoding (the default): PUTs answer at passthrough speed and a worker turns
objects into deltas afterwards — without ever changing what a GET returns."""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import make_client
from tests.integration.test_delta import edited
from tests.support.server import ProxyServer
from tests.support.signing import signed_headers

MIB = 1024 * 1024


@pytest.fixture
def bproxy(tmp_path: Path) -> Iterator[ProxyServer]:
    server = ProxyServer(data_dir=tmp_path / "data", env={"DGP_DEBUG_HEADERS": "true"}).start()
    yield server
    server.stop()


def _pending(proxy: ProxyServer, bucket: str) -> int:
    url = f"{proxy.endpoint}/_/stats?bucket={bucket}"
    return int(requests.get(url, headers=signed_headers("GET", url)).json()["pending_delta_encodes"])


def _drain(proxy: ProxyServer, bucket: str) -> None:
    deadline = time.monotonic() + 60
    while _pending(proxy, bucket):
        assert time.monotonic() < deadline, "background encoding did not finish"
        time.sleep(0.1)


def _kind(s3: Any, bucket: str, key: str) -> str:
    headers = s3.head_object(Bucket=bucket, Key=key)["ResponseMetadata"]["HTTPHeaders"]
    return str(headers["x-amz-storage-type"])


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_objects_become_deltas_after_the_put(bproxy: ProxyServer) -> None:
    s3 = make_client(bproxy.endpoint)
    s3.create_bucket(Bucket="bgx")
    rng = random.Random(21)
    base = rng.randbytes(MIB)
    versions = [base, edited(base, rng), edited(base, rng), rng.randbytes(MIB)]
    kinds = []
    for number, body in enumerate(versions):
        put = s3.put_object(Bucket="bgx", Key=f"v/{number}.zip", Body=body)
        kinds.append(put["ResponseMetadata"]["HTTPHeaders"]["x-amz-storage-type"])
    # The seed is encoded at once; later versions are stored as-is first.
    assert kinds == ["delta", "passthrough", "passthrough", "passthrough"]
    modified = s3.head_object(Bucket="bgx", Key="v/1.zip")["LastModified"]
    _drain(bproxy, "bgx")
    assert [_kind(s3, "bgx", f"v/{n}.zip") for n in range(4)] == ["delta", "delta", "delta", "passthrough"]
    for number, body in enumerate(versions):
        assert _sha(s3.get_object(Bucket="bgx", Key=f"v/{number}.zip")["Body"].read()) == _sha(body)
    # Same version, stored smaller: Last-Modified and ETag do not change.
    head = s3.head_object(Bucket="bgx", Key="v/1.zip")
    assert head["LastModified"] == modified
    assert head["ETag"] == '"' + hashlib.md5(versions[1]).hexdigest() + '"'
    names = sorted(p.name for p in (bproxy.data_dir / "bgx" / "deltaspaces" / "v").iterdir())
    assert names == ["0.zip.delta", "1.zip.delta", "2.zip.delta", "3.zip", "reference.bin"]


def test_overwrite_before_encoding_wins(bproxy: ProxyServer) -> None:
    s3 = make_client(bproxy.endpoint)
    s3.create_bucket(Bucket="race")
    rng = random.Random(22)
    base = rng.randbytes(2 * MIB)
    s3.put_object(Bucket="race", Key="r/a.tar", Body=base)
    last = b""
    for _ in range(5):  # each overwrite supersedes the queued job of the one before
        last = edited(base, rng)
        s3.put_object(Bucket="race", Key="r/b.tar", Body=last)
    s3.delete_object(Bucket="race", Key="r/a.tar")
    _drain(bproxy, "race")
    assert _sha(s3.get_object(Bucket="race", Key="r/b.tar")["Body"].read()) == _sha(last)
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="race")["Contents"]] == ["r/b.tar"]


def test_queue_survives_a_restart(bproxy: ProxyServer) -> None:
    s3 = make_client(bproxy.endpoint)
    s3.create_bucket(Bucket="again")
    rng = random.Random(23)
    base = rng.randbytes(48 * MIB)
    s3.put_object(Bucket="again", Key="k/a.zip", Body=base)
    second = edited(base, rng)
    s3.put_object(Bucket="again", Key="k/b.zip", Body=second)
    bproxy.kill()  # at once: encoding 48 MiB takes far longer than this
    queued = list((bproxy.data_dir / ".deltaglider" / "deferred").glob("*.json"))
    assert len(queued) == 1
    assert _sha(bproxy.data_dir.joinpath("again/deltaspaces/k/b.zip").read_bytes()) == _sha(second)
    bproxy.start()
    _drain(bproxy, "again")
    assert _kind(s3, "again", "k/b.zip") == "delta"
    assert _sha(s3.get_object(Bucket="again", Key="k/b.zip")["Body"].read()) == _sha(second)
    assert not any(p.exists() for p in queued)
