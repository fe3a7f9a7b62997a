"""The training queue of an application serving trainings over HTTP (SDXL_TRAINING=1): each runs on the Ray
cluster, never inside a serving replica.

Each training is a Ray task of its own with its own resource request (SDXL_TRAIN_GPUS GPUs and one CPU; no GPU on
a cluster that has none), which Ray starts once those resources are free: until then the training is `queued`.
Its status lives in one small actor per application, the board (`TrainingBoard`, detached and named after the
application, holding no GPU): any replica finds it by name, and it outlives the replica that accepted a training
(scaled down or replaced), which is why it, not the replica, submits the task (a task dies with its submitter).
The task reports each step and loss to the board and asks it whether to stop. The board forgets all with the Ray
cluster, and keeps the last `KEEP_FINISHED` finished trainings.

Trainings are scarce and owned: at most `max_trainings` queued and running (QueueFull beyond), a training's id
(122 random bits) is the capability for its status and cancel, and `overwrite` replaces only an adapter a training
over HTTP made, when the deployment allows it. A run killed midway is resumed by the next training of its name from
the same photos and options, and its checkpoint removed after a day otherwise. The refusals are the queue's own
errors, each naming its field; the HTTP route answers each with its status code.

The replica checks what is cheap before anything is queued: the photos from their headers (sizes, count) and the
name against the LoRA folder. The task decodes the photos, once, as it trains, and the trainer checks the name again
where it starts and as it publishes, for what changed meanwhile.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import time
import uuid
from pathlib import Path

import ray

from ..fields import InvalidRequest, excerpt
from ..weights.layout import WeightPaths
from .options import TrainingOptions
from .output import adapter_path, check_name, remove_stale, stage_photos, staged_photos
from .photos import read_photos

NAMESPACE = "sdxl-trainings"
KEEP_FINISHED = 100
ACTIVE = ("queued", "running")
ORIGIN = "training over HTTP"  # what the adapter's JSON says made it: the adapters `overwrite` may replace
RETRY_AFTER_S = (5, 3600)  # the bounds of QueueFull's retry_after_s


class NameBusy(InvalidRequest):
    """A queued or running training will write an adapter of this name."""

    def __init__(self, name: str):
        super().__init__("name", f"{excerpt(name)} is being trained now; choose another name")


class OverwriteOff(InvalidRequest):
    """`overwrite` was asked for, where the deployment replaces no adapter."""

    def __init__(self, name: str):
        super().__init__("overwrite", f"replacing adapters over HTTP is off on this deployment (SDXL_TRAIN_OVERWRITE): "
                                      f"choose another name than {excerpt(name)}")


class QueueFull(InvalidRequest):
    """As many trainings are queued and running as the deployment takes."""

    def __init__(self, active: int, retry_after_s: int):
        super().__init__("trainings", f"{active} trainings are queued or running, the most this deployment takes "
                                      "(SDXL_MAX_TRAININGS); retry after one ends", retry_after_s=retry_after_s)


def one_line(error: BaseException) -> str:
    """An error as a status reports it: its first line, bounded."""
    lines = str(error).strip().splitlines()
    line = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return line if len(line) <= 300 else line[:297] + "..."


@ray.remote(max_retries=0)  # a failed training is reported, not run again
def run_training(board, training_id: str, weights: WeightPaths, lora_dir: Path, staged: Path,
                 options: TrainingOptions) -> dict:
    """The training's Ray task: the trainer on the photos staged in `staged`, reporting to `board`; what the board
    records at the end."""
    from .trainer import TrainingCancelled, train

    ray.get(board.started.remote(training_id))
    try:
        result = train(weights, lora_dir, staged_photos(staged), options,
                       on_step=lambda step, total, loss: board.step.remote(training_id, step, total, loss),
                       should_stop=lambda: ray.get(board.stopping.remote(training_id)), origin=ORIGIN,
                       only_own=True, resume_matching=True)
    except TrainingCancelled:
        return {"status": "cancelled"}
    except Exception as error:  # the reason goes to the caller who asked for the training, in one line
        return {"status": "failed", "reason": one_line(error)}
    use = {"lora": options.name, "prompt": options.caption}
    return {"status": "succeeded", "adapter": options.name, "use": use, "metadata": result.metadata}


@ray.remote(num_cpus=0)
class TrainingBoard:
    """Every training of one application: its status, and the task running it."""

    def __init__(self):
        self.trainings: dict[str, dict] = {}
        self.tasks: dict[str, ray.ObjectRef] = {}
        self.stop: set[str] = set()

    async def submit(self, training_id: str, weights: WeightPaths, lora_dir: Path, staged: Path, photos: int,
                     options: TrainingOptions, resources: dict, waiting_for: str, max_trainings: int) -> dict:
        """Queue a training, and its status; its name may not be one a queued or running training will write
        ({"refused": "busy"}), and at most `max_trainings` may be queued and running ({"refused": "full"}). The
        replica raises the refusal: an error of ours raised here would reach it wrapped in Ray's."""
        active = [t for t in self.trainings.values() if t["status"] in ACTIVE]
        if any(t["name"] == options.name for t in active):
            return {"refused": "busy"}
        if len(active) >= max_trainings:
            return {"refused": "full", "active": len(active), "retry_after_s": self._retry_after_s(active)}
        remove_stale(lora_dir, training={t["name"] for t in active}, staged={t["id"] for t in active} | {training_id})
        self.trainings[training_id] = {
            "id": training_id, "status": "queued", "name": options.name, "token": options.token,
            "reason": f"waiting for {waiting_for} on the Ray cluster", "created": time.time(), "photos": photos}
        me = ray.get_runtime_context().current_actor
        self.tasks[training_id] = run_training.options(**resources).remote(me, training_id, weights, lora_dir, staged,
                                                                            options)
        asyncio.get_running_loop().create_task(self._finish(training_id, staged))
        return self.trainings[training_id]

    async def _finish(self, training_id: str, staged: Path) -> None:
        try:
            outcome = await self.tasks[training_id]
        except ray.exceptions.TaskCancelledError:
            outcome = {"status": "cancelled"}
        except Exception as error:  # the worker died (out of memory, a lost node): Ray's error class says which
            outcome = {"status": "failed", "reason": f"the training's Ray task ended ({type(error).__name__})"}
        shutil.rmtree(staged, ignore_errors=True)  # however the task ended, or if it never ran (cancelled queued)
        self.tasks.pop(training_id, None)
        self.stop.discard(training_id)
        training = self.trainings[training_id]
        training.pop("reason", None)
        training.update(outcome, finished=time.time())
        finished = [key for key, t in self.trainings.items() if t["status"] not in ACTIVE]
        for key in finished[:-KEEP_FINISHED]:
            del self.trainings[key]

    @staticmethod
    def _retry_after_s(active: list[dict]) -> int:
        """When the first of the running trainings should end, at the pace of its steps so far."""
        now, ends = time.time(), []
        for training in active:
            if training["status"] == "running" and training.get("step") and training.get("total"):
                pace = (now - training["started"]) / training["step"]
                ends.append(pace * (training["total"] - training["step"]))
        return int(min(max(min(ends, default=60), RETRY_AFTER_S[0]), RETRY_AFTER_S[1]))

    async def started(self, training_id: str) -> None:
        training = self.trainings[training_id]
        training.update(status="running", step=0, total=None, loss=None, started=time.time())
        training.pop("reason", None)

    async def step(self, training_id: str, step: int, total: int, loss: float) -> None:
        if training_id in self.trainings:  # a board Ray restarted knows none of the trainings before
            self.trainings[training_id].update(step=step, total=total, loss=loss)

    async def stopping(self, training_id: str) -> bool:
        return training_id in self.stop

    async def status(self, training_id: str) -> dict | None:
        return self.trainings.get(training_id)

    async def cancel(self, training_id: str) -> dict | None:
        """Stop a training: a queued one is taken off Ray's queue, a running one stops at its next step."""
        training = self.trainings.get(training_id)
        if training is None or training["status"] not in ACTIVE:
            return training
        self.stop.add(training_id)
        if training["status"] == "queued":
            ray.cancel(self.tasks[training_id])
        return {**training, "cancelling": True}


