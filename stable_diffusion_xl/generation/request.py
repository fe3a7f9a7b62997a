"""One typed request: its fields, defaults, ranges, parsing and validation.

Every surface (gRPC task inputs, HTTP JSON, the CLI) builds a `TextToImageRequest`; the
dataclass checks its own fields, so an invalid request cannot reach the engine. The field
metadata is also what the CLI flags and README's parameter table are written from.

Despite its name it also carries edits: its `pictures` (generation/modes.py PICTURES, decoded) choose its `mode`,
and `strength` says how much of them is redrawn. The pictures arrive decoded (generation/pictures.py
`read_pictures` decodes a JSON dialect's data URIs), are no PARAMETERS (no row of the parameter table, no
snake_case name in the peer APIs: a dialect takes them with `from_fields(..., pictures=True)`, and the `generate`
command has a flag for each of PICTURES), and fix the aspect ratio: the nearest to the input picture's own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from ..fields import (
    FLAG,
    INTEGER,
    KNOWN_FIELDS,
    NUMBER,
    TEXT,
    InvalidRequest,
    declare,
    excerpt,
    spec_of,
    unknown_key,
    wire_name,
)
from .modes import MODES, PICTURES, mode_of
from .schedulers import DEFAULT_SCHEDULER, SCHEDULERS
from .sizes import ASPECT_RATIOS, nearest_aspect_ratio

MAX_SEED = 2**32 - 1
MAX_PROMPT_CHARS = 4000
# The fields each image of a batch has of its own; the engine hands them to the pipelines image by image.
PER_IMAGE = ("prompt", "negative_prompt", "seed", "n", "pictures")


@dataclass(frozen=True)
class TextToImageRequest:
    prompt: str = declare(TEXT, dataclasses.MISSING, "What the image should show.")
    negative_prompt: str = declare(TEXT, "", "What the image should not show.",
                                   allowed=f"up to {MAX_PROMPT_CHARS} characters")
    aspect_ratio: str = declare(TEXT, "1:1", "Shape of the image, mapped to SDXL's native ~1 MP size. With an input "
                                "image, the image's nearest one.", choices=ASPECT_RATIOS)
    n: int = declare(INTEGER, 1, "How many images to generate for the prompt.", minimum=1,
                     allowed="1 to the deployment's SDXL_MAX_N")
    seed: int = declare(
        INTEGER, 0, f"Seed of image 0; image i uses seed + i, wrapping from {MAX_SEED} to 1. 0 picks a random seed. "
        "Every seed reported back regenerates its image alone.", minimum=0, maximum=MAX_SEED,
    )
    steps: int = declare(INTEGER, 40, "Denoising steps, shared between base and refiner.", minimum=1, maximum=100)
    guidance_scale: float = declare(NUMBER, 7.5, "Classifier-free guidance; 1 turns it off.", minimum=1.0,
                                    maximum=20.0)
    high_noise_frac: float = declare(
        NUMBER, 0.8, "Where the refiner takes over, as a fraction of the noise schedule: the base denoises the "
        "noisiest part. Where the steps leave either expert none (1 step), the base makes the image alone.",
        minimum=0.05, maximum=0.95,
    )
    refiner: bool | None = declare(
        FLAG, None, "Hand the low-noise steps to the refiner; false runs the base alone. With a LoRA the default is "
        "false: the refiner never saw the adapter's subject or style.", shown="true (false with a LoRA)",
    )
    scheduler: str = declare(TEXT, DEFAULT_SCHEDULER, "Sampler of base and refiner, by its A1111/ComfyUI name.",
                             choices=tuple(SCHEDULERS))
    lora: tuple[str, ...] = declare(
        TEXT, (), "LoRA adapters by name (the file stems in the deployment's LoRA folder): one, or a list to stack.",
        listed=True, shown="none", allowed="adapters the deployment has (the GET status lists them)",
    )
    lora_scale: tuple[float, ...] = declare(
        NUMBER, (), "Strength of the adapters: one number for all, or a list with one per adapter.", minimum=0.0,
        maximum=2.0, listed=True, shown="1.0 each",
    )
    strength: float | None = declare(
        NUMBER, None, "Only with an input image (see edits.md): how much of it is redrawn, from 0 (returned as it "
        "is) to 1 (redrawn whole).", minimum=0.0, maximum=1.0, shown="0.8 (0.85 with a mask)",
    )
    # An edit's input pictures by name (modes.PICTURES), in the Pillow mode listed there: decoded, never JSON.
    pictures: Mapping[str, Image.Image] = field(default_factory=dict, hash=False, compare=False, repr=False)

    def __post_init__(self):
        declared = [(member, spec) for member in dataclasses.fields(self) if (spec := spec_of(member))]
        for member, spec in declared:  # one value or a list, kept as a tuple (the batch key must be hashable)
            value = getattr(self, member.name)
            if spec.listed:
                object.__setattr__(self, member.name, tuple(value) if isinstance(value, (list, tuple)) else (value,))
        if self.refiner is None:
            object.__setattr__(self, "refiner", not self.lora)
        for member, spec in declared:
            spec.check(wire_name(member), getattr(self, member.name))
        self._resolve_lora_scales()
        self._check_pictures()
        if not self.prompt.strip():
            raise InvalidRequest("prompt", "must not be empty")
        for name, text in (("prompt", self.prompt), ("negative-prompt", self.negative_prompt)):
            if len(text) > MAX_PROMPT_CHARS:
                raise InvalidRequest(name, f"is limited to {MAX_PROMPT_CHARS} characters, got {len(text)}")

    def _resolve_lora_scales(self) -> None:
        if len(set(self.lora)) < len(self.lora):
            raise InvalidRequest("lora", "names an adapter more than once")
        scales = self.lora_scale or (1.0,)
        if len(scales) == 1:
            scales *= len(self.lora)
        if len(scales) != len(self.lora):
            raise InvalidRequest("lora-scale", f"has {len(self.lora_scale)} scales for {len(self.lora)} adapters; "
                                               "give one number, or one per adapter")
        object.__setattr__(self, "lora_scale", tuple(float(scale) for scale in scales))

    def _check_pictures(self) -> None:
        """An edit's pictures together; their own defects (format, bytes, pixels) were refused as they were
        decoded."""
        pictures = {name: picture for name, picture in self.pictures.items() if picture is not None}
        for name, picture in pictures.items():
            if name not in PICTURES:
                raise unknown_key(name, PICTURES, "picture")
            if not isinstance(picture, Image.Image):
                raise InvalidRequest(name, f"must be a picture (a data URI or base64 text), got {excerpt(picture)}")
            if picture.mode != PICTURES[name].pil_mode:
                pictures[name] = picture.convert(PICTURES[name].pil_mode)
        object.__setattr__(self, "pictures", pictures)
        mode = mode_of(pictures)
        if mode.default_strength is None:
            if self.strength is not None:
                raise InvalidRequest("strength", "applies to an input `image`; this request has none")
            return
        mode.check(self)
        object.__setattr__(self, "aspect_ratio", nearest_aspect_ratio(*pictures[mode.pictures[0]].size))
        if self.strength is None:
            object.__setattr__(self, "strength", mode.default_strength)

    @property
    def mode(self) -> str:
        """The name of the mode its pictures choose: "text-to-image" (none), "image-to-image", "inpainting"."""
        return mode_of(self.pictures).name

    @property
    def input_size(self) -> tuple[int, int] | None:
        """The size of the picture an edit starts from, as sent; None for text-to-image."""
        inputs = MODES[self.mode].pictures
        return self.pictures[inputs[0]].size if inputs else None

    @property
    def batch_key(self) -> tuple:
        """What must match for two requests to share one UNet batch: every field but each image's own (PER_IMAGE),
        its mode, and whether it has a negative prompt (without one the base uses zero embeddings). Different input
        pictures can share a batch: they are fitted to the size of their aspect ratio, and the pipelines take a
        list. A new field is shared by default, so a batch never runs one request's value for another's."""
        shared = tuple(getattr(self, spec.name) for spec in dataclasses.fields(self) if spec.name not in PER_IMAGE)
        return (*shared, self.mode, bool(self.negative_prompt))


def text_only(name: str) -> InvalidRequest:
    """The error for a picture sent to a route that makes images from text only."""
    return InvalidRequest(name, "is not taken here: this route makes images from text only (edits.md lists the "
                                "routes that take an image)")


def nth_seed(first_seed: int, index: int) -> int:
    """Image `index`'s seed: first_seed + index, wrapped into 1..MAX_SEED so that it can be sent back."""
    return 1 + (first_seed - 1 + index) % MAX_SEED


