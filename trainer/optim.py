"""Optimizer, schedule and the one update step.

Steps are optimizer updates, not micro-batches: warmup and `max_steps` mean the same whatever
the accumulation, and an update from accumulated micro-batches equals the update from one
batch of all their samples (exact accumulation, a short last group included).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LambdaLR

from trainer.config import TrainConfig

AmpContext = Callable[[], contextlib.AbstractContextManager[Any]]


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only: biases and LayerNorm weights (all 1-D) are exempt,
    decaying them towards zero only fights the normalisation."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for _, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup from 0 to 1 over `warmup_steps`, then linear decay to 0 at `total_steps`."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def make_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> LambdaLR:
    return LambdaLR(optimizer, lambda step: lr_factor(step, warmup_steps, total_steps))


@dataclass(frozen=True)
class StepPlan:
    """How long the run is, in optimizer steps."""

    steps_per_epoch: int
    total_steps: int  # max_steps if set, else every epoch's steps
    epochs: int  # epochs started to reach total_steps
    warmup_steps: int
    global_batch: int  # samples per update, over accumulation and ranks

    @classmethod
    def of(cls, cfg: TrainConfig, batches_per_epoch: int, world_size: int) -> StepPlan:
        steps_per_epoch = math.ceil(batches_per_epoch / cfg.grad_accum_steps)
        total_steps = cfg.max_steps or steps_per_epoch * cfg.epochs
        return cls(
            steps_per_epoch=steps_per_epoch,
            total_steps=total_steps,
            epochs=math.ceil(total_steps / steps_per_epoch),
            warmup_steps=round(cfg.warmup_ratio * total_steps),
            global_batch=cfg.batch_size * cfg.grad_accum_steps * world_size,
        )

    def describe(self) -> str:
        return (
            f"{self.total_steps} optimizer steps ({self.steps_per_epoch}/epoch, {self.epochs} epochs), "
            f"warmup {self.warmup_steps}, global batch {self.global_batch}"
        )


def optimizer_step(
    model: torch.nn.Module,
    group: list[tuple[dict[str, torch.Tensor], torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    scheduler: LambdaLR,
    scaler: torch.amp.GradScaler,
    max_grad_norm: float,
    amp_context: AmpContext = contextlib.nullcontext,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer update from a group of (inputs, labels) micro-batches.

    Returns (loss, grad norm) as 0-d tensors on the model's device: reading them forces
    a GPU sync, so the caller decides when.

    Each micro-batch's summed loss is divided by the group's sample count, so the
    accumulated gradient equals that of one batch of all the group's samples, including a
    short group at the end of an epoch. Under DDP only the last micro-batch all-reduces.
    """
    n = sum(len(labels) for _, labels in group)
    total = torch.zeros((), device=group[0][1].device)
    ddp = model if isinstance(model, DistributedDataParallel) else None
    for i, (inputs, labels) in enumerate(group):
        with ddp.no_sync() if ddp is not None and i < len(group) - 1 else contextlib.nullcontext():
            with amp_context():
                logits = model(**inputs).logits
            loss = F.cross_entropy(logits.float(), labels, reduction="sum") / n
            scaler.scale(loss).backward()
        total += loss.detach()
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm if max_grad_norm > 0 else float("inf"))
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return total, grad_norm
