"""PinnedFile.read_ahead: ordered results from sequential thread calls, a bounded distance ahead
of the consumer, with failures, early stops and slow consumers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Coroutine, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest

from deltaglider_proxy.storage import local_files
from deltaglider_proxy.storage.base import StoredObject
from deltaglider_proxy.storage.local_files import PinnedFile

T = TypeVar("T")
DATA = bytes(range(256)) * 64
HANG_GUARD = 60  # seconds; only there so that a lost wake-up fails the test instead of hanging it


def run(scenario: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(scenario, HANG_GUARD))


@pytest.fixture
def path(tmp_path: Path) -> Path:
    target = tmp_path / "object"
    target.write_bytes(DATA)
    return target


def pinned(path: Path) -> PinnedFile:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    return PinnedFile(fd, StoredObject(name="object", size=len(DATA), modified=datetime.now(UTC)))


class Calls:
    """A blocking function that reads one byte per call and records how many calls began."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.made = 0
        self.lock = threading.Lock()
        self.fail_at = fail_at

    def __call__(self, fd: int, index: int) -> bytes:
        with self.lock:
            self.made += 1
        if index == self.fail_at:
            raise ValueError(f"call {index} failed")
        return os.pread(fd, 1, index)

    @staticmethod
    def args(count: int) -> Iterator[tuple[int]]:
        return ((index,) for index in range(count))


def open_fds_of(path: Path) -> list[int]:
    found = []
    for entry in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{entry}") == str(path):
                found.append(int(entry))
    return found


@pytest.mark.parametrize("ahead", [1, 2, 5])
def test_results_come_in_order_and_never_too_far_ahead(path: Path, ahead: int) -> None:
    calls = Calls()

    async def scenario() -> list[bytes]:
        file = pinned(path)
        got = []
        try:
            async for result in file.read_ahead(calls, Calls.args(60), ahead):
                # The one handed over, plus at most ``ahead`` made (or being made) beyond it.
                assert calls.made <= len(got) + 1 + ahead
                got.append(result)
        finally:
            file.close()
        return got

    assert run(scenario()) == [DATA[i : i + 1] for i in range(60)]
    assert calls.made == 60


def test_a_failure_ends_the_results_after_the_ones_before_it(path: Path) -> None:
    calls = Calls(fail_at=7)

    async def scenario() -> list[bytes]:
        file = pinned(path)
        got: list[bytes] = []
        try:
            with pytest.raises(ValueError, match="call 7 failed"):
                async for result in file.read_ahead(calls, Calls.args(20)):
                    got.append(result)
        finally:
            file.close()
        await asyncio.get_running_loop().shutdown_default_executor()
        return got

    assert run(scenario()) == [DATA[i : i + 1] for i in range(7)]
    assert calls.made == 8  # nothing is read after the failure
    assert open_fds_of(path) == []


def test_a_consumer_that_stops_early_leaves_no_fd_and_no_calls(path: Path) -> None:
    calls = Calls()

    async def scenario() -> None:
        file = pinned(path)
        results = file.read_ahead(calls, Calls.args(1000))
        try:
            for _ in range(3):
                await anext(results)
        finally:
            await results.aclose()
            file.close()
        await asyncio.get_running_loop().shutdown_default_executor()

    run(scenario())
    assert calls.made <= 3 + local_files.READ_AHEAD
    assert open_fds_of(path) == []


def test_a_slow_consumer_holds_no_thread_and_gets_everything(path: Path) -> None:
    calls = Calls()

    async def scenario() -> list[bytes]:
        file = pinned(path)
        got = []
        try:
            async for result in file.read_ahead(calls, Calls.args(12), 3):
                got.append(result)
                if len(got) == 1:
                    for _ in range(10_000):  # the producer gets 3 ahead, then must return
                        if not file._busy:
                            break
                        await asyncio.sleep(0.001)
                    assert not file._busy, "a producing call waited on the consumer"
                    assert calls.made == 1 + 3
        finally:
            file.close()
        return got

    assert run(scenario()) == [DATA[i : i + 1] for i in range(12)]


def test_producing_calls_take_turns_with_other_work(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A call makes a bounded number of results and hands the rest to a new call. Here each
    call gives up its turn only after the consumer took its result (and so found a call still
    producing): the loop itself must then start the next one, or the consumer waits forever."""
    monkeypatch.setattr(local_files, "MAX_RESULTS_PER_CALL", 1)
    taken = threading.Semaphore(0)
    give_up_turn = local_files._ReadAhead.yield_turn

    def late(state: local_files._ReadAhead) -> None:
        taken.acquire(timeout=HANG_GUARD)
        give_up_turn(state)

    monkeypatch.setattr(local_files._ReadAhead, "yield_turn", late)
    calls = Calls()

    async def scenario() -> list[bytes]:
        file = pinned(path)
        got = []
        try:
            async for result in file.read_ahead(calls, Calls.args(30), 8):
                got.append(result)
                taken.release()
        finally:
            taken.release()  # for the call that made the end of the results
            file.close()
        return got

    assert run(scenario()) == [DATA[i : i + 1] for i in range(30)]
    assert calls.made == 30
