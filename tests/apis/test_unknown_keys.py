"""A misspelt key in any dialect is named as the caller spelt it, before any check its absence would fail,
with the closest of that dialect's own field names first and every one of them listed."""

import pytest

from dialect_calls import dialect_reply

PROMPT = "a lighthouse on a cliff at dusk"

OPENAI_FIELDS = ["prompt", "n", "size", "response_format", "output_format", "output_compression", "model",
                 "quality", "background", "moderation", "negative_prompt", "seed", "steps", "scheduler", "lora"]
COG_FIELDS = ["prompt", "width", "height", "num_outputs", "num_inference_steps", "refine", "negative_prompt",
              "scheduler", "guidance_scale", "apply_watermark", "disable_safety_checker"]


def openai_error(reply):
    return reply["error"]["param"], reply["error"]["message"]


def azure_error(reply):
    return reply["error"]["target"], reply["error"]["message"]


def cog_error(reply):
    (detail,) = reply["detail"]
    return ".".join(detail["loc"]), detail["msg"]


def own_error(reply):
    return reply["field"], reply["error"]


@pytest.mark.parametrize(("path", "body", "error_of", "field", "meant", "listed"), [
    ("", {"promt": "a cat"}, own_error, "promt", "prompt", ["prompt", "negative-prompt", "n", "steps"]),
    ("", {"data": {"promt": PROMPT}}, own_error, "data.promt", "prompt", ["prompt", "model"]),
    ("", {"data": {"prompt": PROMPT}, "parameters": {"n": 2}}, own_error, "parameters", "parameter",
     ["data", "parameter"]),
    ("", {"data": {"prompt": PROMPT}, "parameter": {"stpes": 2}}, own_error, "parameter.stpes", "steps",
     ["negative-prompt", "aspect-ratio", "n", "steps", "lora-scale"]),
    ("v1/images/generations", {"prompt": PROMPT, "sise": "1344x768"}, openai_error, "sise", "size", OPENAI_FIELDS),
    ("v1/images/generations", {"prompt": PROMPT, "response-format": "url"}, openai_error, "response-format",
     "response_format", OPENAI_FIELDS),
    ("predictions", {"input": {"prompt": PROMPT, "widht": 1344, "height": 768}}, cog_error, "body.input.widht",
     "width", COG_FIELDS),
    ("predictions", {"inputs": {"prompt": PROMPT}}, cog_error, "body.inputs", "input", ["input", "id"]),
    ("score", {"input_data": {"data": [PROMPT]}, "parameters": {"num_inference_step": 5}}, azure_error,
     "parameters.num_inference_step", "num_inference_steps", ["num_inference_steps", "guidance_scale", "seed"]),
    ("score", {"input_data": {"dat": [PROMPT]}}, azure_error, "input_data.dat", "data", ["columns", "data", "index"]),
    ("predict", {"prompt": PROMPT, "num_image": 2}, own_error, "num_image", "num_images",
     ["prompt", "num_images", "num_inference_steps", "negative_prompt"]),
])
def test_a_misspelt_key_is_named_with_the_closest_name_first_and_every_field_listed(path, body, error_of, field,
                                                                                    meant, listed):
    status, reply = dialect_reply(path, body)
    assert status in (400, 422)
    named, message = error_of(reply)
    assert named == field
    hint, _, known = message.partition(" known: ")
    assert hint.endswith(f"did you mean `{meant}`?") or f"did you mean `{meant}` or" in hint
    assert set(listed) <= set(known.split("; ")[0].split(", "))


def test_cogs_misspelt_width_is_named_rather_than_a_size_it_never_asked_for():
    status, reply = dialect_reply("predictions", {"input": {"prompt": PROMPT, "widht": 1344, "height": 768}})
    field, message = cog_error(reply)
    assert (status, field) == (422, "body.input.widht") and "1024x768" not in message


def test_a_hostile_key_gets_no_guess_and_no_echo():
    key = "promt" * 4000
    status, reply = dialect_reply("", {key: PROMPT})
    assert status == 400 and "did you mean" not in reply["error"] and len(reply["error"]) < 300
