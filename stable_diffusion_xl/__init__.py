"""Stable Diffusion XL base + refiner, served on Instill Core and any Ray cluster.

The sub-packages are layers; each imports only from the ones listed before it:

    weights/     what lies on disk: the weights' layout and manifest, fetching them, the tiny demo builder
    generation/  the engine and what it drives (no Ray): requests, sizes, samplers, prompts, LoRA adapters,
                 the safety filter, compilation
    training/    photos -> a LoRA adapter (DreamBooth-LoRA; Ray Train for several workers), beside generation/
    serving/     Ray Serve around the engine: settings, per-call limits, the transport every API shares,
                 metrics, image encoding, local serving and the gRPC client
    apis/        the dialects callers speak (Instill, OpenAI, Azure ML, cog, plain, the try-it page) and the
                 routes table that picks one per call

`__main__.py` is the command line and `docs.py` writes the docs' tables; model.py, beside this package, is the
Instill entry point.
"""
