"""Compression benchmark: what the proxy stores and how fast, on real versioned artifacts, beside the
anchors measured in the same run on the same files.

For each corpus (a directory of ``NNN_``-prefixed versions, see /work/shared/bench/CORPORA.md) a fresh
proxy is started and the versions are uploaded in order into one prefix of two buckets:

* ``bench-delta``: the default policy (delta storage where it pays);
* ``bench-chain``: ``delta_strategy: chain`` (deltas against the previous version, up to
  ``max_chain_depth`` hops; ``--max-chain-depth`` overrides the default);
* ``bench-plain``: ``compression: false`` in the bucket policy (``storage.buckets``), the passthrough
  anchor. (Uploading under a ``.passthrough`` key suffix would not do: eligibility also sniffs the
  body, so a zip or tar under any name is a delta candidate.)

Then the proxy is restarted (so the GETs are cold: no reference cached) and every object is read
back from both buckets — one timed pass (version by version, alternating which bucket goes first), then one
pass that checks each SHA-256. Printed per corpus:
original bytes, bytes stored on the backend (file sizes under the bucket's directory, without the
``.deltaglider`` state dir), savings, PUT and GET MB/s, the ``xdelta3 -e -9 -D`` each-against-first
anchor (first version whole plus every delta; ``-D`` because without it xdelta3 gunzips ``.tgz``
inputs and cannot give the original bytes back), the each-against-previous anchor (what a chain can
reach at unbounded depth), and the proxy worker's peak RSS. For the chain bucket, the deepest object
is also read first thing after the restart (nothing cached: every hop decoded) and timed against a
GET of the same object from the passthrough bucket. ``--big-object-gb``
adds a synthetic ``.tar`` of that size (a random base plus an edited copy of it), PUT twice (the
second version edited again) and read back.

    .venv/bin/python bench/compression.py [--corpus-dir /tmp/dg-corpus] [--corpora a,b] [--dir DIR]
        [--big-object-gb 2] [--skip-anchor]

Works whatever the engine does: before delta storage exists it shows passthrough numbers twice.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import requests
from botocore.config import Config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support.server import ACCESS_KEY, SECRET_KEY, ProxyServer
from tests.support.signing import signed_headers

MB = 1_000_000
MiB = 1024 * 1024
DELTA_BUCKET = "bench-delta"
CHAIN_BUCKET = "bench-chain"
PLAIN_BUCKET = "bench-plain"
BUCKETS = (DELTA_BUCKET, CHAIN_BUCKET, PLAIN_BUCKET)
CONFIG = (
    f"storage:\n  buckets:\n    {PLAIN_BUCKET}:\n      compression: false\n"
    f"    {CHAIN_BUCKET}:\n      delta_strategy: chain\n"
)
# Extra lines for the delta bucket's policy and the proxy's advanced section (command-line knobs).
EXTRA_CONFIG: list[str] = []
STATE_DIR = ".deltaglider"
# Goals (the acceptance figures).
PUT_GOAL = 0.5
GET_GOAL = 0.8
RSS_GOAL = 256 * MiB
DEEP_GET_GOAL = 0.5


def versions(corpus: Path) -> list[Path]:
    return sorted(p for p in corpus.iterdir() if p.is_file() and p.name[:3].isdigit() and p.name[3:4] == "_")


def sha256_file(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name="us-east-1",
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )


def presigned(s3: Any, method: str, bucket: str, key: str) -> str:
    return str(s3.generate_presigned_url(method, Params={"Bucket": bucket, "Key": key}, ExpiresIn=7200))


def http_put(url: str, source: Path) -> None:
    # Presigned URLs and a streamed file body, as in bench/passthrough.py: no client-side hashing.
    with open(source, "rb") as body:
        response = requests.put(url, data=body, headers={"content-length": str(source.stat().st_size)})
    if response.status_code != 200:
        raise RuntimeError(f"PUT {source.name}: {response.status_code} {response.text[:300]}")


def http_get(url: str, expected: int, digest: Any = None) -> None:
    received = 0
    with requests.get(url, stream=True) as response:
        if response.status_code != 200:
            raise RuntimeError(f"GET: {response.status_code} {response.text[:300]}")
        for chunk in response.iter_content(1024 * 1024):
            received += len(chunk)
            if digest is not None:
                digest.update(chunk)
    if received != expected:
        raise RuntimeError(f"GET returned {received} bytes, expected {expected}")


def stored_bytes(data_dir: Path, bucket: str) -> int:
    total = 0
    for root, dirs, files in os.walk(data_dir / bucket):
        dirs[:] = [d for d in dirs if d != STATE_DIR]
        for name in files:
            total += os.lstat(os.path.join(root, name)).st_size
    return total


def anchor_bytes(files: list[Path], workdir: Path, *, previous: bool = False) -> int:
    """``xdelta3 -e -9 -D`` each version against the first (or the previous); the first counted whole."""
    total = files[0].stat().st_size
    delta = workdir / "anchor.vcdiff"
    for number, target in enumerate(files[1:], start=1):
        source = files[number - 1] if previous else files[0]
        subprocess.run(
            ["xdelta3", "-e", "-f", "-9", "-D", "-s", str(source), str(target), str(delta)],
            check=True,
            capture_output=True,
        )
        total += delta.stat().st_size
    delta.unlink(missing_ok=True)
    return total


# ---------------------------------------------------------------------------------- memory watch


def children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                found.extend(int(c) for c in handle.read().split())
    except OSError:
        pass
    return found


def descendants(pid: int) -> Iterator[int]:
    for child in children(pid):
        yield child
        yield from descendants(child)


def status_kib(pid: int, field_name: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def worker_pid(proxy: ProxyServer) -> int:
    """The granian worker: the server process's Python child (the one serving requests)."""
    assert proxy.process is not None
    for child in children(proxy.process.pid):
        if comm(child) != "xdelta3":
            return child
    return proxy.process.pid


class RssWatch:
    """Samples the proxy's process tree: the worker's VmHWM at the end, and the largest RSS any
    codec child (xdelta3) reached while sampled — children are separate processes, so their memory
    is not in the worker's figure but is what the machine must have."""

    def __init__(self, proxy: ProxyServer) -> None:
        self.proxy = proxy
        self.worker = worker_pid(proxy)
        self.codec_peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self.proxy.process is not None
        root = self.proxy.process.pid
        while not self._stop.wait(0.02):
            for pid in descendants(root):
                if comm(pid) == "xdelta3":
                    self.codec_peak_kib = max(self.codec_peak_kib, status_kib(pid, "VmRSS"))

    def stop(self) -> tuple[int, int]:
        """(worker peak RSS, codec child peak RSS) in bytes."""
        worker_peak = status_kib(self.worker, "VmHWM") * 1024
        self._stop.set()
        self._thread.join()
        return worker_peak, self.codec_peak_kib * 1024


# ---------------------------------------------------------------------------------- one corpus


@dataclass
class Result:
    name: str
    files: int = 0
    original: int = 0
    stored: dict[str, int] = field(default_factory=dict)
    put_seconds: dict[str, float] = field(default_factory=dict)
    get_seconds: dict[str, float] = field(default_factory=dict)
    anchor: int | None = None
    anchor_previous: int | None = None
    # The chain bucket's deepest object: (name, depth, size), cold GET seconds chain / passthrough.
    deepest: tuple[str, int, int] | None = None
    deepest_seconds: tuple[float, float] = (0.0, 0.0)
    # Background encoding: seconds from the end of the PUTs until the queue was empty.
    drain_seconds: float = 0.0
    worker_peak: int = 0
    codec_peak: int = 0


