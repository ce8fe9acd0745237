"""Does ``similarity.containment`` predict the real delta ratio? Validation on the corpora.

For every pair (each version against the first, and each against the previous one) it prints the
estimated containment next to the real ratio delta/target of the codec's own encode, and counts
the two kinds of mistake at ``WORTH_ENCODING``: a skipped pair whose delta would have been < 0.6
of the target (lost savings), and an encoded pair whose delta is >= 0.75 (wasted CPU: the ratio
rule stores it passthrough anyway). Also reports the sketch speed.

    .venv/bin/python bench/similarity_check.py [--corpus-dir /tmp/dg-corpus] [--cache ratios.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
from deltaglider_proxy.engine.codec import Codec
from deltaglider_proxy.engine.similarity import WORTH_ENCODING, Sketch, containment, sketch_file

CORPORA = ("pip-whl", "numpy-whl", "typescript-tgz", "django-tar")
GOOD = 0.6  # a pair this good must not be skipped
USELESS = 0.75  # the ratio rule stores a pair this bad passthrough


def versions(corpus: Path) -> list[Path]:
    return sorted(p for p in corpus.iterdir() if p.name[:3].isdigit() and p.name[3] == "_")


def delta_ratio(codec: Codec, source: Path, target: Path, workdir: Path) -> float:
    size = asyncio.run(codec.encode(source, target, workdir / "delta"))
    return size / max(target.stat().st_size, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus-dir", default="/tmp/dg-corpus")
    parser.add_argument("--corpora", default=",".join(CORPORA))
    parser.add_argument("--cache", default=None, help="JSON file of real ratios, reused across runs")
    args = parser.parse_args()
    cache_path = Path(args.cache) if args.cache else None
    cache: dict[str, float] = json.loads(cache_path.read_text()) if cache_path and cache_path.exists() else {}
    codec = Codec(concurrency=1, timeout_seconds=600, max_output_bytes=1 << 32)
    rows: list[tuple[str, str, str, float, float]] = []
    sketched = 0
    sketch_seconds = 0.0
    with tempfile.TemporaryDirectory() as temp:
        for corpus in args.corpora.split(","):
            files = versions(Path(args.corpus_dir) / corpus)
            sketches: dict[Path, Sketch] = {}
            for path in files:
                started = time.perf_counter()
                sketches[path] = sketch_file(path)
                sketch_seconds += time.perf_counter() - started
                sketched += path.stat().st_size
                # The serialised form is what would be stored; it must give the same answers.
                assert Sketch.from_bytes(sketches[path].to_bytes()) == sketches[path]
            for mode in ("first", "adjacent"):
                for index in range(1, len(files)):
                    source = files[0] if mode == "first" else files[index - 1]
                    target = files[index]
                    key = f"{source.name} {target.name}"
                    if key not in cache:
                        cache[key] = delta_ratio(codec, source, target, Path(temp))
                    estimate = containment(sketches[source], sketches[target])
                    rows.append((corpus, mode, target.name[:3], estimate, cache[key]))
    if cache_path:
        cache_path.write_text(json.dumps(cache, indent=1))

    speed = sketched / 1e9 / sketch_seconds
    print(f"sketch_file: {sketched / 1e6:.0f} MB in {sketch_seconds:.2f} s = {speed:.2f} GB/s")
    print(f"threshold WORTH_ENCODING = {WORTH_ENCODING}\n")
    print(
        "| corpus | pairs | versions | containment (min–max) | real ratio (min–max) | skipped | "
        "lost (skipped, ratio < 0.6) | skipped, 0.6 <= ratio < 0.75 | wasted (encoded, ratio >= 0.75) |"
    )
    print("|---|---|---|--:|--:|--:|--:|--:|--:|")
    for corpus in args.corpora.split(","):
        for mode in ("first", "adjacent"):
            group = [r for r in rows if r[0] == corpus and r[1] == mode]
            skipped = [r for r in group if r[3] < WORTH_ENCODING]
            lost = [r for r in skipped if r[4] < GOOD]
            gray = [r for r in skipped if GOOD <= r[4] < USELESS]
            wasted = [r for r in group if r[3] >= WORTH_ENCODING and r[4] >= USELESS]
            low, high = min(r[3] for r in group), max(r[3] for r in group)
            print(
                f"| {corpus} | {mode} | {len(group)} | {low:.2f}–{high:.2f} "
                f"| {min(r[4] for r in group):.3f}–{max(r[4] for r in group):.3f} | {len(skipped)} "
                f"| {len(lost)} | {len(gray)} | {len(wasted)} |"
            )
    print("\nEvery pair (containment → real ratio), sorted by containment:")
    for corpus, mode, version, estimate, ratio in sorted(rows, key=lambda r: r[3]):
        flag = " LOST" if estimate < WORTH_ENCODING and ratio < GOOD else ""
        flag += " wasted" if estimate >= WORTH_ENCODING and ratio >= USELESS else ""
        print(f"  {corpus:15s} {mode:8s} v{version} containment {estimate:.3f} ratio {ratio:.3f}{flag}")


if __name__ == "__main__":
    main()
