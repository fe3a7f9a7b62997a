"""What every call is, whatever it came in on: parse, answer and reject in the caller's own dialect.

The model's `__call__` asks `routes.incoming` once which `Call` it has, and answers it by its kind: a status, a
training or a generation. Below that nothing tells gRPC from HTTP; each dialect (Instill over gRPC and HTTP, the
peer APIs, the web page) is a small class of one kind: its wire format in, `TextToImageRequest`s to the engine,
its wire format out.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import AsyncIterator, Coroutine
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any, NamedTuple

from python_multipart.exceptions import FormParserError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..fields import InvalidRequest, excerpt
from ..generation.request import TextToImageRequest
from ..generation.results import Generation, Progress
from .limits import SLOW_BODY_S, Limits

if TYPE_CHECKING:
    from ..training.queue import TrainingQueue

PROGRESS_INTERVAL_S = 0.25  # how often a streaming call reports the steps done
# A form holds a picture or two (image, mask) and the request's fields, each field a short text.
MAX_FORM_FILES, MAX_FORM_FIELDS, MAX_FORM_FIELD_BYTES = 4, 64, 64 << 10


class Upload(NamedTuple):
    """A file of a multipart form: the name the client gave it, and its bytes."""

    filename: str
    data: bytes


class Parsed(NamedTuple):
    """What a generation call asks for: the engine's requests, and how the dialect is to answer them (its own
    fields, such as OpenAI's response_format or cog's prediction id; None when it has none)."""

    requests: list[TextToImageRequest]
    options: Any = None


class Call:
    """One call in one dialect: who may make it and how a refusal is answered. Each call is of one kind,
    `StatusCall`, `TrainingCall` or `GenerationCall`, which says how the model answers it."""

    api = "unknown"  # the dialect's name in metrics and logs
    title = ""  # what a route of this dialect is, as the `serve` command and docs/apis.md list the routes

    def authorize(self, api_key: str | None) -> None:
        """Refuse the call unless it carries `api_key` (when one is set)."""

    def reject(self, error: InvalidRequest):
        raise NotImplementedError


class StatusCall(Call):
    """Answered at once from the model's status, with no key and no work: pings, model lists, the page."""

    def answer(self, status: dict):
        raise NotImplementedError


class TrainingCall(Call):
    """A training's start, status or cancel: queued on the Ray cluster, never run in the replica."""

    async def train(self, trainings: TrainingQueue | None, limits: Limits):
        """The answer, from the deployment's trainings (None: SDXL_TRAINING is off)."""
        raise NotImplementedError


class GenerationCall(Call):
    """Images made by the engine. `answer` runs in a worker thread, with the generation, because it encodes the
    images."""

    async def parse(self, limits: Limits) -> Parsed:
        raise NotImplementedError

    def answer(self, parsed: Parsed, generations: list[Generation], jpeg_quality: int):
        raise NotImplementedError

    def failure_answer(self, parsed: Parsed, error: Exception):
        """The dialect's answer to a generation that failed, or None to let the server report the failure."""
        return None

    async def respond(self, answering: Coroutine, progress: Progress):
        """The answer as the caller takes it: `answering` makes it (streaming HTTP calls report `progress` too)."""
        return await answering


