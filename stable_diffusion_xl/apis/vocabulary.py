"""How another API names the request's fields. The peer dialects build their `TextToImageRequest`s through
a `Vocabulary`, so that they share the request's own checks and the deployment's limits, and so that every
error names the field as the caller spelled it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..generation.request import (
    KNOWN_FIELDS,
    PARAMETERS,
    InvalidRequest,
    TextToImageRequest,
    excerpt,
    from_fields,
    unknown_key,
)

if TYPE_CHECKING:
    from ..serving.limits import Limits


class Vocabulary:
    def __init__(self, renamed: Mapping[str, str], *, without: Iterable[str] = (), own: Iterable[str] = (),
                 elsewhere: Iterable[str] = ()):
        """`renamed` maps the API's names to our wire names; SDXL's other parameters, which the API has no name
        for, are taken by ours in snake_case, except those `without` (which the API sets another way). `own`
        are the API's other fields in the same object, which it reads itself; `elsewhere` its names in other
        objects of the body."""
        self.ours = {"prompt": "prompt", **renamed}
        taken = {*self.ours.values(), *without}
        self.ours |= {wire.replace("-", "_"): wire for wire in PARAMETERS if wire not in taken}
        self.theirs = {wire: name for name, wire in self.ours.items()}
        self.fields = list(dict.fromkeys([*self.ours, *own]))  # every field of the object, as a hint lists them
        # Names of the API's own are as safe in logs and metric labels as ours (InvalidRequest.label).
        KNOWN_FIELDS.update(self.fields, elsewhere)

    def reject_unknown(self, fields: Mapping[str, Any]) -> None:
        """Before any other check, so that a misspelt key is what the error names (not a check its absence
        failed), with the closest of the object's fields first."""
        unknown = sorted(set(fields) - set(self.fields))
        if unknown:
            raise unknown_key(unknown[0], self.fields)

    def request(self, fields: Mapping[str, Any], limits: Limits, images_before: int = 0,
                settled: Mapping[str, Any] | None = None) -> TextToImageRequest:
        """One request from the API's fields, plus `settled`: values the dialect has translated itself, by our
        wire names (such as the aspect ratio of a size)."""
        unknown = sorted(set(fields) - set(self.ours))  # the dialect has taken its own fields out
        if unknown:
            raise unknown_key(unknown[0], self.fields)
        parameters = {self.ours[name]: value for name, value in fields.items() if name != "prompt"}
        try:
            request = from_fields(fields.get("prompt"), {**parameters, **(settled or {})})
            limits.check(request, images_before, "")
        except InvalidRequest as error:
            raise InvalidRequest(self.theirs.get(error.field, error.field), error.reason, error.http_status) from None
        return request


def choose(value: Any, field: str, allowed: Iterable[str]) -> str:
    """`value` if it is one of `allowed`, which the error lists otherwise."""
    allowed = list(allowed)
    if not isinstance(value, str) or value not in allowed:
        raise InvalidRequest(field, f"must be one of {', '.join(allowed)}; got {excerpt(value)}")
    return value


def json_object(value: Any, field: str) -> dict:
    if not isinstance(value, dict):
        raise InvalidRequest(field, f"must be a JSON object, got {excerpt(value)}")
    return value
