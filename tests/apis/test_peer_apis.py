"""The APIs other clients already speak, through the real Ray Serve HTTP proxy: OpenAI Images (driven by the
official `openai` package), Azure ML's /score, cog's /predictions and the plain /predict body. Each makes
the Instill path's very images, answers in its own shape, and names a bad field in its own error shape."""

import base64
import io

import openai
import pytest
from PIL import Image

from instill_contract import check_output, task_input
from served import FAST, FILTERED, FLAGGED_SEED, MODEL, TINY, http, metric_total, scrape, wait_for_metric

pytestmark = pytest.mark.slow
PROMPT = "a lighthouse on a cliff at dusk"
SEED = 21


@pytest.fixture(scope="module")
def sizes(cluster) -> dict[str, list[int]]:
    """The demo weights' image size per aspect ratio, as the status ping reports it."""
    status, reply, _ = http(cluster.ports, MODEL)
    assert status == 200
    return reply["sizes"]


@pytest.fixture(scope="module")
def client(cluster):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{cluster.ports.http}/{MODEL}/v1", api_key="not-needed",
                         max_retries=0, timeout=300)


def decoded(payload: str, image_format: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(payload, validate=True)))
    assert image.format == image_format
    return image


def data_uri_payload(uri: str, media_type: str = "image/jpeg") -> str:
    prefix, _, payload = uri.partition(",")
    assert prefix == f"data:{media_type};base64"
    return payload


# OpenAI Images, through the official client

def test_openai_b64_json_gives_n_images_of_the_native_size_with_the_seeds_asked_for(client, sizes):
    response = client.images.generate(prompt=PROMPT, n=2, size="1344x768", response_format="b64_json",
                                      extra_body={"seed": SEED, **FAST})
    images = [decoded(item.b64_json, "PNG") for item in response.data]  # OpenAI's default format
    width, height = sizes["16:9"]
    assert [image.size for image in images] == [(width, height)] * 2
    assert response.size == f"{width}x{height}" and response.output_format == "png"
    assert response.seeds == [SEED, SEED + 1]  # an extra field, which the client keeps
    assert response.created > 0


def test_openai_url_is_a_data_url_in_the_format_asked_for(client):
    response = client.images.generate(prompt=PROMPT, response_format="url", output_format="webp",
                                      model="stable-diffusion-xl", user="someone", extra_body={"seed": SEED, **TINY})
    (item,) = response.data
    assert decoded(data_uri_payload(item.url, "image/webp"), "WEBP").size == (256, 256)  # "auto" is square


