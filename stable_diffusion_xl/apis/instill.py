"""Instill Core's dialect: task inputs in, TASK_TEXT_TO_IMAGE outputs out, over gRPC and HTTP.

Core sends a gRPC `CallRequest` with one or more task inputs. People and `instill run` POST the raw
input JSON to the route: one task input or a list, in the envelope or flat.

The contract (TASK_TEXT_TO_IMAGE) takes no picture, so its envelope, over gRPC or HTTP, makes images from text
only; the flat HTTP form also takes an edit's `image` and `mask` (data URIs or base64) and `strength`.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import struct_pb2
from instill.helpers import construct_task_text_to_image_output
from instill.protogen.model.ray.v1alpha.user_defined_pb2 import CallRequest, CallResponse
from starlette.responses import JSONResponse

from ..fields import InvalidRequest, check_text, excerpt, unknown_key
from ..generation.modes import PICTURES, PIL_MODES
from ..generation.pictures import read_pictures
from ..generation.request import TextToImageRequest, from_fields, text_only
from ..generation.results import Generation
from ..serving.encoding import encode_all, to_base64
from ..serving.limits import Limits
from ..serving.transport import GenerationCall, HttpGeneration, Parsed, key_problem


class InstillGrpc(GenerationCall):
    """Core's `UserDefinedService/__call__`; errors are INVALID_ARGUMENT with the field in the details,
    UNAUTHENTICATED for a missing or wrong API key."""

    api = "instill-grpc"

    def __init__(self, call: CallRequest, context: grpc.ServicerContext):
        self.call, self.context = call, context

    def authorize(self, api_key: str | None) -> None:
        """With a key set, the `authorization` metadata must be `Bearer <key>`, as HTTP's header."""
        problem = key_problem(dict(self.context.invocation_metadata()).get("authorization", ""), api_key)
        if problem:
            raise InvalidRequest("authorization", f"{problem}; send it as gRPC metadata `authorization: Bearer "
                                                  "<key>`", http_status=401)

    async def parse(self, limits: Limits) -> Parsed:
        size = self.call.ByteSize()
        if size > limits.max_body_bytes:
            raise InvalidRequest("task_inputs", f"the call is {size} bytes; this deployment takes at most "
                                                f"{limits.max_body_bytes}")
        inputs = [plain(task_input) for task_input in self.call.task_inputs]
        return Parsed(parse_all(inputs, parse_task_input, limits, "task_inputs"))

    def answer(self, parsed, generations, jpeg_quality) -> CallResponse:
        response = build_output(self.call, parsed.requests, generations, jpeg_quality)
        for output, request, generation in zip(response.task_outputs, parsed.requests, generations):
            output.update({"metadata": {"usage": usage(request, generation)}})
        return response

    def reject(self, error: InvalidRequest) -> CallResponse:
        unauthenticated = error.http_status == 401
        self.context.set_code(grpc.StatusCode.UNAUTHENTICATED if unauthenticated else grpc.StatusCode.INVALID_ARGUMENT)
        self.context.set_details(str(error))
        return CallResponse()


class InstillHttp(HttpGeneration):
    """A POST of task inputs as JSON; errors are 4xx `{"error": ..., "field": ...}`."""

    api = "instill-http"
    title = "Instill task inputs"

    async def parse(self, limits: Limits) -> Parsed:
        return Parsed(parse_json(await self.json_body(limits, pictures=True), limits))

    def answer(self, parsed, generations, jpeg_quality) -> JSONResponse:
        outputs = build_output(self.request, parsed.requests, generations, jpeg_quality)
        for output, request, generation in zip(outputs, parsed.requests, generations):
            output["metadata"] = {"usage": usage(request, generation)}
        return JSONResponse(outputs)


def plain(value: Any) -> Any:
    """A protobuf Struct, ListValue or Value as Python values. Unlike json_format, it keeps NaN and the
    infinities, so that the request's own checks name the field that holds one."""
    if isinstance(value, struct_pb2.Struct):
        return {key: plain(item) for key, item in value.fields.items()}
    if isinstance(value, struct_pb2.ListValue):
        return [plain(item) for item in value.values]
    kind = value.WhichOneof("kind")
    if kind in ("struct_value", "list_value"):
        return plain(getattr(value, kind))
    return None if kind in (None, "null_value") else getattr(value, kind)


def build_output(call, requests: list[TextToImageRequest], generations: list[Generation], jpeg_quality: int):
    """The SDK's TASK_TEXT_TO_IMAGE outputs (a CallResponse for gRPC, a list for HTTP), n choices each."""
    images = encode_all(generations, to_base64, "jpeg", jpeg_quality)
    # A flagged image is a black image of the same size: the schema requires one in every choice.
    finish_reasons = [["content_filtered" if unsafe else "success" for unsafe in generation.filtered]
                      for generation in generations]
    return construct_task_text_to_image_output(request=call, finish_reasons=finish_reasons, images=images)


