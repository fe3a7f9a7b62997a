"""The compiled engine (SDXL_COMPILE=1: the UNets' transformer blocks) on demo weights: same images as the eager
engine, every shape compiled during the warm-up and none at request time, and the engine's recoveries (NaN
re-decode, out-of-memory splits, per-image seeds, cancellation) unchanged. LoRA adapters are refused.

The compiled engine is built once for the module, with a maximum batch of 3. Its blocks are compiled with torch's
`aot_eager` backend: dynamo's graph capture, guards and recompiles and AOT autograd's decompositions, everything but
inductor's code generation, which the compile cache's tests (test_compile_cache.py) run.
`SDXL_TEST_COMPILE_BACKEND=inductor` runs these tests with inductor, as deployments compile.
"""

import os
import time
from types import SimpleNamespace

import pytest
import torch
from torch._inductor.utils import fresh_cache

from helpers import ROUNDING, count_unet_calls, max_pixel_difference, nan_decodes, request
from stable_diffusion_xl.generation import compile as compilation
from stable_diffusion_xl.generation.compile import CompileRefused, compiled_graphs
from stable_diffusion_xl.generation.engine import Engine
from stable_diffusion_xl.generation.results import Cancelled, Progress
from stable_diffusion_xl.generation.schedulers import SCHEDULERS
from stable_diffusion_xl.serving.environment import SettingError
from stable_diffusion_xl.serving.settings import Settings

BACKEND = os.environ.get("SDXL_TEST_COMPILE_BACKEND", "aot_eager")


@pytest.fixture(scope="module")
def compiled(weights_dir, tmp_path_factory):
    """A compiled engine after its warm-up, how many graphs the warm-up compiled, and how long it took."""
    with pytest.MonkeyPatch.context() as patch, fresh_cache():  # inductor's caches in a temporary folder
        patch.setattr(compilation, "BACKEND", BACKEND)
        engine = Engine.load(weights_dir, demo=True, max_batch_size=3, compile=True,
                             lora_dir=tmp_path_factory.mktemp("no-adapters"),
                             compile_cache=tmp_path_factory.mktemp("compile-cache"))
        graphs, started = compiled_graphs(), time.perf_counter()
        engine.warm_up()
        yield SimpleNamespace(engine=engine, graphs=compiled_graphs() - graphs,
                              warm_up_seconds=time.perf_counter() - started)
    torch._dynamo.reset()  # drop the compiled code and its guards with the engine


def test_compiling_refuses_a_folder_of_lora_adapters(weights_dir):
    with pytest.raises(CompileRefused, match=r"SDXL_COMPILE=1 does not combine with LoRA adapters, and .* has 2 "
                                           r"\(demo-kohya, demo-style\).*SDXL_COMPILE=0, or SDXL_LORA_DIR"):
        Engine.load(weights_dir, demo=True, compile=True)


def test_compiling_needs_the_warm_up():
    with pytest.raises(SettingError, match="SDXL_COMPILE=1 needs SDXL_WARM_UP=1"):
        Settings.from_env({"SDXL_COMPILE": "1", "SDXL_WARM_UP": "0"})
    assert Settings.from_env({"SDXL_COMPILE": "on"}).compile and not Settings.from_env({}).compile


def test_an_unknown_compile_mode_is_refused(weights_dir, tmp_path):
    with pytest.raises(CompileRefused, match="compile mode 'reduce-overhead': must be one of default, "):
        Engine.load(weights_dir, demo=True, compile=True, compile_mode="reduce-overhead", lora_dir=tmp_path)


@pytest.mark.slow
def test_the_warm_up_compiles_the_transformer_blocks_once_per_width_for_every_shape(compiled):
    # One graph per block width (the demo base's cross-attention is wider than its refiner's) for batches of 2 and
    # more, and one for batch 1 (torch specialises sizes of 1). Every block of a UNet shares its width's graph.
    assert compiled.graphs == 4, f"{compiled.graphs} graphs in {compiled.warm_up_seconds:.0f} s"
    engine = compiled.engine
    for network in (engine.base.unet, engine.refiner.unet, engine.vae):  # compiled: the blocks, nothing else
        kinds = {type(module).__name__ for module in network.modules() if module._compiled_call_impl is not None}
        assert kinds == ({"BasicTransformerBlock"} if network is not engine.vae else set())


