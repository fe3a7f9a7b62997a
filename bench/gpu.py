"""GPU benchmark: seconds per image at 1024² of our recipe, the upstream Instill recipe and the raw diffusers
pipelines, eager and compiled (SDXL_COMPILE=1), at batch 1, 2 and 4, on a CUDA GPU with the real weights.

    python bench/gpu.py            # or: make bench-gpu   (from the repository root, in .venv)

It refuses to run, saying which is missing, without a CUDA GPU or without the real weights
(`python -m stable_diffusion_xl fetch-weights`). It measures the eager engine, then the compiled one (one at a
time: both would not fit in 24 GB):

- cold start: Engine.load (the second engine reads the weights from the page cache the first one filled) and
  Engine.warm_up(), which for the compiled engine runs the compiler, from an empty inductor cache as a new replica;
- for batch 1, 2 and 4 (n images of one prompt in one UNet batch), 40 steps at 1024×1024, guidance 7.5: seconds
  per image and images per second of bench/run.py's three recipes, interleaved, and the peak GPU memory of each
  (torch.cuda.max_memory_allocated). The three recipes decode alike, with Engine.decode.

It prints one Markdown table, as bench/run.py does, and writes the same numbers, with the machine and the GPU's
name, to bench/results/<date>-gpu.json.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # `python bench/gpu.py`: make `bench` and `stable_diffusion_xl` importable
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench import flops as flop_count  # noqa: E402
from bench import harness, workload  # noqa: E402  (timing, table, results file; bench/run.py's three recipes)
from stable_diffusion_xl.weights.layout import DEFAULT_WEIGHTS_DIR, FETCH_COMMAND, WeightPaths, WeightsMissing  # noqa: E402

BATCHES = (1, 2, 4)
MODES = ("eager", "compiled")


def missing(weights_dir: Path) -> str | None:
    """What this benchmark needs and does not have, in one line; None when it can run."""
    if not torch.cuda.is_available():
        why = "sees none" if torch.version.cuda else "is a CPU-only build"
        return f"no CUDA GPU: torch {torch.__version__} {why}"
    try:
        WeightPaths.locate(weights_dir)
    except WeightsMissing:
        return f"no real weights in {weights_dir}: fetch them (about 12 GB) with `{FETCH_COMMAND}`"
    return None


def measure(weights_dir: Path, compiled: bool, runs: int) -> dict:
    """One engine's cold start, then the three recipes at each batch size."""
    from stable_diffusion_xl.generation.compile import compiled_graphs
    from stable_diffusion_xl.generation.engine import Engine

    torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory(prefix="sdxl-no-adapters-") as no_adapters:  # compiling refuses adapters
        started = time.perf_counter()
        engine = Engine.load(weights_dir, compile=compiled, lora_dir=Path(no_adapters))
        load = time.perf_counter() - started
    graphs = compiled_graphs()
    warm_up = harness.timed(engine.warm_up)
    out = {"load_seconds": load, "warm_up_seconds": warm_up, "graphs_compiled": compiled_graphs() - graphs,
           "peak_memory_warm_up_bytes": torch.cuda.max_memory_allocated()}
    harness.log(f"  load {load:.1f} s, warm-up {warm_up:.1f} s ({out['graphs_compiled']} graphs compiled)")
    for batch in BATCHES:
        runners, _ = workload.recipes(engine, batch)
        for run in runners.values():  # first calls of each recipe at this size
            run()
        times, peaks = {name: [] for name in runners}, dict.fromkeys(runners, 0)
        for index in range(runs):
            for name, run in harness.alternate(runners, index):
                torch.cuda.reset_peak_memory_stats()
                times[name].append(harness.timed(run))  # each recipe ends with its images on the CPU
                peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated())
            harness.log(f"  batch {batch}, run {index + 1}/{runs}: "
                        + ", ".join(f"{name} {values[-1] / batch:.2f} s/image" for name, values in times.items()))
        out[f"batch_{batch}"] = {name: {"seconds_per_image": harness.summary([t / batch for t in values]),
                                        "images_per_second": harness.summary([batch / t for t in values]),
                                        "peak_memory_bytes": peaks[name]}
                                 for name, values in times.items()}
    return out


