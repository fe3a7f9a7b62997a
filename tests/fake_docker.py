#!/usr/bin/env python3
"""A stand-in `docker` for rehearsing the instill CLI without a Docker engine (tests/test_image_*.py).

The instill SDK runs `docker ...` through subprocess, found on PATH, so a `docker` shim first on PATH
that execs this script catches every call. Each call's argv is written to $FAKE_DOCKER_LOG/NNN.json.
`docker buildx build ... CONTEXT` also copies CONTEXT to $FAKE_DOCKER_LOG/context-NNN, because the SDK
deletes its temporary build context as soon as docker returns. Exits with $FAKE_DOCKER_RC (default 0).
"""

import json
import os
import shutil
import sys
from pathlib import Path

# buildx options that take a value as the next argument (the ones `instill build` passes)
TAKES_VALUE = {"--file", "-f", "--build-arg", "--platform", "-t", "--tag", "--progress"}


def build_context(args: list[str]) -> str:
    """The single positional argument of `docker buildx build`."""
    positional, i = [], 0
    while i < len(args):
        if args[i] in TAKES_VALUE:
            i += 2
        else:
            if not args[i].startswith("-"):
                positional.append(args[i])
            i += 1
    if len(positional) != 1:
        raise SystemExit(f"fake docker: expected one build context, got {positional}")
    return positional[0]


def main(argv: list[str]) -> int:
    log = Path(os.environ["FAKE_DOCKER_LOG"])
    log.mkdir(parents=True, exist_ok=True)
    number = len(list(log.glob("*.json")))
    record = {"argv": argv, "cwd": os.getcwd()}
    if argv[:2] == ["buildx", "build"]:
        context = build_context(argv[2:])
        snapshot = log / f"context-{number:03d}"
        shutil.copytree(context, snapshot, symlinks=True)
        record.update(context=context, snapshot=str(snapshot))
    (log / f"{number:03d}.json").write_text(json.dumps(record, indent=1))
    if argv[:1] == ["run"]:
        print("0123456789abcdef")  # docker run -d prints the container id
    return int(os.environ.get("FAKE_DOCKER_RC", "0"))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
