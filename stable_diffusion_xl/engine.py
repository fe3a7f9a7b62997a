"""SDXL base + refiner as an ensemble of experts, loaded once, generating batches of requests.

The base denoises the high-noise part of the schedule (`denoising_end=high_noise_frac`) and
hands its latents to the refiner, which finishes the low-noise part
(`denoising_start=high_noise_frac`): 40 UNet calls for 40 steps, not the 52 of refining a
finished image. Usable without Ray: `Engine.load(...).generate([TextToImageRequest(...)])`.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Sequence

import torch
from PIL import Image

from .request import TextToImageRequest
from .sizes import image_size
from .weights import DEFAULT_WEIGHTS_DIR, WeightPaths

log = logging.getLogger(__name__)
STAGES = ("text_encoders", "base", "refiner", "vae_decode")


@dataclass
class Generation:
    """The images of one request, the seed each was made with, and where the time went (seconds)."""

    images: list[Image.Image]
    seeds: list[int]
    width: int
    height: int
    timings: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))


@dataclass(frozen=True)
class _Job:
    """One image to make: which request it belongs to, and its own prompt, negative prompt and seed."""

    request: int
    prompt: str
    negative_prompt: str
    seed: int


def choose_device() -> tuple[str, torch.dtype]:
    """fp16 on a GPU; fp32 on the CPU, where fp16 is slow and poorly supported."""
    return ("cuda", torch.float16) if torch.cuda.is_available() else ("cpu", torch.float32)


class Engine:
    def __init__(self, base, refiner, *, device: str, max_batch_size: int = 4, demo: bool = False):
        self.base, self.refiner, self.device = base, refiner, device
        self.max_batch_size, self.demo = max_batch_size, demo
        self.vae = base.vae
        # The native square size the UNet was trained at: 1024 for SDXL, 256 for the demo weights.
        self.resolution = base.unet.config.sample_size * base.vae_scale_factor
        self._lock = threading.Lock()  # one generation at a time: the pipelines keep scheduler state
        self.set_progress_bars(False)

    @classmethod
    def load(cls, weights_dir=DEFAULT_WEIGHTS_DIR, *, demo: bool = False, max_batch_size: int = 4,
             device: str | None = None) -> Engine:
        """Load base and refiner from disk (safetensors only), sharing text_encoder_2, tokenizer_2 and the VAE."""
        from diffusers import AutoencoderKL, StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

        paths = WeightPaths.locate(weights_dir, demo=demo)
        device, dtype = (device, torch.float16 if device == "cuda" else torch.float32) if device else choose_device()
        if demo:
            log.warning("loading the DEMO weights from %s: tiny random models, their images are noise", paths.base)
            if device == "cpu":
                torch.set_num_threads(1)  # models this small only lose time to thread synchronisation
        if dtype == torch.float16 and (paths.vae_fp16_fix / "config.json").is_file():
            vae = AutoencoderKL.from_pretrained(paths.vae_fp16_fix, dtype=dtype, use_safetensors=True)
        else:
            # SDXL's own VAE overflows in fp16 (what diffusers' force_upcast is for): decode in fp32.
            vae = AutoencoderKL.from_pretrained(
                paths.base, subfolder="vae", dtype=torch.float32, variant="fp16", use_safetensors=True
            )
        base = StableDiffusionXLPipeline.from_pretrained(
            paths.base, dtype=dtype, variant="fp16", use_safetensors=True, vae=vae
        )
        refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(
            paths.refiner, dtype=dtype, variant="fp16", use_safetensors=True,
            text_encoder_2=base.text_encoder_2, tokenizer_2=base.tokenizer_2, vae=base.vae,
        )
        base.to(device)
        refiner.to(device)
        # Decode one image at a time: a batch of 1024² decodes would need several GB at once.
        base.vae.enable_slicing()
        return cls(base, refiner, device=device, max_batch_size=max_batch_size, demo=demo)

    def set_progress_bars(self, enabled: bool) -> None:
        self.base.set_progress_bar_config(disable=not enabled, desc="base")
        self.refiner.set_progress_bar_config(disable=not enabled, desc="refiner")

    def size_of(self, request: TextToImageRequest) -> tuple[int, int]:
        return image_size(request.aspect_ratio, self.resolution)

    def generate(self, requests: Sequence[TextToImageRequest]) -> list[Generation]:
        """Images for each request, in order. Requests with the same settings share UNet batches."""
        seeds = [request.seed or secrets.randbelow(2**31) + 1 for request in requests]
        results = [Generation([], [], *self.size_of(request)) for request in requests]
        groups: dict[tuple, list[_Job]] = defaultdict(list)
        for index, (request, seed) in enumerate(zip(requests, seeds)):
            groups[request.settings] += [
                _Job(index, request.prompt, request.negative_prompt, seed + i) for i in range(request.n)
            ]
        with self._lock, torch.inference_mode():
            for jobs in groups.values():
                for start in range(0, len(jobs), self.max_batch_size):
                    chunk = jobs[start : start + self.max_batch_size]
                    images, timings = self._run(requests[chunk[0].request], chunk)
                    for job, image in zip(chunk, images):
                        results[job.request].images.append(image)
                        results[job.request].seeds.append(job.seed)
                    for index in {job.request for job in chunk}:
                        for stage, seconds in timings.items():
                            results[index].timings[stage] += seconds
        return results

    def _run(self, settings: TextToImageRequest, jobs: list[_Job]) -> tuple[list[Image.Image], dict[str, float]]:
        """One UNet batch: every job shares `settings`' size, steps, guidance and hand-off."""
        width, height = self.size_of(settings)
        # A CPU generator per image makes image i depend on its own seed only, on any device and batch.
        generators = [torch.Generator("cpu").manual_seed(job.seed) for job in jobs]
        use_refiner, guidance = settings.refiner, settings.guidance_scale
        clock = _Clock(self.device)

        base_embeds = self._encode(self.base, jobs, guidance)
        refiner_embeds = self._encode(self.refiner, jobs, guidance) if use_refiner else None
        clock.lap("text_encoders")

        latents = self.base(
            **base_embeds, width=width, height=height, num_inference_steps=settings.steps,
            guidance_scale=guidance, denoising_end=settings.high_noise_frac if use_refiner else None,
            generator=generators, output_type="latent",
        ).images
        clock.lap("base")
        if use_refiner:
            latents = self.refiner(
                **refiner_embeds, image=latents, num_inference_steps=settings.steps, guidance_scale=guidance,
                denoising_start=settings.high_noise_frac, generator=generators, output_type="latent",
            ).images
        clock.lap("refiner")
        images = self.decode(latents)
        clock.lap("vae_decode")
        return images, clock.laps

    @staticmethod
    def _encode(pipeline, jobs: list[_Job], guidance: float) -> dict[str, torch.Tensor]:
        # Without a negative prompt, None lets the base use zero embeddings, as SDXL was trained.
        negatives = [job.negative_prompt for job in jobs] if jobs[0].negative_prompt else None
        embeds = pipeline.encode_prompt(
            prompt=[job.prompt for job in jobs], negative_prompt=negatives, device=pipeline.device,
            num_images_per_prompt=1, do_classifier_free_guidance=guidance > 1,
        )
        names = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")
        return dict(zip(names, embeds))

    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        """Latents to PIL images with the shared VAE, in its own dtype."""
        latents = latents.to(self.vae.dtype) / self.vae.config.scaling_factor
        pixels = self.vae.decode(latents).sample
        return self.base.image_processor.postprocess(pixels, output_type="pil")


class _Clock:
    """Wall time per stage; waits for the GPU so a stage is charged for its own kernels."""

    def __init__(self, device: str):
        self.device, self.laps, self._last = device, {}, time.perf_counter()

    def lap(self, stage: str) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.laps[stage], self._last = now - self._last, now
