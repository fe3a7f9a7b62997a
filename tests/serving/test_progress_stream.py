"""Server-sent progress, through Ray Serve's HTTP proxy: `Accept: text/event-stream` on a generating POST
gives the engine's real UNet steps as they are done, then the same answer the plain call gives; a bad request
is refused as usual, and hanging up stops the generation."""

import json
import re
import socket
import urllib.request
import uuid

import pytest
from test_cancellation import steps_of

from served import MODEL, http

pytestmark = pytest.mark.slow
STREAM = {"Accept": "text/event-stream", "Content-Type": "application/json"}


def events(ports, path: str, body: dict) -> list[tuple[str, dict]]:
    """Every (event, data) of one streamed call."""
    request = urllib.request.Request(f"http://127.0.0.1:{ports.http}/{path}", data=json.dumps(body).encode(),
                                     headers=STREAM)
    with urllib.request.urlopen(request, timeout=300) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        text = response.read().decode()
    parsed = []
    for block in text.strip().split("\n\n"):
        name, data = (line.partition(": ")[2] for line in block.split("\n"))
        parsed.append((name, json.loads(data)))
    return parsed


def test_progress_counts_the_unet_calls_of_base_then_refiner_and_ends_with_the_plain_answer(cluster):
    body = {"prompt": "a lighthouse", "steps": 30, "n": 2, "seed": 4, "high-noise-frac": 0.5}
    streamed = events(cluster.ports, MODEL, body)
    progress = [data for name, data in streamed if name == "progress"]
    (result,) = [data for name, data in streamed if name == "result"]
    assert [name for name, _ in streamed][-1] == "result" and len(progress) >= 3  # reported while it ran
    assert all(data["steps"] == 30 for data in progress if data["stage"] != "waiting")  # euler: a call per step
    steps = [data["step"] for data in progress]
    assert steps == sorted(steps) and steps[-1] == 30
    stages = [data["stage"] for data in progress if data["stage"] != "waiting"]
    assert stages == sorted(stages, key=["base", "refiner"].index) and stages[-1] == "refiner"
    status, plain, _ = http(cluster.ports, MODEL, body)
    for output in [*result, *plain]:  # the same images and usage, but for the seconds each call took
        del output["metadata"]["usage"]["seconds"]
    assert status == 200 and result == plain


def test_a_bad_request_is_refused_before_any_event(cluster):
    status, reply, headers = http(cluster.ports, MODEL, {"prompt": "a cat", "steps": 0}, headers=STREAM)
    assert status == 400 and reply["field"] == "steps" and headers["Content-Type"] == "application/json"


def test_hanging_up_on_the_stream_stops_the_generation_at_the_next_step(cluster):
    request_id = f"stream-hangup-{uuid.uuid4()}"
    body = b'{"prompt": "a cat", "steps": 100, "refiner": false, "aspect-ratio": "21:9"}'
    with socket.create_connection(("127.0.0.1", cluster.ports.http), timeout=30) as sock:
        sock.sendall(f"POST /{MODEL} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Accept: text/event-stream\r\nX-Request-ID: {request_id}\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        received = b""
        while not re.search(rb'"step": [1-9]', received):  # a step is done: the denoising is under way
            part = sock.recv(65536)
            assert part, f"the stream ended before its first step: {received[-300:]!r}"
            received += part
    api, cancelled_at, stopped_after = steps_of(cluster, request_id)
    assert api == "instill-http" and 0 < cancelled_at < 100
    assert stopped_after - cancelled_at <= 1
