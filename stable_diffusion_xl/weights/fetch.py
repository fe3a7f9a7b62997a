"""Fetching the manifest's files, and single LoRA adapters, from the Hugging Face hub."""

from __future__ import annotations

from pathlib import Path

from .layout import DEFAULT_WEIGHTS_DIR, MANIFEST, Source, load_manifest
from .lora_files import SUFFIX, is_plain_name


def sources_to_fetch(sources: dict[str, Source], include_optional: bool = False) -> list[Source]:
    """The manifest entries a fetch downloads: the required ones, and the optional ones too when asked."""
    return [source for source in sources.values() if include_optional or not source.optional]


def select_files(source: Source, repo_files: list[str]) -> list[str]:
    """The repository files a fetch takes: the manifest's, each of which the repository must have."""
    missing = sorted(set(source.files) - set(repo_files))
    if missing:
        raise ValueError(f"{source.repo_id}@{source.revision} lacks {', '.join(missing)}")
    return [name for name in repo_files if name in source.files]


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
