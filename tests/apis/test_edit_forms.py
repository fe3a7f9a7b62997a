"""The edit routes' parsing and refusals before the engine, without Ray: OpenAI's multipart form (typed fields,
the mask's transparency, its byte limits) and cog's pictures. tests/apis/test_edit_routes.py drives the same
routes through Ray Serve with the official client."""

import base64
import io
import json
import logging
import os

import numpy as np
import pytest
from PIL import Image
from urllib3 import encode_multipart_formdata

from dialect_calls import dialect_reply, raw_reply
from stable_diffusion_xl.serving.limits import Limits
from stable_diffusion_xl.weights.library_logs import quiet_library_logs

EDITS, PROMPT = "v1/images/edits", "a lighthouse in a storm"
SMALL_UPLOADS = Limits(max_upload_mb=1, max_body_bytes=1024)  # a form of at most 2 MiB + 1 KiB


def png(size=(64, 48), mode="RGB", colour=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, colour).save(out, "PNG")
    return out.getvalue()


def left_half_transparent(size=(64, 48)) -> bytes:
    """OpenAI's mask: the left half transparent (repaint), the right half opaque (keep)."""
    mask = Image.new("RGBA", size, (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, size[0] // 2, size[1]))
    out = io.BytesIO()
    mask.save(out, "PNG")
    return out.getvalue()


def edit_form(parts: list, limits: Limits | None = None, chunk: int | None = None, headers: dict | None = None):
    """(status, body, requests) of the edits route given form `parts`: (name, text) or (name, (file, bytes))."""
    body, content_type = encode_multipart_formdata([
        (name, (value[0], value[1], "image/png") if isinstance(value, tuple) else value) for name, value in parts])
    return raw_reply(EDITS, body, {"content-type": content_type, **(headers or {})}, limits, chunk=chunk)


IMAGE = ("image", ("photo.png", png()))


def test_a_form_as_the_sdk_sends_it_gives_one_image_to_image_request_with_its_fields_typed():
    parts = [IMAGE, ("prompt", PROMPT), ("n", "2"), ("seed", "7"), ("guidance_scale", "6.5"), ("refiner", "false"),
             ("negative_prompt", "fog"), ("model", "gpt-image-1"), ("user", "someone"), ("response_format", "b64_json")]
    status, _, (request,) = edit_form(parts)
    assert status == 200 and request.mode == "image-to-image" and request.strength == 0.8
    assert (request.n, request.seed, request.guidance_scale, request.refiner) == (2, 7, 6.5, False)
    assert request.pictures["image"].size == (64, 48) and request.aspect_ratio == "5:4"  # the picture's nearest shape


def test_the_masks_transparent_pixels_become_the_white_the_engine_repaints():
    parts = [IMAGE, ("mask", ("mask.png", left_half_transparent())), ("prompt", PROMPT), ("strength", "0.5")]
    status, _, (request,) = edit_form(parts)
    assert status == 200 and request.mode == "inpainting" and request.strength == 0.5
    mask = np.asarray(request.pictures["mask"])
    assert mask.shape == (48, 64) and (mask[:, :32] == 255).all() and (mask[:, 32:] == 0).all()


def test_an_all_transparent_mask_repaints_the_whole_picture():
    parts = [IMAGE, ("mask", ("mask.png", png(mode="RGBA", colour=(0, 0, 0, 0)))), ("prompt", PROMPT)]
    status, _, (request,) = edit_form(parts)
    assert status == 200 and request.mode == "inpainting" and np.asarray(request.pictures["mask"]).min() == 255


@pytest.mark.parametrize(("parts", "param", "words"), [
    ([("prompt", PROMPT)], "image", "is required"),
    ([("image[]", ("a.png", png())), ("image[]", ("b.png", png())), ("prompt", PROMPT)], "image", "got 2"),
    ([("image", ("photo.png", b"GIF89a but not really")), ("prompt", PROMPT)], "image", "is not a picture"),
    ([("image", "data:image/png;base64,AAAA"), ("prompt", PROMPT)], "image", "must be a file upload"),
    ([IMAGE, ("mask", ("mask.png", png())), ("prompt", PROMPT)], "mask", "has no transparency"),
    ([IMAGE, ("mask", ("mask.png", png(mode="RGBA", colour=(0, 0, 0, 255)))), ("prompt", PROMPT)], "mask",
     "marks nothing to repaint"),
    ([IMAGE, ("mask", ("mask.png", left_half_transparent((32, 32)))), ("prompt", PROMPT)], "mask", "32x32"),
    ([IMAGE, ("prompt", PROMPT), ("strength", "1.5")], "strength", "must be from 0.0 to 1.0"),
    ([IMAGE, ("prompt", PROMPT), ("steps", "many")], "steps", 'must be an integer, got "many"'),
    ([IMAGE, ("prompt", PROMPT), ("size", "1024x1024")], "size", "made at 1152x896; send auto or 1152x896"),
    ([IMAGE, ("prompt", PROMPT), ("markup", "x")], "markup", "is not served"),
    ([IMAGE, ("prompt", PROMPT), ("seed", "1"), ("seed", "2")], "seed", "more than once"),
    ([IMAGE], "prompt", "is required"),
    ([IMAGE, ("prompt", PROMPT), ("output_compression", "most")], "output_compression", "from 0 to 100"),
    ([IMAGE, ("prompt", PROMPT), ("stream", "true")], "stream", "must be false"),
    ([IMAGE, ("prompt", PROMPT), ("background", "transparent")], "background", "opaque"),
])
def test_bad_forms_are_a_400_in_openais_shape_naming_the_field(parts, param, words):
    status, reply, _ = edit_form(parts)
    assert (status, reply["error"]["param"], reply["error"]["type"]) == (400, param, "invalid_request_error")
    assert words in reply["error"]["message"]


def test_a_json_body_is_refused_naming_the_body():
    status, reply = dialect_reply(EDITS, {"prompt": PROMPT, "image": "data:image/png;base64,AAAA"})
    assert (status, reply["error"]["param"]) == (400, "body") and "multipart/form-data" in reply["error"]["message"]


def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_read():
    status, reply, _ = edit_form([IMAGE, ("prompt", PROMPT)], SMALL_UPLOADS, headers={"content-length": str(3 << 20)})
    assert (status, reply["error"]["param"]) == (413, "body") and "SDXL_MAX_UPLOAD_MB" in reply["error"]["message"]


def test_a_body_without_a_length_is_refused_once_it_passes_the_limit():
    parts = [("image", ("photo.png", os.urandom(3 << 20))), ("prompt", PROMPT)]  # a decode would refuse `image`
    status, reply, _ = edit_form(parts, SMALL_UPLOADS, chunk=64 << 10)
    assert (status, reply["error"]["param"]) == (413, "body")


def test_a_picture_over_the_limit_in_a_form_under_it_is_refused_naming_the_picture():
    status, reply, _ = edit_form([("image", ("photo.png", os.urandom(3 << 19))), ("prompt", PROMPT)], SMALL_UPLOADS)
    assert (status, reply["error"]["param"]) == (413, "image") and "SDXL_MAX_UPLOAD_MB" in reply["error"]["message"]


def test_a_malformed_upload_is_refused_without_a_library_line_quoting_its_bytes(caplog):
    quiet_library_logs()  # as the replica does when it imports the model
    with caplog.at_level(logging.DEBUG):
        status, reply, _ = raw_reply(EDITS, b"\x00\xff" * 100, {"content-type": "multipart/form-data; boundary=abc"})
    assert (status, reply["error"]["param"]) == (400, "body")
    assert [record.getMessage() for record in caplog.records if record.name.startswith("python_multipart")] == []


def test_the_generations_route_refuses_an_image_naming_it():
    status, reply = dialect_reply("v1/images/generations", {"prompt": PROMPT, "image": "data:image/png;base64,AAAA"})
    assert (status, reply["error"]["param"]) == (400, "image") and "text only" in reply["error"]["message"]


# cog: the pictures are data URIs or base64 in the JSON input

def data_uri(picture: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(picture).decode()


def cog(fields: dict) -> tuple[int, dict]:
    status, reply = dialect_reply("predictions", {"input": {"prompt": PROMPT, **fields}})
    return status, reply


def test_cog_takes_image_mask_and_prompt_strength_and_ignores_its_default_size_with_an_image():
    mask = Image.new("L", (64, 48), 0)
    mask.paste(255, (0, 0, 16, 16))
    out = io.BytesIO()
    mask.save(out, "PNG")
    fields = {"image": data_uri(png()), "mask": base64.b64encode(out.getvalue()).decode(), "prompt_strength": 0.6,
              "width": 1024, "height": 1024}
    payload = {"input": {"prompt": PROMPT, **fields}}
    _, _, (request,) = raw_reply("predictions", json.dumps(payload).encode(), {"content-type": "application/json"})
    assert (request.mode, request.strength, request.aspect_ratio) == ("inpainting", 0.6, "5:4")
    mask = np.asarray(request.pictures["mask"])
    assert mask[:16, :16].min() == 255 and mask[16:].max() == 0


def test_cog_without_an_image_leaves_its_default_prompt_strength_unused():
    assert cog({"prompt_strength": 0.8})[0] == 200


@pytest.mark.parametrize(("fields", "location", "words"), [
    ({"image": "https://example.com/a.png"}, "image", "is a URL, and this deployment fetches nothing"),
    ({"image": data_uri(png()), "mask": "http://example.com/m.png"}, "mask", "is a URL"),
    ({"mask": data_uri(png())}, "mask", "needs an `image`"),
    ({"image": data_uri(png()), "prompt_strength": 1.2}, "prompt_strength", "must be from 0.0 to 1.0"),
    ({"image": "bm90IGFuIGltYWdl"}, "image", "is not a picture"),
])
def test_cog_refuses_bad_pictures_with_a_422_locating_the_field(fields, location, words):
    status, reply = cog(fields)
    (detail,) = reply["detail"]
    assert status == 422 and detail["loc"] == ["body", "input", location] and words in detail["msg"]
