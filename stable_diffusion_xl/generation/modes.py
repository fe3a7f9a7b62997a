"""The generation modes, one object each: the pictures a request sends for it, the checks they need together, the
base and refiner pipelines it runs, and what those take besides the prompts.

Every mode runs one sequence (Engine._run): the prompts encoded, the base over the noisiest part of the schedule,
the refiner over the rest, the latents decoded, the safety filter. A mode says only what the pipelines start from
and what is done to the decoded images. The edit pipelines are built over the base's and the refiner's own
components (`_sharing`), so no weight is loaded twice, and LoRA adapters, compiled blocks and fp8 layers apply to
them as they are. The methods take a request.TextToImageRequest (not imported: the request imports this module).
Where to add a mode: docs/layout.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from PIL import Image

from ..fields import KNOWN_FIELDS, InvalidRequest
from .pictures import MASK_THRESHOLD, fit_mask, fit_picture, keep_unmasked


@dataclass(frozen=True)
class Picture:
    """A picture a request may send: the Pillow mode it is kept in, and what it is for (the CLI's help)."""

    pil_mode: str
    description: str


# The pictures by their request and wire names; a mode lists those it takes.
PICTURES = {
    "image": Picture("RGB", "a picture to edit (image-to-image; docs/edits.md)"),
    "mask": Picture("L", "with an image: repaint where this picture is white, keep where it is black (inpainting)"),
}
PIL_MODES = {name: picture.pil_mode for name, picture in PICTURES.items()}
KNOWN_FIELDS.update(PICTURES)
# Latents of an edit's input pictures, one sample of the VAE's distribution each (the engine's VAE encodes them).
Encoder = Callable[[list[Image.Image]], object]


class TextToImage:
    name = "text-to-image"
    pictures: tuple[str, ...] = ()
    default_strength: float | None = None  # how much of an input picture is redrawn; None: there is none

    def check(self, request) -> None:
        """What the request's pictures must be together, beyond each picture's own checks."""

    def pipelines(self, base, refiner) -> tuple:
        """The pipelines of the base and of the refiner, over their own modules."""
        return base, refiner

    def fitted(self, request, size: tuple[int, int]) -> dict[str, Image.Image]:
        """The request's pictures at the size the image is made at."""
        return {}

    def inputs(self, request, pictures: list[dict], size: tuple[int, int], encode: Encoder
               ) -> tuple[dict, dict]:
        """What the base and the refiner pipelines take besides the prompts, the schedule, the guidance and the
        generators, for a batch of images made from `pictures` (each image's fitted ones)."""
        width, height = size
        return {"width": width, "height": height}, {}

    def finished(self, images: list[Image.Image], pictures: list[dict]) -> list[Image.Image]:
        """The decoded images as answered."""
        return images


class ImageToImage(TextToImage):
    """The base denoises from `strength` to the hand-off, the refiner finishes, as in text-to-image."""

    name = "image-to-image"
    pictures = ("image",)
    default_strength = 0.8  # as diffusers' docs and cog-sdxl have it

    def pipelines(self, base, refiner) -> tuple:
        from diffusers import StableDiffusionXLImg2ImgPipeline

        return _sharing(StableDiffusionXLImg2ImgPipeline, base), refiner  # the refiner is an image-to-image one

    def fitted(self, request, size):
        return {"image": fit_picture(request.pictures["image"], size)}

    def inputs(self, request, pictures, size, encode):
        # Encoded here, not by the pipelines: theirs cast the shared VAE to the UNet's dtype and back.
        return {"image": encode([fitted["image"] for fitted in pictures]), "strength": request.strength}, {}

    def unchanged(self, pictures: list[dict]) -> list[Image.Image]:
        """The images where the strength leaves no step to run: the input as it is."""
        return [fitted["image"].copy() for fitted in pictures]


class Inpainting(ImageToImage):
    """Image-to-image where the mask repaints; the kept pixels are pasted back, so they are the input's own."""

    name = "inpainting"
    pictures = ("image", "mask")
    default_strength = 0.85

    def check(self, request):
        image, mask = request.pictures["image"], request.pictures["mask"]
        if mask.size != image.size:
            raise InvalidRequest("mask", f"is {mask.width}x{mask.height}, the image {image.width}x{image.height}: "
                                         "send a mask of the image's size")
        if mask.getextrema()[1] < MASK_THRESHOLD:
            raise InvalidRequest("mask", "marks nothing to repaint (it is all black, or all kept)")

    def pipelines(self, base, refiner) -> tuple:
        from diffusers import StableDiffusionXLInpaintPipeline

        return _sharing(StableDiffusionXLInpaintPipeline, base), _sharing(StableDiffusionXLInpaintPipeline, refiner)

    def fitted(self, request, size):
        return super().fitted(request, size) | {"mask": fit_mask(request.pictures["mask"], size)}

    def inputs(self, request, pictures, size, encode):
        base, refiner = super().inputs(request, pictures, size, encode)
        width, height = size
        masks = {"mask_image": [fitted["mask"] for fitted in pictures], "width": width, "height": height}
        return base | masks, refiner | masks

    def finished(self, images, pictures):
        return [keep_unmasked(image, fitted["image"], fitted["mask"]) for image, fitted in zip(images, pictures)]


MODES = {mode.name: mode for mode in (TextToImage(), ImageToImage(), Inpainting())}


def mode_of(pictures: Mapping[str, Image.Image]) -> TextToImage:
    """The mode of a request that sends these pictures (none: text-to-image)."""
    sent = set(pictures)
    for mode in MODES.values():
        if set(mode.pictures) == sent:
            return mode
    wider = min((mode for mode in MODES.values() if sent < set(mode.pictures)), key=lambda mode: len(mode.pictures))
    missing = [name for name in wider.pictures if name not in sent]
    raise InvalidRequest(sorted(sent)[0], f"needs an `{missing[0]}` too: {wider.name} takes "
                                          f"{' and '.join(wider.pictures)}")


def _sharing(pipeline_class, pipeline):
    """A `pipeline_class` pipeline over `pipeline`'s own components (the same module objects) and options. Not
    diffusers' from_pipe: it casts every component to one dtype, float32 unless told, in place, which would turn
    the fp16 UNets to fp32 (or an fp32 VAE to fp16) for the text-to-image pipelines too."""
    options = {key: pipeline.config[key] for key in ("requires_aesthetics_score", "force_zeros_for_empty_prompt")
               if key in pipeline.config}
    return pipeline_class(**pipeline.components, **options, add_watermarker=False)
