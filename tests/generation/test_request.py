"""The request contract: defaults, types, ranges and the errors a user sees."""

import dataclasses
import json

import pytest
from PIL import Image

from stable_diffusion_xl.apis.instill import parse_json, parse_task_input
from stable_diffusion_xl.fields import KNOWN_FIELDS, InvalidRequest, excerpt
from stable_diffusion_xl.generation.modes import PICTURES
from stable_diffusion_xl.generation.request import MAX_SEED, PARAMETERS, PER_IMAGE, TextToImageRequest, nth_seed
from stable_diffusion_xl.serving.limits import Limits

DEFAULT_LIMITS = Limits()


def parse(body, limits=DEFAULT_LIMITS):
    return parse_json(body, limits)


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
        ({"refiner": "yes"}, "refiner", "true or false"),
        ({"negative-prompt": None}, "negative-prompt", "must be a string"),
    ],
)
def test_bad_fields_are_named_with_what_is_allowed(fields, field, words):
    fields = {"prompt": "a cat", **fields}
    with pytest.raises(InvalidRequest) as caught:
        parse(fields)
    assert caught.value.field == field
    assert field in str(caught.value) and words in str(caught.value)


def test_base_only_needs_no_hand_off_step():
    assert TextToImageRequest(prompt="a cat", steps=1, refiner=False).steps == 1


@pytest.mark.parametrize("fields", [{"steps": 1}, {"steps": 2, "scheduler": "heun"}, {"steps": 1, "scheduler": "ddim"},
                                    {"steps": 2, "high-noise-frac": 0.3},
                                    {"steps": 5, "high-noise-frac": 0.85, "scheduler": "dpm++-2m"}])
def test_steps_too_few_to_share_are_taken_the_base_makes_the_image_alone(fields):
    (request,) = parse({"prompt": "a cat", **fields})
    assert request.steps == fields["steps"]


def test_instill_task_input_with_struct_numbers():
    # protobuf Struct carries every number as a double
    request = parse_task_input(
        {"data": {"prompt": "a cat", "model": "users/x/models/sdxl"},
         "parameter": {"n": 2.0, "seed": 7.0, "aspect-ratio": "16:9", "negative-prompt": "blurry", "steps": 30.0,
                       "guidance-scale": 5, "high-noise-frac": 0.7, "refiner": False}},
        Limits(),
    )
    assert request == TextToImageRequest(
        prompt="a cat", n=2, seed=7, aspect_ratio="16:9", negative_prompt="blurry", steps=30, guidance_scale=5.0,
        high_noise_frac=0.7, refiner=False,
    )


def test_flat_and_enveloped_http_bodies_and_lists():
    flat = parse({"prompt": "a cat", "negative-prompt": "dogs", "n": 2})
    envelope = parse({"data": {"prompt": "a cat"}, "parameter": {"negative-prompt": "dogs", "n": 2}})
    assert flat == envelope == [TextToImageRequest(prompt="a cat", negative_prompt="dogs", n=2)]
    assert [r.prompt for r in parse([{"prompt": "a"}, {"data": {"prompt": "b"}}])] == ["a", "b"]


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
        ([{"prompt": "a"}, {"data": {"prompt": "b"}, "parameter": {"n": -1}}], "[1].parameter.n"),
        ([], "body"),
        ("a cat", "task input"),
    ],
)
def test_malformed_bodies_name_the_field(body, field):
    with pytest.raises(InvalidRequest) as caught:
        parse(body)
    assert caught.value.field == field


def test_limits_name_the_n_of_the_input_that_breaks_them_on_every_form():
    limits = Limits(max_n=2, max_images_per_call=3)
    cases = [
        ({"prompt": "a", "n": 3}, "n", "must be from 1 to 2 on this deployment, got 3"),
        ({"data": {"prompt": "a"}, "parameter": {"n": 3}}, "parameter.n", "must be from 1 to 2"),
        ([{"prompt": "a", "n": 2}, {"prompt": "b", "n": 2}], "[1].n", "takes the call to 4 images; this deployment "
                                                                      "makes at most 3 per call"),
    ]
    for body, field, words in cases:
        with pytest.raises(InvalidRequest) as caught:
            parse(body, limits)
        assert (caught.value.field, caught.value.reason[:len(words)]) == (field, words)


def test_a_lone_surrogate_is_a_named_error_not_a_tokenizer_crash():
    body = json.loads('{"prompt": "\\ud800 cat"}')
    with pytest.raises(InvalidRequest) as caught:
        parse(body)
    assert caught.value.field == "prompt" and "lone surrogate" in caught.value.reason
    with pytest.raises(InvalidRequest, match="negative-prompt: must be valid Unicode"):
        parse({"prompt": "a cat", "negative-prompt": "\udfff"})


@pytest.mark.parametrize("value", ["x" * 1_000_000, "\n" * 50_000, "\ud800" * 100, list(range(100_000)),
                                   {str(i): i for i in range(10_000)}, 10**4000, float("nan")],
                         ids=["1 MB", "newlines", "surrogates", "long list", "big object", "huge integer", "NaN"])
def test_errors_quote_a_short_escaped_excerpt_of_any_value(value):
    for body in ({"prompt": "a cat", "aspect-ratio": value}, {"prompt": "a cat", "n": value}):
        with pytest.raises(InvalidRequest) as caught:
            parse(body)
        message = str(caught.value)
        assert len(message) < 200 and message.isascii() and "\n" not in message


