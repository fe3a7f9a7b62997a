"""Command line: generate images, serve the Instill model locally, fetch or build weights.

    python -m stable_diffusion_xl generate "a cat napping" --n 2 --seed 7 --aspect-ratio 16:9 -o out/
    python -m stable_diffusion_xl try -i '{"prompt": "cat napping"}' -o out/   # through Ray Serve, like `instill run`
    python -m stable_diffusion_xl serve                                       # Ray Serve until Ctrl-C
    python -m stable_diffusion_xl fetch-weights
    python -m stable_diffusion_xl demo-weights
    python -m stable_diffusion_xl compile-cache                               # on the GPU kind replicas run on
    python -m stable_diffusion_xl train --images photos/ --name me            # a LoRA adapter from 8-15 photos
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
from pathlib import Path

from .fields import FLAG, InvalidRequest, UserError, spec_of
from .generation.compile import COMPILE_MODES
from .generation.modes import PICTURES
from .generation.request import PARAMETERS, TextToImageRequest
from .generation.results import DEFAULT_MAX_BATCH_SIZE
from .serving.settings import Settings
from .training.options import OPTIONS
from .weights.layout import (
    COMPILE_CACHE_SUBDIR,
    DEFAULT_WEIGHTS_DIR,
    FETCH_COMMAND,
    LORA_SUBDIR,
    WeightPaths,
)
from .weights.library_logs import quiet_library_logs, quiet_loading_bars

DEMO_NOTE = f"(demo weights: these images are noise; fetch the real weights with `{FETCH_COMMAND}`)"
DEMO_HELP = "use the tiny random demo weights: their images are noise"


def command_line() -> argparse.ArgumentParser:
    """Every command and its flags (the docs' tests read them here too)."""
    parser = argparse.ArgumentParser(prog="python -m stable_diffusion_xl", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    # The flags several commands share: which weights, and the demo ones.
    weights = argparse.ArgumentParser(add_help=False)
    weights.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS_DIR, help="weights folder")
    model = argparse.ArgumentParser(add_help=False, parents=[weights])
    model.add_argument("--demo", action="store_true", help=DEMO_HELP)

    generate = commands.add_parser("generate", parents=[model], help="write JPEGs for a prompt")
    generate.add_argument("prompt")
    for name, spec in PARAMETERS.items():
        generate.add_argument(f"--{name}", **_argument(spec))
    for name, picture in PICTURES.items():
        generate.add_argument(f"--{name}", type=Path, help=picture.description)
    generate.add_argument("-o", "--output", type=Path, default=Path("out"), help="folder for the JPEGs (default: out)")
    generate.add_argument("--max-batch-size", type=int, default=DEFAULT_MAX_BATCH_SIZE, help="images per UNet batch")
    generate.add_argument("--lora-dir", type=Path, help=f"where --lora finds adapters (default: SDXL_LORA_DIR, else "
                          f"{LORA_SUBDIR}/ beside the models, where `serve` and `train` find them)")

    serve = commands.add_parser("serve", parents=[model],
                                help="serve the Instill model on a local Ray Serve (HTTP, gRPC) until Ctrl-C")
    serve.add_argument("--host", default="127.0.0.1", help="the HTTP API's address (default: 127.0.0.1; 0.0.0.0 for "
                       "every interface); Ray's own ports and its dashboard stay on 127.0.0.1")
    serve.add_argument("--port", type=int, default=8000, help="HTTP port (default: 8000)")
    serve.add_argument("--grpc-port", type=int, default=9000, help="gRPC port (default: 9000; 0: no gRPC). Ray "
                       "Serve's gRPC proxy listens on every interface: set SDXL_API_KEY where others can reach it")
    try_ = commands.add_parser("try", parents=[model], help="serve the Instill model, POST one input as "
                               "`instill run -i` does, save the images")
    try_.add_argument("-i", "--input", default='{"prompt": "cat napping"}', help="the input JSON, flat or enveloped")
    try_.add_argument("-o", "--output", type=Path, default=Path("out"), help="folder for the JPEGs (default: out)")

    fetch = commands.add_parser("fetch-weights", parents=[weights],
                                help="download the real fp16 weights (about 12 GB), or one LoRA")
    fetch.add_argument("--safety-checker", action="store_true", help="also fetch the optional safety checker "
                       "(CompVis/stable-diffusion-safety-checker, 0.6 GB) that SDXL_SAFETY_CHECKER needs")
    fetch.add_argument("--lora", metavar="REPO_ID", help="fetch one LoRA adapter from this hub repository instead, "
                       f"into <weights>/{LORA_SUBDIR}/")
    fetch.add_argument("--lora-file", help="the .safetensors file of that repository (needed when it holds several)")
    fetch.add_argument("--lora-name", help="the name requests will use (default: the file's stem)")
    commands.add_parser("demo-weights", parents=[weights], help="build tiny random-weight pipelines in weights/demo")

    cache = commands.add_parser("compile-cache", parents=[model], help="compile as SDXL_COMPILE=1 does, warm up, "
                                "and save the compiled code where replicas load it (run it on the GPU kind they "
                                "run on)")
    cache.add_argument("--cache", type=Path, help="the cache folder (default: SDXL_COMPILE_CACHE, else "
                       f"{COMPILE_CACHE_SUBDIR}/ beside the models)")
    cache.add_argument("--mode", choices=COMPILE_MODES,
                       help="inductor's mode (default: SDXL_COMPILE_MODE, else default)")

    train = commands.add_parser("train", parents=[model], help="train a LoRA adapter (DreamBooth-LoRA) on photos of a "
                                "subject, into the LoRA folder the deployment reads")
    train.add_argument("--images", type=Path, required=True, help="a folder or .zip of JPEG/PNG/WebP photos; a "
                       "photo.txt beside photo.jpg is its caption")
    for name, spec in OPTIONS.items():
        if name != "name":
            train.add_argument(f"--{name}", **_argument(spec))
    train.add_argument("--name", required=True, help=spec_of(OPTIONS["name"]).description)
    train.add_argument("--lora-dir", type=Path, help=f"where the adapter goes (default: SDXL_LORA_DIR, else "
                       f"{LORA_SUBDIR}/ beside the models, where `serve` reads adapters)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = command_line().parse_args(argv)
    from .serving.local_serve import DeployFailed, PortInUse  # imports the Instill SDK, which sets up the root logger

    quiet_library_logs()

    try:
        handlers = {"generate": _generate, "serve": _serve, "try": _try, "fetch-weights": _fetch, "demo-weights": _demo,
                    "compile-cache": _compile_cache, "train": _train}
        return handlers[args.command](args)
    except UserError as error:  # what to change is in its message
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (DeployFailed, PortInUse) as error:  # Ray's own message on why the replica could not start; a taken port
        print(f"error: {error}", file=sys.stderr)
        return 1


def _argument(member: dataclasses.Field) -> dict:
    """An argparse option from a declared field: its type, default, choices and description."""
    spec = spec_of(member)
    if spec.kind is FLAG:
        return {"action": argparse.BooleanOptionalAction, "default": member.default, "help": spec.description}
    if spec.listed:  # --lora a b --lora-scale 0.8
        return {"type": spec.kind.parse, "nargs": "+", "default": member.default, "help": spec.description}
    return {"type": spec.kind.parse, "default": member.default, "choices": spec.choices,
            "help": f"{spec.description} (default: {spec.shown or member.default})"}


def _generate(args) -> int:
    from .generation.engine import Engine
    from .generation.modes import PIL_MODES
    from .generation.pictures import UploadLimits, read_pictures
    from .serving.encoding import encode
    from .serving.limits import Limits

    quiet_loading_bars()  # the steps' bars, base and refiner, are the ones that say something
    fields = {spec.name: getattr(args, spec.name) for spec in PARAMETERS.values()}
    sent = {name: _read(getattr(args, name), name) for name in PICTURES if getattr(args, name)}
    request = TextToImageRequest(prompt=args.prompt, **fields, pictures=read_pictures(sent, UploadLimits(), PIL_MODES))
    engine = Engine.load(args.weights, demo=args.demo, max_batch_size=args.max_batch_size,
                         lora_dir=args.lora_dir or Settings.from_env().lora_dir)
    # The adapters as a deployment checks them (n is the user's own business here): an unknown one is an error line.
    Limits(lora_names=engine.adapters.names, max_loras=engine.adapters.limit).check_loras(request, "")
    engine.set_progress_bars(True)
    generation = engine.generate([request])[0]
    args.output.mkdir(parents=True, exist_ok=True)
    for image, seed in zip(generation.images, generation.seeds):
        path = args.output / f"sdxl-{seed}.jpg"
        path.write_bytes(encode(image))
        print(f"{path}  seed {seed}  {generation.width}x{generation.height}")
    print("seconds: " + ", ".join(f"{stage} {seconds:.2f}" for stage, seconds in generation.timings.items()))
    if args.demo:
        print(DEMO_NOTE)
    return 0


def _read(path: Path, name: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise InvalidRequest(name, f"cannot be read ({type(error).__name__})") from None


def _model_env(args) -> tuple[dict[str, str], Settings]:
    """The replica's SDXL_* variables and its settings, checked here so that a mistake fails at once, with the
    fix, rather than in a Ray replica; the other SDXL_* variables of this shell reach the replica as they are."""
    from .generation.quantize import refuse_unsupported
    from .serving.hardware import GPU_VARIABLES, replica_device
    from .weights.loading import choose_device

    env = {"SDXL_WEIGHTS_DIR": str(args.weights.resolve()), "SDXL_DEMO_WEIGHTS": "1" if args.demo else "0"}
    settings = Settings.from_env({**os.environ, **env})
    settings.http_api_key()
    paths = WeightPaths.locate(args.weights, demo=args.demo)
    # The replica runs on this machine's device: on a GPU machine it asks Ray for one, as hardware GPU on Core does,
    # unless this shell says otherwise (Ray hides the GPUs from a replica that asked for none).
    device = choose_device(settings.device)
    if device == "cuda":
        replica_device(device)  # SDXL_DEVICE=cuda where torch has no GPU: refused now, not by a replica
        if not any(variable in os.environ for variable in GPU_VARIABLES):
            env["RAY_NUM_OF_GPUS"] = "1"
    refuse_unsupported(settings.quantize, device, settings.lora_dir or paths.loras)
    return env, settings


def _serve(args) -> int:
    from .apis.routes import served_routes
    from .serving.local_serve import Application, Ports, check_free, run

    env, settings = _model_env(args)
    application = Application("default", env)
    ports = Ports(http=args.port, grpc=args.grpc_port, host=args.host)
    check_free(ports)  # before the banner: a taken port is the only line
    print(f"serving on http://{args.host}:{ports.http}/" + (f" and gRPC [::]:{ports.grpc}" if ports.grpc else "") +
          " (application 'default')")
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    for method, path, title in served_routes():
        print(f"  {title:<38} {method:<4} http://{shown}:{ports.http}{path}")
    if ports.grpc and settings.http_api_key() is None:
        print(f"  note: Ray Serve's gRPC proxy listens on every interface and no SDXL_API_KEY is set: anyone who "
              f"reaches port {ports.grpc} can generate; set one, or --grpc-port 0 for no gRPC", file=sys.stderr)
    run([application], ports)
    return 0


def _try(args) -> int:
    """What `instill run -i` does inside the image: POST the raw input JSON to the route, show the reply."""
    import base64
    import json
    import urllib.error
    import urllib.request

    from .serving.local_serve import Application, serving

    try:  # a typo is reported now, not after Ray has started
        json.loads(args.input)
    except json.JSONDecodeError as error:
        raise InvalidRequest("-i/--input", f"must be JSON ({error.msg} at character {error.pos})") from None
    body = args.input.encode()
    env, settings = _model_env(args)
    key = settings.http_api_key()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    print("starting Ray Serve with the model ...", file=sys.stderr)
    with serving([Application("default", env)]) as ports:
        request = urllib.request.Request(f"http://127.0.0.1:{ports.http}/", data=body, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=3600) as response:
                outputs = json.load(response)
        except urllib.error.HTTPError as error:
            print(f"error {error.code}: {error.read().decode()}", file=sys.stderr)
            return 1
    args.output.mkdir(parents=True, exist_ok=True)
    for index, output in enumerate(outputs):
        usage = output["metadata"]["usage"]
        for choice, seed in zip(output["data"]["choices"], usage["seeds"]):
            path = args.output / f"sdxl-{seed}.jpg"
            path.write_bytes(base64.b64decode(choice["image"].partition(",")[2]))
            print(f"{path}  seed {seed}  {usage['width']}x{usage['height']}  {choice['finish-reason']}")
        print(f"task input {index}: seconds " + ", ".join(f"{k} {v}" for k, v in usage["seconds"].items()))
    print(f"images written to {args.output.resolve()}")
    if args.demo:
        print(DEMO_NOTE)
    return 0


def _fetch(args) -> int:
    from .weights.fetch import fetch, fetch_lora

    try:
        if args.lora:
            fetch_lora(args.lora, args.weights / LORA_SUBDIR, args.lora_file, args.lora_name)
        else:
            fetch(args.weights, include_optional=args.safety_checker)
    except ValueError as error:  # a repository or name that cannot be an adapter: the reason as it is
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # network, auth or hub errors: one line, not a stack trace
        print(f"error: could not fetch the weights from the Hugging Face hub: {type(error).__name__}: {error}\n"
              "Check the network (or HF_ENDPOINT), and set HF_TOKEN if the hub asks for one; "
              "a rerun resumes where this one stopped.", file=sys.stderr)
        return 1
    return 0


def _demo(args) -> int:
    from .weights.demo import build

    quiet_loading_bars()
    root = build(args.weights)
    size = sum(path.stat().st_size for path in root.rglob("*") if path.is_file())
    print(f"demo weights in {root} ({size / 1e6:.1f} MB): tiny random models, their images are noise")
    return 0


def _compile_cache(args) -> int:
    """What a replica with SDXL_COMPILE=1 does at start, once, ahead: its warm-up compiles and saves."""
    import logging
    import tempfile

    from .generation.engine import Engine

    settings = Settings.from_env()
    folder = args.cache or settings.compile_cache or WeightPaths.locate(args.weights, demo=args.demo).compile_cache
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    quiet_loading_bars()  # the log's lines say what the warm-up compiles
    with tempfile.TemporaryDirectory() as no_adapters:  # adapters change nothing compiled: leave them out
        engine = Engine.load(args.weights, demo=args.demo, max_batch_size=settings.max_batch_size, compile=True,
                             compile_mode=args.mode or settings.compile_mode, compile_cache=folder,
                             lora_dir=Path(no_adapters))
    engine.warm_up()
    artifacts = engine.compile_cache.folder / "artifacts.bin"
    if not artifacts.is_file():
        print(f"error: nothing was saved in {engine.compile_cache.folder} (see the log above)", file=sys.stderr)
        return 1
    print(f"compile cache: {artifacts.parent} ({artifacts.stat().st_size / 1e6:.1f} MB)")
    return 0


def _train(args) -> int:
    """Photos -> <lora-dir>/<name>.safetensors and .json, with a progress bar; one `error:` line for bad input."""
    import warnings

    from tqdm import tqdm

    from .training.options import TrainingOptions
    from .training.output import check_name
    from .training.photos import read_photos
    from .training.trainer import train

    options = TrainingOptions(**{spec.name: getattr(args, spec.name) for spec in OPTIONS.values()})
    paths = WeightPaths.locate(args.weights, demo=args.demo)
    lora_dir = args.lora_dir or Settings.from_env().lora_dir or paths.loras
    check_name(lora_dir, options.name, overwrite=options.overwrite)  # before the photos are read
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        photos = read_photos(args.images)
    for warning in warned:
        print(f"warning: {warning.message}", file=sys.stderr)
    total = options.total_steps(len(photos))
    quiet_loading_bars()  # the training's bar is the one that says something
    with contextlib.ExitStack() as stack:
        if options.workers > 1:
            stack.enter_context(_ray_connected())
        print(f"training {options.name!r} on {len(photos)} photos for {total} steps"
              + (f" on {options.workers} workers" if options.workers > 1 else ""), file=sys.stderr)
        bar = stack.enter_context(tqdm(total=total, unit="step", desc="train", dynamic_ncols=True))

        def on_step(step: int, steps: int, loss: float) -> None:
            bar.update(step - bar.n)
            bar.set_postfix(loss=f"{loss:.4f}")

        try:
            result = train(paths, lora_dir, photos, options, on_step=on_step)
        except KeyboardInterrupt:
            print(f"\ninterrupted: rerun with --resume to continue from the last checkpoint (every "
                  f"{options.checkpoint_every} steps)", file=sys.stderr)
            return 130
    meta = result.metadata
    print(f"adapter {result.adapter} ({result.adapter.stat().st_size / 1e6:.1f} MB, {meta['steps']} steps, loss "
          f"{meta['first_loss']:.4f} -> {meta['last_loss']:.4f}, {meta['seconds']:.0f} s); use it with "
          f"\"lora\": \"{options.name}\" and a prompt with {options.token}, e.g. \"{options.caption} ...\"")
    if args.demo:
        print(DEMO_NOTE)
    return 0


@contextlib.contextmanager
def _ray_connected():
    """The Ray cluster RAY_ADDRESS names (its nodes need this package and the weights at the same paths), else a
    one-node Ray on loopback, as `serve` starts it, whose workers import this package from here; shut down after."""
    import shutil
    import tempfile

    import ray

    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=False)
        try:
            yield
        finally:
            ray.shutdown()
        return
    from .serving.local_serve import LOOPBACK, PACKAGE_DIR, Ports, free_port, start_ray

    path = os.pathsep.join(filter(None, [str(PACKAGE_DIR.parent), os.environ.get("PYTHONPATH")]))
    os.environ.update(PYTHONPATH=path, DASHBOARD_METRIC_PORT=str(free_port()), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
                      AUTOSCALER_METRIC_PORT=str(free_port()))
    ray_dir = tempfile.mkdtemp(prefix="ray-train-", dir="/tmp")  # Ray's socket paths must stay short
    print(f"starting a local Ray on {LOOPBACK} ...", file=sys.stderr)
    try:
        start_ray(Ports(), ray_dir)
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(ray_dir, ignore_errors=True)

if __name__ == "__main__":
    sys.exit(main())
