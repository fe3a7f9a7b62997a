"""LoRA adapter files: `<name>.safetensors` in a folder, a request naming one by its file stem, and the optional
`<name>.json` beside it (a training writes one) that gives its trigger token."""

from __future__ import annotations

import json
import re
from pathlib import Path

# A file stem and nothing else: no path separator, no "..", no scheme.
PLAIN_NAME = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
SUFFIX = ".safetensors"
SIDECAR = ".json"
MAX_SIDECAR_BYTES = 64 << 10  # a training's metadata is a few hundred bytes; a larger file is not one


def is_plain_name(name: str) -> bool:
    return len(name) <= 100 and PLAIN_NAME.fullmatch(name) is not None


def available(folder: Path | None) -> tuple[str, ...]:
    """The adapters in `folder`, by name; none when there is no folder."""
    if folder is None or not folder.is_dir():
        return ()
    return tuple(sorted(path.stem for path in folder.glob(f"*{SUFFIX}") if path.is_file() and is_plain_name(path.stem)))


def described(names: tuple[str, ...]) -> str:
    """Adapters as an error names them: how many, and the first five."""
    return f"{len(names)} ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})"


def sidecar(folder: Path | None, name: str) -> dict | None:
    """What `<name>.json` says of the adapter, or None: no such file, a large one, or one that is not a JSON object."""
    if folder is None:
        return None
    try:
        with open(folder / f"{name}{SIDECAR}", "rb") as file:
            text = file.read(MAX_SIDECAR_BYTES + 1)
        metadata = json.loads(text) if len(text) <= MAX_SIDECAR_BYTES else None
    except (OSError, ValueError, RecursionError):
        return None
    return metadata if isinstance(metadata, dict) else None


def trigger_token(folder: Path | None, name: str) -> str | None:
    """The trigger token `<name>.json` names, or None."""
    token = (sidecar(folder, name) or {}).get("token")
    return token if isinstance(token, str) and 0 < len(token) <= 100 else None


class LoraFolder:
    """The adapters of a folder, listed at start and again when a request names one not on the list, or when the
    status is read: an adapter that appears (a training renames its file into place) is served without a restart,
    and a known name costs no look at the folder."""

    def __init__(self, folder: Path | None):
        self.folder = folder
        self.names = available(folder)

    def has(self, name: str) -> bool:
        if name not in self.names and is_plain_name(name):
            self.relist()
        return name in self.names

    def relist(self) -> tuple[str, ...]:
        self.names = available(self.folder)
        return self.names

    def trigger_tokens(self) -> dict[str, str]:
        """Each listed adapter's trigger token, for those whose `<name>.json` gives one."""
        tokens = {name: trigger_token(self.folder, name) for name in self.names}
        return {name: token for name, token in tokens.items() if token}
