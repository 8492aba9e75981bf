"""The admission rule and the batch cost model as pure functions, with numbers."""

from __future__ import annotations

import pytest

from server import admission
from server.admission import Backlog, Share, ThresholdController, TokenEstimate, decide, steer
from server.costmodel import BatchCostModel, Line, fit, seeded

LINE = Line(per_token=0.001, per_batch=0.002)  # 1 ms a token, 2 ms a batch


# -- the cost model -------------------------------------------------------------


def test_fit_recovers_a_known_line_from_exact_batches():
    model = BatchCostModel()
    for tokens in (16, 64, 128, 256, 32, 200) * 5:
        model.observe(tokens, LINE.seconds(tokens))
    assert model.line.per_token == pytest.approx(0.001, rel=1e-6)
    assert model.line.per_batch == pytest.approx(0.002, rel=1e-5)


def test_fit_follows_the_machine_when_batches_slow_down():
    model = seeded([(t, LINE.seconds(t)) for t in (16, 64, 128, 256)])
    slow = Line(LINE.per_token * 1.5, LINE.per_batch * 1.5)  # the box's speed moved by a third
    for tokens in (32, 128, 256, 64) * 100:  # 400 batches: the old ones weigh 0.99^400 ~ 2%
        model.observe(tokens, slow.seconds(tokens))
    assert model.line.seconds(256) == pytest.approx(slow.seconds(256), rel=0.03)
    for tokens in (32, 128, 256, 64) * 100:  # and back
        model.observe(tokens, LINE.seconds(tokens))
    assert model.line.seconds(256) == pytest.approx(LINE.seconds(256), rel=0.03)


def test_equal_batches_rescale_the_last_line_instead_of_tilting_it():
    model = seeded([(t, LINE.seconds(t)) for t in (16, 64, 128, 256)])
    for _ in range(500):  # every text at the cap, twice as slow: no slope can be fitted from these
        model.observe(256, 2 * LINE.seconds(256))
    line = model.line
    assert line.seconds(256) == pytest.approx(2 * LINE.seconds(256), rel=0.01)
    assert line.per_token / line.per_batch == pytest.approx(LINE.per_token / LINE.per_batch, rel=0.05)


def test_fit_never_goes_negative():
    # Steeper than proportional (a negative intercept): the line goes through the origin.
    line = fit(2, 100 + 200, 0.05 + 0.2, 100**2 + 200**2, 100 * 0.05 + 200 * 0.2, None)
    assert line.per_batch == 0.0 and line.per_token == pytest.approx(0.25 / 300)
    # One observation: through the origin.
    assert fit(1, 100, 0.1, 100**2, 10, None) == Line(0.001, 0.0)


def test_no_timings_no_line():
    assert seeded([]).line is None


# -- predicted wait and the rule ------------------------------------------------


def test_estimated_batches_big_texts_run_alone_small_ones_share():
    # 3 texts over half of a 256 budget run alone; 10 small ones of 20 tokens share batches of <= 256 tokens.
    assert admission.estimated_batches(10, 200, 3, 32, 256) == 3 + 1
    assert admission.estimated_batches(40, 800, 0, 32, 256) == 4  # ceil(800 / 256)
    assert admission.estimated_batches(40, 400, 0, 32, 8192) == 2  # ceil(40 / 32): the count limit
    assert admission.estimated_batches(0, 0, 5, 32, 256) == 5


def test_predicted_wait_spreads_the_work_ahead_over_the_workers():
    backlog = Backlog(running_s=0.030, queued_tokens=400, queued_batches=4, tokenizing_tokens=100, tokenizing_texts=1)
    # (30 ms running + 400 tokens + 4 batches + 100 tokens + 1 batch) / 2 workers
    assert admission.predicted_wait(backlog, LINE, 2) == pytest.approx((0.030 + 0.408 + 0.102) / 2)
    assert admission.predicted_wait(Backlog(), LINE, 2) == 0.0


def test_own_seconds_one_text_on_one_worker_several_spread():
    assert admission.own_seconds([100], LINE, 2) == pytest.approx(0.102)
    # four texts of 100 on two workers: two each, but never faster than the longest alone
    assert admission.own_seconds([100] * 4, LINE, 2) == pytest.approx(0.204)
    assert admission.own_seconds([200, 10], LINE, 4) == pytest.approx(0.202)


def test_decide_admits_in_time_refuses_late_and_lets_a_few_late_ones_in():
    # 20 ms elapsed + 150 ms ahead + 25 ms own = 195 ms: within a 200 ms threshold.
    assert decide(0.020, 0.150, 0.025, 0.200) == admission.ADMIT
    # 215 ms: refused, unless the late allowance lasts and it is within the late limit (260 ms).
    assert decide(0.020, 0.170, 0.025, 0.200) == admission.REFUSE
    assert decide(0.020, 0.170, 0.025, 0.200, 0.260, late_allowed=True) == admission.ADMIT_LATE
    assert decide(0.020, 0.300, 0.025, 0.200, 0.260, late_allowed=True) == admission.REFUSE
    # Nothing ahead: always admitted, however slow the model is.
    assert decide(0.0, 0.0, 0.500, 0.200) == admission.ADMIT


