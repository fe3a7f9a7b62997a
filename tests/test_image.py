"""`instill build` and `instill run -g` rehearsed without Docker: the build context, the image's Python
environment and the in-container serve sequence.

There is no Docker engine or GPU here, so:
- the build runs the real `instill` CLI (instill-sdk 0.17.2) with tests/fake_docker.py as `docker`, which
  records the command and snapshots the build context; .dockerignore is applied with Docker's rules;
- the image's Python environment is rebuilt in a fresh venv by the Dockerfile's own steps (CPU torch);
- the run replays the commands `instill run -g` runs inside the container, on a local Ray that declares
  one (fake) GPU so the `num_gpus: 1` edit is kept; torch sees no CUDA and the model runs on the CPU.
"""

from __future__ import annotations

import ast
import json
import os
import platform
import posixpath
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import instill
import pytest
import ray
import yaml
from instill.helpers.const import DEFAULT_DEPENDENCIES

from instill_contract import check_output
from stable_diffusion_xl.weights import load_manifest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the project venv's console scripts: instill, serve
FAKE_DOCKER = Path(__file__).resolve().parent / "fake_docker.py"
IMAGE = "test-user/stable-diffusion-xl:v0.2.0"
SDK_VERSION = "0.17.2"
RUN_INPUT = '{"prompt": "cat napping"}'  # the README's `instill run -g -i` input, unchanged
# What `instill build` logs when it fails; the CLI exits 0 either way.
FAILURE_MARKERS = ("Build failed", "Prepare failed", "Traceback")


# --- Docker's .dockerignore rules (moby/patternmatcher), for the patterns a .dockerignore may hold ------

def dockerignore_rules(text: str) -> list[tuple[bool, re.Pattern]]:
    """(is_exception, regex) per pattern: comments and blanks skipped, paths cleaned, leading / dropped."""
    rules = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = posixpath.normpath(line[1:].strip() if exception else line)
        if len(pattern) > 1 and pattern.startswith("/"):
            pattern = pattern[1:]
        rules.append((exception, re.compile(_pattern_regex(pattern))))
    return rules


def _pattern_regex(pattern: str) -> str:
    regex, i = "^", 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
            regex += ".*" if i == len(pattern) else "(.*/)?"
            continue
        if char == "*":
            regex += "[^/]*"
        elif char == "?":
            regex += "[^/]"
        elif char in "[]":
            regex += char  # character classes pass through, as in Go's filepath.Match
        else:
            regex += re.escape(char)
        i += 1
    return regex + "$"


def dockerignored(path: str, rules) -> bool:
    """A path is excluded when the last rule matching it or one of its parent folders is not an exception."""
    parents = path.split("/")[:-1]
    excluded = False
    for exception, regex in rules:
        matched = bool(regex.match(path)) or any(regex.match("/".join(parents[:n])) for n in range(1, len(parents) + 1))
        if matched:
            excluded = not exception
    return excluded


def test_dockerignore_matcher_follows_dockers_rules():
    rules = dockerignore_rules("# c\n__pycache__\n**/*.pyc\n/venv\ntests/\nweights/*/.cache\nkeep*\n!keep.me\n")
    assert dockerignored("__pycache__/a.pyc", rules)
    assert dockerignored("pkg/mod.pyc", rules) and dockerignored("a.pyc", rules)
    assert not dockerignored("pkg/__pycache__/x", rules[:1])  # a bare name is the top-level one only
    assert dockerignored("venv/bin/python", rules) and not dockerignored("src/venv", rules)
    assert dockerignored("tests/test_x.py", rules) and not dockerignored("pkg/tests/x.py", rules)
    assert dockerignored("weights/base/.cache/huggingface/x", rules)
    assert not dockerignored("weights/base/unet/config.json", rules)
    assert dockerignored("keep.you", rules) and not dockerignored("keep.me", rules)


# --- a: the build ----------------------------------------------------------------------------------------

def stage_project(dest: Path) -> None:
    """The project's files as a clean checkout has them (tracked, plus new files git does not ignore)."""
    listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                             capture_output=True, check=True, timeout=60).stdout.decode()
    for name in filter(None, listing.split("\0")):
        if (REPO / name).is_file():  # a tracked file deleted in the working tree is skipped
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)


