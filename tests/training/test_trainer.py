"""Training a LoRA on the demo weights: what it writes, that it learned, that the engine serves it by name, and
that a cancelled, crashed or refused run leaves the LoRA folder as it was."""

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from helpers import request, training_photo
from stable_diffusion_xl.fields import InvalidRequest
from stable_diffusion_xl.generation.engine import Engine
from stable_diffusion_xl.training.loop import crop, encode, load_pipeline, mean_loss
from stable_diffusion_xl.training.options import TrainingOptions
from stable_diffusion_xl.training.photos import Photo, PhotoError
from stable_diffusion_xl.training.trainer import NameTaken, NotMadeHere, TrainingCancelled, train
from stable_diffusion_xl.weights.layout import WeightPaths
from stable_diffusion_xl.weights.lora_files import available

# The demo UNet is random: 20 steps at the default 1e-4 move its loss by less than 0.1%; 1e-3 by about 2%.
LEARNING_RATE = 1e-3


@pytest.fixture(scope="module")
def photos():
    return [Photo.of_image(f"photo-{index}.jpg", training_photo(index)) for index in range(6)]


@pytest.fixture(scope="module")
def paths(weights_dir):
    return WeightPaths.locate(weights_dir, demo=True)


@pytest.fixture(scope="module")
def trained(paths, photos, tmp_path_factory):
    """A 20-step training on 6 photos, into a LoRA folder of its own."""
    lora_dir = tmp_path_factory.mktemp("loras")
    steps = []
    options = TrainingOptions(name="subject", token="zqx", class_word="disc", steps=20, learning_rate=LEARNING_RATE)
    result = train(paths, lora_dir, photos, options, on_step=lambda *step: steps.append(step))
    return SimpleNamespace(result=result, lora_dir=lora_dir, steps=steps, options=options)