class Proxy:
    """A proxy on a fixed data dir that can be restarted (cold caches) and watched."""

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = workdir / "data"
        self.config = workdir / "config.yaml"
        self.config.write_text(CONFIG + "".join(EXTRA_CONFIG))
        self.server: ProxyServer | None = None
        self.watch: RssWatch | None = None
        self.worker_peak = 0
        self.codec_peak = 0

    def start(self) -> Any:
        self.server = ProxyServer(data_dir=self.data_dir, args=["--config", str(self.config)]).start()
        self.watch = RssWatch(self.server)
        return client(self.server.endpoint)

    def stop(self) -> None:
        if self.watch is not None:
            worker, codec = self.watch.stop()
            self.worker_peak = max(self.worker_peak, worker)
            self.codec_peak = max(self.codec_peak, codec)
            self.watch = None
        if self.server is not None:
            self.server.stop()
            self.server = None


def measure(name: str, files: list[Path], workdir: Path, prefix: str) -> Result:
    """Upload ``files`` in order into both buckets, restart, read everything back (timed, then verified)."""
    result = Result(name, files=len(files), original=sum(f.stat().st_size for f in files))
    proxy = Proxy(workdir)
    s3 = proxy.start()
    try:
        for bucket in BUCKETS:
            s3.create_bucket(Bucket=bucket)
            started = time.perf_counter()
            for path in files:
                http_put(presigned(s3, "put_object", bucket, f"{prefix}/{path.name}"), path)
            result.put_seconds[bucket] = time.perf_counter() - started
            drained = time.perf_counter()
            wait_for_background(proxy, bucket)
            if bucket == DELTA_BUCKET:
                result.drain_seconds = time.perf_counter() - drained
            result.stored[bucket] = stored_bytes(proxy.data_dir, bucket)
        result.deepest = deepest(proxy.data_dir, CHAIN_BUCKET, prefix)
        proxy.stop()
        s3 = proxy.start()  # cold: nothing cached in the proxy (the OS page cache stays warm for both)
        s3.list_objects_v2(Bucket=PLAIN_BUCKET, MaxKeys=1)  # warm the worker before anything is timed
        if result.deepest is not None:
            name, _, size = result.deepest
            timed = []
            for bucket in (CHAIN_BUCKET, PLAIN_BUCKET):
                started = time.perf_counter()
                http_get(presigned(s3, "get_object", bucket, f"{prefix}/{name}"), size)
                timed.append(time.perf_counter() - started)
            result.deepest_seconds = (timed[0], timed[1])
            proxy.stop()
            s3 = proxy.start()
            s3.list_objects_v2(Bucket=PLAIN_BUCKET, MaxKeys=1)
        # Version by version, rotating which bucket is read first, so no bucket pays for the fresh
        # worker or gains from what another left in the page cache.
        result.get_seconds = dict.fromkeys(BUCKETS, 0.0)
        for n, path in enumerate(files):
            order = BUCKETS[n % len(BUCKETS) :] + BUCKETS[: n % len(BUCKETS)]
            for bucket in order:
                url = presigned(s3, "get_object", bucket, f"{prefix}/{path.name}")
                started = time.perf_counter()
                http_get(url, path.stat().st_size)
                result.get_seconds[bucket] += time.perf_counter() - started
        for bucket in BUCKETS:
            for path in files:
                digest = hashlib.sha256()
                http_get(
                    presigned(s3, "get_object", bucket, f"{prefix}/{path.name}"), path.stat().st_size, digest
                )
                if digest.hexdigest() != sha256_file(path):
                    raise RuntimeError(f"{bucket}/{prefix}/{path.name}: SHA-256 mismatch")
    except Exception:
        if proxy.server is not None:
            sys.stderr.write(proxy.server.log()[-3000:])
        raise
    finally:
        proxy.stop()
    result.worker_peak, result.codec_peak = proxy.worker_peak, proxy.codec_peak
    return result


