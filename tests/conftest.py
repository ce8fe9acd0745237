"""Shared fixtures: one real proxy per test session (per xdist worker), boto3 clients, buckets."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from tests.support.server import ACCESS_KEY, SECRET_KEY, ProxyServer


@pytest.fixture(scope="session")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyServer]:
    root = tmp_path_factory.mktemp("proxy")
    server = ProxyServer(data_dir=root / "data").start()
    yield server
    server.stop()


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
