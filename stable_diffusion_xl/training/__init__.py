"""Photos -> a LoRA adapter, without Ray at its core: reading and checking the photos (photos), the training
options and their ranges (options), the DreamBooth-LoRA loop on SDXL's base UNet (loop), the adapter, its JSON
and the resumable checkpoints on disk (output), `train()` tying them together (trainer), and the same loop
data-parallel on several workers under Ray Train (distributed). It may import weights/ and generation/, never
serving/ or apis/."""
