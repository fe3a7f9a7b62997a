"""SDXL_QUANTIZE=fp8 needs fp8 tensor cores: anywhere else the replica refuses to start, naming the setting and the
device, before a weight is read. (Its speed and its effect on the images are measured
on a GPU by bench/gpu.py.)"""

import shutil
import subprocess
import sys

import pytest
import torch

from stable_diffusion_xl.generation.engine import Engine
from stable_diffusion_xl.generation.quantize import QuantizeRefused, refuse_unsupported
from stable_diffusion_xl.serving.environment import SettingError
from stable_diffusion_xl.serving.settings import Settings

ON_CPU = "SDXL_QUANTIZE=fp8 needs an NVIDIA GPU of compute capability 8.9 or newer (Ada, Hopper, Blackwell); this " \
         "replica runs on the CPU. Unset SDXL_QUANTIZE"


def test_on_the_cpu_engine_load_refuses_before_reading_a_weight(weights_dir, tmp_path):
    """Every weight file is emptied: reading one would fail otherwise, so the refusal comes first."""
    shutil.copytree(weights_dir / "demo", tmp_path / "demo")
    for weights in (tmp_path / "demo").rglob("*.safetensors"):
        weights.write_bytes(b"")
    with pytest.raises(QuantizeRefused) as refused:
        Engine.load(tmp_path, demo=True, device="cpu", quantize="fp8")
    assert str(refused.value) == ON_CPU


def test_unset_it_loads_in_full_precision(weights_dir):
    engine = Engine.load(weights_dir, demo=True, device="cpu")
    assert engine.quantization is None
    assert all(type(p) is torch.nn.Parameter for p in engine.base.unet.parameters())


def test_an_older_gpu_is_named_in_the_refusal(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    with pytest.raises(QuantizeRefused, match=r"^SDXL_QUANTIZE=fp8 needs .*8\.9 or newer .*; this replica's GPU, "
                                              r"NVIDIA A100-SXM4-80GB, is 8\.0\. Unset SDXL_QUANTIZE$"):
        refuse_unsupported("fp8", "cuda")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    refuse_unsupported("fp8", "cuda")  # a Hopper GPU: no refusal


def test_lora_adapters_are_refused_with_fp8(monkeypatch, weights_dir, tmp_path):
    """Loading an adapter onto float8 layers fails (seen with torchao 0.18 and peft): the start refuses instead."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    loras = weights_dir / "demo" / "loras"
    refusal = (r"^SDXL_QUANTIZE=fp8 does not combine with LoRA adapters, and .* has 2 \(demo-kohya, demo-style\).*"
               r"SDXL_LORA_DIR to a folder without adapters$")
    with pytest.raises(QuantizeRefused, match=refusal):
        refuse_unsupported("fp8", "cuda", loras)
    refuse_unsupported("fp8", "cuda", tmp_path)  # an empty folder
    refuse_unsupported(None, "cpu", loras)  # not quantizing: adapters are fine


def test_the_setting_takes_fp8_or_nothing():
    assert Settings.from_env({"SDXL_QUANTIZE": "fp8"}).quantize == "fp8"
    assert Settings.from_env({}).quantize is None and Settings.from_env({"SDXL_QUANTIZE": ""}).quantize is None
    with pytest.raises(SettingError, match=r'^SDXL_QUANTIZE="int4": must be one of fp8$'):
        Settings.from_env({"SDXL_QUANTIZE": "int4"})


@pytest.mark.slow  # the command line in a subprocess
@pytest.mark.parametrize("command", ["serve", "try"])
def test_the_cli_refuses_fp8_on_this_cpu_in_one_line_before_starting_ray(weights_dir, command):
    env = {"PATH": "/usr/bin:/bin", "SDXL_QUANTIZE": "fp8", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, "-m", "stable_diffusion_xl", command, "--demo", "--weights",
                             str(weights_dir)], capture_output=True, text=True, env=env, timeout=120)
    assert (result.returncode, result.stderr) == (2, f"error: {ON_CPU}\n")
