"""SDXL_* environment variables: each declared once (fields.declare with its `variable`), read and checked
together. A bad value fails the start with a message naming the variable, the value and what is allowed; the
docs' settings table is written from the same declarations."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..fields import InvalidRequest, Spec, UserError, excerpt, spec_of


class SettingError(UserError, ValueError):
    """An SDXL_* variable holds a value the deployment cannot run with."""


def read(cls, env):
    """A `cls` of the settings `env` sets (a mapping of variables); unset and empty ones keep their defaults."""
    values = {}
    for member in dataclasses.fields(cls):
        if member.metadata.get("group"):  # a group of settings of its own, such as Limits
            values[member.name] = read(member.metadata["group"], env)
        elif (spec := spec_of(member)) and env.get(spec.variable):
            values[member.name] = _parse(spec, env[spec.variable])
    return cls(**values)


def _parse(spec: Spec, text: str) -> Any:
    """A setting's value from its variable's text; the error names the variable, the value (unless it is a secret)
    and what is allowed."""
    value = spec.from_text(text.strip() if spec.choices else text)
    try:
        spec.check(spec.variable, value)
    except InvalidRequest:
        given = spec.variable if spec.secret else f"{spec.variable}={excerpt(text)}"
        raise SettingError(f"{given}: must be {spec.values_allowed()}") from None
    return value


def declared(cls) -> list[dataclasses.Field]:
    """Every setting `cls` declares, its groups' included, in the docs' order."""
    found = []
    for member in dataclasses.fields(cls):
        if member.metadata.get("group"):
            found += declared(member.metadata["group"])
        elif spec_of(member):
            found.append(member)
    return found
