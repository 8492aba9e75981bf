"""Offline scoring: `python -m server.batch_predict --model-dir DIR INPUT OUTPUT`.

INPUT and OUTPUT are .csv or .parquet; INPUT needs a `text` column. OUTPUT is INPUT plus
`label`, `score` and one `prob_<label>` column per label, rows in input order. Uses the
server's inference layer and OnnxRunner, so offline and online answers agree.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np

from core import cli
from core.cli import opt
from core.modeldir import ModelDirError
from server.config import ServerConfig
from server.engine import EngineError
from server.inference import InferenceService
from server.model import ServedModel, load_model

FORMATS = (".csv", ".parquet")


@dataclass(frozen=True)
class BatchPredictConfig:
    """Score a .csv or .parquet file of texts with an exported model directory."""

    model_dir: Path = field(metadata=opt("model directory written by the exporter"))
    input: Path = field(metadata=opt("a .csv or .parquet file with a `text` column", positional=True))
    output: Path = field(metadata=opt("where to write the input plus label, score and prob_<label>", positional=True))
    batch_size: int = field(default=32, metadata=opt("texts per batch"))
    intra_op_threads: int = field(default=0, metadata=opt("ONNX Runtime threads; 0 = physical cores"))

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.intra_op_threads < 0:
            raise ValueError(f"--intra-op-threads must be >= 0, got {self.intra_op_threads}")


class Progress:
    """tqdm when installed (it is not in the serving image), else a plain stderr line."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self._last = total, 0, 0.0
        try:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="text", file=sys.stderr)
        except ImportError:
            self._bar = None
            self._start = time.monotonic()

    def update(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last >= 1.0 or self.done == self.total:
            self._last = now
            rate = self.done / max(now - self._start, 1e-9)
            print(f"\rscored {self.done}/{self.total} texts ({rate:.0f}/s)", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        else:
            print(file=sys.stderr)


def score_texts(
    model: ServedModel, texts: Sequence[str], batch_size: int = 32, progress: Progress | None = None
) -> np.ndarray:
    """Probabilities [n, labels] in input order, through the server's inference layer; batches
    of similar length (texts sorted by characters, a close proxy for tokens: less padding)."""
    return asyncio.run(_score(model, texts, batch_size, progress))


# Batches in flight at once: one being tokenized while the other runs.
_IN_FLIGHT = 2


async def _score(model: ServedModel, texts: Sequence[str], batch_size: int, progress: Progress | None) -> np.ndarray:
    runner = model.runner
    # One worker with the runner's threads; every chunk is one batch: no latency budget, no
    # deadline, a queue that holds what is in flight.
    config = ServerConfig(
        max_batch_size=batch_size,
        max_batch_tokens=batch_size * runner.max_length,
        max_padding_ratio=1.0,
        max_wait_ms=0,
        max_queue=batch_size * _IN_FLIGHT,
        request_timeout_ms=1e12,
        latency_budget_ms=0,
        inference_workers=1,
    )
    service = InferenceService(model.encoder, runner, config)
    await service.start()
    probs = np.zeros((len(texts), len(runner.labels)), dtype=np.float32)
    order = np.argsort([len(t) for t in texts], kind="stable")
    slots = asyncio.Semaphore(_IN_FLIGHT)

    async def chunk(idx: np.ndarray) -> None:
        async with slots:
            probs[idx] = (await service.predict([texts[i] for i in idx])).probabilities
        if progress:
            progress.update(len(idx))

    try:
        await asyncio.gather(*(chunk(order[k : k + batch_size]) for k in range(0, len(order), batch_size)))
    finally:
        await service.stop()
    return probs


def _read(path: Path) -> Any:  # a pandas DataFrame (pandas is optional here)
    import pandas as pd

    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def _write(frame: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    if path.suffix == ".parquet":
        frame.to_parquet(tmp, index=False)
    else:
        frame.to_csv(tmp, index=False)
    tmp.replace(path)  # no half-written output if interrupted


def main(argv: Sequence[str] | None = None) -> int:
    args = cli.parse_settings(BatchPredictConfig, argv, prog="python -m server.batch_predict")
    for path in (args.input, args.output):
        if path.suffix not in FORMATS:
            return _fail(f"{path}: unsupported file type (use {' or '.join(FORMATS)})")
    if not args.input.is_file():
        return _fail(f"{args.input}: no such file")
    try:
        import pandas  # noqa: F401
    except ImportError:
        return _fail("pandas is required for batch_predict (pip install pandas pyarrow)")
    try:
        frame = _read(args.input)
    except Exception as exc:  # pandas/pyarrow raise many types for a malformed file
        return _fail(f"{args.input}: cannot read ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})")
    if "text" not in frame.columns:
        return _fail(f"{args.input}: no `text` column (columns: {', '.join(map(str, frame.columns))[:200]})")
    try:
        model = load_model(
            ServerConfig(model_dir=args.model_dir, intra_op_threads=args.intra_op_threads, inference_workers=1)
        )
    except (ModelDirError, EngineError) as exc:
        return _fail(str(exc))
    texts = frame["text"].fillna("").astype(str).tolist()
    progress = Progress(len(texts))
    probs = score_texts(model, texts, args.batch_size, progress)
    progress.close()
    labels = np.array(model.runner.labels)
    best = probs.argmax(axis=1) if len(texts) else np.zeros(0, dtype=int)
    frame["label"] = labels[best]
    frame["score"] = probs[np.arange(len(texts)), best]
    for j, label in enumerate(model.runner.labels):
        frame[f"prob_{label}"] = probs[:, j]
    _write(frame, args.output)
    print(f"wrote {len(frame)} rows to {args.output}", file=sys.stderr)
    return 0


def _fail(message: str) -> int:
    return cli.fail("", message)


if __name__ == "__main__":
    sys.exit(main())
