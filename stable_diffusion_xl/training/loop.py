"""The DreamBooth-LoRA loop on SDXL's base, as diffusers' train_dreambooth_lora_sdxl.py and cog-sdxl train it.

peft LoRA on the UNet's attention projections (and, when asked, on both text encoders' attention); the photos'
latents and, with frozen text encoders, their prompt embeddings computed once; the noise-prediction loss with
SDXL's micro-conditioning (original size, crop top-left, target size) and pooled text embedding; the base's
own noise schedule as DDPM; AdamW at a constant rate. bf16 (fp16 where bf16 is missing) autocast on a GPU, with
gradient checkpointing where the GPU has under 70 GiB (it recomputes each block's forward: about a third more
work, for a fraction of the memory); fp32 on a CPU.

Every random draw of step s on worker r comes from a generator seeded by (seed, s, r), and the photo order
from (seed, epoch): a resumed run draws exactly what the uninterrupted one would have. One `World` describes
where a copy of the loop runs: this process alone, or one of several Ray Train workers (distributed.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..weights.layout import WeightPaths
from ..weights.loading import choose_device, dtype_for, load_base
from .options import TrainingOptions
from .photos import Photo

log = logging.getLogger(__name__)
UNET_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
MAX_GRAD_NORM, WEIGHT_DECAY = 1.0, 1e-4  # diffusers' script defaults
CHECKPOINTING_BELOW_BYTES = 70 * 2**30  # SDXL at 1024², batch 1: 9.8 GiB with checkpointing (H200); without: unmeasured


class TrainingCancelled(Exception):
    """should_stop() asked for the training to stop; nothing was written."""


@dataclass(frozen=True)
class Crop:
    """A photo as the UNet sees it: square at the training resolution, and the micro-conditioning that says
    where it came from."""

    image: Image.Image
    caption: str
    original_size: tuple[int, int]  # (height, width) of the photo
    crop_top_left: tuple[int, int]  # (top, left) in the photo resized so that its shorter side is the resolution


def crop(photo: Photo, resolution: int, default_caption: str) -> Crop:
    """Resize the shorter side to `resolution`, then take the centre square. The photo is decoded here, no larger
    than that needs, and only the square is kept: a set of photos costs their crops' memory, one decode at a time."""
    image = photo.decode(shorter_side=resolution)
    scale = resolution / min(image.size)
    resized = image.resize((max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale))),
                           Image.Resampling.LANCZOS)
    top, left = (resized.height - resolution) // 2, (resized.width - resolution) // 2
    square = resized.crop((left, top, left + resolution, top + resolution))
    width, height = photo.size  # SDXL's original-size condition: the photo's own, not its reduced decode's
    return Crop(square, photo.caption or default_caption, (height, width), (top, left))


def native_resolution(weights: WeightPaths) -> int:
    """The base's native square size: its UNet's sample size times the VAE's downscaling (1024 for SDXL)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    unet = UNet2DConditionModel.load_config(weights.base, subfolder="unet")
    vae = AutoencoderKL.load_config(weights.base, subfolder="vae")
    return unet["sample_size"] * 2 ** (len(vae["block_out_channels"]) - 1)


@dataclass
class World:
    """Where this copy of the loop runs: worker `rank` of `size`; `wrap` makes a model data-parallel and
    `mean` averages a number over the workers (both nothing for one process)."""

    rank: int = 0
    size: int = 1
    device: str | None = None  # None: cuda when there is one, else cpu
    wrap: Callable[[torch.nn.Module], torch.nn.Module] = lambda model: model
    mean: Callable[[float], float] = lambda value: value

    @property
    def main(self) -> bool:
        return self.rank == 0


@dataclass
class Example:
    """One photo, encoded once: its latent distribution and (frozen text encoders) its prompt embeddings."""

    latent_mean: torch.Tensor
    latent_std: torch.Tensor
    time_ids: torch.Tensor
    token_ids: tuple[torch.Tensor, torch.Tensor]
    prompt_embeds: torch.Tensor | None = None
    pooled_embeds: torch.Tensor | None = None


@dataclass
class Fitted:
    """What a finished loop hands back: the LoRA layers in diffusers' naming, ready for save_lora_weights."""

    layers: dict[str, dict[str, torch.Tensor]]  # unet_lora_layers, text_encoder_lora_layers, ...
    adapter_metadata: dict[str, dict]  # unet_lora_adapter_metadata, ...: the LoraConfigs, saved in the file
    steps: int
    resolution: int
    first_loss: float
    last_loss: float
    losses: list[float] = field(default_factory=list)


def load_pipeline(weights: WeightPaths, device: str, dtype: torch.dtype):
    """The base pipeline whose parts are trained: its VAE in fp32 (it encodes the photos once)."""
    pipeline = load_base(weights.base, dtype)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(device)


