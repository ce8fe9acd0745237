"""The delta codec: xdelta3 (VCDIFF) encode/decode, file to file, in a child process, bounded.

Chosen by measurement on the public corpora, each version against the first (full tables and
reasoning in bench/CODEC.md; reproduce with bench/codec_choice.py):

* The Debian ``xdelta3`` binary, not the ``pyxdelta`` wheel: pyxdelta holds the GIL for a whole
  call (an event-loop tick waited 280 ms behind one 60 MB encode in ``asyncio.to_thread``; two
  encodes in two threads took twice as long as one) and can be neither killed on timeout nor
  capped. A child runs on another core, dies on ``kill`` and has its output capped by the kernel.
* ``-9`` with xdelta3's default LZMA secondary compression, the settings of the upstream CLI
  (``xdelta3 -e -9``) that the savings goal is measured against, so no delta is bigger than the
  anchor's: saves 43.0 % on pip wheels, 35.1 % on numpy wheels, 91.4 % on Django tarballs. Encode
  runs at 6–8 MB/s on wheels and 78 MB/s on tarballs, decode at 130–180 and 500 MB/s. Faster
  settings cost savings: ``-3 -S none`` (what pyxdelta does) encodes 2.4–3x faster but saves
  42.7 / 34.8 / 91.1 %; ``-S djw`` encodes wheels 1.7–2x faster for 0.01–0.45 MB more per corpus;
  ``-N`` helps tarballs and hurts wheels.
* ``-B``: matches are only found within a source window (64 MiB by default). Up to that size the
  default covers the whole source and is kept (a smaller window shrinks the hash table and loses a
  little). Beyond it the window grows to the source size, capped by ``max_source_window``: the
  encoder needs about three times the window in memory at ``-9`` (807 MB RSS for 256 MiB), and
  content that moved further than the window is no longer matched.
* ``-D``: never decompress inputs (without it xdelta3 gunzips a .tgz and re-gzips on decode, which
  does not give the original bytes back). ``-A``: no application header, which would embed spool
  file names in every delta. ``XDELTA`` is dropped from the child's environment so no setting
  outside the proxy adds options. The output is plain VCDIFF that any ``xdelta3 -d`` decodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import resource
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

BINARY = "xdelta3"
ENCODE_OPTIONS = ("-9",)
DEFAULT_SOURCE_WINDOW = 64 * 1024 * 1024  # xdelta3's own default (XD3_DEFAULT_SRCWINSZ)
MAX_SOURCE_WINDOW = 256 * 1024 * 1024
# xdelta3 rejects windows above 2 GiB.
_WINDOW_LIMIT = 1 << 31
_POLL_SECONDS = 0.05
_STDERR_BYTES = 2000
_PIPE_CHUNK = 1024 * 1024
# The timeout grows with the input: DGP_CODEC_TIMEOUT_SECS alone would kill every multi-GB encode.
# 2 MB/s is well below the slowest measured -9 encode (6 MB/s on zip wheels): only a stuck child
# runs into it.
SLOWEST_EXPECTED_BYTES_PER_SECOND = 2_000_000


class CodecBusy(Exception):
    """No codec permit available (the edge answers 503 SlowDown)."""


class CodecFailed(Exception):
    """The encoder or decoder failed, timed out or exceeded its output cap (the edge answers 500)."""


# Told about every successful run: (kind "encode"|"decode", seconds, input bytes, output bytes),
# where input is the target (encode) or the delta (decode). Feeds the metrics.
CodecObserver = Callable[[str, float, int, int], None]


def _child_env() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key != "XDELTA"}


def _window_options(source_size: int, max_window: int) -> list[str]:
    if source_size <= DEFAULT_SOURCE_WINDOW:
        return []
    return ["-B", str(min(source_size, max_window, _WINDOW_LIMIT))]


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


class Codec:
    """At most ``concurrency`` xdelta3 children at once, each killed after ``timeout_seconds`` or
    when its output file would grow past ``max_output_bytes``."""

    def __init__(
        self,
        concurrency: int,
        timeout_seconds: float,
        max_output_bytes: int,
        *,
        binary: str = BINARY,
        max_source_window: int = MAX_SOURCE_WINDOW,
    ) -> None:
        if concurrency < 1:
            raise ValueError("codec concurrency must be at least 1")
        self.concurrency = concurrency
        self.timeout_seconds = timeout_seconds
        self.max_output_bytes = max_output_bytes
        self.binary = binary
        self.max_source_window = max_source_window
        self._permits = asyncio.Semaphore(concurrency)
        self._in_use = 0
        self.observer: CodecObserver | None = None

    @property
    def in_use(self) -> int:
        return self._in_use

    async def encode(self, source: Path, target: Path, out: Path) -> int:
        """Write the VCDIFF delta turning ``source`` into ``target`` to ``out``; its size.

        Never waits for a permit: a PUT that cannot encode now is told to retry (CodecBusy)."""
        if self._permits.locked():
            raise CodecBusy("all delta codec slots busy; try again later")
        await self._permits.acquire()  # a permit is free: this returns without waiting
        return await self._holding_permit(
            "encode", source, ["-e", "-f", "-D", "-A", *ENCODE_OPTIONS], target, out
        )

    async def decode(self, source: Path, delta: Path, out: Path, *, wait_seconds: float = 60.0) -> int:
        """Rebuild into ``out`` the file that ``delta`` encodes against ``source``; its size.

        Waits up to ``wait_seconds`` for a permit, then raises CodecBusy."""
        try:
            async with asyncio.timeout(max(wait_seconds, 0.0)):
                await self._permits.acquire()
        except TimeoutError:
            raise CodecBusy("timed out waiting for a delta codec slot; server too busy") from None
        return await self._holding_permit("decode", source, ["-d", "-f", "-D"], delta, out)

    async def decode_hashed(
        self, source: Path, delta: Path, out: Path, *, wait_seconds: float = 60.0
    ) -> tuple[int, str]:
        """As :meth:`decode`, and the SHA-256 (hex) of what was written, hashed as it is written.

        xdelta3 writes to a pipe that a worker thread drains into ``out`` while hashing, so the
        hash costs no second pass over the rebuilt file (about 40 % of a cold GET otherwise) and
        runs on the other core while the decoder works."""
        try:
            async with asyncio.timeout(max(wait_seconds, 0.0)):
                await self._permits.acquire()
        except TimeoutError:
            raise CodecBusy("timed out waiting for a delta codec slot; server too busy") from None
        sink = _HashingSink()
        size = await self._holding_permit("decode", source, ["-d", "-f", "-D", "-c"], delta, out, sink)
        return size, sink.hexdigest

    async def _holding_permit(
        self,
        kind: str,
        source: Path,
        mode: list[str],
        second: Path,
        out: Path,
        sink: _HashingSink | None = None,
    ) -> int:
        self._in_use += 1
        try:
            source_size = await asyncio.to_thread(_file_size, source)
            second_size = await asyncio.to_thread(_file_size, second)
            window = _window_options(source_size, self.max_source_window)
            timeout = self.timeout_seconds + (source_size + second_size) / SLOWEST_EXPECTED_BYTES_PER_SECOND
            args = [*mode, *window, "-s", str(source), str(second)]
            started = time.perf_counter()
            if sink is None:
                size = await self._run(kind, [*args, str(out)], out, timeout)
            else:
                size = await self._run(kind, args, out, timeout, sink)
            if self.observer is not None:
                self.observer(kind, time.perf_counter() - started, second_size, size)
            return size
        finally:
            self._in_use -= 1
            self._permits.release()

    async def _run(
        self, kind: str, args: list[str], out: Path, limit_seconds: float, sink: _HashingSink | None = None
    ) -> int:
        """Run xdelta3 to completion; with ``sink`` its stdout is drained into ``out`` by a thread."""
        read_fd, write_fd = os.pipe() if sink is not None else (-1, -1)
        try:
            process = await asyncio.create_subprocess_exec(
                self.binary,
                *args,
                stdin=subprocess.DEVNULL,
                stdout=write_fd if sink is not None else subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=_child_env(),
            )
        except OSError as exc:
            if sink is not None:
                os.close(read_fd)
            raise CodecFailed(f"cannot run {self.binary}: {exc}") from exc
        finally:
            if sink is not None:
                os.close(write_fd)  # the child holds its copy; EOF reaches the drain when it exits
        drain = (
            asyncio.ensure_future(asyncio.to_thread(sink.drain, read_fd, out, self.max_output_bytes))
            if sink is not None
            else None
        )
        # The kernel enforces the output cap (SIGXFSZ) once this lands; polling covers the first
        # instants and systems without prlimit.
        with contextlib.suppress(OSError, ValueError, AttributeError):
            resource.prlimit(
                process.pid, resource.RLIMIT_FSIZE, (self.max_output_bytes, self.max_output_bytes)
            )
        talk = asyncio.ensure_future(process.communicate())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit_seconds
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise CodecFailed(f"xdelta3 {kind} timed out after {limit_seconds:g}s")
                done, _ = await asyncio.wait({talk}, timeout=min(_POLL_SECONDS, remaining))
                if done:
                    break
                if drain is not None:
                    if drain.done() and drain.result() > self.max_output_bytes:
                        raise CodecFailed(f"xdelta3 {kind} output exceeds {self.max_output_bytes} bytes")
                elif await asyncio.to_thread(_file_size, out) > self.max_output_bytes:
                    raise CodecFailed(f"xdelta3 {kind} output exceeds {self.max_output_bytes} bytes")
            _, stderr = talk.result()
            size = await drain if drain is not None else await asyncio.to_thread(_file_size, out)
            if process.returncode == -signal.SIGXFSZ or size > self.max_output_bytes:
                raise CodecFailed(f"xdelta3 {kind} output exceeds {self.max_output_bytes} bytes")
            if process.returncode != 0:
                message = stderr[:_STDERR_BYTES].decode("utf-8", "replace").strip()
                raise CodecFailed(f"xdelta3 {kind} failed (exit {process.returncode}): {message}")
            return size
        except BaseException:
            # Covers our own failures and cancellation (a client that went away): never leave a
            # child running or a partial output behind.
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            talk.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.shield(process.wait())
            if drain is not None:  # the child is gone, so the drain is at EOF: let it close its file
                with contextlib.suppress(BaseException):
                    await asyncio.shield(drain)
            with contextlib.suppress(OSError):
                await asyncio.to_thread(out.unlink, missing_ok=True)
            raise
        finally:
            if sink is not None:
                os.close(read_fd)


class _HashingSink:
    """Drains a pipe into a file, hashing as it goes; stops reading past the output cap."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256()

    @property
    def hexdigest(self) -> str:
        return self._digest.hexdigest()

    def drain(self, fd: int, out: Path, cap: int) -> int:
        """Bytes read (more than ``cap`` means it stopped early; the file then holds only part)."""
        size = 0
        with open(out, "wb") as sink:
            while chunk := os.read(fd, _PIPE_CHUNK):
                size += len(chunk)
                if size > cap:
                    break
                sink.write(chunk)
                self._digest.update(chunk)
        return size


