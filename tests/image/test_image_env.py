"""The image's Python environment rehearsed without Docker. There is no Docker engine or GPU here, so it is
rebuilt in a fresh venv by the Dockerfile's own steps (CPU torch), from the build arguments of the rehearsed
`instill build` (tests/image_build.py)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from image_build import REPO, build_args

pytestmark = pytest.mark.slow


def rehearsal_requirement(entry: str) -> str:
    """The CPU stand-in for a python_packages entry. Pins are used as they are (this machine's pip config
    resolves torch==2.13.0 to the local CPU wheel, PyPI's Linux wheel is the image's CUDA build); a direct
    wheel URL or a +cuXXX local version would map to its plain torch==X here."""
    if entry.startswith(("http://", "https://")) and "/torch-" in entry:
        return "torch==" + re.search(r"/torch-([0-9.]+)", entry).group(1).rstrip(".")
    return re.sub(r"^(torch==[0-9.]+)\+cu[0-9]+$", r"\1", entry)


def pip(python: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", *args], capture_output=True,
                          text=True, timeout=timeout)


def installed(python: Path) -> dict[str, str]:
    listing = json.loads(pip(python, "list", "--format=json", timeout=120).stdout)
    return {canonical(item["name"]): item["version"] for item in listing}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned(entry: str) -> tuple[str, str]:
    name, version = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==(.+)", entry).groups()
    return canonical(name), version


def same_version(installed_version: str, pin: str) -> bool:
    return installed_version.split("+")[0] == pin  # torch 2.13.0+cpu here


def test_image_python_environment_installs_in_order_and_is_consistent(build_call, tmp_path):
    """The Dockerfile's steps in a fresh venv: Ray (the base image), each python_packages entry by its own
    `pip install`, then the SDK. No step may change a version an earlier step pinned; the result must hold
    every requirements.txt pin, pass `pip check` and import."""
    args = build_args(build_call["argv"])
    venv = tmp_path / "image-env"
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        python = venv / "bin" / "python"
        # The base image rayproject/ray:2.47.0-py311-cu128 ships Ray 2.47.0 with its dependencies pinned by
        # Ray's own constraints, which cannot be read here: the tests' environment stands in for them.
        constraints = tmp_path / "base-image-constraints.txt"
        freeze = subprocess.run([sys.executable, "-m", "pip", "freeze"], capture_output=True, text=True,
                                check=True, timeout=120).stdout
        constraints.write_text("".join(line + "\n" for line in freeze.splitlines() if re.match(r"^[\w.-]+==", line)))
        # --no-compile only skips writing .pyc files, to save time.
        steps = [("base image", ["--no-compile", f"ray[serve]=={args['RAY_VERSION']}", "-c", str(constraints)])]
        steps += [(entry, ["--no-compile", "--default-timeout=1000", rehearsal_requirement(entry)])
                  for entry in args["PYTHON_PACKAGES"].split(" ")]
        sdk = f"instill-sdk=={args['INSTILL_PYTHON_SDK_VERSION']}"
        steps += [("SDK", ["--no-compile", "--default-timeout=1000", sdk])]
        pins: dict[str, str] = {"ray": args["RAY_VERSION"]}
        for label, step in steps:
            result = pip(python, "install", "-q", *step)
            assert result.returncode == 0, f"pip install {label}: {result.stderr[-3000:]}"
            now = installed(python)
            changed = {name: (pin, now.get(name)) for name, pin in pins.items()
                       if not same_version(now.get(name, ""), pin)}
            assert not changed, f"installing {label} changed earlier pins (pinned, now): {changed}"
            if label not in ("base image", "SDK"):
                name, version = pinned(rehearsal_requirement(label))
                pins[name] = version
        requirements = [line.strip() for line in (REPO / "requirements.txt").read_text().splitlines()
                        if line.strip() and not line.startswith("#")]
        final = installed(python)
        for requirement in requirements:
            name, version = pinned(requirement)
            assert same_version(final.get(name, ""), version), f"{requirement}: the image has {final.get(name)}"
        check = pip(python, "check", timeout=300)
        assert check.returncode == 0, check.stdout + check.stderr
        imports = subprocess.run([str(python), "-c", (
            "import importlib.util, torch, diffusers, transformers, accelerate, safetensors, ray.serve\n"
            "import instill.helpers, python_multipart\n"
            "from instill.helpers.ray_config import InstillDeployable, instill_deployment\n"
            "assert importlib.util.find_spec('instill.helpers.test'), 'the module instill run calls last'\n"
            "print(torch.__version__, diffusers.__version__, transformers.__version__)")],
            capture_output=True, text=True, timeout=600)
        assert imports.returncode == 0, imports.stderr[-3000:]
    finally:
        shutil.rmtree(venv, ignore_errors=True)  # about 1.5 GB
