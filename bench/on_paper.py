"""GPU figures on paper: NOT measured on a GPU. Peak throughput and published timings, with their sources.

Two estimates per recipe, both derived from the FLOPs bench/flops.py counts:

* a lower bound: FLOPs per image / an H100 SXM's dense fp16/bf16 tensor-core peak. No real run
  reaches the peak (attention, norms, memory traffic), so real times are higher.
* an expected range: published A100 timings of SDXL *base alone, 30 steps, 1024x1024*, scaled by
  the FLOPs ratio of each recipe to that configuration (assumes the same achieved FLOP rate).
"""

from __future__ import annotations

# NVIDIA H100 SXM5 datasheet: 989 TFLOPS fp16/bf16 tensor core, dense (1,979 with sparsity).
H100_SXM_DENSE_BF16_FLOPS = 989e12

# SDXL base only, 30 steps, 1024x1024, batch 1, on an 80 GB A100 (clock at max), seconds.
PUBLISHED_A100_BASE_30_STEPS = {
    "fp32, default attention": 7.36,
    "bf16": 4.63,
    "bf16 + SDPA": 3.315,
    "bf16 + SDPA + torch.compile": 2.538,
}
PUBLISHED_SOURCES = [
    {"title": "Accelerate inference of text-to-image diffusion models (Hugging Face diffusers docs)",
     "url": "https://huggingface.co/docs/diffusers/v0.25.0/tutorials/fast_diffusion",
     "quote": "SDXL base, 30 steps, 80GB 400W A100: the default fp32 setup takes 7.36 seconds; "
              "bfloat16 reduces the latency from 7.36 seconds to 4.63 seconds"},
    {"title": "huggingface/diffusion-fast results, collated_results_sdxl.csv (the tutorial's benchmark data)",
     "url": "https://huggingface.co/datasets/sayakpaul/sample-datasets/blob/"
            "8285f7668326f13af8d213cd8087218cd7f97483/collated_results_sdxl.csv",
     "quote": "bf16 + SDPA 3.315 s; + torch.compile max-autotune 2.538 s (batch 1, 30 steps)"},
]


def estimates(flops: dict) -> dict:
    """Seconds per image on paper for ours and upstream: H100 lower bound and A100 range scaled from published."""
    reference = flops["base_only_30_steps"]["total_flops"]
    out = {"label": "on paper, NOT measured on a GPU", "h100_peak_flops": H100_SXM_DENSE_BF16_FLOPS,
           "published_a100_base_30_steps_seconds": PUBLISHED_A100_BASE_30_STEPS, "sources": PUBLISHED_SOURCES}
    params = flops["parameters"]
    # fp16 on a GPU; the VAE stays fp32 unless the fp16-fix VAE is there (stable_diffusion_xl/engine.py).
    out["weights_bytes"] = {"fp16_vae_fp32": 2 * (sum(params.values()) - params["vae"]) + 4 * params["vae"],
                            "all_fp16": 2 * sum(params.values())}
    for recipe in ("ours", "upstream"):
        total = flops[recipe]["total_flops"]
        scale = total / reference
        out[recipe] = {
            "h100_lower_bound_seconds": total / H100_SXM_DENSE_BF16_FLOPS,
            "a100_scaled_seconds": {name: seconds * scale for name, seconds in PUBLISHED_A100_BASE_30_STEPS.items()},
            "flops_vs_published_config": scale,
        }
    return out
