"""Named backends, routing with aliases, public prefixes, soft quotas and freeze (storage.md §10).

One proxy routes between its filesystem and a real S3 server (moto on loopback); clients are
boto3, signed and unsigned.
"""

from __future__ import annotations

import hashlib
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.conftest import make_client
from tests.support.backends import MOTO_KEY, MOTO_SECRET, raw_client
from tests.support.s3servers import MotoServer
from tests.support.server import PROXY_BIN, ProxyServer

MIB = 1024 * 1024


def _config(root: Path, moto: str, buckets: str) -> Path:
    path = root / "config.yaml"
    path.write_text(
        f"""
storage:
  backends:
    - name: local
      type: filesystem
      path: {root / "local"}
    - name: remote
      type: s3
      endpoint: {moto}
      access_key_id: {MOTO_KEY}
      secret_access_key: {MOTO_SECRET}
  default_backend: local
  buckets:
{buckets}
"""
    )
    return path


BUCKETS = """
    archive:
      backend: remote
      alias: real-archive-2026
    direct:
      backend: remote
    flat:
      backend: remote
      compression: false
    small:
      quota_bytes: 1048576
    www:
      public_prefixes: ["pub/"]
    openbucket:
      public: true
"""


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    server = MotoServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def routed(moto: MotoServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyServer]:
    root = tmp_path_factory.mktemp("routed")
    config = _config(root, moto.endpoint, BUCKETS)
    server = ProxyServer(
        data_dir=root / "data",
        args=["--config", str(config)],
        env={"DGP_LOG_LEVEL": "info,deltaglider_proxy.engine.objects=debug"},
    ).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def rs3(routed: ProxyServer) -> Any:
    return make_client(routed.endpoint)


@pytest.fixture(scope="module")
def anonymous(routed: ProxyServer) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=routed.endpoint,
        region_name="us-east-1",
        config=Config(
            signature_version=UNSIGNED, s3={"addressing_style": "path"}, retries={"max_attempts": 1}
        ),
    )


@pytest.fixture(scope="module")
def backend_s3(moto: MotoServer) -> Any:
    return raw_client(moto.endpoint, MOTO_KEY, MOTO_SECRET, layout_header=False)


def _code(exc: pytest.ExceptionInfo[ClientError]) -> tuple[int, str, str]:
    error = exc.value.response["Error"]
    return exc.value.response["ResponseMetadata"]["HTTPStatusCode"], error["Code"], error.get("Message", "")


# ---------------------------------------------------------------------------------- routing


def test_aliased_bucket_lives_on_the_s3_backend_under_its_real_name(
    rs3: Any, backend_s3: Any, routed: ProxyServer
) -> None:
    rs3.create_bucket(Bucket="archive")
    body = b"archived " * 1000
    rs3.put_object(Bucket="archive", Key="2026/notes.txt", Body=body)
    assert rs3.get_object(Bucket="archive", Key="2026/notes.txt")["Body"].read() == body
    real = backend_s3.list_objects_v2(Bucket="real-archive-2026")["Contents"]
    assert [o["Key"] for o in real] == ["2026/notes.txt"]
    meta = backend_s3.head_object(Bucket="real-archive-2026", Key="2026/notes.txt")["Metadata"]
    assert meta["dg-note"] == "passthrough"
    assert meta["dg-file-sha256"] == hashlib.sha256(body).hexdigest()
    # Nothing of it on the filesystem backend.
    assert not (routed.data_dir.parent / "local" / "archive").exists()
    with pytest.raises(ClientError) as exc:
        backend_s3.head_bucket(Bucket="archive")
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_unrouted_buckets_go_to_the_default_backend(rs3: Any, routed: ProxyServer) -> None:
    name = f"loc-{uuid.uuid4().hex[:12]}"
    rs3.create_bucket(Bucket=name)
    rs3.put_object(Bucket=name, Key="k", Body=b"local bytes")
    assert (routed.data_dir.parent / "local" / name / "deltaspaces" / "k").read_bytes() == b"local bytes"


def test_list_buckets_is_the_union_under_virtual_names(rs3: Any, backend_s3: Any) -> None:
    rs3.create_bucket(Bucket="archive")
    backend_s3.create_bucket(Bucket="unrouted-remote")
    names = [b["Name"] for b in rs3.list_buckets()["Buckets"]]
    assert names == sorted(names)
    # Routed names appear even before their real bucket exists; the alias target is shown
    # under its virtual name only; a real bucket of a non-default backend is listed too.
    assert {"archive", "direct", "unrouted-remote"} <= set(names)
    assert "real-archive-2026" not in names


def test_route_to_an_unknown_backend_is_a_startup_error(tmp_path: Path, moto: MotoServer) -> None:
    config = _config(tmp_path, moto.endpoint, "    broken:\n      backend: nowhere\n")
    result = subprocess.run(
        [str(PROXY_BIN), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "DGP_LISTEN_ADDR": "127.0.0.1:0"},
    )
    assert result.returncode != 0
    assert "buckets.broken.backend" in result.stderr and "nowhere" in result.stderr


