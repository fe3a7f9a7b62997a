"""The deployment's settings: its SDXL_* environment variables (serving/environment.py declares and reads them)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..fields import FLAG, FOLDER, INTEGER, TEXT, declare, excerpt
from ..generation.compile import COMPILE_MODES, DEFAULT_COMPILE_MODE
from ..generation.quantize import METHODS as QUANTIZE_METHODS
from ..generation.results import DEFAULT_MAX_BATCH_SIZE
from ..weights.layout import DEFAULT_WEIGHTS_DIR
from .encoding import DEFAULT_JPEG_QUALITY
from .environment import SettingError, read
from .limits import Limits


@dataclass(frozen=True)
class Settings:
    weights_dir: Path = declare(FOLDER, DEFAULT_WEIGHTS_DIR, "folder with the fetched weights",
                                variable="SDXL_WEIGHTS_DIR", shown="`weights/` beside model.py")
    lora_dir: Path | None = declare(FOLDER, None, "folder of LoRA adapters, `<name>.safetensors` each (listed at "
                                    "start-up, again when a request names one not seen yet); shared storage on several "
                                    "nodes", variable="SDXL_LORA_DIR", shown="`loras/` beside the models")
    demo_weights: bool = declare(FLAG, False, "`1` loads `weights/demo` (noise); never a silent fallback",
                                 variable="SDXL_DEMO_WEIGHTS")
    device: str | None = declare(TEXT, None, "the device replicas run on, whatever Ray gave them; unset, a replica "
                                 "runs on the GPU Ray gives it (and refuses to start if torch cannot use it), else on "
                                 "the CPU", variable="SDXL_DEVICE", shown="Ray's choice", choices=("cpu", "cuda"))
    max_batch_size: int = declare(INTEGER, DEFAULT_MAX_BATCH_SIZE, "images per UNet batch (an out-of-memory batch is "
                                  "split and retried)", variable="SDXL_MAX_BATCH_SIZE", minimum=1, maximum=64)
    batch_calls: bool = declare(FLAG, True, "`1` joins the calls that arrive while the engine works into its next "
                                "run, up to SDXL_MAX_BATCH_SIZE calls, their compatible images in shared UNet batches; "
                                "each caller keeps its own images, progress, cancel and errors. `0`: each call runs "
                                "alone", variable="SDXL_BATCH_CALLS")
    compile: bool = declare(FLAG, False, "`1` compiles the UNets' transformer blocks (torch.compile) during the "
                            "warm-up, which then takes minutes unless SDXL_COMPILE_CACHE holds them; no LoRA adapters",
                            variable="SDXL_COMPILE")
    compile_mode: str = declare(TEXT, DEFAULT_COMPILE_MODE, "inductor's mode with SDXL_COMPILE=1: the max-autotune "
                                "modes benchmark kernels for every graph, minutes more at the first start; "
                                "`max-autotune` also records CUDA graphs per shape and worker thread (memory)",
                                variable="SDXL_COMPILE_MODE", choices=COMPILE_MODES)
    compile_cache: Path | None = declare(FOLDER, None, "folder of compiled artifacts with SDXL_COMPILE=1: a replica "
                                         "loads the entry made for its torch, GPU and networks instead of compiling, "
                                         "or saves one after its warm-up (`compile-cache` command)",
                                         variable="SDXL_COMPILE_CACHE", shown="`compile-cache/` beside the models")
    quantize: str | None = declare(TEXT, None, "`fp8` runs the UNets' transformer layers on the fp8 tensor cores "
                                   "(torchao); images differ slightly from fp16's; needs a GPU of compute capability "
                                   "8.9 or newer, else the replica refuses to start", variable="SDXL_QUANTIZE",
                                   shown="none: fp16", choices=QUANTIZE_METHODS)
    safety_checker: bool = declare(FLAG, False, "filter unsafe images: a flagged image comes back black as "
                                   "`content_filtered`; needs `fetch-weights --safety-checker`",
                                   variable="SDXL_SAFETY_CHECKER")
    safety_checker_dir: Path | None = declare(FOLDER, None, "folder of the safety checker",
                                              variable="SDXL_SAFETY_CHECKER_DIR",
                                              shown="`stable-diffusion-safety-checker/` beside the models")
    jpeg_quality: int = declare(INTEGER, DEFAULT_JPEG_QUALITY, "JPEG quality of the returned images",
                                variable="SDXL_JPEG_QUALITY", minimum=1, maximum=100)
    warm_up: bool = declare(FLAG, True, "one tiny generation per aspect ratio before the replica reports ready",
                            variable="SDXL_WARM_UP")
    api_key: str | None = declare(TEXT, None, "the key every generating HTTP route and gRPC call requires as "
                                  "`Authorization: Bearer <key>` (gRPC: `authorization` metadata); the GET ping stays "
                                  "open", variable="SDXL_API_KEY", shown="none: open",
                                  allowed="printable ASCII, no spaces", secret=True)
    api_key_file: Path | None = declare(FOLDER, None, "a file holding that key instead (a mounted secret); surrounding "
                                        "whitespace is ignored", variable="SDXL_API_KEY_FILE", shown="none",
                                        allowed="a file")
    training: bool = declare(FLAG, False, "`1` serves `POST /v1/trainings`: LoRA trainings from photos (and the page's "
                             "Train panel), each a Ray task beside the replicas; off, those routes answer 404",
                             variable="SDXL_TRAINING")
    train_gpus: int = declare(INTEGER, 1, "GPUs each training asks Ray for; a training waits, queued, until they are "
                              "free; a cluster without GPUs trains on a CPU", variable="SDXL_TRAIN_GPUS", minimum=0,
                              maximum=16)
    max_trainings: int = declare(INTEGER, 4, "trainings queued and running at once on this application; another is "
                                 "refused (HTTP 429 with Retry-After) until one ends", variable="SDXL_MAX_TRAININGS",
                                 minimum=1, maximum=1000)
    train_overwrite: bool = declare(FLAG, False, "`1` lets a training over HTTP with `overwrite=true` replace an "
                                    "adapter that a training over HTTP made; adapters put in the folder otherwise are "
                                    "never replaced over HTTP", variable="SDXL_TRAIN_OVERWRITE")
    limits: Limits = field(default_factory=Limits, metadata={"group": Limits})
    # Ray Serve: a replica makes one engine run at a time, of up to SDXL_MAX_BATCH_SIZE calls (SDXL_BATCH_CALLS), so
    # it holds a full run generating and the next one gathering; the rest wait in Serve's queue, where autoscaling
    # sees them and from which Serve refuses them as busy.
    max_ongoing_requests: int = declare(INTEGER, 2 * DEFAULT_MAX_BATCH_SIZE, "calls a replica holds: a run of "
                                        "SDXL_MAX_BATCH_SIZE calls generating and the next gathering (set twice "
                                        "SDXL_MAX_BATCH_SIZE)", variable="SDXL_MAX_ONGOING_REQUESTS", minimum=1,
                                        maximum=1000)
    max_queued_requests: int = declare(INTEGER, 100, "calls waiting in Serve's queue before new ones are refused as "
                                       "busy", variable="SDXL_MAX_QUEUED_REQUESTS", minimum=1, maximum=1_000_000)
    target_ongoing_requests: int = declare(INTEGER, 1, "autoscaling adds a replica when replicas average more than "
                                           "this", variable="SDXL_TARGET_ONGOING_REQUESTS", minimum=1, maximum=1000)
    upscale_delay_s: int = declare(INTEGER, 30, "seconds of load before a replica is added (the SDK's default is 600)",
                                   variable="SDXL_UPSCALE_DELAY_S", minimum=0, maximum=86400)
    downscale_delay_s: int = declare(INTEGER, 1800, "seconds of lower load before a replica is removed, down to "
                                     "RAY_NUM_OF_MIN_REPLICAS (Core: 1; elsewhere 0 unless set)",
                                     variable="SDXL_DOWNSCALE_DELAY_S", minimum=0, maximum=86400)

    def __post_init__(self):
        if self.compile and not self.warm_up:
            raise SettingError("SDXL_COMPILE=1 needs SDXL_WARM_UP=1: the compiler runs during the warm-up, or else "
                               "during the first requests")

    @classmethod
    def from_env(cls, env=os.environ) -> Settings:
        """Read every setting; an unset or empty variable takes the default."""
        return read(cls, env)

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
