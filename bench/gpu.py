"""GPU benchmark: eager, compiled and compiled + fp8 engines side by side, on one CUDA GPU, at 1024², 40 steps.

    python bench/gpu.py                          # the real weights (`python -m stable_diffusion_xl fetch-weights`)
    python bench/gpu.py --random-weights         # real-size networks with random weights, built here on the GPU
    python bench/gpu.py --random-weights --quick # fewer runs, no fp8 warm-up, a 450 s budget (not every stage fits)

`--random-weights` builds the five SDXL networks from bench/sdxl_configs.py (the published configurations and
parameter counts) with random weights on the GPU and saves them in the real diffusers layout, fp16 variant (about
12 GB, about 30 s), so a machine that cannot reach the hub measures the same arithmetic through Engine.load; the
images are noise. Each stage runs in a process of its own (a new replica's cold start, its own peak memory) and
adds its numbers, and the table so far, to the JSON file as it finishes, so a run cut short still reports what it
measured; the end is bench/harness.py's (table and footer on stdout, the JSON file completed). The workload (prompt,
seed, the three recipes) is bench/workload.py's:

- machine: bench/harness.py's header (CPU, GPU, versions, git), the GPU's compute capability, and an fp16 matrix
  product of 8192³ (the peak the effective rates are shares of);
- flops: FLOPs per image of each recipe, counted on the meta device (bench/flops.py);
- build: the random weights (with --random-weights);
- eager, compiled (SDXL_COMPILE, an empty compile cache folder and inductor cache), cached (a second replica with
  the compile cache folder the compiled stage filled: its cold start only), fp8 (compiled + SDXL_QUANTIZE=fp8, a
  compile cache folder of its own, empty): Engine.load and warm_up() at the default maximum batch, then our
  recipe, the raw diffusers pipelines and the upstream Instill recipe, interleaved, at batch 1 and 4: seconds per
  image, images per second, effective TFLOP/s and peak GPU memory; the eager engine also 4 callers of n=1 in one
  run (batching across calls) against the same 4 calls in sequence;
- training: the LoRA trainer (stable_diffusion_xl/training, timed by bench/training.py) on 4 photos at the native
  size (1024² at real size), rank 32, batch 1, with gradient checkpointing and without: seconds per step (median
  after two), peak GPU memory, and the seconds before the first step (loading, encoding the photos);
- accuracy: fp8 against fp16, the UNets' relative output error on one call with fixed random inputs; and each
  engine's first image against the eager one's for the same seed (mean absolute difference in 0-255 levels).

Without a CUDA GPU it refuses in one line. `--dry-run` rehearses every stage on the CPU with tiny networks.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # `python bench/gpu.py`: make `bench` and `stable_diffusion_xl` importable
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench import harness  # noqa: E402
from bench.harness import log  # noqa: E402
from bench.workload import DEFAULT_STEPS, PROMPT, SEED, recipes  # noqa: E402
from stable_diffusion_xl.weights.layout import DEFAULT_WEIGHTS_DIR, FETCH_COMMAND, WeightPaths, WeightsMissing  # noqa: E402

BATCHES = (1, 4)
CALLERS = 4  # concurrent n=1 callers batched across calls
ENGINES = {"eager": {}, "compiled": {"compile": True}, "fp8": {"compile": True, "quantize": "fp8"}}
STAGES = ("machine", "flops", "build", "eager", "training", "accuracy", "compiled", "fp8", "cached")  # by priority
# Each stage's caches under --work, emptied when a run starts: `cached` is a second replica given the compile cache
# `compiled` filled, and a new inductor cache, so its cold start gains only from what SDXL_COMPILE_CACHE keeps.
COMPILE_CACHES = {"compiled": "compile-cache", "fp8": "compile-cache-fp8", "cached": "compile-cache"}
INDUCTOR_CACHES = {"compiled": "inductor-cold", "fp8": "inductor-fp8", "cached": "inductor-second"}
MATMUL = 8192
TRAINING_PHOTOS, TRAINING_STEPS = 4, 30


def missing(args) -> str | None:
    """What this benchmark needs and does not have, in one line; None when it can run."""
    if args.dry_run:
        return None
    if not torch.cuda.is_available():
        why = "sees none" if torch.version.cuda else "is a CPU-only build"
        return f"no CUDA GPU: torch {torch.__version__} {why}"
    if args.random_weights:
        return None
    try:
        WeightPaths.locate(args.weights)
    except WeightsMissing:
        return f"no real weights in {args.weights}: fetch them (about 12 GB) with `{FETCH_COMMAND}`"
    return None


# ------------------------------------------------------------------------------------ the device, or the CPU

class Device:
    """The GPU, or with --dry-run the CPU: synchronising and peak memory are no-ops there."""

    def __init__(self, dry: bool):
        self.name, self.dry = ("cpu" if dry else "cuda"), dry

    def sync(self) -> None:
        if not self.dry:
            torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if not self.dry:
            torch.cuda.reset_peak_memory_stats()

    def peak(self) -> int:
        return 0 if self.dry else torch.cuda.max_memory_allocated()

    def timed(self, run) -> float:
        """Seconds of `run`, with the GPU's queued work before it and its own work counted in."""
        self.sync()
        return harness.timed(lambda: (run(), self.sync()))


