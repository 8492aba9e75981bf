"""The HTTP layer on a real loopback server with a fake model: contract, errors, overload, drain."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from core.layout import physical_cores
from server.app import begin_drain, wait_drained
from server.metrics import METRIC_NAMES
from server.openapi import build_spec
from server.state import BATCHER, CONFIG, STATE


async def error_of(resp) -> tuple[int, str]:
    body = await resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert "Traceback" not in body["error"]["message"]
    return resp.status, body["error"]["code"]


async def test_single_and_multi_prediction_shape(serve_fake):
    client = await serve_fake()
    resp = await client.post("/v1/predict", json={"text": "one two three four"})
    assert resp.status == 200
    body = await resp.json()
    assert body["label"] == "positive" and body["score"] == pytest.approx(0.6)
    assert body["probabilities"] == pytest.approx({"negative": 0.4, "positive": 0.6})
    assert body["model"] == {"name": "fake", "version": "0"}
    assert resp.headers["X-Model-Name"] == "fake" and resp.headers["X-Model-Version"] == "0"
    assert len(resp.headers["X-Request-ID"]) >= 16

    texts = ["a", "a b", "a b c d", "a b c d e f g"]  # 3, 4, 6, 9 tokens -> p = .3 .4 .6 .9
    resp = await client.post("/v1/predict", json={"texts": texts}, headers={"X-Request-ID": "abc-123"})
    body = await resp.json()
    assert resp.headers["X-Request-ID"] == "abc-123"
    assert [p["probabilities"]["positive"] for p in body["predictions"]] == pytest.approx([0.3, 0.4, 0.6, 0.9])
    assert [p["label"] for p in body["predictions"]] == ["negative", "negative", "positive", "positive"]


@pytest.mark.parametrize(
    "kwargs,status,code",
    [
        ({"data": b"{not json", "headers": {"Content-Type": "application/json"}}, 400, "invalid_json"),
        ({"json": ["a list"]}, 400, "invalid_request"),
        ({"json": {"text": 5}}, 400, "invalid_request"),
        ({"json": {"text": None}}, 400, "invalid_request"),
        ({"json": {"texts": "not a list"}}, 400, "invalid_request"),
        ({"json": {"texts": ["ok", 3]}}, 400, "invalid_request"),
        ({"json": {"text": "a", "texts": ["b"]}}, 400, "invalid_request"),
        ({"json": {"text": "a", "extra": 1}}, 400, "invalid_request"),
        ({"data": b'{"text": "hi"}', "headers": {"Content-Type": "text/plain"}}, 415, "unsupported_media_type"),
        ({"data": b'{"text": "hi"}'}, 415, "unsupported_media_type"),
        ({"json": {}}, 422, "missing_text"),
        ({"json": {"text": ""}}, 422, "empty_text"),
        ({"json": {"text": "   \n"}}, 422, "empty_text"),
        ({"json": {"texts": []}}, 422, "empty_text"),
        ({"json": {"texts": ["x"] * 5}}, 422, "too_many_texts"),
        ({"json": {"text": "x" * 101}}, 422, "text_too_long"),
        ({"json": {"texts": ["fine", "y" * 101]}}, 422, "text_too_long"),
        ({"json": {"text": "x " * 400}}, 413, "body_too_large"),
    ],
)
async def test_error_cases(serve_fake, kwargs, status, code):
    client = await serve_fake(max_texts_per_request=4, max_text_chars=100, max_body_bytes=512)
    resp = await client.post("/v1/predict", **kwargs)
    assert await error_of(resp) == (status, code)
    assert "X-Request-ID" in resp.headers


async def test_chunked_body_over_limit_is_413(serve_fake):
    client = await serve_fake(max_body_bytes=512)

    async def chunks():
        yield b'{"text": "'
        for _ in range(20):
            yield b"x" * 100
        yield b'"}'

    resp = await client.post("/v1/predict", data=chunks(), headers={"Content-Type": "application/json"})
    assert await error_of(resp) == (413, "body_too_large")


async def test_too_many_tokens_without_truncation_is_422(serve_fake):
    client = await serve_fake(truncate=False)  # fake max_length 64 tokens
    resp = await client.post("/v1/predict", json={"text": "w " * 100})
    assert await error_of(resp) == (422, "text_too_long")
    assert (await client.post("/v1/predict", json={"text": "w " * 10})).status == 200


async def test_unknown_route_and_method_are_json(serve_fake):
    client = await serve_fake()
    assert await error_of(await client.get("/nope")) == (404, "not_found")
    assert await error_of(await client.get("/v1/predict")) == (405, "method_not_allowed")


async def test_queue_full_is_503_at_once_with_retry_after(serve_fake, fake_runner):
    client = await serve_fake(max_batch_size=1, max_queue=4, max_wait_ms=0)
    fake_runner.gate.clear()
    first = asyncio.ensure_future(client.post("/v1/predict", json={"text": "held in the worker"}))
    assert await asyncio.to_thread(fake_runner.started.wait, 5)
    queued = [asyncio.ensure_future(client.post("/v1/predict", json={"text": f"q {i}"})) for i in range(4)]
    while client.app[BATCHER].depth < 4:
        await asyncio.sleep(0.01)
    started = time.perf_counter()
    resp = await client.post("/v1/predict", json={"text": "one too many"})
    elapsed = time.perf_counter() - started
    assert await error_of(resp) == (503, "queue_full")
    assert resp.headers["Retry-After"] == "1"
    assert elapsed < 0.5
    fake_runner.gate.set()
    assert [r.status for r in await asyncio.gather(first, *queued)] == [200] * 5
    metrics = await (await client.get("/metrics")).text()
    assert 'sentiment_rejected_total{reason="queue_full"} 1.0' in metrics


async def test_deadline_passed_in_queue_is_504_and_never_run(serve_fake, fake_runner):
    client = await serve_fake(max_batch_size=1, request_timeout_ms=150, max_wait_ms=0)
    fake_runner.gate.clear()
    first = asyncio.ensure_future(client.post("/v1/predict", json={"text": "held"}))
    assert await asyncio.to_thread(fake_runner.started.wait, 5)
    started = time.perf_counter()
    late = await client.post("/v1/predict", json={"text": "too late"})
    assert await error_of(late) == (504, "deadline_exceeded")
    assert time.perf_counter() - started < 1.0
    fake_runner.gate.set()
    assert (await first).status == 200
    assert fake_runner.batches == [[4]]  # "too late" (3 letters) never reached the model


async def test_failing_batch_fails_only_its_requests(serve_fake, fake_runner):
    client = await serve_fake(max_batch_size=2, max_wait_ms=20)
    bad = client.post("/v1/predict", json={"texts": [f"x {fake_runner.fail_marker}", "fine text"]})
    resp = await bad
    assert await error_of(resp) == (500, "inference_failed")
    good = await client.post("/v1/predict", json={"text": "the next one works"})
    assert good.status == 200
    metrics = await (await client.get("/metrics")).text()
    assert "sentiment_batch_failures_total 1.0" in metrics
    assert 'sentiment_requests_total{code="500",endpoint="predict"} 1.0' in metrics


async def test_disconnected_client_does_not_poison_the_batch(serve_fake, fake_runner):
    client = await serve_fake(max_batch_size=8, max_wait_ms=0)
    fake_runner.gate.clear()
    first = asyncio.ensure_future(client.post("/v1/predict", json={"text": "held"}))
    assert await asyncio.to_thread(fake_runner.started.wait, 5)
    leaving = asyncio.ensure_future(client.post("/v1/predict", json={"text": "leaves early"}))
    staying = asyncio.ensure_future(client.post("/v1/predict", json={"text": "stays here"}))
    await asyncio.sleep(0.1)
    leaving.cancel()  # closes its connection
    await asyncio.sleep(0.05)
    fake_runner.gate.set()
    assert (await first).status == 200 and (await staying).status == 200
    assert (await client.post("/v1/predict", json={"text": "and after"})).status == 200


async def test_drain_refuses_new_and_answers_accepted(serve_fake, fake_runner):
    client = await serve_fake(max_wait_ms=0)
    assert (await client.get("/readyz")).status == 200
    fake_runner.gate.clear()
    accepted = asyncio.ensure_future(client.post("/v1/predict", json={"text": "accepted before drain"}))
    assert await asyncio.to_thread(fake_runner.started.wait, 5)
    begin_drain(client.app)
    ready = await client.get("/readyz")
    assert ready.status == 503 and (await ready.json())["status"] == "draining"
    assert await error_of(await client.post("/v1/predict", json={"text": "new"})) == (503, "shutting_down")
    assert (await client.get("/healthz")).status == 200
    assert not await wait_drained(client.app, 0.05)
    fake_runner.gate.set()
    assert await wait_drained(client.app, 5)
    answered = await accepted
    assert answered.status == 200
    # answered while draining: the client is told not to reuse the connection
    assert answered.headers.get("Connection", "").lower() == "close"
    assert client.app[STATE].inflight == 0


async def test_metrics_has_every_name(serve_fake):
    client = await serve_fake()
    await client.post("/v1/predict", json={"text": "warm the histograms"})
    resp = await client.get("/metrics")
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
    text = await resp.text()
    for name in METRIC_NAMES:
        assert f"\n# TYPE {name} " in text, name
    assert (
        'sentiment_model_info{model="fake",optimization="none",quantization="none",target="cpu",version="0"} 1.0'
        in text
    )
    assert 'sentiment_requests_total{code="200",endpoint="predict"} 1.0' in text


async def test_model_endpoint(serve_fake):
    client = await serve_fake()
    body = await (await client.get("/v1/model")).json()
    assert body["labels"] == ["negative", "positive"] and body["max_length"] == 64
    assert {"quantization", "parity", "batching", "limits"} <= set(body)


@pytest.mark.parametrize("workers,expected", [(1, 1), (2, 2), (0, physical_cores())])
async def test_model_endpoint_reports_inference_workers(serve_fake, workers, expected):
    client = await serve_fake(inference_workers=workers)  # 0: the resolved count, not the setting
    body = await (await client.get("/v1/model")).json()
    assert body["batching"]["inference_workers"] == expected == client.app[BATCHER].workers


@pytest.mark.parametrize("setting,expected", [(0, 256), (700, 700)])  # 0, untimed: the fixed 256
async def test_model_endpoint_reports_the_token_budget_in_force(serve_fake, setting, expected):
    client = await serve_fake(max_batch_tokens=setting)  # the fake runner is a CPU one
    body = await (await client.get("/v1/model")).json()
    assert body["batching"]["max_batch_tokens"] == expected == client.app[BATCHER].limits.max_batch_tokens
    assert body["batching"]["cost_curve"] == {"points": [], "plan": None}  # a fake runner times nothing


async def test_two_workers_serve_two_requests_at_once(serve_fake, fake_runner):
    client = await serve_fake(inference_workers=2, max_wait_ms=0)
    fake_runner.gate.clear()
    first = asyncio.ensure_future(client.post("/v1/predict", json={"text": "first"}))
    assert await asyncio.to_thread(fake_runner.wait_active, 1)
    second = asyncio.ensure_future(client.post("/v1/predict", json={"text": "second one"}))
    assert await asyncio.to_thread(fake_runner.wait_active, 2)  # both inside predict, neither released
    assert fake_runner.batches == [[5], [6]] and client.app[BATCHER].depth == 0
    fake_runner.gate.set()
    assert [r.status for r in await asyncio.gather(first, second)] == [200, 200]
    assert fake_runner.peak == 2


async def test_openapi_matches_routes(serve_fake):
    client = await serve_fake()
    served = await (await client.get("/openapi.json")).json()
    assert served == orjson.loads(orjson.dumps(build_spec(client.app[CONFIG]))) and served["openapi"].startswith("3.")
    documented = {(path, method.upper()) for path, ops in served["paths"].items() for method in ops}
    routed = {(r.resource.canonical, r.method) for r in client.app.router.routes() if r.method != "HEAD"}
    assert documented == routed
    for _path, ops in served["paths"].items():
        for op in ops.values():
            assert "200" in op["responses"]
    refs = {m for m in orjson.dumps(served).decode().split('"') if m.startswith("#/components/schemas/")}
    assert {r.rsplit("/", 1)[1] for r in refs} <= set(served["components"]["schemas"])
