"""Azure ML's online endpoint for SDXL: `POST /score`.

    {"input_data": {"columns": ["prompt"], "data": ["a photo of ..."], "index": [0]},
     "parameters": {"num_inference_steps": 40, "guidance_scale": 7.5}}

`data` holds one row per image: a prompt string, or a list of values in the order of `columns` (`prompt`,
and `negative_prompt` when given). The answer has one object per row: {"prompt", "generated_image": bare
base64 JPEG, "nsfw_content_detected": the safety filter's verdict, null when it is off}. Errors have the
Azure REST shape {"error": {"code", "message", "target"}}.
"""

from __future__ import annotations

from http import HTTPStatus

from starlette.responses import JSONResponse

from ..fields import InvalidRequest, excerpt, unknown_key
from ..serving.encoding import encode_all, to_base64
from ..serving.limits import Limits
from ..serving.transport import HttpGeneration, Parsed
from .vocabulary import Vocabulary, json_object

COLUMNS = ("prompt", "negative_prompt")
VOCABULARY = Vocabulary({"num_inference_steps": "steps"}, without=["n"],  # one image per row
                        elsewhere=["input_data", "columns", "index", "parameters"])


class AzureScore(HttpGeneration):
    api = "azure-ml"
    title = "Azure ML online endpoint"

    async def parse(self, limits: Limits) -> Parsed:
        body = json_object(await self.json_body(limits), "body")
        unknown = sorted(set(body) - {"input_data", "parameters"})
        if unknown:
            raise unknown_key(unknown[0], ["input_data", "parameters"], "key")
        parameters = json_object(body.get("parameters", {}), "parameters")
        try:  # prompt and negative_prompt pass: the check below says they belong in input_data
            VOCABULARY.reject_unknown(parameters)
        except InvalidRequest as error:
            raise error.within("parameters.") from None
        clash = sorted(set(parameters) & set(COLUMNS))
        if clash:
            raise InvalidRequest(f"parameters.{clash[0]}", "is a column: give it in input_data")
        columns, rows = _columns_and_rows(json_object(body.get("input_data"), "input_data"))
        if len(rows) > limits.max_images_per_call:  # an image per row: the rows are what the caller must cut
            raise InvalidRequest("input_data.data", f"has {len(rows)} rows, an image each; this deployment makes at "
                                                    f"most {limits.max_images_per_call} per call")
        requests = []
        for index, row in enumerate(rows):
            values = row if isinstance(row, list) else [row] if len(columns) == 1 else None
            if values is None or len(values) != len(columns):
                raise InvalidRequest(f"input_data.data[{index}]", f"must hold a value per column ({len(columns)})")
            try:
                requests.append(VOCABULARY.request({**parameters, **dict(zip(columns, values))}, limits, len(requests)))
            except InvalidRequest as error:
                raise error.within(f"input_data.data[{index}]." if error.field in COLUMNS else "parameters.") from None
        return Parsed(requests)

    def answer(self, parsed, generations, jpeg_quality) -> JSONResponse:
        images = encode_all(generations, to_base64, "jpeg", jpeg_quality)
        return JSONResponse([
            {"prompt": request.prompt, "generated_image": image,
             "nsfw_content_detected": generation.filtered[0] if generation.safety_checked else None}
            for request, generation, (image,) in zip(parsed.requests, generations, images)
        ])

    def error_body(self, error: InvalidRequest) -> dict:
        code = HTTPStatus(error.http_status).phrase.replace(" ", "")  # BadRequest, Unauthorized, ...
        return {"error": {"code": code, "message": str(error), "target": error.field}}


def _columns_and_rows(input_data: dict) -> tuple[list[str], list]:
    """pandas' "split" orientation, as Azure ML sends it; the row labels (`index`) must match but are not used."""
    unknown = sorted(set(input_data) - {"columns", "data", "index"})
    if unknown:
        raise unknown_key(unknown[0], ["columns", "data", "index"], "key").within("input_data.")
    columns, rows = input_data.get("columns", ["prompt"]), input_data.get("data")
    if (not isinstance(columns, list) or not all(isinstance(column, str) for column in columns)
            or "prompt" not in columns or not set(columns) <= set(COLUMNS) or len(set(columns)) < len(columns)):
        raise InvalidRequest("input_data.columns", f"must list prompt, and negative_prompt when given; got "
                                                   f"{excerpt(columns)}")
    if not isinstance(rows, list) or not rows:
        raise InvalidRequest("input_data.data", "must be a list with a row per image")
    labels = input_data.get("index", rows)
    if not isinstance(labels, list) or len(labels) != len(rows):
        raise InvalidRequest("input_data.index", "must be a list with an item per row of data")
    return columns, rows
