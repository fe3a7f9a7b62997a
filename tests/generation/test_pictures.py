"""Input pictures: what is decoded, converted or refused, and each refusal names its field (docs/edits.md)."""

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from dialect_calls import dialect_reply
from stable_diffusion_xl.apis.instill import parse_json
from stable_diffusion_xl.apis.trainings import json_fields
from stable_diffusion_xl.fields import InvalidRequest
from stable_diffusion_xl.generation.pictures import (
    UploadLimits,
    decode_base64,
    decode_picture,
    fit_mask,
    fit_picture,
    mask_from_alpha,
)
from stable_diffusion_xl.generation.request import TextToImageRequest
from stable_diffusion_xl.generation.sizes import nearest_aspect_ratio
from stable_diffusion_xl.serving.limits import Limits

SIZE = (96, 64)


def encoded(picture: Image.Image, image_format: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def data_uri(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


PHOTO = Image.fromarray(np.random.default_rng(1).integers(0, 256, (SIZE[1], SIZE[0], 3), dtype=np.uint8))
MASK = Image.new("L", SIZE, 0)
MASK.paste(255, (0, 0, 48, 32))
IMAGE = data_uri(encoded(PHOTO))


def parsed(**fields) -> TextToImageRequest:
    (request,) = parse_json({"prompt": "a cat", **fields}, Limits())
    return request


def test_an_image_makes_image_to_image_and_a_mask_inpainting_with_their_default_strengths():
    edit = parsed(image=IMAGE)
    image = edit.pictures["image"]
    assert (edit.mode, edit.strength, image.mode, image.size) == ("image-to-image", 0.8, "RGB", SIZE)
    assert np.array_equal(np.asarray(edit.pictures["image"]), np.asarray(PHOTO))
    painted = parsed(image=IMAGE, mask=base64.b64encode(encoded(MASK)).decode(), strength=0.5)  # bare base64
    assert (painted.mode, painted.strength, painted.pictures["mask"].mode) == ("inpainting", 0.5, "L")
    assert parsed().mode == "text-to-image" and parsed().strength is None


def test_the_aspect_ratio_follows_the_image_and_the_fit_crops_never_stretches():
    assert parsed(image=IMAGE, **{"aspect-ratio": "9:16"}).aspect_ratio == "3:2"  # 96x64 is 3:2
    assert nearest_aspect_ratio(1024, 1024) == "1:1" and nearest_aspect_ratio(640, 1536) == "9:21"
    assert nearest_aspect_ratio(4000, 3000) == "5:4" and nearest_aspect_ratio(10, 1) == "21:9"
    wide = Image.new("RGB", (200, 100), "white")
    wide.paste((255, 0, 0), (0, 0, 20, 100))  # a red band at the left edge, outside the centred crop
    fitted = fit_picture(wide, (100, 100))
    assert fitted.size == (100, 100) and fitted.getpixel((0, 50)) == (255, 255, 255)
    assert fit_picture(PHOTO, SIZE).tobytes() == PHOTO.tobytes()  # a native size already: pixel for pixel
    assert set(fit_mask(MASK.resize((48, 32)), SIZE).getdata()) == {0, 255}  # binarized after resizing


@pytest.mark.parametrize("mode", ["CMYK", "P", "LA", "RGBA", "I;16", "1", "L"])
def test_other_modes_are_converted_to_rgb(mode):
    picture = Image.new(mode, SIZE)
    image_format = "JPEG" if mode == "CMYK" else "PNG"
    assert parsed(image=data_uri(encoded(picture, image_format))).pictures["image"].mode == "RGB"


def test_transparency_is_laid_on_white_in_an_image_and_counts_as_keep_in_a_mask():
    clear = Image.new("RGBA", SIZE, (0, 0, 0, 0))
    assert parsed(image=data_uri(encoded(clear))).pictures["image"].getpixel((0, 0)) == (255, 255, 255)
    strokes = clear.copy()
    strokes.paste((255, 255, 255, 255), (0, 0, 10, 10))  # white strokes on a transparent sheet, as a canvas saves
    mask = parsed(image=IMAGE, mask=data_uri(encoded(strokes))).pictures["mask"]
    assert mask.getpixel((0, 0)) == 255 and mask.getpixel((50, 50)) == 0


def test_sixteen_bit_grey_is_scaled_not_clipped():
    grey = Image.fromarray(np.full((SIZE[1], SIZE[0]), 32768, dtype=np.uint16))
    assert parsed(image=data_uri(encoded(grey))).pictures["image"].getpixel((0, 0)) == (127, 127, 127)


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: the stored 96x64 picture shows as 64x96
    assert parsed(image=data_uri(encoded(PHOTO, "JPEG", exif=exif), "image/jpeg")).pictures["image"].size == (64, 96)


def test_openai_masks_repaint_where_transparent():
    sheet = Image.new("RGBA", SIZE, (0, 0, 0, 255))
    sheet.paste((0, 0, 0, 0), (0, 0, 10, 10))
    mask = mask_from_alpha(sheet, "mask")
    assert mask.getpixel((0, 0)) == 255 and mask.getpixel((50, 50)) == 0
    with pytest.raises(InvalidRequest, match="mask: has no transparency"):
        mask_from_alpha(PHOTO, "mask")


ANIMATED = encoded(PHOTO, "GIF", save_all=True, append_images=[Image.new("RGB", SIZE)])


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"image": data_uri(b"not a picture at all")}, "image", "is not a picture this deployment reads"),
        ({"image": "%%% not base64 %%%"}, "image", "must be a data URI or base64"),
        ({"image": "data:image/png,rawbytes"}, "image", "without `;base64,`"),
        ({"image": data_uri(encoded(PHOTO)[:300])}, "image", "truncated or corrupt"),
        ({"image": data_uri(ANIMATED)}, "image", "is animated (2 frames)"),
        ({"image": data_uri(encoded(PHOTO, "TIFF"))}, "image", "is not a picture this deployment reads"),
        ({"image": 12}, "image", "must be a data URI or base64 text, got 12"),
        ({"image": IMAGE, "mask": data_uri(encoded(MASK.resize((48, 32))))}, "mask",
         "is 48x32, the image 96x64"),
        ({"image": IMAGE, "mask": data_uri(encoded(Image.new("L", SIZE, 0)))}, "mask", "marks nothing to repaint"),
        ({"image": IMAGE, "mask": data_uri(encoded(Image.new("RGBA", SIZE, (255, 255, 255, 0))))}, "mask",
         "marks nothing to repaint"),  # all transparent: all kept
        ({"mask": data_uri(encoded(MASK))}, "mask", "needs an `image`"),
        ({"strength": 0.5}, "strength", "applies to an input `image`"),
        ({"image": IMAGE, "strength": 1.5}, "strength", "from 0.0 to 1.0"),
        ({"image": IMAGE, "strength": -0.1}, "strength", "from 0.0 to 1.0"),
    ],
)
def test_bad_pictures_are_refused_naming_the_field_and_never_echoed(fields, field, words):
    with pytest.raises(InvalidRequest) as caught:
        parsed(**fields)
    assert caught.value.field == field and words in caught.value.reason, str(caught.value)
    assert caught.value.http_status == 400 and len(str(caught.value)) < 200


