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
7. Compiled against eager (SDXL_COMPILE=1): our recipe's time per image, and the compiled engine's warm-up, which
   runs the compiler (`--no-compile` skips these rows: they take about six minutes on 2 cores).
8. The peer APIs (OpenAI, Azure ML, cog, plain) against the Instill HTTP path: the same request, interleaved.
Plus GPU figures on paper (bench/on_paper.py), labelled as not measured; bench/gpu.py measures them on a GPU.

Timings are CPU timings of the demo weights with one torch thread (the replica also runs one):
they compare recipes and serving paths on this machine, not SDXL's speed on a GPU.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # `python bench/run.py`: make `bench` and `stable_diffusion_xl` importable
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

torch.set_num_threads(1)  # as the replica does with the demo weights; see tests/conftest.py for why

from bench import flops as flop_count  # noqa: E402
from bench import on_paper  # noqa: E402
from stable_diffusion_xl.serving.client import grpc_call, task_input  # noqa: E402

PROMPT = "a cat napping on a windowsill, golden hour"
SEED = 1234
DEFAULT_STEPS, SERVE_STEPS = 40, 5
GUIDANCE, HIGH_NOISE_FRAC, UPSTREAM_STRENGTH = 7.5, 0.8, 0.3
APPLICATION = "users_bench_stable-diffusion-xl_v1"
STARTED = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - STARTED:6.1f} s] {message}", file=sys.stderr, flush=True)


def summary(values: list[float]) -> dict:
    ordered = sorted(values)
    q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive") if len(ordered) > 1 else ordered * 3
    return {"median": statistics.median(ordered), "min": ordered[0], "max": ordered[-1], "q1": q1, "q3": q3,
            "n": len(ordered), "values": [round(v, 6) for v in values]}


def timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


# ---------------------------------------------------------------------------------------------- machine, weights

def machine() -> dict:
    import diffusers
    import psutil
    import ray
    import transformers

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", None
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu_model": cpu,
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                     "transformers": transformers.__version__, "ray": ray.__version__},
        "git_commit": commit,
        "git_tracked_changes": dirty,
    }


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


# ----------------------------------------------------------------------------------------- 1. work per image

class UNetMeter:
    """Counts and times the forward calls of the base and refiner UNets with forward hooks."""

    def __init__(self, engine):
        self.calls, self.seconds, self._start, self._hooks = {}, {}, {}, []
        for name, unet in (("base", engine.base.unet), ("refiner", engine.refiner.unet)):
            self._hooks.append(unet.register_forward_pre_hook(lambda *_, n=name: self._enter(n)))
            self._hooks.append(unet.register_forward_hook(lambda *_, n=name: self._leave(n)))
        self.reset()

    def _enter(self, name):
        self._start[name] = time.perf_counter()

    def _leave(self, name):
        self.calls[name] += 1
        self.seconds[name] += time.perf_counter() - self._start[name]

    def reset(self):
        self.calls, self.seconds = {"base": 0, "refiner": 0}, {"base": 0.0, "refiner": 0.0}

    def remove(self):
        for hook in self._hooks:
            hook.remove()


def recipes(engine, n: int = 1):
    """Our engine, the raw diffusers pipelines doing the same ensemble of experts, and the upstream recipe, each
    making `n` images of one prompt in one batch. All three decode with Engine.decode, as the pipelines do in fp32;
    on a GPU without the fp16-fix VAE the pipelines would hand their fp16 latents to the fp32 VAE."""
    from stable_diffusion_xl.generation.request import TextToImageRequest, nth_seed

    request = TextToImageRequest(prompt=PROMPT, seed=SEED, n=n, steps=DEFAULT_STEPS, guidance_scale=GUIDANCE,
                                 high_noise_frac=HIGH_NOISE_FRAC)
    width, height = engine.size_of(request)
    common = {"prompt": [PROMPT] * n, "num_inference_steps": DEFAULT_STEPS, "guidance_scale": GUIDANCE,
              "output_type": "latent"}

    def generators():  # one per image, as the engine seeds them
        return [torch.Generator("cpu").manual_seed(nth_seed(SEED, i)) for i in range(n)]

    def ours():
        return engine.generate([request])[0].images

    def raw_diffusers():
        # diffusers' documented "ensemble of experts": base until 0.8 of the schedule, refiner from there.
        seeded = generators()
        with torch.inference_mode():
            latents = engine.base(**common, width=width, height=height, denoising_end=HIGH_NOISE_FRAC,
                                  generator=seeded).images
            latents = engine.refiner(**common, image=latents, denoising_start=HIGH_NOISE_FRAC, generator=seeded).images
            return engine.decode(latents)[0]

    def upstream():
        # instill-ai/models stable-diffusion-xl/v0.1.0/model.py: the base for all steps, then the refiner as
        # img2img on the finished latents at its default strength (0.3): int(40 * 0.3) = 12 more UNet calls.
        seeded = generators()
        with torch.inference_mode():
            latents = engine.base(**common, width=width, height=height, generator=seeded).images
            latents = engine.refiner(**common, image=latents, strength=UPSTREAM_STRENGTH, generator=seeded).images
            return engine.decode(latents)[0]

    return {"ours": ours, "raw_diffusers": raw_diffusers, "upstream": upstream}, (width, height)


