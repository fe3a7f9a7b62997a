"""The caller's side of Instill's gRPC call: one CallRequest as Instill Core's model-backend sends it.

    with grpc.insecure_channel("127.0.0.1:9000") as channel:
        outputs = grpc_call(channel, "default", task_input("a cat napping", n=2, seed=7))
"""

from __future__ import annotations

import grpc
from google.protobuf import json_format
from instill.protogen.model.ray.v1alpha.user_defined_pb2 import CallRequest, CallResponse

METHOD = "/model.ray.v1alpha.UserDefinedService/__call__"


def task_input(prompt: str, model: str = "users/admin/models/stable-diffusion-xl", **parameter) -> dict:
    """One TASK_TEXT_TO_IMAGE input; parameters by their wire names (`**{"aspect-ratio": "16:9"}`)."""
    return {"data": {"prompt": prompt, "model": model}, "parameter": parameter}


def call_request(*task_inputs: dict) -> CallRequest:
    request = CallRequest()
    for item in task_inputs:
        json_format.ParseDict(item, request.task_inputs.add())
    return request


def grpc_call(channel: grpc.Channel, application: str, *task_inputs: dict, timeout: float = 300,
              api_key: str | None = None) -> list[dict]:
    """One CallRequest routed by the `application` metadata, as Core routes it (with `authorization:
    Bearer <api_key>` for a deployment that has a key); the task outputs as dicts."""
    stub = channel.unary_unary(METHOD, request_serializer=CallRequest.SerializeToString,
                               response_deserializer=CallResponse.FromString)
    metadata = (("application", application), *([("authorization", f"Bearer {api_key}")] if api_key else []))
    response = stub(call_request(*task_inputs), metadata=metadata, timeout=timeout)
    return [json_format.MessageToDict(output) for output in response.task_outputs]