def test_openai_bad_size_raises_the_clients_own_error_with_our_message(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(prompt=PROMPT, size="1000x1000")
    error = caught.value.body
    assert caught.value.status_code == 400 and error["param"] == "size" and error["type"] == "invalid_request_error"
    assert "size: must be one of auto, 1024x1024, 1152x896" in error["message"] and "1000x1000" in error["message"]


def test_openai_sdxl_parameters_are_checked_by_their_snake_case_names(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(prompt=PROMPT, extra_body={"guidance_scale": 99})
    assert caught.value.body["param"] == "guidance_scale"
    assert caught.value.body["message"].startswith("guidance_scale: must be from 1.0 to 20.0, got 99")


def test_openai_transparent_background_is_refused_and_opaque_with_low_moderation_is_served(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(prompt=PROMPT, background="transparent")
    assert caught.value.body["param"] == "background"
    response = client.images.generate(prompt=PROMPT, background="opaque", moderation="low", extra_body=FAST)
    assert len(response.data) == 1


def test_openai_models_lists_the_one_model(client):
    assert [model.id for model in client.models.list()] == ["stable-diffusion-xl"]


# Azure ML /score

def test_azure_takes_a_list_of_prompts_and_answers_a_row_each(cluster, sizes):
    body = {"input_data": {"columns": ["prompt"], "data": [PROMPT, "a red fox in snow"], "index": [0, 1]},
            "parameters": {"num_inference_steps": 5, "guidance_scale": 6.0, "seed": SEED}}
    status, rows, _ = http(cluster.ports, f"{MODEL}/score", body)
    assert status == 200 and [row["prompt"] for row in rows] == [PROMPT, "a red fox in snow"]
    assert all(row["nsfw_content_detected"] is None for row in rows)  # no safety filter on this deployment
    assert [decoded(row["generated_image"], "JPEG").size for row in rows] == [tuple(sizes["1:1"])] * 2


def test_azure_takes_rows_of_prompt_and_negative_prompt(cluster):
    body = {"input_data": {"columns": ["prompt", "negative_prompt"], "data": [[PROMPT, "fog"], [PROMPT, ""]]},
            "parameters": {"num_inference_steps": 5, "seed": SEED}}
    status, rows, _ = http(cluster.ports, f"{MODEL}/score", body)
    assert status == 200 and len(rows) == 2
    with_fog, without = (row["generated_image"] for row in rows)
    assert with_fog != without  # the negative prompt reached the engine


def test_azure_reports_the_safety_filters_verdict_per_row(cluster):
    def verdicts(seed: int) -> list[bool]:
        body = {"input_data": {"columns": ["prompt"], "data": [task_input()["data"]["prompt"]]},
                "parameters": {"seed": seed, "num_inference_steps": 1, "refiner": False}}
        status, rows, _ = http(cluster.ports, f"{FILTERED}/score", body)
        assert status == 200
        return [row["nsfw_content_detected"] for row in rows]

    assert verdicts(FLAGGED_SEED) == [True] and verdicts(FLAGGED_SEED + 1) == [False]


# cog /predictions

def test_cog_prediction_succeeds_with_data_uris_and_the_seeds_in_its_logs(cluster, sizes):
    body = {"id": "p-1", "input": {"prompt": PROMPT, "width": 1344, "height": 768, "num_outputs": 2,
                                   "num_inference_steps": 5, "scheduler": "K_EULER_ANCESTRAL", "seed": SEED,
                                   "refine": "expert_ensemble_refiner", "apply_watermark": False}}
    status, prediction, _ = http(cluster.ports, f"{MODEL}/predictions", body)
    assert status == 200 and prediction["status"] == "succeeded" and prediction["id"] == "p-1"
    assert [decoded(data_uri_payload(uri), "JPEG").size for uri in prediction["output"]] == [tuple(sizes["16:9"])] * 2
    assert prediction["logs"] == f"Using seed: {SEED}\nUsing seed: {SEED + 1}\n"
    assert prediction["metrics"]["predict_time"] > 0


def test_cog_leaves_out_flagged_images_and_fails_when_all_are(cluster):
    flagged = {"prompt": task_input()["data"]["prompt"], "seed": FLAGGED_SEED, "num_inference_steps": 1,
               "refine": "no_refiner", "disable_safety_checker": True}  # the deployment's filter still applies
    status, prediction, _ = http(cluster.ports, f"{FILTERED}/predictions", {"input": {**flagged, "num_outputs": 2}})
    assert status == 200 and prediction["status"] == "succeeded" and len(prediction["output"]) == 1
    status, prediction, _ = http(cluster.ports, f"{FILTERED}/predictions", {"input": flagged})
    assert status == 200 and prediction["status"] == "failed" and "NSFW" in prediction["error"]
    assert "output" not in prediction


@pytest.mark.parametrize(("cog_input", "location", "message"), [
    ({"prompt": PROMPT, "width": 1000, "height": 1000}, ["width"], "width x height must be one of 1024x1024"),
    ({"prompt": PROMPT, "num_outputs": 9}, ["num_outputs"], "must be from 1 to 4 on this deployment"),
    ({"prompt": PROMPT, "scheduler": "PNDM"}, ["scheduler"], "must be one of K_EULER"),
    ({"prompt": PROMPT, "refine": "base_image_refiner"}, ["refine"], "must be one of expert_ensemble_refiner"),
    ({"prompt": PROMPT, "image": "https://example.com/a.png"}, ["image"], "is a URL, and this deployment fetches"),
    ({"num_outputs": 1}, ["prompt"], "is required"),
])
def test_cog_invalid_input_is_422_with_the_location_of_the_field(cluster, cog_input, location, message):
    status, reply, _ = http(cluster.ports, f"{MODEL}/predictions", {"input": cog_input})
    (detail,) = reply["detail"]
    assert status == 422 and detail["loc"] == ["body", "input", *location] and message in detail["msg"]


# the plain /predict body

def test_plain_predict_answers_images_and_seeds(cluster, sizes):
    body = {"prompt": PROMPT, "negative_prompt": "fog", "num_inference_steps": 5, "guidance_scale": 6.5,
            "seed": SEED, "num_images": 2}
    status, reply, _ = http(cluster.ports, f"{MODEL}/predict", body)
    assert status == 200 and reply["seeds"] == [SEED, SEED + 1]
    assert [decoded(data_uri_payload(uri), "JPEG").size for uri in reply["images"]] == [tuple(sizes["1:1"])] * 2


def test_plain_predict_names_the_field_by_its_name(cluster):
    status, reply, _ = http(cluster.ports, f"{MODEL}/predict", {"prompt": PROMPT, "num_images": 0})
    assert (status, reply["field"]) == (400, "num_images")
    assert reply["error"].startswith("num_images: must be at least 1")


# the same images, whichever API asks

def openai_jpeg(cluster):
    reply = http(cluster.ports, f"{MODEL}/v1/images/generations",
                 {"prompt": PROMPT, "size": "1344x768", "output_format": "jpeg", "seed": SEED, **FAST})[1]
    return reply["data"][0]["b64_json"]


def azure_jpeg(cluster):
    body = {"input_data": {"columns": ["prompt"], "data": [PROMPT]},
            "parameters": {"aspect_ratio": "16:9", "seed": SEED, "num_inference_steps": FAST["steps"]}}
    return http(cluster.ports, f"{MODEL}/score", body)[1][0]["generated_image"]


def cog_jpeg(cluster):
    body = {"input": {"prompt": PROMPT, "width": 1344, "height": 768, "seed": SEED,
                      "num_inference_steps": FAST["steps"]}}
    return data_uri_payload(http(cluster.ports, f"{MODEL}/predictions", body)[1]["output"][0])


def plain_jpeg(cluster):
    body = {"prompt": PROMPT, "aspect_ratio": "16:9", "seed": SEED, "num_inference_steps": FAST["steps"]}
    return data_uri_payload(http(cluster.ports, f"{MODEL}/predict", body)[1]["images"][0])


@pytest.mark.parametrize("dialect", [openai_jpeg, azure_jpeg, cog_jpeg, plain_jpeg],
                         ids=["openai", "azure-ml", "cog", "plain"])
def test_each_api_gives_the_instill_paths_image_bytes(cluster, dialect):
    status, outputs, _ = http(cluster.ports, MODEL, {"prompt": PROMPT, "aspect-ratio": "16:9", "seed": SEED, **FAST})
    check_output(outputs[0])
    instill = data_uri_payload(outputs[0]["data"]["choices"][0]["image"])
    assert status == 200 and dialect(cluster) == instill


def test_images_are_counted_by_api(cluster):
    metric, label = "ray_sdxl_images_generated", 'api="plain"'
    before = metric_total(scrape(cluster), metric, label)
    body = {"prompt": PROMPT, "seed": SEED, "num_inference_steps": 1, "refiner": False}
    status, _, _ = http(cluster.ports, f"{MODEL}/predict", body)
    assert status == 200
    assert metric_total(wait_for_metric(cluster, metric, before + 1, label=label), metric, label) >= before + 1


# errors in each API's own shape

OPENAI_PARAM, AZURE_TARGET = (lambda reply: reply["error"]["param"]), (lambda reply: reply["error"]["target"])


@pytest.mark.parametrize(("path", "body", "status", "field_of", "field"), [
    ("v1/images/generations", {"prompt": PROMPT, "n": 0}, 400, OPENAI_PARAM, "n"),
    ("v1/images/generations", {"prompt": PROMPT, "stream": True}, 400, OPENAI_PARAM, "stream"),
    ("v1/images/generations", {"prompt": PROMPT, "steps": 1, "stepz": 2}, 400, OPENAI_PARAM, "stepz"),
    ("score", {"input_data": {"data": [PROMPT]}, "parameters": {"n": 2}}, 400, AZURE_TARGET, "parameters.n"),
    ("score", {"input_data": {"data": [PROMPT, ""]}}, 400, AZURE_TARGET, "input_data.data[1].prompt"),
    ("score", {"input_data": {"columns": ["text"], "data": [PROMPT]}}, 400, AZURE_TARGET, "input_data.columns"),
    ("predictions", {"input": {"prompt": PROMPT, "num_inference_steps": "many"}}, 422,
     lambda reply: ".".join(reply["detail"][0]["loc"]), "body.input.num_inference_steps"),
    ("predictions", {"input": {"prompt": PROMPT, "widht": 1344, "height": 768}}, 422,
     lambda reply: ".".join(reply["detail"][0]["loc"]), "body.input.widht"),
    ("predict", {"prompt": PROMPT, "guidance_scale": -1}, 400, lambda reply: reply["field"], "guidance_scale"),
])
def test_bad_input_is_named_in_each_apis_error_shape(cluster, path, body, status, field_of, field):
    got_status, reply, _ = http(cluster.ports, f"{MODEL}/{path}", body)
    assert (got_status, field_of(reply)) == (status, field)
