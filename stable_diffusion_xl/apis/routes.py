"""Which `Call` a request to the application is: decided once, at the top of the model's `__call__`.

Ray Serve calls the deployment with a gRPC request and its context, or with an HTTP request alone.
HTTP paths are read below the application's route prefix (`/` with `serve` and `instill run`). A path is looked up
as it is, then against the paths with an `{id}` segment, whose value the dialect reads as `request.path_params`.
"""

from __future__ import annotations

import re

from starlette.requests import Request

from ..fields import InvalidRequest, excerpt
from ..serving.transport import Call, Refused, StatusPing, route_path
from .azure_ml import AzureScore
from .cog_predictions import CogHealth, CogPrediction
from .instill import InstillGrpc, InstillHttp
from .openai_edits import OpenAIEdits
from .openai_images import OpenAIImages, OpenAIModels
from .page import PAGE_FILES, PageFile
from .plain_predict import PlainPredict
from .trainings import CancelTraining, StartTraining, TrainingStatus

# path -> {method: dialect}; a GET of the route itself is the status ping Instill Core sends. The one list of what is
# served: `serve` prints it and docs/apis.md shows it (served_routes).
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
    "/v1/trainings": {"POST": StartTraining},
    "/v1/trainings/{id}": {"GET": TrainingStatus},
    "/v1/trainings/{id}/cancel": {"POST": CancelTraining},
}
# The paths with an {id} segment: one path segment, matched whole.
TEMPLATES = {re.compile(re.escape(path).replace(re.escape("{id}"), "(?P<id>[^/]+)")): path
             for path in HTTP_ROUTES if "{id}" in path}


def served_routes() -> list[tuple[str, str, str]]:
    """(method, path, title) for each dialect each path serves, its first method only (GET, not HEAD too), and the
    page at its first path only (not each of its files)."""
    routes, seen = [], set()
    for path, methods in HTTP_ROUTES.items():
        for method, dialect in methods.items():
            if dialect not in seen:
                seen.add(dialect)
                routes.append((method, path, dialect.title))
    return routes


def incoming(call, grpc_context=None) -> Call:
    if grpc_context is not None:
        return InstillGrpc(call, grpc_context)
    return http_route(call)


def http_route(request: Request) -> Call:
    path = route_path(request)
    methods = HTTP_ROUTES.get(path)
    for template, route in TEMPLATES.items():
        if methods is None and (found := template.fullmatch(path)):
            methods = HTTP_ROUTES[route]
            request.scope["path_params"] = found.groupdict()
    if methods is None:
        known = ", ".join(HTTP_ROUTES)
        return Refused(request, InvalidRequest("path", f"{excerpt(path)} is not served here; paths: {known}", 404))
    dialect = methods.get(request.method)
    if dialect is None:
        allow = ", ".join(methods)
        error = InvalidRequest("method", f"{excerpt(request.method)} is not allowed on {path}; use {allow}", 405)
        return Refused(request, error, allow)
    return dialect(request)
