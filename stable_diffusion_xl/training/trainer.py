"""train(): photos and options in, a LoRA adapter and its JSON in the LoRA folder out. Ray-free with one worker;
with several, the same loop runs under Ray Train (distributed.py) on the Ray this process is connected to.

    photos = read_photos(Path("photos/"))
    result = train(WeightPaths.locate(), Path("weights/loras"), photos, TrainingOptions(name="me"))
    # then a request with "lora": "me" and a prompt holding the token: "a photo of TOK person on a beach"
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ..weights.layout import WeightPaths
from .loop import Fitted, TrainingCancelled, crop, fit, native_resolution
from .options import TrainingOptions
from .output import NameTaken, NotMadeHere, Workspace, check_name, metadata_path
from .photos import Photo, check_count

__all__ = ["NameTaken", "NotMadeHere", "TrainingCancelled", "TrainingResult", "train"]


@dataclass(frozen=True)
class TrainingResult:
    name: str
    adapter: Path  # <lora_dir>/<name>.safetensors
    metadata: dict  # what <lora_dir>/<name>.json holds

    @property
    def metadata_file(self) -> Path:
        return metadata_path(self.adapter.parent, self.name)


def train(weights: WeightPaths, lora_dir: Path, photos: list[Photo], options: TrainingOptions, *,
          on_step: Callable[[int, int, float], None] | None = None,
          should_stop: Callable[[], bool] | None = None,
          gradient_checkpointing: bool | None = None, origin: str = "train command", only_own: bool = False,
          resume_matching: bool = False) -> TrainingResult:
    """Train a LoRA adapter named `options.name` on `photos` and publish it in `lora_dir`.

    on_step(step, total_steps, loss) follows every step; should_stop() is asked before each: when it says True
    the run stops, removes its checkpoint and raises TrainingCancelled, leaving `lora_dir` as it was. A taken
    name (without options.overwrite) raises NameTaken, and too few photos PhotoError, before any work.
    `gradient_checkpointing` None: on for a GPU with under 70 GiB (loop.CHECKPOINTING_BELOW_BYTES). `origin` goes
    into the adapter's JSON (what made it); with `only_own`, overwrite replaces only an adapter that `origin` made
    (NotMadeHere otherwise). `resume_matching`: continue from a checkpoint of this name when it was
    made from the same photos and options, as if options.resume were set, and start over otherwise."""
    started = time.perf_counter()
    only_origin = origin if only_own else None
    check_name(Path(lora_dir), options.name, overwrite=options.overwrite, only_origin=only_origin)
    check_count(len(photos))
    workspace = Workspace(Path(lora_dir), options.name)
    resolution = options.resolution or native_resolution(weights)
    total = options.total_steps(len(photos))
    workspace.signature = {
        "photos": len(photos), "photos_sha256": photos_digest(photos), "steps": total, "rank": options.rank,
        "learning-rate": options.learning_rate,
        "resolution": resolution, "seed": options.seed, "train-text-encoder": options.train_text_encoder,
        "workers": options.workers, "caption": options.caption,
    }
    start_step = workspace.prepare(resume=None if resume_matching and not options.resume else options.resume)
    crops = [crop(photo, resolution, options.caption) for photo in photos]
    try:
        if options.workers > 1:
            from .distributed import fit_on_ray

            fitted = fit_on_ray(weights, crops, options, total, workspace, on_step=on_step, should_stop=should_stop,
                                gradient_checkpointing=gradient_checkpointing)
        else:
            fitted = fit(weights, crops, options, total, checkpoints=workspace, on_step=on_step,
                         should_stop=should_stop, gradient_checkpointing=gradient_checkpointing)
    except TrainingCancelled:
        workspace.clear()
        raise
    metadata = describe(weights, photos, options, fitted, seconds=time.perf_counter() - started,
                        resumed_at=start_step) | {"origin": origin}
    adapter = workspace.publish(lambda path: save_adapter(fitted, path), metadata, overwrite=options.overwrite,
                                only_origin=only_origin)
    workspace.clear()
    return TrainingResult(options.name, adapter, metadata)


def save_adapter(fitted: Fitted, path: Path) -> None:
    """diffusers' LoRA file, as its training scripts write one: what pipeline.load_lora_weights reads."""
    from diffusers import StableDiffusionXLPipeline

    StableDiffusionXLPipeline.save_lora_weights(path.parent, weight_name=path.name, **fitted.layers,
                                                **fitted.adapter_metadata)


def photos_digest(photos: list[Photo]) -> str:
    """The photos' files and captions, as one hash: a checkpoint resumes only on the photos it was made from."""
    digest = hashlib.sha256()
    for photo in photos:
        for part in (photo.name.encode("utf-8", "surrogatepass"), photo.data, (photo.caption or "").encode()):
            digest.update(len(part).to_bytes(8, "big") + part)
    return digest.hexdigest()


def describe(weights: WeightPaths, photos: list[Photo], options: TrainingOptions, fitted: Fitted, *,
             seconds: float, resumed_at: int) -> dict:
    """The adapter's JSON: how to use it (token, caption) and how it was made."""
    return {
        "name": options.name, "token": options.token, "class_word": options.class_word, "caption": options.caption,
        "usage": {"lora": options.name, "prompt": f"{options.caption}, ..."},
        "base": weights.base.name, "demo_weights": weights.demo,
        "photos": len(photos), "captioned_photos": sum(photo.caption is not None for photo in photos),
        "steps": fitted.steps, "resumed_at_step": resumed_at, "rank": options.rank,
        "learning_rate": options.learning_rate, "resolution": fitted.resolution, "seed": options.seed,
        "train_text_encoder": options.train_text_encoder, "workers": options.workers,
        "first_loss": round(fitted.first_loss, 6), "last_loss": round(fitted.last_loss, 6),
        "seconds": round(seconds, 1), "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }

