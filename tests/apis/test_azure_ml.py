"""Azure ML's /score names what the caller sent: a row per image, so too many images is too many rows."""

from dialect_calls import dialect_reply
from stable_diffusion_xl.serving.limits import Limits


def test_more_rows_than_the_call_may_make_images_names_input_data_data_and_the_limit():
    body = {"input_data": {"data": ["a lighthouse"] * 9}}
    status, reply = dialect_reply("score", body, limits=Limits(max_images_per_call=8))
    assert (status, reply["error"]["target"]) == (400, "input_data.data")
    assert "9 rows" in reply["error"]["message"] and "at most 8" in reply["error"]["message"]
    assert "parameters" not in reply["error"]["message"]


def test_as_many_rows_as_the_limit_are_taken():
    body = {"input_data": {"data": ["a lighthouse"] * 8}}
    assert dialect_reply("score", body, limits=Limits(max_images_per_call=8)) == (200, {"requests": 8})