def check_available(binary: str = BINARY) -> str:
    """Blocking start-up probe: the binary runs and round-trips with our options.

    Returns its version line; raises CodecFailed with what to do about it."""
    path = shutil.which(binary)
    if path is None:
        raise CodecFailed(
            f"{binary} not found on PATH. Install xdelta3 (Debian/Ubuntu: apt-get install xdelta3) "
            "before starting the proxy."
        )
    try:
        probe = subprocess.run([path, "-V"], capture_output=True, timeout=10, env=_child_env())
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CodecFailed(f"{path} -V did not run: {exc}") from exc
    lines = (probe.stdout + probe.stderr).decode("utf-8", "replace").splitlines()
    version = next((line for line in lines if "version" in line.lower()), "")
    if probe.returncode != 0 or not version:
        raise CodecFailed(f"{path} -V failed (exit {probe.returncode}); is it xdelta3?")
    with tempfile.TemporaryDirectory(prefix="dg-codec-check-") as temp:
        source, target, delta, rebuilt = (Path(temp) / name for name in ("s", "t", "d", "r"))
        source.write_bytes(b"deltaglider codec self-test\n" * 200)
        target.write_bytes(b"deltaglider codec self-test, edited\n" * 150)
        for args in (
            ["-e", "-f", "-D", "-A", *ENCODE_OPTIONS, "-s", str(source), str(target), str(delta)],
            ["-d", "-f", "-D", "-s", str(source), str(delta), str(rebuilt)],
        ):
            try:
                run = subprocess.run([path, *args], capture_output=True, timeout=30, env=_child_env())
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise CodecFailed(f"{path} self-test did not run: {exc}") from exc
            if run.returncode != 0:
                detail = run.stderr[:_STDERR_BYTES].decode("utf-8", "replace").strip()
                raise CodecFailed(
                    f"{path} cannot run `{' '.join(args[:6])}` (exit {run.returncode}): {detail}. "
                    "The proxy needs xdelta3 >= 3.0 built with LZMA secondary compression."
                )
        if rebuilt.read_bytes() != target.read_bytes():
            raise CodecFailed(f"{path} self-test: decoded bytes differ from the original")
    return f"{version.strip()} ({path})"
