"""Images from requests, without Ray: the typed request (request), the engine that batches and runs base and
refiner (engine), and what it drives: image sizes (sizes), an edit's input pictures (pictures), samplers
(schedulers), long weighted prompts (prompts), LoRA adapters (adapters), the safety filter (safety), regional
torch.compile and its cache (compile, compile_cache) and fp8 UNets (quantize)."""
