"""The optional safety checker: loaded from its folder (safetensors only), one batched call per list of images.
`helpers.write_flagging_checker` makes a checker that flags exactly one given image."""

import shutil

import pytest
import torch
from PIL import Image

from helpers import write_flagging_checker
from instill_contract import check_output, task_input
from served import FILTERED, FLAGGED_SEED, MODEL, TINY, http, metric_total, scrape, wait_for_metric
from stable_diffusion_xl.generation.engine import Engine
from stable_diffusion_xl.generation.request import TextToImageRequest
from stable_diffusion_xl.generation.safety import FILES, SafetyChecker
from stable_diffusion_xl.serving.client import grpc_call
from stable_diffusion_xl.weights.layout import SAFETY_CHECKER, WeightPaths, WeightsMissing, load_manifest

SEEDS = (1, 2, 3, 4)


@pytest.fixture(scope="module")
def demo_checker_dir(weights_dir):
    return WeightPaths.locate(weights_dir, demo=True).safety_checker


@pytest.fixture(scope="module")
def images(engine):
    return [engine.generate([TextToImageRequest(prompt="a cat", steps=2, refiner=False, seed=seed)])[0].images[0]
            for seed in SEEDS]


def _batch_sizes(checker: SafetyChecker) -> list[int]:
    """Records the batch size of each run of the checker's image encoder."""
    sizes = []
    checker.model.vision_model.register_forward_hook(lambda module, args, output: sizes.append(args[0].shape[0]))
    return sizes


def test_the_demo_checker_loads_from_the_demo_weights_and_flags_nothing(engine, demo_checker_dir, images):
    checker = SafetyChecker.load(demo_checker_dir, engine.device, engine.base.dtype)
    model = checker.model
    # Every concept and special-care embedding and threshold is 1: no cosine similarity exceeds its threshold.
    for name in ("concept_embeds", "concept_embeds_weights", "special_care_embeds", "special_care_embeds_weights"):
        assert torch.equal(getattr(model, name), torch.ones_like(getattr(model, name))), name
    plain = [Image.new("RGB", (256, 256), colour) for colour in ("black", "white", "red")]
    sizes = _batch_sizes(checker)
    assert checker.flagged([*images, *plain]) == [False] * (len(images) + len(plain))
    assert sizes == [len(images) + len(plain)]
    assert checker.flagged([]) == []


@pytest.mark.parametrize("index", [0, 2])
def test_a_flagging_checker_flags_exactly_its_image_among_several_in_one_call(tmp_path, demo_checker_dir, images,
                                                                           index):
    others = images[:index] + images[index + 1 :]
    folder = write_flagging_checker(tmp_path / "checker", images[index], others, source=demo_checker_dir)
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)
    checker = SafetyChecker.load(folder, "cpu", torch.float32)
    sizes = _batch_sizes(checker)
    assert checker.flagged(images) == [i == index for i in range(len(images))]
    assert sizes == [len(images)]
    assert checker.flagged([images[index]]) == [True] and checker.flagged(others) == [False] * len(others)


def test_the_checker_refuses_a_folder_without_its_files(tmp_path, demo_checker_dir):
    with pytest.raises(WeightsMissing, match=r"no safety checker in .*missing config\.json, model\.safetensors, "
                                             r"preprocessor_config\.json\): fetch it with `python -m stable_diff"):
        SafetyChecker.load(tmp_path, "cpu", torch.float32)
    # The hub repository's pickled copy is no substitute: safetensors only.
    shutil.copytree(demo_checker_dir, tmp_path / "bin")
    (tmp_path / "bin" / "model.safetensors").rename(tmp_path / "bin" / "pytorch_model.bin")
    with pytest.raises(WeightsMissing, match=r"missing model\.safetensors\)"):
        SafetyChecker.load(tmp_path / "bin", "cpu", torch.float32)


def test_the_checker_reads_the_files_the_manifest_fetches():
    assert sorted(FILES) == sorted(load_manifest()[SAFETY_CHECKER].files)


# Through the real Ray Serve: FILTERED runs the checker that flags image 0 of this call, MODEL runs none.

@pytest.mark.slow
def test_a_flagged_image_is_a_black_content_filtered_choice_and_the_others_are_untouched(cluster):
    call = task_input(seed=FLAGGED_SEED, n=2, **TINY)
    before = metric_total(scrape(cluster), "ray_sdxl_filtered_images")
    filtered = grpc_call(cluster.channel, FILTERED, call)[0]
    unfiltered = grpc_call(cluster.channel, MODEL, call)[0]
    black, kept = check_output(filtered, ["content_filtered", "success"])
    assert black.size == kept.size and black.convert("L").getextrema() == (0, 0)
    assert filtered["data"]["choices"][1] == unfiltered["data"]["choices"][1]  # the same bytes
    usage = filtered["metadata"]["usage"]
    assert usage["content-filtered"] == [0] and usage["seconds"]["safety_checker"] > 0
    assert unfiltered["metadata"]["usage"]["content-filtered"] == []
    assert "safety_checker" not in unfiltered["metadata"]["usage"]["seconds"]  # off: nothing runs, as before
    assert metric_total(wait_for_metric(cluster, "ray_sdxl_filtered_images", before + 1),
                        "ray_sdxl_filtered_images") >= before + 1


@pytest.mark.slow
def test_a_call_whose_images_are_all_filtered_still_succeeds(cluster):
    output = grpc_call(cluster.channel, FILTERED, task_input(seed=FLAGGED_SEED, **TINY))[0]
    check_output(output, ["content_filtered"])
    status, body, _ = http(cluster.ports, FILTERED, timeout=10)
    assert status == 200 and body["safety_checker"] is True


def test_asking_for_the_filter_without_its_weights_fails_at_start_up_with_the_fetch_command(weights_dir, tmp_path):
    with pytest.raises(WeightsMissing, match="fetch-weights --safety-checker"):
        Engine.load(weights_dir, demo=True, safety_checker=True, safety_checker_dir=tmp_path)
