"""Ray Serve custom metrics, exported beside Ray Serve's own (Prometheus names get a `ray_` prefix)."""

from __future__ import annotations

from ray.serve.metrics import Counter, Histogram

from .engine import Generation
from .request import InvalidRequest

STAGE_BOUNDARIES = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120]


class ReplicaMetrics:
    def __init__(self):
        self.images = Counter("sdxl_images_generated", description="Images returned.", tag_keys=("aspect_ratio",))
        self.stage_seconds = Histogram(
            "sdxl_stage_seconds", description="Seconds per request in each stage of generation.",
            boundaries=STAGE_BOUNDARIES, tag_keys=("stage",),
        )
        self.nan_redecodes = Counter("sdxl_nan_redecodes", description="Images decoded to NaN and decoded again in fp32.")
        self.oom_splits = Counter("sdxl_oom_splits", description="Batches split in two after running out of memory.")
        self.rejected = Counter("sdxl_rejected_inputs", description="Calls rejected for a bad field.",
                                tag_keys=("field",))
        self.failures = Counter("sdxl_failed_calls", description="Calls that failed in generation.",
                                tag_keys=("error",))

    def record(self, aspect_ratios: list[str], generations: list[Generation]) -> None:
        for aspect_ratio, generation in zip(aspect_ratios, generations):
            self.images.inc(len(generation.images), tags={"aspect_ratio": aspect_ratio})
            for stage, seconds in generation.timings.items():
                self.stage_seconds.observe(seconds, tags={"stage": stage})
            if generation.events["nan_redecodes"]:
                self.nan_redecodes.inc(generation.events["nan_redecodes"])
            if generation.events["oom_splits"]:
                self.oom_splits.inc(generation.events["oom_splits"])

    def reject(self, error: InvalidRequest) -> None:
        # "task_inputs[2].parameter.n" -> "n": one time series per field, not per position
        self.rejected.inc(tags={"field": error.field.rsplit(".", 1)[-1]})

    def fail(self, error: Exception) -> None:
        self.failures.inc(tags={"error": type(error).__name__})
