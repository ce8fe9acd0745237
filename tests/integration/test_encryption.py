"""Encryption at rest through the real server (storage.md §11): boto3 against a proxy whose
backend (its own filesystem, or moto through the S3 backend) is in ``aes256-gcm-proxy`` mode.

The stored bytes are inspected and damaged below the proxy (on disk, or in moto directly) to
show that the backend only holds ciphertext and that damaged ciphertext is never served.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
import subprocess
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from botocore.exceptions import ClientError

from tests.conftest import make_client
from tests.support.backends import (
    BackendUnderTest,
    FilesystemLayout,
    S3Layout,
    StoredLayout,
    start_backend,
    started_proxy,
)
from tests.support.file_opens import FileOpens
from tests.support.server import PROXY_BIN, ProxyServer
from tests.support.signing import presigned_url

CHUNK = 65_536
FRAME = 4 + CHUNK + 16
HEADER = 16
KEY_A = "a1" * 32
KEY_B = "b2" * 32
KEY_ID_A = "test-key-a"
KEY_ID_B = "test-key-b"


def encrypted_config(root: Path, extra: str = "") -> Path:
    path = root / "encryption.yaml"
    path.write_text(
        f"""
storage:
  backend_encryption:
    mode: aes256-gcm-proxy
    key_id: {KEY_ID_A}
  buckets:
    enc-flat:
      compression: false
{extra}
"""
    )
    return path


def wire_size(size: int) -> int:
    frames = max(1, -(-size // CHUNK))
    return HEADER + size + 20 * frames


def sample(size: int, seed: str = "x") -> bytes:
    """Low-entropy, position-dependent bytes: any leak of plaintext would be easy to find."""
    line = b"".join(f"{seed} line {i:08d} of some text\n".encode() for i in range(size // 20 + 2))
    return line[:size]


@dataclass
class Setup:
    kind: str
    backend: BackendUnderTest
    proxy: ProxyServer
    s3: Any
    layout: StoredLayout
    root: Path

    def replace_stored(self, bucket: str, name: str, data: bytes) -> None:
        """Overwrite a stored object's bytes below the proxy, keeping its metadata."""
        layout = self.layout
        if isinstance(layout, FilesystemLayout):
            path = layout._path(bucket, name)
            attrs = os.getxattr(path, "user.dg.metadata")
            path.write_bytes(data)
            os.setxattr(path, "user.dg.metadata", attrs)
        else:
            assert isinstance(layout, S3Layout)
            meta = layout.metadata(bucket, name)
            layout.client.put_object(Bucket=bucket, Key=name, Body=data, Metadata=meta)

    def user_metadata(self, bucket: str, name: str) -> dict[str, str]:
        layout = self.layout
        if isinstance(layout, FilesystemLayout):
            return dict(layout.record(bucket, name).get("user_metadata", {}))
        assert isinstance(layout, S3Layout)
        meta = layout.metadata(bucket, name)
        return {k[len("user-") :]: v for k, v in meta.items() if k.startswith("user-")}

    def strip_markers(self, bucket: str, name: str) -> None:
        layout = self.layout
        if isinstance(layout, FilesystemLayout):
            path = layout._path(bucket, name)
            record = json.loads(os.getxattr(path, "user.dg.metadata"))
            record.pop("user_metadata", None)
            os.setxattr(path, "user.dg.metadata", json.dumps(record).encode())
        else:
            assert isinstance(layout, S3Layout)
            meta = {k: v for k, v in layout.metadata(bucket, name).items() if not k.startswith("user-dg-")}
            data = layout.read(bucket, name)
            layout.client.put_object(Bucket=bucket, Key=name, Body=data, Metadata=meta)

    def proxy_with(self, name: str, config: str, env: dict[str, str]) -> ProxyServer:
        """Another proxy on the same stored data with a different encryption setup."""
        root = self.root / name
        root.mkdir()
        path = root / "config.yaml"
        path.write_text(config)
        env = {"DGP_DELTA_ENCODING": "inline", **env}
        if self.kind == "filesystem":
            env["DGP_DATA_DIR"] = str(self.proxy.data_dir)
            env["DGP_STATE_DIR"] = str(root / "state")
        return started_proxy(self.backend, root, env=env, args=["-c", str(path)])


@pytest.fixture(scope="module", params=["filesystem", "moto"])
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    kind = str(request.param)
    root = tmp_path_factory.mktemp(f"enc-{kind}")
    backend = start_backend(kind, root / "backend")
    proxy_root = root / "proxy"
    proxy_root.mkdir()
    config = encrypted_config(proxy_root)
    proxy = started_proxy(
        backend,
        proxy_root,
        env={"DGP_ENCRYPTION_KEY": KEY_A, "DGP_DELTA_ENCODING": "inline"},
        args=["-c", str(config)],
    )
    client = make_client(proxy.endpoint)
    try:
        yield Setup(kind, backend, proxy, client, backend.layout(proxy), root)
    finally:
        proxy.stop()
        backend.stop()


