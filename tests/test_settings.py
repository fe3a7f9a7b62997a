"""Settings are checked when they are read: a bad value names the variable, the value and what is allowed."""

import pytest

from stable_diffusion_xl.settings import Limits, SettingError, Settings, settings


def test_unset_or_empty_variables_take_the_defaults():
    assert Settings.from_env({}) == Settings.from_env({name.metadata["variable"]: "" for name in settings()})
    defaults = Settings.from_env({})
    assert (defaults.max_batch_size, defaults.max_ongoing_requests, defaults.limits) == (4, 2, Limits())


def test_values_are_read_into_their_types():
    read = Settings.from_env({"SDXL_MAX_N": "2", "SDXL_WARM_UP": "off", "SDXL_DEMO_WEIGHTS": "TRUE",
                              "SDXL_WEIGHTS_DIR": "/srv/sdxl", "SDXL_MAX_BODY_BYTES": "2048"})
    assert (read.limits.max_n, read.warm_up, read.demo_weights, str(read.weights_dir)) == (2, False, True, "/srv/sdxl")
    assert read.limits.max_body_bytes == 2048


@pytest.mark.parametrize("variable, value, allowed", [
    ("SDXL_MAX_N", "abc", "an integer from 1 to 64"),
    ("SDXL_MAX_N", "0", "an integer from 1 to 64"),
    ("SDXL_MAX_BATCH_SIZE", "0", "an integer from 1 to 64"),
    ("SDXL_MAX_ONGOING_REQUESTS", "0", "an integer from 1 to 1000"),
    ("SDXL_MAX_ONGOING_REQUESTS", "2.5", "an integer from 1 to 1000"),
    ("SDXL_JPEG_QUALITY", "101", "an integer from 1 to 100"),
    ("SDXL_UPSCALE_DELAY_S", "-1", "an integer from 0 to 86400"),
    ("SDXL_WARM_UP", "maybe", "one of 1, true, yes, on, 0, false, no, off"),
    ("SDXL_DEMO_WEIGHTS", "demo", "one of 1, true, yes, on, 0, false, no, off"),
])
def test_a_bad_value_names_the_variable_the_value_and_what_is_allowed(variable, value, allowed):
    with pytest.raises(SettingError) as caught:
        Settings.from_env({variable: value})
    assert str(caught.value) == f'{variable}="{value}": must be {allowed}'


def test_a_long_or_multiline_value_is_quoted_short_and_escaped():
    with pytest.raises(SettingError) as caught:
        Settings.from_env({"SDXL_MAX_N": "1\n" * 10_000})
    assert len(str(caught.value)) < 120 and "\n" not in str(caught.value)