@pytest.mark.parametrize("field", ["guidance-scale", "high-noise-frac", "lora-scale", "seed"])
def test_an_integer_too_large_for_a_float_is_a_named_range_error(field):
    body = {"prompt": "a cat", field: 10**400, **({"lora": "x"} if field == "lora-scale" else {})}
    with pytest.raises(InvalidRequest) as caught:
        parse(body, Limits(lora_names=("x",)))
    assert caught.value.field == field and caught.value.reason.endswith("got an integer of 1329 bits")


def test_the_model_id_must_be_text_too():
    with pytest.raises(InvalidRequest, match="data.model: must be valid Unicode"):
        parse({"data": {"prompt": "a cat", "model": "\ud800"}})


def test_an_unknown_key_is_named_by_an_excerpt_and_labelled_without_its_text():
    for key in ["stepz", "bad\nkey", "k" * 50_000, "\ud800"]:
        with pytest.raises(InvalidRequest) as caught:
            parse({"data": {"prompt": "a cat"}, "parameter": {key: 1}})
        error = caught.value
        assert error.field.startswith("parameter.") and len(error.field) < 60 and error.field.isascii()
        assert "\n" not in str(error) and error.label == "unknown-key"
    assert excerpt("k" * 50) == '"kkkkkkkkkkkkkkkkkkkkkkkk..." (50 characters)'
    assert excerpt({"a": 1}) == "an object with 1 keys" and excerpt(float("inf")) == "Infinity"


def test_labels_for_logs_and_metrics_are_known_field_names_only():
    for field, label in [("task_inputs[3].parameter.n", "n"), ("[1].aspect-ratio", "aspect-ratio"), ("body", "body"),
                         ('parameter."\\n evil"', "unknown-key"), ("task_inputs[0].data.prompt", "prompt")]:
        assert InvalidRequest(field, "reason").label == label
        assert label in KNOWN_FIELDS or label == "unknown-key"


def test_every_reported_seed_is_a_valid_request_seed():
    assert [nth_seed(MAX_SEED - 1, i) for i in range(4)] == [MAX_SEED - 1, MAX_SEED, 1, 2]
    assert [nth_seed(7, i) for i in range(3)] == [7, 8, 9]
    for seed in (nth_seed(MAX_SEED, i) for i in range(3)):
        assert TextToImageRequest(prompt="a cat", seed=seed).seed == seed


def test_an_excerpt_of_characters_that_escape_long_stays_short():
    """An emoji escapes to 12 ASCII characters: an unknown key of them once made a 400-character error."""
    with pytest.raises(InvalidRequest) as caught:
        parse_json([{"prompt": "a cat"}, {"prompt": "a cat", "\U0001f600" * 60: 1}], Limits())
    assert len(str(caught.value)) < 300 and str(caught.value).isascii()
    assert excerpt("\U0001f600" * 60) == '"' + "\\ud83d\\ude00" * 4 + '..." (60 characters)'


@pytest.mark.parametrize(("key", "meant"), [("promt", "prompt"), ("stpes", "steps"), ("Aspect-Ratio", "aspect-ratio"),
                                            ("negative_prompt", "negative-prompt"), ("guidance", "guidance-scale")])
def test_an_unknown_key_suggests_the_closest_known_names_first_then_lists_them_all(key, meant):
    with pytest.raises(InvalidRequest) as caught:
        parse({"prompt": "a cat", key: 1} if key != "promt" else {key: "a cat"})
    error = caught.value
    assert error.field == key
    hint, _, listed = error.reason.partition(" known: ")
    assert f"`{meant}`" in hint.split(" or ")[0]
    assert listed.split(", ") == ["prompt", "model", *PARAMETERS, *PICTURES]  # the flat form takes an edit's too


def test_a_key_like_no_known_name_gets_the_list_without_a_guess():
    with pytest.raises(InvalidRequest) as caught:
        parse({"prompt": "a cat", "xyzzy": 1})
    assert "did you mean" not in caught.value.reason and "negative-prompt" in caught.value.reason


def test_every_field_but_each_images_own_keeps_requests_out_of_one_batch():
    """A new field is in the batch key unless it is declared PER_IMAGE (and the engine hands it over per image):
    a batch never runs with one request's value for another's."""
    text = TextToImageRequest(prompt="a cat", negative_prompt="blur", seed=1, steps=5, refiner=True, lora=("style",))
    edit = dataclasses.replace(text, pictures={"image": Image.new("RGB", (64, 64))}, strength=0.5)
    other = {"aspect_ratio": "16:9", "steps": 6, "guidance_scale": 3.0, "high_noise_frac": 0.5, "refiner": False,
             "scheduler": "ddim", "lora": ("other",), "lora_scale": (0.5,), "strength": 0.6}
    assert set(other) | set(PER_IMAGE) == {spec.name for spec in dataclasses.fields(TextToImageRequest)}
    for name, value in other.items():
        first = edit if name == "strength" else text  # an edit's aspect ratio is its picture's
        changed = dataclasses.replace(first, **{name: value})
        assert getattr(changed, name) != getattr(first, name) and changed.batch_key != first.batch_key, name
    images_own = {"prompt": "a dog", "negative_prompt": "noise", "seed": 2, "n": 3,
                  "pictures": {"image": Image.new("RGB", (60, 60), "red")}}
    assert dataclasses.replace(edit, **images_own).batch_key == edit.batch_key
    assert dataclasses.replace(text, negative_prompt="").batch_key != text.batch_key  # zero embeddings instead
    assert dataclasses.replace(edit, strength=text.strength, pictures={}).batch_key != edit.batch_key  # a mode
