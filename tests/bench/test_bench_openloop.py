"""Open-loop generator against the stand-in server, and the rate search as pure numbers."""

from __future__ import annotations

import random
import time

import pytest
from standin_server import SEEN, create_app

from bench.httpclient import LeanClient
from bench.openloop import (
    closed_loop_throughput,
    payloads,
    poisson_arrivals,
    run_step,
    wait_for_quiet,
)
from bench.rates import capacity, next_rate


def test_search_starts_grows_then_bisects():
    assert next_rate([], start=70.0) == 70.0
    assert next_rate([(70.0, True)], start=70.0) == pytest.approx(91.0)
    history = [(70.0, True), (91.0, False)]
    assert next_rate(history, start=70.0) == pytest.approx(80.5)
    history += [(80.5, True)]
    assert next_rate(history, start=70.0) == pytest.approx(85.75)
    assert capacity(history) == 80.5


def test_search_stops_within_tolerance_and_below_floor():
    assert next_rate([(97.5, True), (100.0, False)], start=1, tolerance=0.03) is None
    assert next_rate([(96.0, True), (100.0, False)], start=1, tolerance=0.03) == pytest.approx(98.0)
    assert next_rate([(0.09, False)], start=1, floor=0.1) is None
    assert capacity([(0.09, False)]) == 0.0
    # The step limit: the same history is over once it holds max_steps rates, not before.
    assert next_rate([(70.0, True), (91.0, False)], start=70.0, max_steps=2) is None
    assert next_rate([(70.0, True), (91.0, False)], start=70.0, max_steps=3) == pytest.approx(80.5)
    assert next_rate([], start=70.0, max_steps=0) is None


def test_search_first_failure_bisects_down_from_zero():
    assert next_rate([(50.0, False)], start=50.0) == 25.0


def test_noisy_pass_above_a_failure_is_not_capacity():
    history = [(50.0, True), (65.0, False), (70.0, True)]
    assert capacity(history) == 50.0
    assert next_rate(history, start=50.0) == pytest.approx(57.5)


def test_poisson_arrivals_have_the_asked_rate():
    arrivals = poisson_arrivals(200.0, 20.0, random.Random(1))
    assert 3800 < len(arrivals) < 4200
    assert all(0 <= a < 20.0 for a in arrivals) and arrivals == sorted(arrivals)


async def test_step_against_fast_server(aiohttp_server):
    server = await aiohttp_server(create_app(delay_s=0.0))
    async with LeanClient(str(server.make_url(""))) as client:
        step = await run_step(
            client, requests(client, payloads(["a good film", "bad"])), rate=100.0, duration_s=1.0, seed=3
        )
    assert 60 < step.sent < 140 and step.errors == 0 and step.ok == step.sent
    assert len(server.app[SEEN]) == step.sent
    assert {body["text"] for body in server.app[SEEN]} == {"a good film", "bad"}
    assert step.p95_ms < 150 and step.meets(200, 0.01)
    assert 0 <= step.client_cpu_cores < 2


async def test_step_is_open_loop_and_latency_shows_server_delay(aiohttp_server):
    # 300 ms per answer, ~60 arrivals in 1 s: a closed loop of one client would need ~18 s.
    server = await aiohttp_server(create_app(delay_s=0.3))
    async with LeanClient(str(server.make_url(""))) as client:
        t0 = time.perf_counter()
        step = await run_step(client, requests(client, payloads(["x"])), rate=60.0, duration_s=1.0, seed=0)
        wall = time.perf_counter() - t0
    assert step.sent >= 40 and step.errors == 0
    assert wall < 4.0
    assert 300 <= step.p50_ms < 1000 and not step.meets(200, 0.01)


async def test_step_counts_errors_by_kind(aiohttp_server):
    server = await aiohttp_server(create_app(delay_s=0.0))
    async with LeanClient(str(server.make_url(""))) as client:
        step = await run_step(client, requests(client, [b'{"text": 5}']), rate=50.0, duration_s=1.0)
    assert step.errors == step.sent > 0 and step.error_kinds == {"422": step.sent}
    assert step.error_rate == 1.0 and not step.meets(10_000, 0.5)


async def test_step_counts_timeouts(aiohttp_server):
    server = await aiohttp_server(create_app(delay_s=0.5))
    async with LeanClient(str(server.make_url(""))) as client:
        step = await run_step(client, requests(client, payloads(["x"])), rate=50.0, duration_s=1.0, timeout_s=0.1)
    assert step.errors == step.sent >= 40 and step.error_kinds == {"timeout": step.sent}
    assert 100 <= step.p50_ms < 400  # each one given up at its timeout, not at the server's answer


async def test_closed_loop_counts_answers(aiohttp_server):
    server = await aiohttp_server(create_app(delay_s=0.05))
    async with LeanClient(str(server.make_url(""))) as client:
        rps = await closed_loop_throughput(client, requests(client, payloads(["x"])), concurrency=4, duration_s=1.0)
    assert 20 < rps <= 4 / 0.05 * 1.1  # 4 clients, 50 ms each: at most ~80/s
    assert len(server.app[SEEN]) >= 20


def requests(client: LeanClient, bodies: list[bytes]) -> list[bytes]:
    return [client.build("POST", "/v1/predict", body) for body in bodies]


async def test_wait_for_quiet_reads_other_load():
    other = await wait_for_quiet(max_other_cores=64.0, max_wait_s=2.0, interval_s=0.2)
    assert other is not None and 0.0 <= other < 64.0
    assert await wait_for_quiet(0.0, 0.0) is None
