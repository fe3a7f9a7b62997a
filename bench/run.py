"""Benchmark: our SDXL ensemble of experts side by side with the upstream Instill recipe and the raw pipelines.

    python bench/run.py            # or: python -m bench.run   (from the repository root, in .venv)

Runs on the tiny random demo weights (weights/demo, or built into a temporary folder when missing),
prints one Markdown table on stdout (progress goes to stderr) and writes the same numbers, with the
machine they were measured on, to bench/results/<date>.json. What it measures:

1. Work per image, ours vs the upstream Instill recipe (instill-ai/models stable-diffusion-xl: the base
   for all 40 steps, then the refiner as img2img on its latents at the default strength 0.3) and vs the
   raw diffusers pipelines running the same ensemble of experts: UNet calls (forward hooks) and wall time.
2. FLOPs per image at 1024x1024 over the real SDXL configurations on the meta device (bench/flops.py).
3. Serving overhead: one request through Ray Serve's gRPC proxy vs the same generation on the Engine in process.
4. Batching: n=4 in one call vs four n=1 calls; four concurrent calls vs the same four in sequence.
5. Cold start (launch to first reply), weight load time, the replica's peak RSS.
6. Users' models and prompts: a LoRA adapter switched per request against loading it or reloading the
   pipelines, long-prompt encoding (compel) against diffusers' encode_prompt, and the safety checker's
   share of a generation.
7. Compiled against eager (SDXL_COMPILE=1): our recipe's time per image, the compiled engine's warm-up, which runs
   the compiler, and a second replica (a fresh process) with the compile cache filled against the first
   (`--no-compile` skips these rows: they take about ten minutes on 2 cores).
8. The peer APIs (OpenAI, Azure ML, cog, plain) against the Instill HTTP path: the same request, interleaved.
9. Edits: image-to-image at strengths 0.3, 0.6 and 0.9 and inpainting at 0.6 against text-to-image of the same
   size and steps (time and UNet calls per image: the work follows the strength), and the weights the edit
   pipelines hold (none of their own) and the process's peak RSS during an edit against text-to-image.
Plus GPU figures on paper (bench/on_paper.py), labelled as not measured; bench/gpu.py measures them on a GPU.

`--rows 1,6` (numbers or names, e.g. `--rows work_per_image,peer_apis`) measures only those rows; `--runs 1
--serve-runs 1 --batch-runs 1` is the quickest pass. The rows live in bench/rows/ (one file per group, registered
in bench/rows/__init__.py); timing, interleaving, the table and the results file in bench/harness.py.

Timings are CPU timings of the demo weights with one torch thread (the replica also runs one):
they compare recipes and serving paths on this machine, not SDXL's speed on a GPU.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # `python bench/run.py`: make `bench` and `stable_diffusion_xl` importable
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

torch.set_num_threads(1)  # as the replica does with the demo weights; see tests/conftest.py for why

from bench import harness  # noqa: E402
from bench.harness import log  # noqa: E402
from bench.rows import ROWS, Bench, Row, keep, table_lines  # noqa: E402
from bench.rows import serving as serving_rows  # noqa: E402


@contextmanager
def demo_weights(weights_dir: Path | None):
    """A weights root holding demo weights: the given or default one if built, else a temporary one."""
    from stable_diffusion_xl.weights import demo as builder
    from stable_diffusion_xl.weights.layout import DEFAULT_WEIGHTS_DIR, WeightPaths, WeightsMissing

    root = (weights_dir or DEFAULT_WEIGHTS_DIR).resolve()
    try:
        WeightPaths.locate(root, demo=True)
        log(f"demo weights: {root / 'demo'}")
        yield root, False
    except WeightsMissing:
        with tempfile.TemporaryDirectory(prefix="sdxl-bench-weights-") as tmp:
            log(f"no demo weights in {root}; building them in {tmp}")
            builder.build(tmp)
            yield Path(tmp), True


def picked(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[Row]:
    """The rows to measure, in ROWS' order: those --rows names (all by default), less what --no-* skip."""
    rows = ROWS
    if args.rows:
        wanted = {word.strip() for word in args.rows.split(",") if word.strip()}
        unknown = wanted - {row.number for row in ROWS} - {row.name for row in ROWS}
        if unknown:
            parser.error(f"--rows: no row {', '.join(sorted(unknown))}; rows: "
                         + ", ".join(f"{row.number} {row.name}" for row in ROWS))
        rows = [row for row in ROWS if row.number in wanted or row.name in wanted]
    return [row for row in rows if not (args.no_serve and row.needs == "serving")
            and not (args.no_compile and row.number == "7")]


def measure(bench: Bench, rows: list[Row]) -> None:
    """Runs the rows in order; those needing Ray Serve in one session, started when the first of them comes."""
    for needs, group in itertools.groupby(rows, key=lambda row: row.needs):
        if needs != "serving":
            for row in group:
                keep(row, bench.results, row.measure(bench))
            continue
        try:
            with serving_rows.session(bench) as bench.serving:
                for row in group:
                    keep(row, bench.results, row.measure(bench))
        except Exception as error:  # keep the rows measured so far; say why the serving rows are missing
            log(f"the Ray Serve rows failed: {type(error).__name__}: {error} "
                f"(log: {bench.results.get('serving', {}).get('log')})")
            bench.results["serving_error"] = f"{type(error).__name__}: {error}"
        finally:
            bench.serving = None


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each 40-step recipe (default 5)")
    parser.add_argument("--serve-runs", type=int, default=20, help="timed runs of the overhead rows (default 20)")
    parser.add_argument("--batch-runs", type=int, default=7, help="timed rounds of the batching rows (default 7)")
    parser.add_argument("--weights", type=Path, default=None, help="weights root holding demo/ (default: weights/)")
    parser.add_argument("--no-serve", action="store_true", help="skip the Ray Serve rows (3, 4, 8 and most of 5)")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled-engine rows (7), which compile "
                        "for about ten minutes on 2 CPU cores")
    parser.add_argument("--rows", default="", help="only these rows, by number or name, comma-separated "
                        "(e.g. 1,6 or work_per_image,peer_apis; default: all)")
    parser.add_argument("--output", type=Path, default=harness.RESULTS, help="folder for the JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = arguments()
    args = parser.parse_args(argv)
    rows = picked(args, parser)
    os.chdir(REPO)  # the serving child runs `python -m stable_diffusion_xl.serving.local_serve` from here

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from stable_diffusion_xl.generation.engine import Engine

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    results: dict = {"machine": harness.machine()}
    log(f"machine: {results['machine']['cpu_model']}, {results['machine']['logical_cores']} cores, "
        f"{results['machine']['ram_gb']} GB; torch threads {torch.get_num_threads()}")
    bench = Bench(args, results)
    measure(bench, [row for row in rows if row.needs == "nothing"])
    on_weights = [row for row in rows if row.needs != "nothing"]
    if on_weights:
        with demo_weights(args.weights) as (weights_root, built):
            results["weights"] = {"root": str(weights_root), "demo": True, "built_for_this_run": built}
            started = time.perf_counter()
            bench.weights_root, bench.engine = weights_root, Engine.load(weights_root, demo=True)
            results["first_load_seconds"] = time.perf_counter() - started
            measure(bench, on_weights)
    harness.write_results(results, harness.markdown(table_lines(results, rows)), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
