"""Run the Instill model on a local Ray Serve the way Instill Core's Ray runs it, on loopback.

The model is deployed from a folder holding `_model.py` (model.py renamed, as `instill build`
does) through Ray's dashboard REST API, with the gRPC proxy serving Instill's
`UserDefinedService`; readiness is read from `/api/serve/applications/`, as Core reads it.

Ray runs with the node address 127.0.0.1, which makes it bind its own servers (GCS, raylet, object
manager, workers, dashboard and its agent, metrics) to loopback only. Ray Serve's gRPC proxy is the
exception: it always binds `[::]:<port>`, every interface (`ready:` says so).

    python -m stable_diffusion_xl serve --demo              # serve until Ctrl-C
    python -m stable_diffusion_xl try "cat napping" --demo  # serve, send one request, write the images
"""

from __future__ import annotations

import errno
import functools
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
from unittest import mock

import instill
import psutil

PACKAGE_DIR = Path(__file__).resolve().parent.parent
MODEL_FILE = PACKAGE_DIR.parent / "model.py"
# The SDK's generated gRPC module imports `model.ray.v1alpha...`: the protogen folder must be on the path
# and no other `model` module may be (the reason `instill build` renames model.py).
PROTOGEN_DIR = Path(instill.__file__).parent / "protogen"
SERVICER = "model.ray.v1alpha.user_defined_pb2_grpc.add_UserDefinedServiceServicer_to_server"
READY, FAILED = "ready:", "failed:"
LOOPBACK = "127.0.0.1"


class DeployFailed(RuntimeError):
    """An application reached DEPLOY_FAILED; the message is Ray's own, which says why."""


class PortInUse(RuntimeError):
    """A port this Ray Serve must listen on is taken (or cannot be bound). Never shared: Ray Serve's proxies
    would load-balance with whatever holds it (they set SO_REUSEPORT), another instance with other settings."""


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
    """The ports Ray Serve listens on; gRPC 0 starts no gRPC proxy. `host` is the HTTP proxy's address."""

    http: int = field(default_factory=free_port)
    grpc: int = field(default_factory=free_port)
    dashboard: int = field(default_factory=free_port)
    metrics: int = field(default_factory=free_port)
    host: str = LOOPBACK

    def named(self) -> dict[str, int]:
        """Each port to check before starting, by what listens on it."""
        ports = {"HTTP": self.http, "gRPC": self.grpc, "Ray dashboard": self.dashboard, "metrics": self.metrics}
        return {name: port for name, port in ports.items() if port}

    def ready_line(self) -> str:
        """What listens where, as the OS will show it: Ray Serve's gRPC proxy binds every interface."""
        grpc = f"grpc [::]:{self.grpc} (every interface)" if self.grpc else "grpc off"
        return (f"{READY} http {self.host}:{self.http} {grpc} dashboard http://{LOOPBACK}:{self.dashboard} "
                f"metrics http://{LOOPBACK}:{self.metrics}/metrics")


def holder(port: int) -> str:
    """Who listens on `port`, as far as the OS tells this user: " (pid 123, ray::ProxyActor)", or ""."""
    try:
        listeners = [c for c in psutil.net_connections("tcp")
                     if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port]
    except psutil.Error:
        return ""
    for listener in listeners:
        if listener.pid:
            try:
                return f" (pid {listener.pid}, {psutil.Process(listener.pid).name()})"
            except psutil.Error:
                return f" (pid {listener.pid})"
    return ""


def check_free(ports: Ports) -> None:
    """PortInUse for the first port something else listens on, naming it and its holder."""
    for name, port in ports.named().items():
        # The gRPC proxy binds every interface, so any listener on its port is in its way.
        address = "0.0.0.0" if name == "gRPC" else (ports.host if name == "HTTP" else LOOPBACK)
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed port's TIME_WAIT holds nothing
            try:
                sock.bind((address, port))
            except OSError as error:
                if error.errno != errno.EADDRINUSE:  # a --host that is no address of this machine, a port below 1024
                    raise PortInUse(f"{name} cannot listen on {address}:{port}: {error.strerror}") from None
                raise PortInUse(f"{name} port {port} is in use{holder(port)}: stop what holds it or choose another "
                                "port") from None


def serve_config(applications: list[Application], ports: Ports) -> dict:
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": ports.host, "port": ports.http},
        "grpc_options": {"port": ports.grpc, "grpc_servicer_functions": [SERVICER] if ports.grpc else []},
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


