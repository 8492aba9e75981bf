"""One error type (status, stable code, message) and one middleware that renders every error as JSON.

Anything that is not an ApiError becomes a 500 with a generic message; the trace goes to
the log, never to the client.
"""

from __future__ import annotations

import logging

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from server.state import REJECT_REASON

log = logging.getLogger("server.errors")


class ApiError(Exception):
    """An error the client should see: HTTP status, stable machine-readable code, message."""

    def __init__(
        self, status: int, code: str, message: str, *, reason: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        # `reason` is the sentiment_rejected_total label; None = not a rejection (e.g. a 500).
        self.reason = reason
        self.headers = headers or {}


def error_response(err: ApiError) -> web.Response:
    body = orjson.dumps({"error": {"code": err.code, "message": err.message}})
    return web.Response(body=body, status=err.status, content_type="application/json", headers=err.headers)


# aiohttp's own HTTP exceptions (routing, body size) mapped to our codes.
_HTTP_CODES = {
    403: ("forbidden", "forbidden"),  # a CORS preflight from an origin not allowed (aiohttp-cors)
    404: ("not_found", "not_found"),
    405: ("method_not_allowed", "invalid"),
    413: ("body_too_large", "too_large"),
}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except ApiError as err:
        if err.reason:
            request[REJECT_REASON] = err.reason
        return error_response(err)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code, reason = _HTTP_CODES.get(exc.status, ("http_error", "invalid"))
        request[REJECT_REASON] = reason
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error_response(ApiError(exc.status, code, exc.reason, headers=headers))
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(ApiError(500, "internal_error", "internal server error"))
