"""Where SDXL's weights live and which files of them we need (weights/fetch.py fetches exactly those).

`weights/manifest.json` lists, per model folder, the Hugging Face repository and the files
the loader reads: the fp16 safetensors and their configs, with no duplicate formats (ONNX,
OpenVINO, Flax, .bin, single-file checkpoints). The refiner folder holds only its UNet and
scheduler because it shares the base's text_encoder_2, tokenizer_2 and VAE. Entries marked
`"optional": true` (the safety checker) are fetched only when asked for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..fields import UserError

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_WEIGHTS_DIR = REPO_ROOT / "weights"
MANIFEST = DEFAULT_WEIGHTS_DIR / "manifest.json"
BASE, REFINER, VAE_FP16_FIX = "stable-diffusion-xl-base-1.0", "stable-diffusion-xl-refiner-1.0", "sdxl-vae-fp16-fix"
SAFETY_CHECKER = "stable-diffusion-safety-checker"  # optional: needed only when the safety filter is on
DEMO_SUBDIR = "demo"
COMPILE_CACHE_SUBDIR = "compile-cache"  # torch's compiled artifacts, beside the models
LORA_SUBDIR = "loras"  # LoRA adapters, beside the models of a weights folder (demo ones under demo/)
FETCH_COMMAND = "python -m stable_diffusion_xl fetch-weights"
# SDXL's own scheduler configuration (base and refiner share it): the deployment's is read from its weights.
SDXL_SCHEDULER_CONFIG = {
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
    "steps_offset": 1, "timestep_spacing": "leading", "prediction_type": "epsilon", "interpolation_type": "linear",
    "use_karras_sigmas": False,
}


class WeightsMissing(UserError, FileNotFoundError):
    """The weights the engine was asked to load are not on disk."""


@dataclass(frozen=True)
class Source:
    folder: str
    repo_id: str
    revision: str
    files: tuple[str, ...]
    optional: bool = False  # fetched only when asked for (fetch's include_optional)


def load_manifest(path: Path = MANIFEST) -> dict[str, Source]:
    """Every entry of the manifest, the optional ones included."""
    entries = json.loads(path.read_text())["models"]
    return {
        entry["folder"]: Source(entry["folder"], entry["repo_id"], entry["revision"], tuple(entry["files"]),
                                bool(entry.get("optional", False)))
        for entry in entries
    }


@dataclass(frozen=True)
class WeightPaths:
    base: Path
    refiner: Path
    vae_fp16_fix: Path
    demo: bool

    @property
    def loras(self) -> Path:
        return self.base.parent / LORA_SUBDIR

    @property
    def compile_cache(self) -> Path:
        """Where a compiled engine keeps its compile cache by default (`compile-cache` command, SDXL_COMPILE_CACHE)."""
        return self.base.parent / COMPILE_CACHE_SUBDIR

    @property
    def safety_checker(self) -> Path:
        """The optional safety checker's folder, beside the models (demo/stable-diffusion-safety-checker for the
        demo weights). `locate` does not require it: only a deployment with the safety filter on loads it."""
        return self.base.parent / SAFETY_CHECKER

    @classmethod
    def locate(cls, weights_dir: Path | str = DEFAULT_WEIGHTS_DIR, *, demo: bool = False) -> WeightPaths:
        """The model folders to load, failing with the command that fetches them when they are absent."""
        root = Path(weights_dir) / DEMO_SUBDIR if demo else Path(weights_dir)
        paths = cls(root / BASE, root / REFINER, root / VAE_FP16_FIX, demo)
        missing = [str(p) for p in (paths.base, paths.refiner) if not (p / "model_index.json").is_file()]
        if missing:
            how = ("build them with `python -m stable_diffusion_xl demo-weights`" if demo else
                   f"fetch the real weights (about 12 GB) with `{FETCH_COMMAND}`, or try the tiny random demo "
                   "weights (their images are noise) with `--demo` on the command line, SDXL_DEMO_WEIGHTS=1 for a "
                   "deployment")
            raise WeightsMissing(f"no SDXL weights in {', '.join(missing)}: {how}")
        return paths
