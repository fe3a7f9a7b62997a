"""torch.compile for the networks that do the work: both UNets and the VAE decoder (SDXL_COMPILE=1).

As diffusers' docs do it for SDXL: channels_last, fused QKV projections, `torch.compile(fullgraph=True)`, on CUDA
with max-autotune and the inductor settings of their SDXL tutorial. torch.compile is lazy: the compiler runs on a
network's first calls, which `Engine.warm_up` makes for every shape a request can give, before the replica is ready.

Shapes are dynamic, so one graph per network serves every image size, batch size and prompt length. torch
specialises sizes of 1, so batch 1 (one image, guidance off) is a second graph of each UNet; the VAE decodes one
image at a time (slicing), always batch 1: five graphs in all. Integer timesteps (ddim, dpm++, unipc) would be
graphs of their own, so they reach the UNets as float32, which the UNets' time embedding casts them to first anyway.

On CUDA the mode is max-autotune without CUDA graphs: torch records CUDA graphs per thread and per shape, and the
replica generates on a pool of worker threads, so each thread would record, and hold the memory of, its own graphs
at request time.

LoRA adapters are refused: switching, stacking or scaling adapters on a compiled UNet recompiles it, and fused QKV
projections bypass the adapters' layers. diffusers' hot-swap (`enable_lora_hotswap`) replaces one adapter's weights in
place, padded to one rank and on the same layers, which does not fit adapters stacked and scaled per request.
"""

from __future__ import annotations

import torch

from ..weights.lora_files import available

BACKEND = "inductor"  # torch's own; tests/test_compile.py swaps in aot_eager, which skips code generation
# CPU (tests, the demo): the default mode; max-autotune would search C++ GEMM templates for a long time.
MODES = {"cuda": "max-autotune-no-cudagraphs"}


class CompileRefused(ValueError):
    """A compiled engine was asked for with something it cannot serve."""


def refuse_adapters(lora_dir) -> None:
    """Raise when the LoRA folder holds adapters: a compiled deployment cannot serve them."""
    names = available(lora_dir)
    if names:
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        raise CompileRefused(
            f"SDXL_COMPILE=1 does not combine with LoRA adapters, and {lora_dir} has {len(names)} ({shown}): switching "
            "adapters on a compiled UNet recompiles it. Set SDXL_COMPILE=0, or SDXL_LORA_DIR to a folder without "
            "adapters")


def compile_pipelines(base, refiner, device: str) -> None:
    """Compile both pipelines' UNets and their shared VAE's decoder, in place; nothing runs until their first calls."""
    if device == "cuda":  # diffusers' SDXL tutorial
        torch._inductor.config.conv_1x1_as_mm = True
        torch._inductor.config.coordinate_descent_tuning = True
        torch._inductor.config.epilogue_fusion = False
        torch._inductor.config.coordinate_descent_check_all_directions = True
    # Process-wide, as diffusers' docs set it for dynamic shapes: without it, sizes of the same value share a
    # symbol, so a square first image would tie height to width and the next aspect ratio would recompile.
    torch.fx.experimental._config.use_duck_shape = False
    options = {"backend": BACKEND, "mode": MODES.get(device), "fullgraph": True, "dynamic": True}
    for pipeline in (base, refiner):
        pipeline.unet.to(memory_format=torch.channels_last)
        pipeline.unet.fuse_qkv_projections()
        pipeline.unet = torch.compile(pipeline.unet, **options)
        # Outside the compiled code (a hook of the wrapper), so the compiler only ever sees float32 timesteps.
        pipeline.unet.register_forward_pre_hook(_float_timestep, with_kwargs=True)
    base.vae.to(memory_format=torch.channels_last)
    base.vae.fuse_qkv_projections()
    base.vae.decoder = torch.compile(base.vae.decoder, **options)  # the decoder alone: decode() loops over slices


def compiled_graphs() -> int:
    """Graphs compiled in this process so far (dynamo's count): what a warm-up compiles, and what a request must not."""
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def _float_timestep(_unet, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    # The SDXL pipelines pass the timestep second, positionally; diffusers casts it the same way for Neuron's
    # compiled UNet.
    sample, timestep, *rest = args
    if not timestep.is_floating_point():
        timestep = timestep.to(torch.float32)
    return (sample, timestep, *rest), kwargs
