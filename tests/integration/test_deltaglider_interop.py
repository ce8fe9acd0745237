"""Interoperability with the original Python ``deltaglider`` CLI (PyPI 6.2.0), storage.md §1.6.

Both tools share one S3 bucket layout on a moto server: ``<prefix>/reference.bin``,
``<prefix>/<name>.delta`` and direct objects under their own name, described by
``x-amz-meta-dg-*`` user metadata.

* CLI → moto, proxy (S3 backend on the same moto) reads: listing, GET, HEAD.
* boto3 → proxy → moto, CLI reads the deltas straight from moto.
* The proxy's raw metadata on moto, field by field (§1.5.2 plus the §1.6 [Decision]
  ``dg-ref-key``).
* Both writers in one deltaspace: either side seeds ``reference.bin``, the other adds deltas.

What the CLI needs to hydrate a delta (6.2.0, ``DeltaMeta.from_dict``): ``dg-tool``,
``dg-original-name``, ``dg-file-sha256``, ``dg-file-size``, ``dg-created-at`` (ISO 8601, optional
``Z``), ``dg-ref-key`` (the *full* key of the reference — its directory is where the CLI fetches
``reference.bin`` from), ``dg-ref-sha256`` (checked against the downloaded reference) and
``dg-delta-size``. ``dg-note`` and ``dg-delta-cmd`` are optional. The hydrated bytes are checked
against ``dg-file-sha256``. An object with ``dg-file-sha256`` but without ``dg-compression: none`` is
taken for a delta.

The proxy runs with ``DGP_DELTA_ENCODING=inline`` so deltas exist on the backend when the PUT
returns.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
import subprocess
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

import deltaglider_proxy
from tests.conftest import make_client
from tests.integration.test_delta import edited
from tests.support.deltaglider_cli import DeltagliderCli, ensure_deltaglider_cli
from tests.support.s3servers import MotoServer
from tests.support.server import PROXY_BIN, ProxyServer

pytestmark = pytest.mark.slow

# moto accepts any credentials; these are the proxy's backend keys and the CLI's AWS keys.
BACKEND_ACCESS_KEY = "MOTOBACKENDKEY000001"
BACKEND_SECRET_KEY = "moto/backend/secret/0000000000000000000000"
REGION = "us-east-1"

VERSION_COUNT = 4
DELTA_CMD = "xdelta3 -e -9 -s reference.bin {name} {name}.delta"
CREATED_AT_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")
HEX32 = re.compile(r"^[0-9a-f]{32}$")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Artifact:
    name: str
    path: Path
    data: bytes

    @property
    def sha256(self) -> str:
        return sha256(self.data)


def _release_zip(version: int, shared: list[bytes], rng: random.Random) -> bytes:
    """A stored (uncompressed) zip: the same large members in every version plus a few small
    per-version ones, so consecutive versions share almost all of their bytes."""
    buffer = io.BytesIO()
    stamp = (2024, 1, 1, 0, 0, 0)
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for index, blob in enumerate(shared):
            if index == version % len(shared):
                blob = blob[:1000] + rng.randbytes(3000) + blob[4000:]
            archive.writestr(zipfile.ZipInfo(f"app/lib/part{index}.bin", stamp), blob)
        archive.writestr(zipfile.ZipInfo("app/VERSION", stamp), f"1.4.{version}\n")
        archive.writestr(zipfile.ZipInfo("app/changes.bin", stamp), rng.randbytes(4000 + 500 * version))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> list[Artifact]:
    """VERSION_COUNT similar ~400 KB release zips plus one small text file (not delta-eligible)."""
    root = tmp_path_factory.mktemp("artifacts")
    rng = random.Random(61)
    shared = [rng.randbytes(50_000) for _ in range(8)]
    out = []
    for version in range(1, VERSION_COUNT + 1):
        name = f"app-1.4.{version}.zip"
        data = _release_zip(version, shared, rng)
        (root / name).write_bytes(data)
        out.append(Artifact(name, root / name, data))
    notes = b"release notes\n" * 20
    (root / "notes.txt").write_bytes(notes)
    out.append(Artifact("notes.txt", root / "notes.txt", notes))
    return out


def zips(artifacts: list[Artifact]) -> list[Artifact]:
    return [a for a in artifacts if a.name.endswith(".zip")]


def text(artifacts: list[Artifact]) -> Artifact:
    return next(a for a in artifacts if a.name.endswith(".txt"))


# ---------------------------------------------------------------------------------------------
# Servers and clients
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def deltaglider_executable() -> Path:
    return ensure_deltaglider_cli()


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(log_path=tmp_path_factory.mktemp("moto") / "moto.log").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def raw(moto: MotoServer) -> Any:
    """Plain boto3 straight at moto: what is really stored."""
    return boto3.client(
        "s3",
        endpoint_url=moto.endpoint,
        aws_access_key_id=BACKEND_ACCESS_KEY,
        aws_secret_access_key=BACKEND_SECRET_KEY,
        region_name=REGION,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


@pytest.fixture(scope="module")
def dgproxy(moto: MotoServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyServer]:
    root = tmp_path_factory.mktemp("interop-proxy")
    server = ProxyServer(
        data_dir=root / "data",
        env={
            "DGP_S3_ENDPOINT": moto.endpoint,
            "DGP_S3_REGION": REGION,
            "DGP_S3_PATH_STYLE": "true",
            "DGP_BE_AWS_ACCESS_KEY_ID": BACKEND_ACCESS_KEY,
            "DGP_BE_AWS_SECRET_ACCESS_KEY": BACKEND_SECRET_KEY,
            "DGP_DELTA_ENCODING": "inline",
            "DGP_STATE_DIR": str(root / "state"),
            "DGP_DEBUG_HEADERS": "true",
        },
    ).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def via_proxy(dgproxy: ProxyServer) -> Any:
    return make_client(dgproxy.endpoint)


@pytest.fixture(scope="module")
def cli(
    deltaglider_executable: Path, moto: MotoServer, tmp_path_factory: pytest.TempPathFactory
) -> DeltagliderCli:
    return DeltagliderCli(
        executable=deltaglider_executable,
        endpoint=moto.endpoint,
        access_key=BACKEND_ACCESS_KEY,
        secret_key=BACKEND_SECRET_KEY,
        region=REGION,
        workdir=tmp_path_factory.mktemp("deltaglider-cli"),
    )


def raw_keys(raw: Any, bucket: str, prefix: str = "") -> dict[str, int]:
    """Every stored key under ``prefix`` → stored size."""
    keys: dict[str, int] = {}
    for page in raw.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.update({obj["Key"]: obj["Size"] for obj in page.get("Contents", [])})
    return keys


def listed(s3: Any, bucket: str, prefix: str = "") -> dict[str, int]:
    """Every user-visible key under ``prefix`` (ListObjectsV2, paginated) → size."""
    keys: dict[str, int] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.update({obj["Key"]: obj["Size"] for obj in page.get("Contents", [])})
    return keys


# ---------------------------------------------------------------------------------------------
# CLI-written bucket
# ---------------------------------------------------------------------------------------------

CLI_BUCKET = "cli-written"
CLI_PREFIX = "releases/1.4"
CLI_ROOT_ZIP_COUNT = 2  # the first versions again, uploaded into the root deltaspace


@pytest.fixture(scope="module")
def cli_bucket(cli: DeltagliderCli, raw: Any, artifacts: list[Artifact]) -> dict[str, Artifact]:
    """The CLI uploads every artifact into ``releases/1.4/`` and two zips into the root
    deltaspace. Returns user key → artifact."""
    raw.create_bucket(Bucket=CLI_BUCKET)
    expected: dict[str, Artifact] = {}
    for artifact in artifacts:
        key = f"{CLI_PREFIX}/{artifact.name}"
        cli.upload(artifact.path, CLI_BUCKET, key)
        expected[key] = artifact
    for artifact in zips(artifacts)[:CLI_ROOT_ZIP_COUNT]:
        cli.upload(artifact.path, CLI_BUCKET, artifact.name)
        expected[artifact.name] = artifact
    return expected


def test_cli_writes_the_layout_the_spec_describes(
    cli: DeltagliderCli, raw: Any, cli_bucket: dict[str, Artifact], artifacts: list[Artifact], tmp_path: Path
) -> None:
    """Pins the 6.2.0 facts the proxy's read side depends on (no proxy involved)."""
    assert cli.version() == "deltaglider 6.2.0"
    first, *later = zips(artifacts)
    stored = raw_keys(raw, CLI_BUCKET, f"{CLI_PREFIX}/")
    assert set(stored) == {
        f"{CLI_PREFIX}/reference.bin",
        *(f"{CLI_PREFIX}/{a.name}.delta" for a in zips(artifacts)),
        f"{CLI_PREFIX}/notes.txt",
    }
    assert stored[f"{CLI_PREFIX}/reference.bin"] == len(first.data)
    for artifact in later:
        assert stored[f"{CLI_PREFIX}/{artifact.name}.delta"] < len(artifact.data) // 10

    def meta(key: str) -> dict[str, str]:
        return dict(raw.head_object(Bucket=CLI_BUCKET, Key=key)["Metadata"])

    reference = meta(f"{CLI_PREFIX}/reference.bin")
    assert reference == {
        "dg-tool": "deltaglider/6.2.0",
        "dg-source-name": first.name,
        "dg-file-sha256": first.sha256,
        "dg-created-at": reference["dg-created-at"],
        "dg-note": "reference",
    }
    self_delta = meta(f"{CLI_PREFIX}/{first.name}.delta")
    assert self_delta["dg-note"] == "zero-diff (reference identical)"
    assert self_delta["dg-ref-key"] == f"{CLI_PREFIX}/reference.bin"
    for artifact in later:
        delta = meta(f"{CLI_PREFIX}/{artifact.name}.delta")
        assert delta == {
            "dg-tool": "deltaglider/6.2.0",
            "dg-original-name": artifact.name,
            "dg-file-sha256": artifact.sha256,
            "dg-file-size": str(len(artifact.data)),
            "dg-created-at": delta["dg-created-at"],
            "dg-ref-key": f"{CLI_PREFIX}/reference.bin",
            "dg-ref-sha256": first.sha256,
            "dg-delta-size": str(stored[f"{CLI_PREFIX}/{artifact.name}.delta"]),
            "dg-delta-cmd": DELTA_CMD.format(name=artifact.name),
        }
        assert delta["dg-created-at"].endswith("Z")
    direct = meta(f"{CLI_PREFIX}/notes.txt")
    assert direct["dg-compression"] == "none"
    assert "dg-note" not in direct
    assert meta(f"{first.name}.delta")["dg-ref-key"] == "reference.bin"

    for key, artifact in cli_bucket.items():
        out = tmp_path / "cli-roundtrip" / key
        cli.download(CLI_BUCKET, key, out)
        assert sha256(out.read_bytes()) == artifact.sha256, key


