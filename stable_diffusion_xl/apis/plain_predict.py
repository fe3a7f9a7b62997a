"""The plain body BentoML and OCI model deployments take: `POST /predict`.

    {"prompt", "negative_prompt", "num_inference_steps", "guidance_scale", "seed", "num_images"}

answered with {"images": [data URIs], "seeds": [...], "mode", "width", "height"}; SDXL's other parameters by our
names in snake_case. An edit sends `image` (and `mask`, white repaints) as data URIs or base64, and `strength`
(docs/edits.md). Errors are this deployment's own {"error", "field"}.
"""

from __future__ import annotations

from starlette.responses import JSONResponse

from ..serving.encoding import encode_all, to_data_uri
from ..serving.limits import Limits
from ..serving.transport import HttpGeneration, Parsed
from .vocabulary import Vocabulary, json_object

VOCABULARY = Vocabulary({"num_inference_steps": "steps", "num_images": "n"}, pictures=True)


class PlainPredict(HttpGeneration):
    api = "plain"
    title = "plain body"

    async def parse(self, limits: Limits) -> Parsed:
        return Parsed([VOCABULARY.request(json_object(await self.json_body(limits, pictures=True), "body"), limits)])

    def answer(self, parsed, generations, jpeg_quality) -> JSONResponse:
        (generation,) = generations
        (images,) = encode_all(generations, to_data_uri, "jpeg", jpeg_quality)
        (request,) = parsed.requests
        return JSONResponse({"images": images, "seeds": generation.seeds, "mode": request.mode,
                             "width": generation.width, "height": generation.height})
