"""The cost-curve rule as a pure function: given measured times, the budget and the wait it sets."""

from __future__ import annotations

import pytest

from server.costcurve import CurvePoint, curve_shapes, plan_batches, relative_costs


def curve(per_text_ms: dict[int, float], widths=(32, 128)) -> list[CurvePoint]:
    """Points whose time per text at `rows` is per_text_ms[rows] * width / 128."""
    return [
        CurvePoint(rows, width, rows * per_text_ms[rows] * width / 128 / 1000)
        for width in widths
        for rows in per_text_ms
    ]


def test_shapes_cover_a_short_and_a_full_width_up_to_the_batch_cap():
    assert curve_shapes(128, 32) == [(r, w) for w in (32, 128) for r in (1, 2, 4, 8, 16)]
    assert curve_shapes(256, 4) == [(r, w) for w in (64, 256) for r in (1, 2, 4)]
    assert curve_shapes(16, 1) == [(1, 8), (1, 16)]


def test_a_flat_curve_runs_texts_alone_without_waiting():
    # ONNX Runtime dynamic int8 on the Xeon (issue 20): 150 texts/s alone, 154 at 4, 145 at 8.
    points = curve({1: 1000 / 150, 2: 1000 / 152, 4: 1000 / 154, 8: 1000 / 145, 16: 1000 / 120})
    plan = plan_batches(points, max_length=128, max_wait_ms=2.0, max_batch_size=32)
    assert (plan.max_batch_tokens, plan.max_wait_ms, plan.best_rows) == (128, 0.0, 1)
    assert plan.gain == pytest.approx(1 - 150 / 154)
    assert "under 10%" in plan.reason and "batch 4" in plan.reason


def test_a_falling_curve_batches_to_the_smallest_size_near_the_cheapest():
    # OpenVINO static int8 (issue 20): 167 texts/s alone, 190 at 4, 204 at 8, 205 at 32.
    points = curve({1: 1000 / 167, 2: 1000 / 180, 4: 1000 / 190, 8: 1000 / 204, 16: 1000 / 205})
    plan = plan_batches(points, max_length=128, max_wait_ms=2.0, max_batch_size=32)
    costs = relative_costs(points)
    assert costs[1] == pytest.approx(1.0) and costs[8] == pytest.approx(167 / 204)
    # 4 is 6.2% above the cheapest (16), over NEAR_BEST; 8 is within it.
    assert (plan.best_rows, plan.max_batch_tokens, plan.max_wait_ms) == (8, 8 * 128, 2.0)
    assert plan.gain == pytest.approx(1 - 167 / 205)
    assert plan.to_dict()["relative_cost"]["8"] == pytest.approx(167 / 204, abs=1e-4)
    # the batch cap bounds the budget
    assert plan_batches(points, 128, 2.0, max_batch_size=4).max_batch_tokens == 4 * 128


def test_no_usable_timings_run_alone():
    assert plan_batches([], 128, 2.0, 32).max_batch_tokens == 128
    only_batches = [CurvePoint(4, 128, 0.01), CurvePoint(8, 128, 0.02)]  # no text alone to compare with
    assert plan_batches(only_batches, 256, 2.0, 32).max_wait_ms == 0.0
