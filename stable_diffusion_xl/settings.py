"""Deployment settings and policy: SDXL_* environment variables, each checked when it is read.

Each setting is declared once, with its variable, default, range and meaning; `from_env` reads and
checks them all, and README's settings table is written from the same declarations. A bad value
fails the start with a message naming the variable, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .encoding import DEFAULT_JPEG_QUALITY
from .loras import is_plain_name
from .request import InvalidRequest, TextToImageRequest, excerpt
from .schedulers import SDXL_SCHEDULER_CONFIG, hand_off_problem
from .weights import DEFAULT_WEIGHTS_DIR

DEFAULT_MAX_BATCH_SIZE = 4
DEFAULT_MAX_LORAS = 8
FLAG_VALUES = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


class SettingError(ValueError):
    """An SDXL_* variable holds a value the deployment cannot run with."""


def setting(variable: str, default: Any, meaning: str, *, minimum: int | None = None, maximum: int | None = None,
            shown: str | None = None, allowed: str | None = None, secret: bool = False):
    """A dataclass field read from `variable`; `shown` is the default and `allowed` the values as README writes
    them, where the type does not say. A secret is left out of the settings' repr, so that no log line prints it."""
    return field(default=default, repr=not secret, metadata={"variable": variable, "meaning": meaning,
                                                             "minimum": minimum, "maximum": maximum, "shown": shown,
                                                             "allowed": allowed})


@dataclass(frozen=True)
class Limits:
    """What one call may ask of this deployment; Instill's schema sets no maximum for n."""

    max_n: int = setting("SDXL_MAX_N", 4, "largest `n` per task input", minimum=1, maximum=64)
    max_images_per_call: int = setting("SDXL_MAX_IMAGES_PER_CALL", 8, "images per call, over all task inputs",
                                       minimum=1, maximum=256)
    max_body_bytes: int = setting("SDXL_MAX_BODY_BYTES", 1 << 20, "largest HTTP body or gRPC CallRequest, in bytes; "
                                  "a larger one is refused (HTTP 413) before it is read", minimum=1024,
                                  maximum=64 << 20)
    body_timeout_s: int = setting("SDXL_BODY_TIMEOUT_S", 10, "seconds an HTTP body may take to arrive; a slower one "
                                  "is refused (HTTP 408), so stalled uploads cannot hold a replica", minimum=1,
                                  maximum=600)
    max_loras: int = setting("SDXL_MAX_LORAS", DEFAULT_MAX_LORAS, "LoRA adapters a replica keeps loaded (the least "
                             "recently used is unloaded past it); also the most one request may stack", minimum=1,
                             maximum=64)
    # Not settings: found when the replica starts, the adapters in its LoRA folder and its weights' scheduler
    # config (base and refiner split a sampler's steps by its timesteps).
    lora_names: tuple[str, ...] = ()
    scheduler_config: Mapping[str, Any] = field(default_factory=lambda: SDXL_SCHEDULER_CONFIG)

    def check(self, request: TextToImageRequest, images_before: int, where: str) -> None:
        """One input against the deployment, with the images of the call before it; errors name the input's own
        fields (`where` is its parameters' prefix: "parameter." or "")."""
        n = request.n
        if n > self.max_n:
            raise InvalidRequest(f"{where}n", f"must be from 1 to {self.max_n} on this deployment, got {excerpt(n)}")
        if images_before + n > self.max_images_per_call:
            raise InvalidRequest(f"{where}n", f"takes the call to {excerpt(images_before + n)} images; this deployment "
                                              f"makes at most {self.max_images_per_call} per call")
        if len(request.lora) > self.max_loras:
            raise InvalidRequest(f"{where}lora", f"stacks {len(request.lora)} adapters; this deployment keeps at most "
                                                 f"{self.max_loras} loaded")
        if request.refiner:
            problem = hand_off_problem(request.scheduler, self.scheduler_config, request.steps, request.high_noise_frac)
            if problem:
                raise InvalidRequest(f"{where}high-noise-frac", problem)
        for name in request.lora:
            if not is_plain_name(name) or name not in self.lora_names:
                shown = ", ".join(self.lora_names[:20]) + (", ..." if len(self.lora_names) > 20 else "")
                raise InvalidRequest(f"{where}lora", f"no adapter named {excerpt(name)} on this deployment; "
                                                     f"available: {shown or 'none'}")


