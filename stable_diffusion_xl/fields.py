"""The ground floor every layer stands on: the error a caller can act on, and how an error quotes the caller.

Errors quote user values only as short, escaped excerpts, so an error fits in a gRPC status and a hostile value is
never sent back, logged or used as a metric label whole. An error names its field; logs and metrics name it only
by a name some module declared (`KNOWN_FIELDS`), never by the caller's text.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable
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
