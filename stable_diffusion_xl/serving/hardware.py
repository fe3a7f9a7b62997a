"""The hardware a replica asks Ray for, from the RAY_* variables Instill Core sets, and the device it then runs on.

Core turns the model's hardware choice into variables (model-backend's GenerateHardwareConfig, Core v0.58.1),
and `deployment_options` turns those into Ray Serve's options; nothing else reads RAY_*:

| hardware on Core                  | Core sets                                   | a replica asks Ray for          |
|-----------------------------------|---------------------------------------------|---------------------------------|
| GPU, model ID without `-Ng`       | RAY_NUM_OF_GPUS=0, RAY_TOTAL_VRAM= (empty)  | one GPU                         |
| GPU, model ID ending `-Ng`        | RAY_NUM_OF_GPUS=N                           | N GPUs (the engine uses one)    |
| GPU, the operator's `ray.vram` V  | RAY_TOTAL_VRAM=V                            | 1/k GPU: k replicas fit in V GB |
| a GPU type (NVIDIA_L4, ...)       | RAY_CUSTOM_RESOURCE=NVIDIA_L4, RAY_TOTAL_VRAM=24 | 1/k GPU and as much NVIDIA_L4 |
| a hardware name Core does not know| RAY_CUSTOM_RESOURCE=<name>, RAY_NUM_OF_GPUS=0 | one GPU and one <name>        |
| CPU                               | RAY_NUM_OF_CPUS=1                           | one CPU, no GPU                 |

The SDK's own reading (instill-sdk 0.17.2's InstillDeployable) gave the first and the last but one row no GPU,
so Ray hid every GPU from the replica, which then ran SDXL on the CPU and said nothing. Any of RAY_NUM_OF_GPUS,
RAY_TOTAL_VRAM and RAY_CUSTOM_RESOURCE, even empty or 0, is Core saying the hardware is a GPU.

A replica given a GPU that torch cannot use refuses to start (`replica_device`), so it never serves on the CPU
by accident; SDXL_DEVICE=cpu|cuda overrides the choice either way.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping

from instill.helpers.const import DEFAULT_AUTOSCALING_CONFIG

from ..fields import UserError, excerpt
from .environment import SettingError

log = logging.getLogger("ray.serve")

GPU_VARIABLES = ("RAY_NUM_OF_GPUS", "RAY_TOTAL_VRAM", "RAY_CUSTOM_RESOURCE")

# One replica's GPU memory, from the allocator's peak at real size on an H200 (docs/gpu-benchmark.md): base,
# refiner, both text encoders and the VAE in fp16 (the edit pipelines share those modules), at batch 1, eager and
# compiled; each image more in a batch adds (13.3 - 13.2) / 3 GiB. The CUDA context, cuBLAS's workspaces and the
# allocator's slack come on top of torch's peak, and the safety checker (CLIP ViT-L/14 in fp16) when it is on.
PEAK_AT_BATCH_1_GIB = {"eager": 13.2, "compiled": 15.1}
PER_IMAGE_GIB = 0.035
CUDA_CONTEXT_GIB = 1.0
SAFETY_CHECKER_GIB = 0.6


def replica_gpu_memory_gib(settings) -> float:
    """The GPU memory one replica with these settings needs, in GiB."""
    peak = PEAK_AT_BATCH_1_GIB["compiled" if settings.compile else "eager"]
    return (peak + PER_IMAGE_GIB * (settings.max_batch_size - 1) + CUDA_CONTEXT_GIB
            + (SAFETY_CHECKER_GIB if settings.safety_checker else 0))


def deployment_options(env: Mapping[str, str], settings) -> dict:
    """Ray Serve's options for the deployment (`Deployment.options(**...)`): resources from Core's hardware choice,
    Core's replica bounds as given (outside Core: 0 to 1, the SDK's), and our queueing and autoscaling settings,
    which win over the SDK's presets (RAY_IS_HIGH_SCALE_MODEL sets only what SDXL_* settings set)."""
    actor = {"num_cpus": _number(env, "RAY_NUM_OF_CPUS", default=0)}
    if _number(env, "RAY_MEMORY"):
        actor["memory"] = _number(env, "RAY_MEMORY")
    if env.get("RAY_ACCELERATOR_TYPE"):
        actor["accelerator_type"] = env["RAY_ACCELERATOR_TYPE"]
    if any(variable in env for variable in GPU_VARIABLES):
        actor["num_gpus"] = gpus = _gpus(env, replica_gpu_memory_gib(settings))
        if env.get("RAY_CUSTOM_RESOURCE"):  # Core's GPU type: its nodes hold as many of it as they hold GPUs
            actor["resources"] = {env["RAY_CUSTOM_RESOURCE"]: gpus}
    minimum = int(_number(env, "RAY_NUM_OF_MIN_REPLICAS", default=0))
    maximum = int(_number(env, "RAY_NUM_OF_MAX_REPLICAS", default=1))
    if maximum < max(minimum, 1):
        raise SettingError(f"RAY_NUM_OF_MAX_REPLICAS={maximum}: must be at least 1 and at least "
                           f"RAY_NUM_OF_MIN_REPLICAS ({minimum})")
    autoscaling = {**DEFAULT_AUTOSCALING_CONFIG, "min_replicas": minimum, "max_replicas": maximum,
                   "initial_replicas": max(minimum, 1), "target_ongoing_requests": settings.target_ongoing_requests,
                   "target_num_ongoing_requests_per_replica": settings.target_ongoing_requests,
                   "upscale_delay_s": settings.upscale_delay_s, "downscale_delay_s": settings.downscale_delay_s}
    return {"ray_actor_options": actor, "autoscaling_config": autoscaling,
            "max_ongoing_requests": settings.max_ongoing_requests,
            "max_queued_requests": settings.max_queued_requests}


