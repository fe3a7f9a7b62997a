"""Images to the bytes and strings the wire carries."""

import base64
import io

from PIL import Image

DEFAULT_JPEG_QUALITY = 95


def to_jpeg(image: Image.Image, quality: int = DEFAULT_JPEG_QUALITY) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def to_base64_jpeg(image: Image.Image, quality: int = DEFAULT_JPEG_QUALITY) -> str:
    """Plain base64 (no data-URI prefix: Instill's output helper adds it)."""
    return base64.b64encode(to_jpeg(image, quality)).decode("ascii")
