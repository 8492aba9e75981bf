"""Batched inference over pre-tokenized reviews, metrics on the result, and the reload check."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from core.labels import ID2LABEL
from core.tokenization import pad_batch
from trainer.data import Encoded
from trainer.distributed import DistContext
from trainer.metrics import Labels, classification_metrics
from trainer.optim import AmpContext


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


def labelled_batch(
    data: Encoded, idx: np.ndarray, pad_id: int, device: torch.device
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The reviews `idx` of `data` as model inputs, and their labels, on `device`."""
    return to_device([data.seqs[i] for i in idx], pad_id, device), torch.from_numpy(data.labels[idx]).to(device)


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    seqs: Sequence[np.ndarray],
    pad_id: int,
    device: torch.device,
    batch_size: int = 64,
    amp_context: AmpContext = contextlib.nullcontext,
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


def log_loss(labels: Labels, probs: np.ndarray) -> float:
    """Mean cross-entropy of the true class, from probabilities."""
    y = np.asarray(labels, dtype=np.int64)
    p = np.clip(probs[np.arange(len(y)), y].astype(np.float64), 1e-12, 1.0)
    return float(-np.log(p).mean())


def evaluate(
    model: torch.nn.Module,
    seqs: Sequence[np.ndarray],
    labels: Labels,
    pad_id: int,
    device: torch.device,
    dist_ctx: DistContext = DistContext(),
    batch_size: int = 64,
    amp_context: AmpContext = contextlib.nullcontext,
) -> tuple[dict[str, Any], np.ndarray]:
    """(metrics, probabilities [n, 2]) over all of `seqs`, the same on every rank.

    Under DDP each rank predicts a strided shard and the shards are gathered, so
    evaluation scales with the number of processes.
    """
    n = len(seqs)
    shard = range(dist_ctx.rank, n, dist_ctx.world_size)
    local = predict(model, [seqs[i] for i in shard], pad_id, device, batch_size, amp_context)
    probs = np.empty((n, 2), dtype=np.float32)
    for rank, part in enumerate(dist_ctx.gather_objects(local)):
        probs[np.arange(rank, n, dist_ctx.world_size)] = part
    metrics = classification_metrics(labels, probs, loss=log_loss(labels, probs))
    return metrics, probs


def reload_check(
    reloaded_probs: np.ndarray, trained_probs: np.ndarray | None, amp_dtype: torch.dtype | None, id2label: Any
) -> dict[str, Any]:
    """Does the checkpoint as saved predict what the trained model did, with the project's labels?

    Autocast rounds differently from run to run, so under bf16/fp16 the tolerance is wider.
    """
    diff = float(np.abs(reloaded_probs - trained_probs).max()) if trained_probs is not None else float("inf")
    tolerance = 1e-4 if amp_dtype is None else 2e-2
    return {"ok": diff <= tolerance and id2label == ID2LABEL, "max_abs_prob_diff": diff, "tolerance": tolerance}
