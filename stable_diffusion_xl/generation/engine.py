"""SDXL base + refiner as an ensemble of experts, loaded once, generating batches of requests.

The base denoises the high-noise part of the schedule (`denoising_end=high_noise_frac`) and
hands its latents to the refiner, which finishes the low-noise part
(`denoising_start=high_noise_frac`): 40 UNet calls for 40 steps, not the 52 of refining a
finished image. Usable without Ray: `Engine.load(...).generate([TextToImageRequest(...)])`.

Edits (docs/edits.md) run the same sequence on the same modules; what differs by mode (generation/modes.py) is
what the pipelines start from. An edit's input picture is fitted to its native size and encoded by the shared VAE.
"""

from __future__ import annotations

import copy
import functools
import itertools
import logging
import secrets
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import torch
from PIL import Image

from ..weights.layout import DEFAULT_WEIGHTS_DIR, WeightPaths
from ..weights.library_logs import quiet_library_logs
from ..weights.loading import choose_device, dtype_for, load_base
from . import compile as compiling
from .adapters import DEFAULT_MAX_LORAS, ResidentAdapters
from .compile import DEFAULT_COMPILE_MODE, compile_pipelines, compiled_graphs, inductor_compiles, refuse_adapters
from .compile_cache import CompileCache, cache_key
from .modes import MODES
from .quantize import quantize_unets, refuse_unsupported
from .request import MAX_SEED, TextToImageRequest, nth_seed
from .results import DEFAULT_MAX_BATCH_SIZE, Cancelled, Generation, NaNImage, OutOfMemory, Progress, SharedProgress
from .safety import SafetyChecker
from .schedulers import both_experts_step, expert_calls, make_scheduler
from .sizes import ASPECT_RATIOS, image_size

log = logging.getLogger(__name__)
# diffusers logs the part of a prompt beyond CLIP's 77 tokens, at WARNING. Prompts stay out of the logs.
for _pipeline in ("pipeline_stable_diffusion_xl", "pipeline_stable_diffusion_xl_img2img",
                  "pipeline_stable_diffusion_xl_inpaint"):
    logging.getLogger(f"diffusers.pipelines.stable_diffusion_xl.{_pipeline}").setLevel(logging.ERROR)
quiet_library_logs()  # for every user of the engine, the CLI's and the deployment's alike


class Caller(NamedTuple):
    """What one caller asked of a run (`Engine.generate_for`): its requests, and the progress it follows and
    cancels."""

    requests: Sequence[TextToImageRequest]
    progress: Progress


@dataclass(frozen=True)
class _Job:
    """One image to make, with what it has of its own (request.PER_IMAGE): the index of its request, its prompt,
    negative prompt and seed, and for an edit its request's pictures, fitted to the size it is made at."""

    request_index: int
    prompt: str
    negative_prompt: str
    seed: int
    pictures: dict[str, Image.Image] = field(default_factory=dict, compare=False)


