"""Where a run stands (`TrainState`), and the resumable state saved under `<output_dir>/state`.

`state/state.pt` holds what resume needs to continue as if never interrupted: the weights, the
optimizer's moments, the schedule, the loss scale, every rank's RNG state, the config it was made
with, and the TrainState (under "progress"). It is written atomically at each epoch's end, and
every `save_state_every_steps` updates if asked.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR

from trainer.config import ConfigError, TrainConfig
from trainer.distributed import DistContext

log = logging.getLogger(__name__)

STATE_DIR = "state"
STATE_FILE = "state.pt"
# Keys that change the batch plan or the schedule: resuming with other values would
# silently train on a different sequence of batches.
RESUME_KEYS = (
    "batch_size",
    "grad_accum_steps",
    "seed",
    "epochs",
    "max_steps",
    "group_by_length",
    "max_train_samples",
    "max_length",
    "truncation",
    "head_tokens",
    "base_model",
    "lr",
)


@dataclass(frozen=True)
class Trainables:
    """What resume restores besides the progress. `model` is the bare model, never the DDP wrapper."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR
    scaler: torch.amp.GradScaler


@dataclass
class TrainState:
    """Progress of a run: what resume restores, and what metrics.json and history.json report."""

    epoch: int = 0  # epochs finished, which is also the 0-based index of the next one
    group: int = 0  # accumulation groups of that epoch already trained
    global_step: int = 0  # optimizer updates so far
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per finished epoch
    best_accuracy: float = -1.0
    best_epoch: int = 0
    best_val_probs: np.ndarray | None = None  # of the saved checkpoint, for the reload check
    bad_epochs: int = 0  # epochs since validation last improved (early stopping)
    train_time_s: float = 0.0  # training only: evaluation and saving are left out
    samples_seen: int = 0  # over all ranks

    def record_epoch(self, meter: EpochMeter, val: dict[str, Any], val_probs: np.ndarray, lr: float) -> bool:
        """Append the epoch just finished (number `self.epoch`) to the history; True when validation
        accuracy improved, so the checkpoint is to be saved."""
        improved = val["accuracy"] > self.best_accuracy
        self.history.append(
            {
                "epoch": self.epoch,
                "step": self.global_step,
                "train_loss": meter.train_loss(),
                "val_loss": val["loss"],
                "val_accuracy": val["accuracy"],
                "val_f1_macro": val["f1_macro"],
                "lr": lr,
                "epoch_time_s": meter.seconds,
                "samples_per_s": meter.samples / max(1e-9, meter.seconds),
                "best": improved,
            }
        )
        if improved:
            self.best_accuracy, self.best_epoch, self.best_val_probs = val["accuracy"], self.epoch, val_probs
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        return improved

    def summary(self) -> dict[str, Any]:
        """The run's totals, as metrics.json reports them."""
        return {
            "train_time_s": self.train_time_s,
            "train_samples": self.samples_seen,
            "train_samples_per_s": self.samples_seen / max(1e-9, self.train_time_s),
            "optimizer_steps": self.global_step,
            "epochs_completed": len(self.history),
            "best_epoch": self.best_epoch,
        }

    def save(self, state_dir: Path, parts: Trainables, cfg: TrainConfig, dist_ctx: DistContext) -> None:
        """Save the resumable state as of now (rank 0 writes; every rank waits for it)."""
        rngs = dist_ctx.gather_objects(rng_state())
        if dist_ctx.is_main:
            progress = {f.name: getattr(self, f.name) for f in fields(self)}
            save_state(
                state_dir,
                {
                    "model": parts.model.state_dict(),
                    "optimizer": parts.optimizer.state_dict(),
                    "scheduler": parts.scheduler.state_dict(),
                    "scaler": parts.scaler.state_dict(),
                    "rng": rngs,
                    "config": cfg.to_dict(),
                    "world_size": dist_ctx.world_size,
                    "progress": progress,
                },
            )
        dist_ctx.barrier()

    @classmethod
    def resume(cls, state_dir: Path, parts: Trainables, cfg: TrainConfig, dist_ctx: DistContext) -> TrainState:
        """The saved progress with `parts` and this rank's RNG restored, or a fresh start if none was saved.

        Raises ConfigError when the state was made with other batch-plan or schedule keys.
        """
        if not (state_dir / STATE_FILE).is_file():
            log.warning("resume: no state in %s, starting from scratch", state_dir)
            return cls()
        saved = torch.load(state_dir / STATE_FILE, map_location="cpu", weights_only=False)
        changed = [k for k in RESUME_KEYS if saved["config"].get(k) != getattr(cfg, k)]
        if changed or saved["world_size"] != dist_ctx.world_size:
            raise ConfigError(f"resume: saved state in {state_dir} was made with other {changed or ['world_size']}")
        parts.model.load_state_dict(saved["model"])
        parts.optimizer.load_state_dict(saved["optimizer"])
        parts.scheduler.load_state_dict(saved["scheduler"])
        parts.scaler.load_state_dict(saved["scaler"])
        restore_rng(saved["rng"][dist_ctx.rank])
        state = cls(**saved["progress"])
        log.info("resumed from %s at epoch %d, step %d", state_dir, state.epoch + 1, state.global_step)
        return state


class EpochMeter:
    """One epoch's loss, samples and training time; the time and samples go into the state's totals.

    Saving state mid-epoch is not training: `paused()` leaves it out of the epoch's rate and of
    `train_time_s`. Totals are added before each save, so a run resumed after a crash counts
    every sample it kept exactly once.
    """

    def __init__(self, state: TrainState, device: torch.device) -> None:
        self.state, self.device = state, device
        self.loss = torch.zeros((), device=device)  # summed on the device: reading it syncs the GPU
        self.steps = self.samples = 0
        self.seconds = 0.0  # set by finish()
        self.start = self._flushed_t = time.perf_counter()
        self._flushed_samples = 0

    def step(self, loss: torch.Tensor, samples: int) -> None:
        self.loss += loss
        self.steps += 1
        self.samples += samples

    def rate(self) -> float:
        return self.samples / max(1e-9, time.perf_counter() - self.start)

    def train_loss(self) -> float | None:
        return float(self.loss) / self.steps if self.steps else None

    def _flush(self) -> float:
        now = time.perf_counter()
        self.state.train_time_s += now - self._flushed_t
        self.state.samples_seen += self.samples - self._flushed_samples
        return now

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        stopped = self._flush()
        yield
        self._flushed_t, self._flushed_samples = time.perf_counter(), self.samples
        self.start += self._flushed_t - stopped

    def finish(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds = self._flush() - self.start


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Atomically: a crash while writing leaves the previous state usable."""
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / f"{STATE_FILE}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path / STATE_FILE)


def remove_state(state_dir: Path) -> None:
    for f in state_dir.glob("*"):
        f.unlink()
    state_dir.rmdir()


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
