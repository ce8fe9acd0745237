"""``delta_strategy: chain`` through real HTTP: versions stored as deltas against the previous
version (bounded depth), read back byte-identical cold and warm; deletes and overwrites in the
middle of a chain never break the objects that depend on them; a damaged or inconsistent chain is
a 500, never wrong bytes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from botocore.exceptions import ClientError

from tests.conftest import make_client
from tests.integration.test_delta import edited
from tests.support.backends import BackendUnderTest, FilesystemLayout, S3Layout, StoredLayout, started_proxy
from tests.support.server import ProxyServer
from tests.support.signing import signed_headers

MIB = 1024 * 1024
MAX_DEPTH = 3
CONFIG = f"""
storage:
  buckets:
    chained:
      delta_strategy: chain
      max_chain_depth: {MAX_DEPTH}
    deep:
      delta_strategy: chain
      max_chain_depth: 32
    upstream:
      delta_strategy: reference
"""


@pytest.fixture(scope="module")
def cproxy(backend: BackendUnderTest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyServer]:
    root = tmp_path_factory.mktemp("chains")
    config = root / "config.yaml"
    config.write_text(CONFIG)
    server = started_proxy(
        backend,
        root,
        env={"DGP_DEBUG_HEADERS": "true", "DGP_DELTA_ENCODING": "inline"},
        args=["--config", str(config)],
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cs3(cproxy: ProxyServer) -> Any:
    s3 = make_client(cproxy.endpoint)
    for name in ("chained", "deep", "upstream"):
        s3.create_bucket(Bucket=name)
    return s3


@pytest.fixture(scope="module")
def stored(backend: BackendUnderTest, cproxy: ProxyServer) -> StoredLayout:
    return backend.layout(cproxy)


@pytest.fixture
def space(request: pytest.FixtureRequest) -> str:
    """A prefix of its own for each test (the buckets are shared by the module)."""
    return "s" + hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:12]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def record(stored: StoredLayout, bucket: str, name: str) -> dict[str, str]:
    """The stored record of ``name`` as strings: base, base sha and chain depth (1 when absent)."""
    if isinstance(stored, FilesystemLayout):
        doc = stored.record(bucket, name)
        return {
            "note": doc["note"],
            "ref": doc.get("ref_path", ""),
            "ref_sha256": doc.get("ref_sha256", ""),
            "depth": str(doc.get("chain_depth", 1)),
        }
    assert isinstance(stored, S3Layout)
    meta = stored.metadata(bucket, name)
    return {
        "note": meta["dg-note"],
        "ref": meta.get("dg-ref-path", ""),
        "ref_key": meta.get("dg-ref-key", ""),
        "ref_sha256": meta.get("dg-ref-sha256", ""),
        "depth": meta.get("dg-chain-depth", "1"),
    }


def drifting(count: int, seed: int, size: int = MIB) -> list[bytes]:
    """Versions that each change the previous one a little, so they drift away from the first."""
    rng = random.Random(seed)
    versions = [rng.randbytes(size)]
    for _ in range(count - 1):
        versions.append(edited(versions[-1], rng, edits=40))
    return versions


def read(s3: Any, bucket: str, key: str) -> bytes:
    return bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def test_siblings_of_the_first_version_stay_one_hop_deep(
    cproxy: ProxyServer, stored: StoredLayout, cs3: Any, space: str
) -> None:
    # Each version edits the first one, not the previous: the previous is no better a base than
    # reference.bin, so a chain would only add hops to every read.
    rng = random.Random(5)
    base = rng.randbytes(MIB)
    versions = [base, *(edited(base, rng, edits=40) for _ in range(5))]
    for number, body in enumerate(versions):
        cs3.put_object(Bucket="deep", Key=f"{space}/v{number}.zip", Body=body)
    depths = [record(stored, "deep", f"{space}/v{n}.zip.delta")["depth"] for n in range(len(versions))]
    assert depths == ["1"] * len(versions)
    assert {record(stored, "deep", f"{space}/v{n}.zip.delta")["ref"] for n in range(6)} == {"reference.bin"}
    for number, body in enumerate(versions):
        assert read(cs3, "deep", f"{space}/v{number}.zip") == body


def test_versions_chain_against_the_previous_one(
    cproxy: ProxyServer, stored: StoredLayout, cs3: Any, space: str
) -> None:
    versions = drifting(8, seed=1)
    for number, body in enumerate(versions):
        for bucket in ("chained", "upstream"):
            put = cs3.put_object(Bucket=bucket, Key=f"{space}/v{number}.zip", Body=body)
            assert put["ResponseMetadata"]["HTTPHeaders"]["x-amz-storage-type"] == "delta"
    depths = [record(stored, "chained", f"{space}/v{n}.zip.delta")["depth"] for n in range(8)]
    # The first version is a (tiny) delta against the reference it seeded, the second one against
    # that reference too (the same bytes as the first, one hop less); each later one is based on
    # the previous until the depth limit, then the chain starts again at reference.bin.
    assert depths == ["1", "1", "2", "3", "1", "2", "3", "1"]
    assert record(stored, "chained", f"{space}/v1.zip.delta")["ref"] == "reference.bin"
    third = record(stored, "chained", f"{space}/v2.zip.delta")
    assert third["ref"] == "v1.zip" and third["ref_sha256"] == sha(versions[1])
    if "ref_key" in third:
        assert third["ref_key"] == f"{space}/v1.zip"
    restart = record(stored, "chained", f"{space}/v4.zip.delta")
    assert restart["ref"] == "reference.bin"
    assert restart.get("ref_key", f"{space}/reference.bin") == f"{space}/reference.bin"
    # The reference strategy still writes every delta against reference.bin, without the extension.
    assert {record(stored, "upstream", f"{space}/v{n}.zip.delta")["ref"] for n in range(8)} == {
        "reference.bin"
    }
    assert {record(stored, "upstream", f"{space}/v{n}.zip.delta")["depth"] for n in range(8)} == {"1"}
    # Drifting versions: deltas against the previous version are smaller than against the first.
    assert stored.stored_bytes("chained", space) < 0.9 * stored.stored_bytes("upstream", space)
    # Warm and cold (restart empties the cache: every intermediate is rebuilt), byte-identical.
    for _ in range(2):
        for number, body in enumerate(versions):
            assert sha(read(cs3, "chained", f"{space}/v{number}.zip")) == sha(body)
        cproxy.stop()
        cproxy.start()
    ranged = cs3.get_object(Bucket="chained", Key=f"{space}/v5.zip", Range="bytes=1000-1999")["Body"].read()
    assert ranged == versions[5][1000:2000]


def test_delete_and_overwrite_in_the_middle_of_a_chain(stored: StoredLayout, cs3: Any, space: str) -> None:
    versions = drifting(5, seed=2)
    keys = [f"{space}/{n}.zip" for n in range(5)]
    for key, body in zip(keys, versions, strict=True):
        cs3.put_object(Bucket="deep", Key=key, Body=body)
    assert [record(stored, "deep", k + ".delta")["depth"] for k in keys] == ["1", "1", "2", "3", "4"]
    # Deleting 2 moves 3 onto 2's base (1), one level shallower; 4 still rests on 3.
    cs3.delete_object(Bucket="deep", Key=keys[2])
    moved = record(stored, "deep", keys[3] + ".delta")
    assert moved["ref"] == "1.zip" and moved["ref_sha256"] == sha(versions[1]) and moved["depth"] == "2"
    assert record(stored, "deep", keys[4] + ".delta")["ref"] == "3.zip"
    left = [0, 1, 3, 4]
    for n in left:
        assert sha(read(cs3, "deep", keys[n])) == sha(versions[n])
    # Overwriting 1 (now the base of 3) with unrelated bytes moves 3 onto reference.bin first.
    unrelated = random.Random(3).randbytes(MIB)
    cs3.put_object(Bucket="deep", Key=keys[1], Body=unrelated)
    assert record(stored, "deep", keys[3] + ".delta")["ref"] == "reference.bin"
    assert record(stored, "deep", keys[3] + ".delta")["depth"] == "1"
    assert sha(read(cs3, "deep", keys[1])) == sha(unrelated)
    for n in (0, 3, 4):
        assert sha(read(cs3, "deep", keys[n])) == sha(versions[n])
    # Deleting everything still removes the orphaned reference.
    for key in (keys[n] for n in left):
        cs3.delete_object(Bucket="deep", Key=key)
    assert stored.names("deep", space) == []


def test_stats_report_chain_depth(cproxy: ProxyServer, cs3: Any, space: str) -> None:
    for number, body in enumerate(drifting(5, seed=4, size=300_000)):
        cs3.put_object(Bucket="deep", Key=f"{space}/{number}.tar", Body=body)
    url = f"{cproxy.endpoint}/_/stats?bucket=deep"
    doc = requests.get(url, headers=signed_headers("GET", url)).json()
    (mine,) = [d for d in doc["deltaspaces"] if d["prefix"] == space]
    assert mine["deltas"] == 5 and mine["max_chain_depth"] == 4 and mine["mean_chain_depth"] == 2.2
    assert mine["original_bytes"] > mine["footprint_bytes"] > mine["stored_bytes"]


@pytest.mark.filesystem_only
@pytest.mark.parametrize("bucket", ["chained", "upstream"])
def test_random_histories_read_back_exactly(cproxy: ProxyServer, cs3: Any, space: str, bucket: str) -> None:
    """Random puts of new versions, overwrites and deletes anywhere in the chains (or, under the
    reference strategy, in one deltaspace); after every step and after a restart every remaining
    object reads back exactly."""
    rng = random.Random(int.from_bytes(os.urandom(4)))
    seed = rng.randrange(2**32)
    rng = random.Random(seed)
    live: dict[str, bytes] = {}
    latest = rng.randbytes(200_000)
    for step in range(40):
        op = rng.random()
        if op < 0.55 or not live:
            key = f"{space}/k{rng.randrange(12)}.zip"
            source = latest if rng.random() < 0.7 or not live else live[rng.choice(sorted(live))]
            body = (
                edited(source, rng, edits=rng.randrange(1, 12))
                if rng.random() < 0.9
                else rng.randbytes(50_000)
            )
            cs3.put_object(Bucket=bucket, Key=key, Body=body)
            live[key] = latest = body
        else:
            key = rng.choice(sorted(live))
            cs3.delete_object(Bucket=bucket, Key=key)
            del live[key]
        if step % 5 == 4:
            for key, body in live.items():
                assert sha(read(cs3, bucket, key)) == sha(body), f"seed {seed}, step {step}, {key}"
    cproxy.stop()
    cproxy.start()
    listed = cs3.list_objects_v2(Bucket=bucket, Prefix=f"{space}/").get("Contents", [])
    assert sorted(o["Key"] for o in listed) == sorted(live), f"seed {seed}"
    for key, body in live.items():
        assert sha(read(cs3, bucket, key)) == sha(body), f"seed {seed}, after restart, {key}"


@pytest.mark.filesystem_only
@pytest.mark.parametrize("damage", ["middle-delta", "depth-not-decreasing", "depth-over-ceiling"])
def test_a_broken_chain_is_never_served(
    cproxy: ProxyServer, stored: StoredLayout, cs3: Any, space: str, damage: str
) -> None:
    assert isinstance(stored, FilesystemLayout)
    versions = drifting(4, seed=5, size=300_000)
    for number, body in enumerate(versions):
        cs3.put_object(Bucket="deep", Key=f"{space}/{number}.zip", Body=body)
    target = stored._path("deep", f"{space}/2.zip.delta")
    if damage == "middle-delta":
        stored.corrupt("deep", f"{space}/1.zip.delta")
    else:
        doc = json.loads(os.getxattr(target, "user.dg.metadata"))
        # 2.zip (depth 2) claims the depth of its base 1.zip, or more than any GET decodes.
        doc["chain_depth"] = 1 if damage == "depth-not-decreasing" else 33
        os.setxattr(target, "user.dg.metadata", json.dumps(doc).encode())
    cproxy.stop()
    cproxy.start()  # nothing cached: the chain is walked and rebuilt from the backend
    for victim in ("2.zip", "3.zip"):
        with pytest.raises(ClientError) as exc:
            read(cs3, "deep", f"{space}/{victim}")
        assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert sha(read(cs3, "deep", f"{space}/0.zip")) == sha(versions[0])


def test_background_encoding_chains_too(tmp_path: Path) -> None:
    """The default background encoder picks bases the same way as an inline PUT."""
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    server = ProxyServer(data_dir=tmp_path / "data", args=["--config", str(config)]).start()
    try:
        s3 = make_client(server.endpoint)
        s3.create_bucket(Bucket="deep")
        versions = drifting(5, seed=6, size=500_000)
        for number, body in enumerate(versions):
            s3.put_object(Bucket="deep", Key=f"bg/{number}.zip", Body=body)
        url = f"{server.endpoint}/_/stats?bucket=deep"
        deadline = time.monotonic() + 60
        while requests.get(url, headers=signed_headers("GET", url)).json()["pending_delta_encodes"]:
            assert time.monotonic() < deadline, "background encoding did not finish"
            time.sleep(0.1)
        layout = FilesystemLayout(server.data_dir)
        depths = [layout.record("deep", f"bg/{n}.zip.delta").get("chain_depth", 1) for n in range(5)]
        assert depths == [1, 1, 2, 3, 4]
        server.stop()
        server.start()
        for number, body in enumerate(versions):
            assert sha(read(s3, "deep", f"bg/{number}.zip")) == sha(body)
    finally:
        server.stop()


@pytest.mark.parametrize("delay", [0.05, 0.3, 0.8])
@pytest.mark.parametrize("operation", ["delete", "overwrite"])
def test_kill_while_dependants_move(tmp_path: Path, operation: str, delay: float) -> None:
    """kill -9 while a delete/overwrite re-encodes the objects based on its victim: after a restart
    every object reads back exactly — the victim either still as it was or already replaced."""
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    server = ProxyServer(
        data_dir=tmp_path / "data", env={"DGP_DELTA_ENCODING": "inline"}, args=["--config", str(config)]
    ).start()
    try:
        s3 = make_client(server.endpoint)
        s3.create_bucket(Bucket="deep")
        versions = drifting(4, seed=7, size=12 * MIB)
        for number, body in enumerate(versions):
            s3.put_object(Bucket="deep", Key=f"k/{number}.tar", Body=body)
        replacement = random.Random(8).randbytes(MIB)
        # 1.tar is the base of 2.tar, which is the base of 3.tar.
        victim = "k/1.tar"

        def act() -> None:
            with contextlib.suppress(Exception):
                if operation == "delete":
                    s3.delete_object(Bucket="deep", Key=victim)
                else:
                    s3.put_object(Bucket="deep", Key=victim, Body=replacement)

        worker = threading.Thread(target=act)
        worker.start()
        time.sleep(delay)
        server.kill()
        worker.join(30)
        server.start()
        expected = {f"k/{n}.tar": body for n, body in enumerate(versions)}
        for key, body in expected.items():
            if key != victim:
                assert sha(read(s3, "deep", key)) == sha(body), key
        try:
            got = read(s3, "deep", victim)
        except ClientError as exc:
            assert operation == "delete" and exc.response["Error"]["Code"] == "NoSuchKey"
        else:
            assert sha(got) in (sha(versions[1]), sha(replacement))
        # And the interrupted operation, retried, completes with everything else intact.
        act()
        for key, body in expected.items():
            if key != victim:
                assert sha(read(s3, "deep", key)) == sha(body), key
    finally:
        server.stop()


def test_dependants_written_by_another_instance_are_found(tmp_path: Path) -> None:
    """Two proxies on one data directory: a delta another instance based on an object is moved
    before this instance deletes that object (the dependants index rereads what changed)."""
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    servers = [
        ProxyServer(
            data_dir=tmp_path / "data",
            env={"DGP_DELTA_ENCODING": "inline", "DGP_STATE_DIR": str(tmp_path / f"state-{n}")},
            args=["--config", str(config)],
        ).start()
        for n in (1, 2)
    ]
    try:
        first, second = (make_client(s.endpoint) for s in servers)
        first.create_bucket(Bucket="deep")
        versions = drifting(5, seed=9, size=400_000)
        for number in range(4):
            first.put_object(Bucket="deep", Key=f"m/{number}.zip", Body=versions[number])
        first.delete_object(Bucket="deep", Key="m/3.zip")  # a delete of a delta: the index is warm
        second.put_object(Bucket="deep", Key="m/4.zip", Body=versions[4])
        layout = FilesystemLayout(servers[0].data_dir)
        assert layout.record("deep", "m/4.zip.delta")["ref_path"] == "2.zip"
        first.delete_object(Bucket="deep", Key="m/2.zip")
        assert layout.record("deep", "m/4.zip.delta")["ref_path"] == "1.zip"
        for client in (first, second):
            for number in (0, 1, 4):
                assert sha(read(client, "deep", f"m/{number}.zip")) == sha(versions[number])
    finally:
        for server in servers:
            server.stop()


def test_a_bucket_switched_back_to_reference_still_protects_its_chains(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    server = ProxyServer(
        data_dir=tmp_path / "data", env={"DGP_DELTA_ENCODING": "inline"}, args=["--config", str(config)]
    ).start()
    try:
        s3 = make_client(server.endpoint)
        s3.create_bucket(Bucket="deep")
        versions = drifting(4, seed=10, size=300_000)
        for number, body in enumerate(versions):
            s3.put_object(Bucket="deep", Key=f"w/{number}.zip", Body=body)
        server.stop()
        switched = CONFIG.replace(
            "    deep:\n      delta_strategy: chain\n", "    deep:\n      delta_strategy: reference\n"
        )
        assert switched != CONFIG
        config.write_text(switched)
        server.start()
        layout = FilesystemLayout(server.data_dir)
        assert layout.record("deep", "w/3.zip.delta")["ref_path"] == "2.zip"
        s3.delete_object(Bucket="deep", Key="w/2.zip")
        # Moved onto 2's base, and new versions go against reference.bin again.
        assert layout.record("deep", "w/3.zip.delta")["ref_path"] == "1.zip"
        s3.put_object(Bucket="deep", Key="w/5.zip", Body=edited(versions[3], random.Random(11)))
        assert layout.record("deep", "w/5.zip.delta")["ref_path"] == "reference.bin"
        for number in (0, 1, 3):
            assert sha(read(s3, "deep", f"w/{number}.zip")) == sha(versions[number])
    finally:
        server.stop()
