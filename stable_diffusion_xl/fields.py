"""The ground floor every layer stands on: typed fields, the error a caller can act on, and how an error quotes
the caller.

A field is declared once, with `declare(KIND, default, description, ...)`: the request's parameters, the training
options and the SDXL_* settings alike. Its `Spec` is what every surface reads: the check of a value, a value from
JSON (which carries every number as a double) and from text (an environment variable, a form field, a
command-line argument), the command line's option, and the docs' row.

Errors quote user values only as short, escaped excerpts, so an error fits in a gRPC status and a hostile value is
never sent back, logged or used as a metric label whole. An error names its field; logs and metrics name it only
by a name some module declared (`KNOWN_FIELDS`), never by the caller's text.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EXCERPT_CHARS = 24
# Every name an error's field may end in, added by the modules that declare fields (the request, the dialects,
# trainings); anything else is the caller's text (see InvalidRequest.label).
KNOWN_FIELDS: set[str] = set()


class UserError(Exception):
    """An error its user can act on (a request, a setting, the machine): its message says what to change. The
    command line prints it as it is, with no traceback."""


class InvalidRequest(UserError, ValueError):
    """A request field is missing, of the wrong type or out of range; `http_status` is 400 unless the
    whole HTTP request is refused (404 route, 405 method, 413 body size)."""

    def __init__(self, field_name: str, reason: str, http_status: int = 400, retry_after_s: int | None = None):
        super().__init__(f"{field_name}: {reason}")
        self.field, self.reason, self.http_status = field_name, reason, http_status
        self.retry_after_s = retry_after_s  # when the same call may succeed later (HTTP 429's Retry-After)

    def within(self, prefix: str) -> InvalidRequest:
        """The same error, with the field named from an enclosing object."""
        return InvalidRequest(f"{prefix}{self.field}", self.reason, self.http_status, self.retry_after_s)

    @property
    def label(self) -> str:
        """The field's name for logs and metric labels: a known name, never user text."""
        leaf = re.sub(r"\[\d+\]", "", self.field).rsplit(".", 1)[-1]
        return leaf if leaf in KNOWN_FIELDS else "unknown-key"


def excerpt(value: Any) -> str:
    """A value as an error may quote it: short, escaped, ASCII; containers are only described."""
    if isinstance(value, str):
        shown = value[:EXCERPT_CHARS]
        # Escaped (control characters, lone surrogates, anything not ASCII), a character can take 12: keep the
        # excerpt itself short too.
        while len(json.dumps(shown)) > 2 * EXCERPT_CHARS + 2:
            shown = shown[:-1]
        quoted = json.dumps(shown)
        return quoted if shown == value else f"{quoted[:-1]}...\" ({len(value)} characters)"
    if isinstance(value, list):
        return f"a list of {len(value)} items"
    if isinstance(value, dict):
        return f"an object with {len(value)} keys"
    if isinstance(value, int) and value.bit_length() > 64:  # Python's int() refuses to print past 4300 digits
        return f"an integer of {value.bit_length()} bits"
    text = json.dumps(value)  # numbers, true/false, null; NaN and Infinity as JavaScript spells them
    return text if len(text) <= EXCERPT_CHARS else f"{text[:EXCERPT_CHARS]}... ({len(text)} digits)"


def key_name(name: str) -> str:
    """A key of the caller's, as an error names it: plain names as they are, anything else excerpted."""
    return name if re.fullmatch(r"[A-Za-z0-9_-]{1,40}", name) else excerpt(name)


def unknown_key(name: str, known: Iterable[str], kind: str = "parameter") -> InvalidRequest:
    """The error for a key nobody reads: the known names closest to it first (a typo's fix), then all of them."""
    known = list(dict.fromkeys(known))
    spelled = {_spelling(option): option for option in known}
    # Long keys are hostile or no typo: no suggestion (and no quadratic comparison).
    close = difflib.get_close_matches(_spelling(name), spelled, n=3, cutoff=0.6) if len(name) <= 40 else []
    hint = f"did you mean {' or '.join(f'`{spelled[match]}`' for match in close)}? " if close else ""
    return InvalidRequest(key_name(name), f"unknown {kind}; {hint}known: {', '.join(known)}")


def _spelling(name: str) -> str:
    """A name as a typo compares: case, dashes and underscores differ between dialects, not between meanings."""
    return name.lower().replace("-", "_")


