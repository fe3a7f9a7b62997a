"""Replicate's cog container API, with cog-sdxl's input names: `POST /predictions` and `GET /health-check`.

    {"input": {"prompt": ..., "width": 1344, "height": 768, "num_outputs": 2, "scheduler": "K_EULER", ...}}

An edit sends cog-sdxl's `image` (image-to-image) and `mask` (inpainting: white repaints, black keeps) as data
URIs or base64, and `prompt_strength`. cog's clients also send http(s) URLs there, which this deployment does not
fetch (a replica reaches no other host): they are refused naming the field. As cog-sdxl does, `prompt_strength`
without an image and `width`/`height` with one are not used (clients send their defaults every time): the
picture's shape decides the size (docs/edits.md).

The answer is {"status": "succeeded", "output": [data URIs], "metrics": {"predict_time"}, "logs"}, or
{"status": "failed", "error"} when the generation fails or every image is flagged (cog-sdxl leaves flagged
images out). Invalid input is 422 with the {"detail": [{"loc", "msg", "type"}]} of cog's FastAPI server.
Defaults are this deployment's (40 steps, the refiner ensemble), not cog-sdxl's.
"""

from __future__ import annotations

from starlette.responses import JSONResponse

from ..fields import InvalidRequest, excerpt, unknown_key
from ..generation.modes import PICTURES
from ..generation.request import TextToImageRequest
from ..generation.schedulers import SCHEDULERS
from ..generation.sizes import NATIVE_SIZES
from ..serving.encoding import encode_all, to_data_uri
from ..serving.limits import Limits
from ..serving.transport import HttpCall, HttpGeneration, Parsed, StatusCall
from .vocabulary import Vocabulary, choose, json_object

# cog-sdxl's scheduler names (PNDM and KLMS have no counterpart here); ours are taken too.
COG_SCHEDULERS = {"K_EULER": "euler", "K_EULER_ANCESTRAL": "euler-a", "DDIM": "ddim",
                  "DPMSolverMultistep": "dpm++-2m", "KarrasDPM": "dpm++-2m-karras", "HeunDiscrete": "heun"}
# base_image_refiner (the refiner run over the base's finished image, refine_steps) is not served.
REFINE = {"expert_ensemble_refiner": True, "no_refiner": False}
SIZES = {size: ratio for ratio, size in NATIVE_SIZES.items()}
UNSUPPORTED = {"refine_steps": "is not served: base_image_refiner is not", "replicate_weights": "is not served: "
               "weights are not fetched by URL; name an adapter of this deployment's LoRA folder with `lora`"}
# No watermark is added; and the deployment's safety filter is not the caller's to disable.
IGNORED = ("apply_watermark", "disable_safety_checker")
VOCABULARY = Vocabulary({"num_outputs": "n", "num_inference_steps": "steps", "refine": "refiner",
                         "prompt_strength": "strength"}, without=["aspect-ratio"], pictures=True,
                        own=["width", "height", *UNSUPPORTED, *IGNORED], elsewhere=["input", "id"])
NSFW = "NSFW content detected. Try running it again, or try a different prompt."


