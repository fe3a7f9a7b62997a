"""model.py on a real Ray Serve: gRPC CallRequests routed by application name, HTTP, errors, metrics, logs."""

import re
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from helpers import looks_alike
from instill_contract import check_output, task_input
from served import FAST, MODEL, SMALL, http, metric_total, ray_logs, scrape, wait_for_metric
from stable_diffusion_xl.serving.client import grpc_call

pytestmark = pytest.mark.slow


@pytest.fixture
def served(cluster):
    return cluster.ports, cluster.channel


def test_grpc_call_with_n_seed_negative_prompt_and_aspect_ratio(served):
    _, channel = served
    call = task_input(n=2, seed=42, **{"negative-prompt": "blurry", "aspect-ratio": "16:9"}, **FAST)
    outputs = grpc_call(channel, MODEL, call)
    assert len(outputs) == 1
    images = check_output(outputs[0])
    assert len(images) == 2 and all(image.size == (336, 192) for image in images)  # 1344x768 at demo scale
    usage = outputs[0]["metadata"]["usage"]
    assert usage["seeds"] == [42, 43] and (usage["width"], usage["height"]) == (336, 192)
    assert set(usage["seconds"]) == {"text_encoders", "base", "refiner", "vae_decode", "encode"}
    again = grpc_call(channel, MODEL, call)[0]
    assert again["data"] == outputs[0]["data"]  # same seed, same bytes


def test_seed_zero_gives_fresh_seeds_and_images(served):
    _, channel = served
    first, second = (grpc_call(channel, MODEL, task_input(seed=0, **FAST))[0] for _ in range(2))
    assert first["metadata"]["usage"]["seeds"] != second["metadata"]["usage"]["seeds"]
    assert first["data"]["choices"] != second["data"]["choices"]


def test_several_task_inputs_come_back_in_order(served):
    _, channel = served
    ratios = ["9:16", "1:1", "21:9"]
    outputs = grpc_call(channel, MODEL, *(task_input(f"prompt {i}", seed=i + 1, **{"aspect-ratio": r}, **FAST)
                                           for i, r in enumerate(ratios)))
    assert [check_output(o)[0].size for o in outputs] == [(192, 336), (256, 256), (384, 160)]
    assert [o["metadata"]["usage"]["seeds"] for o in outputs] == [[1], [2], [3]]


def test_routing_follows_the_application_metadata(served):
    _, channel = served
    assert len(check_output(grpc_call(channel, MODEL, task_input(n=2, seed=1, **FAST))[0])) == 2
    with pytest.raises(grpc.RpcError) as caught:
        grpc_call(channel, SMALL, task_input(n=2, seed=1, **FAST))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "n: must be from 1 to 1 on this deployment" in caught.value.details()


def test_http_post_flat_and_enveloped_bodies(served):
    ports, _ = served
    status, flat, _ = http(ports, MODEL, {"prompt": "cat napping", "negative-prompt": "dogs", "n": 2, "seed": 5,
                                          **FAST})
    assert status == 200 and len(flat) == 1 and len(check_output(flat[0])) == 2
    status, enveloped, _ = http(ports, MODEL, {"data": {"prompt": "cat napping"},
                                               "parameter": {"negative-prompt": "dogs", "n": 2, "seed": 5, **FAST}})
    assert status == 200 and [o["data"] for o in enveloped] == [o["data"] for o in flat]
    status, listed, _ = http(ports, MODEL, [{"prompt": "a", "seed": 1, **FAST}, {"data": {"prompt": "b"},
                                                                                "parameter": {"seed": 2, **FAST}}])
    assert status == 200 and [o["metadata"]["usage"]["seeds"] for o in listed] == [[1], [2]]


def test_bodyless_get_is_a_quick_status(served):
    ports, _ = served
    status, body, _ = http(ports, MODEL, timeout=10)
    assert status == 200 and body["status"] == "ready" and body["demo_weights"] is True


BAD_INPUTS = [
    ({"data": {"prompt": ""}}, "prompt: must not be empty"),
    ({"data": {}}, "data.prompt: is required"),
    ({"data": {"prompt": 7}}, "data.prompt: must be a string"),
    (task_input(n=0), "parameter.n: must be at least 1"),
    (task_input(n=5), "n: must be from 1 to 4 on this deployment"),
    (task_input(n="two"), "parameter.n: must be an integer"),
    (task_input(**{"aspect-ratio": "4:3"}), "parameter.aspect-ratio: must be one of 1:1, 5:4"),
    (task_input(seed=-3), "parameter.seed: must be from 0 to 4294967295"),
    (task_input(seed=1.5), "parameter.seed: must be an integer"),
    (task_input(steps=500), "parameter.steps: must be from 1 to 100"),
    (task_input(**{"negative-prompt": ["x"]}), "parameter.negative-prompt: must be a string"),
]


