"""A throwaway PostgreSQL cluster (Debian's `postgresql` package) on a free loopback port.

The server refuses to run as root, so under root every server-side command runs as the `postgres` OS
user and the data folder is handed to that user. The password is random per cluster and is passed to
clients through PGPASSWORD, never on a command line.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

from .procs import free_port


def find_bindir() -> Path | None:
    """The newest /usr/lib/postgresql/<ver>/bin with initdb, else the folder of an `initdb` on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).resolve().parent if on_path else None


class PostgresCluster:
    user = "i3ad"

    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.port = free_port()
        self.password = secrets.token_hex(16)
        self.root = Path(tempfile.mkdtemp(prefix="i3ad-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._as_postgres = os.geteuid() == 0

    # -- commands ------------------------------------------------------------------------------------
    def _server_cmd(self, tool: str, *args: str) -> list[str]:
        cmd = [str(self.bindir / tool), *args]
        return ["runuser", "-u", "postgres", "--", *cmd] if self._as_postgres else cmd

    @property
    def client_env(self) -> dict[str, str]:
        return {**os.environ, "PGPASSWORD": self.password}

    def url(self, database: str, with_password: bool = False) -> str:
        auth = f"{self.user}:{self.password}" if with_password else self.user
        # SQLAlchemy 2.1 maps plain postgresql:// to psycopg 3; we ship psycopg2-binary.
        return f"postgresql+psycopg2://{auth}@127.0.0.1:{self.port}/{database}"

    # -- life cycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(pwfile, "postgres", "postgres")
        subprocess.run(
            self._server_cmd(
                "initdb",
                "-D",
                str(self.data),
                "-U",
                self.user,
                f"--pwfile={pwfile}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ),
            check=True,
            capture_output=True,
            cwd=self.root,
        )
        pwfile.unlink()
        # Loopback TCP only; the socket lives in our folder (not /var/run/postgresql); no fsync: throwaway.
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} "
            f"-c unix_socket_directories={self.root} -c fsync=off -c full_page_writes=off"
        )
        result = subprocess.run(
            self._server_cmd(
                "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start"
            ),
            capture_output=True,
            text=True,
            cwd=self.root,
        )
        if result.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed:\n{result.stdout}{result.stderr}\n{self.log_tail()}")

    def create_database(self, name: str) -> str:
        """Create database `name`; return its URL (without password: clients read PGPASSWORD)."""
        subprocess.run(
            [str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, name],
            check=True,
            capture_output=True,
            env=self.client_env,
        )
        return self.url(name)

    def stop(self) -> None:
        if self.data.exists():
            subprocess.run(
                self._server_cmd("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop"),
                capture_output=True,
                cwd=self.root,
            )
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return "<no server log>"
