"""Server settings: one frozen dataclass, mapped 1:1 to CLI flags and `SENTIMENT_*` variables.

Each field `max_batch_size` is the flag `--max-batch-size` and the environment variable
`SENTIMENT_MAX_BATCH_SIZE`. Precedence: command line, then environment, then the default.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Mapping, NoReturn, Sequence

ENV_PREFIX = "SENTIMENT_"
LOG_LEVELS = ("debug", "info", "warning", "error")

_HELP = {
    "model_dir": "model directory written by the exporter (model.onnx, tokenizer.json, config.json, export_report.json)",
    "host": "address to listen on",
    "port": "TCP port to listen on",
    "max_batch_size": "most texts in one inference batch",
    "max_wait_ms": "longest a batch waits for more texts after its first text arrived",
    "max_batch_tokens": "most padded tokens (texts x longest text) in one inference batch (0: 256 on CPU, 8192 on a GPU)",
    "max_padding_ratio": "most padding a batch of several texts may carry, as a share of its padded tokens (1 = no limit)",
    "max_queue": "most texts waiting for inference; beyond it requests get 503 at once",
    "request_timeout_ms": "deadline per request; texts still queued after it get 504 without inference",
    "latency_budget_ms": "latency budget per request: one predicted to finish later is refused at once with 503 "
                         "overloaded, and queued texts that can no longer meet it are shed unrun (0: off; a request "
                         "may ask for less with the X-Latency-Budget-Ms header)",
    "max_text_chars": "longest accepted text in characters (422 beyond)",
    "max_texts_per_request": "most texts in one {\"texts\": [...]} request (422 beyond)",
    "max_body_bytes": "largest accepted request body (413 beyond)",
    "truncate": "truncate texts longer than the model's max_length (--no-truncate: 422 instead)",
    "inference_workers": "inference threads, each running one batch at a time; 0 = physical cores (1 on a GPU)",
    "intra_op_threads": "ONNX Runtime threads per batch; 0 = physical cores / inference workers (at least 1)",
    "inter_op_threads": "ONNX Runtime inter-op threads (graph is sequential: 1 is enough)",
    "shape_bucket": "pad each batch's width up to a multiple of this many tokens and its size up to a power of two, "
                    "and run all such shapes at start-up (0: 32 on a GPU, off on CPU; 1: off)",
    "drain_timeout_s": "on SIGTERM/SIGINT, longest wait for accepted requests before exiting",
    "log_level": "log level: " + ", ".join(LOG_LEVELS),
}


@dataclass(frozen=True)
class ServerConfig:
    model_dir: Path = Path("artifacts/model")
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_size: int = 32
    # Short: on a CPU a text costs about the same at any batch size, so waiting for company
    # buys no throughput; under load the queue fills the next batch while one runs anyway.
    max_wait_ms: float = 2.0
    # 0 = by device: 256 on CPU, 8192 on a GPU (server.inference.batch_limits). On this CPU a token
    # costs no less in a bigger batch, and every text in a batch waits for all of it, so
    # long texts run alone and short ones still share a run. Paired steps against 512 were
    # split (5 of 8 for 256, docs/RESULTS.md): chosen for latency, not a measured win.
    # A GPU needs wide batches.
    max_batch_tokens: int = 0
    # A padded token costs the CPU what a real one does. Measured with 2 inference workers at
    # 55-68 req/s (docs/RESULTS.md): 0.1 against no limit cut server CPU per request 3-10%
    # and p95 in 5 of 6 paired steps.
    max_padding_ratio: float = 0.1
    max_queue: int = 256
    request_timeout_ms: float = 1000.0
    # The SLA (p95 <= 200 ms). Admission predicts each request's finish from the batches'
    # fitted cost and the work ahead of it (server/admission.py), so that under overload the
    # server answers about its capacity in time and refuses the rest at once, instead of
    # queueing everyone for a second (docs/RESULTS.md, overload benchmark).
    latency_budget_ms: float = 200.0
    # The longest IMDB review is ~14k characters; beyond this it is not a review.
    max_text_chars: int = 20_000
    max_texts_per_request: int = 64
    max_body_bytes: int = 2 * 1024 * 1024
    truncate: bool = True
    # 0 = physical cores (1 on a GPU), like TorchServe's workers per model or Triton's
    # instance count. On the 2-core box, 2 workers x 1 thread did 15-20% more texts/s than
    # 1 worker x 2 threads in the tight loop, and lifted open-loop capacity (docs/BENCHMARKS.md).
    inference_workers: int = 0
    # 0 = physical cores / inference workers. The tokenizer gets one thread of its own: it
    # is a few percent of the work (~1 ms per review against ~20 ms of inference).
    intra_op_threads: int = 0
    inter_op_threads: int = 1
    # 0 = by device (server.runner): a GPU's first run of a shape is ~40x slower than later ones,
    # while on CPU a padded token costs what a real one does, so buckets only pay on a GPU.
    shape_bucket: int = 0
    drain_timeout_s: float = 10.0
    log_level: str = "info"

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_dir", Path(self.model_dir))
        positive = ("port", "max_batch_size", "max_queue", "request_timeout_ms",
                    "max_text_chars", "max_texts_per_request", "max_body_bytes", "inter_op_threads",
                    "drain_timeout_s")
        for name in ("inference_workers", "max_batch_tokens", "shape_bucket"):
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
            raise ValueError(f"--max-wait-ms ({self.max_wait_ms:g}) must be below --latency-budget-ms "
                             f"({self.latency_budget_ms:g}); set --latency-budget-ms 0 to turn admission off")
        if self.port > 65535:
            raise ValueError(f"--port must be <= 65535, got {self.port}")
        if self.log_level not in LOG_LEVELS:
            raise ValueError(f"--log-level must be one of {LOG_LEVELS}, got {self.log_level!r}")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _field_type(f) -> type:
    return {"Path": Path, "str": str, "int": int, "float": float, "bool": bool}[
        f.type if isinstance(f.type, str) else f.type.__name__
    ]


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true/false, got {text!r}")


class _OneLineParser(argparse.ArgumentParser):
    """A bad flag (`--port x`) exits 2 with one line, as a bad value does, not usage plus the error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message}\n")


