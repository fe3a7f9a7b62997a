"""What a generation gives its caller and shares with it while it runs: the images with their seeds and timings
(`Generation`), the steps done and a way to cancel (`Progress`), and the errors it may end in. Without torch, so
that the command line's help, the settings and the transport import none."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

from PIL import Image

STAGES = ("text_encoders", "base", "refiner", "vae_decode")
DEFAULT_MAX_BATCH_SIZE = 4  # images per UNet batch


@dataclass
class Generation:
    """The images of one request, the seed each was made with, where the time went (seconds), and
    what had to be recovered on the way (NaN re-decodes, out-of-memory batch splits)."""

    images: list[Image.Image]
    seeds: list[int]
    width: int
    height: int
    timings: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    events: Counter = field(default_factory=Counter)
    # Per image: the safety checker flagged it, and it was replaced by a black image of the same size.
    filtered: list[bool] = field(default_factory=list)
    safety_checked: bool = False  # a safety checker looked at the images (otherwise none is flagged)
    # CLIP tokens of the prompt and of the negative prompt, weighting syntax removed: {"prompt": 213, ...}
    tokens: dict[str, int] = field(default_factory=dict)
    # The refiner ran: asked for, and the steps gave it one (with too few, the base made the images alone).
    refined: bool = False
    # How many calls' images shared a UNet batch with these (1: this call's own alone).
    batch_calls: int = 1


class OutOfMemory(RuntimeError):
    """Even one image does not fit. Instill Core reports "failed to allocate memory" as out of memory."""


class NaNImage(RuntimeError):
    """An image decoded to NaN even in fp32: its latents are broken, and a black image is no answer."""


class Cancelled(RuntimeError):
    """The caller cancelled: the generation stopped at the next denoising step."""


class Progress:
    """What a caller shares with its generation: the denoising steps done so far (one per UNet batch call)
    out of the `total` planned, the stage running them, and `cancel()`, which stops the caller's images at the
    end of the step under way (the engine follows its batches through SharedProgress). Read from other threads,
    to report progress while the images are made."""

    def __init__(self):
        self.steps = 0
        self.total = 0  # planned when the generation starts (an out-of-memory split adds steps)
        self.stage = "waiting"  # then "base" and "refiner", batch by batch
        self._stop = threading.Event()
        self._cancelled_at_step: int | None = None

    def cancel(self) -> None:
        if not self._stop.is_set():
            self._cancelled_at_step = self.steps
            self._stop.set()

    @property
    def cancelled(self) -> bool:
        return self._stop.is_set()

    def stop_if_cancelled(self) -> None:
        if self.cancelled:
            raise Cancelled(f"cancelled at step {self._cancelled_at_step}; stopped after step {self.steps}")

    def count_step(self) -> None:
        """A denoising step of this caller's images ended: it counts, unless it began after the caller cancelled
        (its batch goes on for other callers' images; this caller's are dropped)."""
        if not self.cancelled or self.steps == self._cancelled_at_step:
            self.steps += 1


class SharedProgress:
    """The progress of a UNet batch that several callers' images share: each step counts for every one of them,
    and the batch stops at the end of a step only once all of them have cancelled."""

    def __init__(self, progresses: list[Progress]):
        self.progresses = progresses

    @property
    def stage(self) -> str:
        return self.progresses[0].stage

    @stage.setter
    def stage(self, stage: str) -> None:
        for progress in self.progresses:
            progress.stage = stage

    @property
    def cancelled(self) -> bool:
        return all(progress.cancelled for progress in self.progresses)

    def stop_if_cancelled(self) -> None:
        if self.cancelled:
            self.progresses[0].stop_if_cancelled()

    def on_step_end(self, pipeline, step: int, timestep, tensors: dict) -> dict:
        """diffusers' step-end callback: count the step for each caller, and interrupt the pipeline once all have
        cancelled."""
        for progress in self.progresses:
            progress.count_step()
        if self.cancelled:
            pipeline._interrupt = True  # diffusers' way to skip the remaining steps of a pipeline call
        return {}
