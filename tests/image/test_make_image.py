"""`make image` checks the weights before it touches out/image: without them it stops with the fetch command and
leaves no half-built folder behind."""

import subprocess
import sys
from pathlib import Path

import pytest

from image_build import stage_project

pytestmark = pytest.mark.slow


def test_make_image_without_weights_names_the_fetch_command_and_builds_nothing(tmp_path):
    stage_project(tmp_path)
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parents[1])
    result = subprocess.run(["make", "-o", ".venv/.installed", "image"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode != 0
    assert "is missing: run .venv/bin/python -m stable_diffusion_xl fetch-weights" in result.stderr
    assert not (tmp_path / "out" / "image").exists()
