"""One typed text-to-image request: its fields, defaults, ranges, parsing and validation.

Every surface (gRPC task inputs, HTTP JSON, the CLI) builds a `TextToImageRequest`; the
dataclass checks its own fields, so an invalid request cannot reach the engine. The field
metadata is also what README's parameter table is written from.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from .sizes import ASPECT_RATIOS

MAX_SEED = 2**32 - 1
MAX_PROMPT_CHARS = 4000


class InvalidRequest(ValueError):
    """A request field is missing, of the wrong type or out of range."""

    def __init__(self, field_name: str, reason: str):
        super().__init__(f"{field_name}: {reason}")
        self.field, self.reason = field_name, reason

    def within(self, prefix: str) -> InvalidRequest:
        """The same error, with the field named from an enclosing object."""
        return InvalidRequest(f"{prefix}{self.field}", self.reason)


def _option(default, description, *, minimum=None, maximum=None, choices=None):
    return field(
        default=default,
        metadata={"description": description, "minimum": minimum, "maximum": maximum, "choices": choices},
    )


@dataclass(frozen=True)
class TextToImageRequest:
    prompt: str = field(metadata={"description": "What the image should show."})
    negative_prompt: str = _option("", "What the image should not show.")
    aspect_ratio: str = _option("1:1", "Shape of the image, mapped to SDXL's native ~1 MP size.", choices=ASPECT_RATIOS)
    n: int = _option(1, "How many images to generate for the prompt.", minimum=1)
    seed: int = _option(
        0, "Seed of image 0; image i uses seed + i. 0 picks a random seed, reported back.",
        minimum=0, maximum=MAX_SEED,
    )
    steps: int = _option(40, "Denoising steps, shared between base and refiner.", minimum=1, maximum=100)
    guidance_scale: float = _option(7.5, "Classifier-free guidance; 1 turns it off.", minimum=1.0, maximum=20.0)
    high_noise_frac: float = _option(
        0.8, "Fraction of the steps the base runs before the refiner takes over.", minimum=0.05, maximum=0.95
    )
    refiner: bool = _option(True, "Hand the low-noise steps to the refiner; false runs the base alone.")

    def __post_init__(self):
        for spec in dataclasses.fields(self):
            _check_field(spec, getattr(self, spec.name))
        if not self.prompt.strip():
            raise InvalidRequest("prompt", "must not be empty")
        for name, text in (("prompt", self.prompt), ("negative-prompt", self.negative_prompt)):
            if len(text) > MAX_PROMPT_CHARS:
                raise InvalidRequest(name, f"is limited to {MAX_PROMPT_CHARS} characters, got {len(text)}")
        if self.refiner and not 1 <= round(self.steps * self.high_noise_frac) < self.steps:
            raise InvalidRequest(
                "high-noise-frac",
                f"{self.high_noise_frac} of {self.steps} steps leaves the base or the refiner no step; "
                "use more steps, another fraction, or refiner=false",
            )

    @property
    def settings(self) -> tuple:
        """What must match for two requests to share one UNet batch."""
        return (self.aspect_ratio, self.steps, self.guidance_scale, self.high_noise_frac, self.refiner,
                bool(self.negative_prompt))


def wire_name(spec: dataclasses.Field) -> str:
    return spec.name.replace("_", "-")


PARAMETERS = {wire_name(spec): spec for spec in dataclasses.fields(TextToImageRequest) if spec.name != "prompt"}


def _check_field(spec: dataclasses.Field, value: Any) -> None:
    name, kind = wire_name(spec), _KINDS[spec.type]
    # bool is an int in Python; a JSON true must not pass as n=1.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise InvalidRequest(name, f"must be {_KIND_NAMES[spec.type]}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidRequest(name, f"must be a finite number, got {value!r}")
    choices, minimum, maximum = (spec.metadata.get(key) for key in ("choices", "minimum", "maximum"))
    if choices and value not in choices:
        raise InvalidRequest(name, f"must be one of {', '.join(choices)}; got {value!r}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        bounds = f"from {minimum} to {maximum}" if maximum is not None else f"at least {minimum}"
        raise InvalidRequest(name, f"must be {bounds}, got {value!r}")


# Field annotations are strings under `from __future__ import annotations`.
_KINDS = {"str": str, "int": int, "float": (int, float), "bool": bool}
_JSON_TYPES = {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}
_KIND_NAMES = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false"}


def _from_json(spec: dataclasses.Field, value: Any) -> Any:
    """JSON and protobuf Struct carry every number as a double: take 2.0 as the integer 2."""
    if spec.type == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    if spec.type == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _key(name: str) -> str:
    return name or '""'  # an empty JSON key still needs a visible name in the error


def from_fields(prompt: Any, parameters: dict, where: str = "") -> TextToImageRequest:
    """Build a request from a prompt and wire-named parameters, rejecting unknown keys."""
    unknown = sorted(set(parameters) - set(PARAMETERS))
    if unknown:
        raise InvalidRequest(f"{where}{_key(unknown[0])}", f"unknown parameter; known: {', '.join(PARAMETERS)}")
    if prompt is None:
        raise InvalidRequest(f"{where}prompt", "is required")
    values = {PARAMETERS[key].name: _from_json(PARAMETERS[key], value) for key, value in parameters.items()}
    try:
        return TextToImageRequest(prompt=prompt, **values)
    except InvalidRequest as error:
        raise error.within(where) from None


def parse_task_input(task_input: Any) -> TextToImageRequest:
    """Instill's envelope: {"data": {"prompt": ..., "model": ...}, "parameter": {...}}."""
    if not isinstance(task_input, dict):
        raise InvalidRequest("task input", f"must be an object, got {type(task_input).__name__}")
    unknown = sorted(set(task_input) - {"data", "parameter"})
    if unknown:
        raise InvalidRequest(_key(unknown[0]), "unknown key; a task input has data and parameter")
    data, parameter = task_input.get("data"), task_input.get("parameter", {})
    if not isinstance(data, dict):
        raise InvalidRequest("data", "must be an object with a prompt")
    if not isinstance(parameter, dict):
        raise InvalidRequest("parameter", "must be an object")
    extra = sorted(set(data) - {"prompt", "model"})
    if extra:
        raise InvalidRequest(f"data.{_key(extra[0])}", "unknown key; data has prompt and model")
    request = from_fields(data.get("prompt"), {}, "data.")
    return from_fields(request.prompt, parameter, "parameter.")


