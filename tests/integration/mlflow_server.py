"""A real `mlflow server` subprocess on a free loopback port, with stop / start for fault tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .procs import free_port, spawn, stop_group, wait_http_ok


class MlflowServer:
    def __init__(self, backend_uri: str, root: Path, env: dict[str, str] | None = None):
        """`backend_uri`: postgresql://... or sqlite:///...; artifacts are proxied into `root/artifacts`."""
        self.backend_uri = backend_uri
        self.root = root
        self.port = free_port()
        self.log = root / "mlflow-server.log"
        self.env = {**(env or os.environ)}
        self.proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> None:
        """Start (or restart, on the same port and stores) and wait until `/health` answers."""
        cmd = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            self.backend_uri,
            "--artifacts-destination",
            str(self.root / "artifacts"),
            "--serve-artifacts",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        self.proc = spawn(cmd, self.log, env=self.env)
        wait_http_ok(f"{self.uri}/health", self.proc, self.log, timeout=timeout)

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc, timeout=20)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None
