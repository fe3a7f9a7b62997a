"""Compilation on this machine's CPU (demo weights, inductor): load and warm-up seconds, graphs compiled, what the
inductor caches served, and seconds per image, compiled or eager. One JSON line per run; run it once per variant:

    python bench/compile_cpu.py --eager
    python bench/compile_cpu.py                          # SDXL_COMPILE=1, cold: inductor's caches in a new folder
    python bench/compile_cpu.py --cache out/cc           # twice: the second run is a replica with the cache filled
"""

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# A cold compile unless a cache is given: inductor's own caches start empty in a folder of this run.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="inductor-"))
# Compile in this process (C++ builds in waited-for subprocesses), so CPU seconds count all the compiler's work:
# on a shared machine they measure it where wall seconds measure the neighbours too.
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

import torch  # noqa: E402

from stable_diffusion_xl.generation.compile import compiled_graphs  # noqa: E402
from stable_diffusion_xl.generation.engine import Engine  # noqa: E402
from stable_diffusion_xl.generation.request import TextToImageRequest  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights", type=Path, default=Path("weights"))
    parser.add_argument("--max-batch-size", type=int, default=4)
    parser.add_argument("--eager", action="store_true")
    parser.add_argument("--cache", type=Path, help="SDXL_COMPILE_CACHE")
    parser.add_argument("--mode", help="SDXL_COMPILE_MODE")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    options = {"compile": not args.eager}
    if args.cache:
        options["compile_cache"] = args.cache
    if args.mode:
        options["compile_mode"] = args.mode
    started, cpu_started = time.perf_counter(), cpu_seconds()
    engine = Engine.load(args.weights, demo=True, max_batch_size=args.max_batch_size,
                         lora_dir=Path(tempfile.mkdtemp(prefix="no-adapters-")), **options)
    loaded, cpu_loaded = time.perf_counter(), cpu_seconds()
    engine.warm_up()
    warmed, cpu_warmed, graphs = time.perf_counter(), cpu_seconds(), compiled_graphs()
    batch = TextToImageRequest(prompt="a fox", n=args.max_batch_size, steps=20, seed=7)
    seconds, cpu = [], []
    for _ in range(args.runs):
        before, cpu_before = time.perf_counter(), cpu_seconds()
        engine.generate([batch])
        seconds.append((time.perf_counter() - before) / batch.n)
        cpu.append((cpu_seconds() - cpu_before) / batch.n)
    inductor = torch._dynamo.utils.counters["inductor"]
    print(json.dumps({
        "compiled": not args.eager, "mode": args.mode, "cache": str(args.cache) if args.cache else None,
        "load_s": round(loaded - started, 1), "warm_up_s": round(warmed - loaded, 1),
        "load_cpu_s": round(cpu_loaded - cpu_started, 1), "warm_up_cpu_s": round(cpu_warmed - cpu_loaded, 1),
        "graphs": graphs,
        "fxgraph_cache": {"hit": inductor["fxgraph_cache_hit"], "miss": inductor["fxgraph_cache_miss"]},
        "new_graphs_after_warm_up": compiled_graphs() - graphs,
        "s_per_image": round(statistics.median(seconds), 3), "cpu_s_per_image": round(statistics.median(cpu), 3),
        "batch": batch.n, "steps": batch.steps,
    }))


def cpu_seconds() -> float:
    """User and system CPU time of this process and of its finished children (the C++ compiler)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


if __name__ == "__main__":
    main()
