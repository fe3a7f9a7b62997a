"""Instill Core entry point: Stable Diffusion XL base + refiner, TASK_TEXT_TO_IMAGE.

`instill build` copies this file into the image as `_model.py`; Ray Serve deploys `_model:entrypoint`.
Settings come from SDXL_* environment variables (see README), replica bounds and resources from
the RAY_* variables Instill Core sets.
"""

import asyncio

import grpc
from instill.helpers.ray_config import InstillDeployable, instill_deployment
from starlette.responses import JSONResponse

from stable_diffusion_xl.engine import Engine
from stable_diffusion_xl.instill_io import build_output, parse_call
from stable_diffusion_xl.request import InvalidRequest
from stable_diffusion_xl.settings import Settings


@instill_deployment
class StableDiffusionXL:
    def __init__(self):
        self.settings = Settings.from_env()
        self.engine = Engine.load(
            self.settings.weights_dir, demo=self.settings.demo_weights, max_batch_size=self.settings.max_batch_size
        )

    async def __call__(self, call, grpc_context=None):
        if getattr(call, "method", None) == "GET":  # Instill Core's scale-from-zero ping: no body, no work
            return {"status": "ready", "model": "stable-diffusion-xl", "demo_weights": self.engine.demo}
        try:
            requests = await parse_call(call)
            self.settings.limits.check(requests)
        except InvalidRequest as error:
            return reject(error, grpc_context)
        # In a thread, so pings and health checks are answered while the GPU works.
        generations = await asyncio.to_thread(self.engine.generate, requests)
        return build_output(call, requests, generations, self.settings.jpeg_quality)


def reject(error: InvalidRequest, grpc_context):
    if grpc_context is None:
        return JSONResponse({"error": str(error), "field": error.field}, status_code=400)
    grpc_context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
    grpc_context.set_details(str(error))
    return CallResponse()


from instill.protogen.model.ray.v1alpha.user_defined_pb2 import CallResponse  # noqa: E402

entrypoint = InstillDeployable(StableDiffusionXL).get_deployment_handle()
