import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
import torch

from helpers import request, write_flagging_checker
from image_build import check_build, run_instill_build
from served import API_KEY, FILTERED, FLAGGED_SEED, KEYED, MODEL, SMALL, TINY, TRAINING
from stable_diffusion_xl.generation.engine import Engine
from stable_diffusion_xl.serving.local_serve import Application, serving
from stable_diffusion_xl.weights import demo as demo_weights
from stable_diffusion_xl.weights.layout import WeightPaths

# Two threads on a two-core machine shared with other work were up to 60x slower than one.
torch.set_num_threads(1)

MEASURED = pytest.StashKey[dict[str, dict[str, str]]]()


@pytest.fixture(scope="session")
def measured(pytestconfig) -> dict[str, dict[str, str]]:
    """Tables of what tests measured, {title: {row: value}}, printed after the results (with or without -s)."""
    return pytestconfig.stash.setdefault(MEASURED, {})


def pytest_terminal_summary(terminalreporter, config):
    for title, rows in config.stash.get(MEASURED, {}).items():
        terminalreporter.write_sep("-", title)
        for line in ["| measured | value |", "|---|---|", *(f"| {name} | {value} |" for name, value in rows.items())]:
            terminalreporter.write_line(line)


# `make test-fast` (-m "not slow") stays seconds long and free of Ray: a test not marked slow fails, naming the
# marker, if it starts a subprocess or uses a fixture that starts Ray Serve or `instill build`.
SLOW_FIXTURES = {"cluster", "image_build", "build_call"}


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):  # before the fixtures are set up
    if not item.get_closest_marker("slow") and (slow := sorted(SLOW_FIXTURES.intersection(item.fixturenames))):
        pytest.fail(f"{item.nodeid} uses {slow}, which start Ray or a subprocess: mark it @pytest.mark.slow")


@pytest.fixture(autouse=True)
def fast_tests_start_no_subprocess(request, monkeypatch):
    if not request.node.get_closest_marker("slow"):
        class Refused(subprocess.Popen):  # a class still, for the libraries that subclass Popen on import (Ray)
            def __init__(self, *args, **kwargs):
                raise AssertionError(f"{request.node.nodeid} starts a subprocess: mark it @pytest.mark.slow")

        monkeypatch.setattr(subprocess, "Popen", Refused)


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory):
    """A weights folder holding only freshly built demo weights."""
    root = tmp_path_factory.mktemp("weights")
    demo_weights.build(root)
    return root


@pytest.fixture(scope="session")
def engine(weights_dir):
    return Engine.load(weights_dir, demo=True)


@pytest.fixture(scope="session")
def flagging_checker(weights_dir, engine, tmp_path_factory):
    """A safety checker that flags image 0 of the call n=2, seed=FLAGGED_SEED (TINY) and not image 1."""
    call = request(seed=FLAGGED_SEED, n=2, **TINY)
    flagged, other = engine.generate([call])[0].images
    demo_checker = WeightPaths.locate(weights_dir, demo=True).safety_checker
    return write_flagging_checker(tmp_path_factory.mktemp("flagging-checker"), flagged, [other], source=demo_checker)


@pytest.fixture(scope="session")
def cluster(weights_dir, flagging_checker, tmp_path_factory):
    """One real Ray Serve for the session: five applications named as Instill Core names them, the gRPC
    proxy and HTTP on loopback, Ray's files in a short folder of our own (its socket paths must stay short)."""
    # A short body timeout, so the stalled-upload test waits seconds, not the default 10 s.
    env = {"SDXL_DEMO_WEIGHTS": "1", "SDXL_WEIGHTS_DIR": str(weights_dir), "SDXL_BODY_TIMEOUT_S": "2"}
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    ray_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    filtering = {"SDXL_SAFETY_CHECKER": "1", "SDXL_SAFETY_CHECKER_DIR": str(flagging_checker)}
    key_file = tmp_path_factory.mktemp("secrets") / "api-key"
    key_file.write_text(f"{API_KEY}\n")  # as a mounted secret often ends
    lora_dir = tmp_path_factory.mktemp("loras")  # TRAINING's, where adapters appear while it serves
    apps = [Application(MODEL, env),
            Application(SMALL, {**env, "SDXL_MAX_N": "1", "SDXL_MAX_LORAS": "1", "SDXL_BATCH_CALLS": "0"}),
            Application(FILTERED, {**env, **filtering}),
            Application(KEYED, {**env, "SDXL_API_KEY_FILE": str(key_file), "SDXL_WARM_UP": "0"}),
            # Overwrites allowed; as many trainings as the busy-cluster test queues (one per CPU, and one waiting).
            Application(TRAINING, {**env, "SDXL_TRAINING": "1", "SDXL_LORA_DIR": str(lora_dir), "SDXL_WARM_UP": "0",
                                   "SDXL_TRAIN_OVERWRITE": "1", "SDXL_MAX_TRAININGS": str(os.cpu_count() + 1)})]
    try:
        with serving(apps, log_path=log, ray_dir=ray_dir) as ports, \
                grpc.insecure_channel(f"127.0.0.1:{ports.grpc}") as channel:
            yield SimpleNamespace(ports=ports, channel=channel, ray_dir=ray_dir, lora_dir=lora_dir)
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def image_build(tmp_path_factory):
    """The real `instill build` with a stand-in docker, run once for the image tests (tests/image_build.py)."""
    return run_instill_build(tmp_path_factory)


@pytest.fixture(scope="session")
def build_call(image_build):
    return check_build(image_build)
