"""Tiny random-weight SDXL base and refiner, saved in the real diffusers folder layout.

They load through exactly the code that loads the real weights (same folders, same fp16
safetensors variant, same sharing of text_encoder_2 and VAE), so tests and the demo exercise
the real path in seconds. Their images are noise. The UNets declare a 256-pixel native size,
so the demo generates at a quarter of SDXL's width and height, at the same aspect ratios.
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

from .layout import (
    BASE,
    DEFAULT_WEIGHTS_DIR,
    DEMO_SUBDIR,
    LORA_SUBDIR,
    REFINER,
    SAFETY_CHECKER,
    SDXL_SCHEDULER_CONFIG,
    load_manifest,
)

OPEN_CLIP_WHEEL = "open_clip_torch==3.3.0"  # ships CLIP's BPE vocabulary as bpe_simple_vocab_16e6.txt.gz
CLIP_MERGES = 49152 - 256 - 2  # CLIP uses the first 48,894 merges of that file
HIDDEN, TIME_EMBED = 32, 8
# Adapters for the demo base UNet, in the two formats diffusers' load_lora_weights reads.
DEMO_LORAS = {"demo-style": "diffusers", "demo-kohya": "kohya"}



def build(weights_dir: Path | str = DEFAULT_WEIGHTS_DIR, seed: int = 0) -> Path:
    """Write demo base and refiner folders (and a safety checker) under `weights_dir/demo`; returns that folder."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.utils import logging as diffusers_logging
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    root = Path(weights_dir) / DEMO_SUBDIR
    torch.manual_seed(seed)
    diffusers_logging.set_verbosity_error()  # casting random weights to fp16 is intended here
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer_dir = _write_clip_tokenizer(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
        text_config = CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=37, num_hidden_layers=2,
            num_attention_heads=4, projection_dim=HIDDEN, max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        text_encoder, text_encoder_2 = CLIPTextModel(text_config), CLIPTextModelWithProjection(text_config)
        vae = AutoencoderKL(
            block_out_channels=(8, 16, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=8, layers_per_block=1,
            sample_size=256, scaling_factor=0.13025, force_upcast=True,
        )
        base_unet = _unet(UNet2DConditionModel, cross_attention_dim=2 * HIDDEN, time_ids=6)
        refiner_unet = _unet(UNet2DConditionModel, cross_attention_dim=HIDDEN, time_ids=5)
        shutil.rmtree(root, ignore_errors=True)
        save_pair(root, tokenizer_dir, text_encoder=text_encoder, text_encoder_2=text_encoder_2, vae=vae,
                  base_unet=base_unet, refiner_unet=refiner_unet)
        for index, (name, layout) in enumerate(DEMO_LORAS.items()):
            write_lora(base_unet, root / LORA_SUBDIR / f"{name}.safetensors", seed=seed + 1 + index, layout=layout)
    manifest = load_manifest()
    write_safety_checker(root / SAFETY_CHECKER, seed=seed)
    _keep_only(root / SAFETY_CHECKER, manifest[SAFETY_CHECKER].files)
    (root / "README.md").write_text("Tiny random-weight SDXL pipelines for tests and the demo: their images are "
                                    "noise.\n")
    return root


def save_pair(root: Path, tokenizer_dir: Path, *, text_encoder, text_encoder_2, vae, base_unet, refiner_unet) -> None:
    """SDXL's base and refiner from these networks (random ones: the demo's, or the GPU benchmark's real-size ones),
    saved in fp16 exactly as fetch-weights lays out the real ones (manifest.json's files): the refiner shares the
    base's second text encoder, tokenizer and VAE, and the tokenizers are the hub's slow-tokenizer files."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    scheduler = EulerDiscreteScheduler(**SDXL_SCHEDULER_CONFIG)  # so that step splits match SDXL's
    base = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer, unet=base_unet, scheduler=scheduler)
    refiner = StableDiffusionXLImg2ImgPipeline(
        vae=vae, text_encoder=None, text_encoder_2=text_encoder_2, tokenizer=None, tokenizer_2=tokenizer,
        unet=refiner_unet, scheduler=scheduler, requires_aesthetics_score=True, force_zeros_for_empty_prompt=False,
    )
    for folder, pipeline in ((BASE, base), (REFINER, refiner)):
        pipeline.to(torch.float16).save_pretrained(root / folder, safe_serialization=True, variant="fp16")
    # The hub's SDXL tokenizers are slow-tokenizer files (vocab.json, merges.txt), not tokenizer.json.
    for name in ("tokenizer", "tokenizer_2"):
        shutil.rmtree(root / BASE / name)
        shutil.copytree(tokenizer_dir, root / BASE / name)
    manifest = load_manifest()
    for folder in (BASE, REFINER):
        _keep_only(root / folder, manifest[folder].files)


def write_lora(unet, path: Path, *, seed: int, layout: str = "diffusers") -> Path:
    """A tiny random LoRA for `unet`'s attention projections, made with peft and saved as diffusers' training
    scripts save one ("diffusers") or as kohya's scripts and A1111 do ("kohya"). `unet` is left as it was."""
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_kohya
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    # Random A and B (peft's default zeroes B, which would make an adapter that changes nothing).
    config = LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    unet.add_adapter(config, adapter_name="demo")
    state = get_peft_model_state_dict(unet, adapter_name="demo")
    state = {key: tensor.to(torch.float16) for key, tensor in state.items()}
    unet.delete_adapters("demo")
    path.parent.mkdir(parents=True, exist_ok=True)
    if layout == "kohya":
        save_file(convert_state_dict_to_kohya({f"unet.{key}": tensor for key, tensor in state.items()}), path)
    else:
        layers = convert_state_dict_to_diffusers(state)
        StableDiffusionXLPipeline.save_lora_weights(path.parent, unet_lora_layers=layers, weight_name=path.name)
    return path


def write_safety_checker(folder: Path, *, seed: int = 0) -> Path:
    """A tiny random StableDiffusionSafetyChecker in the real one's layout (config.json, fp16 model.safetensors,
    preprocessor_config.json), seeing 32-pixel images. Its concept and special-care embeddings and their thresholds
    keep their initial value, ones: an image is flagged when its cosine similarity to a concept exceeds the
    concept's threshold, and no cosine exceeds 1, so it flags nothing."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessorPil

    torch.manual_seed(seed)
    tiny = {"hidden_size": HIDDEN, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4}
    config = CLIPConfig(  # the text tower is part of the config only: the checker has no text model
        text_config={**tiny, "vocab_size": 99, "max_position_embeddings": 77, "bos_token_id": 0, "eos_token_id": 1,
                     "pad_token_id": 1},
        vision_config={**tiny, "image_size": 32, "patch_size": 8}, projection_dim=HIDDEN,
    )
    StableDiffusionSafetyChecker(config).to(torch.float16).save_pretrained(folder)  # safetensors, as the hub's
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def _unet(unet_class, *, cross_attention_dim: int, time_ids: int):
    return unet_class(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), transformer_layers_per_block=(1, 2), use_linear_projection=True,
        cross_attention_dim=cross_attention_dim, addition_embed_type="text_time", addition_time_embed_dim=TIME_EMBED,
        # pooled text embedding (projection_dim) plus one embedding per micro-conditioning number
        projection_class_embeddings_input_dim=HIDDEN + time_ids * TIME_EMBED,
    )


def _keep_only(folder: Path, files: tuple[str, ...]) -> None:
    """Prune what save_pretrained wrote to exactly what a real fetch brings."""
    wanted = {folder / name for name in files}
    keep_dirs = {path.parent for path in wanted}
    for path in sorted(folder.rglob("*"), reverse=True):
        if path.is_file() and path not in wanted:
            path.unlink()
        elif path.is_dir() and path not in keep_dirs and not any(path.iterdir()):
            path.rmdir()


def _write_clip_tokenizer(folder: Path) -> Path:
    """CLIP's tokenizer files with the real BPE vocabulary when it can be had, else a byte-level one."""
    merges = _clip_merges(folder)
    vocab = list(_byte_symbols().values())
    vocab += [symbol + "</w>" for symbol in vocab]
    vocab += ["".join(pair.split()) for pair in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    tokenizer_dir = folder / "tokenizer"
    tokenizer_dir.mkdir()
    (tokenizer_dir / "vocab.json").write_text(json.dumps({token: index for index, token in enumerate(vocab)}))
    (tokenizer_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
               "pad_token": "<|endoftext|>"}
    (tokenizer_dir / "special_tokens_map.json").write_text(json.dumps(special))
    (tokenizer_dir / "tokenizer_config.json").write_text(
        json.dumps({**special, "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True})
    )
    return tokenizer_dir


def _clip_merges(tmp: Path) -> list[str]:
    """The first CLIP_MERGES merge rules from open_clip's wheel, fetched from PyPI (never installed)."""
    try:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(tmp),
                        OPEN_CLIP_WHEEL], check=True, capture_output=True, timeout=120)
        with zipfile.ZipFile(next(tmp.glob("open_clip_torch-*.whl"))) as wheel:
            text = gzip.decompress(wheel.read("open_clip/bpe_simple_vocab_16e6.txt.gz")).decode()
    except (subprocess.SubprocessError, OSError, StopIteration, KeyError) as error:
        print(f"CLIP's vocabulary is not available ({error}); using a byte-level tokenizer", file=sys.stderr)
        return []
    return text.split("\n")[1 : CLIP_MERGES + 1]


def _byte_symbols() -> dict[int, str]:
    """GPT-2/CLIP byte-level BPE: each byte as a printable unicode character."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            symbols[byte] = chr(byte)
        else:
            symbols[byte] = chr(256 + extra)
            extra += 1
    return symbols
