"""The docs' tables (docs/apis.md, docs/settings.md), written from the declarations they document so the two
cannot drift."""

from __future__ import annotations

import json

from .generation.request import MAX_PROMPT_CHARS, PARAMETERS
from .serving.environment import declared
from .serving.settings import Settings

_JSON_TYPES = {"str": "string", "int": "integer", "float": "number", "bool": "boolean", "bool | None": "boolean",
               "float | None": "number",
               "tuple[str, ...]": "string or array", "tuple[float, ...]": "number or array"}


def parameter_table() -> str:
    """The request fields: from TextToImageRequest."""
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
            allowed = {"bool | None": "true, false", "str": f"up to {MAX_PROMPT_CHARS} characters",
                       "tuple[str, ...]": "adapters the deployment has (the GET status lists them)"}[spec.type]
        default = meta["shown"] or f"`{json.dumps(spec.default)}`"
        rows.append(f"| `parameter.{name}` | {_JSON_TYPES[spec.type]} | {default} | {allowed} "
                    f"| {meta['description']} |")
    return "\n".join(rows)


def settings_table() -> str:
    """The SDXL_* variables: from Settings and Limits."""
    rows = ["| variable | default | allowed | meaning |", "|---|---|---|---|"]
    for spec in declared(Settings):
        meta = spec.metadata
        if meta["shown"]:
            default = meta["shown"]
        elif spec.type == "bool":
            default = "on" if spec.default else "off"
        else:
            default = str(spec.default)
        allowed = meta["allowed"] or {"bool": "1, 0 (or true/false, yes/no, on/off)", "Path": "a folder",
                                      "Path | None": "a folder"}.get(spec.type) or \
            f"{meta['minimum']} to {meta['maximum']}"
        rows.append(f"| `{meta['variable']}` | {default} | {allowed} | {meta['meaning']} |")
    return "\n".join(rows)