def test_retry_after_is_the_drain_time_in_whole_seconds():
    assert admission.retry_after_s(0.15) == 1
    assert admission.retry_after_s(2.2) == 3


def test_latest_start_leaves_room_for_its_own_run():
    assert admission.latest_start(10.0, 0.26, 0.02) == pytest.approx(10.24)


def test_share_fades_with_time_not_with_the_count_of_events():
    share = Share(tau_s=1.0)
    now = 0.0
    for k in range(100):  # a burst: half refused
        now += 0.01
        share.record(now, hit=k % 2 == 0)
    assert share.value == pytest.approx(0.5, abs=0.02)
    for _ in range(30):  # then 3 s of calm at 10 requests/s: the burst hardly counts
        now += 0.1
        share.record(now, hit=False)
    assert share.value < 0.15
    assert Share().value == 0.0


def test_policy_is_calm_with_the_slas_own_tail_and_strict_when_overloaded():
    policy = admission.POLICY
    assert policy.late_share(overloaded=False) == 0.05 and policy.late_share(overloaded=True) < 0.05
    assert policy.late_limit > 1.0 and 0 < policy.overloaded_at < 0.05


# -- the steered threshold ----------------------------------------------------------


def test_steer_drops_in_proportion_and_rises_slowly_within_bounds():
    assert steer(0.200, 0.340, 0.170, 0.1, 0.2, 1.05) == pytest.approx(0.100)  # p95 twice the goal: halved
    assert steer(0.200, 0.800, 0.170, 0.1, 0.2, 1.05) == pytest.approx(0.100)  # at most halved at once
    assert steer(0.100, 0.085, 0.170, 0.1, 0.2, 1.05) == pytest.approx(0.105)  # under the goal: +5%
    assert steer(0.199, 0.085, 0.170, 0.1, 0.2, 1.05) == pytest.approx(0.200)  # never above the highest
    assert steer(0.110, 0.500, 0.170, 0.1, 0.2, 1.05) == pytest.approx(0.100)  # never below the lowest


def test_controller_tightens_only_when_told_the_server_is_overloaded():
    ctl = ThresholdController(0.200, every=8)
    for k in range(64):  # late answers while calm: the threshold stays where overload would start
        ctl.observe(k * 0.01, 0.500, tighten=False)
    assert ctl.threshold(0.64) == pytest.approx(0.85 * 0.200)


def test_controller_tightens_under_late_answers_and_relaxes_when_they_are_fast():
    ctl = ThresholdController(0.200, target=0.85, every=8)
    now = 0.0
    for _ in range(64):  # answers at 250 ms: over the 170 ms goal
        now += 0.01
        ctl.observe(now, 0.250)
    assert ctl.threshold(now) == pytest.approx(0.100)  # down to the lowest, half the budget
    for _ in range(400):  # fast answers: back up, but not beyond `high` (under the budget: overload starts there)
        now += 0.01
        ctl.observe(now, 0.050)
    assert ctl.threshold(now) == pytest.approx(0.85 * 0.200)


def test_controller_forgets_an_overload_that_ended():
    ctl = ThresholdController(0.200, target=0.85, every=8, max_age_s=2.0)
    now = 0.0
    for _ in range(64):  # a burst answered at 600 ms pulls the threshold to its lowest
        now += 0.01
        ctl.observe(now, 0.600)
    assert ctl.threshold(now) == pytest.approx(0.100)
    now += 2.5  # the burst is over; answers come back fast
    for _ in range(32):
        now += 0.05
        ctl.observe(now, 0.050)
    # 32 fast answers, 4 updates: the burst's 64 late ones no longer count, so it rose 1.2x each time.
    assert ctl.threshold(now) == pytest.approx(min(0.170, 0.100 * 1.2**4))


def test_controller_lapses_to_the_budget_when_nothing_is_answered():
    ctl = ThresholdController(0.200, every=1, horizon_s=5.0)
    start = ctl.threshold(0.0)
    ctl.observe(1.0, 1.0)
    assert ctl.threshold(1.0) < start
    assert ctl.threshold(7.0) == start  # everything refused for 6 s: the threshold cannot stay stuck
    ctl.observe(7.0, 0.01)
    assert ctl.threshold(7.0) == start


def test_token_estimate_learns_the_ratio_from_texts_under_the_cap():
    est = TokenEstimate(max_length=256, tokens_per_char=0.3, weight=0.1)
    assert est.estimate(100) == 2 + 30 and est.estimate(10_000) == 256
    for _ in range(100):
        est.observe(400, 102)  # 100 word pieces for 400 characters
        est.observe(5000, 256)  # truncated: says nothing of the ratio
    assert est.tokens_per_char == pytest.approx(0.25, rel=0.01)
