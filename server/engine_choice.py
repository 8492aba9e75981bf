"""`--engine`: build the engine asked for, or with `auto` time the available ones on the same
batches and keep the fastest.

The choice is a pure function of what was measured (`choose_engine`), tested with numbers; the
loop that builds, warms up and times the engines (`select_engine`) only feeds it. auto weighs
only engines the export's parity gate ran on this model directory (export_report.json's
`engines`; ONNX Runtime's CPU provider always), so speed never picks numerics nobody checked,
and it keeps ONNX Runtime unless another engine is at least MARGIN faster: never slower than
today's engine by more than the measurement's noise.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.modeldir import ModelDir
from core.tokenization import SpecialIds
from server.engine import AUTO, DEFAULT_ENGINE, ENGINES, Engine, EngineError, first_line, not_installed

log = logging.getLogger("server.engine")

# A challenger must take at most (1 - MARGIN) of ONNX Runtime's time to replace it: a margin
# for the noise of a best-of-ROUNDS timing on a shared machine (chosen, not measured).
MARGIN = 0.05
ROUNDS = 3
BUDGET_S = 2.0  # most seconds the timed rounds may take, all engines together (after the warm-up)
TIMING_WIDTH = 128  # word pieces: about the mean IMDB review (123 in the measurement)

Builder = Callable[[str], Engine]


@dataclass(frozen=True)
class EngineChoice:
    name: str
    reason: str
    seconds: dict[str, float] = field(default_factory=dict)  # auto's timings, the same batches on each engine
    skipped: dict[str, str] = field(default_factory=dict)  # engine -> why it was not measured or not used

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "reason": self.reason,
            "seconds": {k: round(v, 6) for k, v in self.seconds.items()},
            "skipped": dict(self.skipped),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EngineChoice:
        """The inverse of `to_dict` (server/engine_probe.py's line, read by a --processes child)."""
        return cls(
            str(data["name"]),
            str(data["reason"]),
            {str(k): float(v) for k, v in dict(data.get("seconds", {})).items()},
            {str(k): str(v) for k, v in dict(data.get("skipped", {})).items()},
        )


def choose_engine(
    outcomes: Mapping[str, float | str], default: str = DEFAULT_ENGINE, margin: float = MARGIN
) -> EngineChoice:
    """The engine to serve, from each candidate's measured seconds for the same batches or the
    reason it has none (not installed, failed to load or to run). Ties and near-ties (within
    `margin` of `default`'s time) go to `default`. Raises EngineError when nothing ran."""
    seconds = {name: float(v) for name, v in outcomes.items() if not isinstance(v, str)}
    skipped = {name: v for name, v in outcomes.items() if isinstance(v, str)}
    if not seconds:
        raise EngineError("no engine could run: " + "; ".join(f"{n}: {r}" for n, r in skipped.items()))
    fastest = min(seconds, key=lambda name: seconds[name])
    others = ", ".join(f"{n} {s:.4f} s" for n, s in seconds.items() if n != fastest)
    if len(seconds) == 1:
        return EngineChoice(fastest, f"the only engine that ran ({fastest} {seconds[fastest]:.4f} s)", seconds, skipped)
    if fastest != default and default in seconds and seconds[fastest] > (1.0 - margin) * seconds[default]:
        reason = (
            f"{fastest} {seconds[fastest]:.4f} s is less than {margin:.0%} faster than {default} "
            f"{seconds[default]:.4f} s: kept {default}"
        )
        return EngineChoice(default, reason, seconds, skipped)
    return EngineChoice(fastest, f"fastest: {fastest} {seconds[fastest]:.4f} s, against {others}", seconds, skipped)


def timing_shapes(max_length: int) -> list[tuple[int, int]]:
    """(batch size, width) pairs auto times: one text, small and larger batches of a typical
    review's length, and one text at the cap."""
    width = min(TIMING_WIDTH, max_length)
    return sorted({(1, width), (4, width), (8, width), (1, max_length)})


def dummy_batch(rows: int, width: int, specials: SpecialIds) -> tuple[np.ndarray, np.ndarray]:
    ids = np.full((rows, width), specials.pad_id, dtype=np.int64)
    ids[:, 0], ids[:, -1] = specials.cls_id, specials.sep_id
    return ids, np.ones_like(ids)


def measure(
    engines: Mapping[str, Engine],
    shapes: list[tuple[int, int]],
    specials: SpecialIds,
    rounds: int = ROUNDS,
    budget_s: float = BUDGET_S,
) -> dict[str, float | str]:
    """Each engine's seconds for one batch of every shape, the best of up to `rounds` per shape,
    or why it failed. Warmed up first (a first run sets kernels up); the rounds interleave the
    engines, so that a busy moment of a shared machine falls on all of them alike, and are
    fewer (at least one) where the warm-up says they would take more than `budget_s`."""
    batches = [dummy_batch(rows, width, specials) for rows, width in shapes]
    outcomes: dict[str, float | str] = {}
    live = dict(engines)
    round_s = 0.0  # a round's cost, from the warm-up (an overestimate: first runs are slower)
    for name, engine in list(live.items()):
        started = time.perf_counter()
        try:
            for ids, mask in batches:
                engine.run(ids, mask)
        except Exception as exc:  # an engine that cannot run is skipped, whatever it raised
            outcomes[name] = f"failed to run: {first_line(exc)}"
            del live[name]
            continue
        round_s += time.perf_counter() - started
    rounds = max(1, min(rounds, int(budget_s / round_s) if round_s > 0 else rounds))
    best = {name: [float("inf")] * len(batches) for name in live}
    for _ in range(rounds):
        for name, engine in live.items():
            for k, (ids, mask) in enumerate(batches):
                started = time.perf_counter()
                engine.run(ids, mask)
                best[name][k] = min(best[name][k], time.perf_counter() - started)
    for name in engines:
        if name in best:
            outcomes[name] = sum(best[name])
    return outcomes


def select_engine(
    requested: str,
    model: ModelDir,
    build: Builder,
    specials: SpecialIds,
    gpu: bool = False,
) -> tuple[Engine, EngineChoice]:
    """The engine to serve `model` on, and why. `build(name)` makes one (server.engine's
    build_engine with the server's thread layout); its errors are one line (EngineError,
    ModelDirError). An engine asked for by name is built or fails; auto falls back to ONNX
    Runtime where another is not installed, not checked, or fails to load or to run."""
    checked = model.checked_engines()
    if requested != AUTO:
        engine = build(requested)
        why = "asked for (--engine)"
        if requested not in checked and requested != DEFAULT_ENGINE:
            why += "; the export's parity gate did not run this engine on this model directory"
            log.warning("engine %s: not checked by the export on %s (its report's engines)", requested, model.path)
        return engine, EngineChoice(requested, why)
    if gpu:  # the GPU path: ONNX Runtime's CUDA provider, as before engines
        return build(DEFAULT_ENGINE), EngineChoice(DEFAULT_ENGINE, "model exported for a GPU: ONNX Runtime (CUDA)")
    outcomes: dict[str, float | str] = {}
    engines: dict[str, Engine] = {}
    for name in ENGINES:
        reason: str | None = not_installed(name)
        if reason is None and name not in checked and name != DEFAULT_ENGINE:
            hint = " (export with --openvino-int8)" if name == "openvino" else ""
            reason = f"not checked by the export's parity gate on this model directory{hint}"
        if reason is None:
            try:
                engines[name] = build(name)
            except Exception as exc:  # ONNX Runtime's own failure is the server's; another's is a fallback
                if name == DEFAULT_ENGINE:
                    raise
                reason = f"failed to load: {first_line(exc)}"
        if reason is not None:
            log.info("engine %s: %s", name, reason)
            outcomes[name] = reason
    if len(engines) == 1:
        (name, engine), skipped = next(iter(engines.items())), {k: str(v) for k, v in outcomes.items()}
        return engine, EngineChoice(name, "the only engine available here: nothing to measure", skipped=skipped)
    started = time.perf_counter()
    outcomes.update(measure(engines, timing_shapes(model.truncation.max_length), specials))
    choice = choose_engine({name: outcomes[name] for name in ENGINES if name in outcomes})
    log.info("engine %s chosen in %.1f s: %s", choice.name, time.perf_counter() - started, choice.reason)
    return engines[choice.name], choice