def build_parser(env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """Flags from the dataclass fields; defaults from the environment where set."""
    env = os.environ if env is None else env
    parser = _OneLineParser(
        prog="python -m server",
        description="IMDB sentiment inference server (aiohttp + ONNX Runtime, dynamic batching). "
        f"Every flag can also be set as an environment variable {ENV_PREFIX}<FLAG>, e.g. {ENV_PREFIX}MAX_BATCH_SIZE.",
    )
    for f in fields(ServerConfig):
        kind = _field_type(f)
        default = f.default if f.default is not MISSING else None
        if env_name(f.name) in env:
            raw = env[env_name(f.name)]
            try:
                default = _parse_bool(raw) if kind is bool else kind(raw)
            except ValueError as exc:
                parser.exit(2, f"error: {env_name(f.name)}={raw!r}: {exc}\n")
        help_text = f"{_HELP.get(f.name, '')} (env {env_name(f.name)}; default: {default})"
        if kind is bool:
            parser.add_argument(flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction,
                                default=default, help=help_text)
        else:
            parser.add_argument(flag(f.name), dest=f.name, type=kind, default=default,
                                metavar=f.name.upper(), help=help_text)
    return parser


def parse_config(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> ServerConfig:
    """Parse flags (and environment); invalid values exit 2 with one line on stderr."""
    parser = build_parser(env)
    args = parser.parse_args(argv)
    try:
        return ServerConfig(**vars(args))
    except ValueError as exc:
        parser.exit(2, f"error: {exc}\n")
