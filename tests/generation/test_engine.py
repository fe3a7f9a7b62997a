"""The engine on demo weights: loading from disk, the ensemble of experts, seeds, sizes, batching."""

import pytest
import torch

from helpers import ROUNDING, count_unet_calls, max_pixel_difference, pixels, request
from stable_diffusion_xl.generation.request import MAX_SEED, TextToImageRequest
from stable_diffusion_xl.generation.results import Cancelled, Progress
from stable_diffusion_xl.generation.sizes import NATIVE_SIZES


def test_pipelines_load_from_disk_and_share_text_encoder_2_and_vae(engine):
    assert engine.refiner.text_encoder_2 is engine.base.text_encoder_2
    assert engine.refiner.tokenizer_2 is engine.base.tokenizer_2
    assert engine.refiner.vae is engine.base.vae is engine.vae
    assert engine.refiner.text_encoder is None
    assert engine.device == "cpu" and engine.base.unet.dtype == engine.refiner.unet.dtype
    assert engine.resolution == 256  # the demo UNet's native size: a quarter of SDXL's 1024


def test_ensemble_splits_40_steps_into_32_base_and_8_refiner_unet_calls(engine):
    calls = count_unet_calls(engine, lambda: engine.generate([TextToImageRequest(prompt="a cat napping")]))
    assert calls == {"base": 32, "refiner": 8}


def raw_diffusers_ensemble_of_experts(engine, req: TextToImageRequest) -> list:
    """diffusers' documented ensemble of experts, called directly on the engine's loaded pipelines.

    The prompt goes in as a list of n, as the engine encodes it: with `num_images_per_prompt=n`
    diffusers encodes it once and repeats it, and text_encoder_2's pooled embedding at batch 1
    differs from batch n in the last bit (~2e-7), which moves some pixels by one level.
    """
    generators = [torch.Generator("cpu").manual_seed(req.seed + i) for i in range(req.n)]
    common = {"prompt": [req.prompt] * req.n, "num_inference_steps": req.steps, "guidance_scale": req.guidance_scale}
    if req.negative_prompt:  # without one, diffusers' default (None) gives SDXL's zero embeddings
        common["negative_prompt"] = [req.negative_prompt] * req.n
    with torch.inference_mode():
        latents = engine.base(
            **common, width=256, height=256, denoising_end=req.high_noise_frac, generator=generators,
            output_type="latent",
        ).images
        return engine.refiner(
            **common, image=latents, denoising_start=req.high_noise_frac, generator=generators, output_type="pil"
        ).images


@pytest.mark.parametrize(
    "req",
    [request(seed=11), request("a lighthouse at dusk", seed=12, negative_prompt="blurry, low quality"),
     request("a red fox", seed=13, n=2)],
    ids=["plain", "negative_prompt", "n=2"],
)
def test_images_equal_the_raw_diffusers_ensemble_of_experts_pixel_for_pixel(engine, req):
    ours = engine.generate([req])[0]
    theirs = raw_diffusers_ensemble_of_experts(engine, req)
    assert ours.seeds == [req.seed + i for i in range(req.n)]
    assert len(ours.images) == len(theirs) == req.n
    for image, raw in zip(ours.images, theirs, strict=True):
        assert image.size == raw.size == (256, 256)  # the demo UNet's native square size
        assert image.tobytes() == raw.tobytes(), f"max pixel difference {max_pixel_difference(image, raw)}"


def test_base_only_runs_all_40_steps_on_the_base(engine):
    run = lambda: engine.generate([TextToImageRequest(prompt="a cat napping", refiner=False)])  # noqa: E731
    assert count_unet_calls(engine, run) == {"base": 40, "refiner": 0}


@pytest.mark.parametrize(("fields", "base_calls"), [({"steps": 1}, 1), ({"steps": 2, "scheduler": "heun"}, 3)],
                         ids=["1 step", "heun 2 steps"])
def test_steps_that_leave_the_refiner_none_run_the_base_alone_and_say_so(engine, fields, base_calls):
    results = []
    calls = count_unet_calls(engine, lambda: results.extend(engine.generate([request(seed=5, **fields)])))
    assert calls == {"base": base_calls, "refiner": 0}
    assert results[0].refined is False and len(results[0].images) == 1
    alone = engine.generate([request(seed=5, refiner=False, **fields)])[0]
    assert results[0].images[0].tobytes() == alone.images[0].tobytes()
    assert engine.generate([request(seed=5)])[0].refined is True  # FAST's 5 steps: 4 base, 1 refiner


def test_same_seed_gives_identical_bytes_and_other_seeds_differ(engine):
    first, again, other = (engine.generate([request(seed=seed)])[0] for seed in (7, 7, 8))
    assert first.images[0].tobytes() == again.images[0].tobytes()
    assert first.images[0].tobytes() != other.images[0].tobytes()
    assert (first.seeds, other.seeds) == ([7], [8])


