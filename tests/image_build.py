"""`instill build` rehearsed without Docker, shared by the image tests (test_image_build, test_image_env,
test_image_run). There is no Docker engine here, so the build runs the real `instill` CLI (instill-sdk 0.17.2)
in a staged copy of the project with tests/fake_docker.py as `docker`, which records the command and snapshots
the build context; .dockerignore is applied with Docker's rules (tests/dockerignore.py).

The fixtures `image_build` and `build_call` that run it once per session are in conftest.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dockerignore import dockerignore_rules, dockerignored
from stable_diffusion_xl.weights.layout import load_manifest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the project venv's console scripts: instill, serve
FAKE_DOCKER = Path(__file__).resolve().parent / "fake_docker.py"
IMAGE = "test-user/stable-diffusion-xl:v0.2.0"
SDK_VERSION = "0.17.2"
# What `instill build` logs when it fails; the CLI exits 0 either way.
FAILURE_MARKERS = ("Build failed", "Prepare failed", "Traceback")


def stage_project(dest: Path) -> None:
    """The project's files as a clean checkout has them (tracked, plus new files git does not ignore)."""
    listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                             capture_output=True, check=True, timeout=60).stdout.decode()
    for name in filter(None, listing.split("\0")):
        if (REPO / name).is_file():  # a tracked file deleted in the working tree is skipped
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)


REAL_WEIGHTS = [f"weights/{source.folder}/{name}" for source in load_manifest().values() for name in source.files]
REAL_WEIGHTS.append("weights/loras/team-style.safetensors")  # a fetched LoRA adapter travels with the image
# Things a developer's folder holds that the image must not: each must be absent from what docker receives.
CLUTTER = [
    ".venv/bin/python", ".venv/lib/python3.11/site-packages/torch/__init__.py", ".git/HEAD",
    "weights/demo/stable-diffusion-xl-base-1.0/model_index.json",
    "weights/demo/stable-diffusion-xl-base-1.0/unet/diffusion_pytorch_model.safetensors",
    "weights/stable-diffusion-xl-base-1.0/.cache/huggingface/download/unet/config.json.metadata",
    "weights/.cache/huggingface/.gitignore", "weights/loras/.cache/huggingface/download/team-style.safetensors.lock",
    "out/sdxl-1.jpg", "sdxl-2.png", "bench/results/run.json",
    "stable_diffusion_xl/__pycache__/engine.cpython-311.pyc", ".pytest_cache/v/cache/lastfailed",
    ".hypothesis/examples/x", ".mypy_cache/x", ".ruff_cache/x",
]
NOT_SENT = ["tests/", ".venv/", ".git/", "weights/demo/", "out/", "bench/", ".ci/", ".pytest_cache/", ".hypothesis/",
            "instill.yaml", "model.py", "Dockerfile"]


def check_build(image_build: dict) -> dict:
    """The one `docker buildx build` call of a successful `instill build`."""
    output = image_build["output"]
    assert image_build["result"].returncode == 0, output
    assert not any(marker in output for marker in FAILURE_MARKERS), output
    assert f"[Instill] {IMAGE} built" in output, output
    calls = image_build["calls"]
    assert [call["argv"][:2] for call in calls] == [["buildx", "build"]], calls
    return calls[0]


def run_instill_build(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The real `instill build` in a staged copy of the project, with the stand-in docker first on PATH."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs the project's git checkout to stage its files")
    root = tmp_path_factory.mktemp("image-build")
    project, shim, log, home, tmp = (root / name for name in ("project", "bin", "docker-log", "home", "tmp"))
    for folder in (project, shim, home, tmp):
        folder.mkdir()
    stage_project(project)
    for name in REAL_WEIGHTS + CLUTTER:  # tiny stand-ins for the fetched weights, and the clutter
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_bytes(b"x" * 64)
    (project / ".venv/lib64").symlink_to("lib")  # as in a real venv; copytree follows it
    (shim / "docker").write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_DOCKER}" "$@"\n')
    (shim / "docker").chmod(0o755)
    env = {**os.environ, "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}", "FAKE_DOCKER_LOG": str(log),
           "HOME": str(home), "TMPDIR": str(tmp)}
    result = subprocess.run([str(BIN / "instill"), "build", IMAGE], cwd=project, env=env, capture_output=True,
                            text=True, timeout=600)
    output = result.stdout + result.stderr
    calls = [json.loads(path.read_text()) for path in sorted(log.glob("*.json"))] if log.exists() else []
    return {"project": project, "result": result, "output": output, "calls": calls}


def build_args(argv: list[str]) -> dict[str, str]:
    values = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--build-arg"]
    return dict(value.split("=", 1) for value in values)


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def sent_files(snapshot: Path) -> dict[str, int]:
    """The files docker receives: the context minus what its .dockerignore excludes; path -> size."""
    rules = dockerignore_rules((snapshot / ".dockerignore").read_text())
    files = {}
    for path in sorted(snapshot.rglob("*")):
        name = path.relative_to(snapshot).as_posix()
        if (path.is_file() or path.is_symlink()) and not dockerignored(name, rules):
            files[name] = path.stat().st_size
    return files


def instill_yaml() -> dict:
    return yaml.safe_load((REPO / "instill.yaml").read_text())
