"""Instill Core's TASK_TEXT_TO_IMAGE contract, written out so the tests need nothing outside the repo.

The output schema is the official one's constraints (Core validates every model output against it).
"""

import base64
import io

import jsonschema
from PIL import Image

from stable_diffusion_xl.serving import client

OUTPUT_SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {
            "type": "object",
            "required": ["choices"],
            "properties": {
                "choices": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["finish-reason", "image"],
                        "properties": {
                            "finish-reason": {"type": "string", "enum": ["content_filtered", "success"]},
                            "image": {"type": "string"},
                        },
                    },
                }
            },
        },
        "metadata": {"type": "object", "properties": {"usage": {"type": "object"}}},
    },
}


def task_input(prompt="a cat napping", **parameter) -> dict:
    """A task input the tests send; the package's client builds it (stable_diffusion_xl/client.py)."""
    return client.task_input(prompt, "users/test/models/stable-diffusion-xl", **parameter)


def check_output(output: dict, finish_reasons: list[str] | None = None) -> list[Image.Image]:
    """Validate one task output against the schema and decode its JPEG data URIs; every choice a success
    unless `finish_reasons` says otherwise."""
    jsonschema.validate(output, OUTPUT_SCHEMA)
    reasons = [choice["finish-reason"] for choice in output["data"]["choices"]]
    assert reasons == (finish_reasons or ["success"] * len(reasons))
    images = []
    for choice in output["data"]["choices"]:
        prefix, _, payload = choice["image"].partition(",")
        assert prefix == "data:image/jpeg;base64"
        image = Image.open(io.BytesIO(base64.b64decode(payload, validate=True)))
        assert image.format == "JPEG"
        images.append(image)
    return images
