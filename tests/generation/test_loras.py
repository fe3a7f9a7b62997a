"""LoRA adapters chosen per request, on the demo weights' real adapter files (diffusers and kohya formats):
in the engine, then through the real Ray Serve gRPC path."""

import os
import shutil
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from helpers import count_unet_calls, request
from instill_contract import check_output, task_input
from served import MODEL, SMALL, TINY, http
from stable_diffusion_xl.apis.instill import parse_json
from stable_diffusion_xl.fields import InvalidRequest
from stable_diffusion_xl.generation.engine import Engine
from stable_diffusion_xl.serving.client import grpc_call
from stable_diffusion_xl.serving.limits import Limits

STYLE, KOHYA = "demo-style", "demo-kohya"  # written by demo-weights
BASE_ONLY = {"steps": 3, "refiner": False}


def image_bytes(engine, **fields) -> bytes:
    return engine.generate([request(seed=21, **{**BASE_ONLY, **fields})])[0].images[0].tobytes()


# In the engine

def test_the_demo_adapters_are_found_in_the_lora_folder(engine):
    assert engine.adapters.names == (KOHYA, STYLE)


@pytest.mark.parametrize("name", [STYLE, KOHYA])
def test_an_adapter_changes_the_image_and_scale_zero_does_not(engine, name):
    plain = image_bytes(engine)
    assert image_bytes(engine, lora=name) != plain
    assert image_bytes(engine, lora=name, lora_scale=0.0) == plain


def test_no_residue_a_plain_request_after_lora_requests_gives_the_same_bytes(engine):
    before = image_bytes(engine)
    image_bytes(engine, lora=[STYLE, KOHYA], lora_scale=[0.7, 1.3])
    image_bytes(engine, lora=STYLE)
    assert image_bytes(engine) == before


@pytest.mark.parametrize("replace", ["renamed into place", "copied over"])
def test_an_adapter_replaced_on_disk_is_loaded_again_before_its_next_use(weights_dir, tmp_path, replace):
    """Retrained with overwrite (renamed into place) or copied over, the file under a name the replica had loaded
    once was ignored: the old adapter was served for good."""
    demo = weights_dir / "demo" / "loras"
    for name, source in (("swapped", STYLE), ("other", KOHYA)):
        shutil.copyfile(demo / f"{source}.safetensors", tmp_path / f"{name}.safetensors")
    engine = Engine.load(weights_dir, demo=True, lora_dir=tmp_path)
    before, other = image_bytes(engine, lora="swapped"), image_bytes(engine, lora="other")
    assert before != other
    if replace == "renamed into place":
        shutil.copyfile(demo / f"{KOHYA}.safetensors", tmp_path / ".staged")
        os.replace(tmp_path / ".staged", tmp_path / "swapped.safetensors")
    else:
        shutil.copyfile(demo / f"{KOHYA}.safetensors", tmp_path / "swapped.safetensors")
    assert image_bytes(engine, lora="swapped") == other
    assert engine.adapters.loaded == ["other", "swapped"]


@pytest.mark.slow  # many denoising steps: seconds, not the fast subset's milliseconds
def test_stacked_adapters_differ_from_each_alone_and_scales_matter(engine):
    stacked = image_bytes(engine, lora=[STYLE, KOHYA])
    assert stacked not in (image_bytes(engine, lora=STYLE), image_bytes(engine, lora=KOHYA))
    assert image_bytes(engine, lora=STYLE, lora_scale=0.5) != image_bytes(engine, lora=STYLE)


@pytest.mark.slow  # many denoising steps: seconds, not the fast subset's milliseconds
def test_requests_with_other_adapters_or_scales_never_share_a_batch_and_equal_their_solo_result(engine):
    batch = [request(seed=3, **BASE_ONLY), request(seed=3, lora=STYLE, **BASE_ONLY),
             request(seed=3, lora=STYLE, lora_scale=0.5, **BASE_ONLY), request(seed=3, lora=KOHYA, **BASE_ONLY)]
    together = []
    calls = count_unet_calls(engine, lambda: together.extend(engine.generate(batch)))
    assert calls["base"] == 4 * 3  # four batches of three steps
    for req, generation in zip(batch, together):
        assert generation.images[0].tobytes() == engine.generate([req])[0].images[0].tobytes()


@pytest.mark.slow  # many denoising steps: seconds, not the fast subset's milliseconds
def test_with_a_lora_the_refiner_is_off_unless_asked_for(engine):
    assert request(lora=STYLE).refiner is False and request().refiner is True
    base_only = count_unet_calls(engine, lambda: engine.generate([request(lora=STYLE, steps=5)]))
    asked = count_unet_calls(engine, lambda: engine.generate([request(lora=STYLE, steps=5, refiner=True)]))
    assert (base_only, asked) == ({"base": 5, "refiner": 0}, {"base": 4, "refiner": 1})