def test_uploads_are_bounded_in_bytes_before_decoding_and_in_pixels_before_the_pixels_are():
    small = UploadLimits(max_bytes=1000, max_pixels=10_000)
    with pytest.raises(InvalidRequest) as caught:
        decode_picture("A" * 2000, "image", small)  # never decoded: the text alone says it is too large
    assert caught.value.http_status == 413 and "SDXL_MAX_UPLOAD_MB" in caught.value.reason
    # A PNG of 40 megapixels in a few kB: refused from its header, before 120 MB of pixels are decoded.
    bomb = encoded(Image.new("L", (8000, 5000)), optimize=True)
    with pytest.raises(InvalidRequest, match="8000x5000 pixels") as caught:
        decode_picture(bomb, "image", UploadLimits(max_pixels=10_000_000))
    assert caught.value.http_status == 413


def test_plain_predict_and_the_instill_flat_form_take_pictures_and_the_envelope_refuses_them():
    assert dialect_reply("predict", {"prompt": "a cat", "image": IMAGE, "strength": 0.4}) == (200, {"requests": 1})
    assert dialect_reply("", {"prompt": "a cat", "image": IMAGE}) == (200, {"requests": 1})
    status, body = dialect_reply("", {"data": {"prompt": "a cat", "image": IMAGE}})
    assert status == 400 and body["field"] == "data.image" and "text only" in body["error"]
    status, body = dialect_reply("", {"data": {"prompt": "a cat"}, "parameter": {"image": IMAGE}})
    assert status == 400 and body["field"] == "parameter.image"


def test_a_body_with_pictures_may_pass_the_body_limit_but_each_picture_is_held_to_the_upload_limit():
    limits = Limits(max_body_bytes=1024, max_upload_mb=1)
    large = data_uri(encoded(Image.new("RGB", (1024, 1024)), "BMP"))  # 3 MB
    status, body = dialect_reply("predict", {"prompt": "a cat", "image": large}, limits=limits)
    assert status == 413 and body["field"] == "body"  # larger than 1 kB + two 1 MB pictures in base64
    almost = data_uri(b"\0" * (1 << 20) + b"\0" * 1000)
    status, body = dialect_reply("predict", {"prompt": "a cat", "image": almost}, limits=limits)
    assert status == 413 and body["field"] == "image" and "at most 1 MB" in body["error"]
    assert dialect_reply("predict", {"prompt": "a cat", "image": IMAGE}, limits=limits) == (200, {"requests": 1})


def test_base64_wrapped_in_lines_and_an_upper_case_data_scheme_are_taken_for_pictures_and_training_photos():
    """RFC 2045's 76-column lines (what the `base64` command writes) and RFC 2397's case-insensitive scheme."""
    data = encoded(PHOTO)
    wrapped = base64.encodebytes(data).decode()  # 76 columns, \n after each line
    assert "\n" in wrapped.strip()
    for text in (wrapped, f"DATA:image/png;BASE64,{wrapped}", f"Data:Image/PNG;base64,\r\n{wrapped}"):
        assert decode_picture(text, "image").tobytes() == PHOTO.tobytes()
    photos, _ = json_fields(json.dumps({"images": [f"DATA:IMAGE/PNG;base64,{wrapped}"] * 2}).encode())
    assert photos == [("photo-0.png", data), ("photo-1.png", data)]
    with pytest.raises(InvalidRequest, match=r"^images\[0\]: must be a base64 data URI"):
        json_fields(json.dumps({"images": [wrapped]}).encode())  # the JSON route takes data URIs only


def test_the_size_limit_counts_the_decoded_bytes_not_the_line_breaks():
    for data in (encoded(PHOTO), encoded(PHOTO) + b"\0", encoded(PHOTO) + b"\0\0"):  # padded with 0, 1 and 2 "="
        wrapped = base64.encodebytes(data).decode()
        assert decode_base64(wrapped, "image", max_bytes=len(data))[1] == data
        with pytest.raises(InvalidRequest, match="SDXL_MAX_UPLOAD_MB"):
            decode_base64(wrapped, "image", max_bytes=len(data) - 1)
