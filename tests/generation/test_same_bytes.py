"""The same seed gives the same JPEG bytes, in each mode, as the engine gave when these hashes were recorded: a
reshaping of the engine must change no pixel. The hashes are of the demo weights (weights/demo.py, seeded) on the
CPU at one thread; a change to either, or to torch, diffusers or Pillow, records them again (the failure
shows the new ones)."""

import hashlib

import numpy as np
from PIL import Image

from helpers import request
from stable_diffusion_xl.serving.encoding import encode

PHOTO = Image.fromarray(np.random.default_rng(2).integers(0, 256, (256, 256, 3), dtype=np.uint8))
MASK = Image.new("L", PHOTO.size, 0)
MASK.paste(255, (64, 64, 192, 160))
# Two images each, batched together, with a LoRA-free refiner hand-off: every stage of the run.
REQUESTS = {
    "text-to-image": {"seed": 11, "n": 2, "steps": 6, "negative_prompt": "blurry"},
    "image-to-image": {"seed": 12, "n": 2, "steps": 6, "image": PHOTO},
    "inpainting": {"seed": 13, "n": 2, "steps": 6, "image": PHOTO, "mask": MASK},
}
RECORDED = {  # on main before the modes became objects (generation/modes.py)
    "text-to-image": ["fcf72226e6da8c38", "dfcf189a35406bf4"],
    "image-to-image": ["3f5cfeeededd6a61", "c5323ae00c6312c3"],
    "inpainting": ["b6b5c572d1e92bfc", "2017a553c6ef7bf4"],
}


def jpeg_hashes(engine) -> dict[str, list[str]]:
    generations = engine.generate([request(**fields) for fields in REQUESTS.values()])
    return {mode: [hashlib.sha256(encode(image)).hexdigest()[:16] for image in generation.images]
            for mode, generation in zip(REQUESTS, generations)}


def test_the_same_seed_gives_the_same_jpeg_bytes_in_every_mode(engine):
    assert jpeg_hashes(engine) == RECORDED

