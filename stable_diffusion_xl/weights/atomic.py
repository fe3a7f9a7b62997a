"""Files that readers see whole or not at all: the compile cache's artifacts, a training's checkpoints and the
adapters it publishes, read by replicas that may run on other nodes and as another user."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomically(target: Path) -> Iterator[Path]:
    """A temporary path beside `target` to write to. Leaving the block, it is flushed to disk, made readable by all
    (0644: mkstemp's 0600 would hide it from a replica running as another user) and renamed over `target`; on an
    error it is removed, and `target` is as it was."""
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
