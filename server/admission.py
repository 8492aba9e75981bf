"""Latency-aware admission: refuse at once what would finish after its budget.

A request is admitted when its predicted finish fits its latency budget:

    elapsed (since it arrived) + wait (the work ahead, spread over the workers)
        + own (its texts' inference) <= threshold

Otherwise it gets 503 `overloaded` with a Retry-After of the queue's drain time, having cost
the server no tokenizing and no inference. This is BentoML's latency-model shedding, applied
at the door (as text-embeddings-inference's `try_acquire` and Triton's queue policy refuse at
the door) rather than after the request has queued: under overload an admitted request
still meets its budget, and a refused one learns it in milliseconds and can retry
elsewhere, where a plain bounded queue makes everyone wait its full length and then fail.

The SLA is a p95, and refusals count against its 1% error budget, so the rule has two modes:

- calm (under `Policy.overloaded_at` of recent requests refused): the threshold is the budget,
  and up to 5% of admitted requests (the SLA's own tail) may be predicted late, up to 1.5x the
  budget. Below capacity, where a Poisson burst now and then makes a few requests late, nothing
  is refused that the budget-off server would have served within its SLA;
- overloaded: the threshold is steered (ThresholdController) so that the answered requests'
  p95 sits under the budget, and only 1% may be admitted late. Steering on the measured
  quantile absorbs the cost model's bias and error, the event loop's lag, and a machine that
  slows down.

Everything here is a pure function of numbers or a small single-threaded tracker, so the rule
is tested without an event loop (tests/server/test_admission.py).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from server.costmodel import Line


@dataclass(frozen=True)
class Backlog:
    """The work ahead of a new request, as the batcher and the tokenizer stage hold it."""

    running_s: float = 0.0  # predicted seconds left of the batches being run, summed over workers
    queued_tokens: int = 0  # tokens of the texts waiting for a batch
    queued_batches: float = 0.0  # the batches those texts will make (estimated_batches)
    tokenizing_tokens: int = 0  # estimated tokens of admitted texts not yet tokenized
    tokenizing_texts: int = 0


def estimated_batches(
    small_texts: int, small_tokens: int, big_texts: int, max_batch_size: int, max_batch_tokens: int
) -> float:
    """How many batches queued texts will make: a big text (over half the token budget) runs
    alone, since no second text of its width fits; the small ones fill batches up to the size
    and token limits."""
    if small_texts <= 0:
        return float(max(big_texts, 0))
    return big_texts + max(math.ceil(small_texts / max_batch_size), math.ceil(small_tokens / max_batch_tokens))


def predicted_wait(backlog: Backlog, line: Line, workers: int) -> float:
    """Seconds until a worker is free for a text queued now: everything ahead of it, spread
    over the workers (they pull batches in turn, so the queue drains at their joint rate)."""
    queued = line.seconds(backlog.queued_tokens, backlog.queued_batches)
    tokenizing = line.seconds(backlog.tokenizing_tokens, backlog.tokenizing_texts)
    return max(backlog.running_s + queued + tokenizing, 0.0) / max(workers, 1)


def own_seconds(token_counts: Sequence[int], line: Line, workers: int) -> float:
    """Seconds of inference a request's own texts need once they reach a worker: one text
    runs on one worker; several spread over the workers, but never faster than the longest."""
    if not token_counts:
        return 0.0
    singles = [line.seconds(t) for t in token_counts]
    return max(max(singles), sum(singles) / max(workers, 1))


ADMIT, ADMIT_LATE, REFUSE = "admit", "admit_late", "refuse"


def decide(
    elapsed_s: float,
    wait_s: float,
    own_s: float,
    threshold_s: float,
    late_limit_s: float = 0.0,
    late_allowed: bool = False,
) -> str:
    """ADMIT a request predicted to finish within `threshold_s`; ADMIT_LATE one predicted to
    finish within `late_limit_s` while the late allowance lasts; otherwise REFUSE.

    With nothing ahead (`wait_s` 0) a request is always admitted: refusing cannot make it any
    faster, and a server whose model alone takes longer than the budget must still serve.
    """
    predicted = elapsed_s + wait_s + own_s
    if wait_s <= 0.0 or predicted <= threshold_s:
        return ADMIT
    if late_allowed and predicted <= late_limit_s:
        return ADMIT_LATE
    return REFUSE


def retry_after_s(wait_s: float) -> int:
    """Retry-After (whole seconds, as HTTP has it): the time the queue ahead needs to drain."""
    return max(1, math.ceil(wait_s))


def latest_start(arrival: float, limit_s: float, own_s: float) -> float:
    """The last moment a queued text can start and still finish within `limit_s` of its
    arrival: a text still queued then is shed (never run), since running it would only make it
    hopelessly late and delay the texts behind it."""
    return arrival + limit_s - own_s


class Share:
    """The share of recent events that were hits, both counted with weights that fade with
    time (by 1/e every `tau_s`): a burst of refusals stops counting within seconds of the
    burst, however few requests come after it."""

    def __init__(self, tau_s: float = 1.0) -> None:
        self.tau_s = tau_s
        self._hits = self._events = 0.0
        self._last = 0.0

    @property
    def value(self) -> float:
        return self._hits / self._events if self._events else 0.0

    def record(self, now: float, hit: bool) -> None:
        fade = math.exp(-max(now - self._last, 0.0) / self.tau_s)
        self._last = now
        self._hits = self._hits * fade + (1.0 if hit else 0.0)
        self._events = self._events * fade + 1.0


@dataclass(frozen=True)
class Policy:
    """The rule's constants, in one place (their reasons in the module's docstring)."""

    # Refused share of recent requests above which the server counts as overloaded.
    overloaded_at: float = 0.03
    # Share of admitted requests that may be predicted late: calm, the SLA's own 5%; overloaded, 1%.
    late_share_calm: float = 0.05
    late_share_overloaded: float = 0.01
    # The latest predicted finish (x budget) a late admission may have; a queued text that could
    # only finish later is shed.
    late_limit: float = 1.5

    def late_share(self, overloaded: bool) -> float:
        return self.late_share_overloaded if overloaded else self.late_share_calm


POLICY = Policy()


class ThresholdController:
    """The predicted finish a request may have to be admitted: a threshold steered so that the
    answered requests' latency quantile (p95, the SLA's) sits at `target` x the budget.

    The cost model's prediction errs (a batch preempted, a text longer than estimated, the
    event loop's own lag), and under sustained overload the queue sits right at the threshold,
    so a threshold at the budget would answer about half its requests late. Steering on the
    measured quantile tightens it until the admitted requests' p95 is at the target (down to
    `low` x budget), and relaxes it back (up to `high` x budget) when the predictions run
    pessimistic: it absorbs the cost model's bias and error, measured on the requests themselves.
    `high` is under the budget because overload starts from there: the steering needs a window
    of answers to react, and the answers of that first window must already be in time.

    Every `every` answers, the quantile of the last `window` answered within `max_age_s` is
    compared to the goal: above it, the threshold drops in proportion at once (at most halved);
    below it, it rises by at most `rise` per update. The age limit matters once an overload
    ends: the burst's late answers would otherwise fill the window until `window` new ones
    replaced them, pinning the threshold low and refusing requests the server could now answer
    in time (seen after a closed-loop burst: ~4 s of refusals at 70% of capacity). It lapses
    back to its start (`high` x budget) when no answer was seen for `horizon_s`, so a threshold
    that refused everything cannot stay stuck.
    """

    def __init__(
        self,
        budget_s: float,
        quantile: float = 0.95,
        target: float = 0.8,
        low: float = 0.5,
        high: float = 0.85,
        window: int = 64,
        every: int = 8,
        rise: float = 1.2,
        horizon_s: float = 5.0,
        max_age_s: float = 2.0,
    ) -> None:
        if not 0.0 < quantile < 1.0:
            raise ValueError(f"quantile must be in (0, 1), got {quantile}")
        if not 0.0 < low <= high:
            raise ValueError(f"need 0 < low <= high, got {low}, {high}")
        self.budget_s, self.quantile, self.target = budget_s, quantile, target
        self.low, self.high, self.every, self.rise, self.horizon_s = low, high, every, rise, horizon_s
        self.max_age_s = max_age_s
        self._latencies: deque[tuple[float, float]] = deque(maxlen=window)  # (answered at, latency)
        self._since = 0
        self._threshold = high * budget_s
        self._last = -float("inf")

    def threshold(self, now: float) -> float:
        return self._threshold if now - self._last <= self.horizon_s else self.high * self.budget_s

    def observe(self, now: float, latency_s: float, tighten: bool = True) -> None:
        """One answered request's latency (arrival to answer). `tighten` False (the server is
        calm, and its threshold is the budget): the threshold only relaxes back toward the
        budget, so that overload, when it comes, starts from there and not from a threshold that
        a busy but unrefused spell pulled down."""
        if now - self._last > self.horizon_s:  # lapsed: start afresh
            self._latencies.clear()
            self._since, self._threshold = 0, self.high * self.budget_s
        self._last = now
        self._latencies.append((now, latency_s))
        while self._latencies[0][0] < now - self.max_age_s:
            self._latencies.popleft()
        self._since += 1
        if self._since >= self.every:
            self._since = 0
            measured = quantile_of([latency for _, latency in self._latencies], self.quantile) if tighten else 0.0
            self._threshold = steer(
                self._threshold,
                measured,
                self.target * self.budget_s,
                self.low * self.budget_s,
                self.high * self.budget_s,
                self.rise,
            )


def steer(threshold: float, measured: float, goal: float, lowest: float, highest: float, rise: float) -> float:
    """The next threshold (pure): down in proportion when the measured quantile is over the
    goal (at most halved at once), up by at most `rise` when it is under (or unmeasured, 0),
    within bounds."""
    if measured <= 0:
        return min(highest, threshold * rise)
    factor = max(0.5, goal / measured) if measured > goal else min(rise, goal / measured)
    return min(highest, max(lowest, threshold * factor))


def quantile_of(values: Sequence[float] | deque[float], q: float) -> float:
    """The q-quantile (nearest rank) of `values`; 0.0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))])


class TokenEstimate:
    """Tokens of a text not yet tokenized, from its length in characters.

    Admission runs before tokenizing (a refusal must be cheap), so it estimates a request's
    size from characters: tokens per character are learned from the texts the server has
    tokenized (those under the cap, where the ratio is not cut), and the estimate is capped at
    the model's max length, as truncation caps the real count.
    """

    def __init__(self, max_length: int, tokens_per_char: float = 0.3, weight: float = 0.02) -> None:
        self.max_length = max_length
        self.tokens_per_char = tokens_per_char  # English word pieces: ~0.25; start a little high
        self.weight = weight

    def estimate(self, chars: int) -> int:
        return min(self.max_length, 2 + math.ceil(chars * self.tokens_per_char))

    def observe(self, chars: int, tokens: int) -> None:
        if tokens < self.max_length and chars > 0:
            self.tokens_per_char += self.weight * ((tokens - 2) / chars - self.tokens_per_char)
