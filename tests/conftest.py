"""Shared fixtures: one real proxy per test session (per xdist worker), boto3 clients, buckets."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from tests.support.backends import KINDS, BackendUnderTest, StoredLayout, start_backend, started_proxy
from tests.support.server import ACCESS_KEY, SECRET_KEY, ProxyServer


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "filesystem_only: inspects the filesystem backend's files; not repeated on S3 backends"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test on the shared proxy runs once per backend kind (filesystem, moto, proxy)."""
    if "backend_kind" not in metafunc.fixturenames:
        return
    only_fs = metafunc.definition.get_closest_marker("filesystem_only") is not None
    if "data_dir" in metafunc.fixturenames:
        only_fs = True
    kinds = ["filesystem"] if only_fs else list(KINDS)
    metafunc.parametrize("backend_kind", kinds, indirect=True, scope="session")


@pytest.fixture(scope="session")
def backend_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def backend(backend_kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackendUnderTest]:
    running = start_backend(backend_kind, tmp_path_factory.mktemp(f"backend-{backend_kind}"))
    yield running
    running.stop()


@pytest.fixture(scope="session")
def proxy(backend: BackendUnderTest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyServer]:
    server = started_proxy(backend, tmp_path_factory.mktemp("proxy"))
    yield server
    server.stop()
    # Whatever the suite did to the shared proxy, its log never carries a secret it was given.
    log = server.log()
    # (moto's "testing" is too common a word to search for.)
    for secret in {SECRET_KEY, backend.secret} - {"", "testing"}:
        assert secret not in log, "a secret appears in the shared proxy's log"


@pytest.fixture(scope="session")
def layout(backend: BackendUnderTest, proxy: ProxyServer) -> StoredLayout:
    return backend.layout(proxy)


def make_client(endpoint: str, **config: Any) -> Any:
    options: dict[str, Any] = {
        "s3": {"addressing_style": "path"},
        "retries": {"max_attempts": 1},
        "signature_version": "s3v4",
    }
    options.update(config)
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name="us-east-1",
        config=Config(**options),
    )


@pytest.fixture(scope="session")
def s3(proxy: ProxyServer) -> Any:
    return make_client(proxy.endpoint)


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"t-{uuid.uuid4().hex[:20]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def data_dir(proxy: ProxyServer) -> Path:
    return proxy.data_dir
