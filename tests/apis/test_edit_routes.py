"""Edits through the real Ray Serve HTTP proxy: OpenAI's /v1/images/edits driven by the official `openai` client
(with and without a mask), cog's /predictions with image, mask and prompt_strength, and the plain /predict body.
For one seed each route makes the same image; each bad input is a 4xx in the route's own shape naming the field,
and the replica goes on serving."""

import base64
import io
import socket

import numpy as np
import openai
import pytest
from PIL import Image

from served import MODEL, http, raw_reply

pytestmark = pytest.mark.slow
PROMPT, SEED = "a lighthouse in a storm", 33
EDIT = {"seed": SEED, "steps": 4, "strength": 0.5}  # half of 4 steps: 2 UNet calls
SIZE = (256, 256)  # the demo weights' native 1:1 size: a picture of this size is used pixel for pixel
PHOTO = Image.fromarray(np.random.default_rng(7).integers(0, 256, (*SIZE, 3), dtype=np.uint8))
REPAINTED = np.zeros(SIZE, dtype=bool)
REPAINTED[:, : SIZE[0] // 2] = True  # the left half


def png(picture: Image.Image) -> bytes:
    out = io.BytesIO()
    picture.save(out, "PNG")
    return out.getvalue()


def openai_mask() -> bytes:
    """OpenAI's convention: transparent (alpha 0) repaints, opaque keeps."""
    alpha = Image.fromarray(np.where(REPAINTED, 0, 255).astype(np.uint8))
    mask = Image.new("RGBA", SIZE, (0, 0, 0, 255))
    mask.putalpha(alpha)
    return png(mask)


def cog_mask() -> bytes:
    """cog-sdxl's convention, and the plain body's: white repaints, black keeps."""
    return png(Image.fromarray(np.where(REPAINTED, 255, 0).astype(np.uint8)))


def data_uri(picture: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(picture).decode()


def decoded(payload: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(payload.partition("base64,")[2] or payload, validate=True)))


@pytest.fixture(scope="module")
def client(cluster):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{cluster.ports.http}/{MODEL}/v1", api_key="not-needed",
                         max_retries=0, timeout=300)


def test_openai_edit_without_a_mask_restyles_the_picture_at_its_size(client):
    response = client.images.edit(image=("photo.png", png(PHOTO), "image/png"), prompt=PROMPT,
                                  response_format="b64_json", extra_body=EDIT)
    (item,) = response.data
    image = decoded(item.b64_json)
    assert image.format == "PNG" and image.size == SIZE and response.size == "256x256"
    assert (response.mode, response.strength, response.seeds) == ("image-to-image", 0.5, [SEED])
    assert np.asarray(image).tobytes() != PHOTO.tobytes()


def test_openai_edit_with_a_mask_repaints_its_transparent_part_and_keeps_the_rest_exactly(client):
    response = client.images.edit(image=("photo.png", png(PHOTO), "image/png"),
                                  mask=("mask.png", openai_mask(), "image/png"), prompt=PROMPT, n=2, size="auto",
                                  extra_body={**EDIT, "guidance_scale": 6})
    assert response.mode == "inpainting" and response.seeds == [SEED, SEED + 1]
    photo = np.asarray(PHOTO)
    for item in response.data:
        out = np.asarray(decoded(item.b64_json))
        assert np.array_equal(out[~REPAINTED], photo[~REPAINTED])  # a PNG answer: the kept half, pixel for pixel
        assert (out[REPAINTED] != photo[REPAINTED]).any(axis=-1).mean() > 0.9


def test_cog_prediction_with_image_mask_and_prompt_strength_says_its_mode(cluster):
    cog_input = {"prompt": PROMPT, "image": data_uri(png(PHOTO)), "mask": data_uri(cog_mask()),
                 "prompt_strength": EDIT["strength"], "seed": SEED, "num_inference_steps": EDIT["steps"],
                 "width": 1024, "height": 1024}  # cog clients send their default size; the picture's is used
    status, prediction, _ = http(cluster.ports, f"{MODEL}/predictions", {"input": cog_input})
    assert status == 200 and prediction["status"] == "succeeded"
    assert prediction["logs"].startswith("inpainting mode, 256x256\n")
    assert decoded(prediction["output"][0]).size == SIZE


# The same edit through each route: JPEG answers (OpenAI's output_format jpeg, at the deployment's quality, as
# cog's, the plain body's and Instill's are), compared byte for byte.