# ------------------------------------------------------------------------------------------------- stages

def stage_machine(args, device: Device) -> dict:
    """The harness's header, and what the GPU can do: its compute capability and an fp16 matmul's rate."""
    info = {**harness.machine(), "cuda": torch.version.cuda, "fp16_matmul_tflops": None}
    if device.dry:
        return info
    props = torch.cuda.get_device_properties(0)
    info.update(capability=f"{props.major}.{props.minor}", gpu_memory_bytes=props.total_memory,
                multiprocessors=props.multi_processor_count)
    a = torch.randn(MATMUL, MATMUL, device="cuda", dtype=torch.float16)
    b = torch.randn_like(a)
    for _ in range(3):
        a @ b
    seconds = device.timed(lambda: [a @ b for _ in range(20)])
    info["fp16_matmul_tflops"] = 20 * 2 * MATMUL**3 / seconds / 1e12
    return info


def stage_flops(args, device: Device) -> dict:
    from bench import flops

    return flops.count()  # the real networks' FLOPs, also in a dry run (its numbers mean nothing anyway)


def stage_build(args, device: Device) -> dict:
    """Real-size SDXL networks with random weights, saved as fetch-weights lays out the real ones (fp16 variant)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from stable_diffusion_xl.weights.demo import save_pair
    from stable_diffusion_xl.weights.layout import VAE_FP16_FIX

    configs = _configs(device.dry)
    root = args.weights
    shutil.rmtree(root, ignore_errors=True)
    tokenizer_dir = root / "tokenizer"
    shutil.copytree(args.tokenizer, tokenizer_dir)  # CLIP's BPE vocabulary (the demo weights carry it)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    started = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(device.name):
        text_encoder = CLIPTextModel(CLIPTextConfig(**configs.TEXT_ENCODER, **ids)).half()
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**configs.TEXT_ENCODER_2, **ids)).half()
        unet = UNet2DConditionModel(**configs.BASE_UNET).half()
        refiner_unet = UNet2DConditionModel(**configs.REFINER_UNET).half()
        vae = AutoencoderKL(**configs.VAE).half()
        fp16_fix = AutoencoderKL(**{**configs.VAE, "force_upcast": False}).half()
    device.sync()
    built = time.perf_counter() - started
    save_pair(root, tokenizer_dir, text_encoder=text_encoder, text_encoder_2=text_encoder_2, vae=vae,
              base_unet=unet, refiner_unet=refiner_unet)
    fp16_fix.save_pretrained(root / VAE_FP16_FIX)
    (root / "loras").mkdir()
    size = sum(path.stat().st_size for path in root.rglob("*") if path.is_file())
    parameters = {"base_unet": _count(unet), "refiner_unet": _count(refiner_unet)}
    if not device.dry:
        assert parameters == {"base_unet": configs.BASE_UNET_PARAMETERS,
                              "refiner_unet": configs.REFINER_UNET_PARAMETERS}, parameters
    return {"init_seconds": built, "seconds": time.perf_counter() - started, "bytes": size, "parameters": parameters}


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _configs(dry: bool):
    """bench/sdxl_configs.py, or for a dry run the same networks shrunk to a few MB."""
    from bench import sdxl_configs as real

    if not dry:
        return real
    tiny = types.SimpleNamespace(**{name: getattr(real, name) for name in dir(real) if name.isupper()})
    tiny.TEXT_ENCODER = {**real.TEXT_ENCODER, "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
                         "num_attention_heads": 4, "projection_dim": 32}
    tiny.TEXT_ENCODER_2 = {**real.TEXT_ENCODER_2, "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
                           "num_attention_heads": 4, "projection_dim": 32}
    unet = {"sample_size": 16, "layers_per_block": 1, "block_out_channels": [32, 32, 64],
            "attention_head_dim": [2, 2, 4], "addition_time_embed_dim": 8}
    tiny.BASE_UNET = {**real.BASE_UNET, **unet, "transformer_layers_per_block": [1, 1, 2], "cross_attention_dim": 64,
                      "projection_class_embeddings_input_dim": 32 + 6 * 8}
    tiny.REFINER_UNET = {**real.REFINER_UNET, **unet, "block_out_channels": [32, 32, 64, 64],
                         "attention_head_dim": [2, 2, 4, 4], "transformer_layers_per_block": 1,
                         "cross_attention_dim": 32, "projection_class_embeddings_input_dim": 32 + 5 * 8}
    tiny.VAE = {**real.VAE, "block_out_channels": [8, 16, 32, 32], "norm_num_groups": 8, "layers_per_block": 1,
                "sample_size": 128}
    return tiny


def stage_engine(args, device: Device, mode: str) -> dict:
    """One replica: Engine.load and warm_up() (its cold start), then the three recipes at each batch size."""
    from stable_diffusion_xl.generation.compile import compiled_graphs
    from stable_diffusion_xl.generation.engine import Engine
    from stable_diffusion_xl.generation.request import TextToImageRequest

    options = dict(ENGINES["compiled" if mode == "cached" else mode])
    out = {"inductor_cache_dir": os.environ.get("TORCHINDUCTOR_CACHE_DIR")}
    if options.get("compile"):  # SDXL_COMPILE_CACHE: empty for compiled and fp8, what compiled left for cached
        options["compile_cache"] = args.work / COMPILE_CACHES[mode]
        out["compile_cache_entries_at_start"] = len(list(options["compile_cache"].glob("*/key.json")))
    out["options"] = {key: str(value) for key, value in options.items()}
    device.reset_peak()
    started = time.perf_counter()
    no_adapters = args.work / "no-adapters"  # a compiled engine refuses adapters
    no_adapters.mkdir(exist_ok=True)
    engine = Engine.load(args.weights, device=device.name, lora_dir=no_adapters, **options)
    device.sync()
    out["load_seconds"] = time.perf_counter() - started
    log(f"{mode}: Engine.load {out['load_seconds']:.1f} s")
    graphs = compiled_graphs()
    warm = not (args.quick and mode == "fp8")  # --quick: fp8 compiles only the shapes it is measured at
    out["warm_up_seconds"] = device.timed(engine.warm_up) if warm else None
    if not warm:
        out["measured_shapes_compile_seconds"] = device.timed(lambda: [engine.generate([TextToImageRequest(
            prompt="warm-up", n=n, steps=2, high_noise_frac=0.5, seed=1)]) for n in BATCHES])
    out["graphs_compiled_in_warm_up"] = compiled_graphs() - graphs
    out["peak_memory_warm_up_bytes"] = device.peak()
    if warm:
        log(f"{mode}: warm_up {out['warm_up_seconds']:.1f} s, {out['graphs_compiled_in_warm_up']} graphs")
    if mode == "cached":  # a cold start only: its speed is the compiled engine's
        out["compile_counters"] = _counters()
        return out
    for batch in BATCHES:
        rounds = (2 if batch == 1 else 1) if args.quick else args.runs
        out[f"batch_{batch}"], images = _recipes_at(engine, device, batch, rounds, args, label=f"{mode} batch {batch}")
        if batch == 1:
            _compare_with_eager(args, mode, images["ours"][0], out)
    if mode == "eager":
        out["callers"] = _callers(engine, device, 2 if args.quick else args.runs, args)
    out["graphs_after_warm_up"] = compiled_graphs() - graphs - out["graphs_compiled_in_warm_up"]
    out["compile_counters"] = _counters()
    return out


def _callers(engine, device: Device, rounds: int, args) -> dict:
    """Batching across calls, as a replica's batcher runs them: 4 callers of n=1 each in one engine run
    (Engine.generate_for) against the same 4 calls one after another; seconds per image."""
    from stable_diffusion_xl.generation.engine import Caller
    from stable_diffusion_xl.generation.request import TextToImageRequest
    from stable_diffusion_xl.generation.results import Progress

    asked = [TextToImageRequest(prompt=PROMPT, seed=SEED + i, steps=args.steps) for i in range(CALLERS)]
    runners = {"together": lambda: engine.generate_for([Caller([one], Progress()) for one in asked]),
               "sequential": lambda: [engine.generate([one]) for one in asked]}
    times = harness.interleave(runners, rounds, measure=lambda name, run: device.timed(run) / CALLERS,
                               label="callers round", show=lambda seconds: f"{seconds:.3f} s/image")
    return {name: {"seconds_per_image": harness.summary(values)} for name, values in times.items()}


def _recipes_at(engine, device: Device, batch: int, rounds: int, args, label: str) -> tuple[dict, dict]:
    """The three recipes at one batch size, interleaved: each one's seconds per image, images per second and peak
    memory, and the images of its last run."""
    runners, _ = recipes(engine, batch, args.steps)
    if not args.quick:
        for run in runners.values():  # each recipe's first call at this size
            run()
    peaks, images = dict.fromkeys(runners, 0), {}

    def seconds_per_image(name, run) -> float:  # each recipe ends with its images on the CPU
        device.reset_peak()
        seconds = device.timed(lambda: images.update({name: run()}))
        peaks[name] = max(peaks[name], device.peak())
        return seconds / batch

    times = harness.interleave(runners, rounds, measure=seconds_per_image, label=f"{label} round",
                               show=lambda seconds: f"{seconds:.3f} s/image")
    return {name: {"seconds_per_image": harness.summary(values),
                   "images_per_second": harness.summary([1 / v for v in values]),
                   "peak_memory_bytes": peaks[name]} for name, values in times.items()}, images


def _counters() -> dict:
    counters = torch._dynamo.utils.counters
    return {"unique_graphs": counters["stats"]["unique_graphs"],
            "fxgraph_cache": {"hit": counters["inductor"]["fxgraph_cache_hit"],
                              "miss": counters["inductor"]["fxgraph_cache_miss"]}}


def _compare_with_eager(args, mode: str, image, out: dict) -> None:
    """The eager engine's first image is the reference; the others' first images are compared with it."""
    import numpy as np
    from PIL import Image

    reference = args.work / "eager-batch-1.png"
    if mode == "eager":
        image.save(reference)
        return
    if reference.is_file():
        with Image.open(reference) as eager:
            difference = np.abs(np.asarray(image, dtype=np.int16) - np.asarray(eager, dtype=np.int16))
        out["image_vs_eager"] = {"mean_abs_levels": float(difference.mean()), "max_levels": int(difference.max())}


def stage_accuracy(args, device: Device) -> dict:
    """Each UNet's output on one call with fixed random inputs, fp8 against fp16: ‖fp8 − fp16‖ / ‖fp16‖."""
    from diffusers import UNet2DConditionModel

    from stable_diffusion_xl.generation.quantize import quantize_unet
    from stable_diffusion_xl.weights.layout import BASE, REFINER

    out = {}
    dtype = torch.float32 if device.dry else torch.float16
    for name, folder in (("base_unet", BASE), ("refiner_unet", REFINER)):
        unet = UNet2DConditionModel.from_pretrained(args.weights / folder, subfolder="unet", variant="fp16",
                                                    dtype=dtype).to(device.name)
        config, random = unet.config, torch.Generator("cpu").manual_seed(0)
        size, pixels = config.sample_size, config.sample_size * 8.0
        # The micro-conditions: original size, crop, target size (base) or aesthetic score (refiner).
        time_ids = [pixels, pixels, 0.0, 0.0] + ([pixels, pixels] if name == "base_unet" else [6.0])
        pooled = config.projection_class_embeddings_input_dim - len(time_ids) * config.addition_time_embed_dim

        def normal(*shape, random=random):
            return torch.randn(*shape, generator=random).to(device.name, dtype)

        inputs = (normal(2, 4, size, size), torch.tensor([500.0, 500.0], device=device.name),
                  normal(2, 77, config.cross_attention_dim))
        conditions = {"text_embeds": normal(2, pooled),
                      "time_ids": torch.tensor([time_ids] * 2, device=device.name, dtype=dtype)}
        with torch.inference_mode():
            reference = unet(*inputs, added_cond_kwargs=conditions).sample.float()
            layers = quantize_unet(unet)
            quantized = unet(*inputs, added_cond_kwargs=conditions).sample.float()
        out[name] = {"relative_error": float((quantized - reference).norm() / reference.norm()),
                     "linear_layers_quantized": layers}
        log(f"accuracy {name}: relative error {out[name]['relative_error']:.4f} ({layers} layers in fp8)")
        del unet
        gc.collect()
    return out


