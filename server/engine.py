"""Padded ids -> logits: the engines a runner can run its model directory's graph on.

The runner (server/runner.py) pads, buckets, warms up and scales by the temperature; an engine
only runs one padded batch. Three engines, each in its own module and imported only when asked
for, so that the serving process loads no runtime it does not use:

  ort           ONNX Runtime's CPU provider (CUDA where the model was exported for a GPU) on
                model.onnx: the default install (server/engine_ort.py)
  ort-openvino  ONNX Runtime with the OpenVINO execution provider on model.onnx; needs the
                onnxruntime-openvino wheel, which replaces onnxruntime (server/engine_ort.py)
  openvino      OpenVINO's own runtime on the static int8 IR the exporter wrote
                (openvino_model.xml), else on model.onnx (server/engine_openvino.py)

`--engine auto` measures the ones available and keeps the fastest (server/engine_choice.py).
"""

from __future__ import annotations

import contextlib
import importlib.util
import queue
from collections.abc import Iterable, Iterator
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from core.modeldir import ModelDir

AUTO = "auto"
ENGINES = ("ort", "ort-openvino", "openvino")  # auto's order of preference on a tie
ENGINE_CHOICES = (AUTO, *ENGINES)
DEFAULT_ENGINE = "ort"  # today's engine: auto falls back to it
OPENVINO_PROVIDER = "OpenVINOExecutionProvider"
# Carries auto's choice, measured once by the --processes supervisor (server/engine_probe.py),
# to its children as JSON: each is started with --engine set to it and reports the measurement.
CHOICE_ENV = "SENTIMENT_ENGINE_CHOICE"
INSTALL_HINTS = {
    "openvino": "pip install '.[openvino]'",
    "ort-openvino": "pip install '.[ort-openvino]' in an environment without onnxruntime, which it replaces",
}


T = TypeVar("T")


def graph_feed(input_names: set[str], ids: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """The graph's inputs for one padded batch; BERT's segment ids are zeros (one segment)."""
    feed = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in input_names:
        feed["token_type_ids"] = np.zeros_like(ids)
    return feed


class Pool(Generic[T]):
    """Sessions or infer requests lent one per run: with as many as concurrent callers, never waits."""

    def __init__(self, items: Iterable[T]) -> None:
        self._items: queue.SimpleQueue[T] = queue.SimpleQueue()
        for item in items:
            self._items.put(item)

    def qsize(self) -> int:
        """How many are not lent out now."""
        return self._items.qsize()

    @contextlib.contextmanager
    def borrow(self) -> Iterator[T]:
        item = self._items.get()
        try:
            yield item
        finally:
            self._items.put(item)


class Engine(Protocol):
    """One graph on one runtime: padded int64 ids and mask [rows, width] -> float32 logits
    [rows, labels]. `run` is called from several inference workers at once."""

    name: str
    info: dict[str, Any]  # what GET /v1/model shows under "engine": graph, threads, providers...

    def run(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray: ...


class EngineError(Exception):
    """An engine cannot serve here (one-line message): not installed, or its graph fails to load."""


class EngineNotInstalled(EngineError):
    pass


def not_installed(name: str) -> str | None:
    """Why engine `name` cannot run in this environment, None where its runtime is installed."""
    if name == "openvino":
        try:
            found = importlib.util.find_spec("openvino") is not None
        except (ImportError, ValueError):  # a parent that fails to import, or a module set to None
            found = False
        return None if found else f"not installed ({INSTALL_HINTS[name]})"
    if name == "ort-openvino":
        import onnxruntime as ort

        if OPENVINO_PROVIDER not in ort.get_available_providers():
            return f"not installed: this ONNX Runtime has no {OPENVINO_PROVIDER} ({INSTALL_HINTS[name]})"
        return None
    if name == "ort":
        return None
    raise ValueError(f"unknown engine {name!r}; one of {ENGINES}")


def build_engine(
    name: str, model: ModelDir, workers: int, threads: int, inter_op_threads: int = 1, gpu: bool = False
) -> Engine:
    """Engine `name` for `workers` inference workers, each running its batches on `threads`
    threads. Raises EngineNotInstalled, or EngineError where the graph does not load."""
    reason = not_installed(name)
    if reason is not None:
        raise EngineNotInstalled(f"engine {name}: {reason}")
    if name == "openvino":
        from server.engine_openvino import OpenVinoEngine

        return OpenVinoEngine(model, threads, workers)
    from server.engine_ort import OrtEngine

    # `run` is thread-safe, but a session has one intra-op pool that concurrent runs share:
    # workers that each want their own threads need their own session. Single-threaded runs
    # compute on the caller's thread, so one session serves any number of workers; not with the
    # OpenVINO provider, whose session runs on its own stream of threads.
    provider = "openvino" if name == "ort-openvino" else ("cuda" if gpu else "cpu")
    sessions = workers if threads > 1 or provider == "openvino" else 1
    return OrtEngine(model, threads, inter_op_threads, sessions, provider)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
