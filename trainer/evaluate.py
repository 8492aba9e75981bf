"""Batched inference over pre-tokenized reviews, and metrics on the result."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import ContextManager

import numpy as np
import torch
import torch.nn.functional as F

from core.tokenization import pad_batch
from trainer.distributed import DistContext
from trainer.metrics import classification_metrics


def to_device(seqs: Sequence[np.ndarray], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Pad to the batch's longest sequence and move to `device`.

    Only input_ids and attention_mask: DistilBERT has no token_type_ids and BERT defaults
    them to zeros, which is what the ONNX runner feeds at serving time.
    """
    ids, mask = pad_batch(seqs, pad_id)
    return {
        "input_ids": torch.from_numpy(ids).to(device, non_blocking=True),
        "attention_mask": torch.from_numpy(mask).to(device, non_blocking=True),
    }


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    seqs: Sequence[np.ndarray],
    pad_id: int,
    device: torch.device,
    batch_size: int = 64,
    amp_context: Callable[[], ContextManager] = contextlib.nullcontext,
) -> np.ndarray:
    """Class probabilities [n, 2] (float32) in the order of `seqs`.

    Batches are formed from length-sorted reviews, so each batch pads little.
    """
    was_training = model.training
    model.eval()
    order = np.argsort([len(s) for s in seqs], kind="stable")
    probs = np.empty((len(seqs), 2), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = to_device([seqs[i] for i in idx], pad_id, device)
        with amp_context():
            logits = model(**batch).logits
        probs[idx] = F.softmax(logits.float(), dim=-1).cpu().numpy()
    model.train(was_training)
    return probs


def log_loss(labels: Sequence[int], probs: np.ndarray) -> float:
    """Mean cross-entropy of the true class, from probabilities."""
    y = np.asarray(labels, dtype=np.int64)
    p = np.clip(probs[np.arange(len(y)), y].astype(np.float64), 1e-12, 1.0)
    return float(-np.log(p).mean())


def evaluate(
    model: torch.nn.Module,
    seqs: Sequence[np.ndarray],
    labels: Sequence[int],
    pad_id: int,
    device: torch.device,
    dist_ctx: DistContext = DistContext(),
    batch_size: int = 64,
    amp_context: Callable[[], ContextManager] = contextlib.nullcontext,
) -> tuple[dict, np.ndarray]:
    """(metrics, probabilities [n, 2]) over all of `seqs`, the same on every rank.

    Under DDP each rank predicts a strided shard and the shards are gathered, so
    evaluation scales with the number of processes.
    """
    n = len(seqs)
    shard = np.arange(dist_ctx.rank, n, dist_ctx.world_size)
    local = predict(model, [seqs[i] for i in shard], pad_id, device, batch_size, amp_context)
    probs = np.empty((n, 2), dtype=np.float32)
    for rank, part in enumerate(dist_ctx.gather_objects(local)):
        probs[np.arange(rank, n, dist_ctx.world_size)] = part
    metrics = classification_metrics(labels, probs, loss=log_loss(labels, probs))
    return metrics, probs