def test_proxy_serves_what_the_cli_wrote(via_proxy: Any, raw: Any, cli_bucket: dict[str, Artifact]) -> None:
    # Precondition: the CLI really stored deltas (otherwise this would test nothing).
    assert f"{CLI_PREFIX}/reference.bin" in raw_keys(raw, CLI_BUCKET)

    everything = listed(via_proxy, CLI_BUCKET)
    assert everything == {key: len(a.data) for key, a in cli_bucket.items()}
    assert not [k for k in everything if k.endswith((".delta", "reference.bin"))]
    assert listed(via_proxy, CLI_BUCKET, f"{CLI_PREFIX}/") == {
        key: len(a.data) for key, a in cli_bucket.items() if key.startswith(f"{CLI_PREFIX}/")
    }
    top = via_proxy.list_objects_v2(Bucket=CLI_BUCKET, Delimiter="/")
    assert [p["Prefix"] for p in top.get("CommonPrefixes", [])] == ["releases/"]
    assert {o["Key"] for o in top.get("Contents", [])} == {k for k in cli_bucket if "/" not in k}

    for key, artifact in cli_bucket.items():
        head = via_proxy.head_object(Bucket=CLI_BUCKET, Key=key)
        assert head["ContentLength"] == len(artifact.data), key
        body = via_proxy.get_object(Bucket=CLI_BUCKET, Key=key)["Body"].read()
        assert len(body) == len(artifact.data), key
        assert sha256(body) == artifact.sha256, key


