"""`instill build` rehearsed without Docker (tests/image_build.py): the build arguments the SDK passes docker,
python_packages as pinned requirements, and a lean build context holding the model and its real weights."""

from __future__ import annotations

import platform
import re
from pathlib import Path

import instill
import pytest
import ray
from instill.helpers.const import DEFAULT_DEPENDENCIES

from image_build import (
    CLUTTER,
    IMAGE,
    NOT_SENT,
    REAL_WEIGHTS,
    REPO,
    SDK_VERSION,
    build_args,
    instill_yaml,
    option,
    sent_files,
)

pytestmark = pytest.mark.slow


def test_build_passes_python_cuda_packages_and_sdk_version(image_build, build_call):
    argv, config = build_call["argv"], instill_yaml()["build"]
    args = build_args(argv)
    packages = config["python_packages"]
    assert args["PYTHON_PACKAGES"].split(" ") == packages + DEFAULT_DEPENDENCIES
    assert DEFAULT_DEPENDENCIES == ["protobuf==4.25.3", "grpcio-tools==1.62.0"]  # 0.17.2 appends these
    assert args["INSTILL_PYTHON_SDK_VERSION"] == SDK_VERSION == instill.__version__
    assert args["RAY_VERSION"] == ray.__version__ == "2.47.0"
    # FROM rayproject/ray:${RAY_VERSION}-py${PYTHON_VERSION}${CUDA_SUFFIX}${TARGET_ARCH_SUFFIX}
    assert (args["PYTHON_VERSION"], args["CUDA_SUFFIX"], args["TARGET_ARCH_SUFFIX"]) == ("311", "-cu128", "")
    assert config["gpu"] is True and config["python_version"] == "3.11" and config["cuda_version"] == "12.8"
    assert "SYSTEM_PACKAGES" not in args and "llm_runtime" not in config
    assert option(argv, "-t") == IMAGE
    if platform.machine() in ("x86_64", "AMD64"):
        assert option(argv, "--platform") == "linux/amd64"
    snapshot = Path(build_call["snapshot"])
    assert option(argv, "--file") == f"{build_call['context']}/Dockerfile"
    sdk_docker = Path(instill.__file__).parent / "helpers" / "docker"
    assert (snapshot / "Dockerfile").read_bytes() == (sdk_docker / "Dockerfile").read_bytes()  # the SDK's own
    assert (snapshot / ".dockerignore").read_bytes() == (REPO / ".dockerignore").read_bytes()  # ours replaces it
    # A project Dockerfile would replace the SDK's, and a Dockerfile.dockerignore would replace .dockerignore.
    assert not list(image_build["project"].glob("Dockerfile*"))


def test_python_packages_are_one_pinned_requirement_each_in_requirements_txt():
    """The Dockerfile runs `for package in ${PYTHON_PACKAGES}; do pip install $package; done` unquoted:
    an entry must be one requirement, no pip flag, no space, nothing the shell would glob."""
    packages = instill_yaml()["build"]["python_packages"]
    pins = [line.strip() for line in (REPO / "requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    for entry in packages:
        assert re.fullmatch(r"[A-Za-z0-9_.-]+==[A-Za-z0-9_.+-]+", entry), entry
        assert entry in pins, f"{entry} differs from requirements.txt"
    # Everything requirements.txt pins is in the image: Ray from the base image, the SDK and protobuf from
    # the Dockerfile's own steps, the rest from python_packages.
    from_elsewhere = {f"ray[serve]=={ray.__version__}", f"instill-sdk=={SDK_VERSION}", *DEFAULT_DEPENDENCIES}
    assert set(pins) - from_elsewhere == set(packages)


def test_build_context_is_lean_and_holds_the_model_and_its_real_weights(image_build, build_call):
    snapshot = Path(build_call["snapshot"])
    sent = sent_files(snapshot)
    project = image_build["project"]
    # What the image needs: model.py as _model.py, the package and its page, the real weights and their manifest.
    assert (snapshot / "_model.py").read_bytes() == (project / "model.py").read_bytes()
    package_dir = project / "stable_diffusion_xl"
    package = [p.relative_to(project).as_posix() for p in package_dir.rglob("*")  # the page too, not the clutter
               if p.is_file() and "__pycache__" not in p.parts]
    for name in ["_model.py", "weights/manifest.json", *package, *REAL_WEIGHTS]:
        assert name in sent, f"{name} is not sent to docker"
    # What it must not hold.
    for name in sent:
        assert not any(name == bad or name.startswith(bad) for bad in NOT_SENT), f"{name} is sent to docker"
        assert "__pycache__" not in name and "/.cache/" not in name and not name.endswith((".pyc", ".jpg", ".png"))
    assert not set(CLUTTER) & set(sent)
    code = sum(size for name, size in sent.items() if name not in REAL_WEIGHTS)
    assert code < 1_000_000, f"{code} bytes besides the weights"
    # Why the README builds from a clean folder: the SDK copies the whole folder before .dockerignore
    # applies, following symlinks (a venv's lib64 -> lib is copied twice).
    assert (snapshot / ".venv/lib64/python3.11/site-packages/torch/__init__.py").is_file()