def _alternate(runners: dict, index: int) -> list:
    """The runners in order on even rounds and in reverse on odd ones, so no case always runs first."""
    items = list(runners.items())
    return items if index % 2 == 0 else items[::-1]


def work_per_image(engine, runs: int) -> dict:
    import numpy as np

    meter = UNetMeter(engine)
    runners, size = recipes(engine)
    results = {name: {"seconds": [], "cpu_seconds": [], "unet_seconds": [], "unet_calls": None} for name in runners}
    images = {}
    try:
        for name, run in runners.items():  # warm-up, and the images for the same-output check
            meter.reset()
            images[name] = run()[0]
            results[name]["unet_calls"] = dict(meter.calls)
            log(f"  {name}: {meter.calls['base']} base + {meter.calls['refiner']} refiner UNet calls")
        for index in range(runs):  # interleaved, alternating order: drift on a shared machine hits every recipe alike
            for name, run in _alternate(runners, index):
                meter.reset()
                cpu = time.process_time()
                results[name]["seconds"].append(timed(run))
                results[name]["cpu_seconds"].append(time.process_time() - cpu)
                results[name]["unet_seconds"].append(sum(meter.seconds.values()))
                assert meter.calls == results[name]["unet_calls"], (name, meter.calls)
            log(f"  run {index + 1}/{runs}: " + ", ".join(f"{n} {r['seconds'][-1]:.2f} s" for n, r in results.items()))
    finally:
        meter.remove()
    pixels = {name: np.asarray(image, dtype=np.int16) for name, image in images.items()}
    for result in results.values():
        for key in ("seconds", "cpu_seconds", "unet_seconds"):
            result[key] = summary(result[key])
    return {
        "image_size": list(size), "steps": DEFAULT_STEPS, "guidance_scale": GUIDANCE, "seed": SEED,
        "high_noise_frac": HIGH_NOISE_FRAC, "upstream_strength": UPSTREAM_STRENGTH, **results,
        "max_pixel_difference_ours_vs_raw_diffusers": int(np.abs(pixels["ours"] - pixels["raw_diffusers"]).max()),
    }


def load_times(weights_root: Path, runs: int) -> dict:
    from stable_diffusion_xl.generation.engine import Engine

    return summary([timed(lambda: Engine.load(weights_root, demo=True)) for _ in range(runs)])


# ------------------------------------------------------------------------------ 6. users' models and prompts

def adapter_switching(engine, weights_root: Path, runs: int) -> dict:
    """Per-request LoRA switching, interleaved: between two resident adapters; loading one from disk each time
    (a limit of one resident adapter); and reloading the pipelines, what a server without adapters would do."""
    from stable_diffusion_xl.generation.engine import Engine

    names = engine.adapters.names[:2]
    one_resident = Engine.load(weights_root, demo=True, max_loras=1)
    for name in names:  # both resident in `engine`
        engine.adapters.use((name,), (1.0,))
    resident, from_disk, reload = [], [], []
    for i in range(runs):
        name = names[i % 2]
        resident.append(timed(functools.partial(engine.adapters.use, (name,), (1.0,))))
        from_disk.append(timed(functools.partial(one_resident.adapters.use, (name,), (1.0,))))
        reload.append(timed(lambda: Engine.load(weights_root, demo=True)))
    engine.adapters.use((), ())
    return {"adapters": list(names), "resident": summary(resident), "from_disk": summary(from_disk),
            "reload_pipelines": summary(reload)}


LONG_PROMPT = ", ".join(f"a {colour} lantern over the harbour number {i}" for i, colour in
                        enumerate(["amber", "teal", "crimson", "ivory", "cobalt"] * 5))  # about 200 CLIP tokens


def prompt_encoding(engine, runs: int) -> dict:
    """Seconds per prompt to encode for the base, interleaved: diffusers' encode_prompt (which truncates past 77
    tokens) against ours (encode_prompt for a plain prompt that fits, compel otherwise), short and long."""
    base, timings = engine.base, {}

    def diffusers_encode(prompt):
        return base.encode_prompt(prompt=[prompt], device=base.device, num_images_per_prompt=1,
                                  do_classifier_free_guidance=True)

    cases = {"short": PROMPT, "long": LONG_PROMPT}
    for _ in range(runs):
        for name, prompt in cases.items():
            for path, encode in (("diffusers", diffusers_encode),
                                 ("ours", lambda prompt: engine.prompts.encode(base, [prompt], None, True))):
                timings.setdefault(f"{name}_{path}", []).append(timed(functools.partial(encode, prompt)))
    tokens = engine.prompts.token_counts(LONG_PROMPT, "")["prompt"]
    return {"long_prompt_tokens": tokens, **{key: summary(values) for key, values in timings.items()}}


