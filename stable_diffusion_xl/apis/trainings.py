"""Trainings over HTTP (SDXL_TRAINING=1): a LoRA adapter from a few photos, trained on the Ray cluster.

    POST <prefix>/v1/trainings              photos and options -> 202 {"id", "status": "queued", ...}
    GET  <prefix>/v1/trainings/<id>         queued (and why), running (step, total, loss), succeeded, failed, cancelled
    POST <prefix>/v1/trainings/<id>/cancel  stops it

The photos come as a multipart form (`images` files, repeatable, or one zip; the options as form fields) or as JSON
({"images": [data URIs], "name": ..., ...}). Options are TrainingOptions' fields by their wire names
(`learning-rate`). Errors are {"error", "field"}, as the plain and Instill HTTP routes answer them; the queue's
refusals are answered with their status codes here (REFUSALS). The training itself runs on the Ray cluster
(training/queue.py), never in this replica.
"""

from __future__ import annotations

import dataclasses
import json
import re

from starlette.responses import JSONResponse

from ..fields import KNOWN_FIELDS, InvalidRequest, excerpt, spec_of, unknown_key, wire_name
from ..generation.pictures import decode_base64
from ..serving.limits import Limits
from ..serving.transport import HttpCall, TrainingCall, Upload, read_body
from ..training.options import TrainingOptions, from_fields
from ..training.output import NameTaken, NotMadeHere
from ..training.photos import MAX_FILES, PhotoError
from ..training.queue import NameBusy, OverwriteOff, QueueFull, TrainingQueue

# What a caller may set, by wire name: every option but the checkpoints' (kept on the trainer's own machine) and
# the workers (a training here is one Ray task with SDXL_TRAIN_GPUS GPUs; the `train` command spreads one wider).
OPTIONS = {wire_name(spec): spec for spec in dataclasses.fields(TrainingOptions)
           if spec.name not in ("resume", "checkpoint_every", "workers")}
FIELDS = ["images", *OPTIONS]
KNOWN_FIELDS.update(FIELDS, ["id", "trainings"])
UPLOAD_SETTING = "SDXL_TRAIN_MAX_UPLOAD_MB"
UPLOAD_TIME_FACTOR = 10  # photos take longer to arrive than a prompt: this many times SDXL_BODY_TIMEOUT_S
TRAINING_ID = re.compile(r"[0-9a-f]{32}")
SWITCHED_OFF = ("trainings are off on this deployment: start it with SDXL_TRAINING=1 to serve "
                "/v1/trainings")
# The queue's refusals, by the HTTP status each is answered with.
REFUSALS = {NameTaken: 409, NameBusy: 409, NotMadeHere: 403, OverwriteOff: 403, QueueFull: 429}


class TrainingRoute(HttpCall, TrainingCall):
    api = "trainings"

    async def train(self, trainings: TrainingQueue | None, limits: Limits) -> JSONResponse:
        if trainings is None:
            raise InvalidRequest("path", SWITCHED_OFF, http_status=404)
        return await self.act(trainings, limits)

    async def act(self, trainings: TrainingQueue, limits: Limits) -> JSONResponse:
        raise NotImplementedError

    def training_id(self) -> str:
        training_id = self.request.path_params["id"]
        if not TRAINING_ID.fullmatch(training_id):
            raise InvalidRequest("id", f"{excerpt(training_id)} is not a training's id", http_status=404)
        return training_id

    def answer_status(self, status: dict | None, training_id: str, http_status: int = 200) -> JSONResponse:
        if status is None:
            raise InvalidRequest("id", f"no training {training_id} on this deployment (finished ones are forgotten "
                                       "after a while, and all when the Ray cluster restarts)", http_status=404)
        return JSONResponse(status, status_code=http_status)


class StartTraining(TrainingRoute):
    """`POST /v1/trainings`: the photos and options; 202 with the queued training once it is checked."""

    title = "start a training (SDXL_TRAINING=1)"

    async def act(self, trainings: TrainingQueue, limits: Limits) -> JSONResponse:
        limit, timeout = limits.max_training_upload_mb << 20, limits.body_timeout_s * UPLOAD_TIME_FACTOR
        if self.is_form():
            photos, fields = form_fields(await self.form_body(limits, limit, UPLOAD_SETTING, max_files=MAX_FILES,
                                                              timeout_s=timeout))
        else:
            photos, fields = json_fields(await self.arriving(read_body(self.request, limit), limits, timeout))
        unknown = sorted(set(fields) - set(OPTIONS))
        if unknown:
            raise unknown_key(unknown[0], FIELDS, kind="field")
        try:
            status = await trainings.start(photos, from_fields(fields))
        except PhotoError as error:
            raise InvalidRequest("images", str(error)) from None
        except tuple(REFUSALS) as error:
            raise InvalidRequest(error.field, error.reason, REFUSALS[type(error)], error.retry_after_s) from None
        return self.answer_status(status, status["id"], 202)


class TrainingStatus(TrainingRoute):
    """`GET /v1/trainings/<id>`."""

    title = "a training's status"

    async def act(self, trainings: TrainingQueue, limits: Limits) -> JSONResponse:
        training_id = self.training_id()
        return self.answer_status(await trainings.status(training_id), training_id)


class CancelTraining(TrainingRoute):
    """`POST /v1/trainings/<id>/cancel`: a queued training is cancelled at once, a running one at its next step."""

    title = "cancel a training"

    async def act(self, trainings: TrainingQueue, limits: Limits) -> JSONResponse:
        training_id = self.training_id()
        return self.answer_status(await trainings.cancel(training_id), training_id)


def form_fields(parts: list[tuple[str, str | Upload]]) -> tuple[list[tuple[str, bytes]], dict]:
    """A multipart form's `images` files and its other fields, read as TrainingOptions' kinds."""
    photos, fields = [], {}
    for name, value in parts:
        if name == "images":
            if not isinstance(value, Upload):
                raise InvalidRequest("images", "must be files (form parts with a filename), not text")
            photos.append((value.filename or f"photo-{len(photos)}", value.data))
        elif isinstance(value, Upload):
            raise InvalidRequest(name if name in OPTIONS else "body", "is a file; only `images` are uploads")
        elif name in OPTIONS:
            fields[name] = spec_of(OPTIONS[name]).from_text(value.strip())  # text of no kind stays, for the check
        else:
            fields[name] = None  # an unknown field, named by the caller's check
    return photos, fields


def json_fields(body: bytes) -> tuple[list[tuple[str, bytes]], dict]:
    """{"images": [data URIs], ...options}."""
    try:
        fields = json.loads(body)
    except (ValueError, RecursionError):
        raise InvalidRequest("body", "must be JSON ({\"images\": [data URIs], \"name\": ...}) or a multipart "
                                     "form") from None
    if not isinstance(fields, dict):
        raise InvalidRequest("body", f"must be a JSON object, got {excerpt(fields)}")
    images = fields.pop("images", None)
    if not isinstance(images, list):
        raise InvalidRequest("images", f"must be a list of data URIs, got {excerpt(images)}")
    photos = []
    for index, uri in enumerate(images):
        if not (isinstance(uri, str) and uri[:5].lower() == "data:"):
            raise InvalidRequest(f"images[{index}]", f"must be a base64 data URI, got {excerpt(uri)}")
        media_type, data = decode_base64(uri, f"images[{index}]")  # the body's limit bounds it
        kind = (media_type or "").rpartition("/")[2].lower()  # the photo's name says its format, as a file's would
        photos.append((f"photo-{index}.{kind}" if kind else f"photo-{index}", data))
    return photos, fields
