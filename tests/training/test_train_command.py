"""`python -m stable_diffusion_xl train`: every bad input is one `error:` line, exit 2 and nothing written (run
in process: they fail before any training); a training through the real command line, alone and on two Ray Train
workers."""

import io
import json
import subprocess
import sys
import zipfile

import pytest
from PIL import Image

from helpers import training_photo, write_photos
from stable_diffusion_xl.__main__ import main
from stable_diffusion_xl.training import photos as photos_module


@pytest.fixture
def lora_dir(tmp_path):
    folder = tmp_path / "loras"
    folder.mkdir()
    (folder / "taken.safetensors").write_bytes(b"a good adapter")
    return folder


def zip_with(folder, name, data):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for photo in sorted(folder.iterdir()):
            archive.write(photo, photo.name)
        archive.writestr(name, data)
    path = folder.parent / "photos.zip"
    path.write_bytes(buffer.getvalue())
    return path


def bad_photos(case: str, folder, monkeypatch):
    """Photos with one problem; returns what --images gets."""
    write_photos(folder, 8)
    if case == "few":
        for path in sorted(folder.iterdir())[2:]:
            path.unlink()
    elif case == "not-an-image":
        (folder / "notes.jpg").write_text("not a photo")
    elif case == "truncated":
        data = (folder / "photo-0.jpg").read_bytes()
        (folder / "photo-0.jpg").write_bytes(data[: len(data) // 2])
    elif case == "bomb":
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40_000)
    elif case == "small":
        training_photo(0, size=(200, 200)).save(folder / "small.jpg")
    elif case == "zip-over-limit":
        path = zip_with(folder, "extra.jpg", b"")
        monkeypatch.setattr(photos_module, "MAX_ZIP_BYTES", path.stat().st_size - 1)
        return path
    elif case == "zip-outside":
        return zip_with(folder, "../../evil.jpg", b"")
    return folder


PHOTO_ERRORS = {
    "few": "error: 3 photos at least are needed, got 2",
    "not-an-image": 'error: "notes.jpg": is not an image (JPEG, PNG or WebP)',
    "truncated": 'error: "photo-0.jpg": is truncated or corrupt',
    "bomb": 'error: "photo-0.jpg": has too many pixels to be a photo (over 40,000); a decompression bomb?',
    "small": 'error: "small.jpg": is 200x200; photos need 256 pixels or more on their shorter side',
    "zip-over-limit": 'error: "photos.zip": the zip is over the limit of {limit} bytes',
    "zip-outside": 'error: "photos.zip": holds a path outside the zip, "../../evil.jpg"',
}


def run_main(capsys, *args) -> tuple[int, list[str]]:
    code = main(["train", *args])
    captured = capsys.readouterr()
    return code, captured.err.strip().splitlines() + captured.out.strip().splitlines()


@pytest.mark.parametrize("case", sorted(PHOTO_ERRORS))
def test_each_bad_photo_set_is_one_error_line_and_nothing_is_written(case, weights_dir, lora_dir, tmp_path,
                                                                     monkeypatch, capsys):
    images = bad_photos(case, tmp_path / "photos", monkeypatch)
    before = sorted(lora_dir.rglob("*"))
    code, lines = run_main(capsys, "--images", str(images), "--name", "me", "--demo", "--weights", str(weights_dir),
                           "--lora-dir", str(lora_dir))
    limit = f"{photos_module.MAX_ZIP_BYTES:,}"
    assert (code, lines) == (2, [PHOTO_ERRORS[case].format(limit=limit)])
    assert sorted(lora_dir.rglob("*")) == before


OPTION_ERRORS = {
    ("--name", "../me"): 'error: name: must be a plain name (letters, digits, -, _ and inner dots, at most 100 '
                         'characters), got "../me"',
    ("--name", "taken"): 'error: name: "taken" is taken: the LoRA folder has an adapter of that name; choose another '
                         'name, or set the overwrite option',
    ("--rank", "0"): "error: rank: must be from 1 to 256, got 0",
    ("--steps", "50000"): "error: steps: must be from 1 to 20000, got 50000",
    ("--learning-rate", "1"): "error: learning-rate: must be from 1e-07 to 0.01, got 1.0",
}


@pytest.mark.parametrize("option", sorted(OPTION_ERRORS))
def test_each_bad_option_is_one_error_line_naming_it(option, weights_dir, lora_dir, tmp_path, capsys):
    args = [item for pair in {"--name": "me", option[0]: option[1]}.items() for item in pair]
    code, lines = run_main(capsys, "--images", str(write_photos(tmp_path / "photos", 8)), "--demo", "--weights",
                           str(weights_dir), "--lora-dir", str(lora_dir), *args)
    assert (code, lines) == (2, [OPTION_ERRORS[option]])
    assert sorted(path.name for path in lora_dir.iterdir()) == ["taken.safetensors"]


def test_missing_weights_say_how_to_get_them(tmp_path, capsys):
    photos = str(write_photos(tmp_path / "photos", 8))
    code, lines = run_main(capsys, "--images", photos, "--name", "me", "--demo", "--weights", str(tmp_path / "none"))
    assert code == 2 and len(lines) == 1 and "build them with `python -m stable_diffusion_xl demo-weights`" in lines[0]
    code, lines = run_main(capsys, "--images", photos, "--name", "me", "--weights", str(tmp_path / "none"))
    assert code == 2 and len(lines) == 1 and "fetch-weights" in lines[0] and "--demo" in lines[0]
    assert not (tmp_path / "none").exists()


def run_cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "stable_diffusion_xl", "train", *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow  # a subprocess that trains
def test_train_shows_the_loss_and_ends_with_where_the_adapter_is_and_generate_uses_it(weights_dir, tmp_path):
    photos = write_photos(tmp_path / "photos", 6)
    (photos / "photo-0.txt").write_text("a photo of sks dog on grass")
    result = run_cli("--images", str(photos), "--name", "dog", "--token", "sks", "--class-word", "dog", "--steps",
                     "3", "--demo", "--weights", str(weights_dir), "--lora-dir", str(tmp_path / "loras"))
    assert result.returncode == 0, result.stderr
    assert "warning: only 6 photos" in result.stderr and "loss=" in result.stderr and "3/3" in result.stderr
    summary = result.stdout.splitlines()[0]
    assert summary.startswith(f"adapter {tmp_path / 'loras' / 'dog.safetensors'} ")
    assert '"lora": "dog"' in summary and "sks" in summary
    metadata = json.loads((tmp_path / "loras" / "dog.json").read_text())
    assert (metadata["captioned_photos"], metadata["token"], metadata["steps"]) == (1, "sks", 3)
    # The command line's next step: generate with it, from the same folder.
    code = main(["generate", "a photo of sks dog", "--lora", "dog", "--lora-dir", str(tmp_path / "loras"), "--steps",
                 "2", "--demo", "--weights", str(weights_dir), "-o", str(tmp_path / "out")])
    assert code == 0 and len(list((tmp_path / "out").glob("sdxl-*.jpg"))) == 1


@pytest.mark.slow  # a subprocess that starts a one-node Ray on loopback and two Ray Train workers
def test_two_workers_under_ray_train_write_an_adapter_the_same_way(weights_dir, tmp_path):
    result = run_cli("--images", str(write_photos(tmp_path / "photos", 6)), "--name", "pair", "--steps", "4",
                     "--workers", "2", "--demo", "--weights", str(weights_dir), "--lora-dir", str(tmp_path / "loras"),
                     timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "on 2 workers" in result.stderr and '"lora": "pair"' in result.stdout
    assert sorted(path.name for path in (tmp_path / "loras").iterdir()) == ["pair.json", "pair.safetensors"]
    metadata = json.loads((tmp_path / "loras" / "pair.json").read_text())
    assert (metadata["workers"], metadata["steps"]) == (2, 4)