PARAMETERS = {wire_name(spec): spec for spec in dataclasses.fields(TextToImageRequest)
              if spec.name not in ("prompt", "pictures")}
KNOWN_FIELDS.update(PARAMETERS, ["prompt", "model", "data", "parameter", "task input", "task_inputs", "body",
                                           "method", "path"])


def from_fields(prompt: Any, parameters: dict, where: str = "", also: Iterable[str] = (), *,
                pictures: bool = False) -> TextToImageRequest:
    """Build a request from a prompt and wire-named parameters, rejecting unknown keys; `also` are the other
    names the caller may use in the same object (such as `prompt`), which a hint lists too. With `pictures`,
    `image` and `mask` are taken too, decoded already (pictures.read_pictures); without, they are refused."""
    for name in PICTURES:
        if name in parameters and not pictures:
            raise text_only(name).within(where)
    taken = {*PARAMETERS, *PICTURES} if pictures else set(PARAMETERS)
    unknown = sorted(set(parameters) - taken)
    if unknown:
        raise unknown_key(unknown[0], [*also, *PARAMETERS, *(PICTURES if pictures else ())]).within(where)
    if prompt is None:
        raise InvalidRequest(f"{where}prompt", "is required")
    sent = {key: value for key, value in parameters.items() if key in PICTURES and value is not None}
    values = {PARAMETERS[key].name: spec_of(PARAMETERS[key]).from_json(value) for key, value in parameters.items()
              if key in PARAMETERS}
    try:
        return TextToImageRequest(prompt=prompt, **values, pictures=sent)
    except InvalidRequest as error:
        raise error.within(where) from None
