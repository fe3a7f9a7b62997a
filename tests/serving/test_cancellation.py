"""An abandoned call stops: a gRPC call whose deadline passes, or an HTTP client that hangs up, stops its
generation at the next denoising step and frees the replica. Counted in UNet steps, which the replica logs
when it stops ("cancelled at step K; stopped after step L"), not in seconds."""

import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from instill_contract import check_output, task_input
from served import MODEL, TINY, metric_total, scrape, serve_log_lines, wait_for_metric
from stable_diffusion_xl.serving.client import call_request, grpc_call

pytestmark = pytest.mark.slow
LONG = {"steps": 100, "refiner": False, "aspect-ratio": "21:9"}  # 100 UNet steps: seconds on the demo weights
STOPPED = r"(instill-\w+) call abandoned by its caller: cancelled at step (\d+); stopped after step (\d+)"


def abandoned_grpc_call(cluster, request_id: str, deadline: float) -> None:
    stub = cluster.channel.unary_unary("/model.ray.v1alpha.UserDefinedService/__call__",
                                       request_serializer=lambda request: request.SerializeToString())
    with pytest.raises(grpc.RpcError) as caught:
        stub(call_request(task_input(seed=5, **LONG)), timeout=deadline,
             metadata=(("application", MODEL), ("request_id", request_id)))
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def steps_of(cluster, request_id: str, timeout: float = 30) -> tuple[str, int, int]:
    """(dialect, step at which the caller went away, step after which the generation stopped)."""
    lines = serve_log_lines(cluster, request_id, STOPPED, timeout)
    assert len(lines) == 1, f"no stop logged for {request_id}"
    api, cancelled_at, stopped_after = lines[0].groups()
    return api, int(cancelled_at), int(stopped_after)


def test_a_grpc_call_past_its_deadline_stops_at_the_next_step(cluster):
    before = metric_total(scrape(cluster), "ray_sdxl_cancelled_calls")
    request_id = f"deadline-{uuid.uuid4()}"
    abandoned_grpc_call(cluster, request_id, deadline=2.0)
    api, cancelled_at, stopped_after = steps_of(cluster, request_id)
    assert api == "instill-grpc" and 0 < cancelled_at < 100
    assert stopped_after - cancelled_at <= 1
    assert metric_total(wait_for_metric(cluster, "ray_sdxl_cancelled_calls", before + 1),
                        "ray_sdxl_cancelled_calls") >= before + 1


def test_an_http_client_that_hangs_up_stops_its_generation_at_the_next_step(cluster):
    request_id = f"hangup-{uuid.uuid4()}"
    body = (b'{"prompt": "a cat", "steps": 100, "refiner": false, "aspect-ratio": "21:9"}')
    with socket.create_connection(("127.0.0.1", cluster.ports.http), timeout=30) as sock:
        sock.sendall(f"POST /{MODEL} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"X-Request-ID: {request_id}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        time.sleep(1.5)  # the generation runs; then the client hangs up without reading the reply
    api, cancelled_at, stopped_after = steps_of(cluster, request_id)
    assert api == "instill-http" and 0 < cancelled_at < 100
    assert stopped_after - cancelled_at <= 1


def test_abandoned_calls_leave_no_backlog_for_the_next_caller(cluster):
    """A caller that gives up after a second and retries: the calls it abandoned, the one generating and the
    one waiting for the engine, make at most one more step each, so the next call is not stuck behind them."""
    request_ids = [f"retry-{i}-{uuid.uuid4()}" for i in range(3)]
    with ThreadPoolExecutor(max_workers=3) as pool:
        list(pool.map(lambda request_id: abandoned_grpc_call(cluster, request_id, deadline=1.5), request_ids))
    # The replica holds two of them (SDXL_MAX_ONGOING_REQUESTS); Serve's queue drops the third unstarted.
    logged = [serve_log_lines(cluster, request_id, STOPPED, timeout=10) for request_id in request_ids]
    stops = [(int(lines[0][2]), int(lines[0][3])) for lines in logged if lines]
    assert len(stops) >= 2 and all(stopped_after - cancelled_at <= 1 for cancelled_at, stopped_after in stops)
    assert min(stopped_after for _, stopped_after in stops) == 0  # the one waiting for the engine never started
    assert len(check_output(grpc_call(cluster.channel, MODEL, task_input(seed=1, **TINY))[0])) == 1
