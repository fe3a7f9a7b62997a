"""Plain helpers shared by the tests: request builders, pixel comparisons, UNet call counts, a flagging checker.

Fixtures live in conftest.py; import these by module name: `from helpers import request`.
"""

import io
import shutil
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from stable_diffusion_xl.generation.modes import PICTURES
from stable_diffusion_xl.generation.request import TextToImageRequest
from stable_diffusion_xl.generation.safety import SafetyChecker

FAST = {"steps": 5}  # 4 base + 1 refiner step: enough to exercise both experts quickly
ROUNDING = 2  # pixel levels that batched float kernels may move an image by


def request(prompt="a cat napping", **fields) -> TextToImageRequest:
    """A request with FAST's settings, unless `fields` says otherwise; an edit's pictures by their names."""
    pictures = {name: fields.pop(name) for name in PICTURES if name in fields}
    return TextToImageRequest(prompt=prompt, **{**FAST, **fields}, pictures=pictures)


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


JPEG_LEVELS = 1.0  # mean difference, in levels, that float rounding in another batch leaves after JPEG encoding


def looks_alike(first, second) -> bool:
    """Two JPEG-decoded images of the same seed, one made in a batch with other callers' images: the same up to
    float rounding, which JPEG's quantisation may turn into a level or two here and there."""
    return float(np.abs(pixels(first) - pixels(second)).mean()) <= JPEG_LEVELS


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


def write_flagging_checker(target: Path, image: Image.Image, others: list[Image.Image], *, source: Path) -> Path:
    """The checker in `source` (the demo one) with its first concept embedding set to `image`'s CLIP image embedding
    (as the checker computes it: the vision model's pooled output through visual_projection) and that concept's
    threshold set halfway between `image`'s cosine similarity to it (about 1) and the highest of `others`', saved
    like the real checker (fp16) into `target`: it flags `image` and none of `others`."""
    checker = SafetyChecker.load(source, "cpu", torch.float32)
    model = checker.model
    with torch.inference_mode():
        pixels = checker.processor([image, *others], return_tensors="pt").pixel_values
        embeds = model.visual_projection(model.vision_model(pixels)[1])
    concept = embeds[0].to(torch.float16).float()  # as the saved checker will hold it
    similarity = torch.nn.functional.normalize(embeds) @ torch.nn.functional.normalize(concept, dim=0)
    own, nearest = similarity[0].item(), similarity[1:].max().item()
    # The checker rounds (similarity - threshold) to 3 decimals and flags above 0; fp16 moves the threshold by
    # at most 0.00025 here. Half of this gap must clear both.
    assert own - nearest > 0.004, f"the other images are too close to this one ({nearest:.4f} vs {own:.4f})"
    with torch.no_grad():
        model.concept_embeds[0] = concept
        model.concept_embeds_weights[0] = (own + nearest) / 2
    model.to(torch.float16).save_pretrained(target)
    shutil.copy(Path(source) / "preprocessor_config.json", Path(target) / "preprocessor_config.json")
    return Path(target)


def nan_decodes(engine, monkeypatch) -> dict:
    """Make the engine's VAE return NaN for its next `state["left"]` decodes, as an overflowing fp16 VAE does;
    returns that state (0 to start with)."""
    decode, state = engine.vae.decode, {"left": 0}

    def nan_decode(latents, *args, **kwargs):
        output = decode(latents, *args, **kwargs)
        if state["left"]:
            state["left"] -= 1
            output.sample[:] = float("nan")
        return output

    monkeypatch.setattr(engine.vae, "decode", nan_decode)
    return state


def training_photo(index: int, size: tuple[int, int] = (320, 300)) -> Image.Image:
    """A photo of one subject for training tests: the same yellow disc, a little moved, on a background whose
    colour and the frame's width vary with `index`."""
    from PIL import ImageDraw

    width, height = size
    image = Image.new("RGB", (width + 8 * index, height), (40 + 20 * index % 200, 90, 160))
    ImageDraw.Draw(image).ellipse((60 + 5 * index, 50, 220 + 5 * index, 230), fill=(230, 200, 40))
    return image


def write_photos(folder: Path, count: int = 6, *, kind: str = "JPEG") -> Path:
    """`count` training photos, photo-<i>.jpg (or .png, .webp), in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}[kind]
    for index in range(count):
        training_photo(index).save(folder / f"photo-{index}{suffix}", kind)
    return folder


def zipped(files: list[tuple[str, bytes]], compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in files:
            archive.writestr(name, data)
    return buffer.getvalue()


def unreadable_zips(files: list[tuple[str, bytes]]) -> dict[str, bytes]:
    """Zips of `files` that no reader can unpack, by the error Python's zipfile raises for each: a member flagged
    encrypted (as an encrypting archiver writes it), and members whose deflate or LZMA stream is scrambled."""
    encrypted = bytearray(zipped(files))
    for signature, flags in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # local and central headers' flag bit 0
        at = encrypted.find(signature)
        while at >= 0:
            encrypted[at + flags] |= 1
            at = encrypted.find(signature, at + 4)
    made = {"RuntimeError": bytes(encrypted)}
    for error, compression in (("error", zipfile.ZIP_DEFLATED), ("LZMAError", zipfile.ZIP_LZMA)):  # zlib.error
        data = bytearray(zipped(files, compression))
        start = data.find(b"PK\x03\x04") + 30 + len(files[0][0].encode())
        data[start + 5: start + 200] = bytes(range(195))  # the first member's compressed stream
        made[error] = bytes(data)
    return made
