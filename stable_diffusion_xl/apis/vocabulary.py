"""How another API names the request's fields. The peer dialects build their `TextToImageRequest`s through
a `Vocabulary`, so that they share the request's own checks and the deployment's limits, and so that every
error names the field as the caller spelled it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..fields import KNOWN_FIELDS, InvalidRequest, excerpt, unknown_key
from ..generation.modes import PICTURES, PIL_MODES
from ..generation.pictures import read_pictures
from ..generation.request import PARAMETERS, TextToImageRequest, from_fields, text_only

if TYPE_CHECKING:
    from ..serving.limits import Limits


class Vocabulary:
    def __init__(self, renamed: Mapping[str, str], *, without: Iterable[str] = (), own: Iterable[str] = (),
                 elsewhere: Iterable[str] = (), pictures: bool = False):
        """`renamed` maps the API's names to our wire names; SDXL's other parameters, which the API has no name
        for, are taken by ours in snake_case, except those `without` (which the API sets another way). `own`
        are the API's other fields in the same object, which it reads itself; `elsewhere` its names in other
        objects of the body. With `pictures` the API takes an edit's pictures (modes.PICTURES, renamed as it names
        them): data URIs or base64, decoded with the deployment's upload limits, or pictures decoded already."""
        self.to_ours = {"prompt": "prompt", **renamed}  # the API's names -> ours
        self.pictures = pictures
        taken = {*self.to_ours.values(), *without}
        wires = [*PARAMETERS, *(PICTURES if pictures else ())]
        self.to_ours |= {wire.replace("-", "_"): wire for wire in wires if wire not in taken}
        self.to_theirs = {wire: name for name, wire in self.to_ours.items()}
        self.fields = list(dict.fromkeys([*self.to_ours, *own]))  # every field of the object, as a hint lists them
        # Names of the API's own are as safe in logs and metric labels as ours (InvalidRequest.label).
        KNOWN_FIELDS.update(self.fields, elsewhere)

    def reject_unknown(self, fields: Mapping[str, Any]) -> None:
        """Before any other check, so that a misspelt key is what the error names (not a check its absence
        failed), with the closest of the object's fields first."""
        self._refuse_pictures(fields)
        unknown = sorted(set(fields) - set(self.fields))
        if unknown:
            raise unknown_key(unknown[0], self.fields)

    def _refuse_pictures(self, fields: Mapping[str, Any]) -> None:
        """A picture sent to a text-only API is named as such, not as an unknown key."""
        for name in PICTURES:
            if name in fields and not self.pictures and name not in self.fields:
                raise text_only(name)

    def request(self, fields: Mapping[str, Any], limits: Limits, images_before: int = 0,
                settled: Mapping[str, Any] | None = None) -> TextToImageRequest:
        """One request from the API's fields, plus `settled`: values the dialect has translated itself, by our
        wire names (such as the aspect ratio of a size)."""
        self._refuse_pictures(fields)
        unknown = sorted(set(fields) - set(self.to_ours))  # the dialect has taken its own fields out
        if unknown:
            raise unknown_key(unknown[0], self.fields)
        if self.pictures:
            fields = read_pictures(fields, limits.uploads,
                                   {self.to_theirs[name]: mode for name, mode in PIL_MODES.items()})
        parameters = {self.to_ours[name]: value for name, value in fields.items() if name != "prompt"}
        try:
            request = from_fields(fields.get("prompt"), {**parameters, **(settled or {})}, pictures=self.pictures)
            limits.check(request, images_before, "")
        except InvalidRequest as error:
            named = self.to_theirs.get(error.field, error.field)
            raise InvalidRequest(named, error.reason, error.http_status) from None
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