class TrainingQueue:
    """A replica's side of the trainings: checks one before it is queued, and asks the board about them."""

    def __init__(self, application: str, weights: WeightPaths, lora_dir: Path, *, gpus: int, max_trainings: int,
                 may_overwrite: bool, photo_limits: dict):
        """`gpus` each training asks Ray for; `may_overwrite`: a training may replace an adapter a training over
        HTTP made; `photo_limits` are read_photos' limits for the photos of one."""
        self.weights, self.lora_dir, self.gpus = weights, lora_dir, gpus
        self.max_trainings, self.may_overwrite, self.photo_limits = max_trainings, may_overwrite, photo_limits
        # Restarted by Ray if its process dies (its statuses are lost then; the adapters stay in the folder).
        self.board = TrainingBoard.options(name=f"board:{application}", namespace=NAMESPACE, lifetime="detached",
                                           get_if_exists=True, max_restarts=-1).remote()

    def resources(self) -> tuple[dict, str]:
        """What a training asks of Ray, and how its queued status says so. A cluster without any GPU trains on a CPU
        (slowly: the demo weights, the tests)."""
        if self.gpus and ray.cluster_resources().get("GPU", 0) > 0:
            return {"num_cpus": 1, "num_gpus": self.gpus}, f"{self.gpus} GPU{'s' if self.gpus > 1 else ''}"
        why = "SDXL_TRAIN_GPUS=0" if not self.gpus else "this cluster has no GPU"
        return {"num_cpus": 1, "num_gpus": 0}, f"a CPU ({why})"

    async def start(self, uploads: list[tuple[str, bytes]], options: TrainingOptions) -> dict:
        """Queue a training of the uploaded (filename, bytes) pairs, and its status. PhotoError, NameTaken,
        NotMadeHere, OverwriteOff, NameBusy or QueueFull say why not, and then nothing is queued or written."""
        photos = await asyncio.to_thread(read_photos, uploads, **self.photo_limits)
        if options.overwrite and not self.may_overwrite:
            if adapter_path(self.lora_dir, options.name).exists():
                raise OverwriteOff(options.name)
            options = dataclasses.replace(options, overwrite=False)  # nor one that appears before it publishes
        check_name(self.lora_dir, options.name, overwrite=options.overwrite, only_origin=ORIGIN)
        resources, waiting_for = self.resources()
        training_id = uuid.uuid4().hex
        staged = await asyncio.to_thread(stage_photos, self.lora_dir, training_id, photos)
        try:
            status = await self.board.submit.remote(training_id, self.weights, self.lora_dir, staged, len(photos),
                                                    options, resources, waiting_for, self.max_trainings)
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        if "refused" in status:
            shutil.rmtree(staged, ignore_errors=True)
            if status["refused"] == "busy":
                raise NameBusy(options.name)
            raise QueueFull(status["active"], status["retry_after_s"])
        return status

    async def status(self, training_id: str) -> dict | None:
        return await self.board.status.remote(training_id)

    async def cancel(self, training_id: str) -> dict | None:
        return await self.board.cancel.remote(training_id)