# ---------------------------------------------------------------------------------------------
# Proxy-written bucket
# ---------------------------------------------------------------------------------------------

PROXY_BUCKET = "proxy-written"
PROXY_PREFIX = "builds/nightly"
PROXY_ROOT_ZIP_COUNT = 2


@dataclass(frozen=True)
class ProxyWrite:
    key: str
    artifact: Artifact
    storage_type: str


@pytest.fixture(scope="module")
def proxy_bucket(via_proxy: Any, raw: Any, artifacts: list[Artifact]) -> dict[str, ProxyWrite]:
    """boto3 → proxy → moto: the text file and every zip into ``builds/nightly/``, two zips into
    the root deltaspace; each PUT sets a content type and one user metadata entry."""
    via_proxy.create_bucket(Bucket=PROXY_BUCKET)
    assert PROXY_BUCKET in {b["Name"] for b in raw.list_buckets()["Buckets"]}
    writes: dict[str, ProxyWrite] = {}
    # The text file goes first, before the deltaspace has a reference: stored as-is then, whatever
    # the proxy's similarity policy would make of it next to a reference.
    uploads = [(f"{PROXY_PREFIX}/{text(artifacts).name}", text(artifacts))]
    uploads += [(f"{PROXY_PREFIX}/{a.name}", a) for a in zips(artifacts)]
    uploads += [(a.name, a) for a in zips(artifacts)[:PROXY_ROOT_ZIP_COUNT]]
    for number, (key, artifact) in enumerate(uploads):
        response = via_proxy.put_object(
            Bucket=PROXY_BUCKET,
            Key=key,
            Body=artifact.data,
            ContentType="application/zip" if artifact.name.endswith(".zip") else "text/plain",
            Metadata={"build": str(number)},
        )
        storage_type = response["ResponseMetadata"]["HTTPHeaders"].get("x-amz-storage-type", "")
        writes[key] = ProxyWrite(key, artifact, storage_type)
    return writes