@pytest.fixture
def bucket(setup: Setup) -> str:
    name = f"e-{uuid.uuid4().hex[:20]}"
    setup.s3.create_bucket(Bucket=name)
    return name


def get(s3: Any, bucket: str, key: str, **kwargs: Any) -> bytes:
    return bytes(s3.get_object(Bucket=bucket, Key=key, **kwargs)["Body"].read())


def assert_internal_error(s3: Any, bucket: str, key: str, **kwargs: Any) -> None:
    with pytest.raises(ClientError) as caught:
        get(s3, bucket, key, **kwargs)
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert caught.value.response["Error"]["Code"] == "InternalError"


def assert_no_plaintext_window(plaintext: bytes, stored: bytes, window: int = 64) -> None:
    windows = {plaintext[i : i + window] for i in range(0, max(1, len(plaintext) - window + 1))}
    leaks = [i for i in range(len(stored) - window + 1) if stored[i : i + window] in windows]
    assert not leaks, f"plaintext window found in ciphertext at offsets {leaks[:5]}"


# --- round trips and markers -------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5])
def test_passthrough_round_trip_stores_chunked_ciphertext(setup: Setup, bucket: str, size: int) -> None:
    body = sample(size)
    setup.s3.put_object(Bucket=bucket, Key="docs/notes.txt", Body=body)
    assert get(setup.s3, bucket, "docs/notes.txt") == body
    head = setup.s3.head_object(Bucket=bucket, Key="docs/notes.txt")
    assert head["ContentLength"] == size
    assert head["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    assert not any(k.startswith("dg-") for k in head["Metadata"])  # markers never shown
    stored = setup.layout.read(bucket, "docs/notes.txt")
    assert len(stored) == wire_size(size)
    assert stored[:4] == b"DGE1"
    assert struct.unpack("<I", stored[16:20])[0] == min(size, CHUNK) + 16
    markers = setup.user_metadata(bucket, "docs/notes.txt")
    assert markers["dg-encrypted"] == "aes-256-gcm-chunked-v1"
    assert markers["dg-encryption-key-id"] == KEY_ID_A
    listed = setup.s3.list_objects_v2(Bucket=bucket)["Contents"]
    assert [(o["Key"], o["Size"]) for o in listed] == [("docs/notes.txt", size)]


def test_ciphertext_holds_no_64_byte_window_of_plaintext(setup: Setup, bucket: str) -> None:
    body = sample(5 * CHUNK + 77, seed="secret")
    setup.s3.put_object(Bucket=bucket, Key="leak.txt", Body=body)
    assert_no_plaintext_window(body, setup.layout.read(bucket, "leak.txt"))


def test_delta_objects_and_reference_are_encrypted(setup: Setup, bucket: str) -> None:
    v1 = sample(3 * CHUNK + 1000, seed="release")
    v2 = bytearray(v1)
    v2[70_000:70_010] = b"CHANGED!!!"
    v2 = bytes(v2)
    for key, body in (("rel/app-1.zip", v1), ("rel/app-2.zip", v2)):
        response = setup.s3.put_object(Bucket=bucket, Key=key, Body=body)
        assert response["ResponseMetadata"]["HTTPHeaders"]["x-amz-storage-type"] == "delta"
    names = setup.layout.names(bucket, "rel")
    assert names == ["app-1.zip.delta", "app-2.zip.delta", "reference.bin"]
    for name in names:
        stored = setup.layout.read(bucket, f"rel/{name}")
        assert stored[:4] == b"DGE1"
        assert setup.user_metadata(bucket, f"rel/{name}")["dg-encrypted"] == "aes-256-gcm-chunked-v1"
        assert_no_plaintext_window(v1, stored)
    assert get(setup.s3, bucket, "rel/app-1.zip") == v1
    assert get(setup.s3, bucket, "rel/app-2.zip") == v2
    for first, last in ((CHUNK - 1, CHUNK), (69_999, 70_011), (len(v2) - 1, len(v2) - 1)):
        assert get(setup.s3, bucket, "rel/app-2.zip", Range=f"bytes={first}-{last}") == v2[first : last + 1]


def test_multipart_upload_round_trip(setup: Setup, bucket: str) -> None:
    part1, part2 = sample(5 * 1024 * 1024, "p1"), sample(CHUNK + 3, "p2")
    upload = setup.s3.create_multipart_upload(Bucket=bucket, Key="big.log")
    parts = []
    for number, data in ((1, part1), (2, part2)):
        etag = setup.s3.upload_part(
            Bucket=bucket, Key="big.log", UploadId=upload["UploadId"], PartNumber=number, Body=data
        )["ETag"]
        parts.append({"ETag": etag, "PartNumber": number})
    setup.s3.complete_multipart_upload(
        Bucket=bucket, Key="big.log", UploadId=upload["UploadId"], MultipartUpload={"Parts": parts}
    )
    assert get(setup.s3, bucket, "big.log") == part1 + part2
    assert setup.layout.read(bucket, "big.log")[:4] == b"DGE1"


def test_copy_object_re_seals_for_the_target(setup: Setup, bucket: str) -> None:
    body = sample(2 * CHUNK + 9, "copy")
    setup.s3.put_object(Bucket=bucket, Key="src.txt", Body=body)
    setup.s3.copy_object(Bucket=bucket, Key="dst.txt", CopySource={"Bucket": bucket, "Key": "src.txt"})
    assert get(setup.s3, bucket, "dst.txt") == body
    assert setup.user_metadata(bucket, "dst.txt")["dg-encryption-key-id"] == KEY_ID_A


def test_copy_into_a_compression_off_bucket(setup: Setup, bucket: str) -> None:
    """On S3 the ciphertext is copied server-side (same key, markers carried); the filesystem
    backend has no server-side copy, so the engine re-seals it."""
    body = sample(CHUNK + 17, "flat")
    setup.s3.put_object(Bucket=bucket, Key="src.txt", Body=body)
    setup.s3.create_bucket(Bucket="enc-flat")
    setup.s3.copy_object(Bucket="enc-flat", Key="dst.txt", CopySource={"Bucket": bucket, "Key": "src.txt"})
    assert get(setup.s3, "enc-flat", "dst.txt") == body
    assert setup.user_metadata("enc-flat", "dst.txt")["dg-encryption-key-id"] == KEY_ID_A
    same_bytes = setup.layout.read("enc-flat", "dst.txt") == setup.layout.read(bucket, "src.txt")
    assert same_bytes == (setup.kind == "moto")


# --- ranges --------------------------------------------------------------------------------------

SIZE = 3 * CHUNK + 100
RANGES = [
    (0, 0),
    (0, CHUNK - 1),
    (CHUNK - 1, CHUNK - 1),
    (CHUNK - 1, CHUNK),
    (CHUNK, CHUNK),
    (CHUNK + 1, 2 * CHUNK - 1),
    (2 * CHUNK - 1, 2 * CHUNK + 1),
    (3 * CHUNK - 1, 3 * CHUNK),
    (3 * CHUNK, SIZE - 1),
    (SIZE - 1, SIZE - 1),
    (1, SIZE - 2),
]


def test_ranges_on_frame_boundaries(setup: Setup, bucket: str) -> None:
    body = sample(SIZE, "ranges")
    setup.s3.put_object(Bucket=bucket, Key="r.txt", Body=body)
    for first, last in RANGES:
        got = setup.s3.get_object(Bucket=bucket, Key="r.txt", Range=f"bytes={first}-{last}")
        assert got["ContentRange"] == f"bytes {first}-{last}/{SIZE}"
        assert got["Body"].read() == body[first : last + 1], (first, last)
    assert get(setup.s3, bucket, "r.txt", Range="bytes=-10") == body[-10:]
    assert get(setup.s3, bucket, "r.txt", Range=f"bytes={CHUNK + 1}-") == body[CHUNK + 1 :]


def test_range_reads_only_the_frames_it_needs(setup: Setup, bucket: str) -> None:
    """Damage frame 2: ranges inside frames 0–1 still authenticate; one touching frame 2 fails."""
    body = sample(SIZE, "frames")
    setup.s3.put_object(Bucket=bucket, Key="f.txt", Body=body)
    stored = bytearray(setup.layout.read(bucket, "f.txt"))
    stored[HEADER + 2 * FRAME + 4 + 10] ^= 0x01
    setup.replace_stored(bucket, "f.txt", bytes(stored))
    assert get(setup.s3, bucket, "f.txt", Range=f"bytes=10-{2 * CHUNK - 1}") == body[10 : 2 * CHUNK]
    assert get(setup.s3, bucket, "f.txt", Range=f"bytes={3 * CHUNK}-") == body[3 * CHUNK :]
    assert_internal_error(setup.s3, bucket, "f.txt", Range=f"bytes={2 * CHUNK - 1}-{2 * CHUNK}")
    assert_internal_error(setup.s3, bucket, "f.txt")


@pytest.fixture(scope="module")
def fs_setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """An encrypting proxy on its own filesystem backend, for tests about local files."""
    root = tmp_path_factory.mktemp("enc-fs-only")
    backend = start_backend("filesystem", root / "backend")
    proxy_root = root / "proxy"
    proxy_root.mkdir()
    proxy = started_proxy(
        backend,
        proxy_root,
        env={"DGP_ENCRYPTION_KEY": KEY_A, "DGP_DELTA_ENCODING": "inline"},
        args=["-c", str(encrypted_config(proxy_root))],
    )
    try:
        yield Setup("filesystem", backend, proxy, make_client(proxy.endpoint), backend.layout(proxy), root)
    finally:
        proxy.stop()
        backend.stop()


def test_a_get_opens_the_stored_file_once(fs_setup: Setup) -> None:
    """Filesystem backend: a GET costs what a HEAD costs (the engine's lookup) plus one open,
    which serves the record, the header and every frame, whole object or range."""
    setup = fs_setup
    bucket = f"e-{uuid.uuid4().hex[:20]}"
    setup.s3.create_bucket(Bucket=bucket)
    body = sample(SIZE, "opens")
    setup.s3.put_object(Bucket=bucket, Key="o.txt", Body=body)
    assert isinstance(setup.layout, FilesystemLayout)
    with FileOpens(setup.layout._path(bucket, "o.txt")) as opens:
        setup.s3.head_object(Bucket=bucket, Key="o.txt")
        lookup = opens.take()
        assert lookup >= 1
        assert get(setup.s3, bucket, "o.txt") == body
        assert opens.take() == lookup + 1
        for first, last in ((0, 0), (CHUNK - 1, CHUNK), (SIZE - 1, SIZE - 1)):
            assert get(setup.s3, bucket, "o.txt", Range=f"bytes={first}-{last}") == body[first : last + 1]
            assert opens.take() == lookup + 1, (first, last)


# --- tampering -----------------------------------------------------------------------------------


def _flip(offset: int) -> Any:
    def damage(data: bytes) -> bytes:
        out = bytearray(data)
        out[offset] ^= 0x80
        return bytes(out)

    return damage


def _swap_frames(data: bytes) -> bytes:
    first, second = data[HEADER : HEADER + FRAME], data[HEADER + FRAME : HEADER + 2 * FRAME]
    return data[:HEADER] + second + first + data[HEADER + 2 * FRAME :]


TAMPERING = {
    "magic": _flip(1),
    "base-iv": _flip(8),
    "length-field": _flip(HEADER + 1),
    "frame-ciphertext": _flip(HEADER + 4 + 1000),
    "frame-tag": _flip(HEADER + FRAME - 3),
    "last-frame-tag": lambda data: _flip(len(data) - 1)(data),
    "truncated-last-frame": lambda data: data[:-5],
    "dropped-last-frame": lambda data: data[: HEADER + 3 * FRAME],
    "reordered-frames": _swap_frames,
}


@pytest.mark.parametrize("how", sorted(TAMPERING))
def test_tampered_ciphertext_is_never_served(setup: Setup, bucket: str, how: str) -> None:
    body = sample(SIZE, "tamper")
    setup.s3.put_object(Bucket=bucket, Key="t.txt", Body=body)
    stored = setup.layout.read(bucket, "t.txt")
    setup.replace_stored(bucket, "t.txt", TAMPERING[how](stored))
    assert_internal_error(setup.s3, bucket, "t.txt")
    # A range authenticates the frames it covers: the one that holds the damage.
    damaged = f"bytes={SIZE - 50}-" if how == "last-frame-tag" else "bytes=0-99"
    assert_internal_error(setup.s3, bucket, "t.txt", Range=damaged)


def test_damage_found_after_the_response_started_breaks_the_transfer(setup: Setup, bucket: str) -> None:
    """Past the first MiB the status line is out; the body must then end short, never complete."""
    body = sample(3 * 1024 * 1024, "late")
    setup.s3.put_object(Bucket=bucket, Key="late.txt", Body=body)
    stored = setup.layout.read(bucket, "late.txt")
    setup.replace_stored(bucket, "late.txt", _flip(len(stored) - 100)(stored))
    received = b""
    with pytest.raises(Exception):  # noqa: B017 - a 500 or a broken stream, both are right
        response = setup.s3.get_object(Bucket=bucket, Key="late.txt")
        received = response["Body"].read()
    assert received != body
    assert get(setup.s3, bucket, "late.txt", Range="bytes=0-99") == body[:100]


@pytest.mark.parametrize("victim", ["delta", "reference"])
def test_tampered_delta_or_reference_fails_delta_get(setup: Setup, bucket: str, victim: str) -> None:
    v1 = sample(2 * CHUNK, "ref")
    setup.s3.put_object(Bucket=bucket, Key="d/one.zip", Body=v1)
    setup.s3.put_object(Bucket=bucket, Key="d/two.zip", Body=v1[:-3] + b"end")
    name = "d/two.zip.delta" if victim == "delta" else "d/reference.bin"
    stored = setup.layout.read(bucket, name)
    setup.replace_stored(bucket, name, _flip(len(stored) - 2)(stored))
    if victim == "delta":
        assert_internal_error(setup.s3, bucket, "d/two.zip")
        return
    # This proxy still has the reference's verified plaintext in its cache: ask one that does not.
    cold = setup.proxy_with(
        f"cold-{bucket}", encrypted_config(setup.root).read_text(), {"DGP_ENCRYPTION_KEY": KEY_A}
    )
    try:
        assert_internal_error(make_client(cold.endpoint), bucket, "d/two.zip")
        assert "decryption failed" in cold.log()
    finally:
        cold.stop()


def test_ciphertext_without_markers_is_refused(setup: Setup, bucket: str) -> None:
    setup.s3.put_object(Bucket=bucket, Key="bare.txt", Body=sample(1000))
    setup.strip_markers(bucket, "bare.txt")
    assert_internal_error(setup.s3, bucket, "bare.txt")
    assert_internal_error(setup.s3, bucket, "bare.txt", Range="bytes=500-600")
    assert "chunked-encryption magic" in setup.proxy.log()


# --- keys ------------------------------------------------------------------------------------------


def test_wrong_key_and_missing_key_are_500s_naming_the_key_id(setup: Setup, bucket: str) -> None:
    body = sample(CHUNK + 10, "keys")
    setup.s3.put_object(Bucket=bucket, Key="k.txt", Body=body)
    same_id_other_key = setup.proxy_with(
        "wrong-key", encrypted_config(setup.root).read_text(), {"DGP_ENCRYPTION_KEY": KEY_B}
    )
    no_key = setup.proxy_with("no-key", "storage: {}\n", {})
    try:
        for proxy, expected in (
            (same_id_other_key, "decryption failed (wrong key or tampered data)"),
            (no_key, "has NO encryption key configured"),
        ):
            client = make_client(proxy.endpoint)
            assert_internal_error(client, bucket, "k.txt")
            assert client.head_object(Bucket=bucket, Key="k.txt")["ContentLength"] == len(body)
            log = proxy.log()
            assert expected in log
            assert KEY_ID_A in log
            assert KEY_A not in log and KEY_B not in log
    finally:
        same_id_other_key.stop()
        no_key.stop()


def test_previous_keys_read_old_objects_while_new_writes_use_the_active_key(
    setup: Setup, bucket: str
) -> None:
    old = sample(CHUNK * 2 + 1, "old")
    setup.s3.put_object(Bucket=bucket, Key="old.txt", Body=old)
    config = f"""
storage:
  backend_encryption:
    mode: aes256-gcm-proxy
    key_id: {KEY_ID_B}
    previous_keys:
      - key_id: {KEY_ID_A}
        key: "${{env:OLD_KEY}}"
"""
    rotated = setup.proxy_with("rotated", config, {"DGP_ENCRYPTION_KEY": KEY_B, "OLD_KEY": KEY_A})
    try:
        client = make_client(rotated.endpoint)
        assert get(client, bucket, "old.txt") == old
        client.put_object(Bucket=bucket, Key="new.txt", Body=b"new bytes")
        assert setup.user_metadata(bucket, "new.txt")["dg-encryption-key-id"] == KEY_ID_B
        assert get(client, bucket, "new.txt") == b"new bytes"
    finally:
        rotated.stop()
    assert_internal_error(setup.s3, bucket, "new.txt")  # the old proxy does not know key B


def test_mode_none_with_a_legacy_key_reads_old_objects_and_writes_plaintext(
    setup: Setup, bucket: str
) -> None:
    old = sample(CHUNK + 1, "shim")
    setup.s3.put_object(Bucket=bucket, Key="sealed.txt", Body=old)
    config = f"""
storage:
  backend_encryption:
    mode: none
    legacy_key: "${{env:OLD_KEY}}"
    legacy_key_id: {KEY_ID_A}
"""
    stopped = setup.proxy_with(f"shim-{bucket}", config, {"OLD_KEY": KEY_A})
    try:
        client = make_client(stopped.endpoint)
        assert get(client, bucket, "sealed.txt") == old
        client.put_object(Bucket=bucket, Key="open.txt", Body=b"plain from now on")
        assert setup.layout.read(bucket, "open.txt") == b"plain from now on"
        assert "dg-encrypted" not in setup.user_metadata(bucket, "open.txt")
    finally:
        stopped.stop()
    assert get(setup.s3, bucket, "open.txt") == b"plain from now on"  # plaintext stays readable


def test_private_dirs_are_0700(setup: Setup) -> None:
    state = setup.proxy.data_dir / ".deltaglider"
    if setup.kind != "filesystem":
        state = setup.root / "proxy" / "state"
    for path in (state, *(state / name for name in ("references", "spool", "multipart", "crypt.default"))):
        assert path.stat().st_mode & 0o777 == 0o700, path


# --- bodies sealed while they arrive (compression off) -----------------------------------------

FLAT = "enc-flat"


def state_dir(setup: Setup) -> Path:
    if setup.kind == "filesystem":
        return setup.proxy.data_dir / ".deltaglider"
    return setup.root / "proxy" / "state"


def flat_bucket(setup: Setup) -> str:
    """The configured compression-off bucket (created once per proxy)."""
    try:
        setup.s3.create_bucket(Bucket=FLAT)
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
    return FLAT


def sealed_temp_files(setup: Setup) -> list[Path]:
    return sorted((state_dir(setup) / "crypt.default").glob(".dg.crypt.*.sealed"))


def spooled_bytes(setup: Setup) -> bytes:
    return b"".join(p.read_bytes() for p in (state_dir(setup) / "spool").rglob("*") if p.is_file())


def wait_for(condition: Any, what: str, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def start_raw_put(setup: Setup, bucket: str, key: str, length: int, first: bytes) -> socket.socket:
    """A presigned PUT announcing ``length`` bytes of which only ``first`` is sent (so far)."""
    url = urllib.parse.urlsplit(presigned_url("PUT", f"{setup.proxy.endpoint}/{bucket}/{key}"))
    sock = socket.create_connection(("127.0.0.1", setup.proxy.port))
    head = f"PUT {url.path}?{url.query} HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Length: {length}\r\n\r\n"
    sock.sendall(head.encode() + first)
    return sock


def received_status(sock: socket.socket) -> int:
    sock.settimeout(30)
    answer = b""
    while b"\r\n" not in answer:
        piece = sock.recv(65536)
        if not piece:
            break
        answer += piece
    return int(answer.split(b" ", 2)[1])


def assert_seals_while_arriving(setup: Setup, body: bytes, sent: int) -> None:
    """Mid-upload: ciphertext is being written, the plaintext is nowhere on local disk."""
    files = wait_for(
        lambda: [p for p in sealed_temp_files(setup) if p.stat().st_size >= 4 * 1024 * 1024],
        "the body being sealed into the encryption work dir",
    )
    partial = files[0].read_bytes()
    assert partial[:4] == b"DGE1"
    spooled = spooled_bytes(setup)
    for offset in range(0, sent - 64, sent // 7):
        window = body[offset : offset + 64]
        assert window not in partial, f"plaintext at {offset} in the sealed file"
        assert window not in spooled, f"plaintext at {offset} spooled to disk"


def test_a_compression_off_put_is_sealed_while_it_arrives(setup: Setup) -> None:
    bucket, key = flat_bucket(setup), f"arriving-{uuid.uuid4().hex[:8]}.bin"
    body = sample(6 * 1024 * 1024 + 123, "arriving")
    sent = 5 * 1024 * 1024
    with start_raw_put(setup, bucket, key, len(body), body[:sent]) as sock:
        assert_seals_while_arriving(setup, body, sent)
        sock.sendall(body[sent:])
        assert received_status(sock) == 200
    assert get(setup.s3, bucket, key) == body
    stored = setup.layout.read(bucket, key)
    assert len(stored) == wire_size(len(body))
    assert setup.user_metadata(bucket, key)["dg-encryption-key-id"] == KEY_ID_A
    assert sealed_temp_files(setup) == []


def test_a_dropped_upload_leaves_no_sealed_bytes_and_no_object(setup: Setup) -> None:
    bucket, key = flat_bucket(setup), f"dropped-{uuid.uuid4().hex[:8]}.bin"
    body = sample(6 * 1024 * 1024, "dropped")
    sent = 5 * 1024 * 1024
    with start_raw_put(setup, bucket, key, len(body), body[:sent]) as sock:
        assert_seals_while_arriving(setup, body, sent)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # reset
    wait_for(lambda: sealed_temp_files(setup) == [], "the sealed temp file to be removed")
    with pytest.raises(ClientError) as caught:
        setup.s3.head_object(Bucket=bucket, Key=key)
    assert caught.value.response["Error"]["Code"] == "404"


@pytest.mark.parametrize("actual", [9, 20])
def test_aws_chunked_body_of_the_wrong_length_is_refused_and_nothing_is_left(
    setup: Setup, actual: int
) -> None:
    bucket, key = flat_bucket(setup), f"chunked-{uuid.uuid4().hex[:8]}.txt"
    data = b"z" * actual
    headers = {
        "x-amz-content-sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        "content-encoding": "aws-chunked",
        "x-amz-decoded-content-length": "10",
    }
    body = f"{actual:x}\r\n".encode() + data + b"\r\n0\r\n\r\n"
    url = presigned_url("PUT", f"{setup.proxy.endpoint}/{bucket}/{key}")
    response = requests.put(url, headers=headers, data=body, timeout=30)
    assert response.status_code == 400, response.text
    assert "<Code>IncompleteBody</Code>" in response.text
    assert sealed_temp_files(setup) == []
    with pytest.raises(ClientError):
        setup.s3.head_object(Bucket=bucket, Key=key)


def test_multipart_into_a_compression_off_bucket_is_sealed_as_it_is_joined(setup: Setup) -> None:
    bucket, key = flat_bucket(setup), f"joined-{uuid.uuid4().hex[:8]}.log"
    part1, part2 = sample(5 * 1024 * 1024, "j1"), sample(CHUNK + 3, "j2")
    upload = setup.s3.create_multipart_upload(Bucket=bucket, Key=key)
    parts = []
    for number, data in ((1, part1), (2, part2)):
        etag = setup.s3.upload_part(
            Bucket=bucket, Key=key, UploadId=upload["UploadId"], PartNumber=number, Body=data
        )["ETag"]
        parts.append({"ETag": etag, "PartNumber": number})
    done = setup.s3.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload["UploadId"], MultipartUpload={"Parts": parts}
    )
    assert done["ETag"].endswith('-2"')
    assert get(setup.s3, bucket, key) == part1 + part2
    assert len(setup.layout.read(bucket, key)) == wire_size(len(part1) + len(part2))
    assert setup.s3.head_object(Bucket=bucket, Key=key)["ETag"] == done["ETag"]
    assert sealed_temp_files(setup) == []


# --- rotation --------------------------------------------------------------------------------------

ROTATED_CONFIG = f"""
storage:
  backend_encryption:
    mode: aes256-gcm-proxy
    key_id: {KEY_ID_B}
    previous_keys:
      - key_id: {KEY_ID_A}
        key: "${{env:OLD_KEY}}"
"""


def run_rotation(setup: Setup, *args: str) -> subprocess.CompletedProcess[str]:
    root = setup.root / f"rotate-{uuid.uuid4().hex[:8]}"
    root.mkdir()
    config = root / "config.yaml"
    config.write_text(ROTATED_CONFIG)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DGP_", "AWS_"))}
    env.update(setup.backend.proxy_env(root))
    env.update({"DGP_ENCRYPTION_KEY": KEY_B, "OLD_KEY": KEY_A})
    if setup.kind == "filesystem":
        env.update({"DGP_DATA_DIR": str(setup.proxy.data_dir), "DGP_STATE_DIR": str(root / "state")})
    return subprocess.run(
        [str(PROXY_BIN), "rotate-keys", "-c", str(config), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_rotate_keys_re_encrypts_in_place_and_resumes(setup: Setup, bucket: str) -> None:
    v1 = sample(2 * CHUNK + 3, "rotate")
    objects = {
        "rel/a.zip": v1,
        "rel/b.zip": v1[:-4] + b"tail",
        "notes.txt": sample(100, "n"),
        "bad.txt": b"x" * 99,
    }
    for key, body in objects.items():
        setup.s3.put_object(Bucket=bucket, Key=key, Body=body)
    stored = setup.layout.read(bucket, "bad.txt")
    setup.replace_stored(bucket, "bad.txt", _flip(30)(stored))
    names = ["bad.txt", "notes.txt", "rel/a.zip.delta", "rel/b.zip.delta", "rel/reference.bin"]

    first = run_rotation(setup, "--bucket", bucket)
    assert first.returncode == 1, first.stderr  # bad.txt cannot be decrypted: reported, left alone
    assert "4 rotated" in first.stdout and "1 failed" in first.stdout
    assert "bad.txt" in first.stderr and KEY_B not in first.stderr + first.stdout
    for name in names:
        expected = KEY_ID_A if name == "bad.txt" else KEY_ID_B
        assert setup.user_metadata(bucket, name)["dg-encryption-key-id"] == expected, name
        assert_no_plaintext_window(v1, setup.layout.read(bucket, name))

    setup.replace_stored(bucket, "bad.txt", stored)  # repaired: a second run finishes the job
    second = run_rotation(setup, "--bucket", bucket)
    assert second.returncode == 0, second.stderr
    assert "4 current" in second.stdout and "1 rotated" in second.stdout

    only_b = setup.proxy_with(
        f"only-b-{bucket}",
        encrypted_config(setup.root).read_text().replace(KEY_ID_A, KEY_ID_B),
        {"DGP_ENCRYPTION_KEY": KEY_B},
    )
    try:
        client = make_client(only_b.endpoint)
        for key, body in objects.items():
            assert get(client, bucket, key) == body, key
            assert client.head_object(Bucket=bucket, Key=key)["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    finally:
        only_b.stop()


# --- legacy single-shot objects -------------------------------------------------------------------


def _store_single_shot(setup: Setup, bucket: str, name: str, blob: bytes) -> None:
    """Turn a proxy-written object into upstream's single-shot form: same record, other format."""
    layout = setup.layout
    if isinstance(layout, FilesystemLayout):
        path = layout._path(bucket, name)
        record = json.loads(os.getxattr(path, "user.dg.metadata"))
        record["user_metadata"]["dg-encrypted"] = "aes-256-gcm-v1"
        path.write_bytes(blob)
        os.setxattr(path, "user.dg.metadata", json.dumps(record).encode())
    else:
        assert isinstance(layout, S3Layout)
        meta = {**layout.metadata(bucket, name), "user-dg-encrypted": "aes-256-gcm-v1"}
        layout.client.put_object(Bucket=bucket, Key=name, Body=blob, Metadata=meta)


def test_legacy_single_shot_objects_are_read_and_verified(setup: Setup, bucket: str) -> None:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    body = sample(2 * CHUNK + 500, "legacy")
    setup.s3.put_object(Bucket=bucket, Key="old/format.txt", Body=body)
    iv = os.urandom(12)
    blob = iv + AESGCM(bytes.fromhex(KEY_A)).encrypt(iv, body, None)  # IV ‖ ciphertext ‖ tag, no AAD
    _store_single_shot(setup, bucket, "old/format.txt", blob)
    assert get(setup.s3, bucket, "old/format.txt") == body
    for first, last in ((0, 0), (CHUNK - 1, CHUNK + 1), (len(body) - 10, len(body) - 1)):
        assert (
            get(setup.s3, bucket, "old/format.txt", Range=f"bytes={first}-{last}") == body[first : last + 1]
        )
    _store_single_shot(setup, bucket, "old/format.txt", _flip(len(blob) - 1)(blob))
    assert_internal_error(setup.s3, bucket, "old/format.txt")
    assert_internal_error(setup.s3, bucket, "old/format.txt", Range="bytes=0-9")
    _store_single_shot(setup, bucket, "old/format.txt", blob[:20])
    assert_internal_error(setup.s3, bucket, "old/format.txt")


def test_background_encoding_turns_encrypted_objects_into_encrypted_deltas(setup: Setup, bucket: str) -> None:
    import random
    import time

    import requests

    from tests.support.signing import signed_headers

    background = setup.proxy_with(
        f"bg-{bucket}",
        encrypted_config(setup.root).read_text(),
        {"DGP_ENCRYPTION_KEY": KEY_A, "DGP_DELTA_ENCODING": "background"},
    )
    try:
        client = make_client(background.endpoint)
        rng = random.Random(5)
        base = rng.randbytes(300_000)
        versions = [base, base[:1000] + b"edit" + base[1004:], base[:-10] + b"0123456789"]
        for number, body in enumerate(versions):
            client.put_object(Bucket=bucket, Key=f"bg/{number}.zip", Body=body)
        url = f"{background.endpoint}/_/stats?bucket={bucket}"
        deadline = time.monotonic() + 60
        while int(requests.get(url, headers=signed_headers("GET", url)).json()["pending_delta_encodes"]):
            assert time.monotonic() < deadline, "background encoding did not finish"
            time.sleep(0.1)
        names = setup.layout.names(bucket, "bg")
        assert "reference.bin" in names and "2.zip.delta" in names, names
        for name in names:
            assert setup.user_metadata(bucket, f"bg/{name}")["dg-encryption-key-id"] == KEY_ID_A
            assert setup.layout.read(bucket, f"bg/{name}")[:4] == b"DGE1"
        for number, body in enumerate(versions):
            assert get(client, bucket, f"bg/{number}.zip") == body
    finally:
        background.stop()
