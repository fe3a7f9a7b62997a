"""A call through a dialect's real parsing and rejecting, as the model's `__call__` makes it, without Ray or
weights: for the checks that happen before the engine (unknown keys, limits, the API key)."""

import asyncio
import json

from starlette.requests import Request

from stable_diffusion_xl.apis.routes import http_route
from stable_diffusion_xl.fields import InvalidRequest
from stable_diffusion_xl.serving.limits import Limits


def dialect_reply(path: str, body, headers: dict | None = None, limits: Limits | None = None,
                  api_key: str | None = None) -> tuple[int, dict]:
    """(status, JSON body) of a POST to `path` below the route; 200 and the parsed requests' count when it
    would reach the engine."""
    headers = {"content-type": "application/json", **(headers or {})}
    status, reply, _ = raw_reply(path, json.dumps(body).encode(), headers, limits, api_key)
    return status, reply


def raw_reply(path: str, payload: bytes, headers: dict, limits: Limits | None = None, api_key: str | None = None,
              chunk: int | None = None) -> tuple[int, dict, list]:
    """(status, JSON body, requests) of a POST of `payload`; with `chunk`, the body arrives in pieces of that
    many bytes and without a Content-Length (as a chunked upload does)."""
    sent = {**({} if chunk else {"content-length": str(len(payload))}), **headers}
    raw_headers = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in sent.items()]
    scope = {"type": "http", "method": "POST", "path": f"/{path}", "root_path": "", "query_string": b"",
             "headers": raw_headers}
    pieces = [payload[start:start + chunk] for start in range(0, len(payload), chunk)] if chunk else [payload]

    async def receive():
        return {"type": "http.request", "body": pieces.pop(0), "more_body": bool(pieces)}  # popped first

    call = http_route(Request(scope, receive))
    try:
        call.authorize(api_key)
        requests = asyncio.run(call.parse(limits or Limits())).requests
    except InvalidRequest as error:
        response = call.reject(error)
        return response.status_code, json.loads(response.body), []
    return 200, {"requests": len(requests)}, requests