def openai_jpeg(cluster, client) -> bytes:
    response = client.images.edit(image=("photo.png", png(PHOTO), "image/png"),
                                  mask=("mask.png", openai_mask(), "image/png"), prompt=PROMPT, output_format="jpeg",
                                  extra_body=EDIT)
    return base64.b64decode(response.data[0].b64_json)


def cog_jpeg(cluster, client) -> bytes:
    cog_input = {"prompt": PROMPT, "image": data_uri(png(PHOTO)), "mask": data_uri(cog_mask()),
                 "prompt_strength": EDIT["strength"], "seed": SEED, "num_inference_steps": EDIT["steps"]}
    return base64.b64decode(http(cluster.ports, f"{MODEL}/predictions", {"input": cog_input})[1]["output"][0]
                            .partition(",")[2])


def plain_jpeg(cluster, client) -> bytes:
    body = {"prompt": PROMPT, "image": data_uri(png(PHOTO)), "mask": data_uri(cog_mask()),
            "num_inference_steps": EDIT["steps"], "seed": SEED, "strength": EDIT["strength"]}
    status, reply, _ = http(cluster.ports, f"{MODEL}/predict", body)
    assert status == 200 and reply["mode"] == "inpainting"
    return base64.b64decode(reply["images"][0].partition(",")[2])


def instill_jpeg(cluster, client) -> bytes:
    """The flat Instill body, as the page sends it."""
    body = {"prompt": PROMPT, "image": data_uri(png(PHOTO)), "mask": data_uri(cog_mask()), **EDIT}
    status, outputs, _ = http(cluster.ports, MODEL, body)
    assert status == 200 and outputs[0]["metadata"]["usage"]["mode"] == "inpainting"
    return base64.b64decode(outputs[0]["data"]["choices"][0]["image"].partition(",")[2])


def test_each_route_makes_the_same_edit_byte_for_byte(cluster, client):
    jpegs = [route(cluster, client) for route in (openai_jpeg, cog_jpeg, plain_jpeg, instill_jpeg)]
    assert Image.open(io.BytesIO(jpegs[0])).format == "JPEG"
    assert jpegs[0] == jpegs[1] == jpegs[2] == jpegs[3]


# Bad input: a 4xx in the route's shape naming the field, and the replica serves the next call.

@pytest.mark.parametrize(("files", "fields", "param"), [
    ({"image": ("photo.png", b"this is no picture", "image/png")}, {}, "image"),
    ({"image": ("photo.png", png(PHOTO), "image/png"), "mask": ("mask.png", png(PHOTO.convert("RGBA")), "image/png")},
     {}, "mask"),  # all opaque: nothing to repaint
    ({"image": ("photo.png", png(PHOTO), "image/png")}, {"extra_body": {"strength": 1.5}}, "strength"),
])
def test_openai_bad_edits_raise_the_clients_bad_request_error_naming_the_field(client, files, fields, param):
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.edit(prompt=PROMPT, **files, **fields)
    assert caught.value.status_code == 400 and caught.value.body["param"] == param


def test_multipart_without_an_image_and_an_image_on_the_generations_route_name_image(cluster):
    boundary = "sdxl-test-boundary"
    form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\n{PROMPT}\r\n"
            f"--{boundary}--\r\n").encode()
    status, reply, _ = http(cluster.ports, f"{MODEL}/v1/images/edits", data=form,
                            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert (status, reply["error"]["param"]) == (400, "image")
    body = {"prompt": PROMPT, "image": data_uri(png(PHOTO))}
    status, reply, _ = http(cluster.ports, f"{MODEL}/v1/images/generations", body)
    assert (status, reply["error"]["param"]) == (400, "image")


def test_an_upload_declared_over_the_limit_is_refused_unread_and_the_replica_serves_the_next(cluster, client):
    with socket.create_connection(("127.0.0.1", cluster.ports.http), timeout=60) as sock:
        sock.sendall(f"POST /{MODEL}/v1/images/edits HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data;"
                     f" boundary=b\r\nContent-Length: {1 << 30}\r\n\r\n--b\r\n".encode())  # 1 GiB declared, not sent
        reply = raw_reply(sock)
    assert reply.startswith(b"HTTP/1.1 413") and b'"param":"body"' in reply
    response = client.images.edit(image=("photo.png", png(PHOTO), "image/png"), prompt=PROMPT,
                                  extra_body={"seed": SEED, "steps": 1, "refiner": False})
    assert len(response.data) == 1
