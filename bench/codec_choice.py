"""Codec candidates on the real corpora: savings and encode/decode MB/s, each version against the first.

Reproduces the tables in bench/CODEC.md. Candidates are the ``pyxdelta`` wheel (in process) and the
Debian ``xdelta3`` binary with a few option sets. Every delta is decoded again and compared, so a
candidate that does not round-trip fails loudly instead of looking good.

    .venv/bin/python bench/codec_choice.py [--corpus-dir /tmp/dg-corpus] [--configs pyxdelta,-9,...]
        [--pairs first|adjacent] [--json out.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CORPORA = ("pip-whl", "numpy-whl", "typescript-tgz", "django-tar")
MB = 1_000_000
# Every candidate run gets -D (no transparent decompression: byte identity) and -A (no application
# header: it would embed our spool file names into every stored delta). "anchor" is the upstream CLI
# call the savings goal is measured against, with -D: without it xdelta3 gunzips .tgz inputs and
# re-gzips on decode, which does not give back the original bytes. "-B src" sizes the source window
# to the source file instead of xdelta3's 64 MiB default.
BASE = ["-D", "-A"]
CONFIGS: dict[str, list[str]] = {
    "anchor: xdelta3 -9 -D": ["-9", "-D"],
    "-9": [*BASE, "-9"],
    "-9 -B src": [*BASE, "-9", "-B", "src"],
    "-9 -S djw": [*BASE, "-9", "-S", "djw"],
    "-9 -S none": [*BASE, "-9", "-S", "none"],
    "-9 -N": [*BASE, "-9", "-N"],
    "-6": [*BASE, "-6"],
    "-3": [*BASE, "-3"],
    "-3 -S none": [*BASE, "-3", "-S", "none"],
}


@dataclass
class Totals:
    first_bytes: int = 0
    target_bytes: int = 0
    delta_bytes: int = 0
    ruled_bytes: int = 0  # what the proxy stores: a delta only when it is < 0.75 of the target
    encode_seconds: float = 0.0
    decode_seconds: float = 0.0
    pairs: list[dict[str, object]] = field(default_factory=list)


def versions(corpus: Path) -> list[Path]:
    return sorted(p for p in corpus.iterdir() if p.name[:3].isdigit() and p.name[3] == "_")


def run_cli(args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(["xdelta3", *args], check=True, capture_output=True)
    return time.perf_counter() - started


def encode(config: str, source: Path, target: Path, out: Path) -> float:
    if config == "pyxdelta":
        import pyxdelta

        started = time.perf_counter()
        if not pyxdelta.run(str(source), str(target), str(out)):
            raise RuntimeError(f"pyxdelta.run failed on {target.name}")
        return time.perf_counter() - started
    options = [str(max(source.stat().st_size, 1 << 20)) if o == "src" else o for o in CONFIGS[config]]
    return run_cli(["-e", "-f", *options, "-s", str(source), str(target), str(out)])


def decode(config: str, source: Path, delta: Path, out: Path) -> float:
    if config == "pyxdelta":
        import pyxdelta

        started = time.perf_counter()
        if not pyxdelta.decode(str(source), str(delta), str(out)):
            raise RuntimeError(f"pyxdelta.decode failed on {delta.name}")
        return time.perf_counter() - started
    return run_cli(["-d", "-f", "-D", "-s", str(source), str(delta), str(out)])


def sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def measure(config: str, files: list[Path], pairs: str, workdir: Path) -> Totals:
    totals = Totals(first_bytes=files[0].stat().st_size)
    delta, out = workdir / "delta", workdir / "out"
    for index in range(1, len(files)):
        source = files[0] if pairs == "first" else files[index - 1]
        target = files[index]
        size = target.stat().st_size
        totals.encode_seconds += encode(config, source, target, delta)
        delta_size = delta.stat().st_size
        totals.decode_seconds += decode(config, source, delta, out)
        if sha256(out) != sha256(target):
            raise RuntimeError(f"{config}: {target.name} does not round-trip")
        totals.target_bytes += size
        totals.delta_bytes += delta_size
        totals.ruled_bytes += delta_size if delta_size < 0.75 * size else size
        totals.pairs.append({"source": source.name, "target": target.name, "size": size, "delta": delta_size})
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus-dir", default="/tmp/dg-corpus")
    parser.add_argument("--corpora", default=",".join(CORPORA))
    parser.add_argument("--configs", default="pyxdelta," + ",".join(CONFIGS))
    parser.add_argument("--pairs", choices=("first", "adjacent"), default="first")
    parser.add_argument("--json", default=None, help="also write every pair's sizes here")
    args = parser.parse_args()
    report: dict[str, dict[str, object]] = {}
    print(
        "| corpus | codec | original MB | stored MB (raw) | savings raw | savings (ratio<0.75) "
        "| encode MB/s | decode MB/s |\n|---|---|--:|--:|--:|--:|--:|--:|"
    )
    with tempfile.TemporaryDirectory() as temp:
        for corpus in args.corpora.split(","):
            files = versions(Path(args.corpus_dir) / corpus)
            for config in args.configs.split(","):
                t = measure(config, files, args.pairs, Path(temp))
                original = t.first_bytes + t.target_bytes
                raw = t.first_bytes + t.delta_bytes
                ruled = t.first_bytes + t.ruled_bytes
                print(
                    f"| {corpus} | {config} | {original / MB:.1f} | {raw / MB:.2f} "
                    f"| {100 * (1 - raw / original):.1f} % | {100 * (1 - ruled / original):.1f} % "
                    f"| {t.target_bytes / MB / t.encode_seconds:.1f} "
                    f"| {t.target_bytes / MB / t.decode_seconds:.1f} |",
                    flush=True,
                )
                report[f"{corpus} {config}"] = {"pairs": t.pairs}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    sys.exit(main())
