"""Deployment settings, read once from the environment (documented in README)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .encoding import DEFAULT_JPEG_QUALITY
from .request import Limits
from .weights import DEFAULT_WEIGHTS_DIR


@dataclass(frozen=True)
class Settings:
    weights_dir: Path = DEFAULT_WEIGHTS_DIR
    demo_weights: bool = False
    max_batch_size: int = 4
    jpeg_quality: int = DEFAULT_JPEG_QUALITY
    warm_up: bool = True
    limits: Limits = field(default_factory=Limits)
    # Ray Serve: a replica makes one image batch at a time, so it holds one request running and one
    # ready; the rest wait in Serve's queue, where autoscaling sees them.
    max_ongoing_requests: int = 2
    max_queued_requests: int = 100
    target_ongoing_requests: int = 1
    upscale_delay_s: int = 30  # the SDK's default waits 10 minutes before adding a replica

    @classmethod
    def from_env(cls, env=os.environ) -> Settings:
        def number(name: str, default: int) -> int:
            return int(env.get(name) or default)

        def flag(name: str, default: bool) -> bool:
            return env[name].lower() in ("1", "true", "yes") if env.get(name) else default

        return cls(
            weights_dir=Path(env.get("SDXL_WEIGHTS_DIR") or DEFAULT_WEIGHTS_DIR),
            demo_weights=flag("SDXL_DEMO_WEIGHTS", False),
            warm_up=flag("SDXL_WARM_UP", cls.warm_up),
            max_batch_size=number("SDXL_MAX_BATCH_SIZE", cls.max_batch_size),
            jpeg_quality=number("SDXL_JPEG_QUALITY", cls.jpeg_quality),
            limits=Limits(
                max_n=number("SDXL_MAX_N", Limits.max_n),
                max_images_per_call=number("SDXL_MAX_IMAGES_PER_CALL", Limits.max_images_per_call),
            ),
            max_ongoing_requests=number("SDXL_MAX_ONGOING_REQUESTS", cls.max_ongoing_requests),
            max_queued_requests=number("SDXL_MAX_QUEUED_REQUESTS", cls.max_queued_requests),
            target_ongoing_requests=number("SDXL_TARGET_ONGOING_REQUESTS", cls.target_ongoing_requests),
            upscale_delay_s=number("SDXL_UPSCALE_DELAY_S", cls.upscale_delay_s),
        )