def noise_schedule(pipeline):
    """DDPM over the base's own training schedule (betas, timesteps, prediction type)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(pipeline.scheduler.config)


@torch.no_grad()
def encode(pipeline, crops: list[Crop], *, embed: bool) -> list[Example]:
    """Latent distributions and token ids of each crop; prompt embeddings too when `embed` (frozen encoders)."""
    device, examples = pipeline.device, []
    scaling = pipeline.vae.config.scaling_factor
    for item in crops:
        pixels = torch.from_numpy(np.asarray(item.image, dtype=np.float32)).permute(2, 0, 1)
        pixels = (pixels / 127.5 - 1.0)[None].to(device)
        latents = pipeline.vae.encode(pixels).latent_dist
        resolution = item.image.height
        time_ids = torch.tensor([[*item.original_size, *item.crop_top_left, resolution, resolution]],
                                dtype=torch.float32, device=device)
        token_ids = tuple(tokenizer(item.caption, padding="max_length", max_length=tokenizer.model_max_length,
                                    truncation=True, return_tensors="pt").input_ids.to(device)
                          for tokenizer in (pipeline.tokenizer, pipeline.tokenizer_2))
        example = Example(latents.mean * scaling, latents.std * scaling, time_ids, token_ids)
        if embed:
            example.prompt_embeds, example.pooled_embeds = prompt_embeddings(text_encoders(pipeline), token_ids)
        examples.append(example)
    return examples


def text_encoders(pipeline) -> tuple:
    return pipeline.text_encoder, pipeline.text_encoder_2


def prompt_embeddings(encoders: tuple, token_ids) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL's conditioning: both encoders' penultimate hidden states side by side, and the second's pooled
    projection (as the pipeline's encode_prompt makes them)."""
    hidden = []
    for encoder, ids in zip(encoders, token_ids):
        output = encoder(ids, output_hidden_states=True)
        pooled = output[0]  # for the projection model: text_embeds
        hidden.append(output.hidden_states[-2])
    return torch.cat(hidden, dim=-1), pooled


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 1009 + rank) % 2**63)


def photo_index(seed: int, step: int, rank: int, world_size: int, count: int) -> int:
    """Each worker takes the next photo of a per-epoch shuffle: every photo once per epoch over the workers."""
    position = step * world_size + rank
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed + position // count))
    return int(order[position % count])


def noise_loss(unet, encoders: tuple, schedule, example: Example, generator: torch.Generator, *,
               autocast) -> torch.Tensor:
    """The mean squared error of the UNet's noise (or velocity) prediction at one random timestep; the prompt is
    encoded by `encoders` unless the example holds its embeddings."""
    device = example.latent_mean.device
    draw = lambda like: torch.randn(like.shape, generator=generator).to(device)  # noqa: E731 (CPU draws: portable)
    latents = example.latent_mean + example.latent_std * draw(example.latent_mean)
    noise = draw(latents)
    timestep = torch.randint(0, schedule.config.num_train_timesteps, (1,), generator=generator).to(device)
    noisy = schedule.add_noise(latents, noise, timestep)
    with autocast():
        if example.prompt_embeds is not None:
            embeds, pooled = example.prompt_embeds, example.pooled_embeds
        else:
            embeds, pooled = prompt_embeddings(encoders, example.token_ids)
        prediction = unet(noisy, timestep, encoder_hidden_states=embeds,
                          added_cond_kwargs={"text_embeds": pooled, "time_ids": example.time_ids}).sample
    target = noise if schedule.config.prediction_type == "epsilon" else schedule.get_velocity(latents, noise, timestep)
    return F.mse_loss(prediction.float(), target.float())


