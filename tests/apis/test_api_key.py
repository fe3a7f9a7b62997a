"""An optional API key (SDXL_API_KEY, or SDXL_API_KEY_FILE as here): every generating route refuses a missing or
wrong key with 401 in its own error shape, gRPC with UNAUTHENTICATED, and takes the right one; the ping and the
page stay open, and the key reaches no log."""

import grpc
import openai
import pytest

from instill_contract import check_output, task_input
from served import API_KEY, KEYED, MODEL, TINY, http, ray_logs
from stable_diffusion_xl.serving.client import grpc_call

pytestmark = pytest.mark.slow
PROMPT = "a cat napping"
ONE_STEP = {"num_inference_steps": 1, "refiner": False}

# route -> (a valid body, the field of a 401 in that API's error shape)
GENERATING_ROUTES = {
    "": ({"prompt": PROMPT, **TINY}, lambda reply: reply["field"]),
    "v1/images/generations": ({"prompt": PROMPT, **TINY}, lambda reply: reply["error"]["param"]),
    "score": ({"input_data": {"data": [PROMPT]}, "parameters": ONE_STEP}, lambda reply: reply["error"]["target"]),
    "predictions": ({"input": {"prompt": PROMPT, "num_inference_steps": 1, "refine": "no_refiner"}},
                    lambda reply: reply["detail"].partition(":")[0]),
    "predict": ({"prompt": PROMPT, **ONE_STEP}, lambda reply: reply["field"]),
}
WRONG_KEYS = {"missing": {}, "wrong": {"Authorization": "Bearer sk-test-wrong"},
              "not bearer": {"Authorization": API_KEY}, "a prefix of it": {"Authorization": f"Bearer {API_KEY[:-1]}"}}


@pytest.mark.parametrize("wrong", WRONG_KEYS)
@pytest.mark.parametrize("route", GENERATING_ROUTES)
def test_each_generating_route_refuses_a_missing_or_wrong_key_with_401(cluster, route, wrong):
    body, field_of = GENERATING_ROUTES[route]
    status, reply, headers = http(cluster.ports, f"{KEYED}/{route}", body, headers=WRONG_KEYS[wrong])
    assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
    assert field_of(reply) == "authorization" and API_KEY not in str(reply)


@pytest.mark.parametrize("route", GENERATING_ROUTES)
def test_each_generating_route_takes_the_right_key(cluster, route):
    body, _ = GENERATING_ROUTES[route]
    status, reply, _ = http(cluster.ports, f"{KEYED}/{route}", body, headers={"Authorization": f"Bearer {API_KEY}"})
    assert status == 200, reply


def test_the_openai_client_raises_its_authentication_error_and_works_with_the_key(cluster):
    base_url = f"http://127.0.0.1:{cluster.ports.http}/{KEYED}/v1"
    with pytest.raises(openai.AuthenticationError) as caught:
        openai.OpenAI(base_url=base_url, api_key="sk-test-wrong", max_retries=0).images.generate(prompt=PROMPT)
    assert caught.value.body["code"] == "invalid_api_key"
    client = openai.OpenAI(base_url=base_url, api_key=API_KEY, max_retries=0, timeout=120)
    assert len(client.images.generate(prompt=PROMPT, extra_body=TINY).data) == 1


def test_the_ping_the_model_list_and_the_page_need_no_key(cluster):
    status, reply, _ = http(cluster.ports, KEYED)
    assert status == 200 and reply["api_key_required"] is True
    assert http(cluster.ports, f"{KEYED}/v1/models")[0] == 200
    assert http(cluster.ports, f"{KEYED}/health-check")[0] == 200


@pytest.mark.parametrize("wrong", [None, "sk-test-wrong", API_KEY[:-1]])
def test_grpc_refuses_a_missing_or_wrong_key_as_unauthenticated_naming_the_metadata(cluster, wrong):
    with pytest.raises(grpc.RpcError) as caught:
        grpc_call(cluster.channel, KEYED, task_input(seed=3, **TINY), api_key=wrong)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "`authorization: Bearer <key>`" in caught.value.details() and API_KEY not in caught.value.details()


def test_grpc_takes_the_right_key_and_a_keyless_deployment_needs_none(cluster):
    assert len(check_output(grpc_call(cluster.channel, KEYED, task_input(seed=3, **TINY), api_key=API_KEY)[0])) == 1
    assert len(check_output(grpc_call(cluster.channel, MODEL, task_input(seed=3, **TINY))[0])) == 1


def test_the_key_reaches_no_log(cluster):
    http(cluster.ports, f"{KEYED}/predict", {"prompt": PROMPT, **ONE_STEP}, headers={"Authorization": "Bearer x"})
    assert API_KEY not in ray_logs(cluster)
