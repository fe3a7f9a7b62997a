"""FLOPs per image of both recipes at 1024x1024, counted over the real SDXL networks built on the meta device.

Nothing is loaded and no memory is allocated: the meta device carries shapes only, and
torch.utils.flop_counter.FlopCounterMode counts the matmuls, convolutions and attention products
of one forward pass of each component (a multiply-add counts as 2 FLOPs; norms, activations and
the scheduler are not counted, they are well under 1% here). Per image, with classifier-free
guidance (UNet batch 2: conditional + unconditional):

    text encoders   base: CLIP ViT-L + OpenCLIP bigG on prompt and negative prompt; refiner: bigG again
    UNet            base calls x base UNet(2 x 4 x 128 x 128) + refiner calls x refiner UNet(same)
    VAE decode      one 128x128 latent -> 1024x1024 pixels

Ours: 32 base + 8 refiner calls (40 steps, hand-off at 0.8). Upstream Instill recipe: 40 base + 12
refiner calls (the refiner as img2img on the finished latents, strength 0.3: int(40 * 0.3) = 12).
"""

from __future__ import annotations

import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from . import sdxl_configs as configs

LATENT = 128  # 1024 / the VAE's 8x downsampling
TOKENS = 77
CFG_BATCH = 2


def build_meta_models() -> dict[str, torch.nn.Module]:
    """The five SDXL networks with their real configurations, on the meta device (shapes only)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.device("meta"):
        models = {
            "base_unet": UNet2DConditionModel(**configs.BASE_UNET),
            "refiner_unet": UNet2DConditionModel(**configs.REFINER_UNET),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**configs.TEXT_ENCODER)),
            "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**configs.TEXT_ENCODER_2)),
            "vae": AutoencoderKL(**configs.VAE),
        }
    return {name: model.eval() for name, model in models.items()}


def parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _count(run) -> int:
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()


def _unet_flops(unet, latent: int, cross_dim: int, time_ids: int) -> int:
    meta = "meta"
    return _count(lambda: unet(
        torch.zeros(CFG_BATCH, 4, latent, latent, device=meta), torch.zeros(CFG_BATCH, device=meta),
        torch.zeros(CFG_BATCH, TOKENS, cross_dim, device=meta),
        added_cond_kwargs={"text_embeds": torch.zeros(CFG_BATCH, 1280, device=meta),
                           "time_ids": torch.zeros(CFG_BATCH, time_ids, device=meta)},
    ))


def count(latent: int = LATENT) -> dict:
    """FLOPs per call of each component, the parameter check, and FLOPs per image of both recipes."""
    started = time.perf_counter()
    models = build_meta_models()
    params = {name: parameters(model) for name, model in models.items()}
    assert params["base_unet"] == configs.BASE_UNET_PARAMETERS, params["base_unet"]
    assert params["refiner_unet"] == configs.REFINER_UNET_PARAMETERS, params["refiner_unet"]

    ids = torch.zeros(CFG_BATCH, TOKENS, dtype=torch.long, device="meta")
    per_call = {
        # The refiner UNet sees bigG's 1280-wide hidden states and 5 micro-conditions (with the aesthetic score).
        "base_unet": _unet_flops(models["base_unet"], latent, 2048, 6),
        "refiner_unet": _unet_flops(models["refiner_unet"], latent, 1280, 5),
        "text_encoder": _count(lambda: models["text_encoder"](ids, output_hidden_states=True)),
        "text_encoder_2": _count(lambda: models["text_encoder_2"](ids, output_hidden_states=True)),
        "vae_decode": _count(lambda: models["vae"].decode(torch.zeros(1, 4, latent, latent, device="meta"))),
    }
    # Both recipes encode the prompt for the base (both encoders) and again for the refiner (bigG only).
    text = per_call["text_encoder"] + 2 * per_call["text_encoder_2"]

    def recipe(base_calls: int, refiner_calls: int, refiner_text: bool = True) -> dict:
        parts = {
            "text_encoders": text if refiner_text else per_call["text_encoder"] + per_call["text_encoder_2"],
            "base_unet": base_calls * per_call["base_unet"],
            "refiner_unet": refiner_calls * per_call["refiner_unet"],
            "vae_decode": per_call["vae_decode"],
        }
        return {"unet_calls": {"base": base_calls, "refiner": refiner_calls}, "flops": parts,
                "total_flops": sum(parts.values())}

    return {
        "resolution": latent * 8,
        "latent": latent,
        "cfg_batch": CFG_BATCH,
        "parameters": params,
        "flops_per_call": per_call,
        "ours": recipe(32, 8),
        "upstream": recipe(40, 12),
        # The configuration of the published A100 timings quoted in bench/on_paper.py: the base alone, 30 steps.
        "base_only_30_steps": recipe(30, 0, refiner_text=False),
        "seconds_to_count": round(time.perf_counter() - started, 2),
    }


if __name__ == "__main__":
    import json

    print(json.dumps(count(), indent=2))
