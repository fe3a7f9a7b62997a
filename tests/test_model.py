"""model.py on a real Ray Serve: gRPC CallRequests routed by application name, HTTP, errors."""

import json
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest

from instill_contract import check_output, grpc_call, task_input
from stable_diffusion_xl.local_serve import Application, serving

MODEL = "users_6f1c0e2a_stable-diffusion-xl_v1"
SMALL = "users_6f1c0e2a_stable-diffusion-xl-small_v1"  # the same model deployed with max n = 1
FAST = {"steps": 5}


@pytest.fixture(scope="module")
def cluster(weights_dir, tmp_path_factory):
    """Two applications named as Instill Core names them; Ray's files in a short path of our own."""
    env = {"SDXL_DEMO_WEIGHTS": "1", "SDXL_WEIGHTS_DIR": str(weights_dir)}
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    ray_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # Ray's socket paths must stay short
    apps = [Application(MODEL, env), Application(SMALL, {**env, "SDXL_MAX_N": "1"})]
    try:
        with serving(apps, log_path=log, ray_dir=ray_dir) as ports:
            with grpc.insecure_channel(f"127.0.0.1:{ports.grpc}") as channel:
                yield SimpleNamespace(ports=ports, channel=channel, ray_dir=ray_dir)
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)


@pytest.fixture
def served(cluster):
    return cluster.ports, cluster.channel


def http(ports, path, body=None, timeout=300):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{ports.http}/{path}", data=data,
                                     headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_grpc_call_with_n_seed_negative_prompt_and_aspect_ratio(served):
    _, channel = served
    call = task_input(n=2, seed=42, **{"negative-prompt": "blurry", "aspect-ratio": "16:9"}, **FAST)
    outputs = grpc_call(channel, MODEL, call)
    assert len(outputs) == 1
    images = check_output(outputs[0])
    assert len(images) == 2 and all(image.size == (336, 192) for image in images)  # 1344x768 at demo scale
    usage = outputs[0]["metadata"]["usage"]
    assert usage["seeds"] == [42, 43] and (usage["width"], usage["height"]) == (336, 192)
    assert set(usage["seconds"]) == {"text_encoders", "base", "refiner", "vae_decode", "jpeg"}
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
    status, flat = http(ports, MODEL, {"prompt": "cat napping", "negative-prompt": "dogs", "n": 2, "seed": 5, **FAST})
    assert status == 200 and len(flat) == 1 and len(check_output(flat[0])) == 2
    status, enveloped = http(ports, MODEL, {"data": {"prompt": "cat napping"},
                                            "parameter": {"negative-prompt": "dogs", "n": 2, "seed": 5, **FAST}})
    assert status == 200 and [o["data"] for o in enveloped] == [o["data"] for o in flat]
    status, listed = http(ports, MODEL, [{"prompt": "a", "seed": 1, **FAST}, {"data": {"prompt": "b"},
                                                                             "parameter": {"seed": 2, **FAST}}])
    assert status == 200 and [o["metadata"]["usage"]["seeds"] for o in listed] == [[1], [2]]


def test_bodyless_get_is_a_quick_status(served):
    ports, _ = served
    status, body = http(ports, MODEL, timeout=10)
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
    status, body = http(ports, MODEL, bad)
    assert status == 400 and message in body["error"]


def test_http_body_that_is_not_json_is_400(served):
    ports, _ = served
    request = urllib.request.Request(f"http://127.0.0.1:{ports.http}/{MODEL}", data=b"{not json")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=60)
    assert caught.value.code == 400 and "body: must be JSON" in json.load(caught.value)["error"]


def test_eight_concurrent_calls_each_get_what_they_would_get_alone(cluster):
    calls = [task_input(f"prompt {i}", seed=100 + i, n=1 + i % 3, **{"aspect-ratio": ratio}, **FAST)
             for i, ratio in enumerate(["1:1", "16:9", "9:16", "21:9", "1:1", "4:5", "3:2", "16:9"])]
    with ThreadPoolExecutor(max_workers=8) as pool:
        together = list(pool.map(lambda call: grpc_call(cluster.channel, MODEL, call)[0], calls))
    for call, output in zip(calls, together):
        assert len(check_output(output)) == call["parameter"]["n"]
        alone = grpc_call(cluster.channel, MODEL, call)[0]
        assert alone["data"] == output["data"]


def scrape(cluster) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{cluster.ports.metrics}/metrics", timeout=10) as response:
        return response.read().decode()


def metric_total(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_custom_metrics_count_images_stages_and_rejections(cluster):
    before = scrape(cluster)
    grpc_call(cluster.channel, MODEL, task_input(n=2, seed=1, **FAST))
    with pytest.raises(grpc.RpcError):
        grpc_call(cluster.channel, MODEL, task_input(n=0))
    deadline, text = time.monotonic() + 60, before
    while time.monotonic() < deadline:
        text = scrape(cluster)
        if metric_total(text, "ray_sdxl_images_generated") >= metric_total(before, "ray_sdxl_images_generated") + 2 \
                and metric_total(text, "ray_sdxl_rejected_inputs") >= 1:
            break
        time.sleep(1)
    assert metric_total(text, "ray_sdxl_images_generated") >= metric_total(before, "ray_sdxl_images_generated") + 2
    assert any('field="n"' in line for line in text.splitlines() if line.startswith("ray_sdxl_rejected_inputs"))
    stages = {line.split('stage="')[1].split('"')[0] for line in text.splitlines()
              if line.startswith("ray_sdxl_stage_seconds_count")}
    assert stages >= {"text_encoders", "base", "refiner", "vae_decode", "jpeg"}


def test_logs_carry_request_ids_and_timings_but_no_prompts(cluster):
    secret = "a-prompt-that-must-not-be-logged"
    grpc_call(cluster.channel, MODEL, task_input(secret, seed=3, **{"negative-prompt": secret + "-negative"}, **FAST))
    logs = "".join(path.read_text(errors="replace") for path in cluster.ray_dir.rglob("logs/**/*")
                   if path.is_file() and path.suffix in (".log", ".err", ".out"))
    assert secret not in logs
    # Ray Serve's replica format: ... <replica id> <request id> -- message
    assert re.search(r" [0-9a-f-]{36} -- 1 task inputs, 1 images, seconds \[\{'text_encoders'", logs)
