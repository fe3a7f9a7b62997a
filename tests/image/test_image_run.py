"""`instill run -g` rehearsed without Docker: the in-container serve sequence. There is no Docker engine or GPU
here, so the run replays the commands `instill run -g` runs inside the container, in the build context of the
rehearsed `instill build` (tests/image_build.py), on a local Ray that declares one (fake) GPU so the
`num_gpus: 1` edit is kept; torch sees no CUDA and the model runs on the CPU."""

from __future__ import annotations

import ast
import json
import os
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

from image_build import BIN, sent_files
from instill_contract import check_output

pytestmark = pytest.mark.slow

RUN_INPUT = '{"prompt": "cat napping"}'  # the README's `instill run -g -i` input, unchanged


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
    num_gpus edit stays and the replica is scheduled, and SDXL_DEVICE=cpu runs it on the CPU (a replica given a GPU
    torch cannot use refuses to start, tests/serving/test_hardware.py); the
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
               SDXL_DEMO_WEIGHTS="1", SDXL_WEIGHTS_DIR=str(weights_dir), SDXL_DEVICE="cpu")

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
