"""A multi-node Ray cluster on one machine, started with the real `ray start` CLI.

Every node is a `ray start --block` process in its own session, so stopping or killing a node
touches only its own processes (never other users' Ray clusters: no `ray stop`). The cluster gets its own
temp dir and its own auth token (Ray token auth; a token left in ~/.ray by someone else does not
matter), and `env` is what a driver needs to connect (`--ray-address 127.0.0.1:PORT`).

Ray resolves 127.0.0.1 to the machine's own address and its gRPC servers listen on all interfaces;
there is no flag to restrict that, which is why the cluster requires a token.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .procs import free_port, kill_session, session_of, spawn, stop_group, tail

OBJECT_STORE_BYTES = 200 * 1024**2

_NODES_SNIPPET = """
import json, ray
ray.init(address={address!r}, logging_level="ERROR", log_to_driver=False)
print("NODES=" + json.dumps([{{"id": n["NodeID"], "resources": n["Resources"]}}
                              for n in ray.nodes() if n["Alive"]]))
"""


@dataclass
class RayNode:
    name: str
    proc: subprocess.Popen
    log: Path
    resources: dict[str, float] = field(default_factory=dict)
    node_id: str = ""

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None


class LoopbackRayCluster:
    def __init__(self) -> None:
        # Short path: Ray puts unix sockets under it (108-byte limit).
        self.root = Path(tempfile.mkdtemp(prefix="i3ad-ray-"))
        self.port = free_port()
        token = self.root / "auth_token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(token),
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        self.env.pop("RAY_AUTH_TOKEN", None)
        self.nodes: list[RayNode] = []
        self._ray = str(Path(sys.executable).with_name("ray"))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start_head(self, num_cpus: int = 1, resources: dict[str, float] | None = None) -> RayNode:
        resources = {"head_node": 1, **(resources or {})}
        return self._start_node(
            "head",
            ["--head", "--port", str(self.port), "--temp-dir", str(self.root), "--include-dashboard", "false"],
            num_cpus,
            resources,
        )

    def add_worker(self, num_cpus: int = 1, resources: dict[str, float] | None = None) -> RayNode:
        resources = {"worker_node": 1, **(resources or {})}
        index = sum(1 for n in self.nodes if n.name.startswith("worker"))
        return self._start_node(f"worker{index}", ["--address", self.address], num_cpus, resources)

    def _start_node(self, name: str, args: list[str], num_cpus: int, resources: dict[str, float]) -> RayNode:
        # A marker resource per node tells its node id apart in `ray.nodes()`.
        resources = {**resources, f"i3ad_{name}": 1}
        log = self.root / f"{name}.log"
        cmd = [
            self._ray,
            "start",
            *args,
            "--num-cpus",
            str(num_cpus),
            "--resources",
            json.dumps(resources),
            "--object-store-memory",
            str(OBJECT_STORE_BYTES),
            "--disable-usage-stats",
            "--block",
        ]
        node = RayNode(name, spawn(cmd, log, env=self.env), log, resources)
        self.nodes.append(node)
        node.node_id = self._wait_joined(node)
        return node

    def _wait_joined(self, node: RayNode, timeout: float = 120.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not node.alive:
                raise RuntimeError(f"ray node {node.name} exited with {node.proc.returncode}:\n{tail(node.log)}")
            if "Ray runtime started" in tail(node.log, 100_000):
                for found in self.alive_nodes(quiet=True):
                    if f"i3ad_{node.name}" in found["resources"]:
                        return found["id"]
            time.sleep(0.5)
        raise TimeoutError(f"ray node {node.name} did not join within {timeout:.0f}s:\n{tail(node.log)}")

    def alive_nodes(self, quiet: bool = False) -> list[dict]:
        """Alive nodes as GCS sees them: [{"id": ..., "resources": {...}}] (queried from a short-lived driver)."""
        result = subprocess.run(
            [sys.executable, "-c", _NODES_SNIPPET.format(address=self.address)],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=120,
        )
        for line in result.stdout.splitlines():
            if line.startswith("NODES="):
                return json.loads(line[len("NODES=") :])
        if quiet:
            return []
        raise RuntimeError(f"could not list ray nodes:\n{result.stderr[-3000:]}")

    def node_of_pid(self, pid: int) -> RayNode | None:
        """The node that started process `pid`, if it is alive (each node is its own session; Ray's
        workers make their own process group but stay in the session)."""
        session = session_of(pid)
        return next((n for n in self.nodes if n.proc.pid == session), None)

    def remove_node(self, node: RayNode, graceful: bool = False) -> None:
        """Take a node away: SIGKILL all its processes at once (a crash), or SIGTERM (Ray drains it first)."""
        if graceful:
            stop_group(node.proc, signal.SIGTERM, timeout=45)
        else:
            kill_session(node.proc.pid)
            stop_group(node.proc, signal.SIGKILL)

    def shutdown(self) -> None:
        # Throwaway cluster: no draining, kill every node's whole process group, workers first.
        for node in reversed(self.nodes):
            stop_group(node.proc, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)
