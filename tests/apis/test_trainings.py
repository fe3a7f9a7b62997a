"""Trainings over HTTP (SDXL_TRAINING=1) on the session's real Ray Serve: a training is queued, runs as its own Ray
task, reports steps and losses, and its adapter is served at once; cancel stops it with no file; bad input is a 4xx
naming the field with nothing written; an adapter copied into the folder is served without a restart."""

import base64
import io
import json
import os
import re
import shutil
import socket
import time
import uuid

import numpy as np
import pytest
from PIL import Image
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait
from urllib3 import encode_multipart_formdata

from browser import chromium, console_errors
from helpers import unreadable_zips
from instill_contract import task_input
from served import API_KEY, KEYED, MODEL, TINY, TRAINING, PeakRss, http, raw_reply, replica_process, serve_log_lines
from stable_diffusion_xl.apis.trainings import SWITCHED_OFF  # its field names are metric labels, as in the replica
from stable_diffusion_xl.serving.client import grpc_call

pytestmark = pytest.mark.slow
DEMO_STYLE = "demo-style"  # written by demo-weights


def photos(count: int, size: int = 256) -> list[tuple[str, bytes]]:
    """`count` JPEG photos at the demo weights' native size: smooth colour fields with a little noise."""
    rng, made = np.random.default_rng(7), []
    for index in range(count):
        ramp = np.linspace(0, 255, size)[None, :, None] * rng.uniform(0.3, 1, 3)
        pixels = np.clip(ramp + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=85)
        made.append((f"photo-{index}.jpg", buffer.getvalue()))
    return made


def start(cluster, images: list[tuple[str, bytes]], app: str = TRAINING, headers: dict | None = None, **options):
    """POST the photos and options as the page does (a multipart form); (status, body)."""
    fields = [("images", (name, data, "image/jpeg")) for name, data in images]
    fields += [(name, str(value)) for name, value in options.items()]
    body, content_type = encode_multipart_formdata(fields)
    status, reply, _ = http(cluster.ports, f"{app}/v1/trainings", data=body, method="POST",
                            headers={"Content-Type": content_type, **(headers or {})})
    return status, reply


def wait_for(cluster, training_id: str, done, timeout: float = 600) -> list[dict]:
    """The statuses read until `done(status)` holds (bounded by `timeout`), each change once."""
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, reply, _ = http(cluster.ports, f"{TRAINING}/v1/trainings/{training_id}", method="GET", timeout=30)
        assert status == 200, reply
        if not seen or reply != seen[-1]:
            seen.append(reply)
        if done(reply):
            return seen
        time.sleep(0.1)
    raise AssertionError(f"no such status within {timeout} s; last: {seen[-1]}")


def adapter_files(cluster, name: str) -> list[str]:
    return sorted(path.name for path in cluster.lora_dir.rglob(f"{name}*"))


def image_of(cluster, **parameter) -> list:
    return grpc_call(cluster.channel, TRAINING, task_input(seed=31, **TINY, **parameter))[0]["data"]


def test_a_training_is_queued_runs_with_its_loss_succeeds_and_its_adapter_is_served_at_once(cluster):
    status, reply = start(cluster, photos(4), name="http-subject", token="zwx", steps=4)
    assert status == 202, reply
    assert reply["status"] == "queued" and reply["name"] == "http-subject" and "waiting for" in reply["reason"]
    seen = wait_for(cluster, reply["id"], lambda status: status["status"] not in ("queued", "running"))
    states = [status["status"] for status in seen]
    assert states[-1] == "succeeded", seen[-1]
    assert set(states) <= {"queued", "running", "succeeded"} and "running" in states
    assert states.index("running") < states.index("succeeded") and states.count("succeeded") == 1
    steps = [(status["step"], status["total"]) for status in seen if status["status"] == "running" and status["loss"]]
    assert steps and all(total == 4 and 1 <= step <= 4 for step, total in steps)
    done = seen[-1]
    assert done["adapter"] == "http-subject"
    assert done["use"] == {"lora": "http-subject", "prompt": "a photo of zwx person"}
    assert done["metadata"]["steps"] == 4 and done["metadata"]["photos"] == 4
    assert adapter_files(cluster, "http-subject") == ["http-subject.json", "http-subject.safetensors"]

    # Served by the running deployment, no restart: listed with its token, and it changes the image.
    _, listed, _ = http(cluster.ports, TRAINING, timeout=30)
    assert "http-subject" in listed["loras"]["available"] and listed["loras"]["trigger_tokens"]["http-subject"] == "zwx"
    assert image_of(cluster, lora="http-subject") != image_of(cluster)
    # The name is taken now: refused before anything is queued.
    status, reply = start(cluster, photos(3), name="http-subject", steps=1)
    assert (status, reply["field"]) == (409, "name")


