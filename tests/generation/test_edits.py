"""Image-to-image and inpainting in the engine, on the demo weights: the same modules as text-to-image, the
ensemble of experts over the last `strength` of the schedule, seeds, batching, the kept pixels of a mask."""

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import ROUNDING, count_unet_calls, max_pixel_difference, nan_decodes, request, write_flagging_checker
from stable_diffusion_xl.generation.pictures import fit_picture
from stable_diffusion_xl.generation.results import Cancelled, Progress
from stable_diffusion_xl.generation.safety import SafetyChecker
from stable_diffusion_xl.weights.layout import WeightPaths

SIZE = (256, 256)  # the demo weights' native 1:1 size: an input of this size is used pixel for pixel
PHOTO = Image.fromarray(np.random.default_rng(2).integers(0, 256, (*SIZE, 3), dtype=np.uint8))
MASK = Image.new("L", SIZE, 0)
MASK.paste(255, (64, 64, 192, 160))
KEPT = np.asarray(MASK) < 128
EDIT = {"steps": 6, "image": PHOTO}  # 0.8 of 6 steps: 4 calls, 2 base and 2 refiner


def parameters(module) -> dict[int, torch.dtype]:
    return {parameter.data_ptr(): parameter.dtype for parameter in module.parameters()}


def test_edit_pipelines_run_on_the_very_modules_of_text_to_image_so_no_weight_is_loaded_twice(engine):
    modules = {id(module) for pipeline in (engine.base, engine.refiner) for module in pipeline.components.values()
               if isinstance(module, torch.nn.Module)}
    weights = {}
    for pipeline in (engine.base, engine.refiner):
        for module in pipeline.components.values():
            if isinstance(module, torch.nn.Module):
                weights |= parameters(module)
    for mode, expert, pipeline in [(mode, expert, pipeline) for mode, pair in engine.pipelines.items()
                                   for expert, pipeline in zip(("base", "refiner"), pair)]:
        for name, module in pipeline.components.items():
            if isinstance(module, torch.nn.Module):
                assert id(module) in modules, f"{mode} {expert}'s {name} is a module of its own"
                assert parameters(module).items() <= weights.items(), f"{mode} {expert}'s {name}: other weights"
    assert engine.base.unet.dtype == engine.refiner.unet.dtype == torch.float32  # no cast on the way


def test_image_to_image_equals_diffusers_ensemble_of_experts_called_on_the_pipelines(engine):
    ours = engine.generate([request(seed=4, **EDIT)])[0]
    base, refiner = engine.pipelines["image-to-image"]
    generator = [torch.Generator("cpu").manual_seed(4)]
    common = {"prompt": ["a cat napping"], "num_inference_steps": 6, "guidance_scale": 7.5, "generator": generator}
    with torch.inference_mode():  # diffusers' documented recipe, the picture given as a picture
        latents = base(**common, image=PHOTO, strength=0.8, denoising_end=0.8, output_type="latent").images
        theirs = refiner(**common, image=latents, denoising_start=0.8).images[0]
    assert ours.images[0].tobytes() == theirs.tobytes(), max_pixel_difference(ours.images[0], theirs)
    assert ours.refined and (ours.width, ours.height) == SIZE


def test_inpainting_keeps_the_unmasked_pixels_exactly_and_repaints_the_masked_ones(engine):
    generation = engine.generate([request(seed=5, mask=MASK, **EDIT)])[0]
    out, photo = np.asarray(generation.images[0]), np.asarray(PHOTO)
    assert np.array_equal(out[KEPT], photo[KEPT])
    assert (out[~KEPT] != photo[~KEPT]).any(axis=-1).mean() > 0.9
    assert generation.refined


def test_same_seed_same_bytes_other_seed_other_bytes(engine):
    first, again, other = (engine.generate([request(seed=seed, mask=MASK, **EDIT)])[0].images[0].tobytes()
                           for seed in (9, 9, 10))
    assert first == again != other


@pytest.mark.parametrize(("strength", "calls"), [(1.0, (8, 2)), (0.5, (3, 2)), (0.3, (1, 2)), (0.2, (0, 2))])
def test_strength_picks_the_last_part_of_the_schedule_and_the_refiner_keeps_its_part(engine, strength, calls):
    # 10 steps of euler are the timesteps 901, 801, ..., 1; the base hands off at 200, after 8 of them. An edit
    # runs the last `strength` of them; below the hand-off, the refiner alone.
    run = lambda: engine.generate([request(steps=10, strength=strength, image=PHOTO)])  # noqa: E731
    assert count_unet_calls(engine, run) == dict(zip(("base", "refiner"), calls))


@pytest.mark.parametrize("strength", [0.0, 0.1])  # 0.1 of 6 steps is no whole step
def test_strength_zero_or_a_strength_without_a_whole_step_returns_the_input_with_no_unet_call(engine, strength):
    results = []
    calls = count_unet_calls(engine, lambda: results.extend(
        engine.generate([request(strength=strength, mask=MASK, **EDIT)])))
    assert calls == {"base": 0, "refiner": 0}
    assert results[0].images[0].tobytes() == PHOTO.tobytes() and not results[0].refined


