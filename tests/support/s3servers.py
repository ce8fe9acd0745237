"""Real S3-compatible servers for backend tests, started as subprocesses on loopback."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.support.server import free_port

MOTO_BIN = Path(sys.executable).parent / "moto_server"
# moto accepts any credentials; these only have to be present.
MOTO_ACCESS_KEY = "motoaccesskey"
MOTO_SECRET_KEY = "motosecretkey"


@dataclass
class MotoServer:
    """moto's standalone server (``moto_server``): one in-memory S3 per process."""

    log_path: Path | None = None  # default: a fresh file in the system temp dir
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> MotoServer:
        if not self.port:
            self.port = free_port()
        if self.log_path is None:
            handle, name = tempfile.mkstemp(prefix="moto-", suffix=".log")
            os.close(handle)
            self.log_path = Path(name)
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the fd
            self.process = subprocess.Popen(
                [str(MOTO_BIN), "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"moto_server did not answer within {timeout}s:\n{self.log()}")

    def reset(self) -> None:
        """Forget every bucket and object (moto's own reset endpoint)."""
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    def log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                self.process.wait(5)
        self.process = None


@dataclass
class Fault:
    """Answer matching requests with an S3 error instead of forwarding them (status 0: forward
    them, only after ``stall`` seconds)."""

    method: str
    status: int
    code: str = ""
    times: int = 1_000_000
    header: str | None = None  # only requests carrying this header match
    stall: float = 0.0


class FaultProxy:
    """An HTTP proxy in front of a real S3 server that can fail chosen requests (a PUT answered
    400, a conditional PUT answered 501...), the way flaky or older S3-compatible stores do.

    Everything else is forwarded unchanged; ``requests`` records (method, path) of all calls.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str]] = []
        self.headers: list[dict[str, str]] = []  # of each request, names lower-cased
        self._lock = threading.Lock()
        self._server = _QuietServer(("127.0.0.1", free_port()), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fail(self, fault: Fault) -> None:
        with self._lock:
            self.faults.append(fault)

    def calls(self, method: str) -> int:
        with self._lock:
            return sum(1 for seen, _path in self.requests if seen == method)

    def _take_fault(self, method: str, headers: Mapping[str, str]) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if (
                    fault.method == method
                    and fault.times > 0
                    and (fault.header is None or fault.header in headers)
                ):
                    fault.times -= 1
                    return fault
        return None

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, and 100-continue answered for us

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
                with proxy._lock:
                    proxy.requests.append((self.command, self.path))
                    proxy.headers.append({k.lower(): v for k, v in self.headers.items()})
                fault = proxy._take_fault(self.command, {k.lower(): v for k, v in headers.items()})
                if fault is not None and fault.stall:
                    time.sleep(fault.stall)
                if fault is not None and fault.status:
                    payload = (
                        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{fault.code}</Code>'
                        f"<Message>injected by FaultProxy</Message><RequestId>fault-req-1</RequestId></Error>"
                    ).encode()
                    self.send_response(fault.status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("x-amz-request-id", "fault-req-1")
                    self.send_header("Content-Length", str(len(payload) if self.command != "HEAD" else 0))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                try:
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                    self.send_response(response.status)
                    for key, value in response.getheaders():
                        if key.lower() in _HOP_HEADERS or key.lower() == "content-length":
                            continue
                        self.send_header(key, value)
                    # HEAD keeps the object's length; everything else gets the relayed body's.
                    length_header = response.getheader("Content-Length", "0")
                    self.send_header(
                        "Content-Length", length_header if self.command == "HEAD" else str(len(data))
                    )
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    upstream.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

        return Handler


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        """A client that hung up mid-answer (a cancelled upload) is expected here."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


_HOP_HEADERS = frozenset({"connection", "keep-alive", "transfer-encoding", "expect", "proxy-connection"})