REAL_WEIGHTS = [f"weights/{source.folder}/{name}" for source in load_manifest().values() for name in source.files]
# Things a developer's folder holds that the image must not: each must be absent from what docker receives.
CLUTTER = [
    ".venv/bin/python", ".venv/lib/python3.11/site-packages/torch/__init__.py", ".git/HEAD",
    "weights/demo/stable-diffusion-xl-base-1.0/model_index.json",
    "weights/demo/stable-diffusion-xl-base-1.0/unet/diffusion_pytorch_model.safetensors",
    "weights/stable-diffusion-xl-base-1.0/.cache/huggingface/download/unet/config.json.metadata",
    "weights/.cache/huggingface/.gitignore", "out/sdxl-1.jpg", "sdxl-2.png", "bench/results/run.json",
    "stable_diffusion_xl/__pycache__/engine.cpython-311.pyc", ".pytest_cache/v/cache/lastfailed",
    ".hypothesis/examples/x", ".mypy_cache/x", ".ruff_cache/x",
]
NOT_SENT = ["tests/", ".venv/", ".git/", "weights/demo/", "out/", "bench/", ".ci/", ".pytest_cache/", ".hypothesis/",
            "instill.yaml", "model.py", "Dockerfile"]


@pytest.fixture(scope="module")
def image_build(tmp_path_factory):
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


@pytest.fixture(scope="module")
def build_call(image_build):
    output = image_build["output"]
    assert image_build["result"].returncode == 0, output
    assert not any(marker in output for marker in FAILURE_MARKERS), output
    assert f"[Instill] {IMAGE} built" in output, output
    calls = image_build["calls"]
    assert [call["argv"][:2] for call in calls] == [["buildx", "build"]], calls
    return calls[0]


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
    # What the image needs: model.py as _model.py, the package, the real weights and their manifest.
    assert (snapshot / "_model.py").read_bytes() == (project / "model.py").read_bytes()
    package = [p.relative_to(project).as_posix() for p in (project / "stable_diffusion_xl").glob("*.py")]
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


# --- b: the image's Python environment -------------------------------------------------------------------

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
            "import instill.helpers\n"
            "from instill.helpers.ray_config import InstillDeployable, instill_deployment\n"
            "assert importlib.util.find_spec('instill.helpers.test'), 'the module instill run calls last'\n"
            "print(torch.__version__, diffusers.__version__, transformers.__version__)")],
            capture_output=True, text=True, timeout=600)
        assert imports.returncode == 0, imports.stderr[-3000:]
    finally:
        shutil.rmtree(venv, ignore_errors=True)  # about 1.5 GB


# --- c: the run ------------------------------------------------------------------------------------------

def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except OSError:
        return None


def stop(process: subprocess.Popen) -> None:
    """SIGINT lets `serve run` shut Serve and its Ray down; then whatever is left of its process group goes."""
    try:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    pass
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()


