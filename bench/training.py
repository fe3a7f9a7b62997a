"""Timing LoRA training steps (stable_diffusion_xl/training): bench/rows/training.py's row 9 on the demo weights,
and bench/gpu.py at real size. Imports nothing of Ray or the serving stack, so a bare GPU machine can run it.

    from bench.training import step_times
    step_times(WeightPaths.locate(root), steps=20, resolution=1024)   # e.g. the real-size random weights in root
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import psutil
import torch

from bench.harness import RssSampler, summary

WARM_UP_STEPS = 2  # the first steps pay for first-call kernel choices: not counted


def training_photos(count: int, size: int) -> list:
    """Photos of one subject (a disc, moved a little) on backgrounds of varying colour, `size` pixels square."""
    from PIL import Image, ImageDraw

    from stable_diffusion_xl.training.photos import Photo

    photos = []
    for index in range(count):
        image = Image.new("RGB", (size, size), (40 + 30 * index % 200, 90, 160))
        ImageDraw.Draw(image).ellipse((size // 5 + index * size // 50, size // 6, size * 3 // 4, size * 5 // 6),
                                      fill=(230, 200, 40))
        photos.append(Photo.of_image(f"photo-{index}.png", image))
    return photos


def step_times(weights, *, steps: int = 20, warm_up: int = WARM_UP_STEPS, resolution: int | None = None,
               rank: int = 32, train_text_encoder: bool = False, photos: int = 4,
               gradient_checkpointing: bool | None = None) -> dict:
    """Train for `steps` steps (batch 1) into a temporary LoRA folder: seconds per step after `warm_up` steps (each
    step ends with the loss read back, so the GPU's work is in it), the seconds before the first step (loading the
    base, encoding the photos once) and peak memory: the GPU's allocator peak on CUDA, the RSS rise on the CPU.
    `gradient_checkpointing` None: the trainer's choice (on for a GPU with under 70 GiB)."""
    from stable_diffusion_xl.training.loop import native_resolution
    from stable_diffusion_xl.training.options import TrainingOptions
    from stable_diffusion_xl.training.trainer import train

    resolution = resolution or native_resolution(weights)
    options = TrainingOptions(name="bench", steps=steps, rank=rank, resolution=resolution, seed=1,
                              train_text_encoder=train_text_encoder, checkpoint_every=steps)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    ends: list[float] = []
    started = time.perf_counter()
    process = psutil.Process()
    rss_before = process.memory_info().rss
    with tempfile.TemporaryDirectory(prefix="bench-lora-") as lora_dir, RssSampler(process) as rss:
        result = train(weights, Path(lora_dir), training_photos(photos, resolution), options,
                       on_step=lambda step, total, loss: ends.append(time.perf_counter()),
                       gradient_checkpointing=gradient_checkpointing)
        adapter_bytes = result.adapter.stat().st_size
    rss_rise = max(0, rss.peaks.get("idle", rss_before) - rss_before)
    durations = [later - earlier for earlier, later in zip(ends, ends[1:])][warm_up:]
    return {
        "device": torch.cuda.get_device_name() if cuda else "cpu", "resolution": resolution, "rank": rank,
        "train_text_encoder": train_text_encoder, "gradient_checkpointing": gradient_checkpointing, "steps": steps,
        "warm_up_steps": warm_up,
        "step_seconds": summary(durations), "setup_seconds": ends[0] - started, "total_seconds": result.metadata[
            "seconds"], "adapter_bytes": adapter_bytes, "peak_rss_rise_bytes": rss_rise,
        "peak_gpu_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        "first_loss": result.metadata["first_loss"], "last_loss": result.metadata["last_loss"],
    }
