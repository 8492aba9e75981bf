"""Prometheus metrics, owned by one object with its own registry (no global state).

Every stage has its own histogram (tokenize, queue wait, inference, batch size/tokens,
padding), so when latency moves the metrics say where. Label values come from small fixed
sets (route names, status codes, rejection reasons), never from request data.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

# prometheus-client's multiprocess mode: set for each child by the parent of `--processes N`
# (server/supervisor.py) before the child starts, as the library asks. Every process then
# writes its values to files in this directory, and a scrape of any process reads them all.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Dense around the 5-500 ms range that the 200 ms SLA lives in.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.04,
    0.05,
    0.075,
    0.1,
    0.125,
    0.15,
    0.175,
    0.2,
    0.25,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
)
STAGE_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    1.0,
    2.5,
)
BATCH_SIZE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)
BATCH_TOKEN_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
RATIO_BUCKETS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
# The top label's probability: at least 1/labels, so dense above 0.5 (two labels).
SCORE_BUCKETS = (0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.975, 0.99, 1.0)
# Ids the model saw per text ([CLS] and [SEP] included): the shipped max_length is 256.
INPUT_TOKEN_BUCKETS = (8, 16, 32, 64, 96, 128, 160, 192, 224, 255, 256, 384, 512, 1024)

REJECT_REASONS = (
    "overloaded",
    "shed",
    "queue_full",
    "deadline",
    "too_large",
    "invalid",
    "unsupported_media_type",
    "draining",
    "not_ready",
    "not_found",
    "unauthorized",
    "forbidden",
)

METRIC_NAMES = (
    "sentiment_requests_total",
    "sentiment_request_duration_seconds",
    "sentiment_queue_wait_seconds",
    "sentiment_inference_duration_seconds",
    "sentiment_tokenize_duration_seconds",
    "sentiment_batch_size",
    "sentiment_batch_tokens",
    "sentiment_padding_ratio",
    "sentiment_queue_depth",
    "sentiment_inflight_requests",
    "sentiment_rejected_total",
    "sentiment_batch_failures_total",
    "sentiment_model_info",
    "sentiment_predicted_wait_seconds",
    "sentiment_goodput_total",
    "sentiment_batch_cost_seconds",
    "sentiment_admission_threshold_seconds",
    "sentiment_process_requests",
    "sentiment_predictions_total",
    "sentiment_prediction_score",
    "sentiment_input_tokens",
    "sentiment_reference_label_share",
    "sentiment_prediction_log_rows_total",
    "sentiment_prediction_log_dropped_total",
    "sentiment_prediction_log_errors_total",
)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None, multiprocess_dir: str | None = None) -> None:
        """`multiprocess_dir` (default: $PROMETHEUS_MULTIPROC_DIR): render every server process's
        values, summed (counters, histograms) or per gauge's `multiprocess_mode`."""
        self.registry = registry or CollectorRegistry()
        self.multiprocess_dir = multiprocess_dir if multiprocess_dir is not None else os.environ.get(MULTIPROC_ENV)
        r = self.registry
        self.requests = Counter(
            "sentiment_requests_total", "HTTP requests by route and status code", ["endpoint", "code"], registry=r
        )
        self.request_duration = Histogram(
            "sentiment_request_duration_seconds",
            "HTTP request latency, arrival to response",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "sentiment_queue_wait_seconds",
            "time a text waited in the batch queue before its batch started",
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.inference_duration = Histogram(
            "sentiment_inference_duration_seconds",
            "ONNX Runtime time per batch (padding included)",
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.tokenize_duration = Histogram(
            "sentiment_tokenize_duration_seconds", "tokenization time per request", buckets=STAGE_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            "sentiment_batch_size", "texts per inference batch", buckets=BATCH_SIZE_BUCKETS, registry=r
        )
        self.batch_tokens = Histogram(
            "sentiment_batch_tokens",
            "padded tokens per inference batch (texts x longest)",
            buckets=BATCH_TOKEN_BUCKETS,
            registry=r,
        )
        self.padding_ratio = Histogram(
            "sentiment_padding_ratio", "share of a batch's tokens that are padding", buckets=RATIO_BUCKETS, registry=r
        )
        self.queue_depth = Gauge(
            "sentiment_queue_depth", "texts waiting for a batch", registry=r, multiprocess_mode="livesum"
        )
        self.inflight = Gauge(
            "sentiment_inflight_requests", "prediction requests being handled", registry=r, multiprocess_mode="livesum"
        )
        self.rejected = Counter("sentiment_rejected_total", "requests refused, by reason", ["reason"], registry=r)
        self.batch_failures = Counter(
            "sentiment_batch_failures_total", "inference batches that raised (their requests got 500)", registry=r
        )
        self.model_info = Gauge(
            "sentiment_model_info",
            "the served model (value is always 1)",
            ["model", "version", "quantization", "optimization", "target"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.predicted_wait = Gauge(
            "sentiment_predicted_wait_seconds",
            "predicted queue wait of a request arriving now (the admission signal; the largest of the processes')",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.goodput = Counter(
            "sentiment_goodput_total",
            "prediction requests answered within their latency budget (200 ms where the budget is off)",
            registry=r,
        )
        self.batch_cost = Gauge(
            "sentiment_batch_cost_seconds",
            "fitted inference cost of a batch: seconds per token and per batch (per process: pid label)",
            ["term"],
            registry=r,
            multiprocess_mode="liveall",
        )
        self.admission_threshold = Gauge(
            "sentiment_admission_threshold_seconds",
            "predicted finish a request may have to be admitted, as in force now (0: admission off; per process)",
            registry=r,
            multiprocess_mode="liveall",
        )
        # Shows how the kernel spreads connections over the processes (SO_REUSEPORT hashes them).
        self.process_requests = Gauge(
            "sentiment_process_requests",
            "HTTP requests this server process has handled (pid label with --processes > 1)",
            registry=r,
            multiprocess_mode="liveall",
        )
        self._init_prediction_metrics()
        for term in ("per_token", "per_batch"):
            self.batch_cost.labels(term)
        for reason in REJECT_REASONS:  # exported at 0 from the start, so rate() works
            self.rejected.labels(reason)

    def set_model_info(self, info: dict[str, Any]) -> None:
        self.model_info.labels(
            model=str(info.get("model_name", "unknown")),
            version=str(info.get("model_version", "unknown")),
            quantization=str(info.get("quantization", "unknown")),
            optimization=str(info.get("optimization", "unknown")),
            target=str(info.get("target", "cpu")),
        ).set(1)

    def _init_prediction_metrics(self) -> None:
        """What the service predicts, and the prediction log's health (server/predlog.py)."""
        r = self.registry
        self.predictions = Counter(
            "sentiment_predictions_total", "texts classified, by predicted label", ["label"], registry=r
        )
        self.prediction_score = Histogram(
            "sentiment_prediction_score",
            "the predicted label's probability (confidence)",
            buckets=SCORE_BUCKETS,
            registry=r,
        )
        self.input_tokens = Histogram(
            "sentiment_input_tokens",
            "ids the model saw per text, [CLS] and [SEP] included (max_length when truncated)",
            buckets=INPUT_TOKEN_BUCKETS,
            registry=r,
        )
        self.reference_share = Gauge(
            "sentiment_reference_label_share",
            "each label's share of the training data, from export_report.json (NaN where it has none)",
            ["label"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.log_rows = Counter("sentiment_prediction_log_rows_total", "rows written to the prediction log", registry=r)
        self.log_dropped = Counter(
            "sentiment_prediction_log_dropped_total",
            "prediction log rows dropped unwritten because the writer's queue was full",
            registry=r,
        )
        self.log_errors = Counter(
            "sentiment_prediction_log_errors_total",
            "prediction log writes that failed (their rows are lost; serving goes on)",
            registry=r,
        )
        self._by_label: dict[str, Any] = {}

    def set_labels(self, labels: tuple[str, ...], reference_share: dict[str, float] | None) -> None:
        """The model's labels, exported at 0 from the start (so rate() works), and the reference
        label share of the training data."""
        self._by_label = {label: self.predictions.labels(label) for label in labels}
        for label in labels:
            share = reference_share.get(label) if reference_share else None
            self.reference_share.labels(label).set(float("nan") if share is None else share)

    def observe_predictions(self, labels: list[str], scores: list[float], tokens: list[int]) -> None:
        """One answer's texts: predicted label, its probability, ids seen (the request path: cheap)."""
        by_label = self._by_label
        for label, score, n in zip(labels, scores, tokens):
            child = by_label.get(label)
            if child is None:
                child = by_label[label] = self.predictions.labels(label)
            child.inc()
            self.prediction_score.observe(score)
            self.input_tokens.observe(n)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.exposed()), CONTENT_TYPE_LATEST

    def exposed(self) -> CollectorRegistry:
        """The registry /metrics renders and GET /v1/stats reads: this process's, or with
        `multiprocess_dir` one that collects every server process's values."""
        if self.multiprocess_dir:
            # A fresh registry holding only the collector, as the library asks: the metrics
            # registered above would otherwise appear twice.
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]  # untyped upstream
            return registry
        return self.registry
