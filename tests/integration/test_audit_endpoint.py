"""The audit trail over HTTP (control-plane.md §10.1–§10.2): successful S3 writes land in the
ring with principal, client IP, User-Agent, bucket and key; ``GET /_/api/admin/audit`` reads them
newest first with a clamped ``limit``; ``DGP_AUDIT_LOG_PATH`` mirrors them as JSON lines."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from botocore.exceptions import ClientError

from tests.conftest import make_client
from tests.support.admin import ADMIN_PASSWORD, Admin
from tests.support.server import ProxyServer
from tests.support.signing import signed_headers

FIELDS = {"timestamp", "action", "user", "target", "ip", "ua", "bucket", "path"}
UA = "audit-test-client/1.0 (hostile | action=forged)"  # HTTP allows no line breaks; unit-tested


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyServer]:
    root = tmp_path_factory.mktemp("audit")
    server = ProxyServer(
        data_dir=root / "data", env={"DGP_AUDIT_LOG_PATH": str(root / "audit" / "audit.jsonl")}
    )
    (root / "audit").mkdir()
    server.start()
    yield server
    server.stop()


def audit(server: ProxyServer, query: str = "") -> requests.Response:
    url = f"{server.endpoint}/_/api/admin/audit{query}"
    return requests.get(url, headers=signed_headers("GET", url))


def entries(server: ProxyServer, query: str = "?limit=500") -> list[dict[str, Any]]:
    response = audit(server, query)
    assert response.status_code == 200, response.text
    return list(response.json()["entries"])


def client(server: ProxyServer) -> Any:
    s3 = make_client(server.endpoint, user_agent=UA)
    return s3


@pytest.fixture(scope="module")
def workload(server: ProxyServer) -> list[dict[str, Any]]:
    s3 = client(server)
    s3.create_bucket(Bucket="audited")
    s3.put_object(Bucket="audited", Key="docs/a.txt", Body=b"a")
    s3.copy_object(Bucket="audited", Key="docs/b.txt", CopySource={"Bucket": "audited", "Key": "docs/a.txt"})
    upload = s3.create_multipart_upload(Bucket="audited", Key="big/parts.bin")["UploadId"]
    part = s3.upload_part(
        Bucket="audited", Key="big/parts.bin", UploadId=upload, PartNumber=1, Body=b"p" * 10
    )
    s3.complete_multipart_upload(
        Bucket="audited",
        Key="big/parts.bin",
        UploadId=upload,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
    )
    s3.delete_object(Bucket="audited", Key="docs/a.txt")
    s3.delete_objects(Bucket="audited", Delete={"Objects": [{"Key": "docs/b.txt"}, {"Key": "big/parts.bin"}]})
    s3.delete_bucket(Bucket="audited")
    with pytest.raises(ClientError):  # a failed write is not audited
        s3.put_object(Bucket="no-such-bucket-audit", Key="x", Body=b"x")
    return entries(server)


def test_every_s3_write_is_audited_in_order(workload: list[dict[str, Any]]) -> None:
    mine = [e for e in reversed(workload) if e["bucket"] in ("audited", "no-such-bucket-audit")]
    assert [(e["action"], e["bucket"], e["path"]) for e in mine] == [
        ("s3_create_bucket", "audited", ""),
        ("s3_put", "audited", "docs/a.txt"),
        ("s3_copy", "audited", "docs/b.txt"),
        ("s3_put", "audited", "big/parts.bin"),  # CompleteMultipartUpload
        ("s3_delete", "audited", "docs/a.txt"),
        ("s3_delete", "audited", "docs/b.txt"),  # DeleteObjects: one entry per key
        ("s3_delete", "audited", "big/parts.bin"),
        ("s3_delete_bucket", "audited", ""),
    ]
    for entry in mine:
        assert set(entry) == FIELDS
        assert entry["user"] == "$bootstrap"
        assert entry["target"] == ""
        assert entry["ip"] == "127.0.0.1"
        # Sanitised: the separator cannot forge a field.
        assert entry["ua"].startswith("audit-test-client/1.0 (hostile \\| action=forged)")
        assert entry["timestamp"].endswith("Z")


def test_reads_are_newest_first_with_a_clamped_limit(server: ProxyServer, workload: Any) -> None:
    doc = audit(server).json()
    assert doc["limit"] == 100
    stamps = [e["timestamp"] for e in doc["entries"]]
    assert stamps == sorted(stamps, reverse=True)
    assert len(doc["entries"]) == len(workload)  # fewer than the default 100 so far
    two = audit(server, "?limit=2").json()
    assert two["limit"] == 2 and two["entries"] == doc["entries"][:2]
    assert audit(server, "?limit=0").json()["limit"] == 1
    assert len(audit(server, "?limit=0").json()["entries"]) == 1
    assert audit(server, "?limit=100000").json()["limit"] == 500
    bad = audit(server, "?limit=many")
    assert bad.status_code == 400 and "limit" in bad.json()["message"]


def test_audit_needs_an_admin(server: ProxyServer) -> None:
    # Unsigned: the admin API answers for it (no session → 401 JSON); badly signed: S3's 403.
    unsigned = requests.get(f"{server.endpoint}/_/api/admin/audit")
    assert unsigned.status_code == 401 and unsigned.json()["error"] == "unauthorized"
    url = f"{server.endpoint}/_/api/admin/audit"
    forged = signed_headers("GET", url, secret_key="wrong-secret-0000000000000000000000000000")
    assert requests.get(url, headers=forged).status_code == 403


def test_the_mirror_holds_the_same_entries_as_json_lines(server: ProxyServer, workload: Any) -> None:
    mirror = server.data_dir.parent / "audit" / "audit.jsonl"
    deadline = time.monotonic() + 10
    while True:  # written by a background thread
        lines = mirror.read_text().splitlines() if mirror.exists() else []
        if len(lines) >= len(workload) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    docs = [json.loads(line) for line in lines]
    assert docs == list(reversed(workload))
    assert mirror.stat().st_mode & 0o777 == 0o600


def test_audit_lines_in_the_log_carry_the_fields(server: ProxyServer, workload: Any) -> None:
    records = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    audits = [r for r in records if r.get("audit") is True]
    assert len(audits) >= len(workload)
    first = next(r for r in audits if r["action"] == "s3_copy")
    assert first["msg"].startswith("AUDIT | action=s3_copy | user=$bootstrap | target= | ip=127.0.0.1")
    assert first["bucket"] == "audited" and first["path"] == "docs/b.txt"
    assert all("\n" not in r["msg"] for r in audits)


def test_open_mode_writes_are_audited_as_anonymous(tmp_path: Path) -> None:
    server = ProxyServer(
        data_dir=tmp_path / "data",
        env={
            "DGP_AUTHENTICATION": "none",
            "DGP_ACCESS_KEY_ID": "",
            "DGP_SECRET_ACCESS_KEY": "",
            "DGP_BOOTSTRAP_PASSWORD": ADMIN_PASSWORD,
        },
    ).start()
    try:
        base = server.endpoint
        assert requests.put(f"{base}/open-bucket").status_code == 200
        assert requests.put(f"{base}/open-bucket/k.txt", data=b"x").status_code == 200
        # S3 is open, the admin API is not: the ring is read with an admin session.
        assert requests.get(f"{base}/_/api/admin/audit").status_code == 401
        admin = Admin(base)
        assert admin.login().status_code == 200
        found = admin.ok("GET", "/audit")["entries"]
        assert [(e["action"], e["user"], e["path"]) for e in found if e["action"].startswith("s3_")] == [
            ("s3_put", "anonymous", "k.txt"),
            ("s3_create_bucket", "anonymous", ""),
        ]
    finally:
        server.stop()
