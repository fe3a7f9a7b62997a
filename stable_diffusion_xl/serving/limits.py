"""What one call may ask of this deployment: checked for every request, after its own fields."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ..fields import INTEGER, InvalidRequest, declare, excerpt
from ..generation.adapters import DEFAULT_MAX_LORAS
from ..generation.modes import PICTURES
from ..generation.pictures import DEFAULT_MAX_UPLOAD_MB, DEFAULT_MAX_UPLOAD_MEGAPIXELS, UploadLimits
from ..generation.request import TextToImageRequest
from ..weights.lora_files import LoraFolder, is_plain_name

SLOW_BODY_S = 1.0  # a body still arriving after this long holds a call slot as a slow one (SlowBodies)


class SlowBodies:
    """How many HTTP bodies a replica lets arrive slowly at once: its call slots (Serve's max_ongoing_requests) less
    the `kept` ones, which stay for calls whose bodies arrive at once (a run of calls and the next gathering), and
    one at least. Without it two trickling uploads held both slots of a replica until their deadlines, and every
    generation waited behind them. One asyncio loop counts them: no lock."""

    def __init__(self, call_slots: int, kept: int = 1):
        self.capacity, self.arriving = max(1, call_slots - kept), 0

    @contextmanager
    def admit(self, retry_after_s: int) -> Iterator[None]:
        if self.arriving >= self.capacity:
            raise InvalidRequest("body", f"is arriving slowly while this replica receives {self.arriving} other slow "
                                         f"upload{'s' if self.arriving > 1 else ''}; send it again later, or faster",
                                 http_status=429, retry_after_s=retry_after_s)
        self.arriving += 1
        try:
            yield
        finally:
            self.arriving -= 1


@dataclass(frozen=True)
class Limits:
    """What one call may ask of this deployment; Instill's schema sets no maximum for n."""

    max_n: int = declare(INTEGER, 4, "largest `n` per task input", variable="SDXL_MAX_N", minimum=1, maximum=64)
    max_images_per_call: int = declare(INTEGER, 8, "images per call, over all task inputs",
                                       variable="SDXL_MAX_IMAGES_PER_CALL", minimum=1, maximum=256)
    max_body_bytes: int = declare(INTEGER, 1 << 20, "largest HTTP body or gRPC CallRequest, in bytes; a larger one is "
                                  "refused (HTTP 413) before it is read", variable="SDXL_MAX_BODY_BYTES", minimum=1024,
                                  maximum=64 << 20)
    body_timeout_s: int = declare(INTEGER, 10, "seconds an HTTP body may take to arrive; a slower one is refused (HTTP "
                                  "408), so stalled uploads cannot hold a replica", variable="SDXL_BODY_TIMEOUT_S",
                                  minimum=1, maximum=600)
    max_upload_mb: int = declare(INTEGER, DEFAULT_MAX_UPLOAD_MB, "largest input picture (the image and the mask of an "
                                 "edit, each), in MB as sent, checked before it is decoded; an HTTP body carrying "
                                 "pictures may be larger than SDXL_MAX_BODY_BYTES by each of them in base64",
                                 variable="SDXL_MAX_UPLOAD_MB", minimum=1, maximum=100)
    max_upload_megapixels: int = declare(INTEGER, DEFAULT_MAX_UPLOAD_MEGAPIXELS, "largest input picture in megapixels, "
                                         "as its header declares them (checked before its pixels are decoded)",
                                         variable="SDXL_MAX_UPLOAD_MEGAPIXELS", minimum=1, maximum=89)
    max_training_upload_mb: int = declare(INTEGER, 64, "largest body of `POST /v1/trainings` (its photos), in MB; a "
                                          "larger one is refused (HTTP 413) before it is read; it may take 10 times "
                                          "SDXL_BODY_TIMEOUT_S to arrive", variable="SDXL_TRAIN_MAX_UPLOAD_MB",
                                          minimum=1, maximum=1024)
    max_training_megapixels: int = declare(INTEGER, 1000, "megapixels the photos of one training may have together, as "
                                           "their headers declare them (each is held to SDXL_MAX_UPLOAD_MEGAPIXELS)",
                                           variable="SDXL_TRAIN_MAX_MEGAPIXELS", minimum=1, maximum=100_000)
    max_loras: int = declare(INTEGER, DEFAULT_MAX_LORAS, "LoRA adapters a replica keeps loaded (the least recently "
                             "used is unloaded past it); also the most one request may stack",
                             variable="SDXL_MAX_LORAS", minimum=1, maximum=64)
    # Not settings: found when the replica starts, the adapters in its LoRA folder (fixed names, or the folder
    # itself, re-listed when a request names an adapter not on its list) and its count of slow bodies.
    lora_names: tuple[str, ...] = ()
    lora_folder: LoraFolder | None = None
    slow_bodies: SlowBodies | None = None  # the replica's, shared by its calls; None: bodies are not counted

    @property
    def photos(self) -> dict:
        """read_photos' limits for a training's upload."""
        return {"max_zip_bytes": self.max_training_upload_mb << 20, "max_pixels": self.max_upload_megapixels * 10**6,
                "max_total_pixels": self.max_training_megapixels * 10**6}

    @property
    def uploads(self) -> UploadLimits:
        return UploadLimits(max_bytes=self.max_upload_mb << 20, max_pixels=self.max_upload_megapixels * 1_000_000)

    def body_bytes(self, pictures: bool = False) -> int:
        """The largest HTTP body a route takes: SDXL_MAX_BODY_BYTES, plus every picture a request may send
        (modes.PICTURES) in base64 where the route takes pictures (each is held to SDXL_MAX_UPLOAD_MB as it is
        decoded)."""
        base64_bytes = -(-(self.max_upload_mb << 20) // 3) * 4
        return self.max_body_bytes + (len(PICTURES) * base64_bytes if pictures else 0)

    def check(self, request: TextToImageRequest, images_before: int, where: str) -> None:
        """One input against the deployment, with the images of the call before it; errors name the input's own
        fields (`where` is its parameters' prefix: "parameter." or "")."""
        n = request.n
        if n > self.max_n:
            raise InvalidRequest(f"{where}n", f"must be from 1 to {self.max_n} on this deployment, got {excerpt(n)}")
        if images_before + n > self.max_images_per_call:
            raise InvalidRequest(f"{where}n", f"takes the call to {excerpt(images_before + n)} images; this deployment "
                                              f"makes at most {self.max_images_per_call} per call")
        self.check_loras(request, where)

    def check_loras(self, request: TextToImageRequest, where: str) -> None:
        """The request's adapters against those the deployment found (the CLI checks these alone)."""
        if len(request.lora) > self.max_loras:
            raise InvalidRequest(f"{where}lora", f"stacks {len(request.lora)} adapters; this deployment keeps at most "
                                                 f"{self.max_loras} loaded")
        for name in request.lora:
            if not is_plain_name(name) or not self.has_lora(name):
                names = self.lora_folder.names if self.lora_folder else self.lora_names
                shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
                raise InvalidRequest(f"{where}lora", f"no adapter named {excerpt(name)} on this deployment; "
                                                     f"available: {shown or 'none'}")

    def has_lora(self, name: str) -> bool:
        return name in self.lora_names or (self.lora_folder is not None and self.lora_folder.has(name))
