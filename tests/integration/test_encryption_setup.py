"""Encryption configuration as an operator meets it (storage.md §11.1–§11.2, §12.4): key errors
stop the start with the field named, secrets come from the environment, native SSE modes reach
the S3 service as request headers, and a native mode on a filesystem backend is only a warning.
"""

from __future__ import annotations

import base64
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_client
from tests.support.backends import MOTO_KEY, MOTO_SECRET, raw_client
from tests.support.s3servers import MotoServer
from tests.support.server import PROXY_BIN, ProxyServer

pytestmark = pytest.mark.timeout(180)
KEY = "c3" * 32


def run_cli(
    tmp_path: Path, config: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "config.yaml"
    path.write_text(config)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DGP_", "AWS_"))}
    clean["DGP_LISTEN_ADDR"] = "127.0.0.1:1"  # never serves: every case fails before listening
    clean.update(env or {})
    return subprocess.run(
        [str(PROXY_BIN), "-c", str(path)], env=clean, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )


PROXY_MODE = "storage:\n  backend_encryption:\n    mode: aes256-gcm-proxy\n"


@pytest.mark.parametrize(
    ("config", "env", "expected"),
    [
        (PROXY_MODE + "    key: abcd\n", {}, ["storage.backend_encryption.key", "64 hex chars"]),
        (PROXY_MODE, {"DGP_ENCRYPTION_KEY": "00" * 31}, ["storage.backend_encryption.key", "32 bytes"]),
        (
            PROXY_MODE,
            {"DGP_ENCRYPTION_KEY": base64.b64encode(b"k" * 16).decode()},
            ["storage.backend_encryption.key", "base64 decodes to 16 bytes"],
        ),
        (PROXY_MODE, {}, ["storage.backend_encryption", "needs a key", "DGP_ENCRYPTION_KEY"]),
        (
            "storage:\n  backend_encryption:\n    mode: sse-kms\n",
            {},
            ["storage.backend_encryption", "kms_key_id", "DGP_SSE_KMS_KEY_ID"],
        ),
        (
            "storage:\n  backends:\n    - name: eu-archive\n      type: filesystem\n      path: ./d\n"
            "      encryption: {mode: aes256-gcm-proxy}\n",
            {"DGP_ENCRYPTION_KEY": KEY},  # the singleton's variable does not feed a named backend
            ["storage.backends.0", "DGP_BACKEND_<NAME>_ENCRYPTION_KEY"],
        ),
        (
            "storage:\n  backends:\n"
            "    - {name: one, type: filesystem, path: ./one, encryption: "
            f"{{mode: aes256-gcm-proxy, key: '{'11' * 32}', key_id: shared}}}}\n"
            "    - {name: two, type: filesystem, path: ./two, encryption: "
            f"{{mode: aes256-gcm-proxy, key: '{'22' * 32}', key_id: shared}}}}\n",
            {},
            ["key_id='shared'", "DIFFERENT key bytes"],
        ),
    ],
    ids=[
        "short-hex",
        "short-env",
        "short-base64",
        "missing-key",
        "missing-kms-id",
        "named-needs-own-env",
        "id-clash",
    ],
)
def test_key_problems_stop_the_start(
    tmp_path: Path, config: str, env: dict[str, str], expected: list[str]
) -> None:
    result = run_cli(tmp_path, config, env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    for text in expected:
        assert text in result.stderr
    for secret in [KEY, *env.values()]:
        assert secret not in result.stderr


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    server = MotoServer().start()
    yield server
    server.stop()


def start(root: Path, config: str, env: dict[str, str]) -> ProxyServer:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "config.yaml"
    path.write_text(config)
    return ProxyServer(data_dir=root / "data", env=env, args=["-c", str(path)]).start()


def named_backends(
    moto: MotoServer, root: Path, remote: str, remote_encryption: str, local_encryption: str
) -> str:
    return f"""
storage:
  backends:
    - name: local-fs
      type: filesystem
      path: {root / "local"}
      encryption: {local_encryption}
    - name: eu-archive
      type: s3
      endpoint: {moto.endpoint}
      access_key_id: {MOTO_KEY}
      secret_access_key: {MOTO_SECRET}
      encryption: {remote_encryption}
  default_backend: local-fs
  buckets:
    {remote}:
      backend: eu-archive
"""


def test_named_backend_keys_come_from_their_env_vars(moto: MotoServer, tmp_path: Path) -> None:
    remote, local = f"remote-{uuid.uuid4().hex[:8]}", f"local-{uuid.uuid4().hex[:8]}"
    config = named_backends(moto, tmp_path, remote, "{mode: aes256-gcm-proxy, key_id: eu-1}", "{mode: none}")
    proxy = start(tmp_path / "p", config, {"DGP_BACKEND_EU_ARCHIVE_ENCRYPTION_KEY": KEY})
    try:
        client = make_client(proxy.endpoint)
        for bucket in (remote, local):
            client.create_bucket(Bucket=bucket)
            client.put_object(Bucket=bucket, Key="a.txt", Body=b"hello " * 1000)
            assert client.get_object(Bucket=bucket, Key="a.txt")["Body"].read() == b"hello " * 1000
        raw = raw_client(moto.endpoint, MOTO_KEY, MOTO_SECRET, layout_header=False)
        stored = raw.get_object(Bucket=remote, Key="a.txt")
        assert stored["Body"].read()[:4] == b"DGE1"
        assert stored["Metadata"]["user-dg-encryption-key-id"] == "eu-1"
        assert (tmp_path / "local" / local / "deltaspaces" / "a.txt").read_bytes() == b"hello " * 1000
    finally:
        proxy.stop()


@pytest.mark.parametrize(
    ("encryption", "expected"),
    [
        ("{mode: sse-s3}", {"ServerSideEncryption": "AES256"}),
        (
            "{mode: sse-kms, bucket_key_enabled: true}",
            {"ServerSideEncryption": "aws:kms", "BucketKeyEnabled": True},
        ),
    ],
    ids=["sse-s3", "sse-kms"],
)
def test_native_modes_ask_the_service_to_encrypt(
    moto: MotoServer, tmp_path: Path, encryption: str, expected: dict[str, Any]
) -> None:
    remote = f"remote-{uuid.uuid4().hex[:8]}"
    config = named_backends(moto, tmp_path, remote, encryption, "{mode: sse-s3}")
    kms = "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000"
    proxy = start(tmp_path / "p", config, {"DGP_BACKEND_EU_ARCHIVE_SSE_KMS_KEY_ID": kms})
    try:
        client = make_client(proxy.endpoint)
        client.create_bucket(Bucket=remote)
        client.put_object(Bucket=remote, Key="plain.txt", Body=b"served decrypted by S3")
        assert client.get_object(Bucket=remote, Key="plain.txt")["Body"].read() == b"served decrypted by S3"
        client.copy_object(Bucket=remote, Key="copy.txt", CopySource={"Bucket": remote, "Key": "plain.txt"})
        raw = raw_client(moto.endpoint, MOTO_KEY, MOTO_SECRET, layout_header=False)
        for name in ("plain.txt", "copy.txt"):
            head = raw.head_object(Bucket=remote, Key=name)
            for field, value in expected.items():
                assert head[field] == value, (name, field)
            if "SSEKMSKeyId" in head:
                assert head["SSEKMSKeyId"] == kms
            assert head["Metadata"]["dg-encrypted-native"] == encryption.split()[1].rstrip(",}")
            assert "user-dg-encrypted" not in head["Metadata"]
        assert "sse-s3 only applies to S3 backends" in proxy.log()  # the filesystem backend
    finally:
        proxy.stop()


def test_a_key_id_whose_key_changed_stops_the_start(tmp_path: Path) -> None:
    config = PROXY_MODE + "    key_id: pinned\n"
    first = start(tmp_path / "p", config, {"DGP_ENCRYPTION_KEY": KEY})
    first.stop()
    start(tmp_path / "p", config, {"DGP_ENCRYPTION_KEY": KEY}).stop()  # same key: starts again
    data = str(tmp_path / "p" / "data")
    other = "d4" * 32
    changed = run_cli(tmp_path, config, {"DGP_ENCRYPTION_KEY": other, "DGP_DATA_DIR": data})
    assert changed.returncode == 2, changed.stderr
    assert "key id 'pinned' is not the key this proxy used under that id before" in changed.stderr
    assert other not in changed.stderr and KEY not in changed.stderr


@pytest.mark.parametrize("args", [[], ["--bucket", "some-bucket"]], ids=["all", "one-bucket"])
def test_rotate_keys_without_an_active_key_says_so(tmp_path: Path, args: list[str]) -> None:
    path = tmp_path / "none.yaml"
    path.write_text("storage:\n  backend_encryption: {mode: none}\n")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DGP_", "AWS_"))}
    result = subprocess.run(
        [str(PROXY_BIN), "rotate-keys", "-c", str(path), *args],
        env=clean,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "an active key" in result.stderr or "no active key" in result.stderr
    assert "aes256-gcm-proxy" in result.stderr
    assert "Traceback" not in result.stderr