def stage_training(args, device: Device) -> dict:
    """The trainer's steps, with gradient checkpointing (its choice on GPUs under 70 GiB) and without (above)."""
    from bench.training import step_times
    from stable_diffusion_xl.weights.layout import WeightPaths

    weights = WeightPaths.locate(args.weights)
    # A dry run's tiny networks are native at 128², under the trainer's smallest size.
    run = {"steps": 4, "warm_up": 1, "resolution": 256} if device.dry else {"steps": TRAINING_STEPS}
    return {f"checkpointing_{'on' if on else 'off'}": step_times(weights, photos=TRAINING_PHOTOS,
                                                                 gradient_checkpointing=on, **run)
            for on in (True, False)}


# ------------------------------------------------------------------------------------- running the stages

def run_stage(args, name: str) -> None:
    """One stage in this process: its numbers go into the JSON file under its name."""
    device = Device(args.dry_run)
    if args.dry_run:
        torch.set_num_threads(1)  # tiny networks only lose time to threads on a small busy CPU
        _dry_run_patches()
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()
    handlers = {"machine": stage_machine, "flops": stage_flops, "build": stage_build, "accuracy": stage_accuracy,
                "training": stage_training}
    started = time.perf_counter()
    result = handlers[name](args, device) if name in handlers else stage_engine(args, device, name)
    result["stage_seconds"] = time.perf_counter() - started
    record(args.results, name, result)


