"""Pictures a caller sends (the image to edit, the mask of what to repaint): bytes or base64 in, checked before
they are decoded, decoded by Pillow with its decompression-bomb guard on, as RGB images and "L" masks.

Every error is an InvalidRequest naming the field ("image", "mask") and what is wrong; no byte of the upload is
ever quoted. What this module decides:

- Formats: PNG, JPEG, WebP, GIF and BMP; anything else Pillow could open (TIFF, PSD, ...) is refused.
- An animated picture (several frames) is refused: which frame is meant is not for us to guess.
- Modes are converted: CMYK, palette, grey, 16-bit grey (scaled to 8 bits). An image with transparency is laid
  on white; a mask with transparency on black (transparent = keep). EXIF orientation is applied.
- A mask is white where to repaint and black where to keep; it is binarized at 128 (as diffusers' mask
  processor does), and must be the image's size (it is never resized: both sizes are named in the error).
- The engine fits the image into the native SDXL size of its nearest aspect ratio (sizes.nearest_aspect_ratio)
  with `fit_picture`: a centred crop to that ratio, then a resize; the picture is never stretched.
- The dialects that take JSON decode the pictures (generation/modes.py PICTURES) with `read_pictures` before
  building their request.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..fields import InvalidRequest, excerpt

MASK_THRESHOLD = 128  # a mask's pixels at or above it repaint (diffusers binarizes its mask at 0.5)
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
DEFAULT_MAX_UPLOAD_MB = 20
DEFAULT_MAX_UPLOAD_MEGAPIXELS = 40
# RFC 2397: the scheme, the media type and `base64` in any case.
_DATA_URI = re.compile(r"data:([\w.+-]+/[\w.+-]+)?(;[\w=.+-]+)*?;base64,", re.ASCII | re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class UploadLimits:
    """How large one picture may be: bytes as sent (before base64 is decoded, and before Pillow reads it) and
    pixels as its header declares them (before they are decoded)."""

    max_bytes: int = DEFAULT_MAX_UPLOAD_MB << 20
    max_pixels: int = DEFAULT_MAX_UPLOAD_MEGAPIXELS * 1_000_000


def read_pictures(fields: dict, limits: UploadLimits, pictures: dict[str, str]) -> dict:
    """`fields` with the pictures under the names `pictures` lists (data URIs, base64 or bytes) decoded, each in
    the mode listed with it: "RGB" an image (as_image), "L" a mask (as_mask, white repaints). Absent or null ones
    stay so."""
    fields = dict(fields)
    for name, mode in pictures.items():
        if fields.get(name) is not None and not isinstance(fields[name], Image.Image):
            fields[name] = _CONVERSIONS[mode](decode_picture(fields[name], name, limits), name)
    return fields


def decode_picture(data: bytes | str, field: str, limits: UploadLimits = UploadLimits()) -> Image.Image:
    """The picture in `data` (bytes, base64 or a base64 data URI), loaded, EXIF orientation applied, in
    its own mode (see `as_image` and `as_mask`)."""
    raw = _bytes(data, field, limits)
    if len(raw) > limits.max_bytes:
        raise _too_large(field, len(raw), limits.max_bytes)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            picture = Image.open(io.BytesIO(raw), formats=FORMATS)
            width, height = picture.size
            if width * height > limits.max_pixels:
                raise InvalidRequest(field, f"is {width}x{height} pixels; this deployment takes at most "
                                            f"{limits.max_pixels // 1_000_000} megapixels", http_status=413)
            if getattr(picture, "n_frames", 1) > 1:
                raise InvalidRequest(field, f"is animated ({picture.n_frames} frames); send one still picture")
            picture.load()
            return ImageOps.exif_transpose(picture)
    except UnidentifiedImageError:
        raise InvalidRequest(field, f"is not a picture this deployment reads ({', '.join(FORMATS)})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidRequest(field, "declares more pixels than this deployment decodes", http_status=413) from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:  # Pillow's truncated and corrupt files
        if isinstance(error, InvalidRequest):
            raise
        raise InvalidRequest(field, f"is truncated or corrupt ({type(error).__name__}); send the whole "
                                    "file") from None


def as_image(picture: Image.Image, field: str) -> Image.Image:
    """An RGB image: transparency laid on white, every other mode converted."""
    return _flattened(_eight_bits(picture, field), (255, 255, 255, 255)).convert("RGB")


def as_mask(picture: Image.Image, field: str) -> Image.Image:
    """A mask ("L") from a picture's brightness: white repaints, black keeps; transparency counts as black."""
    return _flattened(_eight_bits(picture, field), (0, 0, 0, 255)).convert("L")