@dataclass(frozen=True)
class Settings:
    weights_dir: Path = setting("SDXL_WEIGHTS_DIR", DEFAULT_WEIGHTS_DIR, "folder with the fetched weights",
                                shown="`weights/` beside model.py")
    lora_dir: Path | None = setting("SDXL_LORA_DIR", None, "folder of LoRA adapters, `<name>.safetensors` each "
                                    "(read at start-up)", shown="`loras/` beside the models")
    demo_weights: bool = setting("SDXL_DEMO_WEIGHTS", False, "`1` loads `weights/demo` (noise); never a silent "
                                 "fallback")
    max_batch_size: int = setting("SDXL_MAX_BATCH_SIZE", DEFAULT_MAX_BATCH_SIZE, "images per UNet batch (an "
                                  "out-of-memory batch is split and retried)", minimum=1, maximum=64)
    compile: bool = setting("SDXL_COMPILE", False, "`1` compiles both UNets and the VAE decoder (torch.compile) during "
                            "the warm-up, which then takes minutes; no LoRA adapters")
    safety_checker: bool = setting("SDXL_SAFETY_CHECKER", False, "filter unsafe images: a flagged image comes back "
                                   "black as `content_filtered`; needs `fetch-weights --safety-checker`")
    safety_checker_dir: Path | None = setting("SDXL_SAFETY_CHECKER_DIR", None, "folder of the safety checker",
                                              shown="`stable-diffusion-safety-checker/` beside the models")
    jpeg_quality: int = setting("SDXL_JPEG_QUALITY", DEFAULT_JPEG_QUALITY, "JPEG quality of the returned images",
                                minimum=1, maximum=100)
    warm_up: bool = setting("SDXL_WARM_UP", True, "one tiny generation per aspect ratio before the replica "
                            "reports ready")
    api_key: str | None = setting("SDXL_API_KEY", None, "the key every generating HTTP route requires as "
                                  "`Authorization: Bearer <key>`; the GET ping and gRPC stay open", shown="none: open",
                                  allowed="printable ASCII, no spaces", secret=True)
    api_key_file: Path | None = setting("SDXL_API_KEY_FILE", None, "a file holding that key instead (a mounted "
                                        "secret); surrounding whitespace is ignored", shown="none", allowed="a file")
    limits: Limits = field(default_factory=Limits, metadata={"group": True})
    # Ray Serve: a replica makes one image batch at a time, so it holds one request running and one
    # ready; the rest wait in Serve's queue, where autoscaling sees them.
    max_ongoing_requests: int = setting("SDXL_MAX_ONGOING_REQUESTS", 2, "calls a replica holds: one generating, "
                                        "one ready to start", minimum=1, maximum=1000)
    max_queued_requests: int = setting("SDXL_MAX_QUEUED_REQUESTS", 100, "calls waiting in Serve's queue before new "
                                       "ones are refused as busy", minimum=1, maximum=1_000_000)
    target_ongoing_requests: int = setting("SDXL_TARGET_ONGOING_REQUESTS", 1, "autoscaling adds a replica when "
                                           "replicas average more than this", minimum=1, maximum=1000)
    upscale_delay_s: int = setting("SDXL_UPSCALE_DELAY_S", 30, "seconds of load before a replica is added (the "
                                   "SDK's default is 600)", minimum=0, maximum=86400)
    downscale_delay_s: int = setting("SDXL_DOWNSCALE_DELAY_S", 1800, "seconds of lower load before a replica is "
                                     "removed, down to RAY_NUM_OF_MIN_REPLICAS (0 unless set)", minimum=0,
                                     maximum=86400)

    def __post_init__(self):
        if self.compile and not self.warm_up:
            raise SettingError("SDXL_COMPILE=1 needs SDXL_WARM_UP=1: the compiler runs during the warm-up, or else "
                               "during the first requests")

    @classmethod
    def from_env(cls, env=os.environ) -> Settings:
        """Read every setting; an unset or empty variable takes the default."""
        return _read(cls, env)

    def http_api_key(self) -> str | None:
        """The key HTTP callers must send, from SDXL_API_KEY or the file SDXL_API_KEY_FILE names; None when
        HTTP is open. Errors name the variable and the file, never the key."""
        if self.api_key_file is None:
            key, variable = self.api_key, "SDXL_API_KEY"
        elif self.api_key is not None:
            raise SettingError("SDXL_API_KEY and SDXL_API_KEY_FILE are both set: set one")
        else:
            variable = f"SDXL_API_KEY_FILE={excerpt(str(self.api_key_file))}"
            try:
                key = self.api_key_file.read_text().strip()
            except (OSError, UnicodeDecodeError) as error:
                raise SettingError(f"{variable}: cannot be read ({type(error).__name__})") from None
        if key is not None and not (key and key.isascii() and key.isprintable() and " " not in key):
            raise SettingError(f"{variable}: the key must be printable ASCII without spaces (it travels in a header)")
        return key


def _read(cls, env):
    values = {}
    for spec in dataclasses.fields(cls):
        variable = spec.metadata.get("variable")
        if spec.metadata.get("group"):  # a group of settings of its own, such as Limits
            values[spec.name] = _read(globals()[spec.type], env)
        elif variable and env.get(variable):
            values[spec.name] = _parse(spec, env[variable])
    return cls(**values)


def _parse(spec: dataclasses.Field, text: str) -> Any:
    variable, minimum, maximum = (spec.metadata[key] for key in ("variable", "minimum", "maximum"))
    if spec.type == "bool":
        if text.strip().lower() not in FLAG_VALUES:
            raise SettingError(f"{variable}={excerpt(text)}: must be one of {', '.join(FLAG_VALUES)}")
        return FLAG_VALUES[text.strip().lower()]
    if spec.type == "int":
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not minimum <= value <= maximum:
            raise SettingError(f"{variable}={excerpt(text)}: must be an integer from {minimum} to {maximum}")
        return value
    if spec.type == "str | None":
        return text
    return Path(text)


def settings(cls=Settings) -> list[dataclasses.Field]:
    """Every setting's declaration, in README's order."""
    found = []
    for spec in dataclasses.fields(cls):
        if spec.metadata.get("group"):
            found += settings(globals()[spec.type])
        elif "variable" in spec.metadata:
            found.append(spec)
    return found
