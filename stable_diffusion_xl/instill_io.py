"""Instill Core's wire format: task inputs in, TASK_TEXT_TO_IMAGE outputs out.

A call is either a gRPC `CallRequest` (what Core sends; several task inputs) or an HTTP request
to the route (what `instill run` and people send: the raw input JSON, flat or enveloped).
"""

from __future__ import annotations

import json
import time
from typing import Any

from google.protobuf import json_format
from instill.helpers import construct_task_text_to_image_output

from .encoding import to_base64_jpeg
from .engine import Generation
from .request import InvalidRequest, TextToImageRequest, parse_all, parse_json, parse_task_input


async def parse_call(call: Any) -> list[TextToImageRequest]:
    """The requests of one call, in order; InvalidRequest names the first bad field."""
    if hasattr(call, "task_inputs"):  # gRPC CallRequest
        inputs = [json_format.MessageToDict(task_input) for task_input in call.task_inputs]
        return parse_all(inputs, parse_task_input, "task_inputs")
    try:
        body = json.loads(await call.body())
    except ValueError as error:
        raise InvalidRequest("body", f"must be JSON ({error})") from None
    return parse_json(body)


def usage(request: TextToImageRequest, generation: Generation) -> dict:
    """What Core shows as metadata.usage: enough to reproduce and to account for the images."""
    return {
        "images": len(generation.images),
        "seeds": generation.seeds,
        "width": generation.width,
        "height": generation.height,
        "steps": request.steps,
        "guidance-scale": request.guidance_scale,
        "refiner": request.refiner,
        "high-noise-frac": request.high_noise_frac if request.refiner else None,
        "seconds": {stage: round(seconds, 4) for stage, seconds in generation.timings.items()},
    }


def build_output(call: Any, requests: list[TextToImageRequest], generations: list[Generation], jpeg_quality: int):
    """A CallResponse for gRPC, a list of task outputs for HTTP; one output per task input, n choices each."""
    images = []
    for generation in generations:
        started = time.perf_counter()
        images.append([to_base64_jpeg(image, jpeg_quality) for image in generation.images])
        generation.timings["jpeg"] = time.perf_counter() - started
    finish_reasons = [["success"] * len(g.images) for g in generations]
    response = construct_task_text_to_image_output(request=call, finish_reasons=finish_reasons, images=images)
    outputs = response.task_outputs if hasattr(response, "task_outputs") else response
    for output, request, generation in zip(outputs, requests, generations):
        output.update({"metadata": {"usage": usage(request, generation)}})
    return response