def test_proxy_puts_are_inline_deltas(proxy_bucket: dict[str, ProxyWrite], raw: Any) -> None:
    for write in proxy_bucket.values():
        kind = "delta" if write.artifact.name.endswith(".zip") else "passthrough"
        assert write.storage_type == kind, write.key
    expected = {"reference.bin", f"{PROXY_PREFIX}/reference.bin"}
    expected |= {f"{k}.delta" if k.endswith(".zip") else k for k in proxy_bucket}
    assert set(raw_keys(raw, PROXY_BUCKET)) == expected


def test_cli_hydrates_proxy_written_deltas(
    cli: DeltagliderCli, proxy_bucket: dict[str, ProxyWrite], tmp_path: Path
) -> None:
    for key, write in proxy_bucket.items():
        if not key.endswith(".zip"):
            continue
        out = tmp_path / "from-cli" / key
        cli.download(PROXY_BUCKET, key, out)
        assert sha256(out.read_bytes()) == write.artifact.sha256, key


def test_cli_downloads_proxy_written_passthrough(
    cli: DeltagliderCli, raw: Any, proxy_bucket: dict[str, ProxyWrite], tmp_path: Path
) -> None:
    """A non-delta object written through the proxy must be downloadable by the CLI too.

    6.2.0 takes any object carrying ``dg-file-sha256`` for a delta unless it also carries
    ``dg-compression: none`` (what its own direct uploads write), and then fails on the missing
    ``dg-ref-key``."""
    key = f"{PROXY_PREFIX}/notes.txt"
    out = tmp_path / "notes.txt"
    result = cli.raw("cp", f"s3://{PROXY_BUCKET}/{key}", str(out), "--endpoint-url", cli.endpoint)
    stored = raw.head_object(Bucket=PROXY_BUCKET, Key=key)["Metadata"]
    assert result.returncode == 0, (
        f"deltaglider 6.2.0 cannot download a proxy-written passthrough object: {result.stderr.strip()!r}; "
        f"stored metadata: {stored}"
    )
    assert out.read_bytes() == proxy_bucket[key].artifact.data


