"""Start the real proxy as a subprocess on a free loopback port (the way an operator runs it)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ACCESS_KEY = "TESTACCESSKEY0000001"
SECRET_KEY = "test/secret+key/0000000000000000000000000"
PROXY_BIN = Path(sys.executable).parent / "deltaglider-proxy"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ProxyServer:
    data_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> ProxyServer:
        if not self.port:
            self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DGP_", "AWS_"))}
        env.update(
            {
                "DGP_LISTEN_ADDR": f"127.0.0.1:{self.port}",
                "DGP_DATA_DIR": str(self.data_dir),
                "DGP_ACCESS_KEY_ID": ACCESS_KEY,
                "DGP_SECRET_ACCESS_KEY": SECRET_KEY,
                "DGP_LOG_FORMAT": "json",
            }
        )
        env.update(self.env)
        self.log_path = self.data_dir.parent / f"proxy-{self.port}.log"
        log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen(
            [str(PROXY_BIN), *self.args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.data_dir.parent,
            # Its own process group, so kill() reaches granian's worker process as well.
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"proxy exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/_/health", timeout=1) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"proxy did not become healthy:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def kill(self) -> None:
        """kill -9: the crash an operator fears."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.process = None
