"""The command line a person without Ray uses."""

import subprocess
import sys

import pytest
from PIL import Image


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


def test_generate_rejects_bad_arguments_by_name(weights_dir):
    result = run_cli("generate", "a cat", "--steps", "0", "--demo", "--weights", str(weights_dir))
    assert result.returncode == 2 and "steps: must be from 1 to 100, got 0" in result.stderr


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
