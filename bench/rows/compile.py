"""Rows on compilation (7): our recipe compiled (SDXL_COMPILE=1) against eager, what compiling costs at start-up,
a second replica with the compile cache filled against the first, and the regional compile against the
whole-network compile it replaced. About ten minutes on 2 CPU cores (`run.py --no-compile` skips them).

Each compiled engine starts from empty caches: inductor's in a fresh folder, the compile cache in a temporary one
(its default, compile-cache/ beside the weights, would hold an earlier run's artifacts). The compiler runs in the
measuring process (one compile thread), so CPU seconds, the process's and its finished children's, count its work
where wall seconds also count the neighbours of a shared machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.harness import REPO, interleave, log, ratio, seconds, summary, timed
from bench.replica import cpu_seconds, fxgraph_cache
from bench.workload import recipes

# Earlier measurements of the whole-network compile (both UNets and the VAE decoder) that regional compilation
# replaced; that code is gone, so they are quoted, not measured again.
WHOLE_NETWORK = {"warm_up_cpu_seconds": 427, "measured": "bench/compile_cpu.py at 884882d",
                 "warm_up_seconds": 351, "wall_measured": "row 7 of the earlier README"}
REPLICA_TARGET = 0.20  # a second replica's warm-up, of the first's (issue 20)
REGIONAL_TARGET = 1 / 3  # regional warm-up, of the whole-network one's


def compiled_vs_eager(bench) -> dict:
    """Our recipe on an eager engine and on a compiled one (SDXL_COMPILE=1), interleaved, and the two warm-ups: the
    compiled one runs the compiler, from empty caches. Neither has adapters (compiling refuses them)."""
    import numpy as np
    import torch
    from torch._inductor.utils import fresh_cache

    from stable_diffusion_xl.generation.compile import compiled_graphs
    from stable_diffusion_xl.generation.engine import Engine

    log(f"compiled against eager: both warm-ups, then our recipe, {bench.args.runs} runs each")
    with tempfile.TemporaryDirectory(prefix="sdxl-bench-compile-") as tmp, fresh_cache(), \
            torch._inductor.config.patch(compile_threads=1):
        (Path(tmp) / "loras").mkdir()
        engines = {mode: Engine.load(bench.weights_root, demo=True, lora_dir=Path(tmp) / "loras",
                                     compile=mode == "compiled", compile_cache=Path(tmp) / "compile-cache")
                   for mode in ("eager", "compiled")}
        warm_up, warm_up_cpu, traced = {}, {}, {}
        for mode, engine in engines.items():
            graphs, cpu = compiled_graphs(), cpu_seconds()
            warm_up[mode] = timed(engine.warm_up)
            warm_up_cpu[mode], traced[mode] = cpu_seconds() - cpu, compiled_graphs() - graphs
        graphs = traced["compiled"]
        log(f"  warm-up: eager {warm_up['eager']:.1f} s, compiled {warm_up['compiled']:.1f} s "
            f"({warm_up_cpu['compiled']:.0f} CPU-s, {graphs} graphs)")
        runners = {mode: recipes(engine)[0]["ours"] for mode, engine in engines.items()}
        images = {mode: np.asarray(run()[0], dtype=np.int16) for mode, run in runners.items()}
        times = interleave(runners, bench.args.runs)
    return {"warm_up_seconds": warm_up, "warm_up_cpu_seconds": warm_up_cpu, "graphs_compiled": graphs,
            "fxgraph_cache": fxgraph_cache(), "max_batch_size": engines["compiled"].max_batch_size,
            "image_size": list(recipes(engines["eager"])[1]),
            **{mode: summary(values) for mode, values in times.items()},
            "max_pixel_difference": int(np.abs(images["compiled"] - images["eager"]).max())}


def compiled_lines(co: dict, results: dict) -> list[tuple]:
    w, h = co["image_size"]
    warm_up, cpu = co["warm_up_seconds"], co["warm_up_cpu_seconds"]
    return [
        (f"compiled (SDXL_COMPILE=1) vs eager: wall time per image, CPU, demo weights {w}×{h}, "
         f"{co['compiled']['n']} interleaved runs", seconds(co["compiled"]),
         f"eager: {seconds(co['eager'])}; max pixel difference {co['max_pixel_difference']}",
         ratio(co["eager"], co["compiled"], "eager / compiled")),
        (f"what compiling costs at start-up: Engine.warm_up() compiling the transformer blocks (empty caches), "
         f"max batch {co['max_batch_size']}",
         f"{warm_up['compiled']:.0f} s, {cpu['compiled']:.0f} CPU-s ({co['graphs_compiled']} graphs)",
         f"eager: {warm_up['eager']:.1f} s, {cpu['eager']:.1f} CPU-s",
         f"+{warm_up['compiled'] - warm_up['eager']:.0f} s"),
    ]


def replicas(bench) -> dict:
    """Pairs of compiled replicas (`--runs` pairs, at most 3: each pair is about two minutes), each replica a fresh
    process (bench/replica.py) with inductor's caches empty. In a pair both use one new compile cache folder: the
    first finds it empty, compiles and saves; the second loads what the first saved."""
    pairs = []
    for index in range(min(bench.args.runs, 3)):
        with tempfile.TemporaryDirectory(prefix="sdxl-bench-compile-cache-") as cache:
            pair = {}
            for which in ("first", "second"):
                pair[which] = numbers = replica(bench.weights_root, Path(cache))
                log(f"  pair {index + 1}, {which} replica: {numbers['warm_up_seconds']:.1f} s, "
                    f"{numbers['warm_up_cpu_seconds']:.1f} CPU-s, {numbers['graphs_traced']} graphs, "
                    f"fxgraph cache {numbers['fxgraph_cache']}")
        if pair["first"]["compile_cache_loaded"] or not pair["second"]["compile_cache_loaded"]:
            raise RuntimeError(f"the compile cache was not empty for the first replica, or not filled for the "
                               f"second: {pair}")
        pairs.append(pair)
    return summarised(pairs)


def summarised(pairs: list[dict]) -> dict:
    """The pairs, each replica's warm-up summarised, and the second's share of the first's, pair by pair."""
    numbers: dict = {"pairs": pairs}
    for unit in ("seconds", "cpu_seconds"):
        for which in ("first", "second"):
            numbers.setdefault(which, {})[f"warm_up_{unit}"] = summary([p[which][f"warm_up_{unit}"] for p in pairs])
        numbers[f"second_of_first_{unit}"] = summary([p["second"][f"warm_up_{unit}"] / p["first"][f"warm_up_{unit}"]
                                                      for p in pairs])
    return numbers


