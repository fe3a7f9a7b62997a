"""The API key check every HTTP dialect shares: the scheme as RFC 7235 reads it, and a text that tells a caller
what to fix (send a key, say Bearer, check the key) without ever repeating the key."""

import pytest

from dialect_calls import dialect_reply

KEY = "sk-test-0123456789abcdef"
BODY = {"prompt": "a cat napping"}


@pytest.mark.parametrize("sent", [f"Bearer {KEY}", f"bearer {KEY}", f"BEARER {KEY}", f"  Bearer   {KEY} "])
def test_the_right_key_is_taken_whatever_the_case_of_the_scheme(sent):
    assert dialect_reply("", BODY, {"Authorization": sent}, api_key=KEY)[0] == 200


def test_no_key_is_needed_when_none_is_set():
    assert dialect_reply("", BODY)[0] == 200


@pytest.mark.parametrize(("headers", "says"), [
    ({}, "needs its API key"),
    ({"Authorization": KEY}, "the scheme is missing or not Bearer"),
    ({"Authorization": f"Basic {KEY}"}, "the scheme is missing or not Bearer"),
    ({"Authorization": "Bearer sk-test-wrong"}, "not this deployment's API key"),
    ({"Authorization": f"Bearer {KEY[:-1]}"}, "not this deployment's API key"),
    ({"Authorization": f"Bearer {KEY.upper()}"}, "not this deployment's API key"),
])
def test_a_missing_badly_sent_or_wrong_key_is_a_401_saying_which(headers, says):
    status, reply = dialect_reply("", BODY, headers, api_key=KEY)
    assert (status, reply["field"]) == (401, "authorization")
    assert says in reply["error"] and "0123456789" not in str(reply)
