"""One structured log line per S3 request (control-plane.md §10.3), and no secret in any log line.

The proxy runs on an S3 backend at debug level, so the log is as verbose as it gets; the test then
searches the whole log for every secret and signature the run used.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from botocore.exceptions import ClientError

from tests.conftest import make_client
from tests.support.backends import BackendUnderTest
from tests.support.s3servers import MotoServer
from tests.support.server import ACCESS_KEY, SECRET_KEY, ProxyServer
from tests.support.signing import presigned_url, signed_headers

BACKEND_KEY = "BEKEYLOGTEST00000001"
BACKEND_SECRET = "be-secret/9d8c7b6a5f4e3d2c1b0a+zz"
METRICS_TOKEN = "metrics-token-7e6d5c4b3a"
FIELDS = {
    "ts",
    "level",
    "logger",
    "request_id",
    "msg",
    "method",
    "bucket",
    "key",
    "operation",
    "principal",
    "access_key",
    "status",
    "bytes_in",
    "bytes_out",
    "duration_ms",
    "storage",
    "client_ip",
}


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(log_path=tmp_path_factory.mktemp("moto") / "moto.log").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def server(moto: MotoServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyServer]:
    root = tmp_path_factory.mktemp("logs")
    server = ProxyServer(
        data_dir=root / "data",
        env={
            **BackendUnderTest("moto", root, moto.endpoint, BACKEND_KEY, BACKEND_SECRET).proxy_env(root),
            "DGP_LOG_LEVEL": "debug",
            "DGP_METRICS_TOKEN": METRICS_TOKEN,
            "DGP_DELTA_ENCODING": "inline",
        },
    ).start()
    yield server
    server.stop()


def _records(server: ProxyServer) -> list[dict[str, Any]]:
    return [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def run(server: ProxyServer) -> dict[str, Any]:
    """A workload touching every logging path; returns the request ids and signatures it used."""
    ids: list[str] = []
    signatures: list[str] = []
    s3 = make_client(server.endpoint)

    def remember(http_response: Any, **_: Any) -> None:
        ids.append(http_response.headers["x-amz-request-id"])

    def keep_signature(request: Any, **_: Any) -> None:
        header = request.headers.get("Authorization", b"")
        text = header.decode() if isinstance(header, bytes) else header
        found = re.search(r"Signature=([0-9a-f]{64})", text)
        if found:
            signatures.append(found.group(1))

    s3.meta.events.register("after-call.s3.*", lambda **kw: remember(kw["http_response"]))
    s3.meta.events.register("before-send.s3.*", keep_signature)
    s3.create_bucket(Bucket="logged")
    s3.put_object(Bucket="logged", Key="dir/file one.bin", Body=b"z" * 5000)
    assert s3.get_object(Bucket="logged", Key="dir/file one.bin")["Body"].read() == b"z" * 5000
    with pytest.raises(ClientError):
        s3.get_object(Bucket="logged", Key="missing")
    url = f"{server.endpoint}/logged/dir/file%20one.bin"
    presigned = presigned_url("GET", url)
    signatures.append(parse_qs(urlsplit(presigned).query)["X-Amz-Signature"][0])
    response = requests.get(presigned)
    assert response.status_code == 200
    ids.append(response.headers["x-amz-request-id"])
    forged = signed_headers("GET", url, secret_key="forged-secret-000000000000000000000000000")
    signatures.append(re.findall(r"Signature=([0-9a-f]{64})", forged["Authorization"])[0])
    response = requests.get(url, headers=forged)
    assert response.status_code == 403
    ids.append(response.headers["x-amz-request-id"])
    scrape = requests.get(
        f"{server.endpoint}/_/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
    )
    assert scrape.status_code == 200
    return {"ids": ids, "signatures": signatures}


def test_one_line_per_request_with_every_field(server: ProxyServer, run: dict[str, Any]) -> None:
    access = [r for r in _records(server) if r["logger"] == "deltaglider_proxy.access"]
    for request_id in run["ids"]:
        lines = [r for r in access if r["request_id"] == request_id]
        assert len(lines) == 1, (request_id, lines)
        assert set(lines[0]) >= FIELDS
    by_op = {r["operation"]: r for r in access if r["request_id"] in run["ids"]}
    put = by_op["put_object"]
    assert (put["method"], put["bucket"], put["key"], put["status"]) == (
        "PUT",
        "logged",
        "dir/file one.bin",
        200,
    )
    assert put["bytes_in"] >= 5000 and put["storage"] == "s3"
    assert put["principal"] == "$bootstrap" and put["access_key"] == ACCESS_KEY
    assert put["client_ip"] == "127.0.0.1" and put["duration_ms"] >= 0
    gets = [r for r in access if r["request_id"] in run["ids"] and r["operation"] == "get_object"]
    assert sorted(r["status"] for r in gets) == [200, 200, 403, 404]
    assert max(r["bytes_out"] for r in gets) == 5000
    refused = next(r for r in gets if r["status"] == 403)
    assert refused["principal"] == "-"  # never authenticated


def test_no_secret_or_signature_is_ever_logged(server: ProxyServer, run: dict[str, Any]) -> None:
    log = server.log()
    assert len(run["signatures"]) >= 5
    assert any(r["level"] == "debug" for r in _records(server))  # the verbose level really was on
    for secret in (SECRET_KEY, BACKEND_SECRET, METRICS_TOKEN, *run["signatures"]):
        assert secret not in log, f"{secret[:6]}… appears in the log"
        assert secret.replace("/", "%2F").replace("+", "%2B") not in log


def _proxy(tmp_path: Path, env: dict[str, str]) -> ProxyServer:
    return ProxyServer(data_dir=tmp_path / "data", env=env).start()


def test_text_format_is_logfmt(tmp_path: Path) -> None:
    server = _proxy(tmp_path, {"DGP_LOG_FORMAT": "text"})
    try:
        response = requests.get(f"{server.endpoint}/")  # unsigned: 403, still one line
        request_id = response.headers["x-amz-request-id"]
    finally:
        server.stop()
    lines = [line for line in server.log().splitlines() if f"request_id={request_id}" in line]
    assert len(lines) == 1
    assert re.match(
        r"ts=\S+ level=info logger=deltaglider_proxy\.access request_id=\S+ msg=request ", lines[0]
    )
    for field in ("method=GET", "operation=", "status=403", "bytes_in=0", "storage=filesystem"):
        assert field in lines[0]


def test_rust_log_wins_and_filters_per_module(tmp_path: Path) -> None:
    # RUST_LOG beats DGP_LOG_LEVEL; `::` paths name our loggers; the audit logger stays at warn.
    server = _proxy(tmp_path, {"RUST_LOG": "warn,deltaglider_proxy::access=info", "DGP_LOG_LEVEL": "debug"})
    try:
        s3 = make_client(server.endpoint)
        s3.create_bucket(Bucket="filtered")
    finally:
        server.stop()
    records = _records(server)
    assert [r["operation"] for r in records if r["logger"] == "deltaglider_proxy.access"] == ["create_bucket"]
    assert not [r for r in records if r.get("audit")]  # audit lines are INFO: filtered out
    assert not [r for r in records if r["level"] == "debug"]


def test_control_plane_requests_log_one_line_without_the_query(server: ProxyServer) -> None:
    marker = "oauth-code-3c2b1a0f"
    response = requests.get(f"{server.endpoint}/_/api/admin/audit?limit=7&code={marker}")
    assert response.status_code == 401  # no admin session
    assert requests.get(f"{server.endpoint}/_/health").status_code == 200
    admin = [r for r in _records(server) if r["logger"] == "deltaglider_proxy.admin.access"]
    audit = [r for r in admin if r["path"] == "/_/api/admin/audit"]
    assert len(audit) == 1
    assert (audit[0]["method"], audit[0]["status"], audit[0]["client_ip"]) == ("GET", 401, "127.0.0.1")
    assert audit[0]["request_id"] != "-" and audit[0]["bytes_out"] > 0
    assert any(r["path"] == "/_/health" and r["status"] == 200 for r in admin)
    assert marker not in server.log()