def folder_state(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, hidden ones included, with its bytes."""
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def test_a_training_writes_the_adapter_and_its_json_and_nothing_else(trained):
    result, lora_dir = trained.result, trained.lora_dir
    assert sorted(folder_state(lora_dir)) == ["subject.json", "subject.safetensors"]
    assert result.adapter == lora_dir / "subject.safetensors"
    metadata = json.loads((lora_dir / "subject.json").read_text())
    assert metadata == result.metadata
    assert {key: metadata[key] for key in ("token", "caption", "steps", "rank", "photos", "resolution")} == {
        "token": "zqx", "caption": "a photo of zqx disc", "steps": 20, "rank": 32, "photos": 6, "resolution": 256}
    assert metadata["first_loss"] > 0 and metadata["last_loss"] > 0 and metadata["seconds"] > 0
    assert [step[:2] for step in trained.steps] == [(step, 20) for step in range(1, 21)]
    assert metadata["first_loss"] == round(trained.steps[0][2], 6)


def test_the_adapter_is_in_diffusers_lora_format_on_the_unets_attention(trained):
    weights = load_file(trained.result.adapter)
    assert weights and all(key.startswith("unet.") and ".lora." in key for key in weights)
    projections = {key.split(".lora.")[0].rsplit(".", 1)[-1] for key in weights}
    assert projections == {"to_q", "to_k", "to_v", "0"}  # to_out.0
    assert available(trained.lora_dir) == ("subject",)


def test_the_training_loss_on_the_photos_is_lower_with_the_adapter(trained, paths, photos):
    """The same noises and timesteps, the base UNet with and without the adapter loaded as the serving path
    loads one (pipeline.load_lora_weights)."""
    pipeline = load_pipeline(paths, "cpu", torch.float32)
    examples = encode(pipeline, [crop(photo, 256, trained.options.caption) for photo in photos], embed=True)
    without = mean_loss(pipeline, examples)
    pipeline.load_lora_weights(str(trained.result.adapter), adapter_name="subject")
    assert mean_loss(pipeline, examples) < without


def test_the_engine_loads_the_adapter_by_name_and_its_image_differs_from_the_bases(trained, weights_dir):
    engine = Engine.load(weights_dir, demo=True, lora_dir=trained.lora_dir)
    assert engine.adapters.names == ("subject",)
    prompt = "a photo of zqx disc on a table"
    base = engine.generate([request(prompt, seed=5, steps=3)])[0].images[0]
    adapted = engine.generate([request(prompt, seed=5, steps=3, lora="subject")])[0].images[0]
    assert adapted.tobytes() != base.tobytes()


@pytest.fixture
def existing(trained, tmp_path):
    """A LoRA folder that already holds a good adapter named "subject"."""
    for name in ("subject.safetensors", "subject.json"):
        shutil.copyfile(trained.lora_dir / name, tmp_path / name)
    return tmp_path


def test_a_cancelled_run_leaves_no_file_and_keeps_the_adapter_it_would_replace(paths, photos, existing):
    before = folder_state(existing)
    steps = []
    options = TrainingOptions(name="subject", steps=10, overwrite=True, checkpoint_every=2)
    with pytest.raises(TrainingCancelled):
        train(paths, existing, photos, options, on_step=lambda *step: steps.append(step),
              should_stop=lambda: len(steps) >= 3)
    assert len(steps) == 3  # it stopped at the next step, and checkpoints were written meanwhile
    assert folder_state(existing) == before


def test_a_run_that_crashes_midway_keeps_the_adapter_and_leaves_only_its_checkpoint(paths, photos, existing):
    before = folder_state(existing)

    def crash(step, total, loss):
        if step == 3:
            raise RuntimeError("the machine went away")

    options = TrainingOptions(name="subject", steps=10, overwrite=True, checkpoint_every=2)
    with pytest.raises(RuntimeError, match="went away"):
        train(paths, existing, photos, options, on_step=crash)
    after = folder_state(existing)
    assert {name: after[name] for name in before} == before
    assert sorted(set(after) - set(before)) == [".training/subject/checkpoint.json", ".training/subject/checkpoint.pt"]
    assert available(existing) == ("subject",)


@pytest.mark.slow  # trains or generates again: kept out of `make test-fast`
def test_a_resumed_run_ends_with_exactly_the_adapter_of_an_uninterrupted_one(paths, photos, tmp_path):
    options = TrainingOptions(name="whole", steps=6, checkpoint_every=2, learning_rate=LEARNING_RATE)
    whole = load_file(train(paths, tmp_path / "whole", photos, options).adapter)

    def crash(step, total, loss):
        if step == 5:
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        train(paths, tmp_path / "resumed", photos, options, on_step=crash)
    steps = []
    result = train(paths, tmp_path / "resumed", photos, TrainingOptions(**{**vars(options), "resume": True}),
                   on_step=lambda *step: steps.append(step[0]))
    assert steps == [5, 6]  # from the checkpoint at step 4
    resumed = load_file(result.adapter)
    assert resumed.keys() == whole.keys() and all(torch.equal(resumed[key], whole[key]) for key in whole)
    assert not (tmp_path / "resumed" / ".training").exists()


def test_resuming_with_other_options_is_refused(paths, photos, tmp_path):
    def crash(step, total, loss):
        if step == 2:  # after the checkpoint of step 1
            raise RuntimeError("interrupted")

    options = TrainingOptions(name="changed", steps=4, checkpoint_every=1)
    with pytest.raises(RuntimeError):
        train(paths, tmp_path, photos, options, on_step=crash)
    with pytest.raises(InvalidRequest) as error:
        train(paths, tmp_path, photos, TrainingOptions(**{**vars(options), "rank": 8, "resume": True}))
    assert error.value.field == "resume" and "made with rank 32" in error.value.reason


def test_a_taken_name_is_refused_before_any_work(photos, existing):
    nowhere = WeightPaths(*(Path("/nonexistent") / part for part in ("base", "refiner", "vae")), demo=True)
    with pytest.raises(NameTaken) as error:
        train(nowhere, existing, photos, TrainingOptions(name="subject"))
    assert error.value.field == "name" and "is taken" in error.value.reason


def test_too_few_photos_and_resuming_nothing_are_refused_before_any_work(paths, photos, tmp_path):
    with pytest.raises(PhotoError, match="3 photos at least"):
        train(paths, tmp_path, photos[:2], TrainingOptions(name="few"))
    with pytest.raises(InvalidRequest) as error:
        train(paths, tmp_path, photos, TrainingOptions(name="fresh", resume=True))
    assert error.value.field == "resume" and "no checkpoint" in error.value.reason
    assert folder_state(tmp_path) == {}


@pytest.mark.slow  # trains or generates again: kept out of `make test-fast`
def test_gradient_checkpointing_trains_the_same_adapter(paths, photos, tmp_path):
    """What a GPU under 70 GiB turns on (recomputing each block's forward in the backward pass) changes nothing
    but memory and time."""
    options = TrainingOptions(name="same", steps=3, learning_rate=LEARNING_RATE)
    plain = load_file(train(paths, tmp_path / "plain", photos, options).adapter)
    checkpointed = load_file(train(paths, tmp_path / "checkpointed", photos, options,
                                   gradient_checkpointing=True).adapter)
    assert plain.keys() == checkpointed.keys()
    assert all(torch.allclose(plain[key].float(), checkpointed[key].float(), atol=1e-3) for key in plain)


@pytest.mark.slow  # trains or generates again: kept out of `make test-fast`
def test_training_the_text_encoders_too_writes_their_layers_and_the_engine_serves_them(paths, photos, tmp_path,
                                                                                     weights_dir):
    options = TrainingOptions(name="both", steps=2, rank=4, train_text_encoder=True, learning_rate=LEARNING_RATE)
    result = train(paths, tmp_path, photos, options)
    assert {key.split(".")[0] for key in load_file(result.adapter)} == {"unet", "text_encoder", "text_encoder_2"}
    engine = Engine.load(weights_dir, demo=True, lora_dir=tmp_path)
    engine.generate([request("a photo of TOK person", seed=5, steps=2, lora="both")])
    assert set(engine.base.text_encoder.peft_config) == set(engine.base.text_encoder_2.peft_config) == {"both"}


def test_overwriting_only_its_own_never_replaces_an_adapter_another_origin_made(photos, existing):
    """The queue trains with only_own: an adapter the train command (or an operator) put there stays, even where
    it appeared after the training was queued."""
    before = folder_state(existing)
    nowhere = WeightPaths(*(Path("/nonexistent") / part for part in ("base", "refiner", "vae")), demo=True)
    with pytest.raises(NotMadeHere) as error:
        train(nowhere, existing, photos, TrainingOptions(name="subject", overwrite=True),
              origin="training over HTTP", only_own=True)
    assert error.value.field == "overwrite" and "not made by a training over HTTP" in error.value.reason
    assert folder_state(existing) == before
