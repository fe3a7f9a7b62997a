"""The log lines of the libraries below us that ask nothing of a user, each dropped by a filter on the logger
that emits it (matched by its text, so that every other line of that logger, errors included, still shows):

- transformers warns, once per class, that an image processor falls back to PIL without torchvision, on every
  command that loads a pipeline: PIL is what we want.
- diffusers warns for each text encoder that a LoRA adapter has no keys for it, when an adapter trains the
  UNet only (the usual kind), on every load.
- huggingface_hub logs each retry of a request; when the last one fails, the command's own error line says why.
- torchao, which diffusers imports when it is installed (we use it only for SDXL_QUANTIZE=fp8), warns about its
  optional kernels (built for another Python, or needing Triton), and its import makes torch warn about Enum
  constants.
- python-multipart warns of each malformed upload it parses, quoting a byte of the caller's body; the call is
  refused (400 naming `body`) and the replica logs that, without the caller's bytes.

The Instill SDK, when imported, gives the root logger a format that prints milliseconds twice
(`17:52:50,951.951`): `quiet_library_logs` mends it too. And the libraries draw a progress bar for each part they
load or save (`Loading pipeline components...`, `Writing model shards`), which `quiet_loading_bars` turns off for
the commands that draw their own (the denoising steps', the training's).
"""

from __future__ import annotations

import logging

NOISE = {
    "transformers.utils.import_utils": ("requires torchvision (not installed); falling back to",),
    "diffusers.loaders.lora_base": ("No LoRA keys associated to CLIPTextModel",),
    "diffusers.loaders.peft": ("No LoRA keys associated to CLIPTextModel",),
    "diffusers.loaders.lora_pipeline": ("No LoRA keys associated to CLIPTextModel",),
    "huggingface_hub.utils._http": ("Retrying in ", "thrown while requesting "),
    "torchao": ("Failed to load ",),
    "torchao.kernel.intmm": ("Detected no triton",),
    "torch.utils._pytree": ("is an Enum subclass and is now natively supported by torch.compile",),
    "diffusers.quantizers.torchao.torchao_quantizer": ("Unable to import `torchao` Tensor objects",),
    "python_multipart.multipart": ("Expected boundary character", "Did not find", "Found invalid character",
                                   "Found 0-length header", "Reached an unknown state"),
}


class DropLines(logging.Filter):
    """Drops the records below WARNING's successor (ERROR) whose message holds one of `texts`."""

    def __init__(self, texts: tuple[str, ...]):
        super().__init__()
        self.texts = texts

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or not any(text in record.getMessage() for text in self.texts)


def quiet_library_logs() -> None:
    """Install the filters (once; logger objects outlive imports, so this may run before the libraries load),
    and mend the root handlers' doubled milliseconds."""
    for name, texts in NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(existing, DropLines) for existing in logger.filters):
            logger.addFilter(DropLines(texts))
    for handler in logging.getLogger().handlers:
        formatter = handler.formatter
        if formatter is not None and "%(msecs)" in (formatter._fmt or ""):
            formatter.default_msec_format = None  # asctime without its own ",951": the format adds ".951"


def quiet_loading_bars() -> None:
    """No progress bar for loading or saving the models' files: it says nothing a user acts on, and hides the bar
    that does."""
    import transformers
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
