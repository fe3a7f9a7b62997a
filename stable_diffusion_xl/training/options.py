"""The options of one training: their defaults, ranges and descriptions, checked when they are built.

Field names are Python's; errors and the CLI use the wire names (`learning-rate`), and the fields are checked
by the request's own check_field (types, ranges in the metadata), as TextToImageRequest's are.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from ..fields import InvalidRequest, excerpt, unknown_key
from ..generation.request import MAX_SEED, check_field, wire_name
from ..weights.lora_files import is_plain_name

MIN_PHOTOS, FEW_PHOTOS = 3, 8  # refused under 3, warned under 8
STEPS_PER_PHOTO, MAX_DEFAULT_STEPS, MIN_DEFAULT_STEPS = 110, 1500, 400  # published recipes: ~100-120 per photo
MAX_STEPS = 20_000
MAX_TOKEN_CHARS, MAX_CLASS_WORD_CHARS = 40, 60


def _option(default, description, *, minimum=None, maximum=None, shown=None):
    return field(default=default, metadata={"description": description, "minimum": minimum, "maximum": maximum,
                                            "shown": shown})


def default_steps(photo_count: int) -> int:
    """Steps when none are asked for: about 110 per photo, at least 400, at most 1500."""
    return max(MIN_DEFAULT_STEPS, min(MAX_DEFAULT_STEPS, STEPS_PER_PHOTO * photo_count))


@dataclass(frozen=True)
class TrainingOptions:
    name: str = field(metadata={"description": "The adapter's name: requests use it as `\"lora\": NAME`; the "
                                               "files are NAME.safetensors and NAME.json in the LoRA folder."})
    token: str = _option("TOK", "The trigger word: a rare token that comes to mean the subject; put it in prompts.")
    class_word: str = _option("person", "What the subject is (person, dog, style, ...): the default caption is "
                              "`a photo of TOKEN CLASS`.")
    steps: int | None = _option(None, f"Training steps (each takes one photo on each worker); default "
                                f"{STEPS_PER_PHOTO} per photo, from {MIN_DEFAULT_STEPS} to {MAX_DEFAULT_STEPS}, "
                                "divided among the workers.", minimum=1,
                                maximum=MAX_STEPS, shown=f"{STEPS_PER_PHOTO} per photo")
    rank: int = _option(32, "The LoRA rank: larger learns more detail and makes a larger file.", minimum=1,
                        maximum=256)
    learning_rate: float = _option(1e-4, "AdamW's learning rate, constant.", minimum=1e-7, maximum=1e-2)
    resolution: int | None = _option(None, "Square training size in pixels, a multiple of 64; photos are centre-"
                                     "cropped and resized to it. Default: the base model's native size (1024 for "
                                     "SDXL, 256 for the demo weights).", minimum=256, maximum=2048,
                                     shown="the model's native size")
    seed: int = _option(0, "Seed of the noise, the timesteps and the photo order.", minimum=0, maximum=MAX_SEED)
    train_text_encoder: bool = _option(False, "Also train LoRA on both text encoders (more memory, more steps "
                                       "per second lost; can help a subject's likeness).")
    workers: int = _option(1, "Data-parallel workers under Ray Train (one GPU each where there are GPUs); 1 "
                           "trains in this process.", minimum=1, maximum=64)
    overwrite: bool = _option(False, "Replace an adapter of the same name (only once the new one is complete).")
    resume: bool = _option(False, "Continue from the checkpoint an interrupted run of this name left.")
    checkpoint_every: int = _option(250, "Save a checkpoint (LoRA, optimizer, step) every this many steps.",
                                    minimum=1, maximum=MAX_STEPS)

    def __post_init__(self):
        for spec in dataclasses.fields(self):
            check_field(spec, getattr(self, spec.name))
        if not is_plain_name(self.name):
            raise InvalidRequest("name", f"must be a plain name (letters, digits, -, _ and inner dots, at most 100 "
                                         f"characters), got {excerpt(self.name)}")
        for name, text, limit in (("token", self.token, MAX_TOKEN_CHARS),
                                  ("class-word", self.class_word, MAX_CLASS_WORD_CHARS)):
            if not text.strip() or len(text) > limit or any(not char.isprintable() for char in text):
                raise InvalidRequest(name, f"must be 1 to {limit} printable characters, got {excerpt(text)}")
        if any(char.isspace() for char in self.token):
            raise InvalidRequest("token", f"must be one word (no spaces), got {excerpt(self.token)}")
        if self.resolution is not None and self.resolution % 64:
            raise InvalidRequest("resolution", f"must be a multiple of 64, got {self.resolution}")

    def total_steps(self, photo_count: int) -> int:
        """The steps asked for, else the default's photo views shared among the workers (a step takes one photo
        on each)."""
        return self.steps if self.steps is not None else math.ceil(default_steps(photo_count) / self.workers)

    @property
    def caption(self) -> str:
        """The caption of a photo without a sidecar caption, and what a prompt names the subject by."""
        return f"a photo of {self.token} {self.class_word}"


OPTIONS = {wire_name(spec): spec for spec in dataclasses.fields(TrainingOptions)}


def from_fields(fields: dict, where: str = "") -> TrainingOptions:
    """Options from wire-named fields (`learning-rate`, as JSON or a form sends them), refusing unknown keys; JSON's
    2.0 is taken as the integer 2. Errors name the field after `where` (e.g. "options.")."""
    unknown = sorted(set(fields) - set(OPTIONS))
    if unknown:
        raise unknown_key(unknown[0], OPTIONS, kind="option").within(where)
    values = {}
    for key, value in fields.items():
        spec = OPTIONS[key]
        if spec.type.startswith("int") and isinstance(value, float) and value.is_integer():
            value = int(value)
        values[spec.name] = value
    if "name" not in values:
        raise InvalidRequest(f"{where}name", "is required")
    try:
        return TrainingOptions(**values)
    except InvalidRequest as error:
        raise error.within(where) from None
