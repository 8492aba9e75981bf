"""The queueing bound against queueing theory's closed forms."""
from __future__ import annotations

import math

import numpy as np
import pytest

from loadtest.queueing import bound_fraction, fifo_p95_ms, service_times


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