def fit(weights: WeightPaths, crops: list[Crop], options: TrainingOptions, total_steps: int, *, checkpoints=None,
        world: World | None = None, on_step: Callable[[int, int, float], None] | None = None,
        should_stop: Callable[[], bool] | None = None, gradient_checkpointing: bool | None = None) -> Fitted:
    """Train a LoRA on `crops` for `total_steps` steps; `checkpoints` (output.Workspace) keeps and resumes the
    state. Raises TrainingCancelled as soon as should_stop() says so (on any worker). `gradient_checkpointing`:
    None turns it on for a GPU with under CHECKPOINTING_BELOW_BYTES of memory."""
    from diffusers.training_utils import cast_training_params
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    world = world or World()
    device = choose_device(world.device)
    dtype = dtype_for(device, training=True)
    torch.manual_seed(options.seed)  # peft's initial LoRA weights
    pipeline = load_pipeline(weights, device, dtype)
    schedule = noise_schedule(pipeline)
    examples = encode(pipeline, crops, embed=not options.train_text_encoder)
    pipeline.vae.to("cpu")  # encoded once: its memory goes back to the training
    if not options.train_text_encoder:  # their embeddings are cached
        pipeline.text_encoder.to("cpu")
        pipeline.text_encoder_2.to("cpu")
    frozen = [pipeline.unet, pipeline.text_encoder, pipeline.text_encoder_2, pipeline.vae]
    for model in frozen:
        model.requires_grad_(False)
    trained = {"unet": pipeline.unet}
    pipeline.unet.add_adapter(LoraConfig(r=options.rank, lora_alpha=options.rank, init_lora_weights="gaussian",
                                         target_modules=UNET_TARGETS))
    if options.train_text_encoder:
        for name in ("text_encoder", "text_encoder_2"):
            encoder = getattr(pipeline, name)
            encoder.add_adapter(LoraConfig(r=options.rank, lora_alpha=options.rank, init_lora_weights="gaussian",
                                           target_modules=TEXT_ENCODER_TARGETS))
            trained[name] = encoder
    on_gpu = device != "cpu"
    if gradient_checkpointing is None:
        gradient_checkpointing = on_gpu and torch.cuda.get_device_properties(device).total_memory < \
            CHECKPOINTING_BELOW_BYTES
    if on_gpu:
        cast_training_params(list(trained.values()), dtype=torch.float32)  # LoRA weights in fp32, the rest not
    if gradient_checkpointing:
        pipeline.unet.enable_gradient_checkpointing()
        for name in trained.keys() - {"unet"}:  # non-reentrant: the frozen embeddings' outputs need no grad
            trained[name].gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    wrapped = {name: world.wrap(model) for name, model in trained.items()}  # data-parallel on several workers
    unet = wrapped["unet"]
    encoders = tuple(wrapped.get(name, model) for name, model in
                     (("text_encoder", pipeline.text_encoder), ("text_encoder_2", pipeline.text_encoder_2)))
    parameters = [p for model in trained.values() for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=options.learning_rate, weight_decay=WEIGHT_DECAY, fused=on_gpu)

    step, losses = 0, []
    state = checkpoints.load() if checkpoints is not None and options.resume else None
    if state is not None:
        for name, model in trained.items():
            set_peft_model_state_dict(model, state["lora"][name])
        optimizer.load_state_dict(state["optimizer"])
        step, losses = state["step"], state["losses"]
        log.info("resuming at step %d of %d", step, total_steps)

    def autocast():
        return torch.autocast(device_type="cuda", dtype=dtype, enabled=on_gpu)

    for model in trained.values():
        model.train()
    while step < total_steps:
        if world.mean(float(bool(should_stop and should_stop()))) > 0:  # every worker stops at the same step
            raise TrainingCancelled(f"cancelled at step {step} of {total_steps}")
        generator = step_generator(options.seed, step, world.rank)
        example = examples[photo_index(options.seed, step, world.rank, world.size, len(examples))]
        loss = noise_loss(unet, encoders, schedule, example, generator, autocast=autocast)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        losses.append(world.mean(loss.item()))
        if on_step and world.main:
            on_step(step, total_steps, losses[-1])
        if checkpoints is not None and world.main and step % options.checkpoint_every == 0 and step < total_steps:
            checkpoints.save({"step": step, "losses": losses, "optimizer": optimizer.state_dict(),
                              "lora": {name: get_peft_model_state_dict(model) for name, model in trained.items()}})

    layers = {f"{name}_lora_layers": {key: tensor.detach().to("cpu", torch.float16) for key, tensor in
                                      convert_state_dict_to_diffusers(get_peft_model_state_dict(model)).items()}
              for name, model in trained.items()}
    metadata = {f"{name}_lora_adapter_metadata": model.peft_config["default"].to_dict()
                for name, model in trained.items()}
    return Fitted(layers, metadata, total_steps, crops[0].image.height, losses[0], losses[-1], losses)


@torch.no_grad()
def mean_loss(pipeline, examples: list[Example], *, seed: int = 0, draws: int = 4) -> float:
    """The loss of `pipeline`'s UNet (with whatever adapters it has loaded) on the examples, over `draws` fixed
    noises and timesteps each: the same for every call with the same seed, so two UNets compare fairly."""
    schedule, total = noise_schedule(pipeline), 0.0
    device = pipeline.device.type
    autocast = lambda: torch.autocast(device, dtype=pipeline.unet.dtype, enabled=device != "cpu")  # noqa: E731
    for index, example in enumerate(examples):
        for draw in range(draws):
            generator = step_generator(seed, index * draws + draw, 0)
            total += noise_loss(pipeline.unet, text_encoders(pipeline), schedule, example, generator,
                                autocast=autocast).item()
    return total / (len(examples) * draws)

