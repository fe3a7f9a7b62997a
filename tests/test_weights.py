"""Which files a fetch takes, and what happens when weights are missing or the hub is out of reach."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stable_diffusion_xl.engine import Engine
from stable_diffusion_xl.weights import (
    BASE,
    DEMO_SUBDIR,
    REFINER,
    VAE_FP16_FIX,
    WeightsMissing,
    load_manifest,
    select_files,
)

LISTINGS = json.loads((Path(__file__).parent / "data" / "hub_listings.json").read_text())
DUPLICATE_FORMATS = (".onnx", ".onnx_data", ".msgpack", ".bin", ".xml", ".png", ".jpg", ".md")


@pytest.mark.parametrize("folder", list(load_manifest()))
def test_fetch_takes_only_the_fp16_safetensors_and_configs_the_loader_reads(folder):
    source = load_manifest()[folder]
    selected = select_files(source, LISTINGS[source.repo_id])
    assert sorted(selected) == sorted(source.files)
    assert not [name for name in selected if name.endswith(DUPLICATE_FORMATS)]
    assert not [name for name in selected if name.startswith(("sd_xl_", "vae_1_0/", "sdxl"))]  # single-file copies
    if folder != VAE_FP16_FIX:  # that repository publishes its fp32 weights only; they are loaded as fp16
        assert all(".fp16." in name for name in selected if name.endswith(".safetensors"))


def test_refiner_fetch_leaves_out_what_it_shares_with_the_base():
    files = load_manifest()[REFINER].files
    assert not [name for name in files if name.startswith(("text_encoder_2/", "tokenizer_2/", "vae/"))]


def test_selection_fails_loudly_when_the_repository_lacks_a_file():
    source = load_manifest()[BASE]
    listing = [name for name in LISTINGS[source.repo_id] if name != "unet/diffusion_pytorch_model.fp16.safetensors"]
    with pytest.raises(ValueError, match="unet/diffusion_pytorch_model.fp16.safetensors"):
        select_files(source, listing)


def test_demo_weights_have_exactly_the_layout_a_fetch_brings(weights_dir):
    manifest = load_manifest()
    for folder in (BASE, REFINER):
        root = weights_dir / DEMO_SUBDIR / folder
        on_disk = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
        assert on_disk == sorted(manifest[folder].files)


def test_missing_real_weights_fail_with_the_fetch_command_and_never_fall_back_to_demo(weights_dir):
    with pytest.raises(WeightsMissing, match="python -m stable_diffusion_xl fetch-weights"):
        Engine.load(weights_dir)  # only demo weights are there


def test_fetch_without_the_hub_says_so_in_one_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "stable_diffusion_xl", "fetch-weights", "--weights", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert result.returncode == 1
    assert "could not fetch the weights from the Hugging Face hub" in result.stderr
    assert "Traceback" not in result.stderr


def test_fetching_a_lora_without_the_hub_says_so_in_one_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "stable_diffusion_xl", "fetch-weights", "--lora", "someone/sdxl-style",
         "--weights", str(tmp_path)], capture_output=True, text=True, env=env, timeout=120,
    )
    assert result.returncode == 1 and "could not fetch the weights from the Hugging Face hub" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("name", ["../escape", "a/b", "http://x"])
def test_a_fetched_lora_gets_a_plain_name_or_nothing_is_fetched(tmp_path, name):
    result = subprocess.run(
        [sys.executable, "-m", "stable_diffusion_xl", "fetch-weights", "--lora", "someone/sdxl-style", "--lora-file",
         "style.safetensors", "--lora-name", name, "--weights", str(tmp_path)], capture_output=True, text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120,
    )
    assert result.returncode == 2 and "is no plain adapter name" in result.stderr and not any(tmp_path.iterdir())
