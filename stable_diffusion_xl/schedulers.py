"""Samplers by the names A1111 and ComfyUI users know, as diffusers schedulers (the mapping the diffusers
docs give), each built from the checkpoint's own scheduler config so that its training schedule is kept."""

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


def make_scheduler(name: str, checkpoint_config):
    """A fresh scheduler: they keep per-call state, so a batch never shares one with another."""
    import diffusers

    class_name, overrides = SCHEDULERS[name]
    return getattr(diffusers, class_name).from_config(checkpoint_config, **overrides)