class HttpCall(Call):
    """An HTTP request to the application's route prefix. Dialects shape their errors with `error_body`
    (and `error_status` where theirs differ from the error's own)."""

    def __init__(self, request: Request):
        self.request = request

    def authorize(self, api_key: str | None) -> None:
        problem = key_problem(self.request.headers.get("authorization", ""), api_key)
        if problem:
            raise InvalidRequest("authorization", f"{problem}; send it as `Authorization: Bearer <key>`",
                                 http_status=401)

    async def json_body(self, limits: Limits, pictures: bool = False):
        """The body as JSON; a body over the size limit (larger where the route takes `pictures`) is refused before
        it is read whole, and one that does not arrive in time is refused (it would hold one of the replica's few
        call slots)."""
        body = await self.arriving(read_body(self.request, limits.body_bytes(pictures)), limits)
        try:
            return json.loads(body)
        except RecursionError:
            raise InvalidRequest("body", "is nested too deeply to be a request") from None
        except json.JSONDecodeError as error:
            raise InvalidRequest("body", f"must be JSON ({error.msg} at character {error.pos})") from None
        except ValueError:  # not UTF-8, or an integer too long to read
            raise InvalidRequest("body", "must be JSON in UTF-8") from None

    async def form_body(self, limits: Limits, limit: int, setting: str, max_files: int = MAX_FORM_FILES,
                        timeout_s: float | None = None) -> list[tuple[str, str | Upload]]:
        """A multipart/form-data body (the OpenAI SDKs' uploads, an HTML form's files) as (name, text or Upload)
        pairs in the order sent. Over `limit` bytes (named by its `setting`) it is refused unread when its length
        is declared, and midway otherwise; it must arrive as `arriving` says."""
        if not self.is_form():
            media_type = self.request.headers.get("content-type", "").partition(";")[0].strip()
            raise InvalidRequest("body", f"must be multipart/form-data, as the OpenAI SDKs send it; got "
                                         f"{excerpt(media_type) if media_type else 'no Content-Type'}")
        refusal = InvalidRequest("body", f"is larger than this deployment's upload limit of {limit} bytes ({setting})",
                                 http_status=413)
        return await self.arriving(self._read_form(body_stream(self.request, limit, refusal), max_files), limits,
                                   timeout_s)

    async def arriving(self, reading: Coroutine, limits: Limits, timeout_s: float | None = None):
        """What `reading` makes of the body, refused when the body does not arrive within `timeout_s` (default
        SDXL_BODY_TIMEOUT_S: it holds one of the replica's few call slots) or the client hangs up. A body still
        arriving after SLOW_BODY_S goes on only while the replica has a slot to spare for it (SlowBodies)."""
        timeout_s = timeout_s or limits.body_timeout_s
        reading = asyncio.ensure_future(reading)
        try:
            try:
                return await asyncio.wait_for(asyncio.shield(reading), min(SLOW_BODY_S, timeout_s))
            except TimeoutError:
                if timeout_s <= SLOW_BODY_S:
                    raise
            slow = limits.slow_bodies.admit(retry_after_s=int(timeout_s)) if limits.slow_bodies else nullcontext()
            with slow:
                return await asyncio.wait_for(reading, timeout_s - SLOW_BODY_S)
        except TimeoutError:
            raise InvalidRequest("body", f"did not arrive within {timeout_s:g} s", http_status=408) from None
        except ClientDisconnect:  # nobody reads this answer; it keeps a hang-up out of the error logs
            raise InvalidRequest("body", "the client hung up before sending it whole") from None
        finally:
            reading.cancel()  # a refused body is read no further

    def is_form(self) -> bool:
        media_type = self.request.headers.get("content-type", "").partition(";")[0].strip().lower()
        return media_type == "multipart/form-data"

    async def _read_form(self, stream: AsyncIterator[bytes], max_files: int) -> list[tuple[str, str | Upload]]:
        parser = MultiPartParser(self.request.headers, stream, max_files=max_files, max_fields=MAX_FORM_FIELDS,
                                 max_part_size=MAX_FORM_FIELD_BYTES)
        try:
            form = await parser.parse()
        except MultiPartException as error:  # starlette's own limits, in its fixed words
            raise InvalidRequest("body", f"is refused: {error.message}") from None
        except FormParserError:
            raise InvalidRequest("body", "is not well-formed multipart/form-data") from None
        try:
            return [(name, Upload(value.filename or "", await value.read()) if isinstance(value, UploadFile) else value)
                    for name, value in form.multi_items()]
        finally:
            await form.close()

    def error_body(self, error: InvalidRequest):
        return {"error": str(error), "field": error.field}

    def error_status(self, error: InvalidRequest) -> int:
        return error.http_status

    def reject(self, error: InvalidRequest) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if error.http_status == 401 else {}
        if error.retry_after_s is not None:
            headers["Retry-After"] = str(error.retry_after_s)
        return JSONResponse(self.error_body(error), status_code=self.error_status(error), headers=headers)