def safety_checker_share(weights_root: Path, runs: int) -> dict:
    """The safety checker's seconds per image against the rest of the same generations (usage's stages)."""
    from stable_diffusion_xl.generation.engine import Engine
    from stable_diffusion_xl.generation.request import TextToImageRequest

    engine = Engine.load(weights_root, demo=True, safety_checker=True)
    checker, rest = [], []
    for seed in range(1, runs + 1):
        generation = engine.generate([TextToImageRequest(prompt=PROMPT, seed=seed, n=2, steps=DEFAULT_STEPS)])[0]
        checker.append(generation.timings["safety_checker"] / 2)
        rest.append((sum(generation.timings.values()) - generation.timings["safety_checker"]) / 2)
    return {"checker_per_image": summary(checker), "rest_per_image": summary(rest)}


# ------------------------------------------------------------------------------------------- 7. compilation

def compiled_vs_eager(weights_root: Path, runs: int) -> dict:
    """Our recipe on an eager engine and on a compiled one (SDXL_COMPILE=1), interleaved, and the two warm-ups: the
    compiled one runs the compiler, here from an empty cache. Neither has adapters (compiling refuses them)."""
    import numpy as np
    from torch._inductor.utils import fresh_cache

    from stable_diffusion_xl.generation.compile import compiled_graphs
    from stable_diffusion_xl.generation.engine import Engine

    with tempfile.TemporaryDirectory(prefix="sdxl-no-adapters-") as no_adapters, fresh_cache():
        engines = {mode: Engine.load(weights_root, demo=True, lora_dir=Path(no_adapters), compile=mode == "compiled")
                   for mode in ("eager", "compiled")}
        graphs = compiled_graphs()
        warm_up = {mode: timed(engine.warm_up) for mode, engine in engines.items()}
        graphs = compiled_graphs() - graphs
        log(f"  warm-up: eager {warm_up['eager']:.1f} s, compiled {warm_up['compiled']:.1f} s ({graphs} graphs)")
        runners = {mode: recipes(engine)[0]["ours"] for mode, engine in engines.items()}
        images = {mode: np.asarray(run()[0], dtype=np.int16) for mode, run in runners.items()}
        seconds = {mode: [] for mode in runners}
        for index in range(runs):
            for mode, run in _alternate(runners, index):
                seconds[mode].append(timed(run))
            log(f"  run {index + 1}/{runs}: " + ", ".join(f"{m} {v[-1]:.2f} s" for m, v in seconds.items()))
    return {"warm_up_seconds": warm_up, "graphs_compiled": graphs, "max_batch_size": engines["compiled"].max_batch_size,
            **{mode: summary(values) for mode, values in seconds.items()},
            "max_pixel_difference": int(np.abs(images["compiled"] - images["eager"]).max())}


# ------------------------------------------------------------------------------------------- 3-5. serving

class RssSampler(threading.Thread):
    """Samples one process's RSS every few milliseconds; keeps the peak per labelled phase."""

    def __init__(self, process, interval: float = 0.005):
        super().__init__(daemon=True)
        self.process, self.interval, self.phase = process, interval, "idle"
        self.peaks: dict[str, int] = {}
        self._done = threading.Event()

    def run(self):
        import psutil

        while not self._done.is_set():
            try:
                rss = self.process.memory_info().rss
            except psutil.Error:
                return
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), rss)
            time.sleep(self.interval)

    def stop(self):
        self._done.set()
        self.join(timeout=5)


def serving_processes(grpc_port: int):
    """Our serving session's driver process (found by its gRPC port) and the Ray replica under it."""
    import psutil

    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if "stable_diffusion_xl.serving.local_serve" in cmdline and f'"grpc": {grpc_port}' in cmdline:
            descendants = process.children(recursive=True)
            replicas = [p for p in descendants if "ServeReplica" in " ".join(_cmdline(p)) and APPLICATION in
                        " ".join(_cmdline(p))]
            return process, descendants, (replicas[0] if replicas else None)
    return None, [], None


def _cmdline(process) -> list[str]:
    import psutil

    try:
        return process.cmdline()
    except psutil.Error:
        return []