def test_instill_run_gpu_sequence_serves_the_model_and_answers_the_readme_input(build_call, weights_dir, tmp_path):
    """What `instill run IMAGE -g -i '{"prompt": "cat napping"}'` runs in the container (instill-sdk 0.17.2):

        serve build _model:entrypoint -o serve.yaml && sed -i 's/app1/default/' serve.yaml &&
        sed -i 's/num_cpus: 0.0/num_gpus: 1/' serve.yaml && serve run serve.yaml
        (wait for the dashboard on :8265, then for `serve status --name default` to say RUNNING: 1)
        python -m instill.helpers.test -i '{"prompt": "cat napping"}'     # POSTs to 127.0.0.1:8000

    Differences here, all deliberate: the folder is the build context after .dockerignore (the image's
    /home/ray); the model gets the demo weights through SDXL_DEMO_WEIGHTS/SDXL_WEIGHTS_DIR (the staged
    "real" weights are dummies); Ray declares one GPU it does not have (RAY_OVERRIDE_RESOURCES), so the
    num_gpus edit stays and the replica is scheduled, while torch finds no CUDA and runs on the CPU; the
    HTTP proxy listens on 127.0.0.1 rather than the container's 0.0.0.0; Ray gets its own temp folder.
    """
    for port, what in ((8000, "the HTTP port instill.helpers.test posts to"), (8265, "Ray's dashboard port")):
        if port_in_use(port):
            pytest.skip(f"127.0.0.1:{port} ({what}) is in use on this machine")
    home = tmp_path / "home_ray"
    snapshot = Path(build_call["snapshot"])
    for name in sent_files(snapshot):  # COPY . . into /home/ray
        (home / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(snapshot / name, home / name)
    ray_tmp = Path(tempfile.mkdtemp(prefix="sdxl-ray-", dir="/tmp"))  # short: Ray's socket paths must fit
    protogen = Path(instill.__file__).parent / "protogen/model/ray/v1alpha"
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    env.update(PATH=f"{BIN}{os.pathsep}{env['PATH']}", HOME=str(tmp_path), PYTHONPATH=str(protogen),  # the image's ENV
               RAY_TMPDIR=str(ray_tmp), RAY_OVERRIDE_RESOURCES=json.dumps({"GPU": 1}),
               SDXL_DEMO_WEIGHTS="1", SDXL_WEIGHTS_DIR=str(weights_dir))

    def run(command: str, timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run(["/bin/bash", "-c", command], cwd=home, env=env, capture_output=True, text=True,
                              timeout=timeout)

    built = run("serve build _model:entrypoint -o serve.yaml", timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    generated = (home / "serve.yaml").read_text()
    assert "name: app1" in generated and "num_cpus: 0.0" in generated and "host: 0.0.0.0" in generated
    edited = run("sed -i 's/app1/default/' serve.yaml && sed -i 's/num_cpus: 0.0/num_gpus: 1/' serve.yaml", 60)
    assert edited.returncode == 0, edited.stderr
    config = (home / "serve.yaml").read_text().replace("host: 0.0.0.0", "host: 127.0.0.1")
    (home / "serve.yaml").write_text(config)
    assert "name: default" in config and "num_gpus: 1" in config and "num_cpus" not in config

    log_path = tmp_path / "serve-run.log"
    with open(log_path, "w") as log:
        # SIGINT restored to its default first: a shell's background job would otherwise start with it ignored.
        serve = subprocess.Popen(
            [sys.executable, "-c", "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
             "os.execv(sys.argv[1], sys.argv[1:])", str(BIN / "serve"), "run", "serve.yaml"],
            cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def log_tail() -> str:
            return log_path.read_text(errors="replace")[-4000:]

        deadline = time.monotonic() + 180
        while http_status("http://localhost:8265") != 200:
            assert serve.poll() is None, f"serve run exited with {serve.returncode}:\n{log_tail()}"
            assert time.monotonic() < deadline, f"no dashboard after 180 s:\n{log_tail()}"
            time.sleep(2)
        deadline, status = time.monotonic() + 600, ""
        while "RUNNING: 1" not in status:
            assert serve.poll() is None, f"serve run exited with {serve.returncode}:\n{log_tail()}"
            assert "DEPLOY_FAILED" not in status, f"{status}\n{log_tail()}"
            assert time.monotonic() < deadline, f"not RUNNING after 600 s:\n{status}\n{log_tail()}"
            time.sleep(1)
            status = run("serve status --name default", timeout=60).stdout

        inference = run(f"python -m instill.helpers.test -i '{RUN_INPUT}'", timeout=900)
        assert inference.returncode == 0, inference.stderr[-3000:]
        assert "[Instill] Errors:" not in inference.stderr, inference.stderr[-3000:]
        assert "[Instill] Outputs:\n" in inference.stderr, inference.stderr[-3000:]
        outputs = ast.literal_eval(inference.stderr.split("[Instill] Outputs:\n", 1)[1].strip())  # pprint-ed
        assert len(outputs) == 1
        images = check_output(outputs[0])
        assert len(images) == 1 and images[0].size == (256, 256)  # 1024x1024 at the demo weights' scale
    finally:
        stop(serve)
        shutil.rmtree(ray_tmp, ignore_errors=True)