def replica(weights_root: Path, cache: Path) -> dict:
    """One replica's numbers: bench/replica.py in a fresh process, its stdout's last line."""
    done = subprocess.run([sys.executable, "-m", "bench.replica", "--weights", str(weights_root),
                           "--compile-cache", str(cache)], cwd=REPO, capture_output=True, text=True, timeout=1800)
    if done.returncode:
        raise RuntimeError(f"bench/replica.py failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def replica_lines(started: dict, results: dict) -> list[tuple]:
    pairs, first = started["pairs"], started["first"]

    def warm_up(which: str) -> str:
        hits = "/".join(str(pair[which]["fxgraph_cache"]["hits"]) for pair in pairs)
        misses = "/".join(str(pair[which]["fxgraph_cache"]["misses"]) for pair in pairs)
        numbers = started[which]
        return (f"{seconds(numbers['warm_up_cpu_seconds'], 'CPU-s')}, {seconds(numbers['warm_up_seconds'])} wall; "
                f"{pairs[0][which]['graphs_traced']} graphs traced, inductor FX graph cache {hits} hits / "
                f"{misses} misses")

    share, wall = started["second_of_first_cpu_seconds"], started["second_of_first_seconds"]
    regional = first["warm_up_cpu_seconds"]["median"] / WHOLE_NETWORK["warm_up_cpu_seconds"]
    return [
        (f"a second replica with the compile cache filled: Engine.warm_up() in a fresh process, inductor's caches "
         f"empty, the compile cache the first replica saved, max batch {pairs[0]['second']['max_batch_size']}, "
         f"{len(pairs)} pairs", warm_up("second"),
         f"the first replica (a fresh process, every cache empty): {warm_up('first')}",
         f"{share['median']:.2f}× CPU-s [{share['min']:.2f}–{share['max']:.2f}], {wall['median']:.2f}× wall "
         f"[{wall['min']:.2f}–{wall['max']:.2f}] (second / first, per pair; target ≤ {REPLICA_TARGET:.2f})"),
        ("regional compile (the transformer blocks) against the whole-network compile it replaced: the first "
         "replica's warm-up", f"{seconds(first['warm_up_cpu_seconds'], 'CPU-s')}, {seconds(first['warm_up_seconds'])}"
         " wall", f"whole UNets and VAE decoder, an EARLIER measurement, not this run's: "
         f"{WHOLE_NETWORK['warm_up_cpu_seconds']} CPU-s ({WHOLE_NETWORK['measured']}), "
         f"{WHOLE_NETWORK['warm_up_seconds']} s wall ({WHOLE_NETWORK['wall_measured']})",
         f"{regional:.2f}× CPU-s (this run's median / earlier; target ≤ {REGIONAL_TARGET:.2f})"),
    ]
