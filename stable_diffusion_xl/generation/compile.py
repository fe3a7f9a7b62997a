"""Regional compilation (SDXL_COMPILE=1): torch.compile for the UNets' repeated transformer blocks, not whole
networks; the convolutions, the time embedding and the VAE run eager. Compiled on the blocks' first calls, which
`Engine.warm_up` makes for every shape a request can give. Why regional, the modes, the cache and why LoRA adapters
are refused: docs/performance.md, "Compiled transformer blocks". torch is imported where a compile runs, so the
settings and the command line's help import none.
"""

from __future__ import annotations

from ..fields import UserError
from ..weights.lora_files import available, described

BACKEND = "inductor"  # torch's own; tests/test_compile.py swaps in aot_eager, which skips code generation
# Inductor's modes, in order of start-up cost.
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs", "max-autotune")
DEFAULT_COMPILE_MODE = "default"
# Per compiled function, the graphs torch keeps before it falls back to eager: every block of every UNet shares
# BasicTransformerBlock's, and SDXL needs eight (four widths, batch 1 and more). Room for other checkpoints.
RECOMPILE_LIMIT = 32


class CompileRefused(UserError, ValueError):
    """A compiled engine was asked for with something it cannot serve."""


def refuse_adapters(lora_dir) -> None:
    """Raise when the LoRA folder holds adapters: a compiled deployment cannot serve them."""
    names = available(lora_dir)
    if names:
        raise CompileRefused(
            f"SDXL_COMPILE=1 does not combine with LoRA adapters, and {lora_dir} has {described(names)}: switching "
            "adapters on a compiled UNet recompiles it. Set SDXL_COMPILE=0, or SDXL_LORA_DIR to a folder without "
            "adapters")


def compile_pipelines(base, refiner, device: str, compile_mode: str = DEFAULT_COMPILE_MODE) -> None:
    """Compile both pipelines' UNets' transformer blocks, in place; nothing runs until their first calls."""
    import torch

    if compile_mode not in COMPILE_MODES:
        raise CompileRefused(f"compile mode {compile_mode!r}: must be one of {', '.join(COMPILE_MODES)}")
    if device == "cuda" and compile_mode != DEFAULT_COMPILE_MODE:  # diffusers' SDXL tutorial, for max-autotune
        torch._inductor.config.coordinate_descent_tuning = True
        torch._inductor.config.epilogue_fusion = False
        torch._inductor.config.coordinate_descent_check_all_directions = True
    # Process-wide, as diffusers' docs set it for dynamic shapes: without it, sizes of the same value share a
    # symbol, so a square first image would tie height to width and the next aspect ratio would recompile.
    torch.fx.experimental._config.use_duck_shape = False
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    for pipeline in (base, refiner):
        if device == "cuda":  # cuDNN's eager convolutions are faster in channels_last
            pipeline.unet.to(memory_format=torch.channels_last)
        pipeline.unet.fuse_qkv_projections()  # one matrix product for Q, K and V, inside the compiled blocks
        inductor_mode = None if compile_mode == DEFAULT_COMPILE_MODE else compile_mode
        pipeline.unet.compile_repeated_blocks(backend=BACKEND, mode=inductor_mode, fullgraph=True, dynamic=True)


def compiled_graphs() -> int:
    """Graphs compiled in this process so far (dynamo's count): what a warm-up compiles, and what a request must not."""
    import torch

    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def inductor_compiles() -> int:
    """Graphs inductor generated code for in this process (its FX graph cache's misses and bypasses): none when a
    compile cache held them all."""
    import torch

    counts = torch._dynamo.utils.counters["inductor"]
    return counts["fxgraph_cache_miss"] + counts["fxgraph_cache_bypass"]
