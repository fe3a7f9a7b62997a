"""Steady gRPC load for the scaling tests: a few clients, each sending one CallRequest after another, as Instill
Core sends them, and every call's outcome recorded."""

from __future__ import annotations

import base64
import io
import threading
import time
from dataclasses import dataclass

import grpc
from PIL import Image

from stable_diffusion_xl.serving.client import grpc_call

OK = grpc.StatusCode.OK.name
LOST = grpc.StatusCode.DEADLINE_EXCEEDED.name  # neither answered nor failed within the call's deadline
BUSY = grpc.StatusCode.UNAVAILABLE.name  # Serve's queue is full (SDXL_MAX_QUEUED_REQUESTS): refused at once


@dataclass(frozen=True)
class Call:
    started: float  # time.monotonic()
    ended: float
    status: str  # the gRPC status code's name
    details: str = ""
    image: Image.Image | None = None  # the first image returned: a fixed seed gives the same on every replica


def first_image(outputs: list[dict]) -> Image.Image:
    uri = outputs[0]["data"]["choices"][0]["image"]
    return Image.open(io.BytesIO(base64.b64decode(uri.partition(",")[2])))


class Load:
    """`clients` threads calling `application` with `task_input` until the block ends, each call within
    `deadline` seconds; the block ends once every call under way has ended."""

    def __init__(self, channel: grpc.Channel, application: str, task_input: dict, clients: int, deadline: float):
        self.channel, self.application, self.task_input, self.deadline = channel, application, task_input, deadline
        self.calls: list[Call] = []
        self._stop = threading.Event()
        self._clients = [threading.Thread(target=self._client) for _ in range(clients)]

    def __enter__(self) -> Load:
        for client in self._clients:
            client.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        for client in self._clients:
            client.join()

    def _client(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                outputs = grpc_call(self.channel, self.application, self.task_input, timeout=self.deadline)
                call = Call(started, time.monotonic(), OK, image=first_image(outputs))
            except grpc.RpcError as error:
                call = Call(started, time.monotonic(), error.code().name, error.details() or "")
            self.calls.append(call)

    def with_status(self, *statuses: str) -> list[Call]:
        return [call for call in self.calls if call.status in statuses]

    def rate(self, start: float, end: float) -> float:
        """Calls answered per second between `start` and `end` (time.monotonic())."""
        return sum(start <= call.ended < end for call in self.with_status(OK)) / (end - start)
