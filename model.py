"""Instill Core entry point: Stable Diffusion XL base + refiner, TASK_TEXT_TO_IMAGE.

`instill build` copies this file into the image as `_model.py`; Ray Serve deploys `_model:entrypoint`.
Settings come from SDXL_* environment variables (see README), replica bounds and resources from
the RAY_* variables Instill Core sets.
"""

import asyncio
import contextvars
import dataclasses
import logging
import os
import time
from typing import NamedTuple

from instill.helpers.ray_config import instill_deployment
from ray import serve

from stable_diffusion_xl.apis.routes import incoming
from stable_diffusion_xl.fields import InvalidRequest
from stable_diffusion_xl.generation.engine import Caller, Engine
from stable_diffusion_xl.generation.results import Cancelled, Progress
from stable_diffusion_xl.generation.schedulers import SCHEDULERS
from stable_diffusion_xl.generation.sizes import ASPECT_RATIOS, image_size
from stable_diffusion_xl.serving.hardware import deployment_options, describe, replica_device
from stable_diffusion_xl.serving.limits import SlowBodies
from stable_diffusion_xl.serving.metrics import ReplicaMetrics
from stable_diffusion_xl.serving.settings import Settings
from stable_diffusion_xl.serving.transport import GenerationCall, Parsed, StatusCall, TrainingCall
from stable_diffusion_xl.training.queue import TrainingQueue
from stable_diffusion_xl.weights.layout import WeightPaths
from stable_diffusion_xl.weights.library_logs import quiet_library_logs

quiet_library_logs()  # after the Instill SDK's import, which sets up the root logger

# Ray Serve stamps this logger's lines with the request id. No caller's text goes into a line.
log = logging.getLogger("ray.serve")


class Waiting(NamedTuple):
    """A call waiting for its engine run: what it asked, its dialect, since when, and its context, whose request id
    Ray Serve stamps on the log lines written for it."""

    caller: Caller
    api: str
    since: float
    context: contextvars.Context