def usage(request: TextToImageRequest, generation: Generation) -> dict:
    """What Core shows as metadata.usage: enough to reproduce and to account for the images."""
    return {
        "images": len(generation.images),
        "seeds": generation.seeds,
        "width": generation.width,
        "height": generation.height,
        "steps": request.steps,
        "guidance-scale": request.guidance_scale,
        "refiner": generation.refined,  # false where the steps left the refiner none
        "scheduler": request.scheduler,
        "lora": list(request.lora),
        "lora-scale": list(request.lora_scale),
        "high-noise-frac": request.high_noise_frac if generation.refined else None,
        "mode": request.mode,  # text-to-image, image-to-image or inpainting
        "strength": request.strength,  # null for text-to-image
        # The input picture's own size; width and height above are the native size it was fitted to.
        "input-size": request.input_size and list(request.input_size),
        "tokens": dict(generation.tokens),  # {"prompt": 213, "negative-prompt": 12}: CLIP tokens, syntax removed
        "content-filtered": [index for index, unsafe in enumerate(generation.filtered) if unsafe],
        "seconds": {stage: round(seconds, 4) for stage, seconds in generation.timings.items()},
        "calls-in-batch": generation.batch_calls,  # calls whose images shared a UNet batch with these (1: alone)
    }


def parse_task_input(task_input: Any, limits: Limits, images_before: int = 0) -> TextToImageRequest:
    """Instill's envelope: {"data": {"prompt": ..., "model": ...}, "parameter": {...}}."""
    if not isinstance(task_input, dict):
        raise InvalidRequest("task input", f"must be an object, got {excerpt(task_input)}")
    unknown = sorted(set(task_input) - {"data", "parameter"})
    if unknown:
        raise unknown_key(unknown[0], ["data", "parameter"], "key")
    data, parameter = task_input.get("data"), task_input.get("parameter", {})
    if not isinstance(data, dict):
        raise InvalidRequest("data", "must be an object with a prompt")
    if not isinstance(parameter, dict):
        raise InvalidRequest("parameter", "must be an object")
    extra = sorted(set(data) - {"prompt", "model"})
    for name in extra:
        if name in PICTURES:
            raise text_only(name).within("data.")
    if extra:
        raise unknown_key(extra[0], ["prompt", "model"], "key").within("data.")
    model = data.get("model", "")  # Core's model id; the deployment serves one model, so it is not used
    if not isinstance(model, str):
        raise InvalidRequest("data.model", f"must be a string, got {excerpt(model)}")
    check_text("data.model", model)
    request = from_fields(data.get("prompt"), {}, "data.")
    request = from_fields(request.prompt, parameter, "parameter.")
    limits.check(request, images_before, "parameter.")
    return request


def parse_flat(body: dict, limits: Limits, images_before: int = 0) -> TextToImageRequest:
    """The flat form people and `instill run` send: {"prompt": ..., "n": 2, ...}; "model" is ignored."""
    fields = read_pictures({key: value for key, value in body.items() if key != "model"}, limits.uploads, PIL_MODES)
    request = from_fields(fields.pop("prompt", None), fields, also=["prompt", "model"], pictures=True)
    limits.check(request, images_before, "")
    return request


def parse_all(inputs: list, parse_one, limits: Limits, where: str = "") -> list[TextToImageRequest]:
    """Several inputs, in order. Errors name the field by its path from the root of what the caller sent:
    `task_inputs[1].parameter.n` in a CallRequest, `[1].n` in an HTTP list, `n` in one HTTP object."""
    if not inputs:
        raise InvalidRequest(where or "body", "must hold at least one task input")
    requests = []
    for index, one in enumerate(inputs):
        try:
            requests.append(parse_one(one, limits, sum(request.n for request in requests)))
        except InvalidRequest as error:
            raise error.within(f"{where}[{index}]." if where or len(inputs) > 1 else "") from None
    return requests


def parse_json(body: Any, limits: Limits) -> list[TextToImageRequest]:
    """HTTP bodies: one task input or a list of them, in the envelope or flat ({"prompt": ..., "n": 2})."""
    return parse_all(body if isinstance(body, list) else [body], _parse_http_input, limits)


def _parse_http_input(task_input: Any, limits: Limits, images_before: int) -> TextToImageRequest:
    if isinstance(task_input, dict) and "data" not in task_input and "parameter" not in task_input:
        return parse_flat(task_input, limits, images_before)
    return parse_task_input(task_input, limits, images_before)
