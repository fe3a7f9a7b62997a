"""Instill Core entry point: Stable Diffusion XL base + refiner, TASK_TEXT_TO_IMAGE.

`instill build` copies this file into the image as `_model.py`; Ray Serve deploys `_model:entrypoint`.
Settings come from SDXL_* environment variables (see README), replica bounds and resources from
the RAY_* variables Instill Core sets.
"""

import asyncio
import logging
import time

import grpc
from instill.helpers.ray_config import InstillDeployable, instill_deployment
from instill.protogen.model.ray.v1alpha.user_defined_pb2 import CallResponse
from starlette.responses import JSONResponse

from stable_diffusion_xl.engine import Engine
from stable_diffusion_xl.instill_io import build_output, parse_call
from stable_diffusion_xl.metrics import ReplicaMetrics
from stable_diffusion_xl.request import InvalidRequest
from stable_diffusion_xl.settings import Settings

# Ray Serve stamps this logger's lines with the request id. Prompts stay out of the logs.
log = logging.getLogger("ray.serve")


@instill_deployment
class StableDiffusionXL:
    def __init__(self):
        self.settings = Settings.from_env()
        self.engine = Engine.load(
            self.settings.weights_dir, demo=self.settings.demo_weights, max_batch_size=self.settings.max_batch_size
        )
        if self.settings.warm_up:
            started = time.perf_counter()
            self.engine.warm_up()
            log.info("warmed up every aspect ratio in %.1f s", time.perf_counter() - started)
        self.metrics = ReplicaMetrics()

    async def __call__(self, call, grpc_context=None):
        if getattr(call, "method", None) == "GET":  # Instill Core's scale-from-zero ping: no body, no work
            return {"status": "ready", "model": "stable-diffusion-xl", "demo_weights": self.engine.demo}
        try:
            requests = await parse_call(call)
            self.settings.limits.check(requests)
        except InvalidRequest as error:
            self.metrics.reject(error)
            log.info("rejected: %s", error.field)
            return reject(error, grpc_context)
        try:
            # In a thread, so pings and health checks are answered while the GPU works.
            generations = await asyncio.to_thread(self.engine.generate, requests)
        except Exception as error:
            self.metrics.fail(error)
            raise
        response = build_output(call, requests, generations, self.settings.jpeg_quality)
        self.metrics.record([request.aspect_ratio for request in requests], generations)
        log.info("%d task inputs, %d images, seconds %s", len(requests), sum(len(g.images) for g in generations),
                 [{stage: round(s, 3) for stage, s in g.timings.items()} for g in generations])
        return response

    def check_health(self):
        if not self.engine.healthy:
            raise RuntimeError("a device error left the engine unusable: this replica must be replaced")


def reject(error: InvalidRequest, grpc_context):
    if grpc_context is None:
        return JSONResponse({"error": str(error), "field": error.field}, status_code=400)
    grpc_context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
    grpc_context.set_details(str(error))
    return CallResponse()


def deployable(settings: Settings) -> InstillDeployable:
    """Instill's deployment (replicas and resources from RAY_*), with SDXL's queueing on top."""
    deployment = InstillDeployable(StableDiffusionXL.options(
        max_ongoing_requests=settings.max_ongoing_requests, max_queued_requests=settings.max_queued_requests,
    ))
    deployment._update_target_ongoing_requests(settings.target_ongoing_requests)
    deployment._update_upscale_delay(settings.upscale_delay_s)
    return deployment


entrypoint = deployable(Settings.from_env()).get_deployment_handle()
