"""OpenAI's background and moderation: what this deployment can honour is taken, what it cannot is refused by
name, never ignored (a "transparent" request once came back as an opaque PNG)."""

import pytest

from dialect_calls import dialect_reply

PATH, PROMPT = "v1/images/generations", "a lighthouse on a cliff at dusk"


@pytest.mark.parametrize("fields", [{}, {"background": "auto"}, {"background": "opaque"}, {"moderation": "auto"},
                                    {"moderation": "low"}, {"background": "opaque", "moderation": "low"}])
def test_opaque_and_auto_backgrounds_and_both_moderation_levels_are_taken(fields):
    assert dialect_reply(PATH, {"prompt": PROMPT, **fields})[0] == 200


def test_a_transparent_background_is_a_400_naming_background():
    status, reply = dialect_reply(PATH, {"prompt": PROMPT, "background": "transparent", "output_format": "png"})
    assert (status, reply["error"]["param"]) == (400, "background")
    assert "opaque" in reply["error"]["message"] and reply["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(("fields", "param"), [
    ({"background": "clear"}, "background"), ({"background": 0}, "background"),
    ({"moderation": "high"}, "moderation"), ({"moderation": None}, "moderation"),
])
def test_other_values_are_a_400_listing_what_is_taken(fields, param):
    status, reply = dialect_reply(PATH, {"prompt": PROMPT, **fields})
    assert (status, reply["error"]["param"]) == (400, param) and "must be one of" in reply["error"]["message"]