@pytest.mark.slow  # many denoising steps: seconds, not the fast subset's milliseconds
def test_resident_adapters_stay_within_the_limit_least_recently_used_out(weights_dir):
    engine = Engine.load(weights_dir, demo=True, max_loras=1)
    engine.generate([request(lora=STYLE, **BASE_ONLY)])
    assert engine.adapters.loaded == [STYLE]
    engine.generate([request(lora=KOHYA, **BASE_ONLY)])
    assert engine.adapters.loaded == [KOHYA]
    assert sorted(engine.base.unet.peft_config) == [KOHYA]  # what peft holds, not only our bookkeeping


@pytest.mark.parametrize("name", ["missing", "../demo-style", "/etc/passwd", "https://hub/x.safetensors", "..",
                                  "demo-style.safetensors/..", "a/b"])
def test_a_name_that_is_not_an_adapter_in_the_folder_is_rejected_listing_what_exists(name):
    limits = Limits(lora_names=(KOHYA, STYLE))
    with pytest.raises(InvalidRequest) as caught:
        parse_json({"data": {"prompt": "a cat"}, "parameter": {"lora": name}}, limits)
    assert caught.value.field == "parameter.lora"
    assert caught.value.reason.endswith("on this deployment; available: demo-kohya, demo-style")


@pytest.mark.parametrize("parameter, field, words", [
    ({"lora": [STYLE, STYLE]}, "lora", "names an adapter more than once"),
    ({"lora": [STYLE, KOHYA], "lora-scale": [1.0, 0.5, 0.2]}, "lora-scale", "has 3 scales for 2 adapters"),
    ({"lora": STYLE, "lora-scale": 2.5}, "lora-scale", "must be from 0.0 to 2.0"),
    ({"lora": 7}, "lora", "must be a string or a list of strings"),
    ({"lora": STYLE, "lora-scale": "high"}, "lora-scale", "must be a number or a list of numbers"),
])
def test_bad_lora_fields_are_named(parameter, field, words):
    with pytest.raises(InvalidRequest) as caught:
        parse_json({"prompt": "a cat", **parameter}, Limits(lora_names=(KOHYA, STYLE)))
    assert caught.value.field == field and words in caught.value.reason


# Through the real Ray Serve gRPC path

@pytest.mark.slow
def test_over_grpc_an_adapter_changes_the_image_scale_zero_does_not_and_no_residue_remains(cluster):
    def call(**parameter):
        output = grpc_call(cluster.channel, MODEL, task_input(seed=31, **TINY, **parameter))[0]
        check_output(output)
        return output

    plain = call()
    styled = call(lora=STYLE)
    assert styled["data"] != plain["data"]
    assert styled["metadata"]["usage"]["lora"] == [STYLE] and styled["metadata"]["usage"]["lora-scale"] == [1.0]
    assert call(lora=STYLE, **{"lora-scale": 0})["data"] == plain["data"]
    call(lora=[KOHYA, STYLE], **{"lora-scale": [0.5, 1.5]})
    assert call()["data"] == plain["data"]


@pytest.mark.slow
def test_over_grpc_concurrent_calls_with_different_adapters_each_equal_their_solo_result(cluster):
    calls = [task_input(seed=40 + i, **TINY, **lora) for i, lora in
             enumerate([{"lora": STYLE}, {"lora": KOHYA}, {}, {"lora": STYLE, "lora-scale": 0.3}])]
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(lambda call: grpc_call(cluster.channel, MODEL, call)[0], calls))
    for call, output in zip(calls, together):
        assert grpc_call(cluster.channel, MODEL, call)[0]["data"] == output["data"]


@pytest.mark.slow
def test_over_grpc_the_resident_limit_holds_and_the_status_lists_the_adapters(cluster):
    for name in (STYLE, KOHYA, STYLE):
        grpc_call(cluster.channel, SMALL, task_input(seed=1, lora=name, **TINY))
        status, body, _ = http(cluster.ports, SMALL, timeout=10)
        assert status == 200 and body["loras"] == {"available": [KOHYA, STYLE], "loaded": [name], "trigger_tokens": {}}
    assert "euler" in body["schedulers"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["missing", "../demo-style", "https://hub/x.safetensors"])
def test_over_grpc_unknown_names_and_paths_are_invalid_argument_listing_what_exists(cluster, name):
    with pytest.raises(grpc.RpcError) as caught:
        grpc_call(cluster.channel, MODEL, task_input(lora=name, **TINY))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("task_inputs[0].parameter.lora: no adapter named")
    assert caught.value.details().endswith("available: demo-kohya, demo-style")