def _gpus(env: Mapping[str, str], replica_gib: float) -> float:
    """Core's GPU count when it gives one; else a share of the operator's VRAM (k replicas to a GPU, k >= 1); else
    one whole GPU, where the SDK would give none."""
    count = _number(env, "RAY_NUM_OF_GPUS")
    if count:
        if count > 1:
            log.warning("RAY_NUM_OF_GPUS=%g: each replica is given %g GPUs and uses one", count, count)
        return count
    vram = _number(env, "RAY_TOTAL_VRAM")
    if vram:
        replicas_per_gpu = max(1, math.floor(vram / replica_gib))
        if vram < replica_gib:
            log.warning("RAY_TOTAL_VRAM=%g: a replica needs about %.1f GB; it gets a whole GPU and may run out of "
                        "memory (SDXL_MAX_BATCH_SIZE=1 needs less)", vram, replica_gib)
        return 1 / replicas_per_gpu
    return 1.0


def _number(env: Mapping[str, str], variable: str, default: float | None = None) -> float | None:
    """A RAY_* number; unset or empty gives the default, as the SDK reads them."""
    text = env.get(variable, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise SettingError(f"{variable}={excerpt(text)}: must be a number, 0 or more")
    return value


class NoUsableGPU(UserError, RuntimeError):
    """The replica was given a GPU (or told SDXL_DEVICE=cuda) that torch cannot use."""


def replica_device(setting: str | None) -> str:
    """`cuda` or `cpu` for this replica: SDXL_DEVICE when set, else the GPU when Ray gave the replica one (outside
    Ray: when torch sees one). Checked before any weight is read, so a replica that cannot run on the GPU it was
    given fails its start in seconds with NoUsableGPU, whose message Serve puts in the deployment's
    DEPLOY_FAILED status: what was asked, what torch sees, what to change."""
    import torch

    given = _ray_gpu_ids()
    if setting == "cpu" or (setting is None and not (torch.cuda.is_available() if given is None else given)):
        why = ("SDXL_DEVICE=cpu" if setting == "cpu" else "torch sees no GPU" if given is None else
               "Ray gave this replica no GPU: hardware CPU on Instill Core, or no RAY_NUM_OF_GPUS")
        unused = f", leaving unused the GPU Ray gave (ids {', '.join(given)})" if given else ""
        log.warning("running on the CPU in fp32 (%s%s): a 1024x1024 image of 40 steps takes minutes here, where an "
                    "H200 takes 2.4 s", why, unused)
        return "cpu"
    if torch.cuda.is_available():
        log.info("running on the GPU: %s", torch.cuda.get_device_name())
        return "cuda"
    asked = f"Ray gave this replica GPU {', '.join(given)}" if given else "SDXL_DEVICE=cuda asks for a GPU"
    cuda = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA (a CPU-only build)"
    raise NoUsableGPU(
        f"{asked}, but torch cannot use it ({_cuda_failure()}): torch {torch.__version__} with {cuda}, "
        f"{torch.cuda.device_count()} CUDA devices, CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}. "
        "Give the node an NVIDIA driver 580 or newer (torch's CUDA 13 build) and the NVIDIA container runtime, or run "
        "on the CPU knowingly: hardware CPU on Instill Core, or SDXL_DEVICE=cpu")


def _ray_gpu_ids() -> list[str] | None:
    """The GPU ids Ray gave this worker ([] for none), or None outside a Ray worker."""
    import ray

    if not ray.is_initialized():
        return None
    return [str(gpu) for gpu in ray.get_gpu_ids()]


def _cuda_failure() -> str:
    """Why torch has no CUDA device, in its own words (the driver's version, no device, a CPU-only build)."""
    import torch

    try:
        torch.cuda.init()
    except Exception as error:  # AssertionError on a CPU-only build, RuntimeError from the driver
        lines = str(error).strip().splitlines()
        return lines[0][:200] if lines else type(error).__name__
    return "no device"


def describe(device: str) -> dict:
    """What the status says of the device: its type and, on a GPU, the card's name and memory."""
    if device != "cuda":
        return {"device": device, "gpu": None}
    import torch

    properties = torch.cuda.get_device_properties(torch.cuda.current_device())
    return {"device": device, "gpu": {"name": properties.name, "memory_gib": round(properties.total_memory / 2**30, 1)}}