def test_cli_lists_proxy_written_objects(cli: DeltagliderCli, proxy_bucket: dict[str, ProxyWrite]) -> None:
    in_prefix = {
        k[len(PROXY_PREFIX) + 1 :]: w for k, w in proxy_bucket.items() if k.startswith(f"{PROXY_PREFIX}/")
    }
    entries = cli.ls(PROXY_BUCKET, f"{PROXY_PREFIX}/")
    assert sorted(e.name for e in entries) == sorted(in_prefix)
    # The CLI prints stored sizes: full size for direct objects, the delta's size for deltas.
    sizes = {e.name: e.size for e in entries}
    assert sizes["notes.txt"] == len(in_prefix["notes.txt"].artifact.data)
    for name, write in in_prefix.items():
        if name.endswith(".zip"):
            size = sizes[name]
            assert size is not None and size < len(write.artifact.data), name

    top = cli.ls(PROXY_BUCKET)
    assert {e.name for e in top if e.is_prefix} == {"builds/"}
    assert {e.name for e in top if not e.is_prefix} == {k for k in proxy_bucket if "/" not in k}


def test_proxy_metadata_on_the_backend_field_by_field(raw: Any, proxy_bucket: dict[str, ProxyWrite]) -> None:
    """§1.5.2 on what the proxy stored in moto, plus the §1.6 [Decision] dg-ref-key."""
    tool = f"deltaglider_proxy/{deltaglider_proxy.__version__}"
    for prefix in (PROXY_PREFIX, ""):
        in_space = {k: w for k, w in proxy_bucket.items() if k.rpartition("/")[0] == prefix}
        first = next(w for w in in_space.values() if w.key.endswith(".zip"))
        reference_key = f"{prefix}/reference.bin" if prefix else "reference.bin"
        head = raw.head_object(Bucket=PROXY_BUCKET, Key=reference_key)
        assert head["ContentType"] == "application/octet-stream"
        assert head["ContentLength"] == len(first.artifact.data)
        meta = dict(head["Metadata"])
        assert CREATED_AT_RE.match(meta["dg-created-at"]), meta["dg-created-at"]
        assert {k: v for k, v in meta.items() if not k.startswith("user-") and k != "content-type"} == {
            "dg-tool": tool,
            "dg-original-name": "__reference__",
            "dg-file-sha256": first.artifact.sha256,
            "dg-file-size": str(len(first.artifact.data)),
            "dg-md5": hashlib.md5(first.artifact.data).hexdigest(),
            "dg-created-at": meta["dg-created-at"],
            "dg-note": "reference",
            "dg-source-name": first.key,
        }

        for key, write in in_space.items():
            data = write.artifact.data
            if not key.endswith(".zip"):
                head = raw.head_object(Bucket=PROXY_BUCKET, Key=key)
                assert head["ContentType"] == "application/octet-stream"
                assert head["ContentLength"] == len(data)
                meta = dict(head["Metadata"])
                assert CREATED_AT_RE.match(meta["dg-created-at"])
                assert {k: v for k, v in meta.items() if not k.startswith("user-")} == {
                    "dg-tool": tool,
                    "dg-original-name": write.artifact.name,
                    "dg-file-sha256": write.artifact.sha256,
                    "dg-file-size": str(len(data)),
                    "dg-md5": hashlib.md5(data).hexdigest(),
                    "dg-created-at": meta["dg-created-at"],
                    "dg-note": "passthrough",
                    # What the CLI needs to download a direct upload without a ref key.
                    "dg-compression": "none",
                    "content-type": "text/plain",
                }
                continue
            delta_key = f"{key}.delta"
            head = raw.head_object(Bucket=PROXY_BUCKET, Key=delta_key)
            assert head["ContentType"] == "application/octet-stream", delta_key
            meta = dict(head["Metadata"])
            assert HEX64.match(meta["dg-file-sha256"]) and HEX32.match(meta["dg-md5"])
            assert CREATED_AT_RE.match(meta["dg-created-at"]), meta["dg-created-at"]
            assert meta["user-build"] == f"{list(proxy_bucket).index(key)}", delta_key
            assert {k: v for k, v in meta.items() if not k.startswith("user-")} == {
                "dg-tool": tool,
                "dg-original-name": write.artifact.name,
                "dg-file-sha256": write.artifact.sha256,
                "dg-file-size": str(len(data)),
                "dg-md5": hashlib.md5(data).hexdigest(),
                "dg-created-at": meta["dg-created-at"],
                "dg-note": "delta",
                "dg-ref-path": "reference.bin",
                "dg-ref-key": reference_key,
                "dg-ref-sha256": first.artifact.sha256,
                "dg-delta-size": str(head["ContentLength"]),
                "dg-delta-cmd": DELTA_CMD.format(name=write.artifact.name),
                "content-type": "application/zip",
            }, delta_key
            assert head["ContentLength"] < len(data) // 10, delta_key


