"""Instill Core's hardware choices, deployed as Core deploys them (its RAY_* variables, the dashboard's REST API) on a
loopback Ray node that declares one GPU this machine does not have: Ray schedules on it, torch (a CPU build here)
finds no CUDA. A replica given a GPU it cannot use never serves; one that asked for none says it runs on the CPU."""

import shutil
import tempfile
import time
from pathlib import Path

import pytest

from served import http
from stable_diffusion_xl.serving.hardware import NoUsableGPU, replica_device
from stable_diffusion_xl.serving.local_serve import Application, DeployFailed, serving

CORE_BOUNDS = {"RAY_NUM_OF_MIN_REPLICAS": "1", "RAY_NUM_OF_MAX_REPLICAS": "10"}
CORE_GPU = {"RAY_NUM_OF_GPUS": "0", "RAY_TOTAL_VRAM": "", **CORE_BOUNDS}  # hardware GPU, a model ID without -Ng
CORE_CPU = {"RAY_NUM_OF_CPUS": "1", **CORE_BOUNDS}


@pytest.fixture
def ray_dir():
    folder = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Ray's socket paths must fit
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def model_env(weights_dir, **env) -> dict:
    return {"SDXL_DEMO_WEIGHTS": "1", "SDXL_WEIGHTS_DIR": str(weights_dir), "SDXL_WARM_UP": "0", **env}


def test_asking_for_cuda_where_torch_has_none_is_refused_naming_what_torch_sees():
    with pytest.raises(NoUsableGPU) as refused:
        replica_device("cuda")
    message = str(refused.value)
    assert message.startswith("SDXL_DEVICE=cuda asks for a GPU, but torch cannot use it")
    assert "torch 2.13.0" in message and "no CUDA (a CPU-only build)" in message and "0 CUDA devices" in message
    assert "hardware CPU on Instill Core, or SDXL_DEVICE=cpu" in message


@pytest.mark.slow
def test_a_replica_given_a_gpu_it_cannot_use_fails_the_deployment_before_loading_weights(weights_dir, tmp_path,
                                                                                          ray_dir):
    """Core's GPU hardware on a node whose GPU torch cannot use: DEPLOY_FAILED, with the reason in the status Core
    reads, after Serve's three tries of the constructor, each failing before a weight is read."""
    started = time.monotonic()
    with pytest.raises(DeployFailed) as caught, serving([Application("default", model_env(weights_dir, **CORE_GPU))],
                                                        gpus=1, timeout=240, log_path=tmp_path / "serve.log",
                                                        ray_dir=ray_dir):
        pass
    failure = str(caught.value)
    assert "application 'default' failed to deploy" in failure
    assert "NoUsableGPU: Ray gave this replica GPU 0, but torch cannot use it" in failure
    assert "no CUDA (a CPU-only build)" in failure and "CUDA_VISIBLE_DEVICES='0'" in failure
    assert "NVIDIA driver 580 or newer" in failure and "SDXL_DEVICE=cpu" in failure
    print(f"refused in {time.monotonic() - started:.0f} s, Ray's start included")


@pytest.mark.slow
def test_hardware_cpu_runs_on_the_cpu_and_says_so_and_sdxl_device_overrides_a_gpu(weights_dir, tmp_path, ray_dir):
    """Hardware CPU asks for no GPU and runs; Core's GPU hardware with SDXL_DEVICE=cpu runs on the CPU knowingly, with
    the declared GPU left unused. Both status answers say `cpu`."""
    applications = [Application("cpu", model_env(weights_dir, **CORE_CPU)),
                    Application("forced", model_env(weights_dir, SDXL_DEVICE="cpu", **CORE_GPU))]
    with serving(applications, gpus=1, timeout=240, log_path=tmp_path / "serve.log", ray_dir=ray_dir) as ports:
        for application in ("cpu", "forced"):
            status, body, _ = http(ports, application, timeout=30)
            assert status == 200 and body["status"] == "ready"
            assert (body["device"], body["gpu"]) == ("cpu", None)
        status, generated, _ = http(ports, "cpu", {"prompt": "cat napping", "steps": 2, "refiner": False})
        assert status == 200 and generated[0]["data"]["choices"][0]["image"].startswith("data:image/jpeg;base64,")
