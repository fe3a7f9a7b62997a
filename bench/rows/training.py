"""Row 9: a LoRA training step (stable_diffusion_xl/training) on the demo weights at their native size (256²):
seconds per step and the peak memory it adds. bench/training.py times the steps (bench/gpu.py calls it too)."""

from __future__ import annotations

from bench.harness import log, mb, seconds
from bench.training import step_times

CPU_STEPS = 12


def training_step(bench) -> dict:
    """The demo weights at their native size (256²), on this machine's device, rank 32, batch 1."""
    from stable_diffusion_xl.weights.layout import WeightPaths

    log(f"training: {CPU_STEPS} LoRA training steps on the demo weights")
    return step_times(WeightPaths.locate(bench.weights_root, demo=True), steps=CPU_STEPS)


def training_lines(numbers: dict, results: dict) -> list[tuple]:
    memory = (f"peak GPU memory {mb(numbers['peak_gpu_bytes'])}" if numbers["peak_gpu_bytes"] is not None
              else f"peak RSS rise {mb(numbers['peak_rss_rise_bytes'])}")
    where = "demo weights" if numbers["resolution"] == 256 else "weights"
    return [(f"LoRA training step ({where}, {numbers['resolution']}², rank {numbers['rank']}, batch 1, "
             f"{numbers['device']}; {numbers['step_seconds']['n']} steps after {numbers['warm_up_steps']})",
             f"{seconds(numbers['step_seconds'])} per step",
             f"{memory}; before the first step (load, encode the photos once) {numbers['setup_seconds']:.1f} s",
             "")]
