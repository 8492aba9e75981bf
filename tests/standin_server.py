"""A minimal stand-in for the sentiment server: same /v1/predict contract, fixed delay.

The SLA gate's, the client's and the open-loop tests must not depend on the real server (built
separately); this one answers like it, optionally after `delay_s`. It sits in tests/ beside
conftest.py, which pytest puts on the import path for every test folder.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

DELAY = web.AppKey("delay_s", float)
SEEN = web.AppKey("seen", list)


def _prediction(text: str) -> dict:
    positive = 0.9 if "good" in text else 0.2
    return {
        "label": "positive" if positive > 0.5 else "negative",
        "score": max(positive, 1 - positive),
        "probabilities": {"negative": 1 - positive, "positive": positive},
    }


async def predict(request: web.Request) -> web.Response:
    body = await request.json()
    request.app[SEEN].append(body)
    await asyncio.sleep(request.app[DELAY])
    if "texts" in body:
        return web.json_response({"predictions": [_prediction(t) for t in body["texts"]]})
    if not isinstance(body.get("text"), str):
        return web.json_response({"error": {"code": "invalid_input", "message": "text must be a string"}}, status=422)
    return web.json_response(_prediction(body["text"]))


async def readyz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ready"})


def create_app(delay_s: float = 0.0) -> web.Application:
    app = web.Application()
    app[DELAY] = delay_s
    app[SEEN] = []
    app.router.add_post("/v1/predict", predict)
    app.router.add_get("/readyz", readyz)
    return app
