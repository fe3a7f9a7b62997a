"""What a hostile client sends, through the real Ray Serve over gRPC and HTTP: every input gets a clean error
in its caller's dialect that names the field, quotes at most an excerpt, stays out of logs and metric labels,
and the replica keeps serving. One test per defect an adversarial run found, then the property tests."""

import json
import math
import re
import select
import socket
import uuid

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from instill.protogen.model.ray.v1alpha.user_defined_pb2 import CallRequest, CallResponse

from instill_contract import check_output, task_input
from served import (
    MODEL,
    TINY,
    TRAINING,
    http,
    metric_total,
    raw_reply,
    ray_logs,
    scrape,
    serve_log_lines,
    wait_for_metric,
)
from stable_diffusion_xl.apis import routes  # noqa: F401  every dialect declares its names, as in the replica
from stable_diffusion_xl.fields import KNOWN_FIELDS
from stable_diffusion_xl.generation.request import MAX_SEED, PARAMETERS
from stable_diffusion_xl.serving.client import METHOD, grpc_call
from stable_diffusion_xl.serving.limits import Limits

pytestmark = pytest.mark.slow
SHORT = 400  # characters: what an error about any value may take, well under gRPC's 16 KB of metadata


def raw_call(channel, *task_inputs: dict, timeout: float = 60):
    """A CallRequest built from Python values with Struct.update, which (unlike JSON) carries NaN and infinities."""
    request = CallRequest()
    for item in task_inputs:
        request.task_inputs.add().update(item)
    stub = channel.unary_unary(METHOD, request_serializer=CallRequest.SerializeToString,
                               response_deserializer=CallResponse.FromString)
    return stub(request, metadata=(("application", MODEL),), timeout=timeout)


def invalid_argument(channel, *task_inputs: dict) -> str:
    with pytest.raises(grpc.RpcError) as caught:
        raw_call(channel, *task_inputs)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    details = caught.value.details()
    assert len(details) < SHORT and "Traceback" not in details and "ray::" not in details and "pid=" not in details
    return details


def still_serving(cluster) -> None:
    assert len(check_output(grpc_call(cluster.channel, MODEL, task_input(seed=9, **TINY))[0])) == 1


# 1. NaN and the infinities anywhere in a gRPC Struct

