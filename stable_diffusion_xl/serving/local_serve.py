"""Run the Instill model on a local Ray Serve the way Instill Core's Ray runs it, on loopback.

The model is deployed from a folder holding `_model.py` (model.py renamed, as `instill build`
does) through Ray's dashboard REST API, with the gRPC proxy serving Instill's
`UserDefinedService`; readiness is read from `/api/serve/applications/`, as Core reads it.

    python -m stable_diffusion_xl serve --demo              # serve until Ctrl-C
    python -m stable_diffusion_xl try "cat napping" --demo  # serve, send one request, write the images
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import instill

PACKAGE_DIR = Path(__file__).resolve().parent.parent
MODEL_FILE = PACKAGE_DIR.parent / "model.py"
# The SDK's generated gRPC module imports `model.ray.v1alpha...`: the protogen folder must be on the path
# and no other `model` module may be (the reason `instill build` renames model.py).
PROTOGEN_DIR = Path(instill.__file__).parent / "protogen"
SERVICER = "model.ray.v1alpha.user_defined_pb2_grpc.add_UserDefinedServiceServicer_to_server"
READY, FAILED = "ready:", "failed:"


class DeployFailed(RuntimeError):
    """An application reached DEPLOY_FAILED; the message is Ray's own, which says why."""


# Ports Ray binds by default whatever it is told (GCS, dashboard, client server, dashboard agent): a free port
# picked for Serve must not be one of them, or Ray takes it first and the proxy fails to bind.
RAY_DEFAULT_PORTS = {6379, 8265, 10001, 52365}


def free_port() -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in RAY_DEFAULT_PORTS:
            return port


@dataclass
class Application:
    """One deployed model version; Core names it <owner_type>_<owner_uid>_<model_id>_<version>."""

    name: str = "default"
    env: dict[str, str] = field(default_factory=dict)

    @property
    def route_prefix(self) -> str:
        return "/" if self.name == "default" else f"/{self.name}"


@dataclass
class Ports:
    http: int = field(default_factory=free_port)
    grpc: int = field(default_factory=free_port)
    dashboard: int = field(default_factory=free_port)
    metrics: int = field(default_factory=free_port)


def serve_config(applications: list[Application], ports: Ports) -> dict:
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": ports.http},
        "grpc_options": {"port": ports.grpc, "grpc_servicer_functions": [SERVICER]},
        "applications": [
            {"name": app.name, "route_prefix": app.route_prefix, "import_path": "_model:entrypoint",
             "runtime_env": {"env_vars": app.env}}
            for app in applications
        ],
    }


def deploy_dir(root: Path) -> Path:
    """What the image holds: _model.py beside the package (and no model.py)."""
    shutil.copyfile(MODEL_FILE, root / "_model.py")
    shutil.copytree(PACKAGE_DIR, root / PACKAGE_DIR.name, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def run(applications: list[Application], ports: Ports, timeout: float = 300, ray_dir: str | None = None) -> None:
    """Start Ray and Serve in this process, deploy, say READY on stdout, and serve until SIGINT/SIGTERM."""
    import ray

    with tempfile.TemporaryDirectory(prefix="sdxl-serve-") as tmp:
        root = deploy_dir(Path(tmp))
        # Ray's workers inherit this environment: they import _model from the deploy folder.
        os.environ["PYTHONPATH"] = os.pathsep.join([str(root), str(PROTOGEN_DIR)])
        os.chdir(root)
        ray.init(address="local", include_dashboard=True, dashboard_host="127.0.0.1",
                 dashboard_port=ports.dashboard, num_cpus=os.cpu_count(), log_to_driver=True,
                 _temp_dir=ray_dir, _metrics_export_port=ports.metrics,
                 _system_config={"metrics_report_interval_ms": 1000})
        # Stop cleanly on either signal, even where a background shell made SIGINT ignored.
        for stop in (signal.SIGINT, signal.SIGTERM):
            signal.signal(stop, signal.default_int_handler)
        try:
            dashboard = f"http://127.0.0.1:{ports.dashboard}"
            try:
                deploy(dashboard, applications, ports, timeout)
            except DeployFailed as failed:
                print(f"{FAILED} {json.dumps(str(failed))}", flush=True)  # one line, for `serving`
                raise
            print(f"{READY} http 127.0.0.1:{ports.http} grpc 127.0.0.1:{ports.grpc} dashboard {dashboard} "
                  f"metrics http://127.0.0.1:{ports.metrics}/metrics", flush=True)
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            from ray import serve

            serve.shutdown()
            ray.shutdown()


def deploy(dashboard: str, applications: list[Application], ports: Ports, timeout: float) -> None:
    """Deploy to the Ray cluster behind `dashboard` through its REST API, as Core does; return once every
    application is RUNNING."""
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    ServeSubmissionClient(dashboard).deploy_applications(serve_config(applications, ports))
    wait_until_running(dashboard, [app.name for app in applications], timeout)


def application_statuses(dashboard: str) -> dict[str, dict]:
    """Each application's status and Ray's message about it, as Instill Core reads them."""
    with urllib.request.urlopen(f"{dashboard}/api/serve/applications/", timeout=10) as response:
        details = json.load(response)
    return {name: {"status": app["status"], "message": app.get("message", ""),
                   "deployments": {deployment: info.get("message", "")
                                   for deployment, info in (app.get("deployments") or {}).items()}}
            for name, app in (details.get("applications") or {}).items()}


def wait_until_running(dashboard: str, names: list[str], timeout: float) -> None:
    deadline, statuses = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        statuses = application_statuses(dashboard)
        for name, app in statuses.items():
            if app["status"] == "DEPLOY_FAILED":
                # A replica that raised in its constructor: the deployment's message ends with the exception.
                reasons = [message.strip().splitlines()[-1] for message in app["deployments"].values()
                           if message.strip()]
                raise DeployFailed(f"application {name!r} failed to deploy: {app['message']}"
                                   + "".join(f" {reason}" for reason in reasons))
        if all(statuses.get(name, {}).get("status") == "RUNNING" for name in names):
            return
        time.sleep(1)
    raise TimeoutError(f"applications not RUNNING after {timeout:.0f} s: "
                       f"{ {name: app['status'] for name, app in statuses.items()} }")


@contextmanager
def serving(applications: list[Application], timeout: float = 300, log_path: Path | None = None,
            ray_dir: Path | None = None):
    """`run` in a child process; yields its Ports once every application is RUNNING, and stops it after.

    Ray's logs go under `ray_dir` (default: Ray's own /tmp/ray), Serve's in its session_latest/logs/serve.
    """
    ports = Ports()
    args = json.dumps({"applications": [vars(app) for app in applications], "ports": vars(ports),
                       "ray_dir": str(ray_dir) if ray_dir else None})
    log = open(log_path or os.devnull, "w")
    child = subprocess.Popen([sys.executable, "-m", "stable_diffusion_xl.serving.local_serve", args],
                             stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([child.stdout], [], [], remaining)[0]:
                raise TimeoutError(f"Ray Serve was not ready after {timeout:.0f} s (log: {log_path})")
            line = child.stdout.readline()
            if not line:
                raise RuntimeError(f"Ray Serve exited with {child.wait()} before it was ready (log: {log_path})")
            if line.startswith(FAILED):
                raise DeployFailed(json.loads(line[len(FAILED):]))
            if line.startswith(READY):
                break
        yield ports
    finally:
        child.send_signal(signal.SIGINT)
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
        log.close()


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    run([Application(**app) for app in spec["applications"]], Ports(**spec["ports"]), ray_dir=spec["ray_dir"])
