"""Where SDXL's weights live, which files of them we need, and fetching exactly those.

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

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WEIGHTS_DIR = REPO_ROOT / "weights"
MANIFEST = DEFAULT_WEIGHTS_DIR / "manifest.json"
BASE, REFINER, VAE_FP16_FIX = "stable-diffusion-xl-base-1.0", "stable-diffusion-xl-refiner-1.0", "sdxl-vae-fp16-fix"
SAFETY_CHECKER = "stable-diffusion-safety-checker"  # optional: needed only when the safety filter is on
DEMO_SUBDIR = "demo"
LORA_SUBDIR = "loras"  # LoRA adapters, beside the models of a weights folder (demo ones under demo/)
FETCH_COMMAND = "python -m stable_diffusion_xl fetch-weights"


class WeightsMissing(FileNotFoundError):
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


def sources_to_fetch(sources: dict[str, Source], include_optional: bool = False) -> list[Source]:
    """The manifest entries a fetch downloads: the required ones, and the optional ones too when asked."""
    return [source for source in sources.values() if include_optional or not source.optional]


def select_files(source: Source, repo_files: list[str]) -> list[str]:
    """The repository files a fetch takes: the manifest's, each of which the repository must have."""
    missing = sorted(set(source.files) - set(repo_files))
    if missing:
        raise ValueError(f"{source.repo_id}@{source.revision} lacks {', '.join(missing)}")
    return [name for name in repo_files if name in source.files]


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
                   f"fetch the real weights (about 12 GB) with `{FETCH_COMMAND}`, or ask for the tiny "
                   "random demo weights explicitly (their images are noise)")
            raise WeightsMissing(f"no SDXL weights in {', '.join(missing)}: {how}")
        return paths


def fetch(weights_dir: Path | str = DEFAULT_WEIGHTS_DIR, manifest: Path = MANIFEST, *,
          include_optional: bool = False) -> int:
    """Download the manifest's files into `weights_dir`; resumable, and HF_TOKEN is honoured. Returns bytes on disk.
    Optional entries (the safety checker) are fetched only with `include_optional`."""
    from huggingface_hub import HfApi, snapshot_download

    api, total = HfApi(), 0
    for source in sources_to_fetch(load_manifest(manifest), include_optional):
        target = Path(weights_dir) / source.folder
        repo_files = api.list_repo_files(source.repo_id, revision=source.revision)
        files = select_files(source, repo_files)
        print(f"fetching {len(files)} files of {source.repo_id}@{source.revision} into {target}")
        snapshot_download(source.repo_id, revision=source.revision, allow_patterns=files, local_dir=target)
        size = sum((target / name).stat().st_size for name in files)
        total += size
        for name in files:
            print(f"  {name:55s} {(target / name).stat().st_size / 1e6:10.1f} MB")
        print(f"  {source.folder}: {size / 1e9:.2f} GB")
    print(f"fetched {total / 1e9:.2f} GB into {weights_dir}")
    return total


def fetch_lora(repo_id: str, lora_dir: Path, filename: str | None = None, name: str | None = None,
               revision: str | None = None) -> Path:
    """One LoRA file of a hub repository into `lora_dir` as `<name>.safetensors` (by default the file's stem).
    Without `filename` the repository must hold exactly one .safetensors file. Resumable; HF_TOKEN is honoured."""
    from huggingface_hub import HfApi, hf_hub_download

    from .loras import SUFFIX, is_plain_name

    if filename is None:
        candidates = [f for f in HfApi().list_repo_files(repo_id, revision=revision) if f.endswith(SUFFIX)]
        if len(candidates) != 1:
            raise ValueError(f"{repo_id} holds {len(candidates)} {SUFFIX} files ({', '.join(candidates[:10])}); "
                             "choose one with --lora-file")
        filename = candidates[0]
    if not filename.endswith(SUFFIX):
        raise ValueError(f"{filename} is not a {SUFFIX} file; adapters are loaded from safetensors only")
    name = name or Path(filename).name[: -len(SUFFIX)]
    if not is_plain_name(name):
        raise ValueError(f"{name!r} is no plain adapter name (letters, digits, - _ .); give one with --lora-name")
    # Partial downloads are kept in lora_dir/.cache (left out of the image), so a rerun resumes.
    downloaded = Path(hf_hub_download(repo_id, filename, revision=revision, local_dir=lora_dir))
    target = Path(lora_dir) / f"{name}{SUFFIX}"
    if downloaded != target:
        downloaded.replace(target)
    print(f"fetched {repo_id}/{filename} into {target} ({target.stat().st_size / 1e6:.1f} MB); "
          f"requests name it \"{name}\"")
    return target