class HttpGeneration(HttpCall, GenerationCall):
    """A generation over HTTP; a caller who accepts text/event-stream gets progress events first."""

    async def respond(self, answering: Coroutine, progress: Progress):
        if "text/event-stream" not in self.request.headers.get("accept", ""):
            return await answering
        # Server-sent events: `progress` as the steps are done, then `result` with the body `answering` makes.
        return StreamingResponse(progress_events(answering, progress), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store"})


class StatusPing(HttpCall, StatusCall):
    """A GET (or HEAD) of the route: Instill Core's scale-from-zero ping, and what a client may offer its users."""

    api = "status"
    title = "status: adapters, samplers, sizes"

    def answer(self, status: dict) -> JSONResponse:
        return JSONResponse(status)


class Refused(HttpCall):
    """A request no route takes: an unknown path (404) or a method the path does not allow (405). Of no kind: its
    `authorize` refuses it, key or not (nothing is served here to protect; the caller learns the route is wrong)."""

    api = "http"

    def __init__(self, request: Request, error: InvalidRequest, allow: str | None = None):
        super().__init__(request)
        self.error, self.allow = error, allow

    def authorize(self, api_key: str | None) -> None:
        raise self.error

    def reject(self, error: InvalidRequest):
        response = super().reject(error)
        if self.allow:
            response.headers["Allow"] = self.allow
        return response


def key_problem(sent: str, api_key: str | None) -> str | None:
    """What is wrong with an `authorization` value where `api_key` is required (None: nothing, or no key is
    set). The scheme is case-insensitive (RFC 7235), the key compared as it arrived, in constant time."""
    if api_key is None:
        return None
    scheme, _, credentials = sent.strip().partition(" ")
    if not sent:
        return "this deployment needs its API key"
    if scheme.lower() != "bearer":
        return "the scheme is missing or not Bearer"
    if not hmac.compare_digest(credentials.strip().encode("latin-1", "replace"), api_key.encode()):
        return "the key sent is not this deployment's API key"
    return None


async def read_body(request: Request, limit: int) -> bytes:
    """At most `limit` bytes of body: a larger declared length is refused unread, a longer stream midway."""
    return b"".join([chunk async for chunk in body_stream(request, limit, too_large(limit))])


def too_large(limit: int) -> InvalidRequest:
    return InvalidRequest("body", f"is larger than this deployment's limit of {limit} bytes", http_status=413)


def body_stream(request: Request, limit: int, refusal: InvalidRequest) -> AsyncIterator[bytes]:
    """The body's chunks, `refusal` raised at once for a larger declared length, and midway for a longer stream."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise refusal

    async def capped() -> AsyncIterator[bytes]:
        read = 0
        async for chunk in request.stream():
            read += len(chunk)
            if read > limit:
                raise refusal
            yield chunk

    return capped()


def route_path(request: Request) -> str:
    """The path below the application's route prefix: "/" for the prefix itself."""
    root, path = request.scope.get("root_path", "").rstrip("/"), request.url.path
    if root and (path == root or path.startswith(root + "/")):
        path = path[len(root):]
    return "/" + path.strip("/")


async def progress_events(answer: Coroutine, progress: Progress) -> AsyncIterator[str]:
    """The events of a streaming call. Its generation runs as a task of this stream, so a caller who hangs
    up (the stream is cancelled) stops it, as a plain call is stopped."""
    task = asyncio.ensure_future(answer)
    try:
        reported = None
        while True:
            done, _ = await asyncio.wait({task}, timeout=PROGRESS_INTERVAL_S)
            now = {"stage": progress.stage, "step": progress.steps, "steps": max(progress.total, progress.steps)}
            if now != reported:
                yield event("progress", json.dumps(now))
                reported = now
            if done:
                break
        if task.exception() is not None:
            yield event("error", json.dumps({"error": f"the generation failed ({type(task.exception()).__name__})"}))
        else:
            response: Response = task.result()
            yield event("result", response.body.decode())
    finally:
        task.cancel()


def event(name: str, data: str) -> str:
    """One server-sent event; `data` is one line of JSON."""
    return f"event: {name}\ndata: {data}\n\n"
