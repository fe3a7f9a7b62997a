"""Samplers by the names A1111 and ComfyUI users know, as diffusers schedulers (the mapping the diffusers
docs give), each built from the checkpoint's own scheduler config so that its training schedule is kept.

The base hands off to the refiner at `hand_off_timestep`, by diffusers' rules: the base runs the timesteps
at or above it (`denoising_end`), the refiner those below (`denoising_start`). That partitions the schedule
of a one-call-per-step sampler; a second-order sampler (heun) needs the base to stop on a whole step, see
`_ending_on_a_whole_step`.
"""

from __future__ import annotations

# name -> (diffusers class, settings over the checkpoint's config)
SCHEDULERS = {
    "euler": ("EulerDiscreteScheduler", {}),  # SDXL's own
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "dpm++-2m": ("DPMSolverMultistepScheduler", {}),
    "dpm++-2m-karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "dpm++-2m-sde-karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True,
                                                             "algorithm_type": "sde-dpmsolver++"}),
    "ddim": ("DDIMScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
}
DEFAULT_SCHEDULER = "euler"



def hand_off_timestep(config, high_noise_frac: float) -> int:
    """The timestep where the base hands off: it runs those at or above it, the refiner those below. This is
    the pipelines' own expression (`denoising_end` / `denoising_start`), so the two always agree."""
    steps = config["num_train_timesteps"]
    return int(round(steps - high_noise_frac * steps))


def unet_calls(name: str, config, steps: int) -> int:
    """UNet calls one batch makes: base and refiner together run the sampler's schedule once (2 steps - 1
    for heun), and so does the base alone."""
    scheduler = make_scheduler(name, config)
    scheduler.set_timesteps(steps)
    return len(scheduler.timesteps)


def make_scheduler(name: str, checkpoint_config, *, denoising_end: float | None = None):
    """A fresh scheduler: they keep per-call state, so a batch never shares one with another.

    `denoising_end` is the base's: the high_noise_frac it hands off at, None when it finishes alone.
    """
    import diffusers

    class_name, overrides = SCHEDULERS[name]
    scheduler = getattr(diffusers, class_name).from_config(checkpoint_config, **overrides)
    if denoising_end is not None and scheduler.order == 2:
        _ending_on_a_whole_step(scheduler, denoising_end)
    return scheduler


def _ending_on_a_whole_step(scheduler, denoising_end: float) -> None:
    """Make a second-order base stop after the corrector of a whole step, where the refiner picks up.

    Heun's timesteps are t0, t1, t1, ..., tN-1, tN-1: the first t_k of a pair is the corrector of the
    step ending at t_k, the second the predictor of the step starting there. diffusers' base keeps every
    timestep >= the cutoff, so it ends on a predictor (its latents an Euler estimate one step further
    down), while the refiner (img2img `get_timesteps`) starts on that same predictor: the step would run
    twice, and the refiner would take the latents for noisier than they are. Without that predictor the
    base ends on a whole step, exactly where the refiner starts: together they run the timesteps of the
    base alone, once each (79 UNet calls for 40 steps, 62 + 17 at 0.8).
    """
    set_timesteps = scheduler.set_timesteps
    cutoff = hand_off_timestep(scheduler.config, denoising_end)

    def set_timesteps_of_the_base(*args, **kwargs):
        set_timesteps(*args, **kwargs)
        kept = int((scheduler.timesteps >= cutoff).sum())
        if kept % 2:  # t0 and whole pairs: the last kept timestep is a predictor
            scheduler.timesteps = scheduler.timesteps[: kept - 1]

    scheduler.set_timesteps = set_timesteps_of_the_base


def both_experts_step(name: str, config, steps: int, high_noise_frac: float) -> bool:
    """Whether base and refiner each get at least one UNet call when they share `steps` of sampler `name` at
    `high_noise_frac`. The split is by timestep, as the pipelines make it, so it is computed from the sampler's
    own schedule (a Karras schedule gives the base 25 of 40 steps at 0.8, not 32). Few steps leave one expert
    none (1 step of euler is the timestep 1, below any hand-off): the base then makes the image alone."""
    alone = make_scheduler(name, config)
    alone.set_timesteps(steps)
    base = make_scheduler(name, config, denoising_end=high_noise_frac)
    base.set_timesteps(steps)
    base_calls = int((base.timesteps >= hand_off_timestep(config, high_noise_frac)).sum())
    return 0 < base_calls < len(alone.timesteps)


def expert_calls(name: str, config, steps: int, strength: float, high_noise_frac: float | None) -> tuple[int, int]:
    """UNet calls of the base and of the refiner at `strength` (1 for text-to-image; high_noise_frac None: no
    refiner).

    An edit runs the last `strength` of the sampler's schedule, as diffusers' img2img `get_timesteps` cuts it
    (`int(steps * strength)` steps), so 40 steps at 0.5 are 20 calls. With the refiner, the base runs those at or
    above the hand-off and the refiner the rest, which is the refiner's part of text-to-image: where the cut
    starts below the hand-off, the base gets none (the refiner then edits alone, from `strength`). (0, 0): the
    strength leaves no whole step to run."""
    alone = make_scheduler(name, config)
    alone.set_timesteps(steps)
    skipped = (steps - min(int(steps * strength), steps)) * alone.order
    total = len(alone.timesteps[skipped:])
    if high_noise_frac is None or total == 0:
        return total, 0
    base = make_scheduler(name, config, denoising_end=high_noise_frac)
    base.set_timesteps(steps)
    base_calls = int((base.timesteps[skipped:] >= hand_off_timestep(config, high_noise_frac)).sum())
    return base_calls, total - base_calls
