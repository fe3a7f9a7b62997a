"""Instill's aspect ratios mapped to SDXL's native ~1 megapixel sizes."""

import math

# The sizes SDXL was trained on (and Instill lists for SDXL-class models), as (width, height).
NATIVE_SIZES = {
    "1:1": (1024, 1024),
    "5:4": (1152, 896),
    "4:5": (896, 1152),
    "3:2": (1216, 832),
    "2:3": (832, 1216),
    "16:9": (1344, 768),
    "9:16": (768, 1344),
    "21:9": (1536, 640),
    "9:21": (640, 1536),
}
ASPECT_RATIOS = tuple(NATIVE_SIZES)
NATIVE_RESOLUTION = 1024


def image_size(aspect_ratio: str, resolution: int = NATIVE_RESOLUTION) -> tuple[int, int]:
    """Width and height for `aspect_ratio` on a model whose square size is `resolution`.

    Real SDXL is 1024; the demo weights declare a smaller one, so their images come out at the
    same aspect ratios but a fraction of the pixels.
    """
    width, height = NATIVE_SIZES[aspect_ratio]
    return width * resolution // NATIVE_RESOLUTION, height * resolution // NATIVE_RESOLUTION


def nearest_aspect_ratio(width: int, height: int) -> str:
    """The native aspect ratio closest to width:height, on a log scale (2:1 is as far from 1:1 as 1:2): an input
    picture is fitted to it (generation/pictures.py)."""
    return min(NATIVE_SIZES, key=lambda ratio: abs(math.log(width * NATIVE_SIZES[ratio][1]
                                                            / (height * NATIVE_SIZES[ratio][0]))))
