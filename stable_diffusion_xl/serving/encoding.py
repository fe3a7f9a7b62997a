"""Images to the bytes and strings the wire carries: JPEG unless a caller's API asks for PNG or WebP."""

from __future__ import annotations

import base64
import io
import time
from typing import TYPE_CHECKING

from PIL import Image

if TYPE_CHECKING:  # the engine's settings import this module's default quality
    from ..generation.results import Generation

DEFAULT_JPEG_QUALITY = 95
MEDIA_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


def encode(image: Image.Image, image_format: str = "jpeg", quality: int = DEFAULT_JPEG_QUALITY) -> bytes:
    """`quality` is JPEG's and WebP's; PNG is lossless."""
    buffer = io.BytesIO()
    options = {} if image_format == "png" else {"quality": quality}
    image.convert("RGB").save(buffer, format=image_format.upper(), **options)
    return buffer.getvalue()


def to_base64(image: Image.Image, image_format: str = "jpeg", quality: int = DEFAULT_JPEG_QUALITY) -> str:
    return base64.b64encode(encode(image, image_format, quality)).decode("ascii")


def to_data_uri(image: Image.Image, image_format: str = "jpeg", quality: int = DEFAULT_JPEG_QUALITY) -> str:
    return f"data:{MEDIA_TYPES[image_format]};base64,{to_base64(image, image_format, quality)}"


def encode_all(generations: list[Generation], encoder, *args) -> list[list[str]]:
    """Each generation's images through `encoder` (to_base64 or to_data_uri), timed as its "encode" stage."""
    encoded = []
    for generation in generations:
        started = time.perf_counter()
        encoded.append([encoder(image, *args) for image in generation.images])
        generation.timings["encode"] = time.perf_counter() - started
    return encoded
