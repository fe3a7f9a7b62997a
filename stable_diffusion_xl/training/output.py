"""What a training leaves in the LoRA folder: `<name>.safetensors` (diffusers' LoRA format, as the serving path
loads it) and `<name>.json` beside it, each written whole to a temporary file and renamed into place; and, while
it runs, its resumable checkpoint in the hidden `.training/<name>/` there, removed when it succeeds or is
cancelled.

A crash leaves the LoRA folder's adapters as they were (and the checkpoint, for `--resume`, or for the next
training over HTTP of that name from the same photos and options); an adapter is only ever replaced by a complete
one. A checkpoint nothing resumed is removed after STALE_CHECKPOINT_S (`remove_stale`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..fields import InvalidRequest, excerpt
from ..weights.atomic import atomically
from ..weights.lora_files import SIDECAR, SUFFIX, sidecar
from .photos import Photo

WORK_SUBDIR = ".training"  # hidden: lora_files.available() lists plain names only
UPLOADS_SUBDIR = ".uploads"  # hidden too: the photos of trainings over HTTP, staged for their tasks
STALE_CHECKPOINT_S = 24 * 3600  # a killed run's checkpoint, kept this long for a run to resume it


class NameTaken(InvalidRequest):
    """An adapter of that name is in the LoRA folder, and the options do not say to overwrite it."""

    def __init__(self, name: str):
        super().__init__("name", f"{excerpt(name)} is taken: the LoRA folder has an adapter of that name; choose "
                                 "another name, or set the overwrite option")


class NotMadeHere(InvalidRequest):
    """`overwrite` would replace an adapter that another origin made (an operator's, say)."""

    def __init__(self, name: str, origin: str):
        super().__init__("overwrite", f"the adapter {excerpt(name)} was not made by a {origin}, and only those are "
                                      "replaced by one: choose another name")


def check_name(lora_dir: Path, name: str, *, overwrite: bool, only_origin: str | None = None) -> None:
    """The rule for a training's name: free, or taken and `overwrite` on, and then (with `only_origin`) taken by an
    adapter whose JSON says `only_origin` made it. Asked before a training is queued or started, and again as its
    adapter is renamed into place."""
    if not adapter_path(lora_dir, name).exists():
        return
    if not overwrite:
        raise NameTaken(name)
    if only_origin is not None and (sidecar(lora_dir, name) or {}).get("origin") != only_origin:
        raise NotMadeHere(name, only_origin)


def adapter_path(lora_dir: Path, name: str) -> Path:
    return lora_dir / f"{name}{SUFFIX}"


def metadata_path(lora_dir: Path, name: str) -> Path:
    return lora_dir / f"{name}{SIDECAR}"


class Workspace:
    """`lora_dir/.training/<name>/`: one run's checkpoint, and its files until they are renamed into place."""

    def __init__(self, lora_dir: Path, name: str, signature: dict | None = None):
        self.lora_dir, self.name = Path(lora_dir), name
        self.signature = signature or {}  # what must match for a later run to resume from this one's checkpoint
        self.folder = self.lora_dir / WORK_SUBDIR / name
        self.checkpoint = self.folder / "checkpoint.pt"
        self.checkpoint_info = self.folder / "checkpoint.json"  # step and options, read without torch.load

    def prepare(self, *, resume: bool | None) -> int:
        """The step a run starts at: 0, after removing a stale checkpoint, or the checkpoint's step with `resume`
        (InvalidRequest when there is none, or it was made with other options). `resume=None`: the checkpoint's
        step when there is one of the same options and photos, else 0."""
        if resume is None:
            try:
                return self.prepare(resume=True)
            except InvalidRequest:
                resume = False
        if not resume:
            self.clear()
            return 0
        try:
            info = json.loads(self.checkpoint_info.read_text())
        except (OSError, ValueError):
            raise InvalidRequest("resume", f"no checkpoint of {excerpt(self.name)} to resume from in "
                                           f"{self.folder.parent}") from None
        changed = sorted(key for key in self.signature if info["signature"].get(key) != self.signature[key])
        if changed:
            was = ", ".join(f"{key} {info['signature'].get(key)!r}" for key in changed)
            raise InvalidRequest("resume", f"the checkpoint of {excerpt(self.name)} was made with {was}; resume with "
                                           "the same options and photos, or start over without resume")
        return int(info["step"])

    def save(self, state: dict) -> None:
        """A checkpoint: LoRA weights, optimizer and step; the previous one stays until this one is whole."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomically(self.checkpoint) as path:
            torch.save(state, path)
        with atomically(self.checkpoint_info) as path:
            path.write_text(json.dumps({"step": state["step"], "signature": self.signature}))

    def load(self) -> dict | None:
        if not self.checkpoint.is_file():
            return None
        return torch.load(self.checkpoint, map_location="cpu", weights_only=True)

    def publish(self, write_adapter: Callable[[Path], None], metadata: dict, *, overwrite: bool,
                only_origin: str | None = None) -> Path:
        """Write the adapter (by `write_adapter(path)`) and its JSON into the LoRA folder, each renamed into place
        once whole: the JSON first, so that a listed adapter always has its JSON."""
        target = adapter_path(self.lora_dir, self.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomically(target) as adapter, atomically(metadata_path(self.lora_dir, self.name)) as meta:
            write_adapter(adapter)
            meta.write_text(json.dumps(metadata, indent=2) + "\n")
            # Again: another run, or an operator, may have taken the name meanwhile.
            check_name(self.lora_dir, self.name, overwrite=overwrite, only_origin=only_origin)
        return target

    def clear(self) -> None:
        """Remove this run's folder, and `.training/` when no other run has one."""
        shutil.rmtree(self.folder, ignore_errors=True)
        try:
            self.folder.parent.rmdir()
        except OSError:  # absent, or other runs' folders in it
            pass


def stage_photos(lora_dir: Path, training_id: str, photos: list[Photo]) -> Path:
    """Checked `photos` written to `lora_dir/.uploads/<training_id>/` for a training's task to read, wherever it runs
    (the LoRA folder is shared with the nodes that train: they write their adapters there), so that they cross the
    cluster as files, not as a copy in each process's memory. Written whole, or not at all."""
    folder = Path(lora_dir) / UPLOADS_SUBDIR / training_id
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{training_id}.", dir=folder.parent))
    try:
        for index, photo in enumerate(photos):
            (staging / f"{index:04d}").write_bytes(photo.data)
        manifest = [{"name": photo.name, "size": photo.size, "caption": photo.caption} for photo in photos]
        (staging / "photos.json").write_text(json.dumps(manifest))
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def staged_photos(folder: Path) -> list[Photo]:
    """The photos `stage_photos` wrote, as they were checked: read again, not checked again."""
    manifest = json.loads((folder / "photos.json").read_text())
    return [Photo(entry["name"], (folder / f"{index:04d}").read_bytes(), tuple(entry["size"]), entry["caption"])
            for index, entry in enumerate(manifest)]


def remove_stale(lora_dir: Path, *, training: set[str], staged: set[str], older_than_s: float = STALE_CHECKPOINT_S
                 ) -> None:
    """Remove what runs that ended without finishing (killed, lost with their node) left and nothing used for
    `older_than_s`: their checkpoints, but those of the names in `training`, and their staged photos, but those of
    the trainings in `staged`."""
    for subdir, keep in ((WORK_SUBDIR, training), (UPLOADS_SUBDIR, staged)):
        for folder in (Path(lora_dir) / subdir).glob("*"):
            try:
                idle = time.time() - max(path.stat().st_mtime for path in [folder, *folder.iterdir()])
            except OSError:  # removed meanwhile
                continue
            if folder.name not in keep and idle > older_than_s:
                shutil.rmtree(folder, ignore_errors=True)