@pytest.mark.parametrize("bad, message", BAD_INPUTS)
def test_bad_grpc_input_is_invalid_argument_and_the_replica_keeps_serving(served, bad, message):
    _, channel = served
    with pytest.raises(grpc.RpcError) as caught:
        grpc_call(channel, MODEL, bad)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in caught.value.details()
    assert len(check_output(grpc_call(channel, MODEL, task_input(seed=9, steps=1, refiner=False))[0])) == 1


@pytest.mark.parametrize("bad, message", BAD_INPUTS)
def test_bad_http_input_is_400_with_a_json_error(served, bad, message):
    ports, _ = served
    status, body, _ = http(ports, MODEL, bad)
    assert status == 400 and message in body["error"]


def test_http_body_that_is_not_json_is_400(served):
    ports, _ = served
    status, body, _ = http(ports, MODEL, data=b"{not json", timeout=60)
    assert status == 400 and body == {"error": "body: must be JSON (Expecting property name enclosed in double "
                                               "quotes at character 1)", "field": "body"}


def test_eight_concurrent_calls_each_get_what_they_would_get_alone(cluster):
    calls = [task_input(f"prompt {i}", seed=100 + i, n=1 + i % 3, **{"aspect-ratio": ratio}, **FAST)
             for i, ratio in enumerate(["1:1", "16:9", "9:16", "21:9", "1:1", "4:5", "3:2", "16:9"])]
    with ThreadPoolExecutor(max_workers=8) as pool:
        together = list(pool.map(lambda call: grpc_call(cluster.channel, MODEL, call)[0], calls))
    for call, output in zip(calls, together):
        alone = grpc_call(cluster.channel, MODEL, call)[0]
        assert len(check_output(output)) == call["parameter"]["n"]
        if output["metadata"]["usage"]["calls-in-batch"] == 1:  # made alone: the same bytes
            assert alone["data"] == output["data"]
        else:  # batched with another caller's images: the same images, up to float rounding
            assert all(looks_alike(*pair) for pair in zip(check_output(output), check_output(alone), strict=True))


def test_custom_metrics_count_images_stages_and_rejections(cluster):
    before = scrape(cluster)
    grpc_call(cluster.channel, MODEL, task_input(n=2, seed=1, **FAST))
    with pytest.raises(grpc.RpcError):
        grpc_call(cluster.channel, MODEL, task_input(n=0))
    wait_for_metric(cluster, "ray_sdxl_rejected_inputs", metric_total(before, "ray_sdxl_rejected_inputs") + 1)
    text = wait_for_metric(cluster, "ray_sdxl_images_generated", metric_total(before, "ray_sdxl_images_generated") + 2)
    assert metric_total(text, "ray_sdxl_images_generated") >= metric_total(before, "ray_sdxl_images_generated") + 2
    assert any('field="n"' in line for line in text.splitlines() if line.startswith("ray_sdxl_rejected_inputs"))
    stages = {line.split('stage="')[1].split('"')[0] for line in text.splitlines()
              if line.startswith("ray_sdxl_stage_seconds_count")}
    assert stages >= {"text_encoders", "base", "refiner", "vae_decode", "encode"}


def test_logs_carry_request_ids_and_timings_but_no_prompts(cluster):
    secret = "a-prompt-that-must-not-be-logged"
    grpc_call(cluster.channel, MODEL, task_input(secret, seed=3, **{"negative-prompt": secret + "-negative"}, **FAST))
    logs = ray_logs(cluster)
    assert secret not in logs
    # Ray Serve's replica format: ... <replica id> <request id> -- message
    assert re.search(r" [0-9a-f-]{36} -- 1 task inputs, 1 images, seconds \[\{'text_encoders'", logs)


def test_pings_are_answered_while_eight_images_are_being_made(cluster):
    """Generation and JPEG encoding run off the event loop: a status ping does not wait for the images."""
    call = [task_input(f"prompt {i}", seed=60 + i, n=4, steps=40) for i in range(2)]
    with ThreadPoolExecutor(max_workers=1) as pool:
        eight_images = pool.submit(grpc_call, cluster.channel, MODEL, *call)
        time.sleep(2)  # the eight images are under way: about 12 s of work on the demo weights
        status, body, _ = http(cluster.ports, MODEL, timeout=10)
        assert status == 200 and body["status"] == "ready"
        assert not eight_images.done()  # answered while the images were still being made
        assert sum(len(check_output(output)) for output in eight_images.result()) == 8
