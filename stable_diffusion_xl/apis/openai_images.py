"""The OpenAI Images API: `POST /v1/images/generations` and `GET /v1/models`, so that the OpenAI SDKs work
against this deployment once their base URL points at it.

SDXL's own parameters (negative_prompt, seed, steps, guidance_scale, scheduler, lora, ...) are extra body
fields, which the SDKs send with `extra_body`. Errors have OpenAI's shape, so that an SDK raises its own
BadRequestError (AuthenticationError for a key) with our message.
"""

from __future__ import annotations

import time
from typing import NamedTuple

from starlette.responses import JSONResponse

from ..fields import InvalidRequest, excerpt
from ..generation.sizes import NATIVE_SIZES
from ..serving.encoding import encode_all, to_base64, to_data_uri
from ..serving.limits import Limits
from ..serving.transport import HttpCall, HttpGeneration, Parsed, StatusCall
from .vocabulary import Vocabulary, choose, json_object

SIZES = {f"{width}x{height}": ratio for ratio, (width, height) in NATIVE_SIZES.items()}
OUTPUT_FORMATS = ("png", "jpeg", "webp")
RESPONSE_FORMATS = ("b64_json", "url")  # a url is a data: URL: the deployment hosts no files
# OpenAI's parameters that mean nothing to SDXL, taken so that a client's existing call works unchanged.
IGNORED = ("model", "user", "quality", "style")
BACKGROUNDS = ("auto", "opaque")  # SDXL has no alpha channel: "transparent" cannot be honoured
# OpenAI's own content moderation, which this deployment does not run: both of its levels are taken, and
# the deployment's safety checker (SDXL_SAFETY_CHECKER) is what filters, when it is on.
MODERATIONS = ("auto", "low")
VOCABULARY = Vocabulary({}, without=["aspect-ratio"], own=["size", "response_format", "output_format",
                                                            "output_compression", "stream", "background", "moderation",
                                                            *IGNORED])
SDXL_RELEASED = 1690329600  # 2023-07-26, SDXL 1.0's release: the model's "created" time


class Reply(NamedTuple):
    """How the images are answered, as OpenAI's fields ask."""

    response_format: str  # b64_json or url
    output_format: str
    quality: int | None  # output_compression; None: the deployment's JPEG quality


class OpenAIImages(HttpGeneration):
    """`POST /v1/images/generations`: {"created", "data": [{"b64_json"} or {"url"}], "size", "output_format",
    "seeds"}."""

    api = "openai"
    title = "OpenAI Images (the SDKs' base_url is /v1)"

    async def parse(self, limits: Limits) -> Parsed:
        fields = dict(json_object(await self.json_body(limits), "body"))
        VOCABULARY.reject_unknown(fields)
        size, reply = take_options(fields, IGNORED)
        choose(fields.pop("moderation", "auto"), "moderation", MODERATIONS)
        return Parsed([VOCABULARY.request(fields, limits, settled={"aspect-ratio": SIZES.get(size, "1:1")})], reply)

    def answer(self, parsed, generations, jpeg_quality) -> JSONResponse:
        return JSONResponse(self.answer_body(parsed, generations, jpeg_quality))

    def answer_body(self, parsed, generations, jpeg_quality) -> dict:
        (generation,) = generations
        reply: Reply = parsed.options
        encoder = to_data_uri if reply.response_format == "url" else to_base64
        quality = jpeg_quality if reply.quality is None else reply.quality
        (images,) = encode_all(generations, encoder, reply.output_format, quality)
        body = {"created": int(time.time()), "data": [{reply.response_format: image} for image in images],
                "size": f"{generation.width}x{generation.height}", "output_format": reply.output_format,
                "seeds": generation.seeds}
        if generation.safety_checked:  # flagged images are black
            body["content_filtered"] = [index for index, unsafe in enumerate(generation.filtered) if unsafe]
        return body

    def error_body(self, error: InvalidRequest) -> dict:
        code = "invalid_api_key" if error.http_status == 401 else None
        return {"error": {"message": str(error), "type": "invalid_request_error", "param": error.field, "code": code}}


def take_options(fields: dict, ignored: tuple[str, ...]) -> tuple[str, Reply]:
    """OpenAI's own fields, taken out of `fields`: those `ignored`, and the size asked for and how to answer
    (returned)."""
    reply = Reply(choose(fields.pop("response_format", "b64_json"), "response_format", RESPONSE_FORMATS),
                  choose(fields.pop("output_format", "png"), "output_format", OUTPUT_FORMATS),
                  fields.pop("output_compression", None))
    if reply.quality is not None and (type(reply.quality) is not int or not 0 <= reply.quality <= 100):
        raise InvalidRequest("output_compression", f"must be an integer from 0 to 100, got {excerpt(reply.quality)}")
    if fields.pop("stream", False) is not False:
        raise InvalidRequest("stream", "must be false: this deployment answers with the finished images")
    for name in ignored:
        if not isinstance(fields.pop(name, ""), str):
            raise InvalidRequest(name, "must be a string")
    if fields.get("background") == "transparent":
        raise InvalidRequest("background", "transparent is not served: SDXL makes opaque images; use opaque or auto")
    choose(fields.pop("background", "auto"), "background", BACKGROUNDS)
    return choose(fields.pop("size", "auto"), "size", ["auto", *SIZES]), reply


class OpenAIModels(HttpCall, StatusCall):
    """`GET /v1/models`: the one model this deployment serves."""

    api = "openai"
    title = "OpenAI model list"

    def answer(self, status: dict) -> JSONResponse:
        model = {"id": status["model"], "object": "model", "created": SDXL_RELEASED, "owned_by": "stabilityai"}
        return JSONResponse({"object": "list", "data": [model]})
