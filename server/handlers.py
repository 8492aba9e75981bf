"""HTTP handlers and the observing middleware (request id, metrics, access log, model headers)."""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from server import batcher as b
from server import inference
from server.config import ServerConfig
from server.errors import ApiError
from server.schemas import check_content_type, parse_predict_body
from server.state import (
    ANSWER,
    BATCH_SIZE,
    CONFIG,
    METRICS,
    MODEL,
    PREDLOG,
    REJECT_REASON,
    REQUEST_ID,
    SERVICE,
    STATE,
    TEXT_COUNT,
    TEXTS,
)

access_log = logging.getLogger("server.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# A client's own, tighter latency budget in milliseconds (as Envoy's x-envoy-expected-rq-timeout-ms).
BUDGET_HEADER = "X-Latency-Budget-Ms"


def json_response(data: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def _retry_later(code: str, message: str, reason: str, seconds: int = 1) -> ApiError:
    return ApiError(503, code, message, reason=reason, headers={"Retry-After": str(seconds)})


def _overloaded(exc: inference.Overloaded) -> ApiError:
    return _retry_later(
        "overloaded", f"server is overloaded: {exc}; retry later or elsewhere", "overloaded", exc.retry_after_s
    )


def requested_budget(request: web.Request) -> float | None:
    """The tighter latency budget a client asked for (BUDGET_HEADER, milliseconds), in seconds."""
    raw = request.headers.get(BUDGET_HEADER)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ApiError(
            400,
            "invalid_request",
            f"{BUDGET_HEADER} must be a positive number of milliseconds, got {raw[:40]!r}",
            reason="invalid",
        )
    return value / 1000.0


async def predict(request: web.Request) -> web.Response:
    app = request.app
    state = app[STATE]
    if state.draining:
        raise ApiError(
            503,
            "shutting_down",
            "server is shutting down; retry on another instance",
            reason="draining",
            headers={"Retry-After": "1", "Connection": "close"},
        )
    if not state.ready:
        raise _retry_later("not_ready", "model is still loading", "not_ready")
    state.inflight += 1
    state.idle.clear()
    app[METRICS].inflight.inc()
    try:
        return await _predict(request, app[CONFIG], app[SERVICE])
    finally:
        state.inflight -= 1
        app[METRICS].inflight.dec()
        if state.inflight == 0:
            state.idle.set()


async def _predict(request: web.Request, config: ServerConfig, service: inference.InferenceService) -> web.Response:
    """Parse, call the inference layer, serialise."""
    arrival = asyncio.get_running_loop().time()
    budget = service.effective_budget(requested_budget(request))
    check_content_type(request.content_type)
    if request.content_length is not None and request.content_length > config.max_body_bytes:
        raise ApiError(
            413,
            "body_too_large",
            f"body of {request.content_length} bytes; at most {config.max_body_bytes}",
            reason="too_large",
        )
    try:
        service.check_overload(arrival, budget)  # before reading the body: an overloaded server says no cheaply
        body = await request.read()  # aiohttp enforces client_max_size while reading (chunked bodies)
        texts, single = parse_predict_body(body, config.max_texts_per_request, config.max_text_chars)
        request[TEXT_COUNT] = len(texts)
        logged = PREDLOG in request.app
        if logged:
            request[TEXTS] = texts
        answer = await service.predict(texts, arrival, budget)
        if logged:
            request[ANSWER] = answer
    except inference.Overloaded as exc:
        raise _overloaded(exc) from None
    except b.QueueFull:
        raise _retry_later("queue_full", "server is at capacity; retry shortly", "queue_full") from None
    except b.ShuttingDown:
        raise _retry_later("shutting_down", "server is shutting down", "draining") from None
    except inference.TextTooLong as exc:
        where = '"text"' if single else f'"texts"[{exc.index}]'
        raise ApiError(
            422,
            "text_too_long",
            f"{where} has {exc.tokens} tokens; the model takes at most {exc.max_length} and truncation is off",
            reason="too_large",
        ) from None
    except b.Shed:
        raise _retry_later(
            "overloaded",
            "server is overloaded: this request could no longer finish within its "
            f"{budget * 1000:.0f} ms latency budget and was not run; retry later or elsewhere",
            "shed",
        ) from None
    except b.DeadlineExceeded:
        raise ApiError(
            504,
            "deadline_exceeded",
            f"not scheduled within {config.request_timeout_ms:g} ms; the server is overloaded",
            reason="deadline",
        ) from None
    except b.BatchFailed:
        raise ApiError(500, "inference_failed", "inference failed for this request's batch") from None
    request[BATCH_SIZE] = answer.batch_size
    predictions = answer.predictions()
    info = service.runner.info
    model = {"name": info["model_name"], "version": info["model_version"]}
    if single:
        return json_response({**predictions[0], "model": model})
    return json_response({"predictions": predictions, "model": model})


async def model_info(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    info = request.app[SERVICE].model_info()
    info["batching"] = request.app[SERVICE].info()  # as resolved at start-up (0 = auto settings show their value)
    info["limits"] = {
        "max_text_chars": config.max_text_chars,
        "max_texts_per_request": config.max_texts_per_request,
        "max_body_bytes": config.max_body_bytes,
    }
    return json_response(info)


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.draining:
        return json_response({"status": "draining"}, status=503)
    if not state.ready:
        return json_response({"status": "loading"}, status=503)
    return json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    service = request.app.get(SERVICE)
    if service is not None:
        service.refresh_gauges()
    body, content_type = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": content_type})


@web.middleware
async def observe_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: request id, model headers, request metrics and one JSON access-log line."""
    start = time.perf_counter()
    incoming = request.headers.get("X-Request-ID", "")
    request_id = incoming if _REQUEST_ID.match(incoming) else request.app[STATE].next_request_id()
    request[REQUEST_ID] = request_id
    route = request.match_info.route
    # A CORS preflight shares its resource (and so its route name) with the POST it asks about:
    # counted apart, it neither pulls the predict latencies down nor writes prediction rows.
    endpoint = "preflight" if request.method == "OPTIONS" else (route.name or "unmatched")
    status = 499  # the client went away before we answered
    try:
        response: web.StreamResponse = await handler(request)
        status = response.status
        response.headers["X-Request-ID"] = request_id
        model = request.app.get(MODEL)
        if model is not None:
            response.headers["X-Model-Name"] = str(model.runner.info["model_name"])
            response.headers["X-Model-Version"] = str(model.runner.info["model_version"])
        if request.app[STATE].draining:
            # `Connection: close` while draining: a keep-alive client that reused the
            # connection as the server shuts down would see its request reset unanswered.
            response.force_close()
        return response
    finally:
        elapsed = time.perf_counter() - start
        m = request.app[METRICS]
        m.requests.labels(endpoint, str(status)).inc()
        m.process_requests.inc()
        m.request_duration.labels(endpoint).observe(elapsed)
        reason = request.get(REJECT_REASON)
        if reason:
            m.rejected.labels(reason).inc()
        predlog = request.app.get(PREDLOG)
        # A caller without a valid key writes nothing: rows (and pruning) belong to the API's users.
        if predlog is not None and endpoint == "predict" and status not in (401, 403):
            predlog.record(request_id, status, elapsed, request.get(ANSWER), request.get(TEXTS))
        if endpoint not in ("metrics", "stats"):  # scrapes and playground polls would drown the log
            access_log.info(
                orjson.dumps(
                    {
                        "event": "access",
                        "request_id": request_id,
                        "method": request.method,
                        "path": request.path,
                        "status": status,
                        "latency_ms": round(elapsed * 1000, 2),
                        "texts": request.get(TEXT_COUNT, 0),
                        "batch_size": request.get(BATCH_SIZE),
                    }
                ).decode()
            )
