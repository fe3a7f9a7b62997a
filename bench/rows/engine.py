"""Rows on the Engine in process, demo weights: the three recipes (1), weight load (5), users' models and
prompts (6): LoRA switching, long-prompt encoding, the safety checker's share."""

from __future__ import annotations

import functools
import time

from bench.harness import interleave, log, ratio, seconds, summary, timed
from bench.workload import DEFAULT_STEPS, GUIDANCE, HIGH_NOISE_FRAC, PROMPT, SEED, UPSTREAM_STRENGTH, recipes

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


def work_per_image(bench) -> dict:
    """UNet calls, wall, CPU and UNet seconds per image of the three recipes, interleaved."""
    import numpy as np

    log(f"work per image: ours, raw diffusers and upstream, {DEFAULT_STEPS} steps, {bench.args.runs} runs each")
    meter = UNetMeter(bench.engine)
    runners, size = recipes(bench.engine)
    calls, images = {}, {}

    def sample(name, run) -> dict:
        meter.reset()
        cpu = time.process_time()
        taken = {"seconds": timed(run), "cpu_seconds": time.process_time() - cpu,
                 "unet_seconds": sum(meter.seconds.values())}
        assert meter.calls == calls[name], (name, meter.calls)
        return taken

    try:
        for name, run in runners.items():  # warm-up, and the images for the same-output check
            meter.reset()
            images[name] = np.asarray(run()[0], dtype=np.int16)
            calls[name] = dict(meter.calls)
            log(f"  {name}: {meter.calls['base']} base + {meter.calls['refiner']} refiner UNet calls")
        samples = interleave(runners, bench.args.runs, measure=sample, show=lambda s: f"{s['seconds']:.2f} s")
    finally:
        meter.remove()
    results = {name: {key: summary([s[key] for s in samples[name]]) for key in ("seconds", "cpu_seconds",
                                                                                "unet_seconds")}
               for name in runners}
    for name in runners:
        results[name]["unet_calls"] = calls[name]
    return {
        "image_size": list(size), "steps": DEFAULT_STEPS, "guidance_scale": GUIDANCE, "seed": SEED,
        "high_noise_frac": HIGH_NOISE_FRAC, "upstream_strength": UPSTREAM_STRENGTH, **results,
        "max_pixel_difference_ours_vs_raw_diffusers": int(np.abs(images["ours"] - images["raw_diffusers"]).max()),
    }


def work_per_image_lines(work: dict, results: dict) -> list[tuple]:
    def calls(recipe):
        c = recipe["unet_calls"]
        return f"{c['base'] + c['refiner']} ({c['base']} base + {c['refiner']} refiner)"

    def total(recipe):
        return sum(recipe["unet_calls"].values())

    w, h = work["image_size"]
    ours, up, raw = work["ours"], work["upstream"], work["raw_diffusers"]
    return [
        (f"UNet calls per image, {DEFAULT_STEPS} steps (forward hooks)", calls(ours),
         f"upstream Instill recipe: {calls(up)}", f"{total(up) / total(ours):.2f}× (upstream / ours)"),
        (f"wall time per image, CPU, demo weights {w}×{h}, {ours['seconds']['n']} runs", seconds(ours["seconds"]),
         f"upstream: {seconds(up['seconds'])}", ratio(up["seconds"], ours["seconds"], "upstream / ours")),
        ("CPU time per image (this process; steadier than wall time on a shared machine)",
         seconds(ours["cpu_seconds"]), f"upstream: {seconds(up['cpu_seconds'])}",
         ratio(up["cpu_seconds"], ours["cpu_seconds"], "upstream / ours")),
        ("UNet time per image (inside the hooks)", seconds(ours["unet_seconds"]),
         f"upstream: {seconds(up['unet_seconds'])}",
         ratio(up["unet_seconds"], ours["unet_seconds"], "upstream / ours")),
        ("vs the raw diffusers pipelines running the same recipe: wall / CPU time per image",
         f"{ours['seconds']['median']:.2f} s / {ours['cpu_seconds']['median']:.2f} s",
         f"raw diffusers base → refiner, {calls(raw)}: {raw['seconds']['median']:.2f} s / "
         f"{raw['cpu_seconds']['median']:.2f} s; max pixel difference "
         f"{work['max_pixel_difference_ours_vs_raw_diffusers']}",
         f"{raw['seconds']['median'] / ours['seconds']['median']:.2f}× / "
         f"{raw['cpu_seconds']['median'] / ours['cpu_seconds']['median']:.2f}× (raw / ours)"),
    ]


# ------------------------------------------------------------------------------------------- 5. weight load

def load_times(bench) -> dict:
    from stable_diffusion_xl.generation.engine import Engine

    log("weight load: Engine.load x 3")
    return summary([timed(lambda: Engine.load(bench.weights_root, demo=True)) for _ in range(3)])


def warm_up(bench) -> float:
    """What the replica does after loading unless SDXL_WARM_UP=0."""
    spent = timed(bench.engine.warm_up)
    log(f"  Engine.warm_up(): {spent:.2f} s")
    return spent


def load_lines(load: dict, results: dict) -> list[tuple]:
    warm = (f"; Engine.warm_up() (every aspect ratio, 2 steps): {results['warm_up_seconds']:.2f} s"
            if "warm_up_seconds" in results else "")
    return [(f"weight load: Engine.load, DEMO weights (15 MB), {load['n']} runs", seconds(load),
             f"first load in the process (cold imports): {results['first_load_seconds']:.2f} s{warm}",
             "real weights are ~12 GB")]


