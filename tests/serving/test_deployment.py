"""model.py's deployment: Serve options from the environment (Instill Core's RAY_* and our SDXL_*), warm-up and health,
loaded as the image loads it."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest

from stable_diffusion_xl.serving.environment import SettingError
from stable_diffusion_xl.weights.layout import WeightsMissing

MODEL_FILE = Path(__file__).parents[2] / "model.py"


@pytest.fixture
def load_model(monkeypatch, weights_dir):
    """Import model.py as `_model` (its name in the image) with the given environment, whose only RAY_* variables
    are those given, as in a replica Core starts."""

    def load(**env):
        for name in [name for name in os.environ if name.startswith("RAY_")]:
            monkeypatch.delenv(name)
        for name, value in {"SDXL_DEMO_WEIGHTS": "1", "SDXL_WEIGHTS_DIR": str(weights_dir), **env}.items():
            monkeypatch.setenv(name, value)
        spec = importlib.util.spec_from_file_location("_model", MODEL_FILE)
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, "_model", module)  # so Ray pickles the class by reference
        spec.loader.exec_module(module)
        return module

    return load


def options(module):
    deployment = module.deployable(module.Settings.from_env())
    return deployment.max_ongoing_requests, deployment.max_queued_requests, deployment._deployment_config


# Each hardware choice on Instill Core, as the variables model-backend sets for it (docs/deploy.md), and what a
# replica asks Ray for. One replica needs about 14.3 GB at the default batch of 4 (serving/hardware.py).
CORE_BOUNDS = {"RAY_NUM_OF_MIN_REPLICAS": "1", "RAY_NUM_OF_MAX_REPLICAS": "10"}
CORE_HARDWARE = {
    "GPU, model ID without -Ng": ({"RAY_NUM_OF_GPUS": "0", "RAY_TOTAL_VRAM": ""}, {"num_gpus": 1.0}),
    "GPU, model ID ending -1g": ({"RAY_NUM_OF_GPUS": "1", "RAY_TOTAL_VRAM": ""}, {"num_gpus": 1.0}),
    "GPU, model ID ending -2g": ({"RAY_NUM_OF_GPUS": "2", "RAY_TOTAL_VRAM": ""}, {"num_gpus": 2.0}),
    "GPU, the operator's ray.vram 80": ({"RAY_NUM_OF_GPUS": "0", "RAY_TOTAL_VRAM": "80"}, {"num_gpus": 0.2}),
    "GPU type NVIDIA_L4 (24 GB)": ({"RAY_CUSTOM_RESOURCE": "NVIDIA_L4", "RAY_TOTAL_VRAM": "24"},
                                   {"num_gpus": 1.0, "resources": {"NVIDIA_L4": 1.0}}),
    "GPU type NVIDIA_A100 (40 GB)": ({"RAY_CUSTOM_RESOURCE": "NVIDIA_A100", "RAY_TOTAL_VRAM": "40"},
                                     {"num_gpus": 0.5, "resources": {"NVIDIA_A100": 0.5}}),
    "GPU type NVIDIA_L4, model ID ending -1g": ({"RAY_CUSTOM_RESOURCE": "NVIDIA_L4", "RAY_NUM_OF_GPUS": "1"},
                                                {"num_gpus": 1.0, "resources": {"NVIDIA_L4": 1.0}}),
    "a hardware name Core does not know": ({"RAY_CUSTOM_RESOURCE": "MY_CARD", "RAY_TOTAL_VRAM": "",
                                            "RAY_NUM_OF_GPUS": "0"}, {"num_gpus": 1.0, "resources": {"MY_CARD": 1.0}}),
    "CPU": ({"RAY_NUM_OF_CPUS": "1"}, {}),
}


@pytest.mark.parametrize("hardware", CORE_HARDWARE)
def test_each_hardware_choice_on_core_asks_ray_for_what_it_names_within_cores_bounds(load_model, hardware):
    """The SDK alone gave the first row and the unknown name no GPU: Ray then hid the host's GPUs from the replica,
    which ran on the CPU and said nothing."""
    env, asked = CORE_HARDWARE[hardware]
    module = load_model(**env, **CORE_BOUNDS)
    deployment = module.deployable(module.Settings.from_env())
    assert deployment.ray_actor_options == {"num_cpus": 1 if hardware == "CPU" else 0, **asked}
    autoscaling = deployment._deployment_config.autoscaling_config
    assert (autoscaling.min_replicas, autoscaling.initial_replicas, autoscaling.max_replicas) == (1, 1, 10)


def test_outside_core_a_replica_asks_for_no_gpu_and_keeps_our_bounds(load_model):
    module = load_model()
    assert module.deployable(module.Settings.from_env()).ray_actor_options == {"num_cpus": 0}
    autoscaling = options(module)[2].autoscaling_config
    assert (autoscaling.min_replicas, autoscaling.initial_replicas, autoscaling.max_replicas) == (0, 1, 1)


def test_a_bad_ray_variable_fails_the_import_with_the_variable_named(load_model):
    with pytest.raises(SettingError, match='RAY_TOTAL_VRAM="lots": must be a number, 0 or more'):
        load_model(RAY_TOTAL_VRAM="lots")


def test_one_request_running_and_one_ready_per_replica_by_default(load_model):
    ongoing, queued, config = options(load_model())
    assert (ongoing, queued) == (8, 100)
    assert config.autoscaling_config.target_ongoing_requests == 1
    assert config.autoscaling_config.upscale_delay_s == 30
    assert config.autoscaling_config.downscale_delay_s == 1800


def test_serve_options_follow_our_variables_and_instills(load_model):
    module = load_model(SDXL_MAX_ONGOING_REQUESTS="3", SDXL_MAX_QUEUED_REQUESTS="7", SDXL_TARGET_ONGOING_REQUESTS="2",
                        SDXL_DOWNSCALE_DELAY_S="5", RAY_NUM_OF_MIN_REPLICAS="1", RAY_NUM_OF_MAX_REPLICAS="5")
    ongoing, queued, config = options(module)
    assert (ongoing, queued) == (3, 7)
    autoscaling = config.autoscaling_config
    assert (autoscaling.target_ongoing_requests, autoscaling.min_replicas, autoscaling.max_replicas) == (2, 1, 5)
    assert autoscaling.downscale_delay_s == 5


def test_a_minimum_of_replicas_above_one_is_taken(load_model):
    """The SDK sets the minimum first, while its initial and maximum replicas are 1, and Serve refused the
    minimum: RAY_NUM_OF_MIN_REPLICAS=2 failed every deployment. A maximum below the minimum still fails."""
    _, _, config = options(load_model(RAY_NUM_OF_MIN_REPLICAS="2", RAY_NUM_OF_MAX_REPLICAS="3"))
    autoscaling = config.autoscaling_config
    assert (autoscaling.min_replicas, autoscaling.initial_replicas, autoscaling.max_replicas) == (2, 2, 3)
    with pytest.raises(SettingError, match=r"RAY_NUM_OF_MAX_REPLICAS=1: must be at least 1 and at least "
                                           r"RAY_NUM_OF_MIN_REPLICAS \(2\)"):
        load_model(RAY_NUM_OF_MIN_REPLICAS="2", RAY_NUM_OF_MAX_REPLICAS="1")


def test_our_serve_settings_win_over_the_sdks_high_scale_preset(load_model):
    """RAY_IS_HIGH_SCALE_MODEL=true makes the SDK's constructor set 6 ongoing requests and a target of 4: fewer
    calls than a replica holds to make a full run and gather the next, and a target that scales out later."""
    ongoing, _, config = options(load_model(RAY_IS_HIGH_SCALE_MODEL="true"))
    assert ongoing == 8 and config.autoscaling_config.target_ongoing_requests == 1
    assert config.autoscaling_config.upscale_delay_s == 30
    assert config.autoscaling_config.downscale_delay_s == 1800  # ours too, not the preset's 600
    ongoing, _, _ = options(load_model(RAY_IS_HIGH_SCALE_MODEL="true", SDXL_MAX_ONGOING_REQUESTS="5"))
    assert ongoing == 5


def test_a_bad_setting_fails_the_import_with_the_variable_named(load_model):
    with pytest.raises(SettingError, match='SDXL_MAX_N="abc": must be an integer from 1 to 64'):
        load_model(SDXL_MAX_N="abc")


def test_replica_warms_up_every_aspect_ratio_and_reports_a_broken_engine(load_model, monkeypatch):
    module = load_model(SDXL_WARM_UP="1")
    replica_class = module.StableDiffusionXL.func_or_class
    base_calls = []
    original_load = module.Engine.load

    def load_and_count(*args, **kwargs):
        engine = original_load(*args, **kwargs)
        engine.base.unet.register_forward_hook(lambda *_: base_calls.append(1))
        return engine

    monkeypatch.setattr(module.Engine, "load", load_and_count)
    replica = replica_class()
    assert len(base_calls) == 9  # one step of the base per aspect ratio (the other goes to the refiner)
    replica.check_health()
    replica.engine.healthy = False
    with pytest.raises(RuntimeError, match="must be replaced"):
        replica.check_health()


def test_a_replica_asked_to_filter_without_the_checker_fails_to_start_with_the_fetch_command(load_model, tmp_path):
    module = load_model(SDXL_SAFETY_CHECKER="1", SDXL_SAFETY_CHECKER_DIR=str(tmp_path), SDXL_WARM_UP="0")
    with pytest.raises(WeightsMissing, match="fetch-weights --safety-checker"):
        module.StableDiffusionXL.func_or_class()
