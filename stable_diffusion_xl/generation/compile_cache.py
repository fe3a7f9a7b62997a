"""The compile cache (SDXL_COMPILE_CACHE): what torch compiled during one warm-up, loaded by the next replica instead
of compiling it again.

torch.compiler.save_cache_artifacts() serialises the artifacts inductor made in this process (its FX graph cache,
AOT autograd cache and autotuning results); load_cache_artifacts() puts them back into inductor's local caches, so
the next compile of the same graph is a cache hit: dynamo still traces the blocks (seconds), inductor generates and
builds no code. Artifacts are only valid for what made them, so each sub-folder is named by a key: torch and triton
versions, the device (GPU name and compute capability, or cpu), the compiled networks' configs and dtype, the mode
and the backend. A cache for another key is not read; inductor checks its own keys besides, so a stale artifact is
a miss, never a wrong kernel.

    <cache>/<key name>/key.json        the key, and the size and sha256 of artifacts.bin
    <cache>/<key name>/artifacts.bin   what save_cache_artifacts() returned

Both are written to a temporary file and renamed, artifacts first: key.json's checksum commits them. A damaged
entry (bad bytes, cut short, unreadable) is skipped with one log line, and the replica compiles without it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
from pathlib import Path

import torch

from ..weights.atomic import atomically

log = logging.getLogger(__name__)
FORMAT = 1  # of this folder layout


def cache_key(networks, *, device: str, mode: str, backend: str) -> dict:
    """What compiled artifacts depend on. `networks`: the compiled models (diffusers ModelMixins)."""
    import diffusers

    if device == "cuda":
        index = torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        device_name = f"{torch.cuda.get_device_name(index)} sm{major}{minor}"
    else:
        device_name = device
    configs = [{name: value for name, value in network.config.items() if not name.startswith("_")}
               for network in networks]  # `_name_or_path` is where the weights were read from: not what they are
    return {
        "format": FORMAT, "torch": torch.__version__, "triton": _triton_version(), "python": platform.python_version(),
        "diffusers": diffusers.__version__, "device": device_name, "mode": mode, "backend": backend,
        "dtype": str(networks[0].dtype).removeprefix("torch."),
        "networks": hashlib.sha256(json.dumps(configs, sort_keys=True, default=str).encode()).hexdigest()[:16],
    }


class CompileCache:
    """One key's entry in a cache folder: `load()` before the first compile, `save()` after the warm-up."""

    def __init__(self, root: Path, key: dict):
        self.root, self.key = Path(root), key
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
        device = "".join(c if c.isalnum() else "-" for c in key["device"].lower())
        self.folder = self.root / f"torch-{key['torch']}-{device}-{key['mode']}-{digest}".replace("+", "-")
        self.loaded = False

    def load(self) -> bool:
        """Put this key's artifacts into inductor's caches. False, with one log line saying why, when there are none
        or they cannot be used; never raises."""
        try:
            entry = json.loads((self.folder / "key.json").read_text())
        except FileNotFoundError:
            log.info("compile cache: %s; compiling, and saving there after the warm-up", self._why_none())
            return False
        except (OSError, ValueError) as error:
            return self._skip(f"its key.json is unreadable ({type(error).__name__})")
        if not isinstance(entry, dict) or entry.get("key") != self.key:
            return self._skip("its key.json does not hold this replica's key")
        try:
            artifacts = (self.folder / "artifacts.bin").read_bytes()
        except OSError as error:
            return self._skip(f"artifacts.bin is unreadable ({type(error).__name__})")
        if len(artifacts) != entry.get("bytes") or hashlib.sha256(artifacts).hexdigest() != entry.get("sha256"):
            return self._skip(f"artifacts.bin is damaged ({len(artifacts)} bytes, not the {entry.get('bytes')} "
                              "key.json records, or another checksum)")
        try:
            info = torch.compiler.load_cache_artifacts(artifacts)
        except Exception as error:  # noqa: BLE001 - a cache must never stop a replica
            return self._skip(f"torch could not load it ({type(error).__name__})")
        if info is None or info.empty():  # torch logs what it could not read, and returns nothing
            return self._skip("torch could not load it (no artifacts read)")
        counts = {kind: len(keys) for kind, keys in info.artifacts.items()}
        log.info("compile cache: loaded %s (%.1f MB) from %s", counts, len(artifacts) / 1e6, self.folder)
        self.loaded = True
        return True

    def save(self) -> Path | None:
        """Write what this process compiled, atomically. The path of the artifacts, or None when there was nothing
        to save or the folder cannot be written (one log line)."""
        saved = torch.compiler.save_cache_artifacts()
        if saved is None or not saved[0]:
            log.info("compile cache: nothing to save (backend %s makes no artifacts)", self.key["backend"])
            return None
        artifacts = saved[0]
        entry = {"key": self.key, "bytes": len(artifacts), "sha256": hashlib.sha256(artifacts).hexdigest()}
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with atomically(self.folder / "artifacts.bin") as path:
                path.write_bytes(artifacts)
            with atomically(self.folder / "key.json") as path:
                path.write_text(json.dumps(entry, indent=1))
        except OSError as error:
            log.warning("compile cache: cannot write %s (%s): the next replica compiles again", self.folder, error)
            return None
        log.info("compile cache: saved %.1f MB to %s", len(artifacts) / 1e6, self.folder)
        return self.folder / "artifacts.bin"

    def _skip(self, reason: str) -> bool:
        log.warning("compile cache: skipping %s: %s; compiling without it", self.folder, reason)
        return False

    def _why_none(self) -> str:
        """Why there is no entry for this key: an empty folder, or entries made for something else (which)."""
        others = []
        for path in sorted(self.root.glob("*/key.json")):
            try:
                key = json.loads(path.read_text())["key"]
                others.append(", ".join(f"{name} {key.get(name)} (here {value})" for name, value in self.key.items()
                                        if key.get(name) != value))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                others.append(f"{path.parent.name} unreadable")
        if not others:
            return f"{self.root} holds no entry"
        return f"no entry in {self.root} for this replica; its entries were made for: {'; '.join(others)}"


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__
