"""Training options: defaults, the step count that scales with the photos, and each field's range as an
InvalidRequest naming the field by its wire name."""

import pytest

from stable_diffusion_xl.fields import InvalidRequest, spec_of
from stable_diffusion_xl.training.options import OPTIONS, TrainingOptions, default_steps, from_fields


def test_defaults_are_the_published_recipes():
    options = TrainingOptions(name="me")
    assert (options.token, options.class_word, options.rank, options.learning_rate) == ("TOK", "person", 32, 1e-4)
    assert options.caption == "a photo of TOK person"
    assert (options.workers, options.train_text_encoder, options.overwrite, options.resume) == (1, False, False, False)


def test_default_steps_scale_with_the_photos_within_bounds():
    assert [default_steps(count) for count in (3, 8, 10, 15, 40)] == [400, 880, 1100, 1500, 1500]
    assert TrainingOptions(name="me").total_steps(10) == 1100
    assert TrainingOptions(name="me", workers=2).total_steps(10) == 550  # one photo per worker per step
    assert TrainingOptions(name="me", steps=20).total_steps(10) == 20


@pytest.mark.parametrize(("fields", "field", "reason"), [
    ({"name": "../escape"}, "name", "must be a plain name"),
    ({"name": "a b"}, "name", "must be a plain name"),
    ({"name": "x" * 101}, "name", "must be a plain name"),
    ({"rank": 0}, "rank", "must be from 1 to 256"),
    ({"rank": 512}, "rank", "must be from 1 to 256"),
    ({"rank": True}, "rank", "must be an integer"),
    ({"steps": 0}, "steps", "must be from 1 to 20000"),
    ({"steps": 10**6}, "steps", "must be from 1 to 20000"),
    ({"steps": 2.5}, "steps", "must be an integer"),
    ({"learning_rate": 0.5}, "learning-rate", "must be from 1e-07 to 0.01"),
    ({"learning_rate": float("nan")}, "learning-rate", "must be a finite number"),
    ({"resolution": 100}, "resolution", "must be from 256 to 2048"),
    ({"resolution": 1000}, "resolution", "must be a multiple of 64"),
    ({"seed": -1}, "seed", "must be from 0 to"),
    ({"workers": 0}, "workers", "must be from 1 to 64"),
    ({"token": ""}, "token", "must be 1 to 40 printable characters"),
    ({"token": "two words"}, "token", "must be one word"),
    ({"class_word": "\x00"}, "class-word", "printable characters"),
    ({"checkpoint_every": 0}, "checkpoint-every", "must be from 1"),
])
def test_each_option_out_of_range_names_its_field(fields, field, reason):
    with pytest.raises(InvalidRequest) as error:
        TrainingOptions(**{"name": "me", **fields})
    assert error.value.field == field and reason in error.value.reason


def test_every_option_documents_itself():
    for name, member in OPTIONS.items():
        assert spec_of(member).description, name


def test_options_from_wire_named_fields_take_json_numbers_and_refuse_unknown_keys():
    options = from_fields({"name": "me", "learning-rate": 0.0002, "steps": 20.0, "train-text-encoder": True})
    assert (options.learning_rate, options.steps, options.train_text_encoder) == (0.0002, 20, True)
    with pytest.raises(InvalidRequest) as error:
        from_fields({"name": "me", "learning_rate": 0.1}, where="options.")
    assert error.value.field == "options.learning_rate" and "did you mean `learning-rate`?" in error.value.reason
    with pytest.raises(InvalidRequest) as error:
        from_fields({"rank": 8}, where="options.")
    assert (error.value.field, error.value.reason) == ("options.name", "is required")
    with pytest.raises(InvalidRequest) as error:
        from_fields({"name": "me", "rank": "8"})
    assert (error.value.field, error.value.reason) == ("rank", 'must be an integer, got "8"')
