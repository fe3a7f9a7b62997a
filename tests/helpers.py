"""Plain helpers shared by the engine tests: request builders, pixel comparisons, UNet call counts.

Fixtures live in conftest.py; import these by module name: `from helpers import request`.
"""

import numpy as np

from stable_diffusion_xl.request import TextToImageRequest

FAST = {"steps": 5}  # 4 base + 1 refiner step: enough to exercise both experts quickly
ROUNDING = 2  # pixel levels that batched float kernels may move an image by


def request(prompt="a cat napping", **fields) -> TextToImageRequest:
    """A request with FAST's settings, unless `fields` says otherwise."""
    return TextToImageRequest(prompt=prompt, **{**FAST, **fields})


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def max_pixel_difference(first, second) -> int:
    """Largest per-channel difference; batch size changes float rounding by at most a level or two."""
    assert first.size == second.size
    return int(np.abs(pixels(first) - pixels(second)).max())


def count_unet_calls(engine, run):
    calls = {"base": 0, "refiner": 0}
    hooks = [
        engine.base.unet.register_forward_hook(lambda *_: calls.__setitem__("base", calls["base"] + 1)),
        engine.refiner.unet.register_forward_hook(lambda *_: calls.__setitem__("refiner", calls["refiner"] + 1)),
    ]
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    return calls