def deepest(data_dir: Path, bucket: str, prefix: str) -> tuple[str, int, int] | None:
    """The object of ``bucket``/``prefix`` with the deepest chain: (name, depth, original size)."""
    space = data_dir / bucket / "deltaspaces" / prefix
    found: tuple[str, int, int] | None = None
    for path in sorted(space.glob("*.delta")):
        doc = json.loads(os.getxattr(path, "user.dg.metadata"))
        depth = int(doc.get("chain_depth", 1))
        if found is None or depth > found[1]:
            found = (path.name[: -len(".delta")], depth, int(doc["file_size"]))
    return found


def wait_for_background(proxy: Proxy, bucket: str) -> None:
    """Until the proxy's background delta encoder has nothing left for ``bucket``'s uploads."""
    assert proxy.server is not None
    url = f"{proxy.server.endpoint}/_/stats?bucket={bucket}"
    while True:
        response = requests.get(url, headers=signed_headers("GET", url), timeout=60)
        response.raise_for_status()
        if not response.json().get("pending_delta_encodes"):
            return
        time.sleep(0.2)


def make_big_object(directory: Path, total_bytes: int) -> list[Path]:
    """v1: a random base plus an edited copy of it (so it deltas against itself); v2: v1 edited."""
    rng = random.Random(2)
    half = total_bytes // 2
    block = 64 * MiB
    base = directory / "base.bin"
    with open(base, "wb") as out:
        for offset in range(0, half, block):
            out.write(os.urandom(min(block, half - offset)))

    def edited_copy(source: Path, out: Any, edits_per_block: int) -> None:
        with open(source, "rb") as src:
            while chunk := src.read(block):
                data = bytearray(chunk)
                for _ in range(edits_per_block):
                    at = rng.randrange(len(data))
                    data[at:at] = rng.randbytes(rng.randrange(1, 4096))  # insertions shift what follows
                out.write(data)

    v1 = directory / "001_big-1.0.tar"
    with open(v1, "wb") as out:
        with open(base, "rb") as src:
            while chunk := src.read(block):
                out.write(chunk)
        edited_copy(base, out, 4)
    base.unlink()
    v2 = directory / "002_big-1.1.tar"
    with open(v2, "wb") as out:
        edited_copy(v1, out, 2)
    return [v1, v2]


# ---------------------------------------------------------------------------------- report


