"""Instill's usage metadata says what ran, which is not always what was asked."""

from stable_diffusion_xl.apis.instill import usage
from stable_diffusion_xl.generation.request import TextToImageRequest
from stable_diffusion_xl.generation.results import Generation


def test_usage_says_the_refiner_did_not_run_where_the_steps_left_it_none():
    asked = TextToImageRequest(prompt="a cat", steps=1)  # the refiner asked for, by default
    assert asked.refiner is True
    made = usage(asked, Generation([], [5], 256, 256, refined=False))
    assert made["refiner"] is False and made["high-noise-frac"] is None and made["steps"] == 1
    refined = usage(TextToImageRequest(prompt="a cat"), Generation([], [5], 256, 256, refined=True))
    assert refined["refiner"] is True and refined["high-noise-frac"] == 0.8
