"""GET /v1/stats: the playground's live figures, from the registry that GET /metrics renders."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.procs import ServedProcess, server_command
from server.app import create_app
from server.config import ServerConfig
from server.openapi import SPEC
from server.stats import quantile

BOUNDS = [0.01, 0.02, 0.05, 0.1]


@pytest.mark.parametrize(
    "q,cumulative,count,expected",
    [
        (0.5, [0, 10, 10, 10], 10, 0.015),  # all in (0.01, 0.02]: the middle of it
        (0.95, [0, 10, 10, 10], 10, 0.0195),
        (0.5, [4, 4, 8, 8], 8, 0.01),  # rank 4 is the first bucket's top
        (0.95, [5, 5, 5, 9], 10, 0.1),  # in +Inf: the highest finite bound, as Prometheus says
        (0.25, [2, 2, 2, 2], 2, 0.0025),  # the first bucket starts at 0
        (0.95, [0, 0, 0, 0], 0, None),  # nothing observed
    ],
)
def test_quantile_follows_histogram_quantile(q, cumulative, count, expected):
    got = quantile(q, BOUNDS, cumulative, count)
    assert got == (None if expected is None else pytest.approx(expected))


def metric_samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_stats_move_with_requests_and_agree_with_metrics(aiohttp_client, tiny_model_dir):
    client = await aiohttp_client(create_app(ServerConfig(model_dir=tiny_model_dir, intra_op_threads=1)))
    before = await (await client.get("/v1/stats")).json()
    assert before["requests"]["total"] == 0 and before["latency_seconds"]["p95"] is None
    assert before["batches"]["mean_size"] is None
    for text in ("A fine film.", "Dull.", "Loved every minute of it."):
        assert (await client.post("/v1/predict", json={"text": text})).status == 200
    assert (await client.post("/v1/predict", json={"texts": ["one", "two", "three", "four"]})).status == 200
    assert (await client.post("/v1/predict", json={"text": "   "})).status == 422
    assert (await client.get("/no/such/page")).status == 404
    after = await (await client.get("/v1/stats")).json()

    # Only predict requests: the stats polls and the 404 are not.
    assert after["requests"] == {"total": 5, "by_code": {"200": 4, "422": 1}}
    latency = after["latency_seconds"]
    assert latency["count"] == 5 and latency["sum"] > 0
    assert 0 < latency["p50"] <= latency["p95"] <= max(latency["buckets"]["le"])
    cumulative = latency["buckets"]["cumulative"]
    assert cumulative == sorted(cumulative) and cumulative[-1] <= 5
    assert after["batches"]["texts"] == 7 and 1 <= after["batches"]["count"] <= 7
    assert after["batches"]["mean_size"] == pytest.approx(7 / after["batches"]["count"])
    assert after["rejected"]["total"] == 2
    assert after["rejected"]["by_reason"]["invalid"] == 1 and after["rejected"]["by_reason"]["not_found"] == 1
    assert after["inflight"] == 0 and after["queue_depth"] == 0
    # The OpenAPI document describes exactly these fields.
    schema = SPEC["components"]["schemas"]["Stats"]["properties"]
    assert set(after) == set(schema)
    for name, value in after.items():
        if isinstance(value, dict):
            assert set(value) == set(schema[name]["properties"]), name

    # The same registry as /metrics: every figure is one of its samples (or their sum).
    metrics = metric_samples(await (await client.get("/metrics")).text())
    latency_key = "sentiment_request_duration_seconds"
    assert metrics[(f"{latency_key}_count", (("endpoint", "predict"),))] == latency["count"]
    for le, n in zip(latency["buckets"]["le"], cumulative):
        assert metrics[(f"{latency_key}_bucket", (("endpoint", "predict"), ("le", str(le))))] == n
    assert metrics[("sentiment_batch_size_count", ())] == after["batches"]["count"]
    assert metrics[("sentiment_batch_size_sum", ())] == after["batches"]["texts"]
    assert metrics[("sentiment_requests_total", (("code", "422"), ("endpoint", "predict")))] == 1
    assert quantile(0.95, latency["buckets"]["le"], cumulative, latency["count"]) == latency["p95"]


async def test_stats_cover_every_process(tiny_model_dir, tmp_path):
    """With --processes 2 each child counts its own requests; whichever child answers /v1/stats
    reports them all (prometheus-client's multiprocess collector, as /metrics does)."""
    cmd = server_command(tiny_model_dir, "--processes", "2", "--drain-timeout-s", "5")
    with ServedProcess(cmd, tmp_path / "server.log", ready_timeout_s=90) as server:
        # A new connection per request: the kernel hashes each to one of the two children.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:

            async def children() -> int:
                """How many children have answered a request so far."""
                metrics = await (await session.get(server.url + "/metrics")).text()
                samples = [s for f in text_string_to_metric_families(metrics) for s in f.samples]
                return len({s.labels["pid"] for s in samples if s.name == "sentiment_process_requests"})

            async def predict(i: int) -> int:
                async with session.post(server.url + "/v1/predict", json={"text": f"review {i}"}) as resp:
                    await resp.read()
                    return resp.status

            for _ in range(150):  # the second child may still be loading when the first is ready
                if await children() == 2:
                    break
                await asyncio.sleep(0.2)
            else:
                pytest.fail(f"the second child never answered: {server.log_path.read_text()[-2000:]}")
            sent = 40  # both children answer some: all on one of the two has odds 2 / 2**40
            assert await asyncio.gather(*(predict(i) for i in range(sent))) == [200] * sent
            for _ in range(6):  # several polls, answered by either child
                stats = await (await session.get(server.url + "/v1/stats")).json()
                assert stats["requests"]["total"] == sent and stats["batches"]["texts"] == sent
                assert stats["latency_seconds"]["count"] == sent