def test_s3_backend_without_credentials_is_a_startup_error(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("storage:\n  backend:\n    type: s3\n    endpoint: http://127.0.0.1:9\n")
    result = subprocess.run(
        [str(PROXY_BIN), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "DGP_LISTEN_ADDR": "127.0.0.1:0"},
    )
    assert result.returncode != 0
    assert "requires explicit credentials" in result.stderr
    assert "DGP_BE_AWS_ACCESS_KEY_ID" in result.stderr


def test_copy_inside_one_s3_backend_is_server_side(rs3: Any, backend_s3: Any, routed: ProxyServer) -> None:
    rs3.create_bucket(Bucket="flat")
    body = bytes(range(256)) * 8192
    rs3.put_object(Bucket="flat", Key="src/a.zip", Body=body, Metadata={"origin": "ci"})
    rs3.copy_object(
        Bucket="flat",
        Key="dst/b.zip",
        CopySource={"Bucket": "flat", "Key": "src/a.zip"},
        MetadataDirective="REPLACE",
        Metadata={"copied": "yes"},
        ContentType="application/zip",
    )
    assert "server-side-copy" in routed.log()
    got = rs3.get_object(Bucket="flat", Key="dst/b.zip")
    assert got["Body"].read() == body
    assert got["Metadata"] == {"copied": "yes"} and got["ContentType"] == "application/zip"
    assert got["ETag"] == '"' + hashlib.md5(body).hexdigest() + '"'
    meta = backend_s3.head_object(Bucket="flat", Key="dst/b.zip")["Metadata"]
    assert meta["dg-original-name"] == "b.zip" and meta["dg-note"] == "passthrough"
    assert meta["dg-file-sha256"] == hashlib.sha256(body).hexdigest()
    # Across backends the bytes go through the proxy, and the copy is still exact.
    name = f"loc-{uuid.uuid4().hex[:12]}"
    rs3.create_bucket(Bucket=name)
    rs3.copy_object(Bucket=name, Key="b.zip", CopySource={"Bucket": "flat", "Key": "src/a.zip"})
    assert rs3.get_object(Bucket=name, Key="b.zip")["Body"].read() == body


# ---------------------------------------------------------------------------------- public prefixes


@pytest.fixture(scope="module")
def www(rs3: Any) -> str:
    rs3.create_bucket(Bucket="www")
    for key in ("pub/a.txt", "pub/sub/b.txt", "private/c.txt", "pubx.txt"):
        rs3.put_object(Bucket="www", Key=key, Body=key.encode())
    return "www"


def test_anonymous_reads_under_a_public_prefix(anonymous: Any, www: str) -> None:
    assert anonymous.get_object(Bucket=www, Key="pub/a.txt")["Body"].read() == b"pub/a.txt"
    assert anonymous.head_object(Bucket=www, Key="pub/sub/b.txt")["ContentLength"] == len("pub/sub/b.txt")
    ranged = anonymous.get_object(Bucket=www, Key="pub/a.txt", Range="bytes=0-2")["Body"].read()
    assert ranged == b"pub"


@pytest.mark.parametrize("key", ["private/c.txt", "pubx.txt", "missing.txt"])
def test_anonymous_reads_elsewhere_are_denied(anonymous: Any, www: str, key: str) -> None:
    with pytest.raises(ClientError) as exc:
        anonymous.get_object(Bucket=www, Key=key)
    assert _code(exc)[:2] == (403, "AccessDenied")


def test_anonymous_listing_shows_only_public_keys(anonymous: Any, www: str) -> None:
    everything = anonymous.list_objects_v2(Bucket=www)
    assert [o["Key"] for o in everything.get("Contents", [])] == ["pub/a.txt", "pub/sub/b.txt"]
    rolled = anonymous.list_objects_v2(Bucket=www, Delimiter="/")
    assert [p["Prefix"] for p in rolled.get("CommonPrefixes", [])] == ["pub/"]
    assert rolled.get("Contents", []) == []
    inside = anonymous.list_objects_v2(Bucket=www, Prefix="pub/sub/")
    assert [o["Key"] for o in inside["Contents"]] == ["pub/sub/b.txt"]
    with pytest.raises(ClientError) as exc:
        anonymous.list_objects_v2(Bucket=www, Prefix="private/")
    assert _code(exc)[:2] == (403, "AccessDenied")


def test_anonymous_writes_and_other_reads_are_denied(anonymous: Any, www: str, routed: ProxyServer) -> None:
    with pytest.raises(ClientError) as exc:
        anonymous.put_object(Bucket=www, Key="pub/new.txt", Body=b"x")
    assert _code(exc)[:2] == (403, "AccessDenied")
    with pytest.raises(ClientError) as exc:
        anonymous.delete_object(Bucket=www, Key="pub/a.txt")
    assert _code(exc)[:2] == (403, "AccessDenied")
    for query in ("uploads", "acl", "location"):
        response = requests.get(f"{routed.endpoint}/{www}?{query}", timeout=10)
        assert response.status_code == 403 and b"<Code>AccessDenied</Code>" in response.content
    response = requests.get(f"{routed.endpoint}/{www}/pub/a.txt?acl", timeout=10)
    assert response.status_code == 403
    with pytest.raises(ClientError):
        anonymous.list_buckets()


def test_signed_clients_see_everything(rs3: Any, www: str) -> None:
    keys = [o["Key"] for o in rs3.list_objects_v2(Bucket=www)["Contents"]]
    assert keys == ["private/c.txt", "pub/a.txt", "pub/sub/b.txt", "pubx.txt"]


def test_public_true_opens_the_whole_bucket_for_reading(rs3: Any, anonymous: Any) -> None:
    rs3.create_bucket(Bucket="openbucket")
    rs3.put_object(Bucket="openbucket", Key="any/thing", Body=b"1")
    assert anonymous.get_object(Bucket="openbucket", Key="any/thing")["Body"].read() == b"1"
    assert [o["Key"] for o in anonymous.list_objects_v2(Bucket="openbucket")["Contents"]] == ["any/thing"]
    with pytest.raises(ClientError):
        anonymous.put_object(Bucket="openbucket", Key="x", Body=b"no")


# ---------------------------------------------------------------------------------- quotas


def test_soft_quota_refuses_the_write_that_goes_over(rs3: Any) -> None:
    rs3.create_bucket(Bucket="small")
    rs3.put_object(Bucket="small", Key="a.bin", Body=b"a" * (600 * 1024))
    with pytest.raises(ClientError) as exc:
        rs3.put_object(Bucket="small", Key="b.bin", Body=b"b" * (600 * 1024))
    status, code, message = _code(exc)
    assert (status, code) == (403, "AccessDenied")
    assert message.startswith("Bucket quota exceeded:") and "MB limit" in message
    with pytest.raises(ClientError):
        rs3.head_object(Bucket="small", Key="b.bin")
    # Small enough still fits; copies and multipart completes are measured too.
    rs3.put_object(Bucket="small", Key="c.bin", Body=b"c" * 1000)
    with pytest.raises(ClientError) as exc:
        rs3.copy_object(Bucket="small", Key="d.bin", CopySource={"Bucket": "small", "Key": "a.bin"})
    assert _code(exc)[:2] == (403, "AccessDenied")
    upload = rs3.create_multipart_upload(Bucket="small", Key="m.bin")["UploadId"]
    etag = rs3.upload_part(Bucket="small", Key="m.bin", UploadId=upload, PartNumber=1, Body=b"m" * MIB)[
        "ETag"
    ]
    with pytest.raises(ClientError) as exc:
        rs3.complete_multipart_upload(
            Bucket="small",
            Key="m.bin",
            UploadId=upload,
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]},
        )
    assert _code(exc)[:2] == (403, "AccessDenied")
    rs3.abort_multipart_upload(Bucket="small", Key="m.bin", UploadId=upload)
    keys = [o["Key"] for o in rs3.list_objects_v2(Bucket="small")["Contents"]]
    assert keys == ["a.bin", "c.bin"]