def _dry_run_patches() -> None:
    """A CPU rehearsal: fp8 is allowed on the CPU (torchao runs float8 there, slowly) and compiling uses aot_eager,
    which skips inductor's code generation (minutes on a small CPU)."""
    from stable_diffusion_xl.generation import compile as compilation
    from stable_diffusion_xl.generation import engine

    engine.refuse_unsupported = lambda method, device, lora_dir=None: None
    compilation.BACKEND = "aot_eager"
    try:
        from torchao.quantization import quant_api
    except ImportError:
        return
    quant_api._check_hardware_support = lambda granularity: None


def record(path: Path, name: str, value) -> None:
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[name] = value
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")


def orchestrate(args) -> int:
    """Every stage in a child process, in order, each within what is left of the time budget; the table so far
    goes into the JSON file after each, and the harness's ending after the last."""
    args.output.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    for stale in {*COMPILE_CACHES.values(), *INDUCTOR_CACHES.values()}:  # an earlier run's
        shutil.rmtree(args.work / stale, ignore_errors=True)
    (args.work / "eager-batch-1.png").unlink(missing_ok=True)
    args.results.unlink(missing_ok=True)
    stages = [stage for stage in STAGES if stage != "build" or args.random_weights]
    record(args.results, "run", {"command": " ".join(["python", "bench/gpu.py", *sys.argv[1:]]),
                                 "budget_seconds": args.budget, "stages": stages, "quick": args.quick,
                                 "random_weights": args.random_weights, "dry_run": args.dry_run})
    for stage in stages:
        left = args.budget - (time.perf_counter() - harness.STARTED)
        if left < 10:
            record(args.results, f"{stage}_error", f"not run: the {args.budget} s budget was spent")
            continue
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if stage in INDUCTOR_CACHES:
            env["TORCHINDUCTOR_CACHE_DIR"] = str(args.work / INDUCTOR_CACHES[stage])
        log(f"stage {stage} ({left:.0f} s of the budget left)")
        command = [sys.executable, str(Path(__file__).resolve()), "--stage", stage, *_passed_on(args)]
        try:
            code = subprocess.run(command, env=env, timeout=left).returncode
            if code:
                record(args.results, f"{stage}_error", f"exit status {code} (the log has the traceback)")
        except subprocess.TimeoutExpired:
            record(args.results, f"{stage}_error", f"not finished within the {left:.0f} s left of the budget")
        record(args.results, "table", table(json.loads(args.results.read_text())))
    results = json.loads(args.results.read_text())
    if "machine" not in results:  # its stage failed: the footer still says what ran this
        results["machine"] = harness.machine()
    harness.write_results(results, table(results), args.output, args.suffix)
    return 0


