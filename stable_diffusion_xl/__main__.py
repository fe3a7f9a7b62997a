"""Command line: generate images, fetch the real weights, build the demo weights.

    python -m stable_diffusion_xl generate "a cat napping" --n 2 --seed 7 --aspect-ratio 16:9 -o out/
    python -m stable_diffusion_xl fetch-weights
    python -m stable_diffusion_xl demo-weights
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from .request import PARAMETERS, InvalidRequest, TextToImageRequest
from .weights import DEFAULT_WEIGHTS_DIR, WeightsMissing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stable_diffusion_xl", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="write JPEGs for a prompt")
    generate.add_argument("prompt")
    for name, spec in PARAMETERS.items():
        generate.add_argument(f"--{name}", **_argument(spec))
    generate.add_argument("-o", "--output", type=Path, default=Path("out"), help="folder for the JPEGs (default: out)")
    generate.add_argument("--demo", action="store_true", help="use the tiny random demo weights: their images are noise")
    generate.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS_DIR, help="weights folder")
    generate.add_argument("--max-batch-size", type=int, default=4, help="images per UNet batch")

    fetch = commands.add_parser("fetch-weights", help="download the real fp16 weights (about 12 GB)")
    fetch.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS_DIR)
    demo = commands.add_parser("demo-weights", help="build tiny random-weight pipelines in weights/demo")
    demo.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS_DIR)

    args = parser.parse_args(argv)
    try:
        return {"generate": _generate, "fetch-weights": _fetch, "demo-weights": _demo}[args.command](args)
    except (InvalidRequest, WeightsMissing) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _argument(spec: dataclasses.Field) -> dict:
    """An argparse option from a request field: its type, default, choices and description."""
    if spec.type == "bool":
        return {"action": argparse.BooleanOptionalAction, "default": spec.default, "help": spec.metadata["description"]}
    kind = {"str": str, "int": int, "float": float}[spec.type]
    return {"type": kind, "default": spec.default, "choices": spec.metadata["choices"],
            "help": f"{spec.metadata['description']} (default: {spec.default})"}


def _generate(args) -> int:
    from .encoding import to_jpeg
    from .engine import Engine

    request = TextToImageRequest(prompt=args.prompt, **{spec.name: getattr(args, spec.name) for spec in PARAMETERS.values()})
    engine = Engine.load(args.weights, demo=args.demo, max_batch_size=args.max_batch_size)
    engine.set_progress_bars(True)
    generation = engine.generate([request])[0]
    args.output.mkdir(parents=True, exist_ok=True)
    for image, seed in zip(generation.images, generation.seeds):
        path = args.output / f"sdxl-{seed}.jpg"
        path.write_bytes(to_jpeg(image))
        print(f"{path}  seed {seed}  {generation.width}x{generation.height}")
    print("seconds: " + ", ".join(f"{stage} {seconds:.2f}" for stage, seconds in generation.timings.items()))
    if args.demo:
        print("(demo weights: these images are noise; fetch the real weights with `python -m stable_diffusion_xl fetch-weights`)")
    return 0


def _fetch(args) -> int:
    from .weights import fetch

    try:
        fetch(args.weights)
    except Exception as error:  # network, auth or hub errors: one line, not a stack trace
        print(f"error: could not fetch the weights from the Hugging Face hub: {type(error).__name__}: {error}\n"
              "Check the network (or HF_ENDPOINT), and set HF_TOKEN if the hub asks for one; "
              "a rerun resumes where this one stopped.", file=sys.stderr)
        return 1
    return 0


def _demo(args) -> int:
    from .demo_weights import build

    root = build(args.weights)
    size = sum(path.stat().st_size for path in root.rglob("*") if path.is_file())
    print(f"demo weights in {root} ({size / 1e6:.1f} MB): tiny random models, their images are noise")
    return 0


if __name__ == "__main__":
    sys.exit(main())
