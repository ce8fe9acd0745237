"""``deltaglider-proxy repack``: an existing prefix re-packed into ``chain`` and back into
``reference`` offline, against the backend directly; every object reads back exactly through the
proxy afterwards — also after a kill -9 in the middle of a repack, which a re-run completes."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_client
from tests.integration.test_chains import drifting
from tests.support.server import PROXY_BIN, ProxyServer

BUCKET = "repack"
COUNT = 10


@pytest.fixture
def rproxy(tmp_path: Path) -> Iterator[ProxyServer]:
    server = ProxyServer(data_dir=tmp_path / "data", env={"DGP_DELTA_ENCODING": "inline"}).start()
    yield server
    server.stop()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def records(data_dir: Path, prefix: str) -> dict[str, dict[str, Any]]:
    space = data_dir / BUCKET / "deltaspaces" / prefix
    return {
        p.name: json.loads(os.getxattr(p, "user.dg.metadata"))
        for p in sorted(space.iterdir())
        if p.is_file() and not p.name.startswith(".")
    }


def repack_command(data_dir: Path, prefix: str, strategy: str) -> tuple[list[str], dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DGP_", "AWS_"))}
    env["DGP_DATA_DIR"] = str(data_dir)
    args = [str(PROXY_BIN), "repack", "--bucket", BUCKET, "--prefix", prefix, "--strategy", strategy]
    return [*args, "--max-chain-depth", "32"], env


def repack(data_dir: Path, prefix: str, strategy: str) -> str:
    args, env = repack_command(data_dir, prefix, strategy)
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def stored_bytes(output: str) -> tuple[int, int]:
    lines = {
        line.split(":")[0].strip(): line for line in output.splitlines() if line.startswith("stored bytes")
    }
    before = int(lines["stored bytes before"].split(":")[1].split()[0])
    after = int(lines["stored bytes after"].split(":")[1].split()[0])
    return before, after


def upload(server: ProxyServer, prefix: str, versions: list[bytes]) -> Any:
    s3 = make_client(server.endpoint)
    if BUCKET not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket=BUCKET)
    for number, body in enumerate(versions):
        s3.put_object(Bucket=BUCKET, Key=f"{prefix}/v{number:02d}.zip", Body=body)
    return s3


def check_reads(server: ProxyServer, prefix: str, versions: list[bytes]) -> None:
    s3 = make_client(server.endpoint)
    for number, body in enumerate(versions):
        got = s3.get_object(Bucket=BUCKET, Key=f"{prefix}/v{number:02d}.zip")["Body"].read()
        assert sha(got) == sha(body), number


def test_repack_into_chain_and_back(rproxy: ProxyServer) -> None:
    versions = drifting(COUNT, seed=31, size=400_000)
    upload(rproxy, "r", versions)
    rproxy.stop()
    upstream_form = records(rproxy.data_dir, "r")
    assert {d.get("ref_path") for n, d in upstream_form.items() if n.endswith(".delta")} == {"reference.bin"}

    output = repack(rproxy.data_dir, "r", "chain")
    before, after = stored_bytes(output)
    assert after < 0.8 * before, output
    chained = records(rproxy.data_dir, "r")
    # v01 stays against reference.bin: that is v00's content, one hop shallower.
    assert [chained[f"v{n:02d}.zip.delta"].get("chain_depth", 1) for n in range(COUNT)] == [
        1,
        *range(1, COUNT),
    ]
    assert chained["v03.zip.delta"]["ref_path"] == "v02.zip"
    # A second run finds everything in the target form.
    again = repack(rproxy.data_dir, "r", "chain")
    assert f"{COUNT} skipped" in again and stored_bytes(again) == (after, after)
    rproxy.start()
    check_reads(rproxy, "r", versions)
    rproxy.stop()

    output = repack(rproxy.data_dir, "r", "reference")
    assert stored_bytes(output) == (after, pytest.approx(before, rel=0.02))
    back = records(rproxy.data_dir, "r")
    for name, doc in back.items():
        if name.endswith(".delta"):
            # Exactly the upstream record again: what the deltaglider CLI reads.
            assert doc["ref_path"] == "reference.bin" and "chain_depth" not in doc
            assert list(doc) == list(upstream_form[name])
    rproxy.start()
    check_reads(rproxy, "r", versions)


@pytest.mark.parametrize("strategy", ["chain", "reference"])
def test_kill_during_repack_leaves_everything_readable(rproxy: ProxyServer, strategy: str) -> None:
    versions = drifting(COUNT, seed=32, size=1_500_000)
    upload(rproxy, "k", versions)
    rproxy.stop()
    if strategy == "reference":
        repack(rproxy.data_dir, "k", "chain")  # start from chains, go back

    def rewritten() -> int:
        docs = records(rproxy.data_dir, "k")
        deltas = [d for n, d in docs.items() if n.endswith(".delta")]
        if strategy == "chain":
            return sum(1 for d in deltas if d.get("chain_depth", 1) > 1)
        return sum(1 for d in deltas if d.get("ref_path") == "reference.bin") - 2  # v00, v01 already were

    for kill_after in (1, 4):
        args, env = repack_command(rproxy.data_dir, "k", strategy)
        process = subprocess.Popen(
            args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + 120
        while rewritten() < kill_after and process.poll() is None:
            assert time.monotonic() < deadline, "repack made no progress"
            time.sleep(0.005)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        assert rewritten() < COUNT - 2, "repack finished before it could be killed"
        rproxy.start()
        check_reads(rproxy, "k", versions)
        rproxy.stop()
    output = repack(rproxy.data_dir, "k", strategy)
    assert "skipped" in output
    # The killed runs' work directories (spool, cache) are gone too.
    assert not list((rproxy.data_dir / ".deltaglider").glob("repack-*"))
    assert rewritten() == COUNT - 2
    rproxy.start()
    check_reads(rproxy, "k", versions)


def test_repack_into_chain_encodes_what_reference_stored_whole(rproxy: ProxyServer) -> None:
    """Versions that drifted too far from the first for the ratio rule were stored as-is; against
    their previous version they are worth a delta, and repack makes them one."""
    rng = random.Random(33)
    versions = [rng.randbytes(200_000)]
    for _ in range(11):
        data = bytearray(versions[-1])
        for _ in range(15):  # ~15 % of the bytes replaced per version
            at = rng.randrange(0, len(data) - 2000)
            data[at : at + 2000] = rng.randbytes(2000)
        versions.append(bytes(data))
    upload(rproxy, "d", versions)
    rproxy.stop()
    whole = [n for n in records(rproxy.data_dir, "d") if not n.endswith((".delta", "reference.bin"))]
    assert whole, "the history should have outgrown the reference"
    output = repack(rproxy.data_dir, "d", "chain")
    before, after = stored_bytes(output)
    assert after < 0.6 * before, output
    assert all(n.endswith((".delta", "reference.bin")) for n in records(rproxy.data_dir, "d"))
    rproxy.start()
    check_reads(rproxy, "d", versions)