@instill_deployment
class StableDiffusionXL:
    def __init__(self):
        self.settings = Settings.from_env()
        self.api_key = self.settings.http_api_key()  # before the weights: a bad key file fails the start at once
        device = replica_device(self.settings.device)  # so does a GPU that torch cannot use
        self.engine = Engine.load(
            self.settings.weights_dir, demo=self.settings.demo_weights, device=device,
            max_batch_size=self.settings.max_batch_size,
            lora_dir=self.settings.lora_dir, max_loras=self.settings.limits.max_loras,
            safety_checker=self.settings.safety_checker, safety_checker_dir=self.settings.safety_checker_dir,
            compile=self.settings.compile, compile_mode=self.settings.compile_mode,
            compile_cache=self.settings.compile_cache, quantize=self.settings.quantize,
        )
        # What a call may ask for: the settings' limits, the adapters' folder and the slow bodies this replica lets
        # arrive at once, in the slots beyond a run of calls and the next gathering.
        slow_bodies = SlowBodies(self.settings.max_ongoing_requests, kept=2 * self.settings.max_batch_size)
        self.limits = dataclasses.replace(self.settings.limits, lora_folder=self.engine.adapters.files,
                                          slow_bodies=slow_bodies)
        if self.settings.warm_up:
            started = time.perf_counter()
            self.engine.warm_up()
            log.info("warmed up every aspect ratio in %.1f s", time.perf_counter() - started)
        self.hardware = describe(device)
        self.metrics = ReplicaMetrics()
        self.run_together.set_max_batch_size(self.settings.max_batch_size)
        self.trainings = self.start_trainings() if self.settings.training else None

    async def __call__(self, request, grpc_context=None):
        call = incoming(request, grpc_context)
        if isinstance(call, StatusCall):  # Instill Core's scale-from-zero ping, a model list, the page: no key, no work
            return call.answer(self.status())
        try:
            call.authorize(self.api_key)  # a path no route takes is refused here, key or not
            if isinstance(call, TrainingCall):  # queued on the Ray cluster, never run here
                return await call.train(self.trainings, self.limits)
            parsed = await call.parse(self.limits)
        except InvalidRequest as error:
            self.metrics.reject(call.api, error)
            log.info("rejected %s call: bad %s", call.api, error.label)
            return call.reject(error)
        progress = Progress()
        return await call.respond(self.answer(call, parsed, progress), progress)

    async def answer(self, call: GenerationCall, parsed: Parsed, progress: Progress):
        try:
            waiting = Waiting(Caller(parsed.requests, progress), call.api, time.perf_counter(),
                              contextvars.copy_context())
            if self.settings.batch_calls:
                outcome = await self.run_together(waiting)
            else:
                (outcome,) = await self.run([waiting])
            # In a thread too, so pings and health checks are answered while the images are encoded.
            return await asyncio.to_thread(self.finish, call, parsed, outcome)
        except asyncio.CancelledError:
            progress.cancel()  # the caller went away (deadline, hang-up): its images stop at the next step
            raise

    async def run(self, calls: list[Waiting]) -> list:
        """One engine run for the waiting `calls`, in a thread, so that pings and health checks are answered while
        the GPU works: for each call its generations, or what ended them. A call abandoned by its caller is logged
        here, as nobody awaits its answer any more."""
        callers = [waiting.caller for waiting in calls]
        started = time.perf_counter()
        outcomes = await asyncio.to_thread(self.engine.generate_for, callers)
        self.metrics.run(sum(request.n for caller in callers for request in caller.requests),
                         [started - waiting.since for waiting in calls])
        for waiting, outcome in zip(calls, outcomes):
            if isinstance(outcome, Cancelled):
                waiting.context.run(self.abandoned, waiting.api, outcome)
        return outcomes

    def abandoned(self, api: str, stopped: Cancelled) -> None:
        self.metrics.cancel(api)
        log.info("%s call abandoned by its caller: %s", api, stopped)

    @serve.batch(max_batch_size=1, batch_wait_timeout_s=0)  # SDXL_MAX_BATCH_SIZE calls, set at start
    async def run_together(self, calls: list[Waiting]) -> list:
        """`run`, for the calls that arrived while the last run worked, taken together: an idle engine waits for
        none."""
        return await self.run(calls)

    def status(self) -> dict:
        """What a client may offer its users: the adapters, samplers and image sizes this deployment has."""
        return {"status": "ready", "model": "stable-diffusion-xl", "demo_weights": self.engine.demo, **self.hardware,
                "loras": {"available": list(self.engine.adapters.files.relist()), "loaded": self.engine.adapters.loaded,
                          "trigger_tokens": self.engine.adapters.files.trigger_tokens()},
                "schedulers": list(SCHEDULERS), "safety_checker": self.engine.safety_checker is not None,
                "sizes": {ratio: image_size(ratio, self.engine.resolution) for ratio in ASPECT_RATIOS},
                "api_key_required": self.api_key is not None,
                "training": {"enabled": self.trainings is not None, "gpus": self.settings.train_gpus}}

    def start_trainings(self) -> TrainingQueue:
        """SDXL_TRAINING=1: this application's trainings, on the weights and into the LoRA folder it serves."""
        weights = WeightPaths.locate(self.settings.weights_dir, demo=self.settings.demo_weights)
        return TrainingQueue(serve.get_replica_context().app_name, weights, self.engine.adapters.folder,
                             gpus=self.settings.train_gpus, max_trainings=self.settings.max_trainings,
                             may_overwrite=self.settings.train_overwrite, photo_limits=self.settings.limits.photos)

    def finish(self, call: GenerationCall, parsed: Parsed, outcome: list | Exception):
        """The call's answer from its run's `outcome`: its generations, or the error that ended them."""
        requests = parsed.requests
        if isinstance(outcome, Cancelled):  # logged by `run`
            raise outcome
        if isinstance(outcome, Exception):
            self.metrics.fail(call.api, outcome)
            answer = call.failure_answer(parsed, outcome)
            if answer is None:
                raise outcome
            return answer
        generations = outcome
        response = call.answer(parsed, generations, self.settings.jpeg_quality)
        self.metrics.record(call.api, [request.aspect_ratio for request in requests], generations)
        log.info("%d task inputs, %d images, seconds %s, batched with %d calls", len(requests),
                 sum(len(g.images) for g in generations),
                 [{stage: round(s, 3) for stage, s in g.timings.items()} for g in generations],
                 max(g.batch_calls for g in generations))
        return response

    def check_health(self):
        if not self.engine.healthy:
            raise RuntimeError("a device error left the engine unusable: this replica must be replaced")


def deployable(settings: Settings, env=os.environ):
    """The deployment, its resources and replica bounds from Core's RAY_* variables (serving/hardware.py).

    The weights are looked for here, where Serve builds the application, as the settings are read: a missing
    folder then fails the application with the fetch command in its DEPLOY_FAILED message, which Core shows.
    Raised in a replica's constructor, Ray's application message would only say that the deployment failed."""
    WeightPaths.locate(settings.weights_dir, demo=settings.demo_weights)
    return StableDiffusionXL.options(**deployment_options(env, settings))


entrypoint = deployable(Settings.from_env()).bind()
