"""fp8 UNets (SDXL_QUANTIZE=fp8): the linear layers of both UNets' transformer blocks in float8, with torchao.

Weights are stored in float8 (e4m3) with one scale each; activations are quantized on the fly, one scale per
tensor, and the products run on the GPU's fp8 tensor cores (compute capability 8.9 and up: Ada, Hopper, Blackwell).
Per-tensor rather than rowwise scales: torchao's rowwise kernels take bfloat16 networks only, and ours are fp16
(the fp16-fix VAE and the text encoders share that dtype with the UNets).

Only the transformer blocks' linear layers (attention projections, feed-forward, proj_in/proj_out) are quantized:
they do most of the UNets' matrix work at 1024². The convolutions, the time and micro-condition embeddings and
the norms stay fp16. torchao (and torch) are imported only when quantizing or checking the GPU. LoRA adapters are
refused: peft cannot load one onto float8 layers.
"""

from __future__ import annotations

from pathlib import Path

from ..fields import UserError, excerpt
from ..weights.lora_files import available, described

METHODS = ("fp8",)
FP8_CAPABILITY = (8, 9)  # the first GPUs with fp8 tensor cores (Ada Lovelace)


class QuantizeRefused(UserError, ValueError):
    """The quantization asked for cannot run on this replica's device."""


def refuse_unsupported(method: str | None, device: str, lora_dir: Path | None = None) -> None:
    """Raise, naming the setting and the device, when `method` cannot run on `device`, or with the LoRA adapters
    in `lora_dir`; nothing when it can."""
    if method is None:
        return
    if method not in METHODS:
        raise QuantizeRefused(f"SDXL_QUANTIZE={excerpt(method)}: must be one of {', '.join(METHODS)}, or unset")
    wanted = "an NVIDIA GPU of compute capability 8.9 or newer (Ada, Hopper, Blackwell)"
    if device != "cuda":
        raise QuantizeRefused(f"SDXL_QUANTIZE={method} needs {wanted}; this replica runs on the {device.upper()}. "
                              "Unset SDXL_QUANTIZE")
    import torch  # here, not above: the settings import this module's METHODS

    capability = torch.cuda.get_device_capability()
    if capability < FP8_CAPABILITY:
        gpu = f"{torch.cuda.get_device_name()}, is {capability[0]}.{capability[1]}"
        raise QuantizeRefused(f"SDXL_QUANTIZE={method} needs {wanted}; this replica's GPU, {gpu}. Unset SDXL_QUANTIZE")
    names = available(lora_dir)
    if names:  # peft cannot put an adapter's layers around float8 ones (loading one fails)
        raise QuantizeRefused(f"SDXL_QUANTIZE={method} does not combine with LoRA adapters, and {lora_dir} has "
                              f"{described(names)}: they cannot be loaded onto float8 layers. Unset "
                              "SDXL_QUANTIZE, or set SDXL_LORA_DIR to a folder without adapters")


def quantize_unets(base, refiner) -> int:
    """Quantize both pipelines' UNets in place (before their first call, so a compiler sees the fp8 layers).
    Returns how many linear layers were quantized."""
    return quantize_unet(base.unet) + quantize_unet(refiner.unet)


def quantize_unet(unet) -> int:
    """One UNet's transformer linear layers to float8, in place; how many there were."""
    import torch
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerTensor, quantize_

    chosen = []

    def in_transformer_block(module, name: str) -> bool:
        # fp8 matrix products need both sizes to be multiples of 16; SDXL's are.
        if (isinstance(module, torch.nn.Linear) and ".attentions." in f".{name}"
                and module.in_features % 16 == 0 and module.out_features % 16 == 0):
            chosen.append(name)
            return True
        return False

    quantize_(unet, Float8DynamicActivationFloat8WeightConfig(granularity=PerTensor()), filter_fn=in_transformer_block)
    return len(chosen)
