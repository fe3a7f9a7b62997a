"""Arbitrary JSON into the request parser: accepted, or rejected with a short, safe InvalidRequest, never
anything else. tests/test_hostile_input.py sends the same kinds of input through the real Ray Serve."""

from hypothesis import given, settings
from hypothesis import strategies as st

from stable_diffusion_xl.apis.instill import parse_json
from stable_diffusion_xl.apis.instill import parse_task_input as parse_one
from stable_diffusion_xl.fields import KNOWN_FIELDS, InvalidRequest
from stable_diffusion_xl.generation.request import PARAMETERS, TextToImageRequest
from stable_diffusion_xl.serving.limits import Limits

LIMITS = Limits()
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
# Bodies shaped like real ones, so that parsing gets past the envelope and into the fields.
keys = st.sampled_from([*PARAMETERS, "prompt", "model", "data", "parameter", "stepz"]) | st.text(max_size=60)
near_valid = st.dictionaries(keys, json_values | st.sampled_from(["1:1", "a cat", 2, 2.0, 0.8, True]), max_size=6)
envelopes = st.fixed_dictionaries({"data": st.dictionaries(st.sampled_from(["prompt", "model"]), json_values),
                                   "parameter": st.dictionaries(keys, json_values | st.integers(0, 50))})


def accepted_or_rejected(parse, body):
    try:
        result = parse(body)
    except InvalidRequest as error:
        assert error.field and error.reason
        assert len(str(error)) < 400 and str(error).isascii()  # an excerpt at most, escaped
        assert error.label in KNOWN_FIELDS | {"unknown-key"}
        return
    requests = result if isinstance(result, list) else [result]
    assert requests and all(isinstance(request, TextToImageRequest) for request in requests)


@settings(max_examples=400, deadline=None)
@given(json_values | near_valid | envelopes | st.lists(near_valid | envelopes, max_size=3))
def test_http_bodies(body):
    accepted_or_rejected(lambda body: parse_json(body, LIMITS), body)


@settings(max_examples=300, deadline=None)
@given(json_values | envelopes)
def test_task_inputs(body):
    accepted_or_rejected(lambda body: parse_one(body, LIMITS), body)
