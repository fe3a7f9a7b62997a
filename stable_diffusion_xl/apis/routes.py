"""Which `Call` a request to the application is: decided once, at the top of the model's `__call__`.

Ray Serve calls the deployment with a gRPC request and its context, or with an HTTP request alone.
HTTP paths are read below the application's route prefix (`/` with `serve` and `instill run`).
"""

from __future__ import annotations

from starlette.requests import Request

from ..generation.request import InvalidRequest, excerpt
from ..serving.transport import Call, Refused, StatusPing, route_path
from .azure_ml import AzureScore
from .cog_predictions import CogHealth, CogPrediction
from .instill import InstillGrpc, InstillHttp
from .openai_edits import OpenAIEdits
from .openai_images import OpenAIImages, OpenAIModels
from .page import PAGE_FILES, PageFile
from .plain_predict import PlainPredict

# path -> {method: dialect}; a GET of the route itself is the status ping Instill Core sends.
HTTP_ROUTES = {
    "/": {"POST": InstillHttp, "GET": StatusPing, "HEAD": StatusPing},
    "/v1/images/generations": {"POST": OpenAIImages},
    "/v1/images/edits": {"POST": OpenAIEdits},
    "/v1/models": {"GET": OpenAIModels},
    "/score": {"POST": AzureScore},
    "/predictions": {"POST": CogPrediction},
    "/health-check": {"GET": CogHealth},
    "/predict": {"POST": PlainPredict},
    **{path: {"GET": PageFile, "HEAD": PageFile} for path in PAGE_FILES},
}


def incoming(call, grpc_context=None) -> Call:
    if grpc_context is not None:
        return InstillGrpc(call, grpc_context)
    return http_route(call)


def http_route(request: Request) -> Call:
    path = route_path(request)
    methods = HTTP_ROUTES.get(path)
    if methods is None:
        known = ", ".join(HTTP_ROUTES)
        return Refused(request, InvalidRequest("path", f"{excerpt(path)} is not served here; paths: {known}", 404))
    dialect = methods.get(request.method)
    if dialect is None:
        allow = ", ".join(methods)
        error = InvalidRequest("method", f"{excerpt(request.method)} is not allowed on {path}; use {allow}", 405)
        return Refused(request, error, allow)
    return dialect(request)