class Engine:
    def __init__(self, base, refiner, *, device: str, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE, demo: bool = False,
                 lora_dir: Path | None = None, max_loras: int = DEFAULT_MAX_LORAS, safety_checker=None):
        self.base, self.refiner, self.device = base, refiner, device
        self.max_batch_size, self.demo = max_batch_size, demo
        self.safety_checker = safety_checker  # a SafetyChecker (stable_diffusion_xl/safety.py) or None: off
        # LoRA adapters live in the base only: the refiner never saw their subject or style.
        self.adapters = ResidentAdapters(base, lora_dir, max_loras)
        self.vae = base.vae
        from .prompts import PromptEncoder  # compel: long prompts and weighting syntax

        self.prompts = PromptEncoder(base, refiner)
        # Each mode's (base, refiner) pipelines, all on the same modules.
        self.pipelines = {name: mode.pipelines(base, refiner) for name, mode in MODES.items()}
        # The native square size the UNet was trained at: 1024 for SDXL, 256 for the demo weights.
        self.resolution = base.unet.config.sample_size * base.vae_scale_factor
        self._lock = threading.Lock()  # one generation at a time: the pipelines keep scheduler state
        # Each sampler is built from the checkpoint's own scheduler config (its training noise schedule).
        self.scheduler_configs = {"base": base.scheduler.config, "refiner": refiner.scheduler.config}
        self.healthy = True  # False after a device error that leaves the GPU unusable
        self.compiled = False
        self.compile_cache: CompileCache | None = None  # set by _compile
        self.quantization: str | None = None  # "fp8" when the UNets' linear layers are float8
        self.set_progress_bars(False)

    @classmethod
    def load(cls, weights_dir=DEFAULT_WEIGHTS_DIR, *, demo: bool = False, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
             device: str | None = None, lora_dir: Path | None = None, max_loras: int = DEFAULT_MAX_LORAS,
             safety_checker: bool = False, safety_checker_dir: Path | None = None, compile: bool = False,
             compile_mode: str = DEFAULT_COMPILE_MODE, compile_cache: Path | None = None,
             quantize: str | None = None) -> Engine:
        """Load base and refiner from disk (safetensors only), sharing text_encoder_2, tokenizer_2 and the VAE.
        With `compile`, the UNets' transformer blocks are compiled on their first calls, in inductor's
        `compile_mode`: run warm_up() before serving. `compile_cache`: the folder of compiled artifacts that the
        warm-up loads, or fills when it has none for this replica (default: compile-cache/ beside the models).
        `quantize="fp8"` puts the UNets' transformer layers in float8 (generation/quantize.py); on a device
        without fp8 it raises QuantizeRefused before any weight is read."""
        from diffusers import AutoencoderKL, StableDiffusionXLImg2ImgPipeline

        paths = WeightPaths.locate(weights_dir, demo=demo)
        lora_dir = lora_dir or paths.loras
        if compile:
            refuse_adapters(lora_dir)  # before the weights are read, not after
        device = choose_device(device)
        dtype = dtype_for(device)
        refuse_unsupported(quantize, device, lora_dir)
        if demo:
            log.warning("loading the DEMO weights from %s: tiny random models, their images are noise", paths.base)
            if device == "cpu":
                torch.set_num_threads(1)  # models this small only lose time to thread synchronisation
        vae = None  # the base's own, decoding in fp32
        if dtype == torch.float16 and (paths.vae_fp16_fix / "config.json").is_file():
            vae = AutoencoderKL.from_pretrained(paths.vae_fp16_fix, dtype=dtype, use_safetensors=True)
        base = load_base(paths.base, dtype, vae)
        refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(
            paths.refiner, dtype=dtype, variant="fp16", use_safetensors=True,
            text_encoder_2=base.text_encoder_2, tokenizer_2=base.tokenizer_2, vae=base.vae,
        )
        base.to(device)
        refiner.to(device)
        # Decode one image at a time: a batch of 1024² decodes would need several GB at once.
        base.vae.enable_slicing()
        # The safety checker, when asked for, must be there: a deployment that filters never runs without it.
        checker = SafetyChecker.load(safety_checker_dir or paths.safety_checker, device, dtype) if safety_checker \
            else None
        engine = cls(base, refiner, device=device, max_batch_size=max_batch_size, demo=demo, lora_dir=lora_dir,
                     max_loras=max_loras, safety_checker=checker)
        if compile:
            engine._compile(compile_mode, compile_cache or paths.compile_cache, quantize)
        elif quantize:
            engine._quantize(quantize)
        return engine

    def _compile(self, compile_mode: str, cache_dir: Path, quantize: str | None = None) -> None:
        """Compile both UNets' transformer blocks (generation/compile.py), and load what the compile cache holds for
        them; the compiler runs on their first calls, which warm_up() makes."""
        compile_pipelines(self.base, self.refiner, self.device, compile_mode)
        if quantize:  # after compile_pipelines' QKV fusion, before the first calls run the compiler
            self._quantize(quantize)
        key = cache_key([self.base.unet, self.refiner.unet], device=self.device, mode=compile_mode,
                        backend=compiling.BACKEND) | {"quantize": quantize}  # fp8 blocks are graphs of their own
        self.compile_cache = CompileCache(cache_dir, key)
        self.compile_cache.load()
        self.compiled = True

    def _quantize(self, method: str) -> None:
        layers = quantize_unets(self.base, self.refiner)
        self.quantization = method
        log.info("%d linear layers of the UNets' transformer blocks in %s", layers, method)

    def set_progress_bars(self, enabled: bool) -> None:
        for base, refiner in self.pipelines.values():
            base.set_progress_bar_config(disable=not enabled, desc="base")
            refiner.set_progress_bar_config(disable=not enabled, desc="refiner")

    def warm_up(self) -> None:
        """One tiny generation per aspect ratio, so no user waits for first-call kernel selection. Compiled, also
        every graph a request can reach, so no user waits for the compiler either: each aspect ratio with guidance
        off (the UNets' batch 1, a graph of its own) and at the largest batch. Shapes are dynamic, so the batch
        sizes between share the largest's graph; warming them all (72 generations at the defaults, not 27) would
        only add the time of their generations to every start."""
        shapes = {(1, 7.5)}  # (images, guidance): guidance doubles the UNets' batch
        if self.compiled:
            shapes |= {(1, 1.0), (self.max_batch_size, 7.5)}
        started, graphs, compiles = time.perf_counter(), compiled_graphs(), inductor_compiles()
        for ratio, (n, guidance) in itertools.product(ASPECT_RATIOS, sorted(shapes)):
            self.generate([TextToImageRequest(prompt="warm-up", aspect_ratio=ratio, n=n, guidance_scale=guidance,
                                              steps=2, high_noise_frac=0.5, seed=1)])
        if self.compiled:
            compiled = inductor_compiles() - compiles
            log.info("traced %d graphs of the UNets' transformer blocks while warming up in %.1f s; inductor "
                     "compiled %d of them, the cache held the rest", compiled_graphs() - graphs,
                     time.perf_counter() - started, compiled)
            if compiled:  # new code: the next replica loads it
                self.compile_cache.save()

    def size_of(self, request: TextToImageRequest) -> tuple[int, int]:
        return image_size(request.aspect_ratio, self.resolution)

    def generate(self, requests: Sequence[TextToImageRequest], progress: Progress | None = None) -> list[Generation]:
        """Images for each request, in order. Requests with the same batch key share UNet batches.

        `progress.cancel()`, from any thread, stops the generation at the end of the step under way
        and raises Cancelled, also while the call still waits for the engine.
        """
        (outcome,) = self.generate_for([Caller(requests, progress or Progress())])
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def generate_for(self, callers: Sequence[Caller]) -> list[list[Generation] | Exception]:
        """One run for several callers: their requests with the same batch key share UNet batches, as one call's
        do, and each caller's images are the ones its seeds make alone (up to float rounding). Each caller sees
        only its own: its progress counts the steps of the batches holding its images; its cancel drops its images
        from every batch after the one under way, and a batch stops at its next step once all its callers have
        cancelled; an error in a batch ends only the callers with images in it. For each caller, in order, its
        generations or the exception that ended them."""
        requests, owners = [], []  # every caller's requests, and which caller each is of
        for number, caller in enumerate(callers):
            requests += [self._as_run(request) for request in caller.requests]
            owners += [number] * len(caller.requests)
        seeds = [request.seed or secrets.randbelow(MAX_SEED) + 1 for request in requests]
        results = [Generation([], [], *self.size_of(request), safety_checked=self.safety_checker is not None,
                              refined=self._refines(request)) for request in requests]
        groups: dict[tuple, list[_Job]] = defaultdict(list)
        for index, (request, seed) in enumerate(zip(requests, seeds)):
            key = (request.batch_key, self.prompts.batch_key(request.prompt, request.negative_prompt))
            pictures = MODES[request.mode].fitted(request, self.size_of(request))
            groups[key] += [_Job(index, request.prompt, request.negative_prompt, nth_seed(seed, i), pictures)
                            for i in range(request.n)]
        chunks = [jobs[start : start + self.max_batch_size] for jobs in groups.values()
                  for start in range(0, len(jobs), self.max_batch_size)]
        ended: dict[int, Exception] = {}  # caller -> why it has no images
        with self._lock, torch.inference_mode():
            for chunk in chunks:
                for number in {owners[job.request_index] for job in chunk}:
                    callers[number].progress.total += sum(self.calls(requests[chunk[0].request_index]))
            for chunk in chunks:
                self._end_cancelled(callers, ended)
                chunk = [job for job in chunk if owners[job.request_index] not in ended]
                if not chunk:
                    continue
                sharing = sorted({owners[job.request_index] for job in chunk})
                for index in {job.request_index for job in chunk}:
                    results[index].batch_calls = max(results[index].batch_calls, len(sharing))
                try:
                    self._run_or_split(requests, chunk, results,
                                       SharedProgress([callers[number].progress for number in sharing]))
                except Exception as error:
                    if _is_device_failure(error):
                        self.healthy = False
                    for number in sharing:
                        ended[number] = error
            self._end_cancelled(callers, ended)
        return [ended.get(number) or [result for result, owner in zip(results, owners) if owner == number]
                for number in range(len(callers))]

    @staticmethod
    def _end_cancelled(callers: Sequence[Caller], ended: dict[int, Exception]) -> None:
        """Callers that cancelled since the last batch get no images: Cancelled, saying at which step."""
        for number, caller in enumerate(callers):
            if number not in ended:
                try:
                    caller.progress.stop_if_cancelled()
                except Cancelled as cancelled:
                    ended[number] = cancelled

    def calls(self, request: TextToImageRequest) -> tuple[int, int]:
        """UNet calls per batch of the base and of the refiner."""
        strength = 1.0 if request.strength is None else request.strength  # text-to-image runs the whole schedule
        return expert_calls(request.scheduler, self.scheduler_configs["base"], request.steps, strength,
                            request.high_noise_frac if request.refiner else None)

    def _refines(self, request: TextToImageRequest) -> bool:
        """Whether the refiner runs (an edit's strength may leave it all of the steps, or none)."""
        return self.calls(request)[1] > 0

    def _as_run(self, request: TextToImageRequest) -> TextToImageRequest:
        """The request as it runs: the base alone where the steps leave either expert none (`steps: 1`)."""
        if request.refiner and not both_experts_step(request.scheduler, self.scheduler_configs["base"],
                                                     request.steps, request.high_noise_frac):
            return replace(request, refiner=False)
        return request

    def _run_or_split(self, requests, chunk: list[_Job], results: list[Generation], progress: Progress) -> None:
        """Run one batch; when it does not fit in memory, run each half instead, down to one image."""
        try:
            images, timings, redecoded, flagged = self._run(requests[chunk[0].request_index], chunk, progress)
        except torch.cuda.OutOfMemoryError:
            self._free_memory()
            if len(chunk) == 1:
                width, height = self.size_of(requests[chunk[0].request_index])
                raise OutOfMemory(
                    f"failed to allocate memory for one {width}x{height} image on {self.device}"
                ) from None
            log.warning("out of memory on a batch of %d images: splitting it", len(chunk))
            for index in {job.request_index for job in chunk}:
                results[index].events["oom_splits"] += 1
            half = len(chunk) // 2
            self._run_or_split(requests, chunk[:half], results, progress)
            self._run_or_split(requests, chunk[half:], results, progress)
            return
        for position, (job, image, unsafe) in enumerate(zip(chunk, images, flagged)):
            results[job.request_index].images.append(image)
            results[job.request_index].seeds.append(job.seed)
            results[job.request_index].filtered.append(unsafe)
            results[job.request_index].events["nan_redecodes"] += position in redecoded
        for index in {job.request_index for job in chunk}:
            results[index].tokens = self.prompts.token_counts(requests[index].prompt, requests[index].negative_prompt)
            for stage, seconds in timings.items():
                results[index].timings[stage] = results[index].timings.get(stage, 0.0) + seconds

    def _free_memory(self) -> None:
        if self.device == "cuda":
            torch.cuda.empty_cache()

    def _run(self, batch: TextToImageRequest, jobs: list[_Job], progress: Progress
             ) -> tuple[list[Image.Image], dict, set[int], list[bool]]:
        """One UNet batch: every job shares `batch`'s size, steps, guidance and hand-off (its batch key).
        Returns the images (black where the safety checker flagged one), the seconds per stage, which images
        were decoded again, and which were flagged."""
        clock = _Clock(self.device)
        mode = MODES[batch.mode]
        pictures = [job.pictures for job in jobs]
        latents = self._denoise(mode, batch, jobs, pictures, progress, clock)
        if latents is None:  # an edit with no step to run
            images, redecoded = mode.unchanged(pictures), set()
        else:
            images, redecoded = self.decode(latents)
            clock.lap("vae_decode")
        images = mode.finished(images, pictures)
        flagged = [False] * len(images)
        if self.safety_checker:  # the whole batch at once, on the pipelines' device
            flagged = self.safety_checker.flagged(images)
            images = [Image.new("RGB", image.size) if unsafe else image for image, unsafe in zip(images, flagged)]
            clock.lap("safety_checker")
        return images, clock.laps, redecoded, flagged

    def _denoise(self, mode, batch: TextToImageRequest, jobs: list[_Job], pictures: list[dict], progress: Progress,
                 clock: _Clock) -> torch.Tensor | None:
        """The batch's latents: the base over the noisiest part of the schedule (from `strength`, for an edit) to
        the hand-off, the refiner over the rest; either alone where the schedule leaves the other none (see
        schedulers.expert_calls). None where no step is left to run."""
        base_calls, refiner_calls = self.calls(batch)
        if base_calls + refiner_calls == 0:
            return None
        # A CPU generator per image makes image i depend on its own seed only, on any device and batch.
        generators = [torch.Generator("cpu").manual_seed(job.seed) for job in jobs]
        guidance, both = batch.guidance_scale, base_calls > 0 and refiner_calls > 0
        self.adapters.use(batch.lora, batch.lora_scale)  # before encoding: an adapter may train the text encoders
        base, refiner = self.pipelines[batch.mode]
        base.scheduler = make_scheduler(batch.scheduler, self.scheduler_configs["base"],
                                        denoising_end=batch.high_noise_frac if both else None)
        refiner.scheduler = make_scheduler(batch.scheduler, self.scheduler_configs["refiner"])
        base_inputs, refiner_inputs = mode.inputs(batch, pictures, self.size_of(batch),
                                                  lambda inputs: self._encode_pictures(inputs, generators))
        options = {"num_inference_steps": batch.steps, "guidance_scale": guidance, "generator": generators,
                   "output_type": "latent", "callback_on_step_end": progress.on_step_end}
        base_embeds = self._encode(self.base, jobs, guidance) if base_calls else None
        refiner_embeds = self._encode(self.refiner, jobs, guidance) if refiner_calls else None
        clock.lap("text_encoders")
        if base_calls:
            progress.stage = "base"
            latents = base(**base_embeds, **options, **base_inputs,
                           denoising_end=batch.high_noise_frac if both else None).images
            progress.stop_if_cancelled()
        clock.lap("base")
        if refiner_calls:
            progress.stage = "refiner"
            # After the base, the refiner picks up its latents at the hand-off; alone, it starts the edit itself.
            start = refiner_inputs | {"image": latents, "denoising_start": batch.high_noise_frac} if base_calls \
                else base_inputs
            latents = refiner(**refiner_embeds, **options, **start).images
            progress.stop_if_cancelled()
        clock.lap("refiner")
        return latents

    def _encode_pictures(self, pictures: list[Image.Image], generators: list[torch.Generator]) -> torch.Tensor:
        """The pictures' latents as the pipelines make them: one sample of the VAE's distribution each, drawn from
        the image's own generator (before its noise), scaled."""
        pixels = self.base.image_processor.preprocess(pictures).to(self.device, self.vae.dtype)
        latents = torch.cat([self.vae.encode(pixels[i : i + 1]).latent_dist.sample(generator)
                             for i, generator in enumerate(generators)])
        return (latents * self.vae.config.scaling_factor).to(self.base.unet.dtype)

    def _encode(self, pipeline, jobs: list[_Job], guidance: float) -> dict[str, torch.Tensor]:
        # Without a negative prompt, None lets the base use zero embeddings, as SDXL was trained.
        negatives = [job.negative_prompt for job in jobs] if jobs[0].negative_prompt else None
        return self.prompts.encode(pipeline, [job.prompt for job in jobs], negatives, guidance > 1)

    def decode(self, latents: torch.Tensor) -> tuple[list[Image.Image], set[int]]:
        """Latents to PIL images, and which of them had NaNs and were decoded again in fp32.

        A fp16 VAE can overflow to NaN, which postprocessing turns into a black image.
        """
        pixels = _decode_with(self.vae, latents)
        broken = torch.isnan(pixels).flatten(1).any(dim=1)
        if broken.any():
            log.warning("%d image(s) decoded to NaN: decoding them again in fp32", int(broken.sum()))
            pixels[broken] = _decode_with(self._fp32_vae, latents[broken]).to(pixels.dtype)
            if torch.isnan(pixels[broken]).any():
                raise NaNImage("the latents of an image are NaN; it cannot be decoded (try another seed)")
        redecoded = {int(i) for i in broken.nonzero().flatten()}
        return self.base.image_processor.postprocess(pixels, output_type="pil"), redecoded

    @functools.cached_property
    def _fp32_vae(self):
        return _fp32_copy(self.vae)


def _fp32_copy(vae):
    return vae if vae.dtype == torch.float32 else copy.deepcopy(vae).to(torch.float32)


def _decode_with(vae, latents: torch.Tensor) -> torch.Tensor:
    return vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample


def _is_device_failure(error: Exception) -> bool:
    """CUDA errors other than out-of-memory leave the context unusable: the replica must be replaced."""
    return isinstance(error, getattr(torch, "AcceleratorError", ())) or "CUDA error" in str(error)


class _Clock:
    """Wall time per stage; waits for the GPU so a stage is charged for its own kernels."""

    def __init__(self, device: str):
        self.device, self.laps, self._last = device, {}, time.perf_counter()

    def lap(self, stage: str) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.laps[stage], self._last = now - self._last, now