# ---------------------------------------------------------------------------------------------
# Both writers in one deltaspace
# ---------------------------------------------------------------------------------------------


def test_cli_and_proxy_extend_each_others_deltaspaces(
    cli: DeltagliderCli, via_proxy: Any, raw: Any, artifacts: list[Artifact], tmp_path: Path
) -> None:
    """One side seeds ``reference.bin``, the other adds deltas against it; both read everything."""
    bucket = "mixed-writers"
    raw.create_bucket(Bucket=bucket)
    first, *later = zips(artifacts)

    # The CLI seeds, the proxy adds versions: proxy deltas against a CLI reference (which has no
    # dg-file-size and no dg-original-name).
    cli.upload(first.path, bucket, f"cli-first/{first.name}")
    for artifact in later:
        put = via_proxy.put_object(Bucket=bucket, Key=f"cli-first/{artifact.name}", Body=artifact.data)
        assert put["ResponseMetadata"]["HTTPHeaders"]["x-amz-storage-type"] == "delta"
        meta = raw.head_object(Bucket=bucket, Key=f"cli-first/{artifact.name}.delta")["Metadata"]
        assert meta["dg-ref-sha256"] == first.sha256
        assert meta["dg-ref-key"] == "cli-first/reference.bin"

    # The proxy seeds, the CLI adds versions: CLI deltas against a proxy reference.
    via_proxy.put_object(Bucket=bucket, Key=f"proxy-first/{first.name}", Body=first.data)
    for artifact in later:
        cli.upload(artifact.path, bucket, f"proxy-first/{artifact.name}")
        meta = raw.head_object(Bucket=bucket, Key=f"proxy-first/{artifact.name}.delta")["Metadata"]
        assert meta["dg-tool"] == "deltaglider/6.2.0"
        assert meta["dg-ref-sha256"] == first.sha256

    assert set(raw_keys(raw, bucket)) == {
        f"{space}/{name}"
        for space in ("cli-first", "proxy-first")
        for name in ["reference.bin", *(f"{a.name}.delta" for a in zips(artifacts))]
    }
    for space in ("cli-first", "proxy-first"):
        assert listed(via_proxy, bucket, f"{space}/") == {
            f"{space}/{a.name}": len(a.data) for a in zips(artifacts)
        }
        for artifact in zips(artifacts):
            key = f"{space}/{artifact.name}"
            body = via_proxy.get_object(Bucket=bucket, Key=key)["Body"].read()
            assert sha256(body) == artifact.sha256, f"proxy GET {key}"
            out = tmp_path / key
            cli.download(bucket, key, out)
            assert sha256(out.read_bytes()) == artifact.sha256, f"CLI download {key}"


