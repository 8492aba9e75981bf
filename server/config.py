"""Server settings: one frozen dataclass, mapped 1:1 to CLI flags and `SENTIMENT_*` variables.

Each field `max_batch_size` is the flag `--max-batch-size` and the environment variable
`SENTIMENT_MAX_BATCH_SIZE`. Precedence: command line, then environment, then the default.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from core import cli
from core.cli import opt
from server.engine import ENGINE_CHOICES

ENV_PREFIX = "SENTIMENT_"
LOG_LEVELS = ("debug", "info", "warning", "error")
HELP_LOG_LEVEL = "log level: " + ", ".join(LOG_LEVELS)


@dataclass(frozen=True)
class ServerConfig:
    model_dir: Path = field(
        default=Path("artifacts/model"),
        metadata=opt(
            "model directory written by the exporter (model.onnx, tokenizer.json, config.json, export_report.json)"
        ),
    )
    host: str = field(default="127.0.0.1", metadata=opt("address to listen on"))
    port: int = field(default=8000, metadata=opt("TCP port to listen on"))
    max_batch_size: int = field(default=32, metadata=opt("most texts in one inference batch"))
    # Short: under load the queue fills the next batch while one runs anyway. Where the cost
    # curve says a text costs the same alone (server/costcurve.py), no batch waits at all.
    max_wait_ms: float = field(
        default=2.0, metadata=opt("longest a batch waits for more texts after its first text arrived")
    )
    # 0 = by device (server.inference.batch_limits). On a CPU, from the engine's cost curve, timed at
    # start-up (server/costcurve.py): ONNX Runtime's dynamic int8 costs no less per token in a bigger
    # batch, so there a text at the max length runs alone and shorter ones share a run; OpenVINO's
    # static int8 does, so there batches grow. A GPU needs wide batches: 8192.
    max_batch_tokens: int = field(
        default=0,
        metadata=opt(
            "most padded tokens (texts x longest text) in one inference batch "
            "(0: on CPU from the engine's cost curve timed at start-up, 8192 on a GPU)"
        ),
    )
    # A padded token costs the CPU what a real one does. Measured with 2 inference workers at
    # 55-68 req/s (docs/RESULTS.md): 0.1 against no limit cut server CPU per request 3-10%
    # and p95 in 5 of 6 paired steps.
    max_padding_ratio: float = field(
        default=0.1,
        metadata=opt("most padding a batch of several texts may carry, as a share of its padded tokens (1 = no limit)"),
    )
    max_queue: int = field(
        default=256, metadata=opt("most texts waiting for inference; beyond it requests get 503 at once")
    )
    request_timeout_ms: float = field(
        default=1000.0, metadata=opt("deadline per request; texts still queued after it get 504 without inference")
    )
    # The SLA (p95 <= 200 ms). Admission predicts each request's finish from the batches'
    # fitted cost and the work ahead of it (server/admission.py), so that under overload the
    # server answers about its capacity in time and refuses the rest at once, instead of
    # queueing everyone for a second (docs/RESULTS.md, overload benchmark).
    latency_budget_ms: float = field(
        default=200.0,
        metadata=opt(
            "latency budget per request: one predicted to finish later is refused at once with 503 "
            "overloaded, and queued texts that can no longer meet it are shed unrun "
            "(0: off; a request may ask for less with the X-Latency-Budget-Ms header)"
        ),
    )
    # The longest IMDB review is ~14k characters; beyond this it is not a review.
    max_text_chars: int = field(default=20_000, metadata=opt("longest accepted text in characters (422 beyond)"))
    max_texts_per_request: int = field(
        default=64, metadata=opt('most texts in one {"texts": [...]} request (422 beyond)')
    )
    max_body_bytes: int = field(default=2 * 1024 * 1024, metadata=opt("largest accepted request body (413 beyond)"))
    truncate: bool = field(
        default=True, metadata=opt("truncate texts longer than the model's max_length (--no-truncate: 422 instead)")
    )
    # auto: every engine installed here whose graph the export's parity gate checked is timed on
    # the same batches at start-up and the fastest kept; ONNX Runtime unless another is at
    # least 5% faster (server/engine_choice.py). Asked for by name: that engine, or exit 2.
    engine: str = field(
        default="auto",
        metadata=opt(
            "what runs the graph: ort (ONNX Runtime), ort-openvino (ONNX Runtime's OpenVINO provider), openvino "
            "(OpenVINO, on the export's static int8 IR), or auto: the fastest of those installed and checked "
            "by the export, measured at start-up",
            choices=ENGINE_CHOICES,
        ),
    )
    # 0 = physical cores (1 on a GPU), like TorchServe's workers per model or Triton's
    # instance count. On the 2-core box, 2 workers x 1 thread did 15-20% more texts/s than
    # 1 worker x 2 threads in the tight loop, and lifted open-loop capacity (docs/BENCHMARKS.md).
    inference_workers: int = field(
        default=0, metadata=opt("inference threads, each running one batch at a time; 0 = physical cores (1 on a GPU)")
    )
    # 0 = physical cores / inference workers. The tokenizer gets one thread of its own: it
    # is a few percent of the work (~1 ms per review against ~20 ms of inference).
    intra_op_threads: int = field(
        default=0,
        metadata=opt(
            "threads per batch (ONNX Runtime's intra-op threads, OpenVINO's per stream); "
            "0 = physical cores / inference workers (at least 1)"
        ),
    )
    inter_op_threads: int = field(
        default=1, metadata=opt("ONNX Runtime inter-op threads (graph is sequential: 1 is enough)")
    )
    # 0 = by device (server.runner): a GPU's first run of a shape is ~40x slower than later ones,
    # while on CPU a padded token costs what a real one does, so buckets only pay on a GPU.
    shape_bucket: int = field(
        default=0,
        metadata=opt(
            "pad each batch's width up to a multiple of this many tokens and its size up to a power of "
            "two, and run all such shapes at start-up (0: 32 on a GPU, off on CPU; 1: off)"
        ),
    )
    # 1 = today's single process. N > 1: N processes accept on one port (SO_REUSEPORT), each with
    # its own event loop, batcher, workers and session, the cores split among them
    # (core.layout.process_layout); 0 = core.layout.auto_processes.
    processes: int = field(
        default=1,
        metadata=opt(
            "server processes sharing the port, each with its own event loop, batcher and inference workers, "
            "under a parent that restarts them (0: automatic, 1 on a CPU, one per physical core and at most 8 on a GPU)"
        ),
    )
    reuse_port: bool = field(
        default=False,
        metadata=opt("listen with SO_REUSEPORT, so that several servers share the port (--processes sets it)"),
    )
    drain_timeout_s: float = field(
        default=10.0, metadata=opt("on SIGTERM/SIGINT, longest wait for accepted requests before exiting")
    )
    # Without these two the server is open to any caller on its port, and to no browser page
    # of another origin (server/auth.py, server/cors.py).
    api_key_file: Path | None = field(
        default=None,
        metadata=opt(
            "file of API keys, one per line: POST /v1/predict then needs 'Authorization: Bearer <key>' "
            "(probes, /metrics, the playground and the docs stay open; re-read on SIGHUP)"
        ),
    )
    cors_allow_origin: list[str] = field(
        default_factory=list,
        metadata=opt("an origin whose pages may call the API, e.g. https://app.example.com (repeatable)"),
    )
    log_level: str = field(default="info", metadata=opt(HELP_LOG_LEVEL))
    # The prediction log (server/predlog.py): one writer thread per process drains a bounded
    # queue and commits in batches; the request path only appends to the queue.
    prediction_log: Path | None = field(
        default=None,
        metadata=opt("SQLite file that logs every prediction (off when unset; schema in README), created if missing"),
    )
    prediction_log_sample: float = field(
        default=1.0, metadata=opt("share of prediction requests logged, 0..1 (a request is logged whole or not)")
    )
    prediction_log_max_rows: int = field(
        default=1_000_000, metadata=opt("most rows the prediction log keeps: the oldest are pruned")
    )
    prediction_log_queue: int = field(
        default=10_000,
        metadata=opt("most requests waiting for the log's writer; beyond it their rows are dropped and counted"),
    )
    log_texts: bool = field(
        default=False, metadata=opt("store each text in the prediction log too (off by default: privacy)")
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_dir", Path(self.model_dir))
        if self.api_key_file is not None:
            object.__setattr__(self, "api_key_file", Path(self.api_key_file))
        object.__setattr__(self, "cors_allow_origin", list(self.cors_allow_origin))
        for origin in self.cors_allow_origin:
            if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
                raise ValueError(
                    f"--cors-allow-origin must be an origin like https://app.example.com or *, got {origin!r}"
                )
        positive = (
            "port",
            "max_batch_size",
            "max_queue",
            "request_timeout_ms",
            "max_text_chars",
            "max_texts_per_request",
            "max_body_bytes",
            "inter_op_threads",
            "drain_timeout_s",
        )
        for name in ("inference_workers", "max_batch_tokens", "shape_bucket", "processes"):
            if getattr(self, name) < 0:
                raise ValueError(f"{flag(name)} must be >= 0, got {getattr(self, name)}")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{flag(name)} must be > 0, got {getattr(self, name)}")
        if not 0.0 <= self.max_padding_ratio <= 1.0:
            raise ValueError(f"--max-padding-ratio must be within [0, 1], got {self.max_padding_ratio}")
        if self.max_wait_ms < 0 or self.intra_op_threads < 0:
            raise ValueError("--max-wait-ms and --intra-op-threads must be >= 0")
        if not self.latency_budget_ms >= 0:
            raise ValueError(f"--latency-budget-ms must be >= 0 (0: off), got {self.latency_budget_ms}")
        if self.latency_budget_ms and self.max_wait_ms >= self.latency_budget_ms:
            # Every text may wait out the batching window, so no request with work ahead of it
            # could be predicted in time: admission would refuse nearly everything.
            raise ValueError(
                f"--max-wait-ms ({self.max_wait_ms:g}) must be below --latency-budget-ms "
                f"({self.latency_budget_ms:g}); set --latency-budget-ms 0 to turn admission off"
            )
        if self.port > 65535:
            raise ValueError(f"--port must be <= 65535, got {self.port}")
        if self.engine not in ENGINE_CHOICES:  # argparse checks the flag; this, the environment's value
            raise ValueError(f"--engine must be one of {', '.join(ENGINE_CHOICES)}, got {self.engine!r}")
        if self.log_level not in LOG_LEVELS:
            raise ValueError(f"--log-level must be one of {LOG_LEVELS}, got {self.log_level!r}")
        if self.prediction_log is not None:
            object.__setattr__(self, "prediction_log", Path(self.prediction_log))
        if not 0.0 <= self.prediction_log_sample <= 1.0:
            raise ValueError(f"--prediction-log-sample must be within [0, 1], got {self.prediction_log_sample}")
        for name in ("prediction_log_max_rows", "prediction_log_queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"{flag(name)} must be >= 1, got {getattr(self, name)}")


def flag(name: str) -> str:
    return cli.flag(name)


def env_name(name: str) -> str:
    return cli.env_name(ENV_PREFIX, name)


DESCRIPTION = (
    "IMDB sentiment inference server (aiohttp + ONNX Runtime, dynamic batching). "
    f"Every flag can also be set as an environment variable {ENV_PREFIX}<FLAG>, e.g. {ENV_PREFIX}MAX_BATCH_SIZE."
)


def build_parser(env: Mapping[str, str] | None = None) -> cli.OneLineParser:
    """Flags from the dataclass fields; defaults from the environment where set."""
    return cli.build_parser(
        ServerConfig, prog="python -m server", description=DESCRIPTION, env_prefix=ENV_PREFIX, env=env
    )


def parse_config(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> ServerConfig:
    """Parse flags (and environment); invalid values exit 2 with one line on stderr."""
    parser = build_parser(env)
    return cli.from_namespace(parser, ServerConfig, parser.parse_args(argv))