def test_image_i_of_n_is_the_single_image_of_seed_plus_i(engine):
    three = engine.generate([request(seed=100, n=3)])[0]
    assert three.seeds == [100, 101, 102]
    for i, image in enumerate(three.images):
        alone = engine.generate([request(seed=100 + i)])[0].images[0]
        assert max_pixel_difference(image, alone) <= ROUNDING
    assert three.images[0].tobytes() != three.images[1].tobytes()


def test_seed_zero_picks_a_fresh_seed_and_reports_it(engine):
    first, second = (engine.generate([request(seed=0)])[0] for _ in range(2))
    assert first.seeds[0] != 0 and second.seeds[0] != 0 and first.seeds != second.seeds
    replay = engine.generate([request(seed=first.seeds[0])])[0]
    assert replay.images[0].tobytes() == first.images[0].tobytes()


def test_every_aspect_ratio_gets_its_native_shape(engine):
    ratios = list(NATIVE_SIZES)
    generations = engine.generate([request(aspect_ratio=ratio, seed=1, refiner=False, steps=1) for ratio in ratios])
    for ratio, generation in zip(ratios, generations, strict=True):
        width, height = NATIVE_SIZES[ratio]
        assert generation.images[0].size == (generation.width, generation.height) == (width // 4, height // 4)
        assert generation.width * height == generation.height * width


def test_negative_prompt_changes_the_image(engine):
    plain = engine.generate([request(seed=3)])[0].images[0]
    negative = engine.generate([request(seed=3, negative_prompt="blurry, low quality")])[0].images[0]
    assert pixels(plain).tolist() != pixels(negative).tolist()


@pytest.mark.slow  # many denoising steps: seconds, not the fast subset's milliseconds
def test_a_batch_of_prompts_matches_the_prompts_one_by_one(engine):
    batch = [request("a cat napping", seed=5), request("a red fox", seed=5, n=2), request("a lighthouse", seed=9)]
    together = engine.generate(batch)
    assert [len(g.images) for g in together] == [1, 2, 1]
    for req, generation in zip(batch, together, strict=True):
        alone = engine.generate([req])[0]
        assert alone.seeds == generation.seeds
        for image, single in zip(generation.images, alone.images, strict=True):
            assert max_pixel_difference(image, single) <= ROUNDING
    assert together[0].images[0].tobytes() != together[1].images[0].tobytes()  # the prompt matters


def test_batches_are_chunked_at_the_maximum_batch_size(engine):
    engine.max_batch_size = 2
    try:
        calls = count_unet_calls(engine, lambda: engine.generate([request(n=3, refiner=False, steps=1)]))
    finally:
        engine.max_batch_size = 4
    assert calls["base"] == 2  # one step each for a batch of 2 and a batch of 1


def test_timings_cover_every_stage(engine):
    generation = engine.generate([request(seed=1)])[0]
    assert set(generation.timings) == {"text_encoders", "base", "refiner", "vae_decode"}
    assert all(seconds > 0 for seconds in generation.timings.values())


@pytest.mark.parametrize("cancel_at_call", [1, 3, 5])  # in the base, at its last step, in the refiner
def test_a_cancelled_generation_makes_no_unet_call_after_the_step_under_way(engine, cancel_at_call):
    progress, calls = Progress(), []

    def count_and_cancel(*_):
        calls.append(1)
        if len(calls) == cancel_at_call:
            progress.cancel()  # from inside UNet call k: step k is under way

    hooks = [pipeline.unet.register_forward_hook(count_and_cancel) for pipeline in (engine.base, engine.refiner)]
    try:
        with pytest.raises(Cancelled, match=f"cancelled at step {cancel_at_call - 1}; stopped after step "
                                            f"{cancel_at_call}"):
            engine.generate([request(steps=5, n=2)], progress)
    finally:
        for hook in hooks:
            hook.remove()
    assert len(calls) == cancel_at_call  # steps 4 and 5 of 5 (4 base + 1 refiner) never ran
    assert len(engine.generate([request(seed=1, steps=1, refiner=False)])[0].images) == 1  # the engine is free


def test_a_call_cancelled_while_it_waits_for_the_engine_makes_no_unet_call(engine):
    progress = Progress()
    progress.cancel()
    calls = count_unet_calls(engine, lambda: pytest.raises(Cancelled, engine.generate, [request()], progress))
    assert calls == {"base": 0, "refiner": 0}


def test_seeds_at_the_top_of_the_range_wrap_and_each_regenerates_its_image(engine):
    two = engine.generate([request(seed=MAX_SEED, n=2, steps=2, refiner=False)])[0]
    assert two.seeds == [MAX_SEED, 1]
    alone = engine.generate([request(seed=1, steps=2, refiner=False)])[0]
    assert max_pixel_difference(two.images[1], alone.images[0]) <= ROUNDING