SHAPES = {"ensemble-1:1-n=1": {}, "ensemble-16:9-n=2": {"n": 2, "aspect_ratio": "16:9"},
          "base-16:9-n=1": {"refiner": False, "aspect_ratio": "16:9"}, "base-1:1-n=2": {"n": 2, "refiner": False}}
# Every sampler, each with one of the shapes in turn: both pipelines, two aspect ratios, two batch sizes.
SAME_IMAGES = {f"{name}-{shape}": request(seed=31 + index, scheduler=name, **SHAPES[shape])
               for index, (name, shape) in enumerate(zip(SCHEDULERS, [*SHAPES] * 2))}


@pytest.mark.slow
@pytest.mark.parametrize("req", SAME_IMAGES.values(), ids=SAME_IMAGES.keys())
def test_images_equal_the_eager_engines_within_float_tolerance(engine, compiled, req):
    eager, ours = engine.generate([req])[0], compiled.engine.generate([req])[0]
    assert ours.seeds == eager.seeds and (ours.width, ours.height) == (eager.width, eager.height)
    for image, reference in zip(ours.images, eager.images, strict=True):  # fused QKV projections round differently
        assert max_pixel_difference(image, reference) <= ROUNDING


AFTER_WARM_UP = {
    "largest batch": request(aspect_ratio="9:21", n=3),
    "a UNet batch the warm-up did not run (4)": request(aspect_ratio="16:9", n=2),
    "another one (3, guidance off)": request(aspect_ratio="5:4", n=3, guidance_scale=1.0),
    "batch 1, guidance off": request(aspect_ratio="21:9", guidance_scale=1.0),
    "batch 2, guidance off": request(aspect_ratio="4:5", n=2, guidance_scale=1.0),
    "batches of 3 and 1": request(n=4),
    "base alone": request(aspect_ratio="3:2", refiner=False),
    "negative prompt": request(negative_prompt="blurry"),
    "a prompt of several 75-token chunks (compel)": request("a (red)1.3 fox in deep snow under a pale moon, " * 20),
    **{f"sampler {name}": request(scheduler=name) for name in SCHEDULERS},  # float and integer timesteps
}


@pytest.mark.slow
def test_requests_after_the_warm_up_compile_nothing(compiled):
    for name, req in AFTER_WARM_UP.items():
        before = compiled_graphs()
        compiled.engine.generate([req])
        assert compiled_graphs() == before, f"{name} compiled a graph"


@pytest.mark.slow
def test_image_i_of_n_is_still_the_single_image_of_seed_plus_i(compiled):
    two = compiled.engine.generate([request(seed=40, n=2)])[0]
    alone = compiled.engine.generate([request(seed=41)])[0]
    assert max_pixel_difference(two.images[1], alone.images[0]) <= ROUNDING


@pytest.mark.slow
def test_a_cancelled_generation_stops_after_the_step_under_way(compiled):
    engine, progress = compiled.engine, Progress()

    def cancel_in_step_2(*_):
        if progress.steps == 1:
            progress.cancel()

    hook = engine.base.unet.register_forward_hook(cancel_in_step_2)  # on the compiled UNet's wrapper, outside its graph
    try:
        calls = count_unet_calls(engine, lambda: pytest.raises(Cancelled, engine.generate, [request()], progress))
    finally:
        hook.remove()
    assert calls == {"base": 2, "refiner": 0}


@pytest.mark.slow
def test_a_nan_decode_is_redone_and_gives_the_real_image(compiled, monkeypatch):
    engine = compiled.engine
    expected = engine.generate([request(seed=42)])[0].images[0]
    nan_decodes(engine, monkeypatch)["left"] = 1
    recovered = engine.generate([request(seed=42)])[0]
    assert recovered.events["nan_redecodes"] == 1 and recovered.images[0].tobytes() == expected.tobytes()


@pytest.mark.slow
def test_out_of_memory_splits_the_batch_into_shapes_already_compiled(compiled):
    engine = compiled.engine
    unsplit = engine.generate([request(seed=43, n=2)])[0]

    def out_of_memory_above_one_image(_unet, args):
        if args[0].shape[0] > 2:  # two images with guidance
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    hook = engine.base.unet.register_forward_pre_hook(out_of_memory_above_one_image)
    before = compiled_graphs()
    try:
        split = engine.generate([request(seed=43, n=2)])[0]
    finally:
        hook.remove()
    assert split.events["oom_splits"] == 1 and split.seeds == unsplit.seeds and compiled_graphs() == before
    for image, reference in zip(split.images, unsplit.images, strict=True):
        assert max_pixel_difference(image, reference) <= ROUNDING
