"""A CallRequest as Instill Core's model-backend sends it (the pattern of tests/instill_contract.py, copied)."""

from __future__ import annotations

from google.protobuf import json_format
from instill.protogen.model.ray.v1alpha.user_defined_pb2 import CallRequest, CallResponse

METHOD = "/model.ray.v1alpha.UserDefinedService/__call__"


def task_input(prompt: str, **parameter) -> dict:
    return {"data": {"prompt": prompt, "model": "users/bench/models/stable-diffusion-xl"}, "parameter": parameter}


def call_request(*task_inputs: dict) -> CallRequest:
    request = CallRequest()
    for item in task_inputs:
        json_format.ParseDict(item, request.task_inputs.add())
    return request


def grpc_call(channel, application: str, *task_inputs: dict, timeout: float = 300) -> list[dict]:
    """One CallRequest routed by the `application` metadata; the task outputs as dicts."""
    stub = channel.unary_unary(METHOD, request_serializer=CallRequest.SerializeToString,
                               response_deserializer=CallResponse.FromString)
    response = stub(call_request(*task_inputs), metadata=(("application", application),), timeout=timeout)
    return [json_format.MessageToDict(output) for output in response.task_outputs]