def test_a_picture_of_another_size_is_made_at_its_nearest_native_size(engine):
    wide = PHOTO.resize((300, 200))  # 3:2
    generation = engine.generate([request(steps=2, strength=0.0, image=wide)])[0]
    assert (generation.width, generation.height) == generation.images[0].size == (304, 208)
    assert generation.images[0].tobytes() == fit_picture(wide, (304, 208)).tobytes()


@pytest.mark.slow  # trains or generates again: kept out of `make test-fast`
def test_requests_with_other_pictures_share_a_batch_and_each_equals_its_solo_result(engine):
    other = PHOTO.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    batch = [request(seed=3, mask=MASK, **EDIT), request(seed=3, **{**EDIT, "image": other}, mask=MASK)]
    together = []
    calls = count_unet_calls(engine, lambda: together.extend(engine.generate(batch)))
    assert calls == {"base": 3, "refiner": 2}  # one batch of both: 0.85 of 6 steps
    for req, generation in zip(batch, together, strict=True):
        assert max_pixel_difference(generation.images[0], engine.generate([req])[0].images[0]) <= ROUNDING
    assert together[0].images[0].tobytes() != together[1].images[0].tobytes()


def test_an_edit_never_shares_a_batch_with_text_to_image_or_another_strength(engine):
    batch = [request(steps=6, seed=1), request(seed=1, **EDIT), request(seed=1, strength=0.5, **EDIT)]
    calls = count_unet_calls(engine, lambda: engine.generate(batch))
    assert calls == {"base": 4 + 2 + 1, "refiner": 2 + 2 + 2}


def test_progress_counts_every_step_and_cancelling_stops_an_edit(engine):
    progress = Progress()
    engine.generate([request(seed=2, mask=MASK, **EDIT)], progress)
    assert progress.steps == progress.total == 5
    cancelled, calls = Progress(), []

    def cancel(*_):
        calls.append(1)
        cancelled.cancel()

    hook = engine.base.unet.register_forward_hook(cancel)
    try:
        with pytest.raises(Cancelled):
            engine.generate([request(seed=2, **EDIT)], cancelled)
    finally:
        hook.remove()
    assert len(calls) == 1


def test_long_prompts_and_lora_adapters_apply_to_edits(engine):
    plain = engine.generate([request(seed=6, refiner=False, **EDIT)])[0].images[0].tobytes()
    styled = engine.generate([request(seed=6, refiner=False, lora="demo-style", **EDIT)])[0].images[0].tobytes()
    assert styled != plain  # the adapter is in the base's UNet, which the edit pipelines share
    long = request(" ".join(["a cat napping on a sunny windowsill"] * 20), seed=6, **EDIT)  # compel's chunks
    generation = engine.generate([long])[0]
    assert generation.tokens["prompt"] > 75 and len(generation.images) == 1


@pytest.mark.slow  # trains or generates again: kept out of `make test-fast`
def test_a_nan_decode_and_an_out_of_memory_batch_are_recovered_as_in_text_to_image(engine, monkeypatch):
    expected = engine.generate([request(seed=7, n=2, mask=MASK, **EDIT)])[0]
    nan_decodes(engine, monkeypatch)["left"] = 1

    def out_of_memory_above_one_image(_module, args, kwargs):
        if (args[0] if args else kwargs["sample"]).shape[0] > 2:  # x2: guidance
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    hook = engine.base.unet.register_forward_pre_hook(out_of_memory_above_one_image, with_kwargs=True)
    try:
        recovered = engine.generate([request(seed=7, n=2, mask=MASK, **EDIT)])[0]
    finally:
        hook.remove()
    assert recovered.events["oom_splits"] == 1 and recovered.events["nan_redecodes"] == 1
    for image, reference in zip(recovered.images, expected.images, strict=True):
        assert max_pixel_difference(image, reference) <= ROUNDING


@pytest.mark.slow  # trains or generates again: kept out of `make test-fast`
def test_the_safety_checker_filters_an_edited_image_as_a_generated_one(engine, weights_dir, tmp_path, monkeypatch):
    edit = request(seed=12, n=2, strength=1.0, **EDIT)  # redrawn whole: the two images differ enough for CLIP
    flagged, other = engine.generate([edit])[0].images
    folder = write_flagging_checker(tmp_path / "checker", flagged, [other],
                                    source=WeightPaths.locate(weights_dir, demo=True).safety_checker)
    monkeypatch.setattr(engine, "safety_checker", SafetyChecker.load(folder, engine.device, torch.float32))
    generation = engine.generate([edit])[0]
    assert generation.filtered == [True, False] and generation.safety_checked
    assert generation.images[0].getextrema() == ((0, 0),) * 3 and generation.images[1].tobytes() == other.tobytes()
