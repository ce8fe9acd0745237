"""The storage a proxy under test runs on, and a raw view of what it stored there.

The integration suites run once per backend kind:

* ``filesystem`` — the proxy's own data directory;
* ``moto`` — moto's standalone S3 server on loopback, through the S3 backend;
* ``proxy`` — a second instance of this proxy (filesystem backend, layout access on), through the
  S3 backend: a proxy in front of a proxy.

:class:`StoredLayout` reads and damages the stored objects (``reference.bin``, ``*.delta``…)
directly, so layout and corruption tests assert the same things on every kind.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from tests.support.server import ACCESS_KEY, SECRET_KEY, ProxyServer

KINDS = ("filesystem", "moto", "proxy")
MOTO_KEY = "testing"
MOTO_SECRET = "testing"
LAYOUT_HEADER = "x-deltaglider-layout"


def raw_client(endpoint: str, key: str, secret: str, *, layout_header: bool) -> Any:
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )
    if layout_header:

        def add_header(request: Any, **_: Any) -> None:
            request.headers[LAYOUT_HEADER] = "raw"

        client.meta.events.register("before-sign.s3.*", add_header)
    return client


class StoredLayout:
    """What a proxy stored for a bucket, seen below the proxy."""

    def names(self, bucket: str, prefix: str = "") -> list[str]:
        """Sorted names of the stored objects directly inside one deltaspace."""
        raise NotImplementedError

    def read(self, bucket: str, name: str) -> bytes:
        raise NotImplementedError

    def exists(self, bucket: str, name: str) -> bool:
        return name.rsplit("/", 1)[-1] in self.names(bucket, name.rpartition("/")[0])

    def stored_bytes(self, bucket: str, prefix: str = "") -> int:
        base = f"{prefix}/" if prefix else ""
        return sum(len(self.read(bucket, base + n)) for n in self.names(bucket, prefix))

    def corrupt(self, bucket: str, name: str) -> None:
        """Flip one byte in the middle of the stored object, keeping its metadata."""
        raise NotImplementedError


@dataclass
class FilesystemLayout(StoredLayout):
    data_dir: Path

    def _path(self, bucket: str, name: str) -> Path:
        return self.data_dir / bucket / "deltaspaces" / name

    def names(self, bucket: str, prefix: str = "") -> list[str]:
        directory = self._path(bucket, prefix) if prefix else self.data_dir / bucket / "deltaspaces"
        if not directory.is_dir():
            return []
        return sorted(p.name for p in directory.iterdir() if p.is_file() and not p.name.startswith("."))

    def read(self, bucket: str, name: str) -> bytes:
        return self._path(bucket, name).read_bytes()

    def record(self, bucket: str, name: str) -> dict[str, Any]:
        return dict(json.loads(os.getxattr(self._path(bucket, name), "user.dg.metadata")))

    def corrupt(self, bucket: str, name: str) -> None:
        path = self._path(bucket, name)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        attrs = os.getxattr(path, "user.dg.metadata")
        path.write_bytes(bytes(data))
        os.setxattr(path, "user.dg.metadata", attrs)


@dataclass
class S3Layout(StoredLayout):
    client: Any

    def names(self, bucket: str, prefix: str = "") -> list[str]:
        base = f"{prefix}/" if prefix else ""
        found: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=base, Delimiter="/"
        ):
            found.extend(o["Key"][len(base) :] for o in page.get("Contents", []))
        return sorted(n for n in found if n)

    def read(self, bucket: str, name: str) -> bytes:
        return bytes(self.client.get_object(Bucket=bucket, Key=name)["Body"].read())

    def metadata(self, bucket: str, name: str) -> dict[str, str]:
        return dict(self.client.head_object(Bucket=bucket, Key=name)["Metadata"])

    def corrupt(self, bucket: str, name: str) -> None:
        meta = self.metadata(bucket, name)
        data = bytearray(self.read(bucket, name))
        data[len(data) // 2] ^= 0xFF
        self.client.put_object(Bucket=bucket, Key=name, Body=bytes(data), Metadata=meta)


@dataclass
class BackendUnderTest:
    """One running storage backend that proxies under test are pointed at."""

    kind: str
    root: Path
    endpoint: str | None = None
    key: str = ""
    secret: str = ""
    servers: list[Any] = field(default_factory=list)

    def proxy_env(self, proxy_root: Path) -> dict[str, str]:
        """Environment that points a proxy under test at this backend."""
        if self.kind == "filesystem":
            return {}
        assert self.endpoint is not None
        return {
            "DGP_S3_ENDPOINT": self.endpoint,
            "DGP_BE_AWS_ACCESS_KEY_ID": self.key,
            "DGP_BE_AWS_SECRET_ACCESS_KEY": self.secret,
            "DGP_STATE_DIR": str(proxy_root / "state"),
        }

    def layout(self, proxy: ProxyServer) -> StoredLayout:
        if self.kind == "filesystem":
            return FilesystemLayout(proxy.data_dir)
        assert self.endpoint is not None
        return S3Layout(raw_client(self.endpoint, self.key, self.secret, layout_header=self.kind == "proxy"))

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()


def start_backend(kind: str, root: Path) -> BackendUnderTest:
    if kind == "filesystem":
        return BackendUnderTest(kind, root)
    if kind == "moto":
        from tests.support.s3servers import MotoServer

        moto = MotoServer().start()
        return BackendUnderTest(kind, root, moto.endpoint, MOTO_KEY, MOTO_SECRET, [moto])
    if kind == "proxy":
        inner = ProxyServer(data_dir=root / "inner" / "data", env={"DGP_LAYOUT_ACCESS": "true"})
        (root / "inner").mkdir(parents=True, exist_ok=True)
        inner.start()
        return BackendUnderTest(kind, root, inner.endpoint, ACCESS_KEY, SECRET_KEY, [inner])
    raise ValueError(f"unknown backend kind {kind!r}")


def started_proxy(
    backend: BackendUnderTest, root: Path, env: dict[str, str] | None = None, args: list[str] | None = None
) -> ProxyServer:
    root.mkdir(parents=True, exist_ok=True)
    server = ProxyServer(
        data_dir=root / "data", env={**backend.proxy_env(root), **(env or {})}, args=list(args or [])
    )
    return server.start()