def test_cancel_stops_a_running_training_and_leaves_no_file(cluster):
    status, reply = start(cluster, photos(3), name="http-cancelled", steps=5000)
    assert status == 202, reply
    wait_for(cluster, reply["id"], lambda status: status["status"] == "running" and status["step"] >= 1)
    status, cancelling, _ = http(cluster.ports, f"{TRAINING}/v1/trainings/{reply['id']}/cancel", method="POST")
    assert status == 200 and cancelling["status"] in ("running", "cancelled")
    seen = wait_for(cluster, reply["id"], lambda status: status["status"] not in ("queued", "running"), timeout=120)
    assert seen[-1]["status"] == "cancelled" and seen[-1].get("step", 0) < 5000
    assert adapter_files(cluster, "http-cancelled") == [] and not (cluster.lora_dir / ".training").exists()


def test_a_training_waits_queued_while_the_cluster_is_busy_says_why_and_cancel_takes_it_off_the_queue(cluster):
    # The session's Ray has os.cpu_count() CPUs (local_serve.py), a training takes one: one more stays queued.
    if os.cpu_count() > 4:
        pytest.skip(f"fills all {os.cpu_count()} CPUs with trainings: run on a machine of 4 CPUs or fewer (CI has 2)")
    busy = [start(cluster, photos(3), name=f"http-busy-{index}", steps=5000)[1] for index in range(os.cpu_count())]
    for training in busy:
        wait_for(cluster, training["id"], lambda status: status["status"] == "running")
    status, waiting = start(cluster, photos(3), name="http-waiting", steps=1)
    assert status == 202 and waiting["reason"] == "waiting for a CPU (this cluster has no GPU) on the Ray cluster"
    # SDXL_MAX_TRAININGS is one per CPU and one waiting: one more is refused, with when to retry.
    fields, content_type = encode_multipart_formdata([*(("images", (n, d, "image/jpeg")) for n, d in photos(3)),
                                                      ("name", "http-one-too-many")])
    status, refused, headers = http(cluster.ports, f"{TRAINING}/v1/trainings", data=fields, method="POST",
                                    headers={"Content-Type": content_type})
    assert (status, refused["field"]) == (429, "trainings") and "SDXL_MAX_TRAININGS" in refused["error"]
    assert 5 <= int(headers["Retry-After"]) <= 3600
    time.sleep(2)  # Ray does not start it meanwhile
    assert http(cluster.ports, f"{TRAINING}/v1/trainings/{waiting['id']}", method="GET")[1]["status"] == "queued"
    for training in [waiting, *busy]:
        assert http(cluster.ports, f"{TRAINING}/v1/trainings/{training['id']}/cancel", method="POST")[0] == 200
    for training in [waiting, *busy]:
        assert wait_for(cluster, training["id"], lambda status: status["status"] not in ("queued", "running"),
                        timeout=120)[-1]["status"] == "cancelled"
    assert [path for path in cluster.lora_dir.rglob("*") if path.name.startswith(("http-busy", "http-waiting"))] == []


def not_an_image() -> list[tuple[str, bytes]]:
    return [*photos(3), ("notes.jpg", b"this is not a JPEG")]


