"""The playground at GET /: one page and its assets from server/static/.

Plain HTML, CSS and JavaScript shipped as package data (pyproject.toml), so a wheel and the
images carry them: no CDN, no build step. The page calls the public API like any client
(POST /v1/predict, GET /v1/model, GET /v1/stats) with URLs relative to itself, so it also
works behind a proxy that serves the service under a path prefix.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from aiohttp import web

from server.errors import ApiError

STATIC_DIR = Path(__file__).with_name("static")
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".png": "image/png",
}


class Assets:
    """A fixed set of files of one folder, served by name: nothing outside the set can be asked
    for (no path from the request ever reaches the file system)."""

    def __init__(self, folder: Path, names: Iterable[str]) -> None:
        self.files = {name: folder / name for name in names}
        missing = [str(p) for p in self.files.values() if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"static files missing from the install: {', '.join(missing)}")

    def response(self, name: str) -> web.FileResponse:
        path = self.files.get(name)
        if path is None:
            raise ApiError(404, "not_found", f"no static file {name[:100]!r}", reason="not_found")
        # "no-cache": the browser revalidates (the ETag makes that a 304), so an upgraded server's
        # page is never mixed with an old cached script.
        headers = {"Content-Type": CONTENT_TYPES[path.suffix], "Cache-Control": "no-cache"}
        return web.FileResponse(path, headers=headers)

    async def handler(self, request: web.Request) -> web.FileResponse:
        return self.response(request.match_info["name"])


# The playground's page and assets, and the API docs' page and start-up script (server/apidocs.py).
STATIC = Assets(STATIC_DIR, ("index.html", "playground.css", "playground.js", "docs.html", "docs.js"))


async def index(request: web.Request) -> web.FileResponse:
    return STATIC.response("index.html")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", index, name="playground")
    app.router.add_get("/static/{name}", STATIC.handler, name="static")
