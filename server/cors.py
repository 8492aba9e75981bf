"""CORS: `--cors-allow-origin ORIGIN` (repeatable) lets a page from ORIGIN call the API from a
browser. Handled by aiohttp-cors, the maintained library for aiohttp, not by hand-written
headers; no origin is allowed by default (text-embeddings-inference's `--cors-allow-origin`).
"""

from __future__ import annotations

from collections.abc import Sequence

import aiohttp_cors
from aiohttp import web

# What a browser page may send and read: the API key, our request id and the latency budget
# it may ask for; the answer's id, model and Retry-After headers.
ALLOW_HEADERS = ("Content-Type", "Authorization", "X-Request-ID", "X-Latency-Budget-Ms")
EXPOSE_HEADERS = ("X-Request-ID", "X-Model-Name", "X-Model-Version", "Retry-After", "WWW-Authenticate")
MAX_AGE_S = 600


def setup_cors(app: web.Application, origins: Sequence[str]) -> None:
    """Allow `origins` on every route of `app`; call once all routes are added."""
    options = aiohttp_cors.ResourceOptions(  # type: ignore[no-untyped-call]  # untyped upstream
        allow_credentials=False,  # keys go in the Authorization header, not in cookies
        expose_headers=EXPOSE_HEADERS,
        allow_headers=ALLOW_HEADERS,
        allow_methods=("GET", "POST"),
        max_age=MAX_AGE_S,
    )
    cors = aiohttp_cors.setup(app, defaults={origin: options for origin in origins})
    for route in list(app.router.routes()):
        cors.add(route)