def truncated() -> list[tuple[str, bytes]]:
    (name, data), *rest = photos(3)
    return [(name, data[: len(data) // 2]), *rest]


@pytest.mark.parametrize("images, options, http_status, field", [
    (lambda: photos(2), {"name": "few"}, 400, "images"),
    (not_an_image, {"name": "bad-photo"}, 400, "images"),
    (truncated, {"name": "cut-photo"}, 400, "images"),
    (lambda: photos(3, size=128), {"name": "small-photo"}, 400, "images"),
    (lambda: photos(3), {}, 400, "name"),
    (lambda: photos(3), {"name": "../escape"}, 400, "name"),
    (lambda: photos(3), {"name": "many-workers", "workers": 2}, 400, "workers"),
    (lambda: photos(3), {"name": "rank-zero", "rank": 0}, 400, "rank"),
    (lambda: photos(3), {"name": "steps-text", "steps": "many"}, 400, "steps"),
    (lambda: photos(3), {"name": "typo", "learning_rate": 1e-4}, 400, "learning_rate"),
])
def test_bad_input_is_a_4xx_naming_the_field_and_writes_nothing(cluster, images, options, http_status, field):
    before = sorted(path.name for path in cluster.lora_dir.rglob("*"))
    status, reply = start(cluster, images(), **options)
    assert (status, reply["field"]) == (http_status, field), reply
    assert sorted(path.name for path in cluster.lora_dir.rglob("*")) == before


@pytest.mark.parametrize("error", ["RuntimeError", "error", "LZMAError"])  # encrypted; zlib.error; LZMA's
def test_an_encrypted_or_damaged_zip_is_a_400_naming_the_photos_as_a_form_and_as_json(cluster, error):
    """Each was an HTTP 500 with a traceback, which wrote the zip's member names into the replica's log."""
    archive, request_id = unreadable_zips(photos(3))[error], f"bad-zip-{uuid.uuid4()}"
    status, reply = start(cluster, [("photos.zip", archive)], name="zip-form", headers={"X-Request-ID": request_id})
    assert (status, reply["field"]) == (400, "images") and f"not a readable zip ({error})" in reply["error"]
    assert serve_log_lines(cluster, request_id, "rejected trainings call: bad images")
    assert not serve_log_lines(cluster, request_id, ".*(Traceback|Request failed| 500 |ERROR|photo-0)", timeout=2)
    body = {"images": [f"data:application/zip;base64,{base64.b64encode(archive).decode()}"], "name": "zip-json"}
    status, reply, _ = http(cluster.ports, f"{TRAINING}/v1/trainings", body)
    assert (status, reply["field"]) == (400, "images") and f"not a readable zip ({error})" in reply["error"]


def test_a_photo_part_named_slash_is_only_a_name(cluster):
    """`curl -F 'images=@a.png;filename=/'` was a 500: the name was taken for a path (ValueError from with_suffix)."""
    (_, first), *rest = photos(3)
    status, reply = start(cluster, [("/", first), *rest], name="slash-named", steps=1)
    assert status == 202, reply
    assert wait_for(cluster, reply["id"], lambda s: s["status"] not in ("queued", "running"))[-1]["status"] == \
        "succeeded"


def test_an_upload_over_the_limit_is_refused_with_413_before_it_is_read(cluster):
    head = (f"POST /{TRAINING}/v1/trainings HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: {1 << 30}\r\n\r\n--b\r\n")  # a gigabyte announced; a few bytes sent
    with socket.create_connection(("127.0.0.1", cluster.ports.http), timeout=30) as sock:
        sock.sendall(head.encode())
        head, _, answer = raw_reply(sock).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413") and json.loads(answer)["field"] == "body"


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_a_training_upload_costs_the_replica_its_bytes_not_what_its_photos_claim(cluster):
    """Six 1-bit 9000x9000 PNGs, 10 KB each, once took a replica from 990 MB to 2.9 GB: their pixels were decoded
    to RGB there and kept. Now they are refused from their headers; and an upload near SDXL_TRAIN_MAX_UPLOAD_MB
    (64 MB), photos of many megapixels included, costs the replica far under 200 MB: nothing is decoded there."""
    replica = replica_process(TRAINING)
    huge = png(Image.new("1", (9000, 9000)))
    with PeakRss(replica) as amplified:
        status, reply = start(cluster, [(f"huge-{index}.png", huge) for index in range(6)], name="amplified")
    assert (status, reply["field"]) == (400, "images")
    assert '"huge-0.png": is 9000x9000, 81 megapixels; a photo may have 40 at most' in reply["error"]
    noise = png(Image.fromarray(np.random.default_rng(3).integers(0, 256, (4000, 4000, 3), dtype=np.uint8)))
    large = [("noise.png", noise), ("wide.png", png(Image.new("1", (6300, 6300)))), *photos(2)]
    assert 45 << 20 < sum(len(data) for _, data in large) < 64 << 20
    with PeakRss(replica) as uploaded:
        status, reply = start(cluster, large, name="http-large-upload", steps=1)
    assert status == 202, reply
    assert wait_for(cluster, reply["id"], lambda s: s["status"] not in ("queued", "running"))[-1]["status"] == \
        "succeeded"
    print(f"replica RSS added: amplification case {amplified.added / 2**20:.0f} MiB, a "
          f"{sum(len(data) for _, data in large) / 2**20:.0f} MiB upload {uploaded.added / 2**20:.0f} MiB")
    assert amplified.added < 50 << 20 and uploaded.added < 200 << 20


def test_json_with_data_uris_is_taken_and_a_bad_uri_is_named(cluster):
    uris = [f"data:image/jpeg;base64,{base64.b64encode(data).decode()}" for _, data in photos(3)]
    status, reply, _ = http(cluster.ports, f"{TRAINING}/v1/trainings", {"images": [*uris[:2], "https://x/y.jpg"],
                                                                         "name": "json-bad"})
    assert (status, reply["field"]) == (400, "images[2]")
    status, reply, _ = http(cluster.ports, f"{TRAINING}/v1/trainings", {"images": uris, "name": "json-queued",
                                                                         "steps": 1, "class-word": "colour field"})
    assert status == 202 and reply["status"] == "queued", reply
    finished = wait_for(cluster, reply["id"], lambda status: status["status"] not in ("queued", "running"))[-1]
    assert finished["status"] == "succeeded", finished


def test_unknown_ids_are_404_and_the_switch_off_and_the_key_are_answered_as_elsewhere(cluster):
    assert http(cluster.ports, f"{TRAINING}/v1/trainings/{'0' * 32}", method="GET")[:2][0] == 404
    status, reply, _ = http(cluster.ports, f"{TRAINING}/v1/trainings/not-an-id/cancel", method="POST")
    assert (status, reply["field"]) == (404, "id")
    status, reply = start(cluster, photos(3), app=MODEL, name="off")
    assert (status, reply) == (404, {"error": f"path: {SWITCHED_OFF}", "field": "path"})
    assert "start it with SDXL_TRAINING=1" in SWITCHED_OFF
    status, reply = start(cluster, photos(3), app=KEYED, name="keyless")
    assert (status, reply["field"]) == (401, "authorization")
    status, reply = start(cluster, photos(3), app=KEYED, name="keyed", headers={"Authorization": f"Bearer {API_KEY}"})
    assert status == 404 and "SDXL_TRAINING=1" in reply["error"]


def test_retraining_a_name_with_overwrite_serves_the_new_adapter_and_an_operators_adapter_is_never_replaced(
        cluster, weights_dir):
    """The adapter a replica had loaded under a name was served for good, even after a retraining replaced its
    file: the same seed gave the old image, while a byte-identical copy of the new file gave the new one."""
    for seed in (1, 2):
        status, reply = start(cluster, photos(3), name="http-retrained", steps=3, seed=seed, overwrite="true")
        assert status == 202, reply
        assert wait_for(cluster, reply["id"], lambda s: s["status"] not in ("queued", "running"))[-1]["status"] == \
            "succeeded"
        if seed == 1:
            first = image_of(cluster, lora="http-retrained")  # loaded by the replica now
    shutil.copyfile(cluster.lora_dir / "http-retrained.safetensors", cluster.lora_dir / "retrained-copy.safetensors")
    retrained = image_of(cluster, lora="http-retrained")
    assert retrained != first and retrained == image_of(cluster, lora="retrained-copy")

    # An adapter the operator put in the folder: not made over HTTP, so never replaced over it.
    shutil.copyfile(weights_dir / "demo" / "loras" / f"{DEMO_STYLE}.safetensors",
                    cluster.lora_dir / "operator-style.safetensors")
    before = sorted(path.name for path in cluster.lora_dir.rglob("*"))
    status, reply = start(cluster, photos(3), name="operator-style", steps=1, overwrite="true")
    assert (status, reply["field"]) == (403, "overwrite") and "not made by a training over HTTP" in reply["error"]
    assert sorted(path.name for path in cluster.lora_dir.rglob("*")) == before


def test_an_adapter_copied_into_the_folder_is_served_by_name_without_a_restart(cluster, weights_dir):
    with pytest.raises(Exception, match="no adapter named"):
        image_of(cluster, lora="copied-style")
    staged = cluster.lora_dir / ".copied-style.tmp"
    shutil.copyfile(weights_dir / "demo" / "loras" / f"{DEMO_STYLE}.safetensors", staged)
    (cluster.lora_dir / "copied-style.json").write_text(json.dumps({"token": "ohwx"}))
    staged.rename(cluster.lora_dir / "copied-style.safetensors")  # appears whole, as a training's adapter does
    assert image_of(cluster, lora="copied-style") != image_of(cluster)
    _, listed, _ = http(cluster.ports, TRAINING, timeout=30)
    assert listed["loras"]["trigger_tokens"]["copied-style"] == "ohwx"


# The page's Train panel, in a real headless Chromium

# Records each text the panel's status line showed, for the test to read after the training.
WATCH_TRAINING = """
const line = document.getElementById("train-status");
window.seen = [];
new MutationObserver(() => seen.push(line.textContent)).observe(line, {childList: true, characterData: true});
"""

def test_the_train_panel_trains_the_chosen_photos_and_fills_the_form_to_generate_with_it(cluster, tmp_path):
    paths = []
    for name, data in photos(3):
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    browser = chromium()
    try:
        browser.get(f"http://127.0.0.1:{cluster.ports.http}/{MODEL}/ui")  # trainings off: no panel
        WebDriverWait(browser, 30).until(lambda _: by_id(browser, "generate").is_enabled())
        assert not by_id(browser, "train-panel").is_displayed()

        browser.get(f"http://127.0.0.1:{cluster.ports.http}/{TRAINING}/ui")
        WebDriverWait(browser, 30).until(lambda _: by_id(browser, "train-panel").is_displayed())
        browser.execute_script(WATCH_TRAINING)
        by_id(browser, "train-images").send_keys("\n".join(paths))
        for id_, value in {"train-token": "pgx", "train-steps": "40", "train-name": "page-subject"}.items():
            by_id(browser, id_).send_keys(value)
        by_id(browser, "train-name").send_keys(Keys.ENTER)  # the keyboard submits the form
        WebDriverWait(browser, 600).until(
            lambda _: by_id(browser, "train-status").text.startswith(("Trained", "Failed", "Cancelled", "Not")))
        assert by_id(browser, "train-status").text == "Trained page-subject: use it with the prompt “a photo of pgx " \
                                                      "person”."
        seen = browser.execute_script("return window.seen")
        assert seen[0] == "Sending the photos…" and seen[1].startswith("Queued: waiting for a CPU")
        assert any(re.fullmatch(r"Training: step \d+ of 40, loss \d+\.\d{4}", text) for text in seen), seen
        by_id(browser, "train-use").click()
        box = "input[name=lora][value='page-subject']"
        WebDriverWait(browser, 30).until(lambda _: browser.find_elements(By.CSS_SELECTOR, f"{box}:checked"))
        assert by_id(browser, "prompt").get_attribute("value") == "a photo of pgx person"
        assert "trigger word: pgx" in browser.find_element(By.CSS_SELECTOR, box).find_element(By.XPATH, "..").text
        assert console_errors(browser) == []
    finally:
        browser.quit()


def by_id(browser, id_: str):
    return browser.find_element(By.ID, id_)
