"""What every benchmark generates: one prompt and seed, and the three recipes it compares on one engine.

Ours (the engine), the raw diffusers pipelines running the same ensemble of experts, and the upstream Instill
recipe (instill-ai/models stable-diffusion-xl: the base for all 40 steps, then the refiner as img2img on its
latents at the default strength 0.3). bench/rows/ and bench/gpu.py time them.
"""

from __future__ import annotations

import torch

PROMPT = "a cat napping on a windowsill, golden hour"
SEED = 1234
DEFAULT_STEPS, SERVE_STEPS = 40, 5
GUIDANCE, HIGH_NOISE_FRAC, UPSTREAM_STRENGTH = 7.5, 0.8, 0.3


def recipes(engine, n: int = 1, steps: int = DEFAULT_STEPS):
    """Our engine, the raw diffusers pipelines doing the same ensemble of experts, and the upstream recipe, each
    making `n` images of one prompt in one batch of `steps` steps. All three decode with Engine.decode, as the
    pipelines do in fp32; on a GPU without the fp16-fix VAE the pipelines would hand their fp16 latents to the
    fp32 VAE."""
    from stable_diffusion_xl.generation.request import TextToImageRequest, nth_seed

    request = TextToImageRequest(prompt=PROMPT, seed=SEED, n=n, steps=steps, guidance_scale=GUIDANCE,
                                 high_noise_frac=HIGH_NOISE_FRAC)
    width, height = engine.size_of(request)
    common = {"prompt": [PROMPT] * n, "num_inference_steps": steps, "guidance_scale": GUIDANCE,
              "output_type": "latent"}

    def generators():  # one per image, as the engine seeds them
        return [torch.Generator("cpu").manual_seed(nth_seed(SEED, i)) for i in range(n)]

    def ours():
        return engine.generate([request])[0].images

    def raw_diffusers():
        # diffusers' documented "ensemble of experts": base until 0.8 of the schedule, refiner from there.
        seeded = generators()
        with torch.inference_mode():
            latents = engine.base(**common, width=width, height=height, denoising_end=HIGH_NOISE_FRAC,
                                  generator=seeded).images
            latents = engine.refiner(**common, image=latents, denoising_start=HIGH_NOISE_FRAC, generator=seeded).images
            return engine.decode(latents)[0]

    def upstream():
        # instill-ai/models stable-diffusion-xl/v0.1.0/model.py: the base for all steps, then the refiner as
        # img2img on the finished latents at its default strength (0.3): int(40 * 0.3) = 12 more UNet calls.
        seeded = generators()
        with torch.inference_mode():
            latents = engine.base(**common, width=width, height=height, generator=seeded).images
            latents = engine.refiner(**common, image=latents, strength=UPSTREAM_STRENGTH, generator=seeded).images
            return engine.decode(latents)[0]

    return {"ours": ours, "raw_diffusers": raw_diffusers, "upstream": upstream}, (width, height)
