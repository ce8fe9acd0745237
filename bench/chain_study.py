"""Which base should a delta use? Simulates reference strategies on the corpora (issue 8).

Each corpus is "uploaded" in version order into one simulated prefix. A strategy decides, for each
version, whether it is stored whole (a full base, depth 0) or as a delta against an earlier stored
version (depth = base depth + 1 = the number of ``xdelta3 -d`` hops a cold GET needs). The proxy's
rules apply unless a row says "raw": the similarity gate (no encode when the sketch containment is
below ``WORTH_ENCODING``) and the ratio rule (a delta is kept only if it is < 0.75 of its target,
otherwise the version is stored whole — and then, except in ``reference``, it can serve as a base).

Every (source, target) pair is encoded once with the Debian ``xdelta3`` binary and the proxy's
options (``-e -f -D -A -9``, file to file), one encode at a time; sizes and CPU seconds are kept in
``--cache-dir`` (index.json plus the kept deltas), so re-runs and other strategies reuse them.

For the deepest object of each strategy the chain is rebuilt for real (``xdelta3 -d`` hop by hop,
file to file, then SHA-256 of the result, compared with the original) and timed against copying
the full file (what a passthrough proxy does for the same GET).

Also: the sketch's pick against the truly best base, ``xdelta3 merge`` of chains, and the cost of
one hop. ``--corpora a+b`` interleaves two corpora in one prefix (a1, b1, a2, b2, ...).

    .venv/bin/python bench/chain_study.py [--corpora pip-whl,django-tar] [--cache-dir DIR] [--json OUT]
    .venv/bin/python bench/chain_study.py --corpora pip-whl+numpy-whl --no-decode
    .venv/bin/python bench/chain_study.py --hops-only --repeats 7
    .venv/bin/python bench/chain_study.py --pivot-from run1.json,run2.json   # summaries, best timings

The cache holds ~0.6 GB of kept deltas for the four corpora; delete it when done.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
from deltaglider_proxy.engine.similarity import WORTH_ENCODING, Sketch, containment, sketch_file

CORPORA = ("pip-whl", "numpy-whl", "typescript-tgz", "django-tar")
RATIO_RULE = 0.75
UNLIMITED = 10**9
ENCODE = ("-e", "-f", "-D", "-A", "-9")
DECODE = ("-d", "-f", "-D")
XDELTA = shutil.which("xdelta3") or "/usr/bin/xdelta3"
ENV = {k: v for k, v in os.environ.items() if k != "XDELTA"}  # xdelta3 reads options from $XDELTA
MB = 1e6


def versions(corpus: Path) -> list[Path]:
    return sorted(p for p in corpus.iterdir() if p.name[:3].isdigit() and p.name[3] == "_")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_xdelta(args: list[str]) -> float:
    """Run one xdelta3 child; return its CPU seconds (children run one at a time)."""
    before = children_cpu()
    done = subprocess.run(
        [XDELTA, *args], env=ENV, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    if done.returncode != 0:
        raise RuntimeError(f"xdelta3 {' '.join(args)} failed: {done.stderr.decode(errors='replace')}")
    return children_cpu() - before


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as handle:
        buffer = bytearray(1 << 20)
        view = memoryview(buffer)
        while count := handle.readinto(buffer):
            digest.update(view[:count])
    return digest.hexdigest()


@dataclass
class Pair:
    size: int
    cpu: float
    wall: float
    delta: Path | None  # kept only when the ratio rule would keep it (the only ones ever decoded)


class PairCache:
    """Delta size and encode cost per (source, target), persisted so every pair is encoded once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.index_path = root / "index.json"
        self.index: dict[str, dict[str, float]] = (
            json.loads(self.index_path.read_text()) if self.index_path.exists() else {}
        )
        self.encoded = 0

    def get(self, corpus: str, files: list[Path], source: int, target: int) -> Pair:
        key = f"{corpus}/{files[source].name}/{files[target].name}"
        delta = self.root / corpus / f"{source:03d}-{target:03d}.vcdiff"
        entry = self.index.get(key)
        if entry is None or (entry["kept"] and not delta.exists()):
            delta.parent.mkdir(parents=True, exist_ok=True)
            started = time.perf_counter()
            cpu = run_xdelta([*ENCODE, "-s", str(files[source]), str(files[target]), str(delta)])
            wall = time.perf_counter() - started
            size = delta.stat().st_size
            kept = size < RATIO_RULE * files[target].stat().st_size
            if not kept:
                delta.unlink()
            entry = {"size": size, "cpu": cpu, "wall": wall, "kept": kept}
            self.index[key] = entry
            self.encoded += 1
            temp = self.index_path.with_suffix(".tmp")
            temp.write_text(json.dumps(self.index, indent=0, sort_keys=True))
            temp.replace(self.index_path)  # resumable: a killed run keeps what it measured
        return Pair(int(entry["size"]), entry["cpu"], entry["wall"], delta if entry["kept"] else None)


