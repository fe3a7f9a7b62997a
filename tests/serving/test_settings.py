"""Settings are checked when they are read: a bad value names the variable, the value and what is allowed."""

from dataclasses import dataclass

import pytest

from stable_diffusion_xl.fields import NUMBER, TEXT, declare, spec_of
from stable_diffusion_xl.serving.environment import SettingError, declared, read
from stable_diffusion_xl.serving.limits import Limits
from stable_diffusion_xl.serving.settings import Settings


def test_unset_or_empty_variables_take_the_defaults():
    assert Settings.from_env({}) == Settings.from_env({spec_of(member).variable: "" for member in declared(Settings)})
    defaults = Settings.from_env({})
    assert (defaults.max_batch_size, defaults.max_ongoing_requests, defaults.limits) == (4, 8, Limits())
    assert (defaults.compile, defaults.compile_mode, defaults.compile_cache) == (False, "default", None)


def test_values_are_read_into_their_types():
    read = Settings.from_env({"SDXL_MAX_N": "2", "SDXL_WARM_UP": "off", "SDXL_DEMO_WEIGHTS": "TRUE",
                              "SDXL_WEIGHTS_DIR": "/srv/sdxl", "SDXL_MAX_BODY_BYTES": "2048"})
    assert (read.limits.max_n, read.warm_up, read.demo_weights, str(read.weights_dir)) == (2, False, True, "/srv/sdxl")
    assert read.limits.max_body_bytes == 2048
    compiled = Settings.from_env({"SDXL_COMPILE": "1", "SDXL_COMPILE_MODE": " max-autotune-no-cudagraphs ",
                                  "SDXL_COMPILE_CACHE": "/srv/compile-cache"})
    assert (compiled.compile_mode, str(compiled.compile_cache)) == ("max-autotune-no-cudagraphs", "/srv/compile-cache")


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
    ("SDXL_COMPILE_MODE", "reduce-overhead", "one of default, max-autotune-no-cudagraphs, max-autotune"),
])
def test_a_bad_value_names_the_variable_the_value_and_what_is_allowed(variable, value, allowed):
    with pytest.raises(SettingError) as caught:
        Settings.from_env({variable: value})
    assert str(caught.value) == f'{variable}="{value}": must be {allowed}'


def test_a_long_or_multiline_value_is_quoted_short_and_escaped():
    with pytest.raises(SettingError) as caught:
        Settings.from_env({"SDXL_MAX_N": "1\n" * 10_000})
    assert len(str(caught.value)) < 120 and "\n" not in str(caught.value)


def test_the_api_key_comes_from_the_variable_or_a_file_and_is_kept_out_of_the_repr(tmp_path):
    assert Settings.from_env({}).http_api_key() is None
    assert Settings.from_env({"SDXL_API_KEY": "sk-one"}).http_api_key() == "sk-one"
    secret = tmp_path / "key"
    secret.write_text("  sk-two\n")
    read = Settings.from_env({"SDXL_API_KEY_FILE": str(secret)})
    assert read.http_api_key() == "sk-two"
    assert "sk-one" not in repr(Settings.from_env({"SDXL_API_KEY": "sk-one"}))


@pytest.mark.parametrize("env, message", [
    ({"SDXL_API_KEY": "sk-one", "SDXL_API_KEY_FILE": "/run/secrets/key"}, "are both set"),
    ({"SDXL_API_KEY_FILE": "/nonexistent/key"}, 'SDXL_API_KEY_FILE="/nonexistent/key": cannot be read'),
    ({"SDXL_API_KEY": "sk one"}, "SDXL_API_KEY: the key must be printable ASCII without spaces"),
    ({"SDXL_API_KEY": "sk-clé"}, "SDXL_API_KEY: the key must be printable ASCII without spaces"),
])
def test_a_bad_api_key_setting_fails_the_start_without_showing_the_key(env, message):
    with pytest.raises(SettingError) as caught:
        Settings.from_env(env).http_api_key()
    assert message in str(caught.value) and "sk-" not in str(caught.value)


def test_an_empty_key_file_fails_the_start(tmp_path):
    empty = tmp_path / "key"
    empty.write_text("\n")
    with pytest.raises(SettingError, match="the key must be printable ASCII"):
        Settings.from_env({"SDXL_API_KEY_FILE": str(empty)}).http_api_key()


@dataclass(frozen=True)
class _Tuning:
    ratio: float = declare(NUMBER, 0.5, "a fraction", variable="SDXL_X_RATIO", minimum=0.0, maximum=1.0)
    word: str = declare(TEXT, "a", "a word", variable="SDXL_X_WORD")


def test_a_number_or_text_setting_is_read_as_its_kind_with_its_range_checked():
    assert read(_Tuning, {"SDXL_X_RATIO": "0.25", "SDXL_X_WORD": "hello"}) == _Tuning(0.25, "hello")
    for text in ("abc", "1.5", "nan"):
        with pytest.raises(SettingError, match=rf'^SDXL_X_RATIO="{text}": must be a number from 0.0 to 1.0$'):
            read(_Tuning, {"SDXL_X_RATIO": text})
