"""The options of one training: their defaults, ranges and descriptions, checked when they are built.

Field names are Python's; errors and the CLI use the wire names (`learning-rate`). The fields are declared and
checked as TextToImageRequest's are (fields.declare); docs/training.md's option table is written from them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ..fields import FLAG, INTEGER, NUMBER, TEXT, InvalidRequest, declare, excerpt, spec_of, unknown_key, wire_name
from ..generation.request import MAX_SEED
from ..weights.lora_files import is_plain_name

MIN_PHOTOS, FEW_PHOTOS = 3, 8  # refused under 3, warned under 8
STEPS_PER_PHOTO, MAX_DEFAULT_STEPS, MIN_DEFAULT_STEPS = 110, 1500, 400  # published recipes: ~100-120 per photo
MAX_STEPS = 20_000
MAX_TOKEN_CHARS, MAX_CLASS_WORD_CHARS = 40, 60


def default_steps(photo_count: int) -> int:
    """Steps when none are asked for: about 110 per photo, at least 400, at most 1500."""
    return max(MIN_DEFAULT_STEPS, min(MAX_DEFAULT_STEPS, STEPS_PER_PHOTO * photo_count))


@dataclass(frozen=True)
class TrainingOptions:
    name: str = declare(TEXT, dataclasses.MISSING, "The adapter's name: the files `NAME.safetensors` and "
                        "`NAME.json`, and `\"lora\": \"NAME\"` in requests. A name that exists is refused unless "
                        "`overwrite`.", allowed="letters, digits, `-`, `_`, inner dots; up to 100")
    token: str = declare(TEXT, "TOK", "The trigger word that comes to mean the subject; put it in prompts. A rare "
                         "token (`TOK`, `sks`, `zqx`) has no meaning of its own to unlearn.", shown="`TOK`",
                         allowed=f"one word, up to {MAX_TOKEN_CHARS} characters")
    class_word: str = declare(TEXT, "person", "What the subject is (`person`, `dog`, `mug`, `watercolor style`); "
                              "the caption of a photo without one of its own is `a photo of TOKEN CLASS`.",
                              shown="`person`", allowed=f"up to {MAX_CLASS_WORD_CHARS} characters")
    steps: int | None = declare(INTEGER, None, "Optimizer steps (batch 1 per worker; the default is divided among "
                                "the workers). Too few: the likeness is weak; too many: every image looks like the "
                                "photos (overfitting).", minimum=1, maximum=MAX_STEPS,
                                shown=f"{STEPS_PER_PHOTO} per photo, {MIN_DEFAULT_STEPS} to {MAX_DEFAULT_STEPS}")
    rank: int = declare(INTEGER, 32, "The LoRA rank: more learns finer detail and makes a larger file.", minimum=1,
                        maximum=256)
    learning_rate: float = declare(NUMBER, 1e-4, "AdamW's rate, constant.", minimum=1e-7, maximum=1e-2, shown="1e-4")
    resolution: int | None = declare(INTEGER, None, "The square the photos are centre-cropped and resized to.",
                                     minimum=256, maximum=2048, shown="1024 (the demo weights: 256)",
                                     allowed="256 to 2048, a multiple of 64")
    seed: int = declare(INTEGER, 0, "The noise, timesteps and photo order: the same photos and options give the "
                        "same adapter.", minimum=0, maximum=MAX_SEED)
    train_text_encoder: bool = declare(FLAG, False, "Also train LoRA on both text encoders (their attention): more "
                                       "memory and time, sometimes a closer likeness.")
    workers: int = declare(INTEGER, 1, "Data-parallel workers under Ray Train (one GPU each where there are GPUs); 1 "
                           "trains in this process.", minimum=1, maximum=64)
    overwrite: bool = declare(FLAG, False, "Replace an adapter of the same name, once the new one is complete.")
    resume: bool = declare(FLAG, False, "Continue an interrupted run from its last checkpoint.")
    checkpoint_every: int = declare(INTEGER, 250, "Steps between checkpoints (the LoRA, the optimizer and the step).",
                                    minimum=1, maximum=MAX_STEPS)

    def __post_init__(self):
        for member in dataclasses.fields(self):
            spec_of(member).check(wire_name(member), getattr(self, member.name))
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
    values = {OPTIONS[key].name: spec_of(OPTIONS[key]).from_json(value) for key, value in fields.items()}
    if "name" not in values:
        raise InvalidRequest(f"{where}name", "is required")
    try:
        return TrainingOptions(**values)
    except InvalidRequest as error:
        raise error.within(where) from None
