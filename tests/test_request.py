"""The request contract: defaults, types, ranges and the errors a user sees."""

import pytest

from stable_diffusion_xl.request import InvalidRequest, TextToImageRequest, parse_json, parse_task_input


def test_defaults_are_the_documented_ones():
    request = TextToImageRequest(prompt="a cat")
    assert (request.negative_prompt, request.aspect_ratio, request.n, request.seed) == ("", "1:1", 1, 0)
    assert (request.steps, request.guidance_scale, request.high_noise_frac, request.refiner) == (40, 7.5, 0.8, True)


@pytest.mark.parametrize(
    "fields, field, words",
    [
        ({"prompt": ""}, "prompt", "must not be empty"),
        ({"prompt": "   "}, "prompt", "must not be empty"),
        ({"prompt": 3}, "prompt", "must be a string"),
        ({"prompt": "x" * 4001}, "prompt", "limited to 4000 characters, got 4001"),
        ({"negative-prompt": "x" * 4001}, "negative-prompt", "limited to 4000 characters"),
        ({"guidance-scale": float("nan")}, "guidance-scale", "a finite number"),
        ({"high-noise-frac": float("inf")}, "high-noise-frac", "a finite number"),
        ({"n": 0}, "n", "at least 1"),
        ({"n": 1.5}, "n", "an integer"),
        ({"n": True}, "n", "an integer"),
        ({"seed": -1}, "seed", "from 0 to 4294967295"),
        ({"seed": 2**32}, "seed", "from 0 to 4294967295"),
        ({"aspect-ratio": "4:3"}, "aspect-ratio", "one of 1:1, 5:4, 4:5, 3:2, 2:3, 16:9, 9:16, 21:9, 9:21"),
        ({"steps": 0}, "steps", "from 1 to 100"),
        ({"steps": 101}, "steps", "from 1 to 100"),
        ({"guidance-scale": 0.5}, "guidance-scale", "from 1.0 to 20.0"),
        ({"guidance-scale": "high"}, "guidance-scale", "a number"),
        ({"high-noise-frac": 1.0}, "high-noise-frac", "from 0.05 to 0.95"),
        ({"steps": 2, "high-noise-frac": 0.9}, "high-noise-frac", "leaves the base or the refiner no step"),
        ({"refiner": "yes"}, "refiner", "true or false"),
        ({"negative-prompt": None}, "negative-prompt", "must be a string"),
    ],
)
def test_bad_fields_are_named_with_what_is_allowed(fields, field, words):
    fields = {"prompt": "a cat", **fields}
    with pytest.raises(InvalidRequest) as caught:
        parse_json(fields)
    assert caught.value.field == field
    assert field in str(caught.value) and words in str(caught.value)


def test_base_only_needs_no_hand_off_step():
    assert TextToImageRequest(prompt="a cat", steps=1, refiner=False).steps == 1


def test_instill_task_input_with_struct_numbers():
    # protobuf Struct carries every number as a double
    request = parse_task_input(
        {"data": {"prompt": "a cat", "model": "users/x/models/sdxl"},
         "parameter": {"n": 2.0, "seed": 7.0, "aspect-ratio": "16:9", "negative-prompt": "blurry", "steps": 30.0,
                       "guidance-scale": 5, "high-noise-frac": 0.7, "refiner": False}}
    )
    assert request == TextToImageRequest(
        prompt="a cat", n=2, seed=7, aspect_ratio="16:9", negative_prompt="blurry", steps=30, guidance_scale=5.0,
        high_noise_frac=0.7, refiner=False,
    )


def test_flat_and_enveloped_http_bodies_and_lists():
    flat = parse_json({"prompt": "a cat", "negative-prompt": "dogs", "n": 2})
    envelope = parse_json({"data": {"prompt": "a cat"}, "parameter": {"negative-prompt": "dogs", "n": 2}})
    assert flat == envelope == [TextToImageRequest(prompt="a cat", negative_prompt="dogs", n=2)]
    assert [r.prompt for r in parse_json([{"prompt": "a"}, {"data": {"prompt": "b"}}])] == ["a", "b"]


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "prompt"),
        ({"data": {}}, "data.prompt"),
        ({"data": "a cat"}, "data"),
        ({"data": {"prompt": "a cat"}, "parameter": []}, "parameter"),
        ({"data": {"prompt": "a cat"}, "parameter": {"n": 0}}, "parameter.n"),
        ({"data": {"prompt": "a cat"}, "parameter": {"stepz": 3}}, "parameter.stepz"),
        ({"data": {"prompt": "a cat", "image": "x"}}, "data.image"),
        ({"prompt": "a cat", "guidance": 3}, "guidance"),
        ([{"prompt": "a"}, {"prompt": "b", "n": -1}], "[1].n"),
        ([], "body"),
        ("a cat", "task input"),
    ],
)
def test_malformed_bodies_name_the_field(body, field):
    with pytest.raises(InvalidRequest) as caught:
        parse_json(body)
    assert caught.value.field == field
