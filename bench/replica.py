"""One compiled replica's start in a fresh process, as bench/rows/compile.py measures it: Engine.load(compile=True)
on the demo weights, then warm_up(). Prints one JSON line: wall and CPU seconds of the load and the warm-up, graphs
traced, inductor's FX graph cache hits and misses, and whether the compile cache held an entry.

    python -m bench.replica --weights ROOT --compile-cache DIR   # run twice on one DIR: the second is a replica
                                                                 # with the compile cache the first one saved

Inductor's own caches start empty in a temporary folder, so only the compile cache can spare the compiler.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path


def cpu_seconds() -> float:
    """User and system CPU time of this process and of its finished children (the C++ compiler): on a shared machine
    they measure the compiler's work where wall seconds measure the neighbours too."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def fxgraph_cache() -> dict:
    """Inductor's FX graph cache counters in this process: a hit is code it did not generate again."""
    import torch

    counts = torch._dynamo.utils.counters["inductor"]
    return {"hits": counts["fxgraph_cache_hit"], "misses": counts["fxgraph_cache_miss"],
            "bypasses": counts["fxgraph_cache_bypass"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", type=Path, required=True, help="a weights root holding demo/")
    parser.add_argument("--compile-cache", type=Path, required=True, help="SDXL_COMPILE_CACHE")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sdxl-replica-") as tmp:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(tmp) / "inductor")  # before torch reads it
        # The compiler in this process (C++ builds in waited-for children), so cpu_seconds() counts all its work.
        os.environ["TORCHINDUCTOR_COMPILE_THREADS"] = "1"
        (Path(tmp) / "loras").mkdir()
        started, cpu_started = time.perf_counter(), cpu_seconds()
        from stable_diffusion_xl.generation.compile import compiled_graphs
        from stable_diffusion_xl.generation.engine import Engine

        engine = Engine.load(args.weights, demo=True, lora_dir=Path(tmp) / "loras", compile=True,
                             compile_cache=args.compile_cache)
        loaded, cpu_loaded, graphs = time.perf_counter(), cpu_seconds(), compiled_graphs()
        engine.warm_up()
        warmed, cpu_warmed = time.perf_counter(), cpu_seconds()
        print(json.dumps({
            "load_seconds": loaded - started, "load_cpu_seconds": cpu_loaded - cpu_started,  # imports included
            "warm_up_seconds": warmed - loaded, "warm_up_cpu_seconds": cpu_warmed - cpu_loaded,
            "graphs_traced": compiled_graphs() - graphs, "fxgraph_cache": fxgraph_cache(),
            "compile_cache_loaded": engine.compile_cache.loaded, "max_batch_size": engine.max_batch_size,
        }))


if __name__ == "__main__":
    sys.exit(main())
