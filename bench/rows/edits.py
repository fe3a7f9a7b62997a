"""Rows on edits (9), the Engine in process on the demo weights: an edit against text-to-image of the same size
and steps at three strengths (its work should follow the strength), and the memory the edit pipelines cost."""

from __future__ import annotations

import os
import time
from pathlib import Path

from bench.harness import high_water_mark, interleave, log, mb, ratio, seconds, summary, timed
from bench.rows.engine import UNetMeter
from bench.workload import DEFAULT_STEPS, PROMPT, SEED

STRENGTHS = (0.3, 0.6, 0.9)


def edit_vs_text(bench) -> dict:
    """Wall and CPU seconds and UNet calls per image: text-to-image, image-to-image at STRENGTHS and inpainting at
    0.6, one image each of the same native size and steps, interleaved; then what the edit pipelines hold and cost."""
    import numpy as np
    from PIL import Image

    from stable_diffusion_xl.generation.request import TextToImageRequest

    engine = bench.engine
    size = (engine.resolution, engine.resolution)
    picture = Image.fromarray(np.random.default_rng(SEED).integers(0, 256, (*size, 3), dtype=np.uint8))
    mask = Image.new("L", size, 0)
    mask.paste(255, (0, 0, size[0] // 2, size[1]))
    common = {"prompt": PROMPT, "seed": SEED, "steps": DEFAULT_STEPS}
    cases = {"text_to_image": TextToImageRequest(**common),
             **{f"image_to_image_{s}": TextToImageRequest(**common, pictures={"image": picture}, strength=s)
                for s in STRENGTHS},
             "inpainting_0.6": TextToImageRequest(**common, pictures={"image": picture, "mask": mask}, strength=0.6)}
    runners = {name: (lambda request=request: engine.generate([request])) for name, request in cases.items()}
    log(f"edits: text-to-image against edits at strengths {STRENGTHS}, {DEFAULT_STEPS} steps, {bench.args.runs} "
        "runs each")
    meter, calls = UNetMeter(engine), {}
    try:
        for name, run in runners.items():  # warm-up, counting the UNet calls
            meter.reset()
            run()
            calls[name] = dict(meter.calls)
    finally:
        meter.remove()
    def sample(name, run) -> dict:
        cpu = time.process_time()
        return {"seconds": timed(run), "cpu_seconds": time.process_time() - cpu}

    samples = interleave(runners, bench.args.runs, measure=sample, show=lambda s: f"{s['seconds']:.2f} s")
    peaks = {name: peak_rss_of(run) for name, run in (("text_to_image", runners["text_to_image"]),
                                                      ("inpainting_0.6", runners["inpainting_0.6"]))}
    return {"image_size": list(size), "steps": DEFAULT_STEPS,
            **{name: {key: summary([s[key] for s in samples[name]]) for key in ("seconds", "cpu_seconds")}
               | {"unet_calls": calls[name]} for name in runners},
            "weights": weight_bytes(engine), "peak_rss_bytes": peaks}


def weight_bytes(engine) -> dict:
    """Bytes of distinct parameter storage: text-to-image's pipelines, and those with the edit pipelines too;
    the RSS a second set of edit pipelines adds as it is built."""
    import psutil

    from stable_diffusion_xl.generation.modes import MODES

    text = [engine.base, engine.refiner]
    every_mode = [pipeline for pair in engine.pipelines.values() for pipeline in pair]
    before = psutil.Process().memory_info().rss
    second_set = [pipeline for mode in MODES.values() for pipeline in mode.pipelines(engine.base, engine.refiner)]
    built_bytes = psutil.Process().memory_info().rss - before
    return {"text_to_image": _distinct_bytes(text), "with_edits": _distinct_bytes(every_mode),
            "with_a_second_set": _distinct_bytes([*every_mode, *second_set]),
            "rss_added_building_edit_pipelines": built_bytes}


def _distinct_bytes(pipelines) -> int:
    import torch

    seen = {}
    for pipeline in pipelines:
        for module in pipeline.components.values():
            if isinstance(module, torch.nn.Module):
                for tensor in [*module.parameters(), *module.buffers()]:
                    seen[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
    return sum(seen.values())


def peak_rss_of(run) -> int | None:
    """The process's peak RSS during `run` (Linux: VmHWM, reset first through /proc/self/clear_refs), or None."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    run()
    return high_water_mark(os.getpid())


def edit_lines(ed: dict, results: dict) -> list[tuple]:
    text = ed["text_to_image"]
    text_calls = sum(text["unet_calls"].values())
    w, h = ed["image_size"]
    lines = []
    for name in [*(f"image_to_image_{s}" for s in STRENGTHS), "inpainting_0.6"]:
        edit, (mode, strength) = ed[name], name.rsplit("_", 1)
        calls = edit["unet_calls"]
        lines.append((f"{mode.replace('_', '-')} at strength {strength} against text-to-image, {ed['steps']} steps, "
                      f"{w}×{h}, {edit['seconds']['n']} runs: CPU time per image (wall time in brackets); UNet calls "
                      f"{calls['base']} base + {calls['refiner']} refiner of text-to-image's {text_calls}",
                      f"{seconds(edit['cpu_seconds'])} (wall {edit['seconds']['median']:.2f} s)",
                      f"text-to-image: {seconds(text['cpu_seconds'])} (wall {text['seconds']['median']:.2f} s)",
                      f"{ratio(edit['cpu_seconds'], text['cpu_seconds'], 'edit / text')}; UNet calls "
                      f"{sum(calls.values()) / text_calls:.2f}×"))
    weights, peaks = ed["weights"], ed["peak_rss_bytes"]
    lines.append(("weights held with the edit pipelines (distinct parameter and buffer storage)",
                  mb(weights["with_edits"]), f"text-to-image's pipelines alone: {mb(weights['text_to_image'])}; "
                  f"RSS added building another set: {mb(weights['rss_added_building_edit_pipelines'])}",
                  f"{weights['with_edits'] / weights['text_to_image']:.2f}×"))
    if peaks["text_to_image"] and peaks["inpainting_0.6"]:
        lines.append(("peak RSS of the process during an inpainting at 0.6 (VmHWM)", mb(peaks["inpainting_0.6"]),
                      f"during text-to-image: {mb(peaks['text_to_image'])}",
                      f"{peaks['inpainting_0.6'] / peaks['text_to_image']:.2f}×"))
    return lines
