"""The compile cache (SDXL_COMPILE_CACHE): a replica with a filled cache compiles nothing new, and a cache for another
key, a damaged one or an unwritable folder is skipped with one log line, never a crash.

The entries of most tests hold what inductor compiled for a one-line function (seconds; marked slow because inductor
runs the C++ compiler in a subprocess). The last test builds a real cache with the `compile-cache` command
(inductor, demo weights) and starts a second process from it.
"""

import copy
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch._inductor.utils import fresh_cache

from helpers import ROUNDING, max_pixel_difference, request
from stable_diffusion_xl.generation.compile import inductor_compiles
from stable_diffusion_xl.generation.compile_cache import CompileCache, cache_key

ROOT = Path(__file__).resolve().parents[2]
KEY = {"format": 1, "torch": torch.__version__, "triton": None, "python": "3.11.7", "diffusers": "0.42.1",
       "device": "cpu", "mode": "default", "backend": "inductor", "dtype": "float32", "networks": "0123456789abcdef"}
OTHER_GPU = {**KEY, "torch": "2.11.0+cu130", "device": "NVIDIA H200 sm90", "dtype": "float16"}


def _compile_something() -> torch.Tensor:
    torch._dynamo.reset()
    return torch.compile(lambda x: torch.sin(x) * 2 + 1, backend="inductor")(torch.arange(8.0))


@pytest.fixture
def saved(tmp_path):
    """A cache folder holding one entry for KEY, made by compiling a small function with inductor."""
    with fresh_cache():
        _compile_something()
        assert CompileCache(tmp_path, KEY).save() is not None
    return tmp_path


def _lines(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name.endswith("compile_cache")]


@pytest.mark.slow  # inductor runs the C++ compiler in a subprocess
def test_a_saved_entry_is_written_atomically_and_a_fresh_process_cache_loads_it(saved, caplog):
    entry = CompileCache(saved, KEY)
    assert sorted(path.name for path in entry.folder.iterdir()) == ["artifacts.bin", "key.json"]  # no temporaries
    assert all(path.stat().st_mode & 0o777 == 0o644 for path in entry.folder.iterdir())  # readable by any replica
    with fresh_cache(), caplog.at_level(logging.INFO):  # inductor's own caches empty, as in a new replica
        assert entry.load()
        before = inductor_compiles()
        _compile_something()
        assert inductor_compiles() == before, "the loaded artifacts were not used"
    assert len(_lines(caplog)) == 1 and _lines(caplog)[0].startswith("compile cache: loaded")


@pytest.mark.slow  # inductor runs the C++ compiler in a subprocess
def test_a_cache_made_for_another_gpu_and_torch_is_not_read_and_one_line_says_why(tmp_path, caplog):
    with fresh_cache():
        _compile_something()
        CompileCache(tmp_path, OTHER_GPU).save()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert not CompileCache(tmp_path, KEY).load()
    [line] = _lines(caplog)
    assert f"torch 2.11.0+cu130 (here {torch.__version__})" in line and "device NVIDIA H200 sm90 (here cpu)" in line
    assert "dtype float16 (here float32)" in line and "networks" not in line  # what differs, and only that


def _flip_a_byte(folder: Path):
    data = bytearray((folder / "artifacts.bin").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "artifacts.bin").write_bytes(bytes(data))


def _reseal(folder: Path, data: bytes):
    """Bytes torch cannot read, with a key.json that vouches for them: only torch's own loading can tell."""
    import hashlib

    (folder / "artifacts.bin").write_bytes(data)
    entry = json.loads((folder / "key.json").read_text())
    entry.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    (folder / "key.json").write_text(json.dumps(entry))


DAMAGES = {
    "a flipped byte": (_flip_a_byte, "artifacts.bin is damaged"),
    "cut short": (lambda folder: (folder / "artifacts.bin").write_bytes((folder / "artifacts.bin").read_bytes()[:99]),
                  "artifacts.bin is damaged (99 bytes, not the"),
    "no artifacts": (lambda folder: (folder / "artifacts.bin").unlink(), "artifacts.bin is unreadable"),
    "key.json cut short": (lambda folder: (folder / "key.json").write_text('{"key": {"form'),
                           "its key.json is unreadable (JSONDecodeError)"),
    "key.json of another key": (lambda folder: (folder / "key.json").write_text(json.dumps({"key": OTHER_GPU})),
                                "its key.json does not hold this replica's key"),
    "bytes torch cannot read": (lambda folder: _reseal(folder, b"\x80\x04not a pickle"), "torch could not load it"),
}


