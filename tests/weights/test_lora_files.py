"""The LoRA folder as a replica sees it: re-listed when a request names an adapter it has not seen, and the trigger
token a training's `<name>.json` gives."""

import json

from stable_diffusion_xl.weights import lora_files
from stable_diffusion_xl.weights.lora_files import MAX_SIDECAR_BYTES, LoraFolder


def test_an_adapter_that_appears_is_found_when_named_and_a_known_name_never_lists_the_folder(tmp_path, monkeypatch):
    (tmp_path / "old.safetensors").write_bytes(b"x")
    folder = LoraFolder(tmp_path)
    listings = []
    monkeypatch.setattr(lora_files, "available", lambda path: listings.append(path) or
                        tuple(sorted(p.stem for p in path.glob("*.safetensors"))))
    (tmp_path / "new.safetensors").write_bytes(b"x")
    assert folder.has("old") and listings == []  # known: the folder is not looked at
    assert folder.has("new") and folder.names == ("new", "old") and len(listings) == 1
    assert not folder.has("../old") and len(listings) == 1  # not a plain name: no listing either
    assert not folder.has("missing") and len(listings) == 2


def test_trigger_tokens_come_from_the_json_beside_an_adapter_and_a_broken_one_is_skipped(tmp_path):
    for name in ("good", "broken", "listed", "huge", "plain"):
        (tmp_path / f"{name}.safetensors").write_bytes(b"x")
    (tmp_path / "good.json").write_text(json.dumps({"token": "sks", "steps": 20}))
    (tmp_path / "broken.json").write_text('{"token": "sk')
    (tmp_path / "listed.json").write_text('["token"]')
    (tmp_path / "huge.json").write_text(json.dumps({"token": "big", "pad": "x" * MAX_SIDECAR_BYTES}))
    assert LoraFolder(tmp_path).trigger_tokens() == {"good": "sks"}