def rate(size: int, seconds: float | None) -> float:
    return size / MB / seconds if seconds else 0.0


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def report(result: Result) -> None:
    plain_stored = result.stored[PLAIN_BUCKET]
    put_plain = rate(result.original, result.put_seconds[PLAIN_BUCKET])
    get_plain = rate(result.original, result.get_seconds[PLAIN_BUCKET])
    print(f"\n== {result.name}: {result.files} versions, {result.original / MB:.1f} MB")
    for label, bucket in (("reference", DELTA_BUCKET), ("chain", CHAIN_BUCKET)):
        stored = result.stored[bucket]
        saved = 100 * (1 - stored / result.original)
        print(f"  stored   {label:<12} {stored / MB:10.2f} MB   savings {saved:6.2f} %")
    plain_savings = 1 - plain_stored / result.original
    print(f"  stored   passthrough  {plain_stored / MB:10.2f} MB   savings {100 * plain_savings:6.2f} %")
    for label, anchor in (("each-vs-first", result.anchor), ("each-vs-prev", result.anchor_previous)):
        if anchor is not None:
            saved = 100 * (1 - anchor / result.original)
            print(f"  anchor   {label:<13}{anchor / MB:10.2f} MB   savings {saved:6.2f} %   (xdelta3 -9 -D)")
    for label, bucket in (("reference", DELTA_BUCKET), ("chain", CHAIN_BUCKET)):
        put = rate(result.original, result.put_seconds[bucket])
        get = rate(result.original, result.get_seconds[bucket])
        print(
            f"  {label:<10} PUT {put:8.1f} MB/s ({put / put_plain:4.2f}x passthrough {put_plain:.1f})"
            f"   cold GET {get:8.1f} MB/s ({get / get_plain:4.2f}x passthrough {get_plain:.1f})"
        )
    if result.drain_seconds:
        total = result.put_seconds[DELTA_BUCKET] + result.drain_seconds
        print(
            f"  encode   background queue drained {result.drain_seconds:6.1f} s after the last PUT "
            f"(PUT + encoding: {rate(result.original, total):.1f} MB/s)"
        )
    if result.deepest is not None:
        name, depth, size = result.deepest
        chain_s, plain_s = result.deepest_seconds
        ratio = plain_s / chain_s if chain_s else 0.0
        print(
            f"  deepest  {name} depth {depth}: cold GET {rate(size, chain_s):7.1f} MB/s vs passthrough "
            f"{rate(size, plain_s):7.1f} MB/s = {ratio:4.2f}x   goal >= {DEEP_GET_GOAL}: "
            f"{verdict(ratio >= DEEP_GET_GOAL)}"
        )
    print(
        f"  RSS      worker peak {result.worker_peak / MiB:7.1f} MiB   goal <= {RSS_GOAL // MiB} MiB: "
        f"{verdict(result.worker_peak <= RSS_GOAL)}   (largest xdelta3 child seen: "
        f"{result.codec_peak / MiB:.0f} MiB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus-dir", default="/tmp/dg-corpus")
    parser.add_argument("--corpora", default=None, help="comma separated (default: every corpus directory)")
    parser.add_argument("--dir", default=None, help="where proxy data and spool live (default: a temp dir)")
    parser.add_argument("--big-object-gb", type=float, default=0.0, help="also PUT/GET a synthetic .tar")
    parser.add_argument("--skip-anchor", action="store_true", help="do not run the xdelta3 -9 anchor")
    parser.add_argument("--max-delta-ratio", type=float, default=None, help="delta bucket max_delta_ratio")
    parser.add_argument("--inline", action="store_true", help="advanced.delta_encoding: inline")
    parser.add_argument("--max-chain-depth", type=int, default=None, help="chain bucket max_chain_depth")
    args = parser.parse_args()
    if args.max_chain_depth is not None:
        EXTRA_CONFIG.append(f"      max_chain_depth: {args.max_chain_depth}\n")
    if args.max_delta_ratio is not None:
        EXTRA_CONFIG.append(f"    {DELTA_BUCKET}:\n      max_delta_ratio: {args.max_delta_ratio}\n")
    if args.inline:
        EXTRA_CONFIG.append("advanced:\n  delta_encoding: inline\n")
    corpus_dir = Path(args.corpus_dir)
    names = (
        args.corpora.split(",")
        if args.corpora
        else sorted(p.name for p in corpus_dir.iterdir() if p.is_dir())
    )
    print(
        f"goals: savings >= xdelta3 -9 anchor; delta PUT >= {PUT_GOAL} x passthrough PUT; "
        f"cold delta GET >= {GET_GOAL} x passthrough GET; worker peak RSS <= {RSS_GOAL // MiB} MiB"
    )
    with tempfile.TemporaryDirectory(dir=args.dir) as temp:
        workdir = Path(temp)
        for name in names:
            files = versions(corpus_dir / name)
            if not files:
                print(f"\n== {name}: no NNN_ files, skipped")
                continue
            result = measure(name, files, workdir / name, name)
            if not args.skip_anchor:
                result.anchor = anchor_bytes(files, workdir)
                result.anchor_previous = anchor_bytes(files, workdir, previous=True)
            report(result)
        if args.big_object_gb > 0:
            big_dir = workdir / "big-files"
            big_dir.mkdir()
            files = make_big_object(big_dir, int(args.big_object_gb * 1024 * MiB))
            result = measure(
                f"big object ({args.big_object_gb:g} GiB synthetic .tar)", files, workdir / "big", "big"
            )
            report(result)


if __name__ == "__main__":
    main()