def high_water_mark(pid: int) -> int | None:
    """The kernel's peak RSS of a process since it started (VmHWM, Linux), in bytes."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def total_rss(processes) -> int:
    import psutil

    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.Error:
            pass
    return total


def served(weights_root: Path, engine, runs: int, batch_runs: int, log_path: Path) -> dict:
    import grpc

    from stable_diffusion_xl.generation.request import TextToImageRequest
    from stable_diffusion_xl.serving.encoding import to_base64
    from stable_diffusion_xl.serving.local_serve import Application, serving

    env = {"SDXL_DEMO_WEIGHTS": "1", "SDXL_WEIGHTS_DIR": str(weights_root)}
    fast = {"steps": SERVE_STEPS}
    out: dict = {"steps": SERVE_STEPS, "log": str(log_path)}

    def direct(n: int = 1, seed: int = SEED):
        return engine.generate([TextToImageRequest(prompt=PROMPT, seed=seed, n=n, steps=SERVE_STEPS)])

    log("starting Ray Serve (Ray, dashboard, gRPC proxy, the replica loading the demo weights) ...")
    launched = time.perf_counter()
    with serving([Application(APPLICATION, env)], log_path=log_path) as ports, \
            grpc.insecure_channel(f"127.0.0.1:{ports.grpc}") as channel:
        ready = time.perf_counter()
        first = grpc_call(channel, APPLICATION, task_input(PROMPT, seed=SEED, **fast))
        answered = time.perf_counter()
        assert first[0]["data"]["choices"][0]["finish-reason"] == "success"
        out["cold_start"] = {"launch_to_ready_seconds": ready - launched,
                             "launch_to_first_reply_seconds": answered - launched,
                             "first_reply_seconds": answered - ready}
        log(f"  ready after {ready - launched:.1f} s, first reply after {answered - launched:.1f} s")

        driver, stack, replica = serving_processes(ports.grpc)
        sampler = None  # started for the memory rows at the end
        if replica is None:
            log("  could not find the ServeReplica process: no RSS figures")
        else:
            out["replica"] = {"pid": replica.pid, "cmdline": " ".join(_cmdline(replica)).strip()}
            out["rss"] = {"replica_idle_bytes": replica.memory_info().rss,
                          "serving_stack_idle_bytes": total_rss([driver, *stack]),
                          "serving_stack_processes": len(stack) + 1}

        def phase(name):
            if sampler:
                sampler.phase = name

        # 3. Overhead: the same request through the gRPC proxy and on the Engine in process, interleaved.
        log(f"serving overhead: {runs} x (gRPC call, Engine.generate, Engine.generate + JPEG/base64), "
            f"steps={SERVE_STEPS}")
        direct()  # warm-up of the in-process engine
        grpc_seconds, direct_seconds, encoded_seconds, replica_engine = [], [], [], []
        for _ in range(runs):
            started = time.perf_counter()
            output = grpc_call(channel, APPLICATION, task_input(PROMPT, seed=SEED, **fast))[0]
            grpc_seconds.append(time.perf_counter() - started)
            replica_engine.append(sum(output["metadata"]["usage"]["seconds"].values()))
            direct_seconds.append(timed(direct))
            encoded_seconds.append(timed(lambda: [to_base64(image) for image in direct()[0].images]))
        out["overhead"] = {"grpc": summary(grpc_seconds), "engine": summary(direct_seconds),
                           "engine_plus_jpeg_base64": summary(encoded_seconds),
                           "replica_engine_stages": summary(replica_engine),
                           # Per request: end to end minus the stage seconds the replica's engine reports for it.
                           "outside_replica_engine": summary([e2e - inside for e2e, inside
                                                              in zip(grpc_seconds, replica_engine)])}

        # 4. Batching through the proxy: n=4 in one call, 4 task inputs in one call, 4 calls in sequence, 4 at once.
        log(f"batching: {batch_runs} rounds of n=4 / 4 task inputs / 4 sequential calls / 4 concurrent calls")
        seeds = [SEED + i for i in range(4)]
        single = [task_input(PROMPT, seed=seed, **fast) for seed in seeds]
        cases = {
            "n4_one_call": lambda: grpc_call(channel, APPLICATION, task_input(PROMPT, seed=SEED, n=4, **fast)),
            "four_inputs_one_call": lambda: grpc_call(channel, APPLICATION, *single),
            "four_calls_sequential": lambda: [grpc_call(channel, APPLICATION, item) for item in single],
            "four_calls_concurrent": lambda: list(pool.map(lambda item: grpc_call(channel, APPLICATION, item), single)),
            "engine_n4": lambda: direct(n=4),
            "engine_four_n1": lambda: [direct(seed=seed) for seed in seeds],
        }
        batching = {name: [] for name in cases}
        with ThreadPoolExecutor(max_workers=4) as pool:
            warm = {name: run() for name, run in cases.items()}  # warm-up, and a check that 4 images come back
            assert len(warm["n4_one_call"][0]["data"]["choices"]) == 4 and len(warm["four_inputs_one_call"]) == 4
            for index in range(batch_runs):
                for name, run in _alternate(cases, index):
                    batching[name].append(timed(run))
                log(f"  round {index + 1}/{batch_runs}: "
                    + ", ".join(f"{n} {v[-1]:.2f} s" for n, v in batching.items()))
        out["batching"] = {name: {"seconds": summary(values), "images_per_second": summary([4 / v for v in values])}
                           for name, values in batching.items()}

        # 8. The peer APIs' adapters against the Instill HTTP path: the same image, interleaved.
        log(f"peer APIs: {runs} rounds of the same request through each HTTP dialect, steps={SERVE_STEPS}")
        out["peer_apis"] = peer_api_overhead(ports.http, runs)

        # 5. Peak RSS during a default request (40 steps) and an n=4 one.
        # Sampled only now, so that the sampling thread cannot slow the timed rows above.
        log("replica memory: one default 40-step request and one n=4 request, RSS sampled every 5 ms")
        if replica is not None:
            sampler = RssSampler(replica)
            sampler.start()
        phase("default request, 40 steps")
        grpc_call(channel, APPLICATION, task_input(PROMPT, seed=SEED))
        phase("n=4, 40 steps")
        grpc_call(channel, APPLICATION, task_input(PROMPT, seed=SEED, n=4))
        phase("after")
        if sampler:
            sampler.stop()
            out["rss"]["replica_peak_bytes_by_phase"] = sampler.peaks
            out["rss"]["replica_peak_bytes"] = max(sampler.peaks.values())
            out["rss"]["replica_vmhwm_bytes"] = high_water_mark(replica.pid)
            out["rss"]["serving_stack_after_bytes"] = total_rss([driver, *driver.children(recursive=True)])
        log("stopping Ray Serve ...")
    return out


# The same request (prompt, seed, steps, 1:1, one JPEG) in each HTTP dialect: path -> body.
PEER_REQUESTS = {
    "": {"prompt": PROMPT, "seed": SEED, "steps": SERVE_STEPS},
    "v1/images/generations": {"prompt": PROMPT, "seed": SEED, "steps": SERVE_STEPS, "output_format": "jpeg"},
    "score": {"input_data": {"data": [PROMPT]}, "parameters": {"seed": SEED, "num_inference_steps": SERVE_STEPS}},
    "predictions": {"input": {"prompt": PROMPT, "seed": SEED, "num_inference_steps": SERVE_STEPS}},
    "predict": {"prompt": PROMPT, "seed": SEED, "num_inference_steps": SERVE_STEPS},
}


def peer_api_overhead(http_port: int, runs: int) -> dict:
    """Seconds per request through Ray Serve's HTTP proxy, each dialect in turn, rounds interleaved."""
    import urllib.request

    def post(path: str) -> float:
        request = urllib.request.Request(f"http://127.0.0.1:{http_port}/{APPLICATION}/{path}",
                                         data=json.dumps(PEER_REQUESTS[path]).encode(),
                                         headers={"Content-Type": "application/json"})
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=300) as response:
            assert response.status == 200
            response.read()
        return time.perf_counter() - started

    timings: dict[str, list[float]] = {path: [] for path in PEER_REQUESTS}
    for path in PEER_REQUESTS:  # warm-up
        post(path)
    for index in range(runs):
        for path, _ in _alternate(dict.fromkeys(PEER_REQUESTS), index):
            timings[path].append(post(path))
    return {path or "instill-http": summary(values) for path, values in timings.items()}


