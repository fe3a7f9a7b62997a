"""Rows on compilation (7): our recipe compiled (SDXL_COMPILE=1) against eager, and what compiling costs at
start-up. About six minutes on 2 CPU cores (`run.py --no-compile` skips them)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench.harness import interleave, log, ratio, seconds, summary, timed
from bench.workload import recipes


def compiled_vs_eager(bench) -> dict:
    """Our recipe on an eager engine and on a compiled one (SDXL_COMPILE=1), interleaved, and the two warm-ups: the
    compiled one runs the compiler, here from an empty cache. Neither has adapters (compiling refuses them)."""
    import numpy as np
    from torch._inductor.utils import fresh_cache

    from stable_diffusion_xl.generation.compile import compiled_graphs
    from stable_diffusion_xl.generation.engine import Engine

    log(f"compiled against eager: both warm-ups, then our recipe, {bench.args.runs} runs each")
    with tempfile.TemporaryDirectory(prefix="sdxl-no-adapters-") as no_adapters, fresh_cache():
        engines = {mode: Engine.load(bench.weights_root, demo=True, lora_dir=Path(no_adapters),
                                     compile=mode == "compiled")
                   for mode in ("eager", "compiled")}
        graphs = compiled_graphs()
        warm_up = {mode: timed(engine.warm_up) for mode, engine in engines.items()}
        graphs = compiled_graphs() - graphs
        log(f"  warm-up: eager {warm_up['eager']:.1f} s, compiled {warm_up['compiled']:.1f} s ({graphs} graphs)")
        runners = {mode: recipes(engine)[0]["ours"] for mode, engine in engines.items()}
        images = {mode: np.asarray(run()[0], dtype=np.int16) for mode, run in runners.items()}
        times = interleave(runners, bench.args.runs)
    return {"warm_up_seconds": warm_up, "graphs_compiled": graphs, "max_batch_size": engines["compiled"].max_batch_size,
            "image_size": list(recipes(engines["eager"])[1]),
            **{mode: summary(values) for mode, values in times.items()},
            "max_pixel_difference": int(np.abs(images["compiled"] - images["eager"]).max())}


def compiled_lines(co: dict, results: dict) -> list[tuple]:
    w, h = co["image_size"]
    warm_up = co["warm_up_seconds"]
    return [
        (f"compiled (SDXL_COMPILE=1) vs eager: wall time per image, CPU, demo weights {w}×{h}, "
         f"{co['compiled']['n']} interleaved runs", seconds(co["compiled"]),
         f"eager: {seconds(co['eager'])}; max pixel difference {co['max_pixel_difference']}",
         ratio(co["eager"], co["compiled"], "eager / compiled")),
        (f"what compiling costs at start-up: Engine.warm_up() compiling every network (empty cache), "
         f"max batch {co['max_batch_size']}", f"{warm_up['compiled']:.0f} s ({co['graphs_compiled']} graphs)",
         f"eager: {warm_up['eager']:.1f} s", f"+{warm_up['compiled'] - warm_up['eager']:.0f} s"),
    ]
