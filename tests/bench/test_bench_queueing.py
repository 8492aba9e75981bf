"""The queueing bound against queueing theory's closed forms, and the ideal server under the bench's search."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.queueing import bound_fraction, fifo_p95_ms, searched_fractions, service_times


def test_service_times_average_to_the_ceiling():
    service = service_times([100, 200, 300], ceiling_texts_per_s=40.0, workers=2)
    assert service.mean() == pytest.approx(2 / 40.0)
    assert service[2] == pytest.approx(3 * service[0])  # cost in proportion to tokens
    with pytest.raises(ValueError):
        service_times([], 40.0, 2)


def test_light_load_waits_for_nothing():
    assert fifo_p95_ms(np.array([0.02]), workers=2, rate=0.5, arrivals=2000) == pytest.approx(20.0)


def test_mm1_p95_matches_the_closed_form():
    # M/M/1: time in system is exponential with rate mu - lambda, so p95 = ln(20) / (mu - lambda).
    tokens = np.random.default_rng(1).exponential(100.0, 200_000)
    service = service_times(tokens, ceiling_texts_per_s=10.0, workers=1)
    p95 = fifo_p95_ms(service, workers=1, rate=5.0, arrivals=100_000)
    assert p95 == pytest.approx(math.log(20) / 5.0 * 1000, rel=0.08)


def test_bound_grows_with_the_limit_and_is_zero_when_unreachable():
    tokens = [50, 120, 200, 256, 256, 256]
    tight = bound_fraction(tokens, ceiling_texts_per_s=90.0, workers=2, p95_limit_ms=100, arrivals=10_000)
    loose = bound_fraction(tokens, ceiling_texts_per_s=90.0, workers=2, p95_limit_ms=400, arrivals=10_000)
    assert 0.3 < tight < loose < 1.0
    # A text alone takes up to 2 / 90 s * 256 / 206 = 28 ms: a 10 ms p95 is out of reach.
    assert bound_fraction(tokens, 90.0, 2, p95_limit_ms=10, arrivals=10_000) == 0.0


TOKENS = [50, 120, 200, 256, 256, 256]


def test_same_search_runs_the_bench_search_rates():
    # Nothing ever misses a 1-minute p95: every search grows from the start rate by 1.3x per
    # step and runs out of steps, as bench.search does (openloop.next_rate).
    found = searched_fractions(
        TOKENS, 90.0, 2, p95_limit_ms=60_000, start_rate=10.0, step_s=2.0, max_steps=4, searches=3
    )
    assert found == pytest.approx([10.0 * 1.3**3 / 90.0] * 3)
    # A text alone takes up to 28 ms: a 10 ms p95 fails at every rate, and nothing is found.
    assert searched_fractions(TOKENS, 90.0, 2, 10, start_rate=10.0, step_s=2.0, max_steps=4, searches=3) == [0.0] * 3


def test_same_search_lands_near_the_bound_and_varies():
    bound = bound_fraction(TOKENS, 90.0, 2, p95_limit_ms=200, arrivals=20_000)
    found = searched_fractions(
        TOKENS, 90.0, 2, 200, start_rate=0.7 * 80.0, step_s=10.0, max_steps=6, searches=30, seed=3
    )
    # Each step's p95 is one sample: the search does not land on the same rate every time,
    # but near the bound (the grid steps by 3-4% of the ceiling there).
    assert abs(float(np.median(found)) - bound) < 0.08
    assert len(set(found)) > 2
    # Steps of a few requests start empty and end before a queue builds: nearly every rate passes.
    short = searched_fractions(
        TOKENS, 90.0, 2, 200, start_rate=0.7 * 80.0, step_s=0.5, max_steps=6, searches=30, seed=3
    )
    assert float(np.median(short)) > float(np.median(found))
