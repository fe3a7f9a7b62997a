"""Calls batched across callers, through Ray Serve with Core's gRPC metadata and over HTTP: calls that arrive
while the engine works share its next run's UNet batches when they can, and each caller still gets its own
images, progress and cancel. Each test first makes the engine busy with a long call, so that the calls it sends
meanwhile wait together: what is asserted is what batching guarantees, never a time."""

import json
import re
import socket
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
from test_cancellation import steps_of

from helpers import looks_alike
from instill_contract import check_output, task_input
from served import FAST, MODEL, SMALL, http
from stable_diffusion_xl.serving.client import grpc_call

pytestmark = pytest.mark.slow
LONG = {"prompt": "a long one", "steps": 100, "n": 4, "seed": 3, "aspect-ratio": "21:9", "refiner": False}


def streamed(cluster, body: dict, request_id: str) -> socket.socket:
    """A streaming POST of `body` to the model's route; the socket, to read its events from."""
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", cluster.ports.http), timeout=300)
    sock.sendall(f"POST /{MODEL} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAccept: text/event-stream"
                 f"\r\nX-Request-ID: {request_id}\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def read_until_denoising(sock: socket.socket) -> None:
    """Read the stream until it reports a denoising step of its own images (not `waiting`)."""
    received = b""
    while not re.search(rb'"stage": "base", "step": [1-9]', received):
        chunk = sock.recv(65536)
        assert chunk, f"the stream ended before denoising: {received[-300:]!r}"
        received += chunk


@contextmanager
def engine_busy(cluster):
    """A long call denoising while the block runs: the calls sent meanwhile wait for the engine's next run."""
    sock = streamed(cluster, LONG, f"busy-{uuid.uuid4()}")
    try:
        read_until_denoising(sock)
        yield
    finally:
        sock.close()


def test_calls_that_wait_together_share_a_batch_and_each_gets_the_images_of_its_own_seed(cluster):
    compatible = [task_input(f"prompt {i}", seed=60 + i, **FAST) for i in range(2)]
    other = task_input("other steps", seed=70, steps=6)  # another batch key: never in their batch
    with engine_busy(cluster), ThreadPoolExecutor(max_workers=4) as pool:
        grpc_calls = [pool.submit(grpc_call, cluster.channel, MODEL, call) for call in [*compatible, other]]
        plain = pool.submit(http, cluster.ports, MODEL, {"prompt": "prompt http", "seed": 62, **FAST})
        outputs = [future.result()[0] for future in grpc_calls]
        status, body, _ = plain.result()
    assert status == 200, body
    assert [output["metadata"]["usage"]["calls-in-batch"] for output in outputs] == [3, 3, 1]
    assert body[0]["metadata"]["usage"]["calls-in-batch"] == 3  # the HTTP caller shared the gRPC callers' batch
    for call, output in zip(compatible, outputs):
        alone = grpc_call(cluster.channel, MODEL, call)[0]
        assert alone["metadata"]["usage"]["calls-in-batch"] == 1
        assert looks_alike(check_output(output)[0], check_output(alone)[0])


def test_a_caller_that_hangs_up_mid_batch_is_dropped_and_the_others_finish(cluster):
    shared = {"steps": 60, "refiner": False, "aspect-ratio": "16:9"}
    leaving_id = f"leaving-{uuid.uuid4()}"
    with ThreadPoolExecutor(max_workers=2) as pool, engine_busy(cluster):
        staying = [pool.submit(grpc_call, cluster.channel, MODEL, task_input(f"stay {i}", seed=80 + i, **shared))
                   for i in range(2)]
        with streamed(cluster, {"prompt": "leaving", "seed": 90, **shared}, leaving_id) as leaving:
            read_until_denoising(leaving)  # its batch, shared with the two staying callers, has begun: hang up
        outputs = [future.result()[0] for future in staying]
    assert [output["metadata"]["usage"]["calls-in-batch"] for output in outputs] == [3, 3]
    _, cancelled_at, stopped_after = steps_of(cluster, leaving_id)
    assert stopped_after - cancelled_at <= 1  # its images were dropped at the next step; the batch went on
    for i, output in enumerate(outputs):
        alone = grpc_call(cluster.channel, MODEL, task_input(f"stay {i}", seed=80 + i, **shared))[0]
        assert looks_alike(check_output(output)[0], check_output(alone)[0])


def test_with_batching_across_calls_off_each_call_runs_alone(cluster):
    calls = [task_input(f"prompt {i}", seed=100 + i, **FAST) for i in range(3)]
    with ThreadPoolExecutor(max_workers=3) as pool:
        outputs = [output for outputs in pool.map(lambda call: grpc_call(cluster.channel, SMALL, call), calls)
                   for output in outputs]
    assert [output["metadata"]["usage"]["calls-in-batch"] for output in outputs] == [1, 1, 1]
    for call, output in zip(calls, outputs):
        assert grpc_call(cluster.channel, SMALL, call)[0]["data"] == output["data"]  # alone: the same bytes
