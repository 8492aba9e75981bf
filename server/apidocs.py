"""API docs at GET /docs: Swagger UI over GET /openapi.json, self-hosted.

Swagger UI's files come from the PyPI package swagger-ui-bundle (a server dependency, pinned
for the images in deploy/constraints-serve.txt), served under /docs/static/; the page itself
and its start-up script are ours, in server/static/ (the bundle's own point at a demo API).
"""

from __future__ import annotations

from pathlib import Path

import swagger_ui_bundle
from aiohttp import web

from server.playground import STATIC, Assets

SWAGGER_DIR = Path(str(swagger_ui_bundle.swagger_ui_path))
# Only what docs.html loads; the bundle's own index.html, source maps and ES builds stay unserved.
SWAGGER = Assets(SWAGGER_DIR, ("swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png"))


async def docs(request: web.Request) -> web.FileResponse:
    return STATIC.response("docs.html")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/docs", docs, name="docs")
    app.router.add_get("/docs/static/{name}", SWAGGER.handler, name="docs_static")