def test_freeze_refuses_every_write_and_keeps_reads(moto: MotoServer, tmp_path: Path) -> None:
    open_config = _config(tmp_path, moto.endpoint, "    vault:\n      compression: true\n")
    server = ProxyServer(data_dir=tmp_path / "data", args=["--config", str(open_config)]).start()
    try:
        client = make_client(server.endpoint)
        client.create_bucket(Bucket="vault")
        client.put_object(Bucket="vault", Key="kept.txt", Body=b"precious")
    finally:
        server.stop()
    frozen_config = _config(tmp_path, moto.endpoint, "    vault:\n      quota_bytes: 0\n")
    server = ProxyServer(data_dir=tmp_path / "data", args=["--config", str(frozen_config)]).start()
    try:
        client = make_client(server.endpoint)
        assert client.get_object(Bucket="vault", Key="kept.txt")["Body"].read() == b"precious"
        assert [o["Key"] for o in client.list_objects_v2(Bucket="vault")["Contents"]] == ["kept.txt"]
        attempts = [
            lambda: client.put_object(Bucket="vault", Key="new.txt", Body=b"x"),
            lambda: client.delete_object(Bucket="vault", Key="kept.txt"),
            lambda: client.delete_objects(Bucket="vault", Delete={"Objects": [{"Key": "kept.txt"}]}),
            lambda: client.copy_object(
                Bucket="vault", Key="copy.txt", CopySource={"Bucket": "vault", "Key": "kept.txt"}
            ),
            lambda: client.create_multipart_upload(Bucket="vault", Key="mp.bin"),
            lambda: client.delete_bucket(Bucket="vault"),
        ]
        for attempt in attempts:
            with pytest.raises(ClientError) as exc:
                attempt()
            status, code, message = _code(exc)
            assert (status, code) == (403, "AccessDenied")
            assert message == "Bucket is frozen (quota = 0)"
        assert client.get_object(Bucket="vault", Key="kept.txt")["Body"].read() == b"precious"
    finally:
        server.stop()
