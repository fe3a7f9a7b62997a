"""LoRA adapters resident in the base: loaded from the deployment's folder (weights/lora_files.py) when first asked for.

A request names adapters by file stem, and a name is only ever looked up in that folder; a name the replica does
not know re-lists it, so an adapter copied or trained into it is served without a restart. Loaded adapters
stay resident as peft adapters of the base pipeline (its UNet, and its text encoders when the file
trains them), up to a limit past which the least recently used one is deleted; each batch switches to
its own adapters and scales, or turns them all off. The base's weights are never fused or reloaded.

What is served is what is on disk: before each use a resident adapter's file is looked at (one stat: its
inode, size and modification time), and one replaced since it was loaded (retrained with overwrite, copied
over, renamed into place) is loaded again.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from pathlib import Path

from ..weights.lora_files import SUFFIX, LoraFolder

log = logging.getLogger(__name__)
DEFAULT_MAX_LORAS = 8


class ResidentAdapters:
    """The adapters loaded into a pipeline, most recently used last; at most `limit` of them."""

    def __init__(self, pipeline, folder: Path | None, limit: int):
        self.pipeline, self.folder, self.limit = pipeline, folder, limit
        self.files = LoraFolder(folder)
        self._loaded: OrderedDict[str, tuple | None] = OrderedDict()  # name -> its file's identity when loaded

    @property
    def names(self) -> tuple[str, ...]:
        """The adapters in the folder, as last listed."""
        return self.files.names

    @property
    def loaded(self) -> list[str]:
        return list(self._loaded)

    def use(self, names: tuple[str, ...], scales: tuple[float, ...]) -> None:
        """Make `names` at `scales` the active adapters of the next batch; none turns every adapter off."""
        if not names:
            if self._loaded:  # diffusers refuses to disable what was never loaded
                self.pipeline.disable_lora()
            return
        for name in names:
            self._load(name, keep=names)
        self.pipeline.enable_lora()
        self.pipeline.set_adapters(list(names), adapter_weights=list(scales))

    def _load(self, name: str, keep: tuple[str, ...]) -> None:
        path = self.folder / f"{name}{SUFFIX}" if self.folder else None
        if name in self._loaded:
            if self._loaded[name] == _identity(path):
                self._loaded.move_to_end(name)
                return
            self.pipeline.delete_adapters(name)
            del self._loaded[name]
            log.info("the LoRA adapter %s changed on disk since it was loaded: loading it again", name)
        if not self.files.has(name):  # requests are checked against the folder; this guards the engine itself
            raise ValueError(f"no LoRA adapter named {name!r} in {self.folder}")
        while len(self._loaded) >= self.limit:
            evicted = next(loaded for loaded in self._loaded if loaded not in keep)
            self.pipeline.delete_adapters(evicted)
            del self._loaded[evicted]
            log.info("unloaded the LoRA adapter %s (least recently used)", evicted)
        identity = _identity(path)  # before reading it: a file replaced during the load is loaded again next time
        self.pipeline.load_lora_weights(str(path), adapter_name=name)
        self._loaded[name] = identity
        log.info("loaded the LoRA adapter %s (%d resident)", name, len(self._loaded))


def _identity(path: Path | None) -> tuple | None:
    """What changes when a file is replaced or rewritten: its inode, size and modification time; None: gone."""
    try:
        stat = os.stat(path)
    except (OSError, TypeError):
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns
