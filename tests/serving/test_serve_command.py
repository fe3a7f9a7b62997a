"""`serve` as a user runs it: what it listens on (read from the OS), ports already taken, and SIGTERM to its
process group, as `timeout` and supervisors send it."""

import ipaddress
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from contextlib import suppress

import psutil
import pytest

from stable_diffusion_xl.serving.local_serve import free_port

pytestmark = pytest.mark.slow
READY_TIMEOUT_S = 300
STOP_TIMEOUT_S = 60  # Ctrl-C stops in about 10 s on a quiet machine; SIGTERM must be as quick, with room for load


def start_serve(weights_dir, *args: str) -> subprocess.Popen:
    """`serve --demo` in a session (and process group) of its own."""
    return subprocess.Popen([sys.executable, "-m", "stable_diffusion_xl", "serve", "--demo", "--weights",
                             str(weights_dir), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def wait_for_ready(process: subprocess.Popen) -> str:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while (remaining := deadline - time.monotonic()) > 0 and select.select([process.stdout], [], [], remaining)[0]:
        line = process.stdout.readline()
        if not line:
            break
        if line.startswith("ready:"):
            return line
    process.kill()
    raise AssertionError(f"serve was not ready: {process.stderr.read()[-3000:]}")


def processes_of(process: subprocess.Popen) -> list[psutil.Process]:
    """The serve process and every process it started: its descendants and its session's other members."""
    found = {}
    with suppress(psutil.NoSuchProcess):
        root = psutil.Process(process.pid)
        found = {child.pid: child for child in root.children(recursive=True)} | {root.pid: root}
    for candidate in psutil.process_iter():
        with suppress(OSError, psutil.Error):
            if os.getsid(candidate.pid) == process.pid and candidate.status() != psutil.STATUS_ZOMBIE:
                found[candidate.pid] = candidate
    return list(found.values())


def listening(process: subprocess.Popen) -> dict[tuple[str, int], str]:
    """(address, port) -> process name, for every TCP socket the serve run listens on, from the OS."""
    found = {}
    for member in processes_of(process):
        with suppress(psutil.Error):
            for connection in member.net_connections("tcp"):
                if connection.status == psutil.CONN_LISTEN:
                    found[(connection.laddr.ip, connection.laddr.port)] = member.name()
    return found


def loopback(ip: str) -> bool:
    """Whether `ip` is a loopback address, ::ffff:127.0.0.1 (IPv4 on a dual-stack socket) included."""
    address = ipaddress.ip_address(ip)
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback


@pytest.fixture(scope="module")
def served(weights_dir):
    """One `serve --demo` on free ports: (process, HTTP port, gRPC port, its ready line)."""
    http_port, grpc_port = free_port(), free_port()
    process = start_serve(weights_dir, "--port", str(http_port), "--grpc-port", str(grpc_port))
    try:
        yield process, http_port, grpc_port, wait_for_ready(process)
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def test_serve_listens_on_loopback_only_but_for_the_grpc_proxy_and_says_so(served):
    process, http_port, grpc_port, ready = served
    sockets = listening(process)
    assert ("127.0.0.1", http_port) in sockets
    exposed = {(ip, port): name for (ip, port), name in sockets.items() if not loopback(ip)}
    # Ray Serve's gRPC proxy binds [::] whatever it is told; every other port stays on loopback.
    assert exposed == {("::", grpc_port): "ray::ProxyActor"}, sockets
    assert len(sockets) > 10  # GCS, raylet, object manager, workers, dashboard and its agent, metrics...
    assert f"http 127.0.0.1:{http_port} grpc [::]:{grpc_port} (every interface)" in ready
    for url in ready.split()[1:]:
        if url.startswith("http://"):  # the dashboard and metrics, printed where they listen
            host, _, port = url.removeprefix("http://").split("/")[0].partition(":")
            assert (host, int(port)) in sockets


def test_a_second_serve_on_the_same_ports_exits_naming_the_port_and_its_holder(served, weights_dir):
    _, http_port, grpc_port, _ = served
    second = subprocess.run([sys.executable, "-m", "stable_diffusion_xl", "serve", "--demo", "--weights",
                             str(weights_dir), "--port", str(http_port), "--grpc-port", str(grpc_port)],
                            capture_output=True, text=True, timeout=120)
    assert second.returncode == 1 and second.stdout == ""
    [line] = error_lines(second.stderr)
    assert re.fullmatch(rf"error: HTTP port {http_port} is in use \(pid \d+, ray::ProxyActor\): "
                        "stop what holds it or choose another port", line)


@pytest.mark.parametrize("taken", ["HTTP", "gRPC"])
def test_serve_refuses_a_port_held_by_a_plain_socket_before_starting_ray(weights_dir, taken):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        flag = {"HTTP": "--port", "gRPC": "--grpc-port"}[taken]
        other = {"HTTP": "--grpc-port", "gRPC": "--port"}[taken]
        result = subprocess.run([sys.executable, "-m", "stable_diffusion_xl", "serve", "--demo", "--weights",
                                 str(weights_dir), flag, str(port), other, str(free_port())],
                                capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stdout == ""
    assert error_lines(result.stderr) == [f"error: {taken} port {port} is in use (pid {os.getpid()}, "
                                          f"{psutil.Process().name()}): stop what holds it or choose another port"]
    assert "starting Ray" not in result.stderr and "Traceback" not in result.stderr


def error_lines(stderr: str) -> list[str]:
    """The lines a user reads as the outcome (other libraries' warnings aside), and no traceback."""
    assert "Traceback" not in stderr, stderr[-3000:]
    return [line for line in stderr.splitlines() if line.startswith("error")]


def test_sigterm_to_the_process_group_stops_every_process_of_serve(served):
    """Last: it stops the module's serve."""
    process = served[0]
    members = processes_of(process)
    assert len(members) > 5  # Ray's processes are there to stop
    started = time.monotonic()
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=STOP_TIMEOUT_S)
    stderr = process.stderr.read()
    gone, alive = psutil.wait_procs(members, timeout=max(1, STOP_TIMEOUT_S - (time.monotonic() - started)))
    assert not alive, [member.name() for member in alive]
    assert "Failed to connect to GCS" not in stderr and "Traceback" not in stderr, stderr[-3000:]
