"""The command line a person without Ray uses."""

import os
import re
import socket
import subprocess
import sys

import pytest
from PIL import Image

pytestmark = pytest.mark.slow  # each test runs the command line in a subprocess


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "stable_diffusion_xl", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_generate_writes_jpegs_and_reports_seeds_sizes_and_timings(weights_dir, tmp_path):
    out = tmp_path / "out"
    result = run_cli("generate", "a cat napping", "--n", "2", "--seed", "7", "--aspect-ratio", "16:9",
                     "--steps", "5", "-o", str(out), "--demo", "--weights", str(weights_dir))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["sdxl-7.jpg", "sdxl-8.jpg"]
    with Image.open(out / "sdxl-7.jpg") as image:
        assert image.format == "JPEG" and image.size == (336, 192)
    assert "seed 7  336x192" in result.stdout and "seed 8  336x192" in result.stdout
    assert "text_encoders" in result.stdout and "refiner" in result.stdout
    assert "noise" in result.stdout
    assert "base: 100%" in result.stderr and "refiner: 100%" in result.stderr  # a progress bar per stage
    bars = {line.split(":")[0].strip() for line in re.split(r"[\r\n]", result.stderr) if "%|" in line}
    assert bars == {"base", "refiner"}  # and no bar for loading the models' files


def test_generate_edits_a_picture_with_a_mask(weights_dir, tmp_path):
    Image.new("RGB", (300, 200), "teal").save(tmp_path / "photo.png")
    mask = Image.new("L", (300, 200), 0)
    mask.paste(255, (0, 0, 150, 200))
    mask.save(tmp_path / "mask.png")
    result = run_cli("generate", "a cat", "--image", str(tmp_path / "photo.png"), "--mask", str(tmp_path / "mask.png"),
                     "--strength", "0.5", "--steps", "4", "--seed", "3", "-o", str(tmp_path / "out"), "--demo",
                     "--weights", str(weights_dir))
    assert result.returncode == 0, result.stderr
    assert "seed 3  304x208" in result.stdout  # the demo weights' 3:2, the picture's nearest
    broken = run_cli("generate", "a cat", "--image", str(tmp_path / "mask.png"), "--mask", str(tmp_path / "nope.png"),
                     "--demo", "--weights", str(weights_dir))
    assert broken.returncode == 2 and "mask: cannot be read (FileNotFoundError)" in broken.stderr


def test_generate_rejects_bad_arguments_by_name(weights_dir):
    result = run_cli("generate", "a cat", "--steps", "0", "--demo", "--weights", str(weights_dir))
    assert result.returncode == 2 and "steps: must be from 1 to 100, got 0" in result.stderr


@pytest.mark.slow  # a subprocess that loads the demo weights
def test_generate_with_an_adapter_it_does_not_have_ends_in_one_error_line(weights_dir, tmp_path):
    result = run_cli("generate", "a cat", "--lora", "nope", "--demo", "--weights", str(weights_dir),
                     "-o", str(tmp_path / "out"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith('error: lora: no adapter named "nope" on this deployment; '
                                                     'available: demo-')
    assert not (tmp_path / "out").exists()


def lines_for_a_user(stderr: str) -> list[str]:
    """stderr without the progress bars (tqdm's `3/7 [00:01<...]`), line by line."""
    return [line for line in stderr.splitlines() if line.strip() and not re.search(r"\d+/\d+ \[", line)]


@pytest.mark.slow  # a subprocess that loads the demo weights
def test_generate_prints_only_our_own_lines_no_library_noise(weights_dir, tmp_path):
    """No transformers torchvision fallbacks, no LoRA keys missing from text encoders (demo-style trains the UNet
    only), no torchao kernels, and the time once, milliseconds included."""
    result = run_cli("generate", "a cat", "--steps", "2", "--lora", "demo-style", "--demo", "--weights",
                     str(weights_dir), "-o", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    lines = lines_for_a_user(result.stderr)
    ours = ["WARNING  loading the DEMO weights from ", "INFO     loaded the LoRA adapter demo-style "]
    assert len(lines) == len(ours), lines
    for line, start in zip(lines, ours):
        assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} " + re.escape(start), line), line


@pytest.mark.slow  # 30 s of the hub client's retries
def test_fetch_that_cannot_reach_the_hub_prints_its_error_and_no_retry_lines(tmp_path):
    with socket.socket() as sock:  # a port nothing listens on: every request is refused at once
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{closed}", "HF_HUB_OFFLINE": "0"}
    result = subprocess.run([sys.executable, "-m", "stable_diffusion_xl", "fetch-weights", "--weights", str(tmp_path)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 1
    lines = lines_for_a_user(result.stderr)
    assert len(lines) == 2, lines
    assert lines[0].startswith("error: could not fetch the weights from the Hugging Face hub")


def test_generate_without_weights_says_how_to_fetch_them(tmp_path):
    result = run_cli("generate", "a cat", "--weights", str(tmp_path))
    assert result.returncode == 2 and "fetch-weights" in result.stderr and "Traceback" not in result.stderr


def test_try_serves_the_model_on_ray_and_writes_the_reply_images(weights_dir, tmp_path):
    """The README's first command: the Instill model on a local Ray Serve, one request as `instill run -i`."""
    out = tmp_path / "out"
    result = run_cli("try", "-i", '{"prompt": "cat napping", "n": 2, "seed": 11, "steps": 5}', "--demo",
                     "--weights", str(weights_dir), "-o", str(out), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["sdxl-11.jpg", "sdxl-12.jpg"]
    assert f"images written to {out}" in result.stdout



@pytest.mark.slow
def test_try_reports_input_that_is_not_json_before_starting_ray(weights_dir):
    result = run_cli("try", "-i", "{prompt: cat}", "--demo", "--weights", str(weights_dir), timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("error")] == [
        "error: -i/--input: must be JSON (Expecting property name enclosed in double quotes at character 1)"]
    assert "starting Ray" not in result.stderr


def test_the_help_and_the_settings_import_no_torch():
    """`--help`, the settings table and `serve`'s checks before Ray starts stay fast: torch, diffusers and Ray are
    imported by the commands that run them, not by the parser."""
    probe = ("import contextlib, io, sys\n"
             "from stable_diffusion_xl.__main__ import main\n"
             "from stable_diffusion_xl.serving.settings import Settings\n"
             "Settings.from_env({})\n"
             "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
             "    main(['generate', '--help'])\n"
             "print(sorted(name for name in ('torch', 'diffusers', 'transformers', 'ray') if name in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
