"""Helpers for the tests that drive the model on a real Ray Serve (the `cluster` fixture in conftest.py):
HTTP calls, the metrics endpoint and the replicas' logs."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.request

MODEL = "users_6f1c0e2a_stable-diffusion-xl_v1"
SMALL = "users_6f1c0e2a_stable-diffusion-xl-small_v1"  # max n = 1, one resident LoRA, each call alone (no batching)
FILTERED = "users_6f1c0e2a_stable-diffusion-xl-filtered_v1"  # with a safety checker that flags one known image
KEYED = "users_6f1c0e2a_stable-diffusion-xl-keyed_v1"  # the same model, whose HTTP routes and gRPC need API_KEY
# With SDXL_TRAINING=1 and a LoRA folder of its own (the cluster's lora_dir), empty at the start
TRAINING = "users_6f1c0e2a_stable-diffusion-xl-training_v1"
API_KEY = "sk-test-4f9d2c7a1e"
FLAGGED_SEED = 51  # image 0 of n=2 at this seed (TINY, the default prompt) is the one FILTERED's checker flags
FAST = {"steps": 5}
TINY = {"steps": 1, "refiner": False}  # one UNet call: for inputs that only need to be accepted


def http(ports, path: str, body=None, *, method: str | None = None, data: bytes | None = None,
         headers: dict | None = None, timeout: float = 300):
    """(status, JSON body, headers) of one HTTP request to the Ray Serve proxy."""
    if data is None and body is not None:
        data = json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{ports.http}/{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw, status, reply_headers = response.read(), response.status, response.headers
    except urllib.error.HTTPError as error:
        raw, status, reply_headers = error.read(), error.code, error.headers
    return status, json.loads(raw) if raw else None, reply_headers


def raw_reply(sock) -> bytes:
    """One whole HTTP reply read from a raw socket: its head, then Content-Length bytes of body (or until close)."""
    reply = b""
    while b"\r\n\r\n" not in reply and (part := sock.recv(65536)):
        reply += part
    head, _, body = reply.partition(b"\r\n\r\n")
    lengths = [int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
    length = lengths[0] if lengths else None
    while (length is None or len(body) < length) and (part := sock.recv(65536)):
        body += part
    return head + b"\r\n\r\n" + body


def scrape(cluster) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{cluster.ports.metrics}/metrics", timeout=10) as response:
        return response.read().decode()


def metric_total(text: str, name: str, label: str = "") -> float:
    """The sum of metric `name` over its series, or over those with `label` (such as 'api="plain"')."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and label in line.partition(" ")[0])


def wait_for_metric(cluster, name: str, at_least: float, timeout: float = 60, label: str = "") -> str:
    """The metrics text once `name` totals `at_least` (Ray exports them every second or so)."""
    deadline = time.monotonic() + timeout
    while True:
        text = scrape(cluster)
        if metric_total(text, name, label) >= at_least or time.monotonic() > deadline:
            return text
        time.sleep(1)


def ray_logs(cluster) -> str:
    return "".join(path.read_text(errors="replace") for path in cluster.ray_dir.rglob("logs/**/*")
                   if path.is_file() and path.suffix in (".log", ".err", ".out"))


def serve_log_lines(cluster, request_id: str, pattern: str, timeout: float = 30) -> list[re.Match]:
    """The lines of one request in Serve's logs, proxy's and replicas' (Ray Serve puts its id before ` -- `),
    that match `pattern`; waits up to `timeout` for the first."""
    deadline, regex = time.monotonic() + timeout, re.compile(rf" {re.escape(request_id)} -- {pattern}")
    while True:
        logs = "".join(path.read_text(errors="replace") for path in cluster.ray_dir.rglob("logs/serve/*.log"))
        found = [match for line in logs.splitlines() if (match := regex.search(line))]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def replica_process(application: str):
    """The psutil.Process of `application`'s replica (Ray names it ServeReplica:<application>:<deployment>)."""
    import psutil

    for process in psutil.process_iter(["cmdline"]):
        if f"ServeReplica:{application}:" in " ".join(process.info["cmdline"] or []):
            return process
    raise LookupError(f"no replica of {application} on this machine")


class PeakRss:
    """The highest RSS of a process while the block runs, sampled every 5 ms by a thread."""

    def __init__(self, process):
        self.process, self.peak, self._stop = process, 0, threading.Event()

    def __enter__(self):
        self.idle = self.peak = self.process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def added(self) -> int:
        return self.peak - self.idle
