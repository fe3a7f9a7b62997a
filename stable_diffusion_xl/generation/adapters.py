"""LoRA adapters resident in the base: loaded from the deployment's folder (weights/lora_files.py) when first asked for.

A request names adapters by file stem, and a name is only ever looked up in that folder; a name the replica does
not know re-lists it, so an adapter copied or trained into it is served without a restart. Loaded adapters
stay resident as peft adapters of the base pipeline (its UNet, and its text encoders when the file
trains them), up to a limit past which the least recently used one is deleted; each batch switches to
its own adapters and scales, or turns them all off. The base's weights are never fused or reloaded.
"""

from __future__ import annotations

import logging
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
        self._loaded: OrderedDict[str, None] = OrderedDict()

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
        if name in self._loaded:
            self._loaded.move_to_end(name)
            return
        if not self.files.has(name):  # requests are checked against the folder; this guards the engine itself
            raise ValueError(f"no LoRA adapter named {name!r} in {self.folder}")
        while len(self._loaded) >= self.limit:
            evicted = next(loaded for loaded in self._loaded if loaded not in keep)
            self.pipeline.delete_adapters(evicted)
            del self._loaded[evicted]
            log.info("unloaded the LoRA adapter %s (least recently used)", evicted)
        self.pipeline.load_lora_weights(str(self.folder / f"{name}{SUFFIX}"), adapter_name=name)
        self._loaded[name] = None
        log.info("loaded the LoRA adapter %s (%d resident)", name, len(self._loaded))
