"""The S3 backend goes away mid-run and comes back (issue: S3 backends, fault test).

The backend is a second instance of this proxy on its filesystem (its data survives the
outage, unlike moto's in-memory store), reached through the outer proxy's S3 backend.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest
import requests
from botocore.exceptions import ClientError

from tests.conftest import make_client
from tests.support.backends import BackendUnderTest, S3Layout, raw_client, started_proxy
from tests.support.server import ACCESS_KEY, SECRET_KEY, ProxyServer

MIB = 1024 * 1024


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_backend_outage_gives_s3_errors_and_recovers(tmp_path: Path) -> None:
    inner = ProxyServer(data_dir=tmp_path / "inner" / "data", env={"DGP_LAYOUT_ACCESS": "true"})
    (tmp_path / "inner").mkdir()
    inner.start()
    backend = BackendUnderTest("proxy", tmp_path, inner.endpoint, ACCESS_KEY, SECRET_KEY, [inner])
    outer = started_proxy(backend, tmp_path / "outer", env={"DGP_DELTA_ENCODING": "inline"})
    try:
        s3 = make_client(outer.endpoint)
        s3.create_bucket(Bucket="faults")
        rng = random.Random(4)
        v1 = rng.randbytes(2 * MIB)
        v2 = v1[:MIB] + b"changed" + v1[MIB:]
        s3.put_object(Bucket="faults", Key="rel/v1.zip", Body=v1)
        s3.put_object(Bucket="faults", Key="rel/v2.zip", Body=v2)

        inner.stop()
        for call in (
            lambda: s3.get_object(Bucket="faults", Key="rel/v2.zip"),
            lambda: s3.put_object(Bucket="faults", Key="rel/v3.zip", Body=v2 + b"3"),
            lambda: s3.list_objects_v2(Bucket="faults"),
            lambda: s3.delete_object(Bucket="faults", Key="rel/v1.zip"),
        ):
            with pytest.raises(ClientError) as exc:
                call()
            status = exc.value.response["ResponseMetadata"]["HTTPStatusCode"]
            assert status in (500, 503), exc.value.response
            assert exc.value.response["Error"]["Code"] in ("ServiceUnavailable", "InternalError")
        signed = s3.generate_presigned_url("get_object", Params={"Bucket": "faults", "Key": "rel/v1.zip"})
        outage = requests.get(signed, timeout=60)
        assert outage.status_code == 503
        assert outage.headers["content-type"] == "application/xml"
        assert b"<Code>ServiceUnavailable</Code>" in outage.content
        assert outage.headers["x-amz-request-id"].encode() in outage.content
        assert outage.headers["x-amz-request-id"] in outer.log()

        inner.start()
        assert _sha(s3.get_object(Bucket="faults", Key="rel/v1.zip")["Body"].read()) == _sha(v1)
        assert _sha(s3.get_object(Bucket="faults", Key="rel/v2.zip")["Body"].read()) == _sha(v2)
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="faults")["Contents"]]
        assert keys == ["rel/v1.zip", "rel/v2.zip"]  # the PUT during the outage left nothing
        stored = S3Layout(raw_client(inner.endpoint, ACCESS_KEY, SECRET_KEY, layout_header=True))
        assert stored.names("faults", "rel") == ["reference.bin", "v1.zip.delta", "v2.zip.delta"]
        s3.put_object(Bucket="faults", Key="rel/v3.zip", Body=v2 + b"3")
        assert s3.get_object(Bucket="faults", Key="rel/v3.zip")["Body"].read() == v2 + b"3"
    finally:
        outer.stop()
        inner.stop()


ENCRYPTING = """
storage:
  backend_encryption:
    mode: aes256-gcm-proxy
"""


@pytest.mark.parametrize(("encrypting", "lookups"), [(False, 2), (True, 3)])
def test_a_get_costs_the_backend_one_get_and_the_lookups(
    tmp_path: Path, encrypting: bool, lookups: int
) -> None:
    """Reads of plaintext objects take their record from the GetObject answer itself: a GET
    through the proxy is the engine's two HEADs (delta and plain name) plus one GetObject. An
    encrypting backend looks the record up first (its objects are encrypted) and wastes no GET."""
    from tests.support.backends import MOTO_KEY, MOTO_SECRET
    from tests.support.s3servers import FaultProxy, MotoServer

    moto = MotoServer().start()
    counter = FaultProxy(moto.port).start()
    backend = BackendUnderTest("moto", tmp_path, counter.endpoint, MOTO_KEY, MOTO_SECRET)
    env = {"DGP_DELTA_ENCODING": "inline"}
    args: list[str] = []
    if encrypting:
        config = tmp_path / "encrypting.yaml"
        config.write_text(ENCRYPTING)
        env["DGP_ENCRYPTION_KEY"] = "5e" * 32
        args = ["-c", str(config)]
    proxy = started_proxy(backend, tmp_path / "proxy", env=env, args=args)
    try:
        s3 = make_client(proxy.endpoint)
        s3.create_bucket(Bucket="counted")
        body = random.Random(9).randbytes(300_000)
        s3.put_object(Bucket="counted", Key="notes/plain.txt", Body=body)
        heads, gets = counter.calls("HEAD"), counter.calls("GET")
        assert s3.get_object(Bucket="counted", Key="notes/plain.txt")["Body"].read() == body
        seen = counter.requests[-(counter.calls("HEAD") - heads + counter.calls("GET") - gets) :]
        assert (counter.calls("HEAD") - heads, counter.calls("GET") - gets) == (lookups, 1), seen
        ranged = s3.get_object(Bucket="counted", Key="notes/plain.txt", Range="bytes=100-199")
        assert ranged["Body"].read() == body[100:200]
        # A copy looks its source up once too (the lookup that evaluated its conditions).
        before = len(counter.requests)
        s3.copy_object(Bucket="counted", Key="notes/copy.txt", CopySource="counted/notes/plain.txt")
        source_heads = [
            path
            for method, path in counter.requests[before:]
            if method == "HEAD" and path in ("/counted/notes/plain.txt", "/counted/notes/plain.txt.delta")
        ]
        assert len(source_heads) == lookups, counter.requests[before:]
        assert s3.get_object(Bucket="counted", Key="notes/copy.txt")["Body"].read() == body
    finally:
        proxy.stop()
        counter.stop()
        moto.stop()