# ------------------------------------------------------------------------------ 6. users' models and prompts

def adapter_switching(bench) -> dict:
    """Per-request LoRA switching, interleaved: between two resident adapters; loading one from disk each time
    (a limit of one resident adapter); and reloading the pipelines, what a server without adapters would do."""
    from stable_diffusion_xl.generation.engine import Engine

    log("LoRA adapters: switching per request vs loading them vs reloading the pipelines")
    engine, runs = bench.engine, bench.args.runs * 2
    names = engine.adapters.names[:2]
    one_resident = Engine.load(bench.weights_root, demo=True, max_loras=1)
    for name in names:  # both resident in `engine`
        engine.adapters.use((name,), (1.0,))
    resident, from_disk, reload = [], [], []
    for i in range(runs):
        name = names[i % 2]
        resident.append(timed(functools.partial(engine.adapters.use, (name,), (1.0,))))
        from_disk.append(timed(functools.partial(one_resident.adapters.use, (name,), (1.0,))))
        reload.append(timed(lambda: Engine.load(bench.weights_root, demo=True)))
    engine.adapters.use((), ())
    return {"adapters": list(names), "resident": summary(resident), "from_disk": summary(from_disk),
            "reload_pipelines": summary(reload)}


def adapter_lines(ad: dict, results: dict) -> list[tuple]:
    return [(f"LoRA adapter switched per request (demo adapters, {ad['resident']['n']} runs, alternating two)",
             f"resident: {seconds(ad['resident'], 'ms')}",
             f"loaded from disk each time: {seconds(ad['from_disk'], 'ms')}; reloading the pipelines "
             f"instead: {seconds(ad['reload_pipelines'], 'ms')}",
             ratio(ad["reload_pipelines"], ad["resident"], "reload / resident"))]


LONG_PROMPT = ", ".join(f"a {colour} lantern over the harbour number {i}" for i, colour in
                        enumerate(["amber", "teal", "crimson", "ivory", "cobalt"] * 5))  # about 200 CLIP tokens


def prompt_encoding(bench) -> dict:
    """Seconds per prompt to encode for the base, interleaved: diffusers' encode_prompt (which truncates past 77
    tokens) against ours (encode_prompt for a plain prompt that fits, compel otherwise), short and long."""
    log("prompt encoding: ours against diffusers' encode_prompt")
    engine = bench.engine
    base, timings = engine.base, {}

    def diffusers_encode(prompt):
        return base.encode_prompt(prompt=[prompt], device=base.device, num_images_per_prompt=1,
                                  do_classifier_free_guidance=True)

    cases = {"short": PROMPT, "long": LONG_PROMPT}
    for _ in range(bench.args.runs * 2):
        for name, prompt in cases.items():
            for path, encode in (("diffusers", diffusers_encode),
                                 ("ours", lambda prompt: engine.prompts.encode(base, [prompt], None, True))):
                timings.setdefault(f"{name}_{path}", []).append(timed(functools.partial(encode, prompt)))
    tokens = engine.prompts.token_counts(LONG_PROMPT, "")["prompt"]
    return {"long_prompt_tokens": tokens, **{key: summary(values) for key, values in timings.items()}}


def prompt_lines(pr: dict, results: dict) -> list[tuple]:
    return [
        (f"prompt encoding for the base, short plain prompt ({pr['short_ours']['n']} runs)",
         seconds(pr["short_ours"], "ms"), f"diffusers' encode_prompt: {seconds(pr['short_diffusers'], 'ms')}",
         ratio(pr["short_ours"], pr["short_diffusers"], "ours / diffusers")),
        (f"prompt encoding for the base, {pr['long_prompt_tokens']}-token prompt (compel, nothing truncated)",
         seconds(pr["long_ours"], "ms"),
         f"encode_prompt, truncated to 77 tokens: {seconds(pr['long_diffusers'], 'ms')}",
         ratio(pr["long_ours"], pr["long_diffusers"], "ours / diffusers")),
    ]


def safety_checker_share(bench) -> dict:
    """The safety checker's seconds per image against the rest of the same generations (usage's stages)."""
    from stable_diffusion_xl.generation.engine import Engine
    from stable_diffusion_xl.generation.request import TextToImageRequest

    log("safety checker: its share of a generation")
    engine = Engine.load(bench.weights_root, demo=True, safety_checker=True)
    checker, rest = [], []
    for seed in range(1, bench.args.runs + 1):
        generation = engine.generate([TextToImageRequest(prompt=PROMPT, seed=seed, n=2, steps=DEFAULT_STEPS)])[0]
        checker.append(generation.timings["safety_checker"] / 2)
        rest.append((sum(generation.timings.values()) - generation.timings["safety_checker"]) / 2)
    return {"checker_per_image": summary(checker), "rest_per_image": summary(rest)}


def safety_checker_lines(sc: dict, results: dict) -> list[tuple]:
    return [(f"safety checker per image (demo checker, n=2, {DEFAULT_STEPS} steps, {sc['checker_per_image']['n']} "
             "runs)", seconds(sc["checker_per_image"], "ms"),
             f"the rest of the same generations: {seconds(sc['rest_per_image'])}",
             f"{100 * sc['checker_per_image']['median'] / sc['rest_per_image']['median']:.2f}% of it")]