# ---------------------------------------------------------------------------------------------------- table

def seconds(s: dict, unit: str = "s") -> str:
    scale = 1000 if unit == "ms" else 1
    digits = 0 if unit == "ms" else 2
    return f"{s['median'] * scale:.{digits}f} {unit} [{s['min'] * scale:.{digits}f}–{s['max'] * scale:.{digits}f}]"


def rate(s: dict) -> str:
    return f"{s['median']:.2f} img/s [{s['min']:.2f}–{s['max']:.2f}]"


def tflop(value: float) -> str:
    return f"{value / 1e12:,.1f} TFLOP"


def mb(value: int) -> str:
    return f"{value / 2**20:,.0f} MB"


def table(results: dict) -> str:
    work, fl, paper = results["work_per_image"], results["flops"], results["on_paper"]
    runs, srv = work["ours"]["seconds"]["n"], results.get("serving")
    rows = []

    def calls(recipe):
        c = recipe["unet_calls"]
        return f"{c['base'] + c['refiner']} ({c['base']} base + {c['refiner']} refiner)"

    w, h = work["image_size"]
    ours, up, raw = work["ours"], work["upstream"], work["raw_diffusers"]
    rows += [
        ("1", f"UNet calls per image, {DEFAULT_STEPS} steps (forward hooks)", calls(ours),
         f"upstream Instill recipe: {calls(up)}", f"{_calls(up) / _calls(ours):.2f}× (upstream / ours)"),
        ("1", f"wall time per image, CPU, demo weights {w}×{h}, {runs} runs", seconds(ours["seconds"]),
         f"upstream: {seconds(up['seconds'])}", _ratio(up["seconds"], ours["seconds"], "upstream / ours")),
        ("1", "CPU time per image (this process; steadier than wall time on a shared machine)",
         seconds(ours["cpu_seconds"]), f"upstream: {seconds(up['cpu_seconds'])}",
         _ratio(up["cpu_seconds"], ours["cpu_seconds"], "upstream / ours")),
        ("1", "UNet time per image (inside the hooks)", seconds(ours["unet_seconds"]),
         f"upstream: {seconds(up['unet_seconds'])}",
         _ratio(up["unet_seconds"], ours["unet_seconds"], "upstream / ours")),
        ("1", "vs the raw diffusers pipelines running the same recipe: wall / CPU time per image",
         f"{ours['seconds']['median']:.2f} s / {ours['cpu_seconds']['median']:.2f} s",
         f"raw diffusers base → refiner, {calls(raw)}: {raw['seconds']['median']:.2f} s / "
         f"{raw['cpu_seconds']['median']:.2f} s; max pixel difference "
         f"{work['max_pixel_difference_ours_vs_raw_diffusers']}",
         f"{raw['seconds']['median'] / ours['seconds']['median']:.2f}× / "
         f"{raw['cpu_seconds']['median'] / ours['cpu_seconds']['median']:.2f}× (raw / ours)"),
        ("2", f"FLOPs per image, real SDXL at {fl['resolution']}², CFG (counted on the meta device)",
         tflop(fl["ours"]["total_flops"]), f"upstream: {tflop(fl['upstream']['total_flops'])}",
         f"{fl['upstream']['total_flops'] / fl['ours']['total_flops']:.2f}× (upstream / ours)"),
        ("2", "FLOPs per call (batch 2 for UNets and text encoders)",
         f"base UNet {tflop(fl['flops_per_call']['base_unet'])}, "
         f"refiner UNet {tflop(fl['flops_per_call']['refiner_unet'])}",
         f"VAE decode {tflop(fl['flops_per_call']['vae_decode'])}, text encoders per image "
         f"{tflop(fl['ours']['flops']['text_encoders'])}",
         f"UNet params {fl['parameters']['base_unet']:,} / {fl['parameters']['refiner_unet']:,} ✓"),
    ]
    if srv:
        o, b, cold = srv["overhead"], srv["batching"], srv["cold_start"]
        added = (o["grpc"]["median"] - o["engine"]["median"]) * 1000
        rows += [
            ("3", f"one request (steps={SERVE_STEPS}) end to end through Ray Serve's gRPC proxy vs in process, "
                  f"{o['grpc']['n']} interleaved runs",
             seconds(o["grpc"], "ms"), f"Engine.generate in process: {seconds(o['engine'], 'ms')}; "
             f"+ JPEG/base64 in process: {seconds(o['engine_plus_jpeg_base64'], 'ms')}",
             f"{added:+.0f} ms, {o['grpc']['median'] / o['engine']['median']:.2f}× (gRPC / in process)"),
            ("3", "the same gRPC requests, paired: end to end minus the replica's own engine time "
                  "(= parse, JPEG/base64, Ray handle, gRPC proxy)",
             seconds(o["outside_replica_engine"], "ms"),
             f"engine stages the replica reports (usage.seconds): {seconds(o['replica_engine_stages'], 'ms')}",
             f"{o['outside_replica_engine']['median'] / o['grpc']['median'] * 100:.0f}% of end to end"),
            ("4", f"n=4 in one call (gRPC, steps={SERVE_STEPS}), {b['n4_one_call']['seconds']['n']} rounds",
             rate(b["n4_one_call"]["images_per_second"]),
             f"four n=1 calls in sequence: {rate(b['four_calls_sequential']['images_per_second'])}",
             _speedup(b["n4_one_call"], b["four_calls_sequential"], "n=4 / sequential")),
            ("4", "four task inputs (n=1) in one CallRequest", rate(b["four_inputs_one_call"]["images_per_second"]),
             "four n=1 calls in sequence",
             _speedup(b["four_inputs_one_call"], b["four_calls_sequential"], "one call / sequential")),
            ("4", "four n=1 calls at once (4 client threads)", rate(b["four_calls_concurrent"]["images_per_second"]),
             "the same four in sequence",
             _speedup(b["four_calls_concurrent"], b["four_calls_sequential"], "concurrent / sequential")),
            ("4", "in process: Engine.generate n=4", rate(b["engine_n4"]["images_per_second"]),
             f"four Engine.generate n=1: {rate(b['engine_four_n1']['images_per_second'])}",
             _speedup(b["engine_n4"], b["engine_four_n1"], "n=4 / four n=1")),
            ("5", "cold start: launching serving() (Ray, Serve, replica load + warm-up) to the first reply",
             f"{cold['launch_to_first_reply_seconds']:.1f} s",
             f"launch to all RUNNING: {cold['launch_to_ready_seconds']:.1f} s; "
             f"first reply {cold['first_reply_seconds']:.2f} s",
             "one sample"),
        ]
    if srv and "peer_apis" in srv:
        instill = srv["peer_apis"]["instill-http"]
        peers = {path: value for path, value in srv["peer_apis"].items() if path != "instill-http"}
        rows.append(("8", f"peer APIs through the HTTP proxy, the same request (steps={SERVE_STEPS}), "
                          f"{instill['n']} interleaved rounds",
                     f"Instill HTTP: {seconds(instill, 'ms')}",
                     "; ".join(f"{path}: {seconds(value, 'ms')}" for path, value in peers.items()),
                     ", ".join(f"{(value['median'] - instill['median']) * 1000:+.0f} ms"
                               for value in peers.values()) + " (each - Instill)"))
    load = results["load"]
    warm = (f"; Engine.warm_up() (every aspect ratio, 2 steps): {results['warm_up_seconds']:.2f} s"
            if "warm_up_seconds" in results else "")
    rows.append(("5", f"weight load: Engine.load, DEMO weights (15 MB), {load['n']} runs", seconds(load),
                 f"first load in the process (cold imports): {results['first_load_seconds']:.2f} s{warm}",
                 "real weights are ~12 GB"))
    if srv and "rss" in srv:
        rss = srv["rss"]
        hwm = f"; kernel peak (VmHWM) {mb(rss['replica_vmhwm_bytes'])}" if rss.get("replica_vmhwm_bytes") else ""
        rows.append(("5", "replica peak RSS during a 40-step and an n=4 request (psutil, every 5 ms)",
                     mb(rss["replica_peak_bytes"]),
                     f"replica idle after load: {mb(rss['replica_idle_bytes'])}{hwm}; whole Ray Serve stack "
                     f"({rss['serving_stack_processes']} processes): {mb(rss['serving_stack_after_bytes'])}",
                     "demo weights"))
    if "adapters" in results:
        ad = results["adapters"]
        rows.append(("6", f"LoRA adapter switched per request (demo adapters, {ad['resident']['n']} runs, "
                          "alternating two)", f"resident: {seconds(ad['resident'], 'ms')}",
                     f"loaded from disk each time: {seconds(ad['from_disk'], 'ms')}; reloading the pipelines "
                     f"instead: {seconds(ad['reload_pipelines'], 'ms')}",
                     _ratio(ad["reload_pipelines"], ad["resident"], "reload / resident")))
    if "prompts" in results:
        pr = results["prompts"]
        rows.append(("6", f"prompt encoding for the base, short plain prompt ({pr['short_ours']['n']} runs)",
                     seconds(pr["short_ours"], "ms"),
                     f"diffusers' encode_prompt: {seconds(pr['short_diffusers'], 'ms')}",
                     _ratio(pr["short_ours"], pr["short_diffusers"], "ours / diffusers")))
        rows.append(("6", f"prompt encoding for the base, {pr['long_prompt_tokens']}-token prompt (compel, nothing "
                          "truncated)", seconds(pr["long_ours"], "ms"),
                     f"encode_prompt, truncated to 77 tokens: {seconds(pr['long_diffusers'], 'ms')}",
                     _ratio(pr["long_ours"], pr["long_diffusers"], "ours / diffusers")))
    if "safety_checker" in results:
        sc = results["safety_checker"]
        rows.append(("6", f"safety checker per image (demo checker, n=2, {DEFAULT_STEPS} steps, "
                          f"{sc['checker_per_image']['n']} runs)", seconds(sc["checker_per_image"], "ms"),
                     f"the rest of the same generations: {seconds(sc['rest_per_image'])}",
                     f"{100 * sc['checker_per_image']['median'] / sc['rest_per_image']['median']:.2f}% of it"))
    if "compiled" in results:
        co = results["compiled"]
        rows += [
            ("7", f"compiled (SDXL_COMPILE=1) vs eager: wall time per image, CPU, demo weights {w}×{h}, "
                  f"{co['compiled']['n']} interleaved runs", seconds(co["compiled"]),
             f"eager: {seconds(co['eager'])}; max pixel difference {co['max_pixel_difference']}",
             _ratio(co["eager"], co["compiled"], "eager / compiled")),
            ("7", f"what compiling costs at start-up: Engine.warm_up() compiling every network (empty cache), "
                  f"max batch {co['max_batch_size']}",
             f"{co['warm_up_seconds']['compiled']:.0f} s ({co['graphs_compiled']} graphs)",
             f"eager warm-up: {co['warm_up_seconds']['eager']:.1f} s",
             f"+{co['warm_up_seconds']['compiled'] - co['warm_up_seconds']['eager']:.0f} s"),
        ]
    po, pu = paper["ours"], paper["upstream"]
    def a100(p):
        half = [v for k, v in p["a100_scaled_seconds"].items() if not k.startswith("fp32")]
        central = p["a100_scaled_seconds"]["bf16 + SDPA"]
        return f"≈ {central:.1f} s (half precision: {min(half):.1f}–{max(half):.1f} s)"

    rows += [
        ("P", "on paper, NOT measured on a GPU: time per image ≥ FLOPs / H100 SXM dense bf16 peak (989 TFLOPS)",
         f"≥ {po['h100_lower_bound_seconds']:.2f} s", f"upstream: ≥ {pu['h100_lower_bound_seconds']:.2f} s",
         "lower bound"),
        ("P", "on paper, NOT measured on a GPU: A100 80 GB, published SDXL base 30-step timings "
              "(diffusers docs) scaled by FLOPs",
         a100(po), f"upstream: {a100(pu)}", "see bench/on_paper.py"),
    ]
    weights = paper["weights_bytes"]
    rows.append(("P", "on paper: weights in GPU memory (both recipes load the same five networks)",
                 f"{weights['fp16_vae_fp32'] / 1e9:.1f} GB (fp16, VAE fp32)",
                 f"{weights['all_fp16'] / 1e9:.1f} GB all fp16 (with the fp16-fix VAE)", "activations extra"))
    return markdown(rows)


