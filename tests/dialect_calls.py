"""A call through a dialect's real parsing and rejecting, as the model's `__call__` makes it, without Ray or
weights: for the checks that happen before the engine (unknown keys, limits, the API key)."""

import asyncio
import json

from starlette.requests import Request

from stable_diffusion_xl.apis.routes import http_route
from stable_diffusion_xl.generation.request import InvalidRequest
from stable_diffusion_xl.serving.limits import Limits


def dialect_reply(path: str, body, headers: dict | None = None, limits: Limits | None = None,
                  api_key: str | None = None) -> tuple[int, dict]:
    """(status, JSON body) of a POST to `path` below the route; 200 and the parsed requests' count when it
    would reach the engine."""
    payload = json.dumps(body).encode()
    sent = {"content-type": "application/json", "content-length": str(len(payload)), **(headers or {})}
    raw_headers = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in sent.items()]
    scope = {"type": "http", "method": "POST", "path": f"/{path}", "root_path": "", "query_string": b"",
             "headers": raw_headers}

    async def receive():
        return {"type": "http.request", "body": payload, "more_body": False}

    call = http_route(Request(scope, receive))
    try:
        call.authorize(api_key)
        requests = asyncio.run(call.requests(limits or Limits()))
    except InvalidRequest as error:
        response = call.reject(error)
        return response.status_code, json.loads(response.body)
    return 200, {"requests": len(requests)}
