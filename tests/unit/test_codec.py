"""The xdelta3 codec: round trips, plain VCDIFF output, permits, timeouts, caps and failures."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import stat
import subprocess
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deltaglider_proxy.engine.codec import (
    DEFAULT_SOURCE_WINDOW,
    Codec,
    CodecBusy,
    CodecFailed,
    check_available,
)

T = TypeVar("T")
MiB = 1024 * 1024
VCDIFF_MAGIC = b"\xd6\xc3\xc4\x00"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def codec(**overrides: Any) -> Codec:
    options: dict[str, Any] = {"concurrency": 4, "timeout_seconds": 60.0, "max_output_bytes": 1 << 30}
    options.update(overrides)
    return Codec(**options)


def round_trip(tmp: Path, source: bytes, target: bytes, c: Codec | None = None) -> int:
    c = c or codec()
    src, tgt, delta, out = tmp / "src", tmp / "tgt", tmp / "delta", tmp / "out"
    src.write_bytes(source)
    tgt.write_bytes(target)
    delta_size = run(c.encode(src, tgt, delta))
    assert delta_size == delta.stat().st_size
    assert run(c.decode(src, delta, out)) == len(target)
    assert out.read_bytes() == target
    hashed = tmp / "hashed"
    assert run(c.decode_hashed(src, delta, hashed)) == (len(target), hashlib.sha256(target).hexdigest())
    assert hashed.read_bytes() == target
    assert c.in_use == 0
    return delta_size


def slow_binary(tmp: Path) -> Path:
    """A stand-in for xdelta3 that never finishes on its own."""
    script = tmp / "slow-xdelta3"
    script.write_text("#!/bin/sh\nexec sleep 30\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def edit(data: bytes, rng: random.Random, edits: int) -> bytes:
    """Insertions, deletions and overwrites at random places: content shifts both ways."""
    out = bytearray(data)
    for _ in range(edits):
        at = rng.randrange(len(out) + 1)
        kind = rng.randrange(3)
        if kind == 0:
            out[at:at] = rng.randbytes(rng.randrange(1, 300))
        elif kind == 1:
            del out[at : at + rng.randrange(1, 300)]
        else:
            out[at : at + 16] = rng.randbytes(16)
    return bytes(out)


@pytest.mark.parametrize(
    ("source", "target"),
    [
        (b"", b""),
        (b"", b"x"),
        (b"x", b""),
        (b"x", b"x"),
        (b"a", b"b"),
        (b"", b"some bytes with no source at all"),
    ],
)
def test_tiny_round_trips(tmp_path: Path, source: bytes, target: bytes) -> None:
    round_trip(tmp_path, source, target)


def test_random_and_edited_copies(tmp_path: Path) -> None:
    rng = random.Random(7)
    source = rng.randbytes(300_000)
    unrelated = round_trip(tmp_path, source, rng.randbytes(300_000))
    assert unrelated > 250_000
    # An insertion near the start shifts everything after it; xdelta3 must still copy the rest.
    shifted = source[:1000] + b"inserted bytes" * 50 + source[1000:]
    assert round_trip(tmp_path, source, shifted) < 5_000
    edited = edit(source, rng, 20)
    assert round_trip(tmp_path, source, edited) < 20_000
    assert round_trip(tmp_path, source, source) < 1_000


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    source=st.binary(max_size=4096),
    seed=st.integers(0, 2**32),
    edits=st.integers(0, 8),
)
def test_small_round_trips(tmp_path: Path, source: bytes, seed: int, edits: int) -> None:
    round_trip(tmp_path, source, edit(source, random.Random(seed), edits))


@pytest.mark.slow
def test_source_larger_than_the_default_window(tmp_path: Path) -> None:
    """Past 64 MiB the window is sized to the source, so content that moved from the very start of
    the source to the end of the target is still copied, not stored again."""
    rng = random.Random(64)
    head = rng.randbytes(8 * MiB)
    rest = rng.randbytes(DEFAULT_SOURCE_WINDOW - 4 * MiB)
    source = head + rest  # 68 MiB
    target = rest[: 20 * MiB] + b"new" * 1000 + rest[20 * MiB :] + head
    assert len(source) > DEFAULT_SOURCE_WINDOW
    delta = round_trip(tmp_path, source, target)
    assert delta < 1 * MiB


def test_output_is_plain_vcdiff_that_the_cli_decodes(tmp_path: Path) -> None:
    rng = random.Random(3)
    source = rng.randbytes(50_000)
    target = edit(source, rng, 10)
    src, tgt, delta, out = tmp_path / "src", tmp_path / "tgt", tmp_path / "d", tmp_path / "o"
    src.write_bytes(source)
    tgt.write_bytes(target)
    run(codec().encode(src, tgt, delta))
    data = delta.read_bytes()
    assert data[:4] == VCDIFF_MAGIC
    # Header indicator: no application header (bit 2), so no file names leak into stored deltas.
    assert data[4] & 0x04 == 0
    subprocess.run(["xdelta3", "-d", "-f", "-s", str(src), str(delta), str(out)], check=True)
    assert out.read_bytes() == target


def test_decodes_what_the_cli_encodes(tmp_path: Path) -> None:
    rng = random.Random(4)
    source = rng.randbytes(50_000)
    target = edit(source, rng, 10)
    src, tgt, delta, out = tmp_path / "src", tmp_path / "tgt", tmp_path / "d", tmp_path / "o"
    src.write_bytes(source)
    tgt.write_bytes(target)
    # The upstream CLI's own command (application header and all).
    subprocess.run(["xdelta3", "-e", "-9", "-f", "-s", str(src), str(tgt), str(delta)], check=True)
    assert run(codec().decode(src, delta, out)) == len(target)
    assert out.read_bytes() == target


def test_xdelta_environment_variable_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDELTA", "--no-such-option")
    round_trip(tmp_path, b"abc" * 1000, b"abcd" * 1000)


def test_corrupt_delta_fails_and_leaves_no_output(tmp_path: Path) -> None:
    src, delta, out = tmp_path / "src", tmp_path / "delta", tmp_path / "out"
    src.write_bytes(b"source" * 100)
    delta.write_bytes(VCDIFF_MAGIC + b"\x00garbage" * 10)
    c = codec()
    for decode in (c.decode, c.decode_hashed):
        with pytest.raises(CodecFailed, match="decode failed"):
            run(decode(src, delta, out))
        assert not out.exists()
        assert c.in_use == 0


def test_missing_input_fails(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"x")
    with pytest.raises(CodecFailed):
        run(codec().encode(src, tmp_path / "absent", tmp_path / "out"))


def test_decoded_output_is_capped(tmp_path: Path) -> None:
    """A small delta that expands past max_output_bytes is stopped (decompression-bomb guard)."""
    src, tgt, delta, out = tmp_path / "src", tmp_path / "tgt", tmp_path / "delta", tmp_path / "out"
    src.write_bytes(b"")
    tgt.write_bytes(bytes(4 * MiB))
    run(codec().encode(src, tgt, delta))
    assert delta.stat().st_size < 10_000
    small = codec(max_output_bytes=1 * MiB)
    for decode in (small.decode, small.decode_hashed):
        with pytest.raises(CodecFailed, match="exceeds"):
            run(decode(src, delta, out))
        assert not out.exists()
        assert small.in_use == 0
    # Exactly at the cap is fine.
    exact = codec(max_output_bytes=4 * MiB)
    assert run(exact.decode(src, delta, out)) == 4 * MiB
    assert run(exact.decode_hashed(src, delta, out))[0] == 4 * MiB


def test_timeout_kills_the_child(tmp_path: Path) -> None:
    c = codec(binary=str(slow_binary(tmp_path)), timeout_seconds=0.3)
    started = time.monotonic()
    for operation in (c.encode, c.decode, c.decode_hashed):
        with pytest.raises(CodecFailed, match="timed out"):
            run(operation(tmp_path / "a", tmp_path / "b", tmp_path / "out"))
    assert time.monotonic() - started < 20  # killed, not waited for (the child sleeps 30 s)
    assert c.in_use == 0
    assert not (tmp_path / "out").exists()


def test_missing_binary(tmp_path: Path) -> None:
    with pytest.raises(CodecFailed, match="cannot run"):
        run(codec(binary=str(tmp_path / "no-xdelta3")).encode(tmp_path / "a", tmp_path / "b", tmp_path / "c"))
    with pytest.raises(CodecFailed, match="apt-get install xdelta3"):
        check_available(str(tmp_path / "no-xdelta3"))


def test_check_available_reports_the_version() -> None:
    assert "version 3." in check_available().lower()


def test_permits_encode_fails_fast_decode_waits(tmp_path: Path) -> None:
    async def scenario() -> None:
        c = codec(binary=str(slow_binary(tmp_path)), concurrency=1)
        running = asyncio.create_task(c.encode(tmp_path / "a", tmp_path / "b", tmp_path / "out"))
        await asyncio.sleep(0.2)
        assert c.in_use == 1
        with pytest.raises(CodecBusy):
            await c.encode(tmp_path / "a", tmp_path / "b", tmp_path / "out2")
        started = time.monotonic()
        with pytest.raises(CodecBusy):
            await c.decode(tmp_path / "a", tmp_path / "b", tmp_path / "out3", wait_seconds=0.2)
        assert 0.15 < time.monotonic() - started < 10
        # A waiting decode gets the permit as soon as it is returned.
        waiting = asyncio.create_task(c.decode(tmp_path / "a", tmp_path / "b", tmp_path / "out4"))
        await asyncio.sleep(0.1)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        await asyncio.sleep(0.2)
        assert c.in_use == 1  # the waiting decode now holds it
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert c.in_use == 0

    run(scenario())


@pytest.mark.parametrize("operation", ["encode", "decode", "decode_hashed"])
def test_cancellation_kills_the_child(tmp_path: Path, operation: str) -> None:
    marker = tmp_path / "pid"
    script = tmp_path / "pid-xdelta3"
    script.write_text(f"#!/bin/sh\necho $$ > {marker}\nexec sleep 30\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)

    async def scenario() -> int:
        c = codec(binary=str(script))
        method = getattr(c, operation)
        task = asyncio.create_task(method(tmp_path / "a", tmp_path / "b", tmp_path / "out"))
        for _ in range(100):
            await asyncio.sleep(0.05)
            if marker.exists() and marker.read_text().strip():
                break
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert c.in_use == 0
        assert not (tmp_path / "out").exists()
        return int(marker.read_text())

    pid = run(scenario())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_event_loop_runs_while_children_work(tmp_path: Path) -> None:
    """Children, not GIL-bound threads: other coroutines run while all encodes are in flight."""
    rng = random.Random(11)
    source = rng.randbytes(2 * MiB)
    (tmp_path / "src").write_bytes(source)
    (tmp_path / "tgt").write_bytes(edit(source, rng, 50))

    async def scenario() -> list[int]:
        c = codec()
        seen: list[int] = []

        async def watcher() -> None:
            while True:
                seen.append(c.in_use)
                await asyncio.sleep(0.005)

        watch = asyncio.create_task(watcher())
        sizes = await asyncio.gather(
            *(c.encode(tmp_path / "src", tmp_path / "tgt", tmp_path / f"d{i}") for i in range(3))
        )
        watch.cancel()
        assert len(set(sizes)) == 1
        return seen

    seen = run(scenario())
    assert seen.count(3) >= 2
