"""LoRA adapter files: `<name>.safetensors` in a folder, a request naming one by its file stem."""

from __future__ import annotations

import re
from pathlib import Path

# A file stem and nothing else: no path separator, no "..", no scheme.
PLAIN_NAME = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
SUFFIX = ".safetensors"


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
