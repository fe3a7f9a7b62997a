"""An abandoned call stops: a gRPC call whose deadline passes, or an HTTP client that hangs up, stops its
generation at the next denoising step and frees the replica. Counted in UNet steps, which the replica logs
when it stops ("cancelled at step K; stopped after step L"), not in seconds."""

import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import grpc
import pytest
from google.protobuf import json_format
from instill.protogen.model.ray.v1alpha.user_defined_pb2 import CallRequest, CallResponse

from instill_contract import check_output, task_input
from served import MODEL, TINY, metric_total, scrape, serve_log_lines, wait_for_metric
from stable_diffusion_xl.serving.client import METHOD, call_request

pytestmark = pytest.mark.slow
LONG = {"steps": 100, "refiner": False, "aspect-ratio": "21:9"}  # 100 UNet steps: seconds on the demo weights
STOPPED = (r"(?P<api>instill-\w+) call abandoned by its caller: cancelled at step (?P<cancelled>\d+); "
           r"stopped after step (?P<stopped>\d+)")
ENDED = rf"(?:{STOPPED}|\d+ task inputs, (?P<images>\d+) images)"  # stopped, or finished: all its steps made


def call_with_id(cluster, request_id: str, parameters: dict, deadline: float) -> list[dict]:
    """One CallRequest to MODEL with Core's request_id metadata, which Serve stamps on the replica's lines."""
    stub = cluster.channel.unary_unary(METHOD, request_serializer=CallRequest.SerializeToString,
                                       response_deserializer=CallResponse.FromString)
    response = stub(call_request(task_input(**parameters)), timeout=deadline,
                    metadata=(("application", MODEL), ("request_id", request_id)))
    return [json_format.MessageToDict(output) for output in response.task_outputs]


def abandoned_grpc_call(cluster, request_id: str, deadline: float) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        call_with_id(cluster, request_id, {"seed": 5, **LONG}, deadline)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def steps_of(cluster, request_id: str, timeout: float = 30) -> tuple[str, int, int]:
    """(dialect, step at which the caller went away, step after which the generation stopped)."""
    lines = serve_log_lines(cluster, request_id, STOPPED, timeout)
    assert len(lines) == 1, f"no stop logged for {request_id}"
    api, cancelled_at, stopped_after = lines[0].groups()
    return api, int(cancelled_at), int(stopped_after)


def abandoned_mid_denoising(cluster, abandon) -> tuple[str, int, int]:
    """steps_of a LONG call that `abandon(request_id, seconds)` gives up on after 2 s, or, when the denoising
    had not yet begun (load slows the path to it), after 4, 8 then 16 s: the caller goes away mid-denoising."""
    for seconds in (2, 4, 8, 16):
        request_id = f"abandoned-{uuid.uuid4()}"
        abandon(request_id, seconds)
        api, cancelled_at, stopped_after = steps_of(cluster, request_id)
        if cancelled_at > 0:
            break
    return api, cancelled_at, stopped_after


def test_a_grpc_call_past_its_deadline_stops_at_the_next_step(cluster):
    before = metric_total(scrape(cluster), "ray_sdxl_cancelled_calls")
    api, cancelled_at, stopped_after = abandoned_mid_denoising(cluster, partial(abandoned_grpc_call, cluster))
    assert api == "instill-grpc" and 0 < cancelled_at < 100
    assert stopped_after - cancelled_at <= 1
    assert metric_total(wait_for_metric(cluster, "ray_sdxl_cancelled_calls", before + 1),
                        "ray_sdxl_cancelled_calls") >= before + 1


def hung_up_http_call(cluster, request_id: str, seconds: float) -> None:
    """A LONG call whose client hangs up after `seconds` without reading the reply."""
    body = b'{"prompt": "a cat", "steps": 100, "refiner": false, "aspect-ratio": "21:9"}'
    with socket.create_connection(("127.0.0.1", cluster.ports.http), timeout=30) as sock:
        sock.sendall(f"POST /{MODEL} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"X-Request-ID: {request_id}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        time.sleep(seconds)


def test_an_http_client_that_hangs_up_stops_its_generation_at_the_next_step(cluster):
    api, cancelled_at, stopped_after = abandoned_mid_denoising(cluster, partial(hung_up_http_call, cluster))
    assert api == "instill-http" and 0 < cancelled_at < 100
    assert stopped_after - cancelled_at <= 1


def test_abandoned_calls_leave_no_backlog_for_the_next_caller(cluster):
    """A caller that gives up after a second and retries at once. Of the calls it abandoned (one generating, the
    others waiting for the engine's next run, or sharing its batch), each that the replica took stops within one
    step of its cancellation reaching it, and none runs to its end: the retry is served in full, not after them.
    When a cancellation reaches the replica (before or after the engine is free) depends on the machine's load, so
    no step number is asserted."""
    request_ids = [f"retry-{i}-{uuid.uuid4()}" for i in range(3)]
    with ThreadPoolExecutor(max_workers=3) as pool:
        list(pool.map(lambda request_id: abandoned_grpc_call(cluster, request_id, deadline=1.5), request_ids))
    assert len(check_output(call_with_id(cluster, f"retry-next-{uuid.uuid4()}", {"seed": 1, **TINY}, 300)[0])) == 1
    # How each abandoned call ended: stopped, finished (none may), or no line at all (never started).
    ended = [line for request_id in request_ids for line in serve_log_lines(cluster, request_id, ENDED, timeout=10)]
    assert not [line[0] for line in ended if line["images"]], "an abandoned call ran to its end"
    stops = [(int(line["cancelled"]), int(line["stopped"])) for line in ended]
    assert stops, "the call generating when its caller gave up logged no stop"
    assert all(stopped_after - cancelled_at <= 1 for cancelled_at, stopped_after in stops), stops
