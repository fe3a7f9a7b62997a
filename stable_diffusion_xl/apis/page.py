"""The try-it page: plain HTML, CSS and JavaScript shipped in `ui/`, served below the application's route.

The page calls the HTTP API every client calls (a POST to the route, with server-sent events for its
progress bar): it reaches the engine by no other path and validates nothing of its own.
"""

from __future__ import annotations

import html
from pathlib import Path

from starlette.responses import Response

from ..serving.transport import HttpCall, StatusCall, route_path

PAGE_DIR = Path(__file__).parent / "ui"
# route path -> (file in ui/, media type)
PAGE_FILES = {
    "/ui": ("index.html", "text/html; charset=utf-8"),
    "/ui/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/ui/style.css": ("style.css", "text/css; charset=utf-8"),
}
# Nothing from another host, and no inline script: the page works offline and behind a firewall, and the
# browser itself refuses anything else.
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' data: blob:; base-uri 'self'; form-action 'none'; "
                           "frame-ancestors 'none'")
BASE_PLACEHOLDER = b'<base href="./">'


class PageFile(HttpCall, StatusCall):
    """A GET of the page or one of its files."""

    api = "page"
    title = "try it in a browser"

    def answer(self, status: dict) -> Response:
        name, media_type = PAGE_FILES[route_path(self.request)]
        content = (PAGE_DIR / name).read_bytes()
        if name == "index.html":  # its links resolve below the route prefix, whether /ui ends in a slash or not
            root = self.request.scope.get("root_path", "").rstrip("/")
            content = content.replace(BASE_PLACEHOLDER, f'<base href="{html.escape(root)}/">'.encode())
        return Response(content, media_type=media_type,
                        headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Cache-Control": "no-cache"})