def _flattened(picture: Image.Image, background: tuple[int, int, int, int]) -> Image.Image:
    """The picture laid on `background` where it has transparency; as it is otherwise."""
    if picture.mode in ("RGBA", "LA", "PA") or "transparency" in picture.info:
        rgba = picture.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, background), rgba)
    return picture


_CONVERSIONS = {"RGB": as_image, "L": as_mask}


def mask_from_alpha(picture: Image.Image, field: str) -> Image.Image:
    """A mask ("L") from a picture's transparency, as OpenAI's edits take it: transparent repaints, opaque keeps.
    A picture without an alpha channel is refused: it marks nothing."""
    picture = _eight_bits(picture, field)
    if picture.mode not in ("RGBA", "LA", "PA") and "transparency" not in picture.info:
        raise InvalidRequest(field, "has no transparency: its transparent pixels mark what to repaint")
    return ImageOps.invert(picture.convert("RGBA").getchannel("A"))


def fit_picture(picture: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`picture` at `size`: cropped around its centre to that aspect ratio, then resized; never stretched.
    A picture of that size already is returned as it is, pixel for pixel."""
    if picture.size == size:
        return picture.copy()
    return ImageOps.fit(picture, size, Image.Resampling.LANCZOS)


def fit_mask(mask: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The mask fitted as its image is, then binarized: 255 repaints, 0 keeps."""
    return fit_picture(mask, size).point(lambda value: 255 if value >= MASK_THRESHOLD else 0)


def keep_unmasked(generated: Image.Image, original: Image.Image, mask: Image.Image) -> Image.Image:
    """The generated image where the (binarized) mask repaints, the original's own pixels everywhere else."""
    return Image.composite(generated, original, mask)


def _bytes(data: bytes | str, field: str, limits: UploadLimits) -> bytes:
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    if not isinstance(data, str):
        raise InvalidRequest(field, f"must be a data URI or base64 text, got {excerpt(data)}")
    return decode_base64(data, field, limits.max_bytes)[1]


def decode_base64(text: str, field: str, max_bytes: int | None = None) -> tuple[str | None, bytes]:
    """The media type (None when not given) and the bytes of a base64 data URI or of plain base64 text, as RFC 2397
    and RFC 2045 allow them: `data:` and `;base64` in any case, the base64 wrapped in lines (as the `base64`
    command writes it). Over `max_bytes` decoded (SDXL_MAX_UPLOAD_MB) it is refused before it is decoded."""
    text, media_type = text.strip(), None
    if text[:5].lower() == "data:":
        prefix = _DATA_URI.match(text[:200])
        if not prefix:
            raise InvalidRequest(field, "is a data URI without `;base64,`; send data:image/png;base64,...")
        text, media_type = text[prefix.end():], prefix.group(1)
    if any(space in text for space in "\n\r \t"):
        text = _WHITESPACE.sub("", text)
    size = len(text) // 4 * 3 - text[-2:].count("=")  # 4 characters of base64 carry 3 bytes, less the padding
    if max_bytes is not None and size > max_bytes:
        raise _too_large(field, size, max_bytes)
    try:
        return media_type, base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(field, "must be a data URI or base64 text; it is neither (or its base64 is "
                                    "broken)") from None


def _too_large(field: str, size: int, max_bytes: int) -> InvalidRequest:
    return InvalidRequest(field, f"is {size / (1 << 20):.1f} MB; this deployment takes at most "
                                 f"{max_bytes / (1 << 20):g} MB (SDXL_MAX_UPLOAD_MB)", http_status=413)


def _eight_bits(picture: Image.Image, field: str) -> Image.Image:
    """16- and 32-bit grey ("I;16", "I") scaled to 8 bits ("L"); floating-point pixels refused."""
    if picture.mode.startswith("I"):
        pixels = np.asarray(picture).astype(np.int64)
        peak = 65535 if picture.mode.startswith("I;16") or pixels.max(initial=0) <= 65535 else pixels.max()
        return Image.fromarray((np.clip(pixels, 0, peak) * 255 // max(peak, 1)).astype(np.uint8), "L")
    if picture.mode == "F":
        raise InvalidRequest(field, "has floating-point pixels; send 8- or 16-bit pixels")
    return picture