@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf], ids=["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_anywhere_in_a_struct_are_invalid_argument_naming_the_field(cluster, number):
    cases = [
        ({"data": {"prompt": "a cat"}, "parameter": {"guidance-scale": number}},
         "task_inputs[0].parameter.guidance-scale: must be a finite number"),
        ({"data": {"prompt": "a cat"}, "parameter": {"n": number}}, "task_inputs[0].parameter.n: must be an integer"),
        ({"data": {"prompt": "a cat", "model": number}}, "task_inputs[0].data.model: must be a string"),
        ({"data": {"prompt": "a cat"}, "parameter": {"stepz": number}}, "task_inputs[0].parameter.stepz: unknown"),
        ({"data": {"prompt": number}}, "task_inputs[0].data.prompt: must be a string"),
    ]
    for task, expected in cases:
        assert invalid_argument(cluster.channel, task).startswith(expected)
    still_serving(cluster)


# 2. JSON nested past Python's recursion limit

def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize("body", [
    b"[" * 100_000, b'{"a":' * 5_000 + b"1" + b"}" * 5_000,
    b'{"prompt": ' + nested(2_000) + b"}", b'{"prompt": "a cat", "n": ' + nested(2_000) + b"}",
], ids=["body", "object", "prompt", "n"])
def test_deeply_nested_json_is_a_400_naming_where(cluster, body):
    status, reply, _ = http(cluster.ports, MODEL, data=body)
    assert status == 400 and reply["field"] in ("body", "prompt", "n") and len(reply["error"]) < SHORT


# 3. Half of a UTF-16 surrogate pair

def test_a_lone_surrogate_in_the_prompt_is_a_400_naming_the_prompt(cluster):
    status, reply, _ = http(cluster.ports, MODEL, data=b'{"prompt": "\\ud800 cat"}')
    assert status == 400 and reply["field"] == "prompt" and "lone surrogate" in reply["error"]
    status, reply, _ = http(cluster.ports, MODEL, data=b'{"prompt": "a cat", "\\udfff": 1}')
    assert status == 400 and reply["field"] == '"\\udfff"'


# 4. Errors quote an excerpt; oversized bodies are refused early

def test_long_bad_values_come_back_as_a_short_excerpt_over_grpc(cluster):
    long = "a" * 20_000
    details = invalid_argument(cluster.channel, {"data": {"prompt": "a cat"}, "parameter": {"aspect-ratio": long}})
    assert details.endswith('got "aaaaaaaaaaaaaaaaaaaaaaaa..." (20000 characters)')
    details = invalid_argument(cluster.channel, {"data": {"prompt": "a cat"}, "parameter": {long: 1}})
    assert details.startswith('task_inputs[0].parameter."aaaaaaaaaaaaaaaaaaaaaaaa..." (20000 characters): unknown')


def test_long_bad_values_come_back_as_a_short_excerpt_over_http(cluster):
    status, reply, _ = http(cluster.ports, MODEL, {"prompt": "a cat", "aspect-ratio": "b" * 1_000_000})
    assert status == 400 and len(json.dumps(reply)) < SHORT and reply["field"] == "aspect-ratio"


TEXT_ONLY = "v1/images/generations"  # a route that takes no picture: SDXL_MAX_BODY_BYTES alone bounds its body
# Instill's route takes an edit's image and mask in base64 too: two pictures of SDXL_MAX_UPLOAD_MB more.
WITH_PICTURES = Limits().body_bytes(pictures=True)


@pytest.mark.parametrize(("path", "limit"), [(f"/{TEXT_ONLY}", 1 << 20), ("", WITH_PICTURES)], ids=["text", "instill"])
def test_a_body_over_the_limit_is_refused_with_413_and_the_limit(cluster, path, limit):
    """Refused by its Content-Length, unread: the connection closes while the client may still be writing the
    body, so the client reads the answer that came first, as curl does (urllib would only see its write fail)."""
    with socket.create_connection(("127.0.0.1", cluster.ports.http), timeout=30) as sock:
        try:
            sock.sendall(f"POST /{MODEL}{path} HTTP/1.1\r\nHost: x\r\n"
                         f"Content-Type: application/json\r\nContent-Length: {limit + 1}\r\n\r\n".encode()
                         + b" " * (1 << 20))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the refusal came before the whole body was sent
        head, _, answer = raw_reply(sock).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413") and f"limit of {limit} bytes".encode() in answer


def test_a_chunked_body_over_the_limit_is_refused_with_413_midway(cluster):
    """No Content-Length to refuse by: the body is counted as it arrives."""
    with socket.create_connection(("127.0.0.1", cluster.ports.http), timeout=60) as sock:
        sock.sendall(f"POST /{MODEL}/{TEXT_ONLY} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        chunk = b" " * 65536
        try:
            for _ in range(40):  # 2.5 MB, more than twice the limit
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server may answer and close before the client is done
        reply = raw_reply(sock)
    assert reply.startswith(b"HTTP/1.1 413") and b"limit of 1048576 bytes" in reply


def test_an_oversized_grpc_call_is_invalid_argument_with_the_limit(cluster):
    big = [{"data": {"prompt": "a cat"}, "parameter": {"negative-prompt": "x" * 3_900}}] * 300  # 1.2 MB
    details = invalid_argument(cluster.channel, *big)
    assert details.startswith("task_inputs: the call is") and details.endswith("takes at most 1048576")


def test_stalled_uploads_are_refused_in_time_and_the_replica_keeps_answering(cluster):
    """Two uploads that stop midway once held both of the replica's call slots: one goes on as the replica's one
    slow body (its slots beyond a run of calls and the next) and gets 408 after the body timeout (2 s in these
    tests); the other, slow while the first is, gets 429 at once. Then pings and calls are answered."""
    stalled = [socket.create_connection(("127.0.0.1", cluster.ports.http), timeout=30) for _ in range(2)]
    try:
        for sock in stalled:
            sock.sendall(f"POST /{MODEL} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{\"pro".encode())
        replies = sorted(raw_reply(sock) for sock in stalled)
    finally:
        for sock in stalled:
            sock.close()
    assert replies[0].startswith(b"HTTP/1.1 408") and b"did not arrive within 2 s" in replies[0], replies
    assert replies[1].startswith(b"HTTP/1.1 429") and b"receives 1 other slow upload" in replies[1], replies
    assert b"\r\nretry-after: 2\r\n" in replies[1].lower()
    status, reply, _ = http(cluster.ports, MODEL, timeout=10)
    assert status == 200 and reply["status"] == "ready"
    still_serving(cluster)


def test_trickling_training_uploads_never_hold_the_slot_a_generation_needs(cluster):
    """Two training uploads trickling (their deadline is 10 times the body timeout: 20 s here) held both call slots,
    and a valid generation waited behind them until they were refused. Now the second is refused as soon as it is
    slow, and the generation is answered while the first still trickles."""
    head = (f"POST /{TRAINING}/v1/trainings HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b"
            f"\r\nContent-Length: 1000000\r\n\r\n--b\r\n")
    trickling = [socket.create_connection(("127.0.0.1", cluster.ports.http), timeout=30) for _ in range(2)]
    try:
        for sock in trickling:
            sock.sendall(head.encode())
        answered = select.select(trickling, [], [], 25)[0]  # one, once it is slow
        assert len(answered) == 1
        refused, (still_trickling,) = raw_reply(answered[0]), [sock for sock in trickling if sock not in answered]
        assert refused.startswith(b"HTTP/1.1 429") and b"other slow upload" in refused, refused
        status, generated, _ = http(cluster.ports, TRAINING, {"prompt": "a cat", **TINY}, timeout=60)
        assert status == 200 and len(check_output(generated[0])) == 1
        assert not select.select([still_trickling], [], [], 0)[0], "the generation waited for the upload's deadline"
    finally:
        for sock in trickling:
            sock.close()


def test_a_client_that_hangs_up_midway_through_its_body_leaves_no_error_in_the_logs(cluster):
    request_id = f"half-body-{uuid.uuid4()}"
    with socket.create_connection(("127.0.0.1", cluster.ports.http), timeout=30) as sock:
        sock.sendall(f"POST /{MODEL} HTTP/1.1\r\nHost: x\r\nX-Request-ID: {request_id}\r\n"
                     "Content-Length: 500\r\n\r\n{\"prompt\": \"a cat\"}".encode())
        sock.shutdown(socket.SHUT_WR)
    # Ray's proxy notices the hang-up and cancels the call, or the body read fails first and the replica rejects
    # it: either way a quiet line, never an error.
    assert serve_log_lines(cluster, request_id, "(.* CANCELLED |Client for request .* disconnected|rejected "
                                                "instill-http call: bad body)")
    assert not serve_log_lines(cluster, request_id, ".*(Traceback|Request failed| 500 |ERROR)", timeout=2)
    still_serving(cluster)


def test_an_integer_too_large_for_a_float_is_a_400_naming_the_field(cluster):
    status, reply, _ = http(cluster.ports, MODEL, data=b'{"prompt": "a", "guidance-scale": 1' + b"0" * 400 + b"}")
    assert status == 400 and reply["field"] == "guidance-scale"


# 5. Every reported seed can be sent back

def test_seeds_at_the_top_of_the_range_wrap_and_each_regenerates_its_image(cluster):
    two = grpc_call(cluster.channel, MODEL, task_input(seed=MAX_SEED, n=2, **TINY))[0]
    assert two["metadata"]["usage"]["seeds"] == [MAX_SEED, 1]
    for seed in two["metadata"]["usage"]["seeds"]:  # each is accepted back (tests/test_engine.py: same image)
        alone = grpc_call(cluster.channel, MODEL, task_input(seed=seed, **TINY))[0]
        assert len(check_output(alone)) == 1 and alone["metadata"]["usage"]["seeds"] == [seed]


# 6. No caller's text in logs or metric labels

def test_no_prompt_or_key_of_a_caller_reaches_a_log_line_or_a_metric_label(cluster):
    past_77_tokens = " ".join(f"secretword{i}" for i in range(120))
    grpc_call(cluster.channel, MODEL, task_input(past_77_tokens, seed=3, **TINY))
    forged = "k\nINFO forged log line"
    before = scrape(cluster)
    keys = [f"{forged}-{i}" for i in range(30)] + ["z" * 50_000]
    for key in keys:
        invalid_argument(cluster.channel, {"data": {"prompt": "a cat"}, "parameter": {key: 1}})
        http(cluster.ports, MODEL, {"prompt": "a cat", key: 1})
    text = wait_for_metric(cluster, "ray_sdxl_rejected_inputs", metric_total(before, "ray_sdxl_rejected_inputs") + 62)
    logs = ray_logs(cluster)
    assert "secretword100" not in logs and "part of your input was truncated" not in logs
    assert "forged" not in logs and "z" * 100 not in logs
    labels = set(re.findall(r'field="([^"]*)"', "\n".join(line for line in text.splitlines()
                                                         if line.startswith("ray_sdxl_rejected_inputs"))))
    assert labels and labels <= KNOWN_FIELDS | {"unknown-key"}


# 9. Only POST generates

@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE", "OPTIONS"])
def test_other_methods_with_a_body_are_405_with_allow(cluster, method):
    status, reply, headers = http(cluster.ports, MODEL, {"prompt": "a cat", **TINY}, method=method)
    assert status == 405 and reply["field"] == "method" and headers["Allow"] == "POST, GET, HEAD"


def test_get_is_the_status_ping_and_unknown_paths_are_404(cluster):
    status, reply, _ = http(cluster.ports, MODEL, {"prompt": "a cat"}, method="GET")
    assert status == 200 and reply["status"] == "ready"
    status, reply, _ = http(cluster.ports, f"{MODEL}/v1/nothing", {"prompt": "a cat", **TINY})
    assert status == 404 and reply["field"] == "path"


# 10. Bytes that are no CallRequest never reach the model

def test_undecodable_grpc_bytes_are_refused_by_rays_proxy_and_the_replica_keeps_serving(cluster):
    """Ray's gRPC proxy decodes the CallRequest before any code of ours runs, and answers UNKNOWN; README's
    Reliability section says so."""
    stub = cluster.channel.unary_unary(METHOD)
    with pytest.raises(grpc.RpcError) as caught:
        stub(b"\xff\xff\xff\xff", metadata=(("application", MODEL),), timeout=30)
    assert caught.value.code() == grpc.StatusCode.UNKNOWN and "DecodeError" in caught.value.details()
    still_serving(cluster)


# Property tests: the transport, not just the parser

finite_or_not = st.floats(allow_nan=True, allow_infinity=True)
struct_values = st.recursive(
    st.none() | st.booleans() | finite_or_not | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=10,
)
keys = st.sampled_from([*PARAMETERS, "stepz"]) | st.text(max_size=40)
# Envelopes that get past the shape into the fields; one UNet step when they are valid.
envelopes = st.builds(
    lambda data, parameter: {"data": data, "parameter": {**parameter, **TINY}},
    st.fixed_dictionaries({"prompt": struct_values | st.just("a cat")}, optional={"model": struct_values}),
    st.dictionaries(keys, struct_values | st.integers(0, 6) | st.sampled_from(["1:1", "16:9"]), max_size=4),
)
task_inputs = st.dictionaries(st.sampled_from(["data", "parameter", "x"]), struct_values, max_size=3) | envelopes
HYPOTHESIS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@HYPOTHESIS
@given(st.lists(task_inputs, min_size=1, max_size=3))
def test_any_struct_is_answered_or_invalid_argument_never_internal(cluster, inputs):
    try:
        response = raw_call(cluster.channel, *inputs)
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
        assert len(error.details()) < SHORT
    else:
        assert len(response.task_outputs) == len(inputs)


http_bodies = (
    st.binary(max_size=300)
    | st.builds(lambda value: json.dumps(value, allow_nan=True).encode(), struct_values | envelopes)
    | st.builds(lambda depth, opener: opener * depth, st.integers(500, 5_000), st.sampled_from([b"[", b'{"a":']))
)


@HYPOTHESIS
@given(http_bodies)
def test_any_http_body_is_answered_or_a_4xx_never_a_5xx(cluster, body):
    status, reply, _ = http(cluster.ports, MODEL, data=body)
    assert status == 200 or (400 <= status < 500 and len(reply["error"]) < SHORT), (status, reply)


# The peer APIs: their own field names, with hostile values; one UNet step when they are valid.
ONE_STEP = {"num_inference_steps": 1, "refiner": False}
peer_fields = st.dictionaries(
    st.sampled_from(["prompt", "negative_prompt", "n", "size", "seed", "width", "height", "num_outputs", "scheduler",
                     "refine", "num_images", "guidance_scale", "response_format", "output_format", "lora",
                     "image", "mask", "strength"])
    | st.text(max_size=20),
    struct_values | st.integers(-2, 2_000) | st.sampled_from(["1344x768", "K_EULER", "no_refiner", "url", "webp"]),
    max_size=4,
)
PEER_BODIES = {
    "v1/images/generations": st.builds(lambda fields: {"prompt": "a cat", "steps": 1, "refiner": False, **fields},
                                       peer_fields),
    "score": st.builds(lambda data, fields: {"input_data": {"data": data}, "parameters": {**fields, **ONE_STEP}},
                       st.lists(struct_values | st.just("a cat"), max_size=3), peer_fields),
    "predictions": st.builds(lambda fields: {"input": {"prompt": "a cat", "num_inference_steps": 1, **fields}},
                             peer_fields),
    "predict": st.builds(lambda fields: {"prompt": "a cat", **ONE_STEP, **fields}, peer_fields),
}


@HYPOTHESIS
@given(st.data())
@pytest.mark.parametrize("route", PEER_BODIES)
def test_any_body_to_a_peer_api_is_answered_or_a_4xx_never_a_5xx(cluster, route, data):
    body = data.draw(PEER_BODIES[route] | http_bodies)
    status, reply, _ = http(cluster.ports, f"{MODEL}/{route}", body if isinstance(body, dict) else None,
                            data=None if isinstance(body, dict) else body)
    assert status == 200 or (400 <= status < 500 and len(json.dumps(reply)) < 2 * SHORT), (status, reply)


def test_after_the_property_runs_the_replica_still_serves(cluster):
    still_serving(cluster)
