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
    limits: Limits = field(default_factory=Limits)

    @classmethod
    def from_env(cls, env=os.environ) -> Settings:
        def number(name: str, default: int) -> int:
            return int(env.get(name) or default)

        return cls(
            weights_dir=Path(env.get("SDXL_WEIGHTS_DIR") or DEFAULT_WEIGHTS_DIR),
            demo_weights=env.get("SDXL_DEMO_WEIGHTS", "").lower() in ("1", "true", "yes"),
            max_batch_size=number("SDXL_MAX_BATCH_SIZE", cls.max_batch_size),
            jpeg_quality=number("SDXL_JPEG_QUALITY", cls.jpeg_quality),
            limits=Limits(
                max_n=number("SDXL_MAX_N", Limits.max_n),
                max_images_per_call=number("SDXL_MAX_IMAGES_PER_CALL", Limits.max_images_per_call),
            ),
        )
