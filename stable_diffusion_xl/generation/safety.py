"""An optional image safety checker: which generated images to withhold (the engine answers content_filtered).

The checker is the one Stable Diffusion pipelines ship, diffusers' `StableDiffusionSafetyChecker` (a CLIP
ViT-L/14 image encoder whose embeddings are compared with 17 concept and 3 special-care embeddings, each with its
own threshold), with its CLIP image preprocessing. Its weights are the optional manifest entry
`stable-diffusion-safety-checker` (`WeightPaths.safety_checker`; the demo weights hold a tiny random one that flags
nothing). Loading reads safetensors only.

Another classifier in its place: a deployment replaces this one module, keeping this one function signature:

    SafetyChecker.load(folder: Path, device: str, dtype: torch.dtype) -> SafetyChecker
    SafetyChecker.flagged(images: list[PIL.Image.Image]) -> list[bool]   # one flag per image, in order

`flagged` is called once per generated batch with every image of it; True withholds that image. The rest of the
service knows nothing else about the checker (neither its scores nor its files), so any classifier that can answer
that question per image fits: write `load` to read its own files from `folder` (raising `weights.WeightsMissing`,
a FileNotFoundError, when they are absent) and `flagged` to classify a batch.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..weights.layout import FETCH_COMMAND, WeightsMissing

# The files `load` reads, as the manifest's entry for the checker lists them.
FILES = ("config.json", "model.safetensors", "preprocessor_config.json")
# diffusers' checker logs "Potential NSFW content was detected in one or more images. A black image will be
# returned instead..." at WARNING, once per call that flags anything. It holds no user text, but here it is
# misleading (we return no black image: the engine answers content_filtered), so it is silenced.
logging.getLogger("diffusers.pipelines.stable_diffusion.safety_checker").setLevel(logging.ERROR)


class SafetyChecker:
    def __init__(self, model, processor, *, device: str, dtype: torch.dtype):
        self.model, self.processor, self.device, self.dtype = model, processor, device, dtype

    @classmethod
    def load(cls, folder: Path | str, device: str, dtype: torch.dtype) -> SafetyChecker:
        """The checker in `folder` (config.json, model.safetensors, preprocessor_config.json) on `device` in `dtype`."""
        # CLIPImageProcessorPil is the PIL backend of transformers' CLIPImageProcessor: the preprocessing the checker
        # was calibrated with, the same on every deployment (the default backend needs torchvision, not pinned here).
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
        from transformers import CLIPImageProcessorPil

        folder = Path(folder)
        missing = [name for name in FILES if not (folder / name).is_file()]
        if missing:
            raise WeightsMissing(
                f"no safety checker in {folder} (missing {', '.join(missing)}): fetch it with "
                f"`{FETCH_COMMAND} --safety-checker`, or for the demo weights rebuild them with "
                "`python -m stable_diffusion_xl demo-weights`; or turn SDXL_SAFETY_CHECKER off"
            )
        model = StableDiffusionSafetyChecker.from_pretrained(folder, dtype=dtype, use_safetensors=True)
        model.to(device).eval()
        processor = CLIPImageProcessorPil.from_pretrained(folder)
        return cls(model, processor, device=device, dtype=dtype)

    def flagged(self, images: list) -> list[bool]:
        """Whether each image shows a concept the checker withholds; the whole list runs as one batch."""
        if not images:
            return []
        with torch.inference_mode():
            pixels = self.processor(images, return_tensors="pt").pixel_values.to(self.device, self.dtype)
            # The checker also blacks out the flagged entries of the images it is given; we need only the flags,
            # so it gets a placeholder of one number per image.
            _, flags = self.model(clip_input=pixels, images=torch.zeros(len(images), 1))
        return [bool(flag) for flag in flags]