@pytest.mark.slow  # inductor runs the C++ compiler in a subprocess
@pytest.mark.parametrize("damage, reason", DAMAGES.values(), ids=DAMAGES.keys())
def test_a_damaged_entry_is_skipped_with_one_line(saved, caplog, damage, reason):
    entry = CompileCache(saved, KEY)
    damage(entry.folder)
    with fresh_cache(), caplog.at_level(logging.INFO):
        assert not entry.load()
        before = inductor_compiles()
        torch.testing.assert_close(_compile_something(), torch.sin(torch.arange(8.0)) * 2 + 1)  # compiled again
        assert inductor_compiles() > before
    [line] = _lines(caplog)
    assert reason in line and "compiling without it" in line


@pytest.mark.slow  # inductor runs the C++ compiler in a subprocess
def test_a_folder_that_cannot_be_written_is_one_line_not_a_failed_start(tmp_path, caplog):
    (tmp_path / "file").write_text("")
    with fresh_cache(), caplog.at_level(logging.INFO):
        _compile_something()
        assert CompileCache(tmp_path / "file" / "cache", KEY).save() is None
    assert "cannot write" in _lines(caplog)[-1]


def test_the_key_is_what_compiled_code_depends_on_and_not_where_the_weights_were_read_from(engine):
    key = cache_key([engine.base.unet, engine.refiner.unet], device="cpu", mode="default", backend="inductor")
    assert (key["torch"], key["device"], key["dtype"], key["mode"]) == (torch.__version__, "cpu", "float32", "default")
    moved = copy.deepcopy(engine.base.unet)
    moved.register_to_config(_name_or_path="/elsewhere/unet")
    assert cache_key([moved, engine.refiner.unet], device="cpu", mode="default", backend="inductor") == key
    moved.register_to_config(cross_attention_dim=2048)  # another network
    assert cache_key([moved, engine.refiner.unet], device="cpu", mode="default", backend="inductor") != key
    assert cache_key([engine.base.unet, engine.refiner.unet], device="cpu", mode="max-autotune",
                     backend="inductor") != key


SECOND_REPLICA = """
import json, logging, sys, tempfile
from pathlib import Path
import torch
logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
from helpers import request
from stable_diffusion_xl.generation.engine import Engine
engine = Engine.load(sys.argv[1], demo=True, max_batch_size=1, compile=True, compile_cache=Path(sys.argv[2]),
                     lora_dir=Path(tempfile.mkdtemp()))
engine.warm_up()
engine.generate([request(seed=5)])[0].images[0].save(sys.argv[3])
print(json.dumps(dict(torch._dynamo.utils.counters["inductor"])))
"""


def _process(args: list[str], tmp_path: Path, name: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", "SDXL_MAX_BATCH_SIZE": "1",
           "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / f"inductor-{name}")}  # inductor's own caches start empty
    done = subprocess.run([sys.executable, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_a_second_replica_loads_the_cache_the_command_built_and_compiles_nothing(weights_dir, engine, tmp_path):
    cache = tmp_path / "compile-cache"
    built = _process(["-m", "stable_diffusion_xl", "compile-cache", "--demo", "--weights", str(weights_dir),
                      "--cache", str(cache)], tmp_path, "first")
    assert built.stdout.startswith(f"compile cache: {cache}/torch-") and " MB)" in built.stdout
    second = _process(["-c", SECOND_REPLICA, str(weights_dir), str(cache), str(tmp_path / "image.png")], tmp_path,
                      "second")
    counters = json.loads(second.stdout.strip().splitlines()[-1])
    assert counters.get("fxgraph_cache_miss", 0) == 0 and counters.get("fxgraph_cache_bypass", 0) == 0, counters
    assert counters["fxgraph_cache_hit"] >= 4  # the blocks' graphs: two widths, batch 1 and more
    assert "compile cache: loaded" in second.stdout and "inductor compiled 0 of them" in second.stdout
    from PIL import Image

    eager = engine.generate([request(seed=5)])[0].images[0]
    assert max_pixel_difference(Image.open(tmp_path / "image.png"), eager) <= ROUNDING  # the right kernels
