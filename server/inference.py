"""The inference layer between HTTP and the batcher: `await service.predict(texts, arrival)`.

In the spirit of text-embeddings-inference's `Infer`: one object owns admission, the
tokenizer stage, the length check, submission to the micro-batcher, gathering the texts'
futures and building the answer. The HTTP handler parses, calls and serialises; offline
scoring (server/batch_predict.py) and the in-process benchmark call the same object, so
admission is decided in one place.

Admission (server/admission.py), when a latency budget is set: a request that the cost model
says would finish after its budget is refused at once (`Overloaded`, before tokenizing);
queued texts that can no longer meet it are shed before they run (`Shed`). The cost model
(server/costmodel.py) starts from batches timed at start-up and follows every batch run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from core.layout import thread_layout, uses_cuda
from core.tokenization import EncodedTexts
from server import admission
from server.batcher import BatchResult, MicroBatcher, QueueFull
from server.batching import BatchLimits
from server.config import ServerConfig
from server.costcurve import BatchPlan, CurvePoint, plan_batches
from server.costmodel import seeded
from server.encoder import Encoder
from server.looplag import LoopLag
from server.metrics import Metrics
from server.runner import Runner
from server.tokenizing import TokenizerStage

log = logging.getLogger("server.inference")

CPU_BATCH_TOKENS, GPU_BATCH_TOKENS = 256, 8192
# Where the budget is off, goodput still counts answers within the SLA the service is built for.
SLA_S = 0.2


class Overloaded(Exception):
    """Refused at admission: the request would finish after its latency budget."""

    def __init__(self, wait_s: float, budget_s: float) -> None:
        super().__init__(
            f"predicted queue wait {wait_s * 1000:.0f} ms leaves no room in the {budget_s * 1000:.0f} ms latency budget"
        )
        self.wait_s = wait_s
        self.budget_s = budget_s
        self.retry_after_s = admission.retry_after_s(wait_s)


class TextTooLong(Exception):
    """With truncation off: text `index` has more tokens than the model takes."""

    def __init__(self, index: int, tokens: int, max_length: int) -> None:
        super().__init__(f"text {index} has {tokens} tokens; at most {max_length}")
        self.index, self.tokens, self.max_length = index, tokens, max_length


@dataclass(frozen=True)
class Answer:
    probabilities: np.ndarray  # [texts, labels], input order
    batch_size: int  # the largest batch any of the texts ran in
    labels: tuple[str, ...]
    tokens: tuple[int, ...] = ()  # per text: ids the model saw, [CLS] and [SEP] included
    truncated: tuple[bool, ...] = ()  # per text: cut to the model's max_length

    @cached_property
    def top(self) -> tuple[list[int], list[list[float]]]:
        """Each text's best label index, and its probabilities as floats, worked out once for
        the metrics, the response and the prediction log. One argmax and one tolist for all
        rows: numpy scalars one at a time cost more."""
        return self.probabilities.argmax(axis=1).tolist(), self.probabilities.tolist()

    def predictions(self) -> list[dict[str, Any]]:
        labels = self.labels
        return [
            {"label": labels[best], "score": row[best], "probabilities": dict(zip(labels, row))}
            for best, row in zip(*self.top)
        ]


def on_gpu(runner: Runner) -> bool:
    return uses_cuda(runner.info.get("providers", ()))


def batch_plan(config: ServerConfig, runner: Runner, curve: Sequence[CurvePoint]) -> BatchPlan | None:
    """The token budget and wait the runner's measured cost curve pays for (server/costcurve.py),
    where they are left to it: --max-batch-tokens 0, on a CPU, with a curve timed. None elsewhere."""
    if config.max_batch_tokens or on_gpu(runner) or not curve:
        return None
    return plan_batches(curve, runner.max_length, config.max_wait_ms, config.max_batch_size)


def batch_limits(config: ServerConfig, runner: Runner, plan: BatchPlan | None = None) -> BatchLimits:
    """The batcher's limits. --max-batch-tokens 0 leaves the budget to the device: on a CPU the
    cost curve's plan (its wait too: none where a text runs alone), or CPU_BATCH_TOKENS where no
    curve was timed (a test's fake runner); GPU_BATCH_TOKENS on a GPU."""
    tokens = config.max_batch_tokens or (GPU_BATCH_TOKENS if on_gpu(runner) else CPU_BATCH_TOKENS)
    wait_ms = config.max_wait_ms
    if plan is not None:
        tokens, wait_ms = plan.max_batch_tokens, plan.max_wait_ms
    return BatchLimits(config.max_batch_size, tokens, wait_ms / 1000.0, config.max_padding_ratio)


def inference_workers(config: ServerConfig, runner: Runner) -> int:
    """--inference-workers, or by default one per core on CPU and one on a GPU."""
    return thread_layout(config.inference_workers, gpu=on_gpu(runner))[0]


def startup_curve(runner: Runner) -> list[CurvePoint]:
    """The batches the runner times on itself after warm-up (OnnxRunner's `time_curve`). A
    runner that cannot time itself (a test's fake) gives none: the budget is then the fixed
    one, and the cost model starts without a line and admits everything until the first
    batches are timed."""
    timer = getattr(runner, "time_curve", None)
    return list(timer()) if timer is not None else []


class InferenceService:
    """Admission, tokenizing, batching and answers for one model: the encoder turns texts into
    ids on the tokenizer thread, the runner turns batches of ids into probabilities on the
    inference workers. `start()` before use."""

    def __init__(
        self,
        encoder: Encoder,
        runner: Runner,
        config: ServerConfig,
        metrics: Metrics | None = None,
        curve: Sequence[CurvePoint] = (),
    ) -> None:
        """`curve`: batches the runner timed at start-up (`startup_curve`): the batch budget's
        plan on a CPU, and the admission cost model's first line."""
        self.encoder = encoder
        self.runner = runner
        self.config = config
        self.metrics = metrics
        self.curve = list(curve)
        self.plan = batch_plan(config, runner, self.curve)
        self.limits = batch_limits(config, runner, self.plan)
        self.workers = inference_workers(config, runner)
        self.budget_s = config.latency_budget_ms / 1000.0  # 0: admission by the cost model is off
        self.cost = seeded([(point.tokens, point.seconds) for point in self.curve])
        self.batcher = MicroBatcher(
            runner.predict, self.limits, config.max_queue, metrics, workers=self.workers, cost=self.cost
        )
        # Steered on the answered requests' p95 (see admission.ThresholdController); where the
        # server's budget is off, a request's own budget is held to as it is.
        self.controller = admission.ThresholdController(self.budget_s or SLA_S)
        self.policy = admission.POLICY
        # Admitted requests predicted late, over ~10 s: the SLA's tail is counted over a window
        # long enough that a Poisson burst's few late requests fit in it.
        self.late = admission.Share(tau_s=10.0)
        self.refused = admission.Share()  # requests refused at admission
        self.token_estimate = admission.TokenEstimate(encoder.max_length)
        self.loop_lag = LoopLag()
        self._tokenizing = (0, 0)  # (texts, estimated tokens) admitted and not yet queued; loop thread only
        self.tokenizer = TokenizerStage(encoder.encode)

    async def start(self) -> None:
        """Start the tokenizer thread and the inference workers."""
        line = self.cost.line
        if line is not None:
            log.info(
                "batch cost at start-up: %.4f ms per token + %.3f ms per batch",
                line.per_token * 1000,
                line.per_batch * 1000,
            )
        self.refresh_gauges()
        self.tokenizer.start()
        await self.batcher.start()
        if self.budget_s:
            self.loop_lag.start()

    async def stop(self) -> None:
        """Finish running batches, fail what is still queued, stop the threads."""
        self.loop_lag.stop()
        await self.batcher.stop()
        self.tokenizer.stop()

    # -- admission --------------------------------------------------------------

    def effective_budget(self, requested_s: float | None) -> float:
        """The budget a request is held to: the server's, or a tighter one it asked for (a
        request may also ask for one where the server's is off); 0 = none."""
        if requested_s is None:
            return self.budget_s
        return min(self.budget_s, requested_s) if self.budget_s else requested_s

    def predicted_wait(self, now: float) -> float:
        """Seconds a text queued at `now` would wait for a worker (0 before the first batch is timed)."""
        line = self.cost.line
        if line is None:
            return 0.0
        texts, tokens = self._tokenizing
        backlog = self.batcher.backlog(now)
        backlog = admission.Backlog(backlog.running_s, backlog.queued_tokens, backlog.queued_batches, tokens, texts)
        wait = admission.predicted_wait(backlog, line, self.workers)
        if self.metrics:
            self.metrics.predicted_wait.set(wait)
        return wait

    @property
    def overloaded(self) -> bool:
        return self.refused.value > self.policy.overloaded_at

    def threshold_in_force(self, now: float) -> float:
        """The threshold a request held to the server's budget meets now (0: admission off)."""
        if not self.budget_s:
            return 0.0
        return self.controller.threshold(now) if self.overloaded else self.budget_s

    def decide(self, now: float, arrival: float, wait: float, own: float, budget_s: float) -> str:
        """admission.decide with this server's state: calm, the threshold is the budget; overloaded,
        the steered one (scaled to a budget tighter than the server's)."""
        overloaded = self.overloaded
        threshold = budget_s
        if overloaded and self.budget_s:
            threshold = self.controller.threshold(now) * budget_s / self.budget_s
        # The loop's lag: the wait the request met before its handler ran, which the client saw.
        verdict = admission.decide(
            now - arrival + self.loop_lag.value,
            wait,
            own,
            threshold,
            self.policy.late_limit * budget_s,
            self.late.value < self.policy.late_share(overloaded),
        )
        return verdict

    def check_overload(self, arrival: float, budget_s: float) -> None:
        """The cheap first check, before the body is read: even a request of no size would
        finish late. Raises Overloaded."""
        if not budget_s:
            return
        now = asyncio.get_running_loop().time()
        wait = self.predicted_wait(now)
        if self.decide(now, arrival, wait, 0.0, budget_s) == admission.REFUSE:
            self.refused.record(now, True)  # one that passes is recorded by the full check in predict
            raise Overloaded(wait, budget_s)

    # -- the request path ---------------------------------------------------------

    async def predict(
        self, texts: Sequence[str], arrival: float | None = None, budget_s: float | None = None
    ) -> Answer:
        """Classify `texts` (one request: admitted or refused whole).

        `arrival`: when the request arrived (loop clock; now if None); `budget_s`: its latency
        budget (the server's if None, 0 = none). Raises Overloaded, QueueFull, ShuttingDown,
        TextTooLong, DeadlineExceeded, Shed, BatchFailed.
        """
        loop = asyncio.get_running_loop()
        now = loop.time()
        arrival = now if arrival is None else arrival
        budget = self.budget_s if budget_s is None else budget_s
        batcher = self.batcher
        if batcher.depth + self._tokenizing[0] + len(texts) > batcher.max_queue:
            raise _queue_full(batcher)
        line = self.cost.line
        estimates = [self.token_estimate.estimate(len(t)) for t in texts]
        wait = 0.0
        if line is not None and budget:
            wait = self.predicted_wait(now)
            # Its own inference, and the batching window it may wait out when a worker is idle.
            own = admission.own_seconds(estimates, line, self.workers) + self.limits.max_wait_s
            verdict = self.decide(now, arrival, wait, own, budget)
            self.refused.record(now, verdict == admission.REFUSE)
            if verdict == admission.REFUSE:
                raise Overloaded(wait, budget)
            self.late.record(now, verdict == admission.ADMIT_LATE)

        # Reserve the texts' estimated work while they are tokenized, so that requests
        # admitted meanwhile see it ahead of them.
        reserved = (len(texts), sum(estimates))
        self._tokenizing = (self._tokenizing[0] + reserved[0], self._tokenizing[1] + reserved[1])
        try:
            started = loop.time()
            seqs = await self.tokenizer.encode(texts)
            if self.metrics:
                self.metrics.tokenize_duration.observe(loop.time() - started)
        finally:
            self._tokenizing = (self._tokenizing[0] - reserved[0], self._tokenizing[1] - reserved[1])
        tokens = [len(seq) for seq in seqs]
        for text, n in zip(texts, tokens):
            self.token_estimate.observe(len(text), n)
        if not self.config.truncate:
            for i, n in enumerate(tokens):
                if n > self.encoder.max_length:
                    raise TextTooLong(i, n, self.encoder.max_length)
        # The model's encoder says which texts it cut; an encoder that says nothing cuts none.
        truncated = tuple(seqs.truncated) if isinstance(seqs, EncodedTexts) else (False,) * len(seqs)

        deadline = arrival + self.config.request_timeout_ms / 1000.0
        shed_at = None
        if budget and line is not None and wait > 0.0:  # with nothing ahead, shedding cannot help it
            # Hopeless, not merely late: the threshold may admit a request predicted somewhat
            # past the budget (the SLA is a p95), so only one past its highest is shed.
            limit = self.policy.late_limit * budget
            shed_at = [admission.latest_start(arrival, limit, line.seconds(len(seq))) for seq in seqs]
        futures = batcher.submit(seqs, deadline, shed_at)
        # One text (most requests): await its future itself; gather costs extra loop turns.
        try:
            results: list[BatchResult] = [await futures[0]] if len(futures) == 1 else await asyncio.gather(*futures)
        except BaseException:
            for future in futures:  # the request failed whole: its texts still queued need not run
                future.cancel()
            raise
        done = loop.time()
        if budget:
            # Normalised to the server's budget, so that tighter requests steer it alike.
            self.controller.observe(
                done,
                (done - arrival + self.loop_lag.value) * self.controller.budget_s / budget,
                tighten=self.overloaded,
            )
        answer = Answer(
            np.stack([r.probabilities for r in results]),
            max(r.batch_size for r in results),
            tuple(self.runner.labels),
            tuple(tokens),
            truncated,
        )
        if self.metrics:
            if done - arrival <= (budget or SLA_S):
                self.metrics.goodput.inc()
            best, rows = answer.top
            labels = answer.labels
            self.metrics.observe_predictions([labels[i] for i in best], [r[i] for i, r in zip(best, rows)], tokens)
        return answer

    def refresh_gauges(self) -> None:
        """Set the admission gauges to now: the cost model, the threshold in force and the
        predicted wait (at start-up and at each scrape; the wait is also set on every admission)."""
        self.predicted_wait(asyncio.get_running_loop().time())
        line = self.cost.line
        if self.metrics and line is not None:
            self.metrics.batch_cost.labels("per_token").set(line.per_token)
            self.metrics.batch_cost.labels("per_batch").set(line.per_batch)
            self.metrics.admission_threshold.set(self.threshold_in_force(asyncio.get_running_loop().time()))

    def model_info(self) -> dict[str, Any]:
        """The runner's facts (name, version, quantization, providers...) and whether texts over
        max_length are truncated (--truncate) or refused."""
        return {**self.runner.info, "truncate": self.config.truncate}

    def info(self) -> dict[str, Any]:
        """Batching and admission as resolved at start-up, for GET /v1/model."""
        line = self.cost.line
        return {
            "max_batch_size": self.limits.max_batch_size,
            "max_batch_tokens": self.limits.max_batch_tokens,
            "max_wait_ms": self.limits.max_wait_s * 1000.0,
            "max_queue": self.batcher.max_queue,
            "max_padding_ratio": self.limits.max_padding,
            "inference_workers": self.workers,
            "request_timeout_ms": self.config.request_timeout_ms,
            "latency_budget_ms": self.config.latency_budget_ms,
            # The batches timed at start-up, and (CPU, --max-batch-tokens 0) the budget they set.
            "cost_curve": {
                "points": [point.to_dict() for point in self.curve],
                "plan": None if self.plan is None else self.plan.to_dict(),
            },
            "cost_model": None
            if line is None
            else {
                "ms_per_token": round(line.per_token * 1000, 5),
                "ms_per_batch": round(line.per_batch * 1000, 4),
                "batches_observed": self.cost.observed,
                "admission_threshold_ms": round(self.threshold_in_force(asyncio.get_running_loop().time()) * 1000, 1),
                "overloaded": self.overloaded,
            },
        }


def _queue_full(batcher: MicroBatcher) -> QueueFull:
    return QueueFull(f"queue holds {batcher.depth} of {batcher.max_queue} texts")