def run(applications: list[Application], ports: Ports, timeout: float = 300, ray_dir: str | None = None,
        gpus: int | None = None) -> None:
    """Start Ray and Serve in this process, deploy, say READY on stdout, and serve until SIGINT/SIGTERM.
    PortInUse, before Ray starts, when one of `ports` is taken. `gpus`: the GPUs the Ray node declares (None: the
    ones it finds); Ray counts a declared GPU whether or not the machine has it."""
    import ray
    from ray import serve

    check_free(ports)
    with tempfile.TemporaryDirectory(prefix="sdxl-serve-") as tmp:
        root = deploy_dir(Path(tmp))
        # Ray's processes and workers inherit this environment: they import _model from the deploy folder; the
        # proxies bind their ports alone (Serve's default SO_REUSEPORT would share them with another instance);
        # the dashboard's and autoscaler's metrics servers take free ports, not Ray's fixed 44227 and 44217.
        # Ray's single-machine mode (its default on macOS and Windows) keeps a process that connects to
        # 127.0.0.1 on 127.0.0.1: otherwise the dashboard's Serve module swaps in the machine's address, where the
        # loopback-only GCS does not answer, and every deploy times out.
        os.environ.update(PYTHONPATH=os.pathsep.join([str(root), str(PROTOGEN_DIR)]),
                          SERVE_SOCKET_REUSE_PORT_ENABLED="0", DASHBOARD_METRIC_PORT=str(free_port()),
                          AUTOSCALER_METRIC_PORT=str(free_port()), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
        os.chdir(root)
        start_ray(ports, ray_dir, gpus)
        # Stop cleanly on either signal, even where a background shell made SIGINT ignored.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, terminated)
        graceful = True
        try:
            dashboard = f"http://{LOOPBACK}:{ports.dashboard}"
            try:
                deploy(dashboard, applications, ports, timeout)
            except DeployFailed as failed:
                print(f"{FAILED} {json.dumps(str(failed))}", flush=True)  # one line, for `serving`
                raise
            print(ports.ready_line(), flush=True)
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        except Terminated:
            # SIGTERM usually reaches Ray's own processes too (`timeout`, supervisors signal the process group):
            # its GCS is gone or going, and serve.shutdown would wait a minute for it. ray.shutdown stops the rest.
            graceful = False
        finally:
            if graceful:
                serve.shutdown()
            ray.shutdown()


class Terminated(Exception):
    """SIGTERM arrived."""


def terminated(signum, frame):
    raise Terminated


def start_ray(ports: Ports, ray_dir: str | None, gpus: int | None = None) -> None:
    """A one-node Ray whose servers listen on loopback only (the node address 127.0.0.1 makes them), with every
    port chosen free: ray.init has no argument for the dashboard agent's port, which Ray fixes at 52365 unless
    told None, as its own test clusters do; a second Ray on the machine would find it taken."""
    import ray
    from ray._private import parameter

    # The dashboard (Serve's REST API) as Ray starts it by default: ray.init does not fail when it takes more than
    # 20 s, as its nine module processes do on a busy 2-core machine; `deploy` waits for it instead.
    os.environ.setdefault("RAY_DASHBOARD_SUBPROCESS_MODULE_WAIT_READY_TIMEOUT", "120")
    free_agent_port = functools.partial(parameter.RayParams, dashboard_agent_listen_port=None)
    with mock.patch.object(parameter, "RayParams", free_agent_port):
        ray.init(address="local", _node_ip_address=LOOPBACK, dashboard_host=LOOPBACK,
                 dashboard_port=ports.dashboard, num_cpus=os.cpu_count(), num_gpus=gpus, log_to_driver=True,
                 _temp_dir=ray_dir, _metrics_export_port=ports.metrics,
                 _system_config={"metrics_report_interval_ms": 1000})


def deploy(dashboard: str, applications: list[Application], ports: Ports, timeout: float) -> None:
    """Deploy to the Ray cluster behind `dashboard` through its REST API, as Core does; return once every
    application is RUNNING."""
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    deadline = time.monotonic() + timeout
    wait_for_dashboard(dashboard, timeout)
    ServeSubmissionClient(dashboard).deploy_applications(serve_config(applications, ports))
    wait_until_running(dashboard, [app.name for app in applications], deadline - time.monotonic())


def wait_for_dashboard(dashboard: str, timeout: float) -> None:
    """Return once Serve's REST API answers (Ray starts the dashboard in the background)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            application_statuses(dashboard)
            return
        except OSError as error:  # refused, or not serving its routes yet
            if time.monotonic() > deadline:
                raise TimeoutError(f"Ray's dashboard did not answer within {timeout:.0f} s: {error}") from error
            time.sleep(1)


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
            ray_dir: Path | None = None, gpus: int | None = None):
    """`run` in a child process; yields its Ports once every application is RUNNING, and stops it after.

    Ray's logs go under `ray_dir` (default: Ray's own /tmp/ray), Serve's in its session_latest/logs/serve.
    """
    ports = Ports()
    args = json.dumps({"applications": [vars(app) for app in applications], "ports": vars(ports),
                       "ray_dir": str(ray_dir) if ray_dir else None, "gpus": gpus})
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
    run([Application(**app) for app in spec["applications"]], Ports(**spec["ports"]), ray_dir=spec["ray_dir"],
        gpus=spec["gpus"])
