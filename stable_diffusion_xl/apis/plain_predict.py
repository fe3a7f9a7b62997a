"""The plain body BentoML and OCI model deployments take: `POST /predict`.

    {"prompt", "negative_prompt", "num_inference_steps", "guidance_scale", "seed", "num_images"}

answered with {"images": [data URIs], "seeds": [...]}; SDXL's other parameters by our names in snake_case.
Errors are this deployment's own {"error", "field"}.
"""

from __future__ import annotations

from starlette.responses import JSONResponse

from ..generation.request import TextToImageRequest
from ..serving.encoding import encode_all, to_data_uri
from ..serving.limits import Limits
from ..serving.transport import HttpCall
from .vocabulary import Vocabulary, json_object

VOCABULARY = Vocabulary({"num_inference_steps": "steps", "num_images": "n"})


class PlainPredict(HttpCall):
    api = "plain"

    async def requests(self, limits: Limits) -> list[TextToImageRequest]:
        return [VOCABULARY.request(json_object(await self.json_body(limits), "body"), limits)]

    def answer(self, requests, generations, jpeg_quality) -> JSONResponse:
        (generation,) = generations
        (images,) = encode_all(generations, to_data_uri, "jpeg", jpeg_quality)
        return JSONResponse({"images": images, "seeds": generation.seeds})