def test_chain_bucket_is_refused_by_the_cli_until_repacked_to_reference(
    moto: MotoServer, raw: Any, cli: DeltagliderCli, tmp_path: Path
) -> None:
    """A chained delta is not readable by the CLI — it refuses (reference SHA mismatch), never
    writes wrong bytes; ``repack --strategy reference`` makes the whole prefix CLI-readable."""
    # Versions that each edit the previous one (drifting): the chain strategy bases each on the
    # previous. (The release zips of the other tests all edit one base: they stay one hop deep.)
    rng = random.Random(62)
    bodies = [rng.randbytes(400_000)]
    for _ in range(VERSION_COUNT - 1):
        bodies.append(edited(bodies[-1], rng, edits=40))
    chained = []
    for number, body in enumerate(bodies, 1):
        path = tmp_path / f"lib-2.0.{number}.zip"
        path.write_bytes(body)
        chained.append(Artifact(path.name, path, body))
    raw.create_bucket(Bucket="chainy")
    config = tmp_path / "chain.yaml"
    config.write_text("storage:\n  buckets:\n    chainy:\n      delta_strategy: chain\n")
    env = {
        "DGP_S3_ENDPOINT": moto.endpoint,
        "DGP_S3_REGION": REGION,
        "DGP_S3_PATH_STYLE": "true",
        "DGP_BE_AWS_ACCESS_KEY_ID": BACKEND_ACCESS_KEY,
        "DGP_BE_AWS_SECRET_ACCESS_KEY": BACKEND_SECRET_KEY,
        "DGP_DELTA_ENCODING": "inline",
        "DGP_STATE_DIR": str(tmp_path / "state"),
    }
    server = ProxyServer(data_dir=tmp_path / "data", env=env, args=["--config", str(config)]).start()
    try:
        s3 = make_client(server.endpoint)
        for artifact in chained:
            s3.put_object(Bucket="chainy", Key=f"rel/{artifact.name}", Body=artifact.data)
    finally:
        server.stop()
    last = chained[-1]
    meta = raw.head_object(Bucket="chainy", Key=f"rel/{last.name}.delta")["Metadata"]
    assert meta["dg-chain-depth"] == str(VERSION_COUNT - 1)
    assert meta["dg-ref-key"] == f"rel/{chained[-2].name}"
    refused_path = tmp_path / "refused.zip"
    refused = cli.raw("cp", f"s3://chainy/rel/{last.name}", str(refused_path), *cli._endpoint_args())
    assert refused.returncode != 0
    assert not refused_path.exists() or sha256(refused_path.read_bytes()) == last.sha256

    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DGP_", "AWS_"))}
    args = ["repack", "-c", str(config), "--bucket", "chainy", "--prefix", "rel", "--strategy", "reference"]
    done = subprocess.run(
        [str(PROXY_BIN), *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "stored bytes after" in done.stdout
    for artifact in chained:
        dest = tmp_path / "cli" / artifact.name
        cli.download("chainy", f"rel/{artifact.name}", dest)
        assert sha256(dest.read_bytes()) == artifact.sha256
        stored = raw.head_object(Bucket="chainy", Key=f"rel/{artifact.name}.delta")["Metadata"]
        assert "dg-chain-depth" not in stored