def markdown(rows: list[tuple]) -> str:
    head = ["#", "measurement", "ours", "compared with", "ratio"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _calls(recipe) -> int:
    return sum(recipe["unet_calls"].values())


def _ratio(other: dict, ours: dict, label: str) -> str:
    return f"{other['median'] / ours['median']:.2f}× ({label})"


def _speedup(case: dict, baseline: dict, label: str) -> str:
    return f"{case['images_per_second']['median'] / baseline['images_per_second']['median']:.2f}× img/s ({label})"


# ----------------------------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each 40-step recipe (default 5)")
    parser.add_argument("--serve-runs", type=int, default=20, help="timed runs of the overhead rows (default 20)")
    parser.add_argument("--batch-runs", type=int, default=7, help="timed rounds of the batching rows (default 7)")
    parser.add_argument("--weights", type=Path, default=None, help="weights root holding demo/ (default: weights/)")
    parser.add_argument("--no-serve", action="store_true", help="skip the Ray Serve rows (3, 4 and most of 5)")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled-engine rows (7), which compile "
                        "for about six minutes on 2 CPU cores")
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results", help="folder for the JSON")
    args = parser.parse_args(argv)
    os.chdir(REPO)  # the serving child runs `python -m stable_diffusion_xl.serving.local_serve` from here

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from stable_diffusion_xl.generation.engine import Engine

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    results: dict = {"machine": machine()}
    log(f"machine: {results['machine']['cpu_model']}, {results['machine']['logical_cores']} cores, "
        f"{results['machine']['ram_gb']} GB; torch threads {torch.get_num_threads()}")

    log("FLOPs: real SDXL configurations on the meta device ...")
    results["flops"] = flop_count.count()
    results["on_paper"] = on_paper.estimates(results["flops"])
    log(f"  ours {results['flops']['ours']['total_flops'] / 1e12:.1f} TFLOP, upstream "
        f"{results['flops']['upstream']['total_flops'] / 1e12:.1f} TFLOP per image "
        f"({results['flops']['seconds_to_count']} s)")

    with demo_weights(args.weights) as (weights_root, built):
        results["weights"] = {"root": str(weights_root), "demo": True, "built_for_this_run": built}
        started = time.perf_counter()
        engine = Engine.load(weights_root, demo=True)
        results["first_load_seconds"] = time.perf_counter() - started
        log(f"work per image: ours, raw diffusers and upstream, {DEFAULT_STEPS} steps, {args.runs} runs each")
        results["work_per_image"] = work_per_image(engine, args.runs)
        log("weight load: Engine.load x 3")
        results["load"] = load_times(weights_root, 3)
        log("LoRA adapters: switching per request vs loading them vs reloading the pipelines")
        results["adapters"] = adapter_switching(engine, weights_root, args.runs * 2)
        log("prompt encoding: ours against diffusers' encode_prompt")
        results["prompts"] = prompt_encoding(engine, args.runs * 2)
        log("safety checker: its share of a generation")
        results["safety_checker"] = safety_checker_share(weights_root, args.runs)
        if hasattr(engine, "warm_up"):  # what the replica does after loading unless SDXL_WARM_UP=0
            results["warm_up_seconds"] = timed(engine.warm_up)
            log(f"  Engine.warm_up(): {results['warm_up_seconds']:.2f} s")
        if not args.no_serve:
            args.output.mkdir(parents=True, exist_ok=True)
            log_path = args.output / f"{datetime.date.today().isoformat()}-serve.log"
            try:
                results["serving"] = served(weights_root, engine, args.serve_runs, args.batch_runs, log_path)
            except Exception as error:  # keep the rows measured so far; say why the serving rows are missing
                log(f"the Ray Serve rows failed: {type(error).__name__}: {error} (log: {log_path})")
                results["serving_error"] = f"{type(error).__name__}: {error}"
        if not args.no_compile:  # last: compiling changes process-wide torch settings and leaves compile workers
            log(f"compiled against eager: both warm-ups, then our recipe, {args.runs} runs each")
            results["compiled"] = compiled_vs_eager(weights_root, args.runs)

    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["total_seconds"] = time.perf_counter() - STARTED
    results["table"] = table(results)
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / f"{datetime.date.today().isoformat()}.json"
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(results["table"])
    info = results["machine"]
    print(f"\n{info['date']} · {info['cpu_model']} · {info['logical_cores']} "
          f"cores · {results['machine']['ram_gb']} GB · torch {torch.__version__} (1 thread) · no GPU · "
          f"load average {results['machine']['load_average_at_start'][0]} at start, "
          f"{results['machine']['load_average_at_end'][0]} at end · total {results['total_seconds']:.0f} s · "
          f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    log(f"done in {results['total_seconds']:.0f} s; numbers in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
