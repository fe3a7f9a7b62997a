"""Injected faults on demo weights: NaN decodes, out-of-memory, device errors."""

import pytest
import torch

from helpers import ROUNDING, max_pixel_difference, nan_decodes, request
from stable_diffusion_xl.generation.results import NaNImage, OutOfMemory


@pytest.fixture
def faulty_vae(engine, monkeypatch):
    """Make the VAE's next decodes return NaN: set the returned state's "left"."""
    return nan_decodes(engine, monkeypatch)


@pytest.fixture
def oom_above(engine):
    """Raise CUDA's out-of-memory error when the base UNet gets more than `limit` images (x2 for guidance)."""
    state = {"limit": None}

    def check(_module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        if state["limit"] is not None and sample.shape[0] > 2 * state["limit"]:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    hook = engine.base.unet.register_forward_pre_hook(check, with_kwargs=True)
    yield state
    hook.remove()


def test_a_nan_decode_is_redone_in_fp32_and_gives_the_real_image(engine, faulty_vae):
    expected = engine.generate([request(seed=4)])[0]
    faulty_vae["left"] = 1
    recovered = engine.generate([request(seed=4)])[0]
    assert recovered.events["nan_redecodes"] == 1
    assert recovered.images[0].tobytes() == expected.images[0].tobytes()
    assert max(recovered.images[0].getextrema())[1] > 0  # not black


def test_nan_that_survives_fp32_is_an_error_not_a_black_success(engine, faulty_vae):
    faulty_vae["left"] = 2
    with pytest.raises(NaNImage, match="cannot be decoded"):
        engine.generate([request(seed=4)])
    assert engine.healthy and len(engine.generate([request(seed=4)])[0].images) == 1


@pytest.mark.slow  # many denoising steps: seconds, not the fast subset's milliseconds
def test_out_of_memory_on_a_batch_of_4_splits_it_and_keeps_every_image(engine, oom_above):
    unsplit = engine.generate([request(seed=20, n=4)])[0]
    oom_above["limit"] = 2
    split = engine.generate([request(seed=20, n=4)])[0]
    assert split.events["oom_splits"] == 1 and split.seeds == unsplit.seeds == [20, 21, 22, 23]
    for image, reference in zip(split.images, unsplit.images, strict=True):
        assert max_pixel_difference(image, reference) <= ROUNDING


def test_out_of_memory_on_one_image_fails_the_call_and_the_next_one_works(engine, oom_above):
    oom_above["limit"] = 0
    with pytest.raises(OutOfMemory, match="failed to allocate memory for one 256x256 image"):
        engine.generate([request(seed=1)])
    oom_above["limit"] = None
    assert engine.healthy and len(engine.generate([request(seed=1)])[0].images) == 1


def test_a_device_error_marks_the_engine_unhealthy(engine):
    def fail(*_):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    hook = engine.refiner.unet.register_forward_pre_hook(fail)
    try:
        with pytest.raises(RuntimeError, match="illegal memory access"):
            engine.generate([request(seed=1)])
        assert not engine.healthy
    finally:
        hook.remove()
        engine.healthy = True
