"""Settings are checked at start-up, and whoever starts the model reads why it failed: the variable, the value
and what is allowed, from the CLI at once and from Ray's own application message in a deployment."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from stable_diffusion_xl.serving.local_serve import Application, DeployFailed, serving
from stable_diffusion_xl.weights.layout import FETCH_COMMAND

pytestmark = pytest.mark.slow


def deploy_failure(env: dict, tmp_path: Path) -> str:
    """The message of the application that `env` fails to deploy, as Ray's Serve API gives it."""
    ray_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    try:
        with pytest.raises(DeployFailed) as caught, serving([Application("default", env)],
                                                            log_path=tmp_path / "serve.log", ray_dir=ray_dir):
            pass
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)
    assert "application 'default' failed to deploy" in str(caught.value)
    return str(caught.value)


@pytest.mark.parametrize("setting, message", [
    # With warm-up off, a batch size of 0 used to reach RUNNING and then fail every call.
    ({"SDXL_MAX_BATCH_SIZE": "0"}, 'SDXL_MAX_BATCH_SIZE="0": must be an integer from 1 to 64'),
    # fp8 needs fp8 tensor cores: this machine's replica runs on the CPU.
    ({"SDXL_QUANTIZE": "fp8"}, "SDXL_QUANTIZE=fp8 needs an NVIDIA GPU of compute capability 8.9 or newer"),
])
def test_a_bad_setting_fails_the_deployment_with_rays_message_naming_it(weights_dir, tmp_path, setting, message):
    env = {"SDXL_DEMO_WEIGHTS": "1", "SDXL_WEIGHTS_DIR": str(weights_dir), "SDXL_WARM_UP": "0", **setting}
    assert message in deploy_failure(env, tmp_path)


def test_missing_weights_fail_the_deployment_with_a_message_carrying_the_fetch_command(tmp_path):
    """Raised in the replica's constructor, the application's message said only "Failed to update the
    deployments ['StableDiffusionXL']"; the reason was in Ray's replica logs alone."""
    empty = tmp_path / "weights"
    empty.mkdir()
    failure = deploy_failure({"SDXL_WEIGHTS_DIR": str(empty), "SDXL_DEMO_WEIGHTS": "0"}, tmp_path)
    assert f"no SDXL weights in {empty}/stable-diffusion-xl-base-1.0" in failure and FETCH_COMMAND in failure


@pytest.mark.parametrize("command", ["serve", "try"])
@pytest.mark.parametrize("setting, message", [
    ({"SDXL_MAX_N": "abc"}, 'error: SDXL_MAX_N="abc": must be an integer from 1 to 64'),
    # This machine's torch has no CUDA: the replica would refuse to start, so the command refuses at once.
    ({"SDXL_DEVICE": "cuda"}, "error: SDXL_DEVICE=cuda asks for a GPU, but torch cannot use it"),
])
def test_the_cli_refuses_a_bad_setting_before_starting_ray(weights_dir, command, setting, message):
    result = subprocess.run([sys.executable, "-m", "stable_diffusion_xl", command, "--demo", "--weights",
                             str(weights_dir)], capture_output=True, text=True, env={**os.environ, **setting},
                            timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(message)
    assert "starting Ray" not in result.stderr and "Traceback" not in result.stderr