def parse_all(inputs: list, parse_one=parse_task_input, where: str = "") -> list[TextToImageRequest]:
    """Several task inputs, in order; an error names the position of the bad one when there are several."""
    if not inputs:
        raise InvalidRequest(where or "body", "must hold at least one task input")
    requests = []
    for index, task_input in enumerate(inputs):
        try:
            requests.append(parse_one(task_input))
        except InvalidRequest as error:
            raise (error.within(f"{where}[{index}].") if len(inputs) > 1 else error) from None
    return requests


def parse_json(body: Any) -> list[TextToImageRequest]:
    """HTTP bodies: one task input or a list of them, in the envelope or flat ({"prompt": ..., "n": 2})."""
    return parse_all(body if isinstance(body, list) else [body], _parse_http_input)


def _parse_http_input(task_input: Any) -> TextToImageRequest:
    if isinstance(task_input, dict) and "data" not in task_input and "parameter" not in task_input:
        flat = {key: value for key, value in task_input.items() if key != "model"}
        return from_fields(flat.pop("prompt", None), flat)
    return parse_task_input(task_input)


@dataclass(frozen=True)
class Limits:
    """What one deployment accepts per call; Instill's schema sets no maximum for n."""

    max_n: int = 4
    max_images_per_call: int = 8

    def check(self, requests: list[TextToImageRequest]) -> None:
        for index, request in enumerate(requests):
            if request.n > self.max_n:
                where = f"[{index}].n" if len(requests) > 1 else "n"
                raise InvalidRequest(where, f"must be from 1 to {self.max_n} on this deployment, got {request.n}")
        total = sum(request.n for request in requests)
        if total > self.max_images_per_call:
            raise InvalidRequest(
                "n", f"{total} images in one call; this deployment makes at most {self.max_images_per_call} per call"
            )


def parameter_table() -> str:
    """README's table of request fields, written from the dataclass so the two cannot drift."""
    rows = ["| field | type | default | allowed | meaning |", "|---|---|---|---|---|",
            f"| `data.prompt` | string | required | 1 to {MAX_PROMPT_CHARS} characters | What the image should show. |"]
    for name, spec in PARAMETERS.items():
        meta = spec.metadata
        if meta["choices"]:
            allowed = ", ".join(meta["choices"])
        elif meta["minimum"] is not None:
            allowed = f"{meta['minimum']} to {meta['maximum']}" if meta["maximum"] is not None else \
                f"{meta['minimum']} to the deployment's SDXL_MAX_N"
        else:
            allowed = {"bool": "true, false", "str": f"up to {MAX_PROMPT_CHARS} characters"}[spec.type]
        default = json.dumps(spec.default)
        rows.append(f"| `parameter.{name}` | {_JSON_TYPES[spec.type]} | `{default}` | {allowed} | {meta['description']} |")
    return "\n".join(rows)
