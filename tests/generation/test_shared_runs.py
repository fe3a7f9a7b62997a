"""One engine run for several callers (Engine.generate_for), as the replica's batcher makes it: compatible requests
share UNet batches, and each caller still sees only its own images, progress, cancel and errors."""

import pytest

from helpers import ROUNDING, max_pixel_difference, request
from stable_diffusion_xl.generation.engine import Caller, Engine
from stable_diffusion_xl.generation.results import Cancelled, Progress


def alone(engine, one):
    return engine.generate([one])[0]


def test_compatible_callers_share_a_batch_and_get_the_images_their_seeds_make_alone(engine):
    asked = [request(f"prompt {i}", seed=30 + i) for i in range(3)] + [request("other", seed=40, steps=6)]
    callers = [Caller([one], Progress()) for one in asked]
    outcomes = engine.generate_for(callers)
    assert [generations[0].batch_calls for generations in outcomes] == [3, 3, 3, 1]  # steps=6 shares no batch
    for one, (generation,) in zip(asked, outcomes):
        assert max_pixel_difference(generation.images[0], alone(engine, one).images[0]) <= ROUNDING
    # Each caller's progress counts the steps of its own batches: 5 base + refiner calls, or 6.
    assert [caller.progress.steps for caller in callers] == [5, 5, 5, 6]
    assert all(caller.progress.total == caller.progress.steps for caller in callers)


def test_a_caller_that_cancelled_gets_no_images_and_spares_the_others(engine):
    gone, staying = Progress(), Progress()
    gone.cancel()
    first, second = engine.generate_for([Caller([request(seed=1)], gone), Caller([request(seed=2)], staying)])
    assert isinstance(first, Cancelled)
    assert max_pixel_difference(second[0].images[0], alone(engine, request(seed=2)).images[0]) <= ROUNDING
    assert second[0].batch_calls == 1  # the cancelled caller's image was left out of the batch


def test_a_failing_batch_ends_only_the_callers_with_images_in_it(weights_dir, tmp_path):
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    engine = Engine.load(weights_dir, demo=True, lora_dir=tmp_path)
    broken, fine = engine.generate_for([Caller([request(seed=1, lora=("broken",))], Progress()),
                                        Caller([request(seed=2)], Progress())])
    assert isinstance(broken, Exception) and not isinstance(broken, Cancelled)
    assert len(fine[0].images) == 1 and engine.healthy
    with pytest.raises(type(broken)):  # one caller alone: raised, as generate always did
        engine.generate([request(seed=1, lora=("broken",))])