@dataclass
class Entry:
    kind: str  # "full" | "delta"
    base: int | None
    depth: int
    stored: int


@dataclass
class Corpus:
    name: str
    files: list[Path]
    sizes: list[int]
    sketches: list[Sketch]
    sha: list[str]
    pairs: PairCache
    # Mixed corpora: (original corpus, its files, index there) per file, so pairs of one family
    # reuse that corpus's cached deltas.
    origins: list[tuple[str, list[Path], int]] | None = None

    def pair(self, source: int, target: int) -> Pair:
        if self.origins is not None:
            (name_s, files_s, index_s), (name_t, _, index_t) = self.origins[source], self.origins[target]
            if name_s == name_t:
                return self.pairs.get(name_s, files_s, index_s, index_t)
        return self.pairs.get(self.name, self.files, source, target)

    def containment(self, source: int, target: int) -> float:
        return containment(self.sketches[source], self.sketches[target])


@dataclass
class Sim:
    """One strategy's run over one corpus: what was stored and what the encodes cost."""

    corpus: Corpus
    rule: bool = True
    gate: bool = True
    entries: list[Entry] = field(default_factory=list)
    cpu: float = 0.0
    encodes: int = 0
    notes: dict[str, object] = field(default_factory=dict)

    def full(self) -> Entry:
        index = len(self.entries)
        entry = Entry("full", None, 0, self.corpus.sizes[index])
        self.entries.append(entry)
        return entry

    def encode(self, base: int, target: int | None = None) -> Pair | None:
        """Encode ``target`` (default: the next version) against ``base`` unless the gate skips it."""
        target = len(self.entries) if target is None else target
        if self.gate and self.corpus.containment(base, target) < WORTH_ENCODING:
            return None
        pair = self.corpus.pair(base, target)
        self.cpu += pair.cpu
        self.encodes += 1
        return pair

    def keeps(self, pair: Pair | None, target: int | None = None) -> bool:
        target = len(self.entries) if target is None else target
        return pair is not None and (not self.rule or pair.size < RATIO_RULE * self.corpus.sizes[target])

    def delta(self, base: int, pair: Pair) -> Entry:
        entry = Entry("delta", base, self.entries[base].depth + 1, pair.size)
        self.entries.append(entry)
        return entry

    def place(self, base: int | None) -> Entry:
        """Delta against ``base`` if the gate and the ratio rule allow it, else store whole."""
        if base is None:
            return self.full()
        pair = self.encode(base)
        return self.delta(base, pair) if pair is not None and self.keeps(pair) else self.full()

    def root(self, index: int) -> int:
        while (base := self.entries[index].base) is not None:
            index = base
        return index

    def chain(self, index: int) -> list[int]:
        """Versions from the full base to ``index``, in decode order."""
        out = [index]
        while (base := self.entries[out[-1]].base) is not None:
            out.append(base)
        return out[::-1]


# ----------------------------------------------------------------------------------- strategies


def reference(corpus: Corpus, rule: bool = True, gate: bool = True) -> Sim:
    """Today's model: every version against the first; a whole-stored version is never a base."""
    sim = Sim(corpus, rule, gate)
    for index in range(len(corpus.files)):
        sim.place(None if index == 0 else 0)
    return sim


