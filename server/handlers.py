"""HTTP handlers and the observing middleware (request id, metrics, access log, model headers)."""
from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid

import numpy as np
import orjson
from aiohttp import web

from server import batcher as b
from server.errors import ApiError
from server.schemas import check_content_type, parse_predict_body
from server.state import BATCH_SIZE, BATCHER, CONFIG, METRICS, REJECT_REASON, REQUEST_ID, RUNNER, STATE, TEXT_COUNT

access_log = logging.getLogger("server.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def json_response(data, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY), status=status,
                        content_type="application/json", headers=headers)


def _retry_later(code: str, message: str, reason: str) -> ApiError:
    return ApiError(503, code, message, reason=reason, headers={"Retry-After": "1"})


async def predict(request: web.Request) -> web.Response:
    app = request.app
    state, config, runner, batcher = app[STATE], app[CONFIG], app[RUNNER], app[BATCHER]
    if state.draining:
        raise ApiError(503, "shutting_down", "server is shutting down; retry on another instance",
                       reason="draining", headers={"Retry-After": "1", "Connection": "close"})
    if not state.ready:
        raise _retry_later("not_ready", "model is still loading", "not_ready")
    state.inflight += 1
    state.idle.clear()
    app[METRICS].inflight.inc()
    try:
        return await _predict(request, config, runner, batcher, state)
    finally:
        state.inflight -= 1
        app[METRICS].inflight.dec()
        if state.inflight == 0:
            state.idle.set()


async def _predict(request, config, runner, batcher, state) -> web.Response:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + config.request_timeout_ms / 1000.0
    check_content_type(request.content_type)
    if request.content_length is not None and request.content_length > config.max_body_bytes:
        raise ApiError(413, "body_too_large", f"body of {request.content_length} bytes; at most "
                       f"{config.max_body_bytes}", reason="too_large")
    body = await request.read()  # aiohttp enforces client_max_size while reading (chunked bodies)
    texts, single = parse_predict_body(body, config.max_texts_per_request, config.max_text_chars)
    request[TEXT_COUNT] = len(texts)
    # Refuse before tokenizing: an overloaded server must say no cheaply.
    if batcher.depth + len(texts) > batcher.max_queue:
        raise _retry_later("queue_full", "server is at capacity; retry shortly", "queue_full")

    started = time.perf_counter()
    seqs = await loop.run_in_executor(state.tokenizer_pool, runner.encode, texts)
    request.app[METRICS].tokenize_duration.observe(time.perf_counter() - started)
    if not config.truncate:
        for i, seq in enumerate(seqs):
            if len(seq) > runner.max_length:
                where = "\"text\"" if single else f"\"texts\"[{i}]"
                raise ApiError(422, "text_too_long", f"{where} has {len(seq)} tokens; the model takes at most "
                               f"{runner.max_length} and truncation is off", reason="too_large")
    try:
        futures = batcher.submit(seqs, deadline)
    except b.QueueFull:
        raise _retry_later("queue_full", "server is at capacity; retry shortly", "queue_full") from None
    except b.ShuttingDown:
        raise _retry_later("shutting_down", "server is shutting down", "draining") from None
    try:
        # One text (most requests): await its future itself; gather costs extra loop turns.
        results: list[b.BatchResult] = [await futures[0]] if len(futures) == 1 else await asyncio.gather(*futures)
    except b.DeadlineExceeded:
        raise ApiError(504, "deadline_exceeded", f"not scheduled within {config.request_timeout_ms:g} ms; "
                       "the server is overloaded", reason="deadline") from None
    except b.BatchFailed:
        raise ApiError(500, "inference_failed", "inference failed for this request's batch") from None
    except b.ShuttingDown:
        raise _retry_later("shutting_down", "server shut down before this request ran", "draining") from None
    request[BATCH_SIZE] = max(r.batch_size for r in results)
    predictions = [_prediction(r.probabilities, runner.labels) for r in results]
    model = {"name": runner.info["model_name"], "version": runner.info["model_version"]}
    if single:
        return json_response({**predictions[0], "model": model})
    return json_response({"predictions": predictions, "model": model})


def _prediction(probs: np.ndarray, labels: tuple[str, ...]) -> dict:
    best = int(np.argmax(probs))
    return {"label": labels[best], "score": float(probs[best]),
            "probabilities": {label: float(p) for label, p in zip(labels, probs)}}


async def model_info(request: web.Request) -> web.Response:
    config, batcher = request.app[CONFIG], request.app[BATCHER]
    info = dict(request.app[RUNNER].info)
    info["batching"] = {  # as resolved at start-up (0 = auto settings show their value)
        "max_batch_size": config.max_batch_size, "max_batch_tokens": batcher.limits.max_batch_tokens,
        "max_wait_ms": config.max_wait_ms, "max_queue": config.max_queue,
        "max_padding_ratio": config.max_padding_ratio, "inference_workers": batcher.workers,
        "request_timeout_ms": config.request_timeout_ms,
    }
    info["limits"] = {"max_text_chars": config.max_text_chars,
                      "max_texts_per_request": config.max_texts_per_request,
                      "max_body_bytes": config.max_body_bytes}
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
    body, content_type = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": content_type})


@web.middleware
async def observe_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Outermost: request id, model headers, request metrics and one JSON access-log line."""
    start = time.perf_counter()
    incoming = request.headers.get("X-Request-ID", "")
    request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
    request[REQUEST_ID] = request_id
    route = request.match_info.route
    endpoint = route.name or "unmatched"
    status = 499  # the client went away before we answered
    try:
        response = await handler(request)
        status = response.status
        response.headers["X-Request-ID"] = request_id
        runner = request.app.get(RUNNER)
        if runner is not None:
            response.headers["X-Model-Name"] = str(runner.info["model_name"])
            response.headers["X-Model-Version"] = str(runner.info["model_version"])
        if request.app[STATE].draining:
            # `Connection: close` while draining: a keep-alive client that reused the
            # connection as the server shuts down would see its request reset unanswered.
            response.force_close()
        return response
    finally:
        elapsed = time.perf_counter() - start
        m = request.app[METRICS]
        m.requests.labels(endpoint, str(status)).inc()
        m.request_duration.labels(endpoint).observe(elapsed)
        reason = request.get(REJECT_REASON)
        if reason:
            m.rejected.labels(reason).inc()
        if endpoint != "metrics":  # scrapes every few seconds would drown the log
            access_log.info(orjson.dumps({
                "event": "access", "request_id": request_id, "method": request.method,
                "path": request.path, "status": status, "latency_ms": round(elapsed * 1000, 2),
                "texts": request.get(TEXT_COUNT, 0), "batch_size": request.get(BATCH_SIZE),
            }).decode())