def _passed_on(args) -> list[str]:
    passed = ["--weights", str(args.weights), "--output", str(args.output), "--work", str(args.work),
              "--runs", str(args.runs), "--steps", str(args.steps), "--tokenizer", str(args.tokenizer)]
    return passed + [flag for flag, on in (("--random-weights", args.random_weights), ("--quick", args.quick),
                                           ("--dry-run", args.dry_run)) if on]


# ---------------------------------------------------------------------------------------------------- table

RECIPES = {"ours": "ours", "raw_diffusers": "raw diffusers", "upstream": "upstream recipe"}


def table(data: dict) -> str:
    machine, flops = data.get("machine", {}), data.get("flops", {})
    peak = machine.get("fp16_matmul_tflops")
    rows = []
    for mode in ("eager", "compiled", "fp8"):
        label = {"eager": "eager", "compiled": "compiled", "fp8": "compiled + fp8"}[mode]
        for batch in BATCHES:
            case = data.get(mode, {}).get(f"batch_{batch}")
            if not case:
                rows.append((f"{label}, batch {batch}", *(["not measured"] * 3)))
                continue
            cells = []
            for recipe in RECIPES:
                seconds = case[recipe]["seconds_per_image"]["median"]
                cell = [f"{seconds:.3f} s/image", f"{1 / seconds:.2f} img/s"]
                work = flops.get("upstream" if recipe == "upstream" else "ours", {}).get("total_flops")
                if work:  # the raw pipelines do our recipe's work
                    tflops = work / seconds / 1e12
                    share = f" ({tflops / peak:.0%} of the matmul peak)" if peak else ""
                    cell.append(f"{tflops:.0f} TFLOP/s{share}")
                cell.append(f"{case[recipe]['peak_memory_bytes'] / 2**30:.1f} GiB peak")
                cells.append(" · ".join(cell))
            rows.append((f"{label}, batch {batch}, s/image (median of {case['ours']['seconds_per_image']['n']})",
                         *cells))
    callers = data.get("eager", {}).get("callers")
    if callers:
        together, sequential = (callers[name]["seconds_per_image"]["median"] for name in ("together", "sequential"))
        rows.append((f"eager, {CALLERS} callers of n=1 in one engine run (batching across calls), s/image",
                     f"{together:.3f} s/image", f"the {CALLERS} calls in sequence: {sequential:.3f} s/image",
                     f"{sequential / together:.2f}× img/s (together / sequential)"))
    else:
        rows.append((f"eager, {CALLERS} callers of n=1 in one engine run", "not measured", "", ""))
    for mode, label in (("eager", "eager"), ("compiled", "compiled, empty caches"),
                        ("cached", "compiled, compile cache filled (second replica)"), ("fp8", "compiled + fp8")):
        stage = data.get(mode)
        if not stage:
            why = data.get(f"{mode}_error", "not run")
            rows.append((f"cold start: {label}", f"not measured: {why}", "", ""))
            continue
        warm = stage["warm_up_seconds"]
        if warm is None:
            warm_text = (f"no full warm-up (--quick); compiling the two measured shapes took "
                         f"{stage.get('measured_shapes_compile_seconds', 0):.1f} s")
        else:
            warm_text = f"warm-up {warm:.1f} s = {stage['load_seconds'] + warm:.1f} s"
        cache = stage.get("compile_counters", {}).get("fxgraph_cache", {})
        inductor = f"; inductor cache {cache['hit']} hits, {cache['miss']} misses" if cache.get("hit") or \
            cache.get("miss") else ""
        entries = stage.get("compile_cache_entries_at_start")
        kept = f"; compile cache: {entries} entries at start" if entries is not None else ""
        rows.append((f"cold start: {label}", f"Engine.load {stage['load_seconds']:.1f} s + {warm_text}",
                     f"{stage['graphs_compiled_in_warm_up']} graphs traced in warm-up{inductor}{kept}", ""))
    for variant, training in data.get("training", {}).items():
        if variant == "stage_seconds":
            continue
        per_step = training["step_seconds"]
        rows.append((f"training: LoRA rank {training['rank']}, {training['resolution']}², batch 1, "
                     f"gradient {variant.replace('_', ' ')} (median of {per_step['n']} steps)",
                     f"{per_step['median']:.3f} s/step", f"{(training['peak_gpu_bytes'] or 0) / 2**30:.1f} GiB peak",
                     f"{training['setup_seconds']:.1f} s to the first step"))
    if "training" not in data:
        rows.append(("training: LoRA, batch 1", f"not measured: {data.get('training_error', 'not run')}", "", ""))
    accuracy = data.get("accuracy")
    if accuracy:
        rows.append(("fp8: UNet output relative error vs fp16 (one call, fixed random inputs)",
                     f"base {accuracy['base_unet']['relative_error']:.4f}",
                     f"refiner {accuracy['refiner_unet']['relative_error']:.4f}", ""))
    for mode, label in (("compiled", "compiled"), ("fp8", "compiled + fp8")):
        image = data.get(mode, {}).get("image_vs_eager")
        if image:
            rows.append((f"{label}: first image vs eager fp16, same seed (0-255 levels)",
                         f"mean {image['mean_abs_levels']:.2f}", f"max {image['max_levels']}", ""))
    if machine:
        gpu = f"{machine['gpu']} (compute capability {machine.get('capability')})" if machine.get("gpu") else \
            "no GPU (dry run)"
        rows.append(("GPU; fp16 matmul 8192³", gpu, f"{peak:.0f} TFLOP/s" if peak else "", ""))
    if flops:
        ours, upstream = (f"{flops[recipe]['total_flops'] / 1e12:.0f} TFLOP" for recipe in ("ours", "upstream"))
        rows.append(("work per image (FLOPs)", ours, ours, upstream))
    return harness.markdown(rows, head=("measurement", *RECIPES.values()))