def previous(corpus: Corpus, depth: int, skip: bool | str, rule: bool = True, gate: bool = True) -> Sim:
    """Against the previous version; past ``depth`` hops re-baseline (whole), skip to the chain's
    base (``skip=True``), or skip to the newest version at most ``depth // 2`` deep (``"half"``)."""
    sim = Sim(corpus, rule, gate)
    for index in range(len(corpus.files)):
        if index == 0:
            sim.full()
            continue
        base: int | None = index - 1
        if sim.entries[index - 1].depth + 1 > depth:
            if skip == "half":
                base = max(c for c in range(index) if sim.entries[c].depth <= depth // 2)
            else:
                base = sim.root(index - 1) if skip else None
        sim.place(base)
    return sim


def candidates(sim: Sim, window: int, depth: int) -> list[int]:
    """The last ``window`` stored versions a delta may hang from, plus the newest full base."""
    index = len(sim.entries)
    found = [c for c in range(max(0, index - window), index) if sim.entries[c].depth + 1 <= depth]
    fulls = [c for c in range(index) if sim.entries[c].kind == "full"]
    if fulls and fulls[-1] not in found:
        found.append(fulls[-1])
    return sorted(found)


def sketch_pick(corpus: Corpus, options: list[int], target: int) -> tuple[int, float]:
    """Highest containment; ties go to the newest version."""
    scored = [(corpus.containment(c, target), c) for c in options]
    score, best = max(scored)
    return best, score


def best_recent(corpus: Corpus, window: int, depth: int, oracle: bool = False) -> Sim:
    """Base = the most similar of the last ``window`` versions by sketch (or by real delta size)."""
    sim = Sim(corpus)
    agree = 0
    for index in range(len(corpus.files)):
        options = candidates(sim, window, depth) if index else []
        if not options:
            sim.full()
            continue
        if not oracle:
            best, score = sketch_pick(corpus, options, index)
            sim.place(best if score >= WORTH_ENCODING else None)
            continue
        # Oracle: encode every candidate the gate lets through, keep the smallest delta.
        tried = [(pair.size, -c, c, pair) for c in options if (pair := sim.encode(c)) is not None]
        if not tried:
            sim.full()
            continue
        _, _, best, pair = min(tried, key=lambda t: (t[0], t[1]))
        agree += best == sketch_pick(corpus, options, index)[0]
        if sim.keeps(pair):
            sim.delta(best, pair)
        else:
            sim.full()
    if oracle:
        sim.notes["sketch agrees"] = agree
    return sim


def best_recent_skip(corpus: Corpus, window: int, depth: int) -> Sim:
    """The most similar of the last ``window`` uploads by sketch (any depth); when a delta on it
    would be more than ``depth`` hops deep, the delta goes to that candidate's full base instead."""
    sim = Sim(corpus)
    for index in range(len(corpus.files)):
        if index == 0:
            sim.full()
            continue
        options = list(range(max(0, index - window), index))
        best, score = sketch_pick(corpus, options, index)
        if sim.entries[best].depth + 1 > depth:
            best = sim.root(best)
            score = corpus.containment(best, index)
        sim.place(best if score >= WORTH_ENCODING else None)
    return sim


def rebase_reference(corpus: Corpus, threshold: float) -> Sim:
    """One hop from a full base; a new full base when the delta exceeds ``threshold`` of the target."""
    sim = Sim(corpus)
    base = 0
    for index in range(len(corpus.files)):
        if index == 0:
            sim.full()
            continue
        pair = sim.encode(base)
        if pair is not None and sim.keeps(pair) and pair.size <= threshold * corpus.sizes[index]:
            sim.delta(base, pair)
        else:
            sim.full()
            base = index
    return sim


def skip_delta(corpus: Corpus, depth: int) -> Sim:
    """Subversion-style skip deltas: version r of a segment (r counted from the segment's full base)
    deltas against r with its lowest set bit cleared, so depth = popcount(r) <= log2(r) + 1. More bits
    are cleared while the base is too deep for ``depth``. A whole-stored version starts a new segment.
    """
    sim = Sim(corpus)
    start = 0
    for index in range(len(corpus.files)):
        if index == 0:
            sim.full()
            continue
        offset = index - start
        base_offset = offset & (offset - 1)
        while base_offset and sim.entries[start + base_offset].depth + 1 > depth:
            base_offset &= base_offset - 1
        if sim.place(start + base_offset).kind == "full":
            start = index
    return sim


def reverse(corpus: Corpus, depth: int) -> Sim:
    """Reverse deltas (RCS/git style): the newest upload is stored whole; on the next upload it is
    re-encoded as a delta against the newer version, unless that would put the oldest member of its
    segment more than ``depth`` hops from the full copy (then it stays whole, a snapshot)."""
    sim = Sim(corpus)
    for index in range(len(corpus.files)):
        sim.full()
        if index == 0:
            continue
        previous_index = index - 1
        members = [m for m in range(index) if sim.root(m) == previous_index]
        if max(sim.entries[m].depth for m in members) + 1 > depth:
            continue
        pair = sim.encode(index, previous_index)
        if pair is None or not sim.keeps(pair, previous_index):
            continue
        sim.entries[previous_index] = Entry("delta", index, 1, pair.size)
        for member in members:
            if member != previous_index:
                sim.entries[member].depth += 1
    return sim


def depth_label(depth: int) -> str:
    return "∞" if depth >= UNLIMITED else str(depth)


def strategies() -> list[tuple[str, Callable[[Corpus], Sim], bool]]:
    """(label, run, decode?) — raw rows are the issue's anchors and are not timed."""
    rows: list[tuple[str, Callable[[Corpus], Sim], bool]] = [
        ("reference, raw (no gate, no ratio rule)", lambda c: reference(c, rule=False, gate=False), False),
        ("reference", reference, True),
        ("previous D=∞, raw", lambda c: previous(c, UNLIMITED, False, rule=False, gate=False), False),
    ]
    for depth in (2, 4, 8, 12, 16, UNLIMITED):
        label = depth_label(depth)
        rows.append((f"previous D={label}, re-baseline", lambda c, d=depth: previous(c, d, False), True))
        if depth < UNLIMITED:
            rows.append((f"previous D={label}, skip to base", lambda c, d=depth: previous(c, d, True), True))
            rows.append(
                (f"previous D={label}, skip to newest ≤ D/2", lambda c, d=depth: previous(c, d, "half"), True)
            )
    for depth in (3, 4, UNLIMITED):
        rows.append((f"skip-delta D={depth_label(depth)}", lambda c, d=depth: skip_delta(c, d), True))
    for depth in (4, 8, 12, 16, UNLIMITED):
        rows.append((f"reverse D={depth_label(depth)}", lambda c, d=depth: reverse(c, d), True))
    for window in (4, 8):
        for depth in (4, 8, UNLIMITED):
            label = f"best-of-recent K={window} D={depth_label(depth)}"
            rows.append((label, lambda c, k=window, d=depth: best_recent(c, k, d), True))
    for depth in (8, 16):
        label = f"best-of-recent K=4 D={depth}, skip to base"
        rows.append((label, lambda c, d=depth: best_recent_skip(c, 4, d), True))
    for depth in (4, 8, UNLIMITED):
        label = f"oracle-of-recent K=8 D={depth_label(depth)}"
        rows.append((label, lambda c, d=depth: best_recent(c, 8, d, oracle=True), True))
    for threshold in (0.3, 0.5, 0.75):
        rows.append((f"rebase-reference T={threshold}", lambda c, t=threshold: rebase_reference(c, t), True))
    return rows


# ----------------------------------------------------------------------------------- decode timing


@dataclass
class Decode:
    hops: int
    size: int
    cold: float  # every hop + SHA-256 of the result
    hashing: float  # the SHA-256 part of ``cold``
    warm: float  # the last hop + SHA-256 (intermediates cached)
    copy: float  # copying the full file: a passthrough GET's work


def time_decode(
    sim: Sim, index: int, workdir: Path, repeats: int, memo: dict[tuple[int, ...], Decode]
) -> Decode:
    corpus = sim.corpus
    chain = sim.chain(index)
    key = tuple(chain) + tuple(sim.entries[c].base or 0 for c in chain)
    if key in memo:
        return memo[key]
    runs: list[Decode] = []
    for _ in range(repeats):
        started = time.perf_counter()
        source = corpus.files[chain[0]]
        last_hop = 0.0
        for step, version in enumerate(chain[1:]):
            pair = corpus.pair(chain[step], version)
            assert pair.delta is not None, "a kept delta is always on disk"
            out = workdir / f"hop{step % 2}"
            hop_started = time.perf_counter()
            run_xdelta([*DECODE, "-s", str(source), str(pair.delta), str(out)])
            last_hop = time.perf_counter() - hop_started
            source = out
        hash_started = time.perf_counter()
        digest = sha256_file(source)
        hashing = time.perf_counter() - hash_started
        cold = time.perf_counter() - started
        if digest != corpus.sha[index]:
            raise AssertionError(f"{corpus.name} v{index + 1}: rebuilt bytes differ from the original")
        copy_started = time.perf_counter()
        shutil.copyfile(corpus.files[index], workdir / "copy")
        copy = time.perf_counter() - copy_started
        runs.append(Decode(len(chain) - 1, corpus.sizes[index], cold, hashing, last_hop + hashing, copy))
    best = Decode(
        runs[0].hops,
        runs[0].size,
        min(r.cold for r in runs),
        min(r.hashing for r in runs),
        min(r.warm for r in runs),
        min(r.copy for r in runs),
    )
    memo[key] = best
    return best


# ----------------------------------------------------------------------------------- sketch check


def validate_sketch(corpus: Corpus, window: int) -> dict[str, object]:
    """For every target: the previous ``window`` versions that pass the gate, sketch pick vs real best."""
    targets = agree = within5 = 0
    picked = best_total = 0
    worst = (0.0, "")
    for target in range(1, len(corpus.files)):
        options = [
            c
            for c in range(max(0, target - window), target)
            if corpus.containment(c, target) >= WORTH_ENCODING
        ]
        if not options:
            continue
        sizes = {c: corpus.pair(c, target).size for c in options}
        choice, _ = sketch_pick(corpus, options, target)
        truth = min(options, key=lambda c: (sizes[c], -c))
        targets += 1
        agree += choice == truth
        within5 += sizes[choice] <= 1.05 * sizes[truth]
        picked += sizes[choice]
        best_total += sizes[truth]
        excess = sizes[choice] / sizes[truth] - 1
        if excess > worst[0]:
            worst = (excess, f"v{target + 1}: picked v{choice + 1}, best v{truth + 1}")
    return {
        "targets": targets,
        "agree": agree,
        "within5": within5,
        "picked": picked,
        "best": best_total,
        "worst": worst,
    }


def hop_costs(corpus: Corpus, workdir: Path, repeats: int) -> dict[str, float] | None:
    """The cost model of a chain read: one ``xdelta3 -d`` hop per adjacent kept delta (best of
    ``repeats``), SHA-256 of its output, and a plain copy of the same file, as medians over the corpus."""
    hops: list[tuple[float, float, float, int]] = []
    out = workdir / "hop.out"
    for index in range(len(corpus.files) - 1):
        pair = corpus.pair(index, index + 1)
        if pair.delta is None:
            continue
        decode = hashing = copy = math.inf
        for _ in range(repeats):
            started = time.perf_counter()
            run_xdelta([*DECODE, "-s", str(corpus.files[index]), str(pair.delta), str(out)])
            decode = min(decode, time.perf_counter() - started)
            started = time.perf_counter()
            digest = sha256_file(out)
            hashing = min(hashing, time.perf_counter() - started)
            started = time.perf_counter()
            shutil.copyfile(corpus.files[index + 1], workdir / "copy")
            copy = min(copy, time.perf_counter() - started)
        assert digest == corpus.sha[index + 1]
        hops.append((decode, hashing, copy, corpus.sizes[index + 1]))
    if not hops:
        return None
    size = statistics.median(h[3] for h in hops)
    return {
        "hops": len(hops),
        "size": size,
        "decode_s": statistics.median(h[0] for h in hops),
        "sha_s": statistics.median(h[1] for h in hops),
        "copy_s": statistics.median(h[2] for h in hops),
    }


# ----------------------------------------------------------------------------------- xdelta3 merge


def merge_check(corpus: Corpus, workdir: Path) -> dict[str, object] | None:
    """``xdelta3 merge`` folds a chain of deltas into one delta against the chain's base without
    decoding anything. Measured on the adjacent chain v1 -> ... -> vN (as long as every hop is kept):
    the whole chain merged vs encoded directly, and one middle node removed (its child's delta
    merged onto the grandparent) vs re-encoding that child."""
    length = 0
    while length + 1 < len(corpus.files) and corpus.pair(length, length + 1).delta is not None:
        length += 1
    if length < 2:
        return None
    deltas = [corpus.pair(i, i + 1).delta for i in range(length)]
    assert all(d is not None for d in deltas)
    merged = workdir / "merged.vcdiff"
    out = workdir / "merged.out"

    def merge(parts: list[Path | None]) -> float:
        args = ["merge", "-f"]
        for part in parts[:-1]:
            args += ["-m", str(part)]
        started = time.perf_counter()
        run_xdelta([*args, str(parts[-1]), str(merged)])
        return time.perf_counter() - started

    def decode_merged(source: int, target: int) -> float:
        started = time.perf_counter()
        run_xdelta([*DECODE, "-s", str(corpus.files[source]), str(merged), str(out)])
        elapsed = time.perf_counter() - started
        if sha256_file(out) != corpus.sha[target]:
            raise AssertionError(f"{corpus.name}: merged delta v{source + 1}->v{target + 1} is wrong")
        return elapsed

    chain_seconds = merge(deltas)
    chain_size = merged.stat().st_size
    chain_decode = decode_merged(0, length)
    direct = corpus.pair(0, length)
    middle = length // 2
    pair_seconds = merge(deltas[middle - 1 : middle + 1])
    pair_size = merged.stat().st_size
    decode_merged(middle - 1, middle + 1)
    reencoded = corpus.pair(middle - 1, middle + 1)
    return {
        "hops": length,
        "merge_s": chain_seconds,
        "merged": chain_size,
        "direct": direct.size,
        "direct_cpu": direct.cpu,
        "merged_decode_s": chain_decode,
        "middle": middle,
        "pair_merge_s": pair_seconds,
        "pair_merged": pair_size,
        "pair_direct": reencoded.size,
        "pair_direct_cpu": reencoded.cpu,
    }


# ----------------------------------------------------------------------------------- main


def print_hops(costs: dict[str, dict[str, float] | None]) -> None:
    print("\nOne hop (adjacent deltas, medians; best of at least 5 runs each):\n")
    print(
        "| corpus | hops | object MB | decode ms | decode MB/s | SHA-256 ms | copy ms | hop + SHA vs copy |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|--:|")
    for name, c in costs.items():
        if c is None:
            print(f"| {name} | 0 (no kept adjacent delta) | | | | | | |")
            continue
        print(
            f"| {name} | {c['hops']:.0f} | {c['size'] / MB:.1f} | {1000 * c['decode_s']:.1f} "
            f"| {c['size'] / MB / c['decode_s']:.0f} | {1000 * c['sha_s']:.1f} | {1000 * c['copy_s']:.1f} "
            f"| {c['copy_s'] / (c['decode_s'] + c['sha_s']):.2f} |"
        )


def merge_runs(runs: list[list[dict[str, object]]]) -> list[dict[str, object]]:
    """Rows of several runs: sizes from the last, each decode timing the fastest seen (the machine is
    shared, so a slow run measures the neighbours)."""
    merged: dict[tuple[str, str], dict[str, object]] = {}
    for rows in runs:
        for row in rows:
            key = (str(row["corpus"]), str(row["strategy"]))
            previous_timing = merged.get(key, {}).get("decode")
            timing = row.get("decode")
            if isinstance(previous_timing, dict) and isinstance(timing, dict):
                row = {**row, "decode": {k: min(v, previous_timing[k]) for k, v in timing.items()}}
            merged[key] = row
    order = [(str(r["corpus"]), str(r["strategy"])) for r in runs[-1]]
    return [merged[k] for k in order] + [v for k, v in merged.items() if k not in set(order)]


def pivot(figures: list[dict[str, object]]) -> None:
    """Strategy x corpus summaries: savings (max depth), and cold GET of the deepest object."""
    corpora = list(dict.fromkeys(str(r["corpus"]) for r in figures))
    strategies_seen = list(dict.fromkeys(str(r["strategy"]) for r in figures))
    cell = {(str(r["corpus"]), str(r["strategy"])): r for r in figures}
    header = "| strategy | " + " | ".join(corpora) + " |"
    rule = "|---|" + "--:|" * len(corpora)
    print("\nSavings (max chain depth), encode CPU seconds in brackets:\n")
    print(header)
    print(rule)
    for label in strategies_seen:
        cells = []
        for name in corpora:
            r = cell.get((name, label))
            cells.append(
                "—"
                if r is None
                else f"{100 * float(r['savings']):.1f} % ({r['max_depth']}) [{float(r['cpu']):.0f}]"
            )
        print(f"| {label} | " + " | ".join(cells) + " |")
    print("\nDeepest object: hops, cold GET ms (of which SHA-256), warm 1-hop ms, file copy ms:\n")
    print(header)
    print(rule)
    for label in strategies_seen:
        cells = []
        for name in corpora:
            r = cell.get((name, label))
            timing = r.get("decode") if r else None
            if not isinstance(timing, dict):
                cells.append("—")
                continue
            cells.append(
                f"{timing['hops']}: {1000 * timing['cold']:.0f} ({1000 * timing['hashing']:.0f}) "
                f"/ {1000 * timing['warm']:.0f} / {1000 * timing['copy']:.1f}"
            )
        print(f"| {label} | " + " | ".join(cells) + " |")


def load(name: str, root: Path, pairs: PairCache) -> Corpus:
    """A corpus directory, or ``a+b``: two corpora interleaved in one prefix (a1, b1, a2, b2, ...),
    as when one prefix holds the releases of several artifacts."""
    origins: list[tuple[str, list[Path], int]] | None = None
    if "+" in name:
        families = [(part, versions(root / part)) for part in name.split("+")]
        origins = []
        for step in range(max(len(f) for _, f in families)):
            origins += [(part, files, step) for part, files in families if step < len(files)]
        files = [family_files[index] for _, family_files, index in origins]
    else:
        files = versions(root / name)
    return Corpus(
        name,
        files,
        [f.stat().st_size for f in files],
        [sketch_file(f) for f in files],
        [sha256_file(f) for f in files],
        pairs,
        origins,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus-dir", default="/tmp/dg-corpus")
    parser.add_argument("--corpora", default=",".join(CORPORA))
    parser.add_argument("--cache-dir", default="/tmp/dg-chain-cache", help="pair sizes and kept deltas")
    parser.add_argument("--repeats", type=int, default=3, help="decode timings: best of N")
    parser.add_argument("--validate-window", type=int, default=8, help="sketch check: candidates per target")
    parser.add_argument("--no-decode", action="store_true", help="skip the decode timings")
    parser.add_argument("--json", default=None, help="write every figure here")
    parser.add_argument("--hops-only", action="store_true", help="only the one-hop cost table")
    parser.add_argument(
        "--pivot-from",
        default=None,
        help="only print the summaries of --json files (comma-separated: timings are the best of them)",
    )
    args = parser.parse_args()
    if args.pivot_from:
        pivot(merge_runs([json.loads(Path(p).read_text())["rows"] for p in args.pivot_from.split(",")]))
        return
    pairs = PairCache(Path(args.cache_dir))
    if args.hops_only:
        with tempfile.TemporaryDirectory(prefix="chain-study-") as temp:
            costs = {
                name: hop_costs(load(name, Path(args.corpus_dir), pairs), Path(temp), max(args.repeats, 5))
                for name in args.corpora.split(",")
            }
        print_hops(costs)
        return
    figures: list[dict[str, object]] = []
    checks: dict[str, dict[str, object]] = {}
    merges: dict[str, dict[str, object] | None] = {}
    costs: dict[str, dict[str, float] | None] = {}
    print(
        "| corpus | strategy | stored MB | savings | full | max depth | mean depth | newest depth "
        "| deepest: hops | cold GET MB/s | warm (1 hop) MB/s | copy MB/s | cold / copy "
        "| encode CPU s | encodes |"
    )
    print("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    with tempfile.TemporaryDirectory(prefix="chain-study-") as temp:
        workdir = Path(temp)
        for name in args.corpora.split(","):
            corpus = load(name, Path(args.corpus_dir), pairs)
            original = sum(corpus.sizes)
            memo: dict[tuple[int, ...], Decode] = {}
            for label, run, decode in strategies():
                if corpus.origins is not None and "raw" in label:
                    continue  # ungated cross-artifact encodes: minutes of CPU for nothing
                sim = run(corpus)
                stored = sum(e.stored for e in sim.entries)
                depths = [e.depth for e in sim.entries]
                deepest = max(range(len(depths)), key=lambda i: (depths[i], i))
                row: dict[str, object] = {
                    "corpus": name,
                    "strategy": label,
                    "original": original,
                    "stored": stored,
                    "savings": 1 - stored / original,
                    "fulls": sum(e.kind == "full" for e in sim.entries),
                    "max_depth": depths[deepest],
                    "mean_depth": sum(depths) / len(depths),
                    "newest_depth": depths[-1],
                    "max_fanout": max(sum(e.base == i for e in sim.entries) for i in range(len(sim.entries))),
                    "cpu": sim.cpu,
                    "encodes": sim.encodes,
                    "bases": [e.base for e in sim.entries],
                    **{k: v for k, v in sim.notes.items()},
                }
                cells = ["—"] * 5
                if decode and not args.no_decode and depths[deepest] > 0:
                    timing = time_decode(sim, deepest, workdir, args.repeats, memo)
                    row["decode"] = timing.__dict__
                    size = timing.size / MB
                    cells = [
                        str(timing.hops),
                        f"{size / timing.cold:.0f}",
                        f"{size / timing.warm:.0f}",
                        f"{size / timing.copy:.0f}",
                        f"{timing.copy / timing.cold:.2f}",
                    ]
                elif depths[deepest] == 0:
                    cells[0] = "0"
                figures.append(row)
                agree = (
                    f" (sketch agrees {sim.notes['sketch agrees']})" if "sketch agrees" in sim.notes else ""
                )
                print(
                    f"| {name} | {label}{agree} | {stored / MB:.2f} | {100 * (1 - stored / original):.1f} % "
                    f"| {row['fulls']} | {depths[deepest]} | {row['mean_depth']:.2f} | {depths[-1]} "
                    f"| {' | '.join(cells)} "
                    f"| {sim.cpu:.1f} | {sim.encodes} |",
                    flush=True,
                )
            checks[name] = validate_sketch(corpus, args.validate_window)
            if corpus.origins is None:  # interleaved corpora: the same hops as their parts
                merges[name] = merge_check(corpus, workdir)
                costs[name] = hop_costs(corpus, workdir, max(args.repeats, 5))
    print(f"\nSketch choice vs best real delta, previous {args.validate_window} versions as candidates:\n")
    print("| corpus | targets | same pick | within 5 % | picked bytes | best bytes | worst case |")
    print("|---|--:|--:|--:|--:|--:|---|")
    for name, check in checks.items():
        worst = check["worst"]
        assert isinstance(worst, tuple)
        picked, best = check["picked"], check["best"]
        assert isinstance(picked, int) and isinstance(best, int)
        print(
            f"| {name} | {check['targets']} | {check['agree']} | {check['within5']} | {picked:,} | {best:,} "
            f"| {'+' + format(worst[0], '.1%') + ' ' + worst[1] if worst[1] else '—'} |"
        )
    print("\n`xdelta3 merge` of the adjacent chain (v1 -> ... -> vN) and of one middle node's two hops:\n")
    print(
        "| corpus | hops | merge s | merged MB | encoded v1 -> vN MB (CPU s) | decode merged s "
        "| 2-hop merge s | merged MB | re-encoded MB (CPU s) |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    for name, m in merges.items():
        if m is None:
            print(f"| {name} | no chain of kept adjacent deltas | | | | | | | |")
            continue
        print(
            f"| {name} | {m['hops']} | {m['merge_s']:.2f} | {int(m['merged']) / MB:.3f} "
            f"| {int(m['direct']) / MB:.3f} ({m['direct_cpu']:.2f}) | {m['merged_decode_s']:.3f} "
            f"| {m['pair_merge_s']:.3f} | {int(m['pair_merged']) / MB:.3f} "
            f"| {int(m['pair_direct']) / MB:.3f} ({m['pair_direct_cpu']:.2f}) |"
        )
    print_hops(costs)
    pivot(figures)
    print(f"\npairs encoded this run: {pairs.encoded}; cache {args.cache_dir}")
    if args.json:
        doc = {"rows": figures, "sketch": checks, "merge": merges, "hops": costs}
        Path(args.json).write_text(json.dumps(doc, indent=1, default=str))


if __name__ == "__main__":
    main()
