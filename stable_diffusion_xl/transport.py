"""What every call is, whatever it came in on: parse, answer and reject in the caller's own dialect.

The model's `__call__` asks `routes.incoming` once which `Call` it has. Below that nothing tells gRPC
from HTTP; each dialect (Instill over gRPC, Instill over HTTP, and the peer APIs after it) is a small
`Call` subclass: its wire format in, `TextToImageRequest`s to the engine, its wire format out.
"""

from __future__ import annotations

import asyncio
import json

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse

from .engine import Generation
from .request import InvalidRequest, TextToImageRequest
from .settings import Limits


class Call:
    """One call in one dialect. `answer` runs in a worker thread, with the generation, because it
    encodes the images."""

    api = "unknown"  # the dialect's name in metrics and logs
    is_status = False  # a status ping: answered at once, with no work

    async def requests(self, limits: Limits) -> list[TextToImageRequest]:
        raise NotImplementedError

    def answer(self, requests: list[TextToImageRequest], generations: list[Generation], jpeg_quality: int):
        raise NotImplementedError

    def reject(self, error: InvalidRequest):
        raise NotImplementedError

    def status(self, status: dict):
        raise NotImplementedError


class HttpCall(Call):
    """An HTTP request to the application's route prefix."""

    def __init__(self, request: Request):
        self.request = request

    async def json_body(self, limits: Limits):
        """The body as JSON; a body over the size limit is refused before it is read whole, and one that does not
        arrive in time is refused (it would hold one of the replica's few call slots)."""
        try:
            body = await asyncio.wait_for(read_body(self.request, limits.max_body_bytes), limits.body_timeout_s)
        except TimeoutError:
            raise InvalidRequest("body", f"did not arrive within {limits.body_timeout_s} s", http_status=408) from None
        except ClientDisconnect:  # nobody reads this answer; it keeps a hang-up out of the error logs
            raise InvalidRequest("body", "the client hung up before sending it whole") from None
        try:
            return json.loads(body)
        except RecursionError:
            raise InvalidRequest("body", "is nested too deeply to be a request") from None
        except json.JSONDecodeError as error:
            raise InvalidRequest("body", f"must be JSON ({error.msg} at character {error.pos})") from None
        except ValueError:  # not UTF-8, or an integer too long to read
            raise InvalidRequest("body", "must be JSON in UTF-8") from None

    def reject(self, error: InvalidRequest):
        return JSONResponse({"error": str(error), "field": error.field}, status_code=error.http_status)

    def status(self, status: dict):
        return JSONResponse(status)


class StatusPing(HttpCall):
    """A GET (or HEAD) of the route: Instill Core's scale-from-zero ping."""

    api, is_status = "status", True


class Refused(HttpCall):
    """A request no route takes: an unknown path (404) or a method the path does not allow (405)."""

    api = "http"

    def __init__(self, request: Request, error: InvalidRequest, allow: str | None = None):
        super().__init__(request)
        self.error, self.allow = error, allow

    async def requests(self, limits: Limits) -> list[TextToImageRequest]:
        raise self.error

    def reject(self, error: InvalidRequest):
        response = super().reject(error)
        if self.allow:
            response.headers["Allow"] = self.allow
        return response


async def read_body(request: Request, limit: int) -> bytes:
    """At most `limit` bytes of body: a larger declared length is refused unread, a longer stream midway."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large(limit)
    return bytes(body)


def too_large(limit: int) -> InvalidRequest:
    return InvalidRequest("body", f"is larger than this deployment's limit of {limit} bytes", http_status=413)


def route_path(request: Request) -> str:
    """The path below the application's route prefix: "/" for the prefix itself."""
    root, path = request.scope.get("root_path", "").rstrip("/"), request.url.path
    if root and (path == root or path.startswith(root + "/")):
        path = path[len(root):]
    return "/" + path.strip("/")
