"""The real SDXL 1.0 component configurations, written out (no weights, no hub access needed).

They are the `config.json` files of stabilityai/stable-diffusion-xl-base-1.0 and
stabilityai/stable-diffusion-xl-refiner-1.0 (unet/, text_encoder/, text_encoder_2/, vae/), restricted
to the keys that shape the networks. bench/flops.py builds them on the meta device and checks the
UNet parameter counts against the published checkpoints' (2,567,463,684 and 2,259,526,660).
"""

BASE_UNET = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [320, 640, 1280],
    "layers_per_block": 2,
    "attention_head_dim": [5, 10, 20],
    "transformer_layers_per_block": [1, 2, 10],
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,  # pooled text (1280) + 6 micro-conditions x 256
    "norm_num_groups": 32,
    "norm_eps": 1e-05,
    "act_fn": "silu",
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "upcast_attention": None,
}

REFINER_UNET = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [384, 768, 1536, 1536],
    "layers_per_block": 2,
    "attention_head_dim": [6, 12, 24, 24],
    "transformer_layers_per_block": 4,
    "cross_attention_dim": 1280,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2560,  # pooled text (1280) + 5 micro-conditions x 256
    "norm_num_groups": 32,
    "norm_eps": 1e-05,
    "act_fn": "silu",
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "upcast_attention": None,
}

# text_encoder: OpenAI CLIP ViT-L/14's text tower (CLIPTextModel).
TEXT_ENCODER = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
    "layer_norm_eps": 1e-05,
}

# text_encoder_2: OpenCLIP ViT-bigG/14's text tower (CLIPTextModelWithProjection), shared with the refiner.
TEXT_ENCODER_2 = {
    "vocab_size": 49408,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "projection_dim": 1280,
    "layer_norm_eps": 1e-05,
}

VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "act_fn": "silu",
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "force_upcast": True,
}

# Published parameter counts of the checkpoints' UNets: the check that the configs above are the real ones.
BASE_UNET_PARAMETERS = 2_567_463_684
REFINER_UNET_PARAMETERS = 2_259_526_660