# -------------------------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--random-weights", action="store_true", help="build real-size random-weight networks on "
                        "the GPU (about 12 GB in --weights) instead of reading the real ones")
    parser.add_argument("--quick", action="store_true", help="2 runs at batch 1 and 1 at batch 4, no first calls "
                        "left out, no fp8 warm-up, a 450 s budget (on an H200 the stages up to compiled fit in 510 s)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each recipe at each batch (default 3)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"denoising steps (default {DEFAULT_STEPS})")
    parser.add_argument("--weights", type=Path, help="the weights (default: weights/, or with --random-weights "
                        "a folder under --work)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "sdxl-gpu-bench",
                        help="folder for caches, the reference image and the random weights")
    parser.add_argument("--output", type=Path, default=harness.RESULTS, help="folder for the JSON file")
    parser.add_argument("--tokenizer", type=Path, default=DEFAULT_WEIGHTS_DIR / "demo" / "stable-diffusion-xl-base-1.0"
                        / "tokenizer", help="CLIP's tokenizer files for the random weights (the demo weights')")
    parser.add_argument("--budget", type=float, default=3600.0, help="seconds for all stages (--quick: 450)")
    parser.add_argument("--dry-run", action="store_true", help="rehearse on the CPU with tiny networks")
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)  # one stage, in a child process
    args = parser.parse_args(argv)
    if args.weights is None:
        args.weights = args.work / "random-weights" if args.random_weights else DEFAULT_WEIGHTS_DIR
    if args.quick and args.budget == parser.get_default("budget"):
        args.budget = 450.0
    args.suffix = "-gpu-random" if args.random_weights else "-gpu"
    args.results = harness.results_path(args.output, args.suffix)
    problem = missing(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.stage:
        run_stage(args, args.stage)
        return 0
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