def table(results: dict) -> str:
    eager, compiled, flops = results["eager"], results["compiled"], results["flops"]
    seconds, rows = harness.seconds, []
    for mode in MODES:
        for batch in BATCHES:
            case = results[mode][f"batch_{batch}"]
            ours, up, raw = (case[name]["seconds_per_image"] for name in ("ours", "upstream", "raw_diffusers"))
            throughput = harness.rate(case["ours"]["images_per_second"])
            rows.append(("G", f"seconds per image, 1024², {workload.DEFAULT_STEPS} steps, batch {batch}, {mode}, "
                              f"{ours['n']} runs", f"{seconds(ours)}; {throughput}",
                         f"upstream: {seconds(up)}; raw diffusers: {seconds(raw)}",
                         f"{up['median'] / ours['median']:.2f}× (upstream / ours)"))
    for batch in BATCHES:
        before, after = eager[f"batch_{batch}"], compiled[f"batch_{batch}"]
        median = {name: (before[name]["seconds_per_image"]["median"], after[name]["seconds_per_image"]["median"])
                  for name in before}
        tflops = flops["ours"]["total_flops"] / median["ours"][1] / 1e12
        rows.append(("G", f"compiled vs eager, batch {batch}: seconds per image (compiled / eager)",
                     f"{median['ours'][1]:.2f} / {median['ours'][0]:.2f} s ({tflops:.0f} TFLOP/s compiled)",
                     f"upstream: {median['upstream'][1]:.2f} / {median['upstream'][0]:.2f} s; raw diffusers: "
                     f"{median['raw_diffusers'][1]:.2f} / {median['raw_diffusers'][0]:.2f} s",
                     f"{median['ours'][0] / median['ours'][1]:.2f}× (eager / compiled)"))
        memory = {name: f"{after[name]['peak_memory_bytes'] / 1e9:.1f} / {before[name]['peak_memory_bytes'] / 1e9:.1f}"
                  for name in before}
        rows.append(("G", f"peak GPU memory, batch {batch} (compiled / eager)", f"{memory['ours']} GB",
                     f"upstream: {memory['upstream']} GB; raw diffusers: {memory['raw_diffusers']} GB", ""))
    rows.append(("G", "cold start: Engine.load + Engine.warm_up() (compiled: every network, from an empty cache)",
                 f"compiled: {compiled['load_seconds']:.0f} s + {compiled['warm_up_seconds']:.0f} s "
                 f"({compiled['graphs_compiled']} graphs)",
                 f"eager: {eager['load_seconds']:.0f} s + {eager['warm_up_seconds']:.0f} s",
                 f"+{compiled['warm_up_seconds'] - eager['warm_up_seconds']:.0f} s of warm-up"))
    return harness.markdown(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each recipe at each batch (default 3)")
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS_DIR, help="the real weights (default: "
                        "weights/)")
    parser.add_argument("--output", type=Path, default=harness.RESULTS, help="folder for the JSON")
    args = parser.parse_args(argv)
    problem = missing(args.weights)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from diffusers.utils import logging as diffusers_logging
    from torch._inductor.utils import fresh_cache

    diffusers_logging.disable_progress_bar()
    results: dict = {"machine": harness.machine(), "weights": str(args.weights.resolve()), "batches": list(BATCHES),
                     "gpu_memory_bytes": torch.cuda.get_device_properties(0).total_memory}
    harness.log(f"GPU: {results['machine']['gpu']}; FLOPs of the real networks on the meta device ...")
    results["flops"] = flop_count.count()
    with fresh_cache():  # compiling from an empty cache, as a new replica does
        for mode in MODES:
            harness.log(f"{mode}: Engine.load, Engine.warm_up(), then {args.runs} runs of each recipe at batch "
                        f"{', '.join(map(str, BATCHES))}")
            results[mode] = measure(args.weights, mode == "compiled", args.runs)
            gc.collect()  # the engine is gone: give its GPU memory back before the next one loads
            torch.cuda.empty_cache()
    harness.write_results(results, table(results), args.output, suffix="-gpu")
    return 0


if __name__ == "__main__":
    sys.exit(main())