def check_text(name: str, text: str) -> None:
    """JSON can carry half of a UTF-16 pair ("\\ud800"), which no tokenizer can read."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(name, "must be valid Unicode text; it holds a lone surrogate (e.g. \\ud800)") from None


# Flags as environment variables and forms write them, in any case.
FLAG_VALUES = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
_INTEGER = re.compile(r"[+-]?\d{1,20}")


def integer(text: str) -> int:
    """An integer as forms and command lines write one: digits with an optional sign (not 2.0, not 1e3)."""
    if not _INTEGER.fullmatch(text.strip()):
        raise ValueError(text)
    return int(text)


def _flag(text: str) -> bool:
    return FLAG_VALUES[text.strip().lower()]  # KeyError: not a flag


@dataclass(frozen=True)
class Kind:
    """What a field's values are: how an error and a JSON schema name them, which Python values are of the kind,
    and how text becomes one (raising ValueError or KeyError when it is none)."""

    described: str  # "an integer"
    plural: str  # "integers", for a field that takes a list
    json_type: str
    accepts: Callable[[Any], bool]
    parse: Callable[[str], Any]

    def read(self, text: str) -> Any:
        """A value from text (an environment variable, a form field); text that is not one of the kind stays
        text, for a check to name."""
        try:
            return self.parse(text)
        except (ValueError, KeyError):
            return text


# bool is an int in Python; a JSON true must not pass as n=1.
INTEGER = Kind("an integer", "integers", "integer", lambda value: type(value) is int, integer)
NUMBER = Kind("a number", "numbers", "number", lambda value: isinstance(value, (int, float)) and
              not isinstance(value, bool), float)
FLAG = Kind("true or false", "true or false", "boolean", lambda value: isinstance(value, bool), _flag)
TEXT = Kind("a string", "strings", "string", lambda value: isinstance(value, str), str)
FOLDER = Kind("a folder", "folders", "string", lambda value: isinstance(value, Path), Path)


@dataclass(frozen=True)
class Spec:
    """One declared field: its kind, range or choices and description. `listed`: one value or a list of them,
    kept as a tuple. `shown` is its default as the docs write it and `allowed` its values, where the kind and the
    range would not say. A setting has its environment `variable`; a `secret` one is never in a repr or an error."""

    kind: Kind
    description: str
    optional: bool = False  # None is a value: the field's default is worked out later
    listed: bool = False
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    shown: str | None = None
    allowed: str | None = None
    variable: str | None = None
    secret: bool = False

    @property
    def described(self) -> str:
        """The kind as an error names it."""
        return f"{self.kind.described} or a list of {self.kind.plural}" if self.listed else self.kind.described

    @property
    def json_type(self) -> str:
        return f"{self.kind.json_type} or array" if self.listed else self.kind.json_type

    def values_allowed(self) -> str:
        """What a value may be, as an error or a docs row says it: "an integer from 1 to 64", "one of ..."."""
        if self.allowed:
            return self.allowed
        if self.choices:
            return f"one of {', '.join(self.choices)}"
        if self.kind is FLAG:
            return f"one of {', '.join(FLAG_VALUES)}"
        if self.minimum is not None:
            return f"{self.described} {_bounds(self.minimum, self.maximum)}"
        return self.described

    def check(self, name: str, value: Any) -> None:
        """The value against the kind, the range and the choices; errors name the field `name`."""
        if value is None and self.optional:
            return
        for item in value if self.listed and isinstance(value, tuple) else (value,):
            self._check_one(name, item)

    def _check_one(self, name: str, value: Any) -> None:
        if not self.kind.accepts(value):
            raise InvalidRequest(name, f"must be {self.described}, got {excerpt(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidRequest(name, f"must be a finite number, got {excerpt(value)}")
        if isinstance(value, str):
            check_text(name, value)
        if self.choices and value not in self.choices:
            raise InvalidRequest(name, f"must be one of {', '.join(self.choices)}; got {excerpt(value)}")
        if (self.minimum is not None and value < self.minimum) or (self.maximum is not None and value > self.maximum):
            raise InvalidRequest(name, f"must be {_bounds(self.minimum, self.maximum)}, got {excerpt(value)}")

    def from_json(self, value: Any) -> Any:
        """JSON and protobuf Struct carry every number as a double: 2.0 is the integer 2 for an integer field, and
        an integer is a float for a number field. Anything else stays as it is, for `check` to name."""
        if self.kind is INTEGER and isinstance(value, float) and value.is_integer():
            return int(value)
        if self.kind is NUMBER and type(value) is int and value.bit_length() < 64:
            return float(value)  # larger integers stay integers, for the range check to name (float() would overflow)
        return value

    def from_text(self, text: str) -> Any:
        """A value from text (an environment variable, a form field, a command-line argument); text that is not
        one of the kind stays text, for `check` to name. An optional field's empty text is None."""
        if text.strip() == "" and self.optional:
            return None
        return self.kind.read(text)


def declare(kind: Kind, default: Any, description: str, *, listed: bool = False, minimum: float | None = None,
            maximum: float | None = None, choices: tuple[str, ...] | None = None, shown: str | None = None,
            allowed: str | None = None, variable: str | None = None, secret: bool = False) -> Any:
    """A dataclass field of `kind` and its Spec. None as the default makes it optional. A secret is left out of the
    dataclass's repr, so that no log line prints it."""
    spec = Spec(kind, description, optional=default is None, listed=listed, minimum=minimum, maximum=maximum,
                choices=choices, shown=shown, allowed=allowed, variable=variable, secret=secret)
    return dataclasses.field(default=default, repr=not secret, metadata={"spec": spec})


def spec_of(field: dataclasses.Field) -> Spec | None:
    """The Spec `declare` gave a dataclass field; None for a field declared otherwise."""
    return field.metadata.get("spec")


def wire_name(field: dataclasses.Field) -> str:
    return field.name.replace("_", "-")


def _bounds(minimum, maximum) -> str:
    return f"from {minimum} to {maximum}" if maximum is not None else f"at least {minimum}"
