"""Edits through the real Ray Serve HTTP proxy: the plain /predict body and Instill's flat HTTP form take an
image and a mask as data URIs; a bad picture is a 4xx naming its field, and the replica keeps serving."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from served import MODEL, http

pytestmark = pytest.mark.slow
SIZE = (256, 256)  # the demo weights' native 1:1 size
Y, X = np.mgrid[0 : SIZE[1], 0 : SIZE[0]]
PHOTO = Image.fromarray(np.stack([X, Y, (X + Y) // 2], axis=-1).astype(np.uint8))  # smooth: JPEG keeps it closely
MASK = Image.new("L", SIZE, 0)
MASK.paste(255, (0, 0, 128, 256))  # the left half repaints; 128 is on JPEG's block grid, no block holds both
JPEG_ERROR = 3  # mean level difference JPEG at quality 95 leaves on PHOTO is 0.5; the demo weights paint noise


def data_uri(picture: Image.Image) -> str:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def picture(uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.partition(",")[2]))).convert("RGB"), dtype=np.int16)


EDIT = {"prompt": "a watercolour harbour", "image": data_uri(PHOTO), "mask": data_uri(MASK), "seed": 8,
        "num_inference_steps": 4}


def test_predict_inpaints_keeping_the_unmasked_pixels_and_says_the_mode_and_size(cluster):
    status, reply, _ = http(cluster.ports, f"{MODEL}/predict", EDIT)
    assert status == 200, reply
    assert (reply["mode"], reply["width"], reply["height"], reply["seeds"]) == ("inpainting", 256, 256, [8])
    out, photo = picture(reply["images"][0]), np.asarray(PHOTO, dtype=np.int16)
    kept, repainted = np.abs(out[:, 128:] - photo[:, 128:]).mean(), np.abs(out[:, :128] - photo[:, :128]).mean()
    assert kept < JPEG_ERROR < repainted, (kept, repainted)
    status, again, _ = http(cluster.ports, f"{MODEL}/predict", EDIT)
    assert status == 200 and again["images"] == reply["images"]  # same seed, same bytes


def test_instill_flat_form_edits_and_its_usage_says_the_mode_strength_and_sizes(cluster):
    wide = PHOTO.resize((300, 200))
    status, outputs, _ = http(cluster.ports, MODEL, {"prompt": "a harbour", "image": data_uri(wide), "strength": 0.5,
                                                     "steps": 4, "seed": 2})
    assert status == 200, outputs
    usage = outputs[0]["metadata"]["usage"]
    assert (usage["mode"], usage["strength"], usage["input-size"]) == ("image-to-image", 0.5, [300, 200])
    assert (usage["width"], usage["height"]) == (304, 208)  # the demo weights' 3:2


@pytest.mark.parametrize(("fields", "field"), [
    ({"image": "data:image/png;base64,bm90IGEgcGljdHVyZQ=="}, "image"),
    ({"image": data_uri(PHOTO), "mask": data_uri(Image.new("L", SIZE, 0))}, "mask"),
    ({"image": data_uri(PHOTO), "strength": 2}, "strength"),
])
def test_a_bad_picture_is_a_4xx_naming_the_field_and_the_replica_keeps_serving(cluster, fields, field):
    status, reply, _ = http(cluster.ports, f"{MODEL}/predict", {"prompt": "a harbour", **fields})
    assert status == 400 and reply["field"] == field and "base64," not in reply["error"]
    status, reply, _ = http(cluster.ports, f"{MODEL}/predict", {"prompt": "a harbour", "image": data_uri(PHOTO),
                                                                "strength": 0.0})
    assert status == 200 and reply["mode"] == "image-to-image"
