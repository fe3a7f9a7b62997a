"""Which files a fetch takes, and what happens when weights are missing or the hub is out of reach."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stable_diffusion_xl.generation.engine import Engine
from stable_diffusion_xl.weights.fetch import fetch, select_files, sources_to_fetch
from stable_diffusion_xl.weights.layout import (
    BASE,
    DEMO_SUBDIR,
    REFINER,
    SAFETY_CHECKER,
    VAE_FP16_FIX,
    WeightPaths,
    WeightsMissing,
    load_manifest,
)

LISTINGS = json.loads((Path(__file__).parents[1] / "data" / "hub_listings.json").read_text())
DUPLICATE_FORMATS = (".onnx", ".onnx_data", ".msgpack", ".bin", ".xml", ".png", ".jpg", ".md")


@pytest.mark.parametrize("folder", list(load_manifest()))
def test_fetch_takes_only_the_fp16_safetensors_and_configs_the_loader_reads(folder):
    source = load_manifest()[folder]
    selected = select_files(source, LISTINGS[source.repo_id])
    assert sorted(selected) == sorted(source.files)
    assert not [name for name in selected if name.endswith(DUPLICATE_FORMATS)]
    assert not [name for name in selected if name.startswith(("sd_xl_", "vae_1_0/", "sdxl"))]  # single-file copies
    # These repositories publish one safetensors file, under the plain name: the VAE fix's holds fp32 weights (loaded
    # as fp16), the safety checker's at the pinned revision holds fp16 weights itself.
    if folder not in (VAE_FP16_FIX, SAFETY_CHECKER):
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
    with pytest.raises(WeightsMissing, match="python -m stable_diffusion_xl fetch-weights") as caught:
        Engine.load(weights_dir)  # only demo weights are there
    assert "`--demo`" in str(caught.value) and "SDXL_DEMO_WEIGHTS=1" in str(caught.value)  # how to ask for them


@pytest.mark.slow  # the command line in a subprocess
def test_fetch_without_the_hub_says_so_in_one_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "stable_diffusion_xl", "fetch-weights", "--weights", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert result.returncode == 1
    assert "could not fetch the weights from the Hugging Face hub" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow  # the command line in a subprocess
def test_fetching_a_lora_without_the_hub_says_so_in_one_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "stable_diffusion_xl", "fetch-weights", "--lora", "someone/sdxl-style",
         "--weights", str(tmp_path)], capture_output=True, text=True, env=env, timeout=120,
    )
    assert result.returncode == 1 and "could not fetch the weights from the Hugging Face hub" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow  # the command line in a subprocess
@pytest.mark.parametrize("name", ["../escape", "a/b", "http://x"])
def test_a_fetched_lora_gets_a_plain_name_or_nothing_is_fetched(tmp_path, name):
    result = subprocess.run(
        [sys.executable, "-m", "stable_diffusion_xl", "fetch-weights", "--lora", "someone/sdxl-style", "--lora-file",
         "style.safetensors", "--lora-name", name, "--weights", str(tmp_path)], capture_output=True, text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120,
    )
    assert result.returncode == 2 and "is no plain adapter name" in result.stderr and not any(tmp_path.iterdir())


def test_the_safety_checker_is_an_optional_entry_pinned_to_its_fp16_commit():
    manifest = load_manifest()
    assert [folder for folder, source in manifest.items() if source.optional] == [SAFETY_CHECKER]
    checker = manifest[SAFETY_CHECKER]
    assert checker.repo_id == "CompVis/stable-diffusion-safety-checker"
    assert checker.revision == "1664e306d2258485321cbbd8083074c9474d4e41"  # the commit that added fp16 safetensors
    assert [s.folder for s in sources_to_fetch(manifest)] == [BASE, REFINER, VAE_FP16_FIX]
    assert [s.folder for s in sources_to_fetch(manifest, include_optional=True)] == list(manifest)


class FakeHub:
    """huggingface_hub's listing and snapshot download, answered from tests/data/hub_listings.json."""

    def __init__(self):
        self.downloads = {}

    def list_repo_files(self, repo_id, revision=None):
        return LISTINGS[repo_id]

    def snapshot_download(self, repo_id, *, revision, allow_patterns, local_dir):
        assert set(allow_patterns) <= set(LISTINGS[repo_id])
        self.downloads[repo_id] = (revision, sorted(allow_patterns))
        for name in allow_patterns:
            (Path(local_dir) / name).parent.mkdir(parents=True, exist_ok=True)
            (Path(local_dir) / name).write_bytes(b"x")
        return str(local_dir)


@pytest.mark.parametrize("include_optional", [False, True])
def test_fetch_takes_the_optional_safety_checker_only_when_asked(tmp_path, monkeypatch, include_optional):
    import huggingface_hub

    hub = FakeHub()
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda: hub)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub.snapshot_download)
    if include_optional:
        fetch(tmp_path, include_optional=True)
    else:
        fetch(tmp_path)
    manifest = load_manifest()
    wanted = [source for source in manifest.values() if include_optional or not source.optional]
    assert hub.downloads == {s.repo_id: (s.revision, sorted(s.files)) for s in wanted}
    assert (tmp_path / SAFETY_CHECKER).exists() == include_optional
    if include_optional:  # the three files the loader reads, not the pickled pytorch_model.bin
        checker = tmp_path / SAFETY_CHECKER
        assert sorted(p.name for p in checker.iterdir()) == ["config.json", "model.safetensors",
                                                             "preprocessor_config.json"]


def test_demo_weights_hold_an_fp16_safety_checker_in_the_layout_a_fetch_brings(weights_dir):
    from safetensors import safe_open

    folder = WeightPaths.locate(weights_dir, demo=True).safety_checker
    assert folder == weights_dir / DEMO_SUBDIR / SAFETY_CHECKER
    assert sorted(p.name for p in folder.iterdir()) == sorted(load_manifest()[SAFETY_CHECKER].files)
    with safe_open(folder / "model.safetensors", "pt") as weights:
        assert {weights.get_slice(name).get_dtype() for name in weights.keys()} == {"F16"}
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "clip" and config["vision_config"]["image_size"] == 32
    assert json.loads((folder / "preprocessor_config.json").read_text())["crop_size"] == {"height": 32, "width": 32}
