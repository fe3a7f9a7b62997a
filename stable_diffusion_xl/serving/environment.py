"""SDXL_* environment variables: each declared once (variable, default, range, meaning), read and checked
together. A bad value fails the start with a message naming the variable, the value and what is allowed; the
docs' settings table is written from the same declarations."""

from __future__ import annotations

import dataclasses
from dataclasses import field
from pathlib import Path
from typing import Any

from ..fields import UserError, excerpt

FLAG_VALUES = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


class SettingError(UserError, ValueError):
    """An SDXL_* variable holds a value the deployment cannot run with."""


def setting(variable: str, default: Any, meaning: str, *, minimum: int | None = None, maximum: int | None = None,
            shown: str | None = None, allowed: str | None = None, choices: tuple[str, ...] | None = None,
            secret: bool = False):
    """A dataclass field read from `variable`; `shown` is the default and `allowed` the values as README writes
    them, where the type does not say; a text setting with `choices` takes one of them. A secret is left out of the
    settings' repr, so that no log line prints it."""
    if choices and not allowed:
        allowed = ", ".join(f"`{choice}`" for choice in choices)
    return field(default=default, repr=not secret, metadata={"variable": variable, "meaning": meaning,
                                                             "minimum": minimum, "maximum": maximum, "shown": shown,
                                                             "allowed": allowed, "choices": choices})


def read(cls, env):
    values = {}
    for spec in dataclasses.fields(cls):
        variable = spec.metadata.get("variable")
        if spec.metadata.get("group"):  # a group of settings of its own, such as Limits
            values[spec.name] = read(spec.metadata["group"], env)
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
    if spec.metadata.get("choices"):
        if text.strip() not in spec.metadata["choices"]:
            raise SettingError(f"{variable}={excerpt(text)}: must be one of {', '.join(spec.metadata['choices'])}")
        return text.strip()
    if spec.type == "str | None":
        return text
    return Path(text)


def declared(cls) -> list[dataclasses.Field]:
    """Every setting `cls` declares, its groups' included, in the docs' order."""
    found = []
    for spec in dataclasses.fields(cls):
        if spec.metadata.get("group"):
            found += declared(spec.metadata["group"])
        elif "variable" in spec.metadata:
            found.append(spec)
    return found
