"""Rows counted, not timed: FLOPs over the real SDXL configurations (2) and GPU figures on paper (P)."""

from __future__ import annotations

from bench import flops as flop_count
from bench.harness import log, tflop
from bench.on_paper import estimates


def flops(bench) -> dict:
    log("FLOPs: real SDXL configurations on the meta device ...")
    counted = flop_count.count()
    log(f"  ours {counted['ours']['total_flops'] / 1e12:.1f} TFLOP, upstream "
        f"{counted['upstream']['total_flops'] / 1e12:.1f} TFLOP per image ({counted['seconds_to_count']} s)")
    return counted


def flops_lines(fl: dict, results: dict) -> list[tuple]:
    per_call = fl["flops_per_call"]
    return [
        (f"FLOPs per image, real SDXL at {fl['resolution']}², CFG (counted on the meta device)",
         tflop(fl["ours"]["total_flops"]), f"upstream: {tflop(fl['upstream']['total_flops'])}",
         f"{fl['upstream']['total_flops'] / fl['ours']['total_flops']:.2f}× (upstream / ours)"),
        ("FLOPs per call (batch 2 for UNets and text encoders)",
         f"base UNet {tflop(per_call['base_unet'])}, refiner UNet {tflop(per_call['refiner_unet'])}",
         f"VAE decode {tflop(per_call['vae_decode'])}, text encoders per image "
         f"{tflop(fl['ours']['flops']['text_encoders'])}",
         f"UNet params {fl['parameters']['base_unet']:,} / {fl['parameters']['refiner_unet']:,} ✓"),
    ]


def on_paper(bench) -> dict:
    return estimates(bench.results.get("flops") or flop_count.count())


def on_paper_lines(paper: dict, results: dict) -> list[tuple]:
    po, pu = paper["ours"], paper["upstream"]

    def a100(p):
        half = [v for k, v in p["a100_scaled_seconds"].items() if not k.startswith("fp32")]
        central = p["a100_scaled_seconds"]["bf16 + SDPA"]
        return f"≈ {central:.1f} s (half precision: {min(half):.1f}–{max(half):.1f} s)"

    weights = paper["weights_bytes"]
    return [
        ("on paper, NOT measured on a GPU: time per image ≥ FLOPs / H100 SXM dense bf16 peak (989 TFLOPS)",
         f"≥ {po['h100_lower_bound_seconds']:.2f} s", f"upstream: ≥ {pu['h100_lower_bound_seconds']:.2f} s",
         "lower bound"),
        ("on paper, NOT measured on a GPU: A100 80 GB, published SDXL base 30-step timings "
         "(diffusers docs) scaled by FLOPs", a100(po), f"upstream: {a100(pu)}", "see bench/on_paper.py"),
        ("on paper: weights in GPU memory (both recipes load the same five networks)",
         f"{weights['fp16_vae_fp32'] / 1e9:.1f} GB (fp16, VAE fp32)",
         f"{weights['all_fp16'] / 1e9:.1f} GB all fp16 (with the fp16-fix VAE)", "activations extra"),
    ]
