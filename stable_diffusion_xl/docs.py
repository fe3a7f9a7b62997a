"""The docs' tables (docs/apis.md, docs/settings.md, docs/training.md), written from the declarations they document
so the two cannot drift."""

from __future__ import annotations

import dataclasses
import json

from .apis.routes import served_routes
from .fields import FLAG, FOLDER, Spec, spec_of
from .generation.request import MAX_PROMPT_CHARS, PARAMETERS
from .serving.environment import declared
from .serving.settings import Settings
from .training.options import OPTIONS


def route_table() -> str:
    """What the application serves over HTTP: from the route table."""
    rows = ["| method | path | what |", "|---|---|---|"]
    rows += [f"| {method} | `{path}` | {title} |" for method, path, title in served_routes()]
    return "\n".join(rows)


def parameter_table() -> str:
    """The request fields: from TextToImageRequest."""
    rows = ["| field | type | default | allowed | meaning |", "|---|---|---|---|---|",
            f"| `data.prompt` | string | required | 1 to {MAX_PROMPT_CHARS} characters | What the image should show. |"]
    for name, member in PARAMETERS.items():
        spec = spec_of(member)
        allowed = "true, false" if spec.kind is FLAG else _allowed(spec)
        default = spec.shown or f"`{json.dumps(member.default)}`"
        rows.append(f"| `parameter.{name}` | {spec.json_type} | {default} | {allowed} | {spec.description} |")
    return "\n".join(rows)


def settings_table() -> str:
    """The SDXL_* variables: from Settings and Limits."""
    rows = ["| variable | default | allowed | meaning |", "|---|---|---|---|"]
    for member in declared(Settings):
        spec = spec_of(member)
        if spec.choices and not spec.allowed:
            allowed = ", ".join(f"`{choice}`" for choice in spec.choices)
        elif spec.kind is FLAG:
            allowed = "1, 0 (or true/false, yes/no, on/off)"
        else:
            allowed = _allowed(spec)
        rows.append(f"| `{spec.variable}` | {spec.shown or _default(member.default)} | {allowed} | "
                    f"{spec.description} |")
    return "\n".join(rows)


def option_table() -> str:
    """A training's options, as the `train` command and `POST /v1/trainings` take them: from TrainingOptions."""
    rows = ["| option | default | allowed | what it does |", "|---|---|---|---|"]
    for name, member in OPTIONS.items():
        spec = spec_of(member)
        default = spec.shown or ("required" if member.default is dataclasses.MISSING else _default(member.default))
        allowed = "" if spec.kind is FLAG else _allowed(spec)
        rows.append(f"| `--{name}` | {default} | {allowed} | {spec.description} |")
    return "\n".join(rows)


def _allowed(spec: Spec) -> str:
    if spec.allowed:
        return spec.allowed
    if spec.choices:
        return ", ".join(spec.choices)
    if spec.kind is FOLDER:
        return "a folder"
    if spec.minimum is None:
        return ""
    return f"{spec.minimum} to {spec.maximum}" if spec.maximum is not None else f"at least {spec.minimum}"


def _default(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)