class CogPrediction(HttpGeneration):
    """A prediction; its `id`, when sent, is the answer's option."""

    api = "cog"
    title = "cog predictions"

    async def parse(self, limits: Limits) -> Parsed:
        body = json_object(await self.json_body(limits, pictures=True), "body")
        unknown = sorted(set(body) - {"input", "id"})
        if unknown:
            error = unknown_key(unknown[0], ["input", "id"], "key")  # webhook, output_file_prefix: not served
            raise InvalidRequest(error.field, f"{error.reason}; webhooks are not served")
        prediction_id = body.get("id")
        if not isinstance(prediction_id, (str, type(None))):
            raise InvalidRequest("id", f"must be a string, got {excerpt(prediction_id)}")
        try:
            return Parsed([self._request(dict(json_object(body.get("input"), "input")), limits)], prediction_id)
        except InvalidRequest as error:
            raise error.within("input.") from None

    @staticmethod
    def _request(fields: dict, limits: Limits) -> TextToImageRequest:
        VOCABULARY.reject_unknown(fields)
        for name, reason in UNSUPPORTED.items():
            if name in fields:
                raise InvalidRequest(name, reason)
        pictures = [VOCABULARY.to_theirs[name] for name in PICTURES]
        for name in pictures:
            if isinstance(fields.get(name), str) and fields[name].lstrip()[:8].lower().startswith(("http:", "https:")):
                raise InvalidRequest(name, "is a URL, and this deployment fetches nothing: send the picture itself "
                                           "as a data URI (data:image/png;base64,...)")
        edit = fields.get(pictures[0]) is not None  # the picture every edit starts from
        if not edit:
            fields.pop("prompt_strength", None)
        for name in IGNORED:
            if not isinstance(fields.pop(name, False), bool):
                raise InvalidRequest(name, "must be true or false")
        size = (fields.pop("width", 1024), fields.pop("height", 1024))
        if not edit and (not all(type(side) is int for side in size) or size not in SIZES):
            allowed = ", ".join(f"{width}x{height}" for width, height in SIZES)
            raise InvalidRequest("width", f"width x height must be one of {allowed}; got {excerpt(size[0])}x"
                                          f"{excerpt(size[1])}")
        if "scheduler" in fields:
            name = choose(fields["scheduler"], "scheduler", [*COG_SCHEDULERS, *SCHEDULERS])
            fields["scheduler"] = COG_SCHEDULERS.get(name, name)
        if "refine" in fields:
            fields["refine"] = REFINE[choose(fields["refine"], "refine", REFINE)]
        return VOCABULARY.request(fields, limits, settled=None if edit else {"aspect-ratio": SIZES[size]})

    def answer(self, parsed, generations, jpeg_quality) -> JSONResponse:
        (generation,) = generations
        (images,) = encode_all(generations, to_data_uri, "jpeg", jpeg_quality)
        kept = [image for image, unsafe in zip(images, generation.filtered) if not unsafe]
        (request,) = parsed.requests
        # cog-sdxl logs its mode; an edit's line also says the size its picture was fitted to.
        logs = f"{request.mode} mode, {generation.width}x{generation.height}\n" if request.pictures else ""
        logs += "".join(f"Using seed: {seed}\n" for seed in generation.seeds)
        logs += "".join(f"NSFW content detected in image {index}\n"
                        for index, unsafe in enumerate(generation.filtered) if unsafe)
        outcome = {"status": "succeeded", "output": kept} if kept else {"status": "failed", "error": NSFW}
        return prediction(parsed.options, outcome, logs, sum(generation.timings.values()))

    def failure_answer(self, parsed, error: Exception) -> JSONResponse:
        failure = {"status": "failed", "error": f"the generation failed ({type(error).__name__})"}
        return prediction(parsed.options, failure)

    def error_status(self, error: InvalidRequest) -> int:
        return 422 if error.http_status == 400 else error.http_status

    def error_body(self, error: InvalidRequest) -> dict:
        if error.http_status != 400:
            return {"detail": str(error)}
        return {"detail": [{"loc": ["body", *error.field.split(".")], "msg": error.reason, "type": "value_error"}]}


class CogHealth(HttpCall, StatusCall):
    """`GET /health-check`, which cog clients poll before they predict."""

    api = "cog"
    title = "cog health check"

    def answer(self, status: dict) -> JSONResponse:
        return JSONResponse({"status": "READY", "setup": {"status": "succeeded"}})


def prediction(prediction_id: str | None, outcome: dict, logs: str = "", seconds: float | None = None) -> JSONResponse:
    metrics = {"predict_time": round(seconds, 4)} if seconds is not None else {}
    return JSONResponse({**({"id": prediction_id} if prediction_id else {}), **outcome, "logs": logs,
                         "metrics": metrics})
