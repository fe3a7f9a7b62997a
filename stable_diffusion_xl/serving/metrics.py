"""Ray Serve custom metrics, exported beside Ray Serve's own (Prometheus names get a `ray_` prefix).

Label values come from fixed sets (aspect ratios, stages, dialects, known field names, exception
classes), never from what a caller sent.
"""

from __future__ import annotations

from ray.serve.metrics import Counter, Histogram

from ..fields import InvalidRequest
from ..generation.results import Generation

STAGE_BOUNDARIES = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120]
BATCH_BOUNDARIES = [1, 2, 3, 4, 6, 8, 12, 16, 32, 64]


class ReplicaMetrics:
    def __init__(self):
        self.images = Counter("sdxl_images_generated", description="Images returned.",
                              tag_keys=("api", "aspect_ratio"))
        self.stage_seconds = Histogram(
            "sdxl_stage_seconds", description="Seconds per request in each stage of generation.",
            boundaries=STAGE_BOUNDARIES, tag_keys=("stage",),
        )
        self.nan_redecodes = Counter("sdxl_nan_redecodes",
                                     description="Images decoded to NaN and decoded again in fp32.")
        self.filtered = Counter("sdxl_filtered_images", description="Images the safety checker flagged, returned "
                                "black as content_filtered.", tag_keys=("api",))
        self.oom_splits = Counter("sdxl_oom_splits", description="Batches split in two after running out of memory.")
        self.rejected = Counter("sdxl_rejected_inputs", description="Calls rejected for a bad field.",
                                tag_keys=("api", "field"))
        self.cancelled = Counter("sdxl_cancelled_calls", description="Calls abandoned by their caller, stopped at "
                                 "the next denoising step.", tag_keys=("api",))
        self.failures = Counter("sdxl_failed_calls", description="Calls that failed in generation.",
                                tag_keys=("api", "error"))
        self.run_calls = Histogram("sdxl_run_calls", description="Calls one engine run made together.",
                                   boundaries=BATCH_BOUNDARIES)
        self.run_images = Histogram("sdxl_run_images", description="Images one engine run made.",
                                    boundaries=BATCH_BOUNDARIES)
        self.queue_seconds = Histogram("sdxl_queue_seconds", description="Seconds a call waited for its engine run "
                                       "to start.", boundaries=STAGE_BOUNDARIES)

    def record(self, api: str, aspect_ratios: list[str], generations: list[Generation]) -> None:
        for aspect_ratio, generation in zip(aspect_ratios, generations):
            self.images.inc(len(generation.images), tags={"api": api, "aspect_ratio": aspect_ratio})
            for stage, seconds in generation.timings.items():
                self.stage_seconds.observe(seconds, tags={"stage": stage})
            if any(generation.filtered):
                self.filtered.inc(sum(generation.filtered), tags={"api": api})
            if generation.events["nan_redecodes"]:
                self.nan_redecodes.inc(generation.events["nan_redecodes"])
            if generation.events["oom_splits"]:
                self.oom_splits.inc(generation.events["oom_splits"])

    def run(self, images: int, waits: list[float]) -> None:
        """An engine run of len(waits) calls, each having waited that many seconds for it."""
        self.run_calls.observe(len(waits))
        self.run_images.observe(images)
        for seconds in waits:
            self.queue_seconds.observe(seconds)

    def reject(self, api: str, error: InvalidRequest) -> None:
        self.rejected.inc(tags={"api": api, "field": error.label})

    def cancel(self, api: str) -> None:
        self.cancelled.inc(tags={"api": api})

    def fail(self, api: str, error: Exception) -> None:
        self.failures.inc(tags={"api": api, "error": type(error).__name__})
