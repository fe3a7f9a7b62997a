"""The device and precision SDXL runs in, and its base pipeline read from disk: one way, for serving and training."""

from __future__ import annotations

from pathlib import Path

import torch


def choose_device(device: str | None = None) -> str:
    """`device` as asked, or cuda where torch has a GPU, else cpu."""
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def dtype_for(device: str, *, training: bool = False) -> torch.dtype:
    """fp32 on a CPU, where half precision is slow and poorly supported. On a GPU, fp16 to serve (the weights' own
    precision) and bf16 to train where the GPU has it: a training's gradients need its range."""
    if device == "cpu":
        return torch.float32
    if training and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def load_base(folder: Path, dtype: torch.dtype, vae=None):
    """SDXL's base pipeline from its diffusers folder (safetensors, the fp16 files), with `vae`, or else its own VAE
    in fp32: SDXL's VAE overflows in fp16 (what diffusers' force_upcast is for)."""
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline

    if vae is None:
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", dtype=torch.float32, variant="fp16",
                                            use_safetensors=True)
    return StableDiffusionXLPipeline.from_pretrained(folder, dtype=dtype, vae=vae, variant="fp16", use_safetensors=True)
