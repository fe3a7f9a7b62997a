"""A real two-node Ray cluster on this machine for the scaling tests: a head, and a worker joined to it with
`ray start --address`, as a GPU worker joins Instill Core's Ray head.

Each node is one `ray start --block` in a session of its own, so the node's processes (its raylet, agents,
workers and the replicas on it) are the processes of that session: killing them all at once by process id is
how the node is lost, and how the cluster is torn down. Each node declares one CPU and one GPU to Ray (there is
no GPU: Ray only counts it), so that, as on Core with RAY_NUM_OF_GPUS=1, a node holds one replica and a lost
replica waits for a node to come back. The dashboard, HTTP and gRPC listen on loopback; Ray itself advertises
the machine's address for its internal ports, whatever it is told.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import psutil
from ray.util.state import list_nodes
from ray.util.state.exception import RayStateApiException

from stable_diffusion_xl.serving.local_serve import PROTOGEN_DIR, Ports, deploy_dir, free_port

RAY = Path(sys.executable).parent / "ray"
T = TypeVar("T")


def wait_for(check: Callable[[], T], timeout: float, what: str, interval: float = 0.5) -> T:
    """`check()` once it is truthy; TimeoutError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (found := check()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {timeout:.0f} s")
        time.sleep(interval)
    return found


@dataclass(frozen=True)
class Replica:
    state: str  # Serve's: STARTING, RUNNING, STOPPING, ...
    node_id: str | None  # None until Ray has placed it


class Node:
    """One `ray start --block` and everything it starts, which all share its session."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path, log: Path):
        with log.open("a") as output:
            self.process = subprocess.Popen([str(RAY), "start", "--block", *args], env=env, cwd=cwd, stdout=output,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def processes(self) -> list[psutil.Process]:
        """The live processes of the node's session."""
        found = []
        for process in psutil.process_iter():
            with suppress(OSError, psutil.Error):
                if os.getsid(process.pid) == self.process.pid and process.status() != psutil.STATUS_ZOMBIE:
                    found.append(process)
        return found

    def kill(self, timeout: float = 30) -> None:
        """SIGKILL to every process of the node at once, as a machine that loses power (again to any process
        forked meanwhile), and wait for them to end."""
        deadline = time.monotonic() + timeout
        while (processes := self.processes()) and time.monotonic() < deadline:
            for process in processes:
                with suppress(psutil.NoSuchProcess):
                    process.kill()
            psutil.wait_procs(processes, timeout=5)
        self.process.wait(timeout=10)


class RayCluster:
    """A head and one worker node, both started in `deploy_root`, which holds what the image holds."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.ports = Ports()
        self.gcs_port = free_port()
        self.temp_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # Ray's socket paths must stay short
        (folder / "image").mkdir()
        self.deploy_root = deploy_dir(folder / "image")
        # Each node runs the image's Python path and torch at one thread. The dashboard gives each of its nine
        # subprocess modules 30 s to start, which a loaded 2-core machine can miss: 120 s.
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(self.deploy_root), str(PROTOGEN_DIR)]),
                    "OMP_NUM_THREADS": "1", "RAY_DASHBOARD_SUBPROCESS_MODULE_WAIT_READY_TIMEOUT": "120"}
        self.head: Node | None = None
        self.worker: Node | None = None

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.ports.dashboard}"

    def start_head(self, timeout: float = 300) -> None:
        # The dashboard as Ray starts it by default: `--include-dashboard=true` fails the start when it takes
        # more than 20 s, as its nine module processes do on a busy 2-core machine; the head waits for it instead.
        self.head = self._node("head", "--head", "--port", str(self.gcs_port), "--temp-dir", str(self.temp_dir),
                               "--dashboard-host", "127.0.0.1",
                               "--dashboard-port", str(self.ports.dashboard),
                               "--ray-client-server-port", str(free_port()),
                               "--metrics-export-port", str(self.ports.metrics))
        wait_for(lambda: "head" in self.nodes().values(), timeout, "head node")

    def start_worker(self, timeout: float = 120) -> None:
        self.worker = self._node("worker", "--address", f"127.0.0.1:{self.gcs_port}")
        wait_for(lambda: "worker" in self.nodes().values(), timeout, "worker node")

    def kill_worker(self, timeout: float = 120) -> None:
        """Kill the worker node's processes; return once Ray has declared the node dead."""
        lost = [node_id for node_id, role in self.nodes().items() if role == "worker"]
        self.worker.kill()
        wait_for(lambda: not set(lost) & set(self.nodes()), timeout, "death of the worker node in Ray's view")

    def stop(self) -> None:
        for node in (self.worker, self.head):
            if node:
                node.kill()
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def _node(self, name: str, *args: str) -> Node:
        return Node([*args, "--num-cpus", "1", "--num-gpus", "1", "--dashboard-agent-listen-port", str(free_port()),
                     "--disable-usage-stats"], self.env, self.deploy_root, self.folder / f"{name}.log")

    def nodes(self) -> dict[str, str]:
        """Each live node's id and role, "head" or "worker", as Ray's state API lists them; {} until the dashboard
        answers."""
        try:
            listed = list_nodes(address=self.dashboard, timeout=10)
        except RayStateApiException:
            return {}
        return {node.node_id: "head" if node.is_head_node else "worker" for node in listed if node.state == "ALIVE"}

    def replicas(self, application: str) -> list[Replica]:
        """Each replica of the application's deployment, from the REST API Core reads."""
        with urllib.request.urlopen(f"{self.dashboard}/api/serve/applications/", timeout=10) as response:
            applications = json.load(response).get("applications") or {}
        deployments = applications.get(application, {}).get("deployments", {})
        return [Replica(replica["state"], replica["node_id"])
                for deployment in deployments.values() for replica in deployment["replicas"]]


@contextmanager
def two_node_cluster(folder: Path):
    """A running head and worker; every process of both is killed after, by process id."""
    cluster = RayCluster(folder)
    try:
        cluster.start_head()
        cluster.start_worker()
        yield cluster
    finally:
        cluster.stop()
