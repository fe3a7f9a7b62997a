"""Instill Core's TASK_TEXT_TO_IMAGE contract, written out so the tests need nothing outside the repo.

The output schema is the official one's constraints (Core validates every model output against it).
"""

import base64
import io

import jsonschema
from google.protobuf import json_format
from instill.protogen.model.ray.v1alpha.user_defined_pb2 import CallRequest, CallResponse
from PIL import Image

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
METHOD = "/model.ray.v1alpha.UserDefinedService/__call__"


def call_request(*task_inputs: dict) -> CallRequest:
    request = CallRequest()
    for task_input in task_inputs:
        json_format.ParseDict(task_input, request.task_inputs.add())
    return request


def task_input(prompt="a cat napping", model="users/test/models/stable-diffusion-xl", **parameter) -> dict:
    return {"data": {"prompt": prompt, "model": model}, "parameter": parameter}


def grpc_call(channel, application: str, *task_inputs: dict, timeout: float = 300):
    """One CallRequest as model-backend sends it: routed by the `application` metadata."""
    stub = channel.unary_unary(METHOD, request_serializer=CallRequest.SerializeToString,
                               response_deserializer=CallResponse.FromString)
    response = stub(call_request(*task_inputs), metadata=(("application", application),), timeout=timeout)
    return [json_format.MessageToDict(output) for output in response.task_outputs]


def check_output(output: dict) -> list[Image.Image]:
    """Validate one task output against the schema and decode its JPEG data URIs."""
    jsonschema.validate(output, OUTPUT_SCHEMA)
    images = []
    for choice in output["data"]["choices"]:
        assert choice["finish-reason"] == "success"
        prefix, _, payload = choice["image"].partition(",")
        assert prefix == "data:image/jpeg;base64"
        image = Image.open(io.BytesIO(base64.b64decode(payload, validate=True)))
        assert image.format == "JPEG"
        images.append(image)
    return images
