"""Regional compilation (SDXL_COMPILE=1): torch.compile for the UNets' repeated transformer blocks, not whole networks.

diffusers' `compile_repeated_blocks` compiles each `BasicTransformerBlock` (the attention and feed-forward layers that
do most of a UNet's work) and nothing around them: the blocks of one width share one graph, whose weights are its
inputs, so SDXL's seventy blocks compile as a handful of small graphs in a fraction of a whole UNet's compile time.
The convolutions, the time embedding and the VAE run eager. torch.compile is lazy: the compiler runs on the blocks'
first calls, which `Engine.warm_up` makes for every shape a request can give, before the replica is ready.

Shapes are dynamic, so one graph per block width serves every image size, batch size and prompt length. torch
specialises sizes of 1, so batch 1 (one image, guidance off) is a second graph of each width. The parameters' shapes
stay static (torch's default): the kernels are specialised to each width. SDXL's base has blocks of two widths and
its refiner two others: eight graphs, inductor's default mode. Compiling the whole UNets and the VAE decoder, as
this module did before, had not finished warming up after nine minutes on an H200 (docs/performance.md).

SDXL_COMPILE_MODE chooses inductor's mode. max-autotune benchmarks candidate kernels for every matrix product of
every graph: minutes more at the first start (a compile cache keeps them for the next). `max-autotune` also
records CUDA graphs, per shape and per worker thread, at request time: more memory, and a slow first call for each
new prompt length. On the CPU the autotuning searches C++ GEMM templates for a long time.

LoRA adapters are refused. On compiled blocks with dynamic shapes, a new adapter scale reuses the graph (torch traces
float scales as symbols), but each new set or order of active adapters is a new graph: a folder of adapters stacked
per request would compile at request time, without bound. diffusers' hot-swap (`enable_lora_hotswap`,
`load_lora_weights(hotswap=True)`) replaces one adapter's weights in place, padded to one rank, on the same layers.
Serving our requests with it would take fixed adapter slots, all active in every request (each paying every slot's
matrix products, LoRA or not), padded to the largest rank and to the union of the adapters' layers, refilled per
request, and unfused Q, K and V projections (adapters target them one by one; fused, they are bypassed).
"""

from __future__ import annotations

import torch

from ..weights.lora_files import available, described

BACKEND = "inductor"  # torch's own; tests/test_compile.py swaps in aot_eager, which skips code generation
MODES = ("default", "max-autotune-no-cudagraphs", "max-autotune")  # inductor's, in order of start-up cost
DEFAULT_MODE = "default"
# Per compiled function, the graphs torch keeps before it falls back to eager: every block of every UNet shares
# BasicTransformerBlock's, and SDXL needs eight (four widths, batch 1 and more). Room for other checkpoints.
RECOMPILE_LIMIT = 32


class CompileRefused(ValueError):
    """A compiled engine was asked for with something it cannot serve."""


def refuse_adapters(lora_dir) -> None:
    """Raise when the LoRA folder holds adapters: a compiled deployment cannot serve them."""
    names = available(lora_dir)
    if names:
        raise CompileRefused(
            f"SDXL_COMPILE=1 does not combine with LoRA adapters, and {lora_dir} has {described(names)}: switching "
            "adapters on a compiled UNet recompiles it. Set SDXL_COMPILE=0, or SDXL_LORA_DIR to a folder without "
            "adapters")


def compile_pipelines(base, refiner, device: str, mode: str = DEFAULT_MODE) -> None:
    """Compile both pipelines' UNets' transformer blocks, in place; nothing runs until their first calls."""
    if mode not in MODES:
        raise CompileRefused(f"compile mode {mode!r}: must be one of {', '.join(MODES)}")
    if device == "cuda" and mode != DEFAULT_MODE:  # diffusers' SDXL tutorial, for max-autotune
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
        pipeline.unet.compile_repeated_blocks(backend=BACKEND, mode=None if mode == DEFAULT_MODE else mode,
                                              fullgraph=True, dynamic=True)


def compiled_graphs() -> int:
    """Graphs compiled in this process so far (dynamo's count): what a warm-up compiles, and what a request must not."""
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def inductor_compiles() -> int:
    """Graphs inductor generated code for in this process (its FX graph cache's misses and bypasses): none when a
    compile cache held them all."""
    counts = torch._dynamo.utils.counters["inductor"]
    return counts["fxgraph_cache_miss"] + counts["fxgraph_cache_bypass"]
