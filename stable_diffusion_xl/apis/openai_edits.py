"""OpenAI's image edits: `POST /v1/images/edits`, multipart/form-data as the official SDKs send it
(`client.images.edit(image=..., mask=..., prompt=...)`), answered as `/v1/images/generations` is.

- `image`: one picture file. The SDKs send a list as `image[]` parts (gpt-image models take up to 16 reference
  pictures); SDXL edits one picture, so more than one is refused naming `image`, never silently dropped.
- `mask` (optional): a PNG whose transparent pixels mark what to repaint, OpenAI's convention: converted to the
  engine's (white repaints, black keeps). A mask without an alpha channel marks nothing and is refused naming
  `mask`; an all-opaque one marks nothing to repaint and is refused too. An all-transparent one repaints the
  whole picture, as OpenAI does. With a mask the edit is inpainting, without one image-to-image.
- `size`: `auto` (the default) or the native SDXL size the picture fits to; the picture's shape decides the
  size (the answer's `size` says which), so any other size is refused naming the one that would be served.
- SDXL's own parameters (`seed`, `steps`, `strength`, `negative_prompt`, `lora`, ...) are extra form fields,
  which the SDKs send with `extra_body` (a list as `name[]` parts). Form fields arrive as text: each is read as
  its parameter's type, and the request's own checks name it when it is not one.

The whole body (pictures and fields) is bounded by SDXL_MAX_UPLOAD_MB before it is read, and each picture by
the same limit before it is decoded. Errors are OpenAI's shape, as the generations route's.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from ..fields import FLAG, INTEGER, InvalidRequest, spec_of
from ..generation.pictures import as_image, decode_picture, mask_from_alpha
from ..generation.request import PARAMETERS
from ..generation.sizes import NATIVE_SIZES, nearest_aspect_ratio
from ..serving.limits import Limits
from ..serving.transport import Parsed, Upload
from .openai_images import OpenAIImages, take_options
from .vocabulary import Vocabulary

# OpenAI's edit fields that mean nothing to SDXL, taken (as strings) so that a client's existing call works.
IGNORED = ("model", "user", "quality", "input_fidelity", "safety_identifier")
NOT_SERVED = {"markup": "is not served: paint what to repaint as the transparent pixels of `mask`",
              "partial_images": "is not served: this deployment answers with the finished images"}
FILES = ("image", "mask")
VOCABULARY = Vocabulary({}, without=["aspect-ratio"], pictures=True,
                        own=["size", "response_format", "output_format", "output_compression",
                             "stream", "background", *IGNORED])
UPLOAD_SETTINGS = "SDXL_MAX_UPLOAD_MB for each of image and mask, SDXL_MAX_BODY_BYTES for the fields"


class OpenAIEdits(OpenAIImages):
    """`POST /v1/images/edits`: the answer of `/v1/images/generations` (`created`, `data`, `size`,
    `output_format`, `seeds`)."""

    title = "OpenAI image edits"

    async def parse(self, limits: Limits) -> Parsed:
        parts = await self.form_body(limits, upload_bytes(limits), UPLOAD_SETTINGS)
        fields, files = form_fields(parts)
        for name in NOT_SERVED:
            if name in fields or name in files:
                raise InvalidRequest(name, NOT_SERVED[name])
        VOCABULARY.reject_unknown({**fields, **files})
        for name, kind in (("output_compression", INTEGER), ("stream", FLAG)):  # form text, as JSON would carry it
            if name in fields:
                fields[name] = kind.read(fields[name])
        size, reply = take_options(fields, IGNORED)
        image, mask = pictures(files, limits)
        served = "{}x{}".format(*NATIVE_SIZES[nearest_aspect_ratio(*image.size)])
        if size not in ("auto", served):
            raise InvalidRequest("size", f"is {size}, but an edit keeps the picture's shape: this one is made at "
                                         f"{served}; send auto or {served}")
        return Parsed([VOCABULARY.request(typed(fields), limits, settled={"image": image, "mask": mask})], reply)

    def answer_body(self, parsed, generations, jpeg_quality) -> dict:
        """The generations answer, with the edit's mode and strength."""
        (request,) = parsed.requests
        return {**super().answer_body(parsed, generations, jpeg_quality), "mode": request.mode,
                "strength": request.strength}


def upload_bytes(limits: Limits) -> int:
    """The largest form this route reads: an image and a mask as files (not base64), and the fields."""
    return 2 * limits.uploads.max_bytes + limits.max_body_bytes


def pictures(files: dict[str, list[bytes]], limits: Limits) -> tuple[Image.Image, Image.Image | None]:
    """The one image (RGB) and the optional mask, converted from OpenAI's convention (transparent repaints) to
    the engine's ("L", white repaints)."""
    images, masks = files.get("image", []), files.get("mask", [])
    if not images:
        raise InvalidRequest("image", "is required: the picture to edit, as a file")
    for name, sent in (("image", images), ("mask", masks)):
        if len(sent) > 1:
            raise InvalidRequest(name, f"takes one picture, got {len(sent)}: SDXL edits one picture at a time")
    image = as_image(decode_picture(images[0], "image", limits.uploads), "image")
    mask = mask_from_alpha(decode_picture(masks[0], "mask", limits.uploads), "mask") if masks else None
    return image, mask


def form_fields(parts: list[tuple[str, str | Upload]]) -> tuple[dict[str, Any], dict[str, list[bytes]]]:
    """The form's text fields ({name: text}, or {name: [texts]} for `name[]` parts) and its files
    ({name: [contents]}, `image[]` under `image`). A field sent twice without `[]` is refused naming it."""
    fields: dict[str, Any] = {}
    files: dict[str, list[bytes]] = {}
    for name, value in parts:
        base, listed = (name[:-2], True) if name.endswith("[]") else (name, False)
        if isinstance(value, Upload):
            if base not in FILES:
                raise InvalidRequest(base, "is a file; only image and mask are uploads")
            files.setdefault(base, []).append(value.data)
        elif base in FILES:
            raise InvalidRequest(base, "must be a file upload (multipart with a filename), not a text field")
        elif listed:
            fields.setdefault(base, [])
            if not isinstance(fields[base], list):
                raise InvalidRequest(base, "is given both as a list and as one value")
            fields[base].append(value)
        elif base in fields:
            raise InvalidRequest(base, "is given more than once")
        else:
            fields[base] = value
    return fields, files


def typed(fields: dict[str, Any]) -> dict[str, Any]:
    """SDXL's parameters, sent as form text, read as their types; text that is not one stays text, for the
    request's own check to name."""
    values = {}
    for name, value in fields.items():
        member = PARAMETERS.get(VOCABULARY.to_ours.get(name, ""))
        read = spec_of(member).from_text if member else str
        values[name] = [read(item) for item in value] if isinstance(value, list) else read(value)
    return values


