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


def test_the_plan_sets_the_servers_budget_only_where_it_is_left_to_the_device():
    from types import SimpleNamespace

    from server.config import ServerConfig
    from server.inference import batch_limits, batch_plan

    cpu = SimpleNamespace(info={"providers": ["CPUExecutionProvider"]}, max_length=128)
    gpu = SimpleNamespace(info={"providers": ["CUDAExecutionProvider"]}, max_length=128)
    falling = curve({1: 6.0, 2: 5.7, 4: 5.5, 8: 4.9, 16: 4.9})
    flat = curve({1: 6.0, 2: 6.0, 4: 6.1, 8: 6.2, 16: 6.4})
    config = ServerConfig(max_wait_ms=3.0)
    plan = batch_plan(config, cpu, falling)
    limits = batch_limits(config, cpu, plan)
    assert plan is not None and (limits.max_batch_tokens, limits.max_wait_s) == (8 * 128, 0.003)
    limits = batch_limits(config, cpu, batch_plan(config, cpu, flat))
    assert (limits.max_batch_tokens, limits.max_wait_s) == (128, 0.0)  # alone: nothing to wait for
    # a budget given by flag, a GPU, or no curve: the plan has no say
    assert batch_plan(ServerConfig(max_batch_tokens=512), cpu, falling) is None
    assert batch_plan(config, gpu, falling) is None
    assert batch_plan(config, cpu, []) is None
    assert batch_limits(config, cpu, None).max_batch_tokens == 256


async def test_the_server_times_its_curve_at_start_up_and_shows_the_plan(aiohttp_client, tiny_model_dir):
    """The tiny exported model on ONNX Runtime: the runner times the curve's grid, the budget in
    force is the plan's, /v1/model shows both, and the cost model starts from the same points."""
    from server.app import create_app
    from server.config import ServerConfig
    from server.state import SERVICE

    client = await aiohttp_client(create_app(ServerConfig(model_dir=tiny_model_dir, intra_op_threads=1)))
    body = await (await client.get("/v1/model")).json()
    timed = body["batching"]["cost_curve"]
    assert [(p["rows"], p["width"]) for p in timed["points"]] == curve_shapes(64, 32)
    assert all(p["ms"] > 0 for p in timed["points"])
    plan = timed["plan"]
    assert plan["max_batch_tokens"] == body["batching"]["max_batch_tokens"] == plan["best_rows"] * 64
    assert set(plan["relative_cost"]) == {"1", "2", "4", "8", "16"} and plan["relative_cost"]["1"] == 1.0
    service = client.app[SERVICE]
    assert service.cost.observed == len(timed["points"]) and body["batching"]["cost_model"] is not None
    # the same model with the budget given: timed still (for admission), not planned
    client = await aiohttp_client(
        create_app(ServerConfig(model_dir=tiny_model_dir, intra_op_threads=1, max_batch_tokens=300))
    )
    body = await (await client.get("/v1/model")).json()
    assert body["batching"]["max_batch_tokens"] == 300 and body["batching"]["cost_curve"]["plan"] is None
    assert len(body["batching"]["cost_curve"]["points"]) == 10
