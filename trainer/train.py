"""Fine-tuning loop: `python -m trainer train` (also under `torchrun` for DDP).

Reads top to bottom like Hugging Face's no-Trainer example: data, model, optimizer
(two parameter groups), scheduler, loop, evaluation, save. Steps are counted in
optimizer updates, so warmup and `max_steps` mean the same whatever the accumulation.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ContextManager

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LambdaLR

from core.labels import ID2LABEL, LABEL2ID
from core.tokenization import TextEncoder
from trainer.config import ConfigError, TrainConfig, config_from_args, dump_yaml, make_parser, resolve_base_model
from trainer.distributed import DistContext, init_distributed, shutdown_distributed
from trainer.evaluate import evaluate, to_device

log = logging.getLogger("trainer")

STATE_DIR = "state"
# Reviews per length-sorted "mega-batch": large enough that batches pad little, small
# enough that batch order stays well shuffled.
MEGABATCH_BATCHES = 50

# ----------------------------------------------------------------------------- pieces


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA too


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda requested but torch.cuda.is_available() is false")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> tuple[str, torch.dtype | None]:
    """(precision name, autocast dtype or None for fp32)."""
    if device.type == "cuda":
        if name == "auto":
            name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if name == "bf16" and not torch.cuda.is_bf16_supported():
            raise ConfigError("precision: bf16 is not supported on this GPU (use fp16)")
    else:
        if name == "auto":
            name = "fp32"
        if name == "fp16":
            raise ConfigError("precision: fp16 needs CUDA (use fp32 or bf16 on CPU)")
    return name, {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def amp_context_factory(device: torch.device, dtype: torch.dtype | None) -> Callable[[], ContextManager]:
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.amp.autocast(device_type=device.type, dtype=dtype)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: biases and LayerNorm weights (all 1-D) are exempt,
    decaying them towards zero only fights the normalisation."""
    decay, no_decay = [], []
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


def plan_batches(
    lengths: Sequence[int],
    batch_size: int,
    seed: int,
    epoch: int,
    group_by_length: bool,
    world_size: int = 1,
    rank: int = 0,
) -> list[np.ndarray]:
    """This rank's micro-batches (index arrays) for one epoch, seeded by (seed, epoch).

    Every rank computes the same global batches of `batch_size * world_size` and takes a
    strided slice, so ranks need not talk. The index list is padded (by repeating) to a
    multiple of `world_size` so every rank gets the same number of equally sized batches.
    With `group_by_length`, reviews are sorted by length inside shuffled mega-batches,
    so each batch holds similar lengths and pads little; batch order is then shuffled.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    order = np.concatenate([order, order[: (-len(order)) % world_size]])
    global_batch = batch_size * world_size
    if group_by_length:
        lengths = np.asarray(lengths)
        mega = global_batch * MEGABATCH_BATCHES
        order = np.concatenate(
            [
                chunk[np.argsort(-lengths[chunk], kind="stable")]
                for chunk in (order[i : i + mega] for i in range(0, len(order), mega))
            ]
        )
    batches = [order[i : i + global_batch] for i in range(0, len(order), global_batch)]
    if group_by_length:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return [b[rank::world_size] for b in batches]


def accumulation_groups(batches: list, accum: int) -> list[list]:
    """Micro-batches per optimizer step; the last group of an epoch may be shorter."""
    return [batches[i : i + accum] for i in range(0, len(batches), accum)]


def optimizer_step(
    model: torch.nn.Module,
    group: list[tuple[dict, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    scheduler: LambdaLR,
    scaler: torch.amp.GradScaler,
    max_grad_norm: float,
    amp_context: Callable[[], ContextManager] = contextlib.nullcontext,
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
    for i, (inputs, labels) in enumerate(group):
        defer_sync = isinstance(model, DistributedDataParallel) and i < len(group) - 1
        with model.no_sync() if defer_sync else contextlib.nullcontext():
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


# ----------------------------------------------------------------------------- state


def save_state(path: Path, state: dict) -> None:
    """Atomically: a crash while writing leaves the previous state usable."""
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / "state.pt.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path / "state.pt")


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# Keys that change the batch plan or the schedule: resuming with other values would
# silently train on a different sequence of batches.
_RESUME_KEYS = (
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


class _TqdmHandler(logging.StreamHandler):
    """Log lines above the progress bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        tqdm.write(self.format(record), file=sys.stderr)


def _setup_logging(out: Path, is_main: bool) -> list[logging.Handler]:
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    handlers: list[logging.Handler] = [_TqdmHandler()]
    if is_main:
        handlers.append(logging.FileHandler(out / "train.log"))
    for h in handlers:
        h.setFormatter(fmt)
        h.setLevel(logging.INFO if is_main else logging.WARNING)
        log.addHandler(h)
    log.setLevel(logging.INFO)
    log.propagate = False
    return handlers


# ----------------------------------------------------------------------------- training


def train(cfg: TrainConfig) -> dict:
    """Train, keep the best checkpoint by validation accuracy, evaluate it on test.

    Returns the metrics written to `<output_dir>/metrics.json` (on every rank).
    """
    from trainer.data import load_splits

    # Everything that can be wrong with the input is checked before the first log line,
    # so a bad config or dataset is reported as one line on stderr.
    device = resolve_device(cfg.device)
    resolve_precision(cfg.precision, device)
    model_path = resolve_base_model(cfg.base_model)
    splits = load_splits(cfg.data_dir, cfg.val_fraction, cfg.seed, cfg.max_train_samples, cfg.max_eval_samples)
    dist_ctx = init_distributed(device.type)
    try:
        if dist_ctx.enabled and device.type == "cuda":
            device = torch.device("cuda", dist_ctx.local_rank)
        out = Path(cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        handlers = _setup_logging(out, dist_ctx.is_main)
        try:
            return _train(cfg, device, dist_ctx, out, model_path, splits)
        finally:
            for h in handlers:
                log.removeHandler(h)
                h.close()
    finally:
        shutdown_distributed(dist_ctx)


def _train(cfg: TrainConfig, device: torch.device, dist_ctx: DistContext, out: Path, model_path: str, splits) -> dict:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from trainer.metrics import save_plots

    precision, amp_dtype = resolve_precision(cfg.precision, device)
    amp_context = amp_context_factory(device, amp_dtype)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # the fp32 leftovers of AMP: ~free speed
        torch.backends.cudnn.allow_tf32 = True
    set_seed(cfg.seed)
    log.info("config: %s", json.dumps(cfg.to_dict()))
    log.info("device %s, precision %s, world size %d", device, precision, dist_ctx.world_size)

    # -- data: tokenized once up front; batches are padded per batch later
    log.info("data %s (%s): %s", cfg.data_dir, splits.source, splits.sizes())
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"base_model {cfg.base_model}: cannot load tokenizer ({str(exc).splitlines()[0]})") from None
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"base_model {cfg.base_model}: needs a fast (tokenizer.json) tokenizer")
    encoder = TextEncoder(tokenizer.backend_tokenizer, cfg.truncation_config())
    t0 = time.perf_counter()
    train_seqs = encoder.encode_batch(splits.train["text"].tolist())
    val_seqs = encoder.encode_batch(splits.val["text"].tolist())
    test_seqs = encoder.encode_batch(splits.test["text"].tolist())
    train_labels = splits.train["label"].to_numpy()
    val_labels, test_labels = splits.val["label"].to_numpy(), splits.test["label"].to_numpy()
    lengths = np.array([len(s) for s in train_seqs])
    log.info(
        "tokenized in %.1fs; train tokens/review mean %.0f, truncated to %d: %.1f%%",
        time.perf_counter() - t0,
        lengths.mean(),
        cfg.max_length,
        100 * (lengths >= cfg.max_length).mean(),
    )

    # -- model
    try:
        raw_model = AutoModelForSequenceClassification.from_pretrained(
            model_path, num_labels=len(ID2LABEL), id2label=ID2LABEL, label2id=LABEL2ID
        )
    except (OSError, ValueError) as exc:
        raise ConfigError(f"base_model {cfg.base_model}: cannot load model ({str(exc).splitlines()[0]})") from None
    # fp32 master weights whatever the stored dtype: transformers 5 loads a half-precision
    # checkpoint as half by default, and AMP below handles the low-precision compute.
    raw_model.float().to(device)
    model: torch.nn.Module = raw_model
    if dist_ctx.enabled:
        model = DistributedDataParallel(raw_model, device_ids=[device.index] if device.type == "cuda" else None)

    # -- optimizer and schedule, in optimizer steps
    optimizer = torch.optim.AdamW(param_groups(raw_model, cfg.weight_decay), lr=cfg.lr)
    batches_per_epoch = len(
        plan_batches(lengths, cfg.batch_size, cfg.seed, 0, False, dist_ctx.world_size, dist_ctx.rank)
    )
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.grad_accum_steps)
    total_steps = cfg.max_steps or steps_per_epoch * cfg.epochs
    num_epochs = math.ceil(total_steps / steps_per_epoch)
    warmup_steps = round(cfg.warmup_ratio * total_steps)
    scheduler = make_scheduler(optimizer, warmup_steps, total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    log.info(
        "%d optimizer steps (%d/epoch, %d epochs), warmup %d, global batch %d",
        total_steps,
        steps_per_epoch,
        num_epochs,
        warmup_steps,
        cfg.batch_size * cfg.grad_accum_steps * dist_ctx.world_size,
    )

    # -- resumable state
    state_dir = out / STATE_DIR
    progress = {
        "epoch": 0,
        "group": 0,
        "global_step": 0,
        "history": [],
        "best_accuracy": -1.0,
        "best_epoch": 0,
        "best_val_probs": None,
        "bad_epochs": 0,
        "train_time_s": 0.0,
        "samples_seen": 0,
    }
    if cfg.resume and (state_dir / "state.pt").is_file():
        state = torch.load(state_dir / "state.pt", map_location="cpu", weights_only=False)
        changed = [k for k in _RESUME_KEYS if state["config"].get(k) != getattr(cfg, k)]
        if changed or state["world_size"] != dist_ctx.world_size:
            raise ConfigError(f"resume: saved state in {state_dir} was made with other {changed or ['world_size']}")
        raw_model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        restore_rng(state["rng"][dist_ctx.rank])
        progress = state["progress"]
        log.info("resumed from %s at epoch %d, step %d", state_dir, progress["epoch"] + 1, progress["global_step"])
    elif cfg.resume:
        log.warning("resume: no state in %s, starting from scratch", state_dir)

    def checkpoint_state(epoch: int, group: int) -> None:
        rngs = dist_ctx.gather_objects(rng_state())
        if dist_ctx.is_main:
            save_state(
                state_dir,
                {
                    "model": raw_model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "rng": rngs,
                    "config": cfg.to_dict(),
                    "world_size": dist_ctx.world_size,
                    "progress": {**progress, "epoch": epoch, "group": group},
                },
            )
        dist_ctx.barrier()

    def save_checkpoint() -> None:
        if dist_ctx.is_main:
            raw_model.save_pretrained(out)
            tokenizer.save_pretrained(out)
            (out / "training_config.yaml").write_text(dump_yaml(cfg))
        dist_ctx.barrier()

    # -- loop
    from tqdm.auto import tqdm

    bar = tqdm(
        total=total_steps,
        initial=progress["global_step"],
        unit="step",
        dynamic_ncols=True,
        disable=not (dist_ctx.is_main and cfg.progress_bar),
    )
    stopped_early = False
    # Reading the loss syncs the GPU: refresh the bar's numbers every step only on CPU.
    show_every = 1 if device.type == "cpu" else 20
    for epoch in range(progress["epoch"], num_epochs):
        groups = accumulation_groups(
            plan_batches(
                lengths, cfg.batch_size, cfg.seed, epoch, cfg.group_by_length, dist_ctx.world_size, dist_ctx.rank
            ),
            cfg.grad_accum_steps,
        )
        model.train()
        epoch_loss, epoch_steps = torch.zeros((), device=device), 0
        epoch_start, epoch_samples = time.perf_counter(), 0
        flushed_t, flushed_samples = epoch_start, 0  # already added to progress totals
        start_group, progress["group"] = progress["group"], 0
        for gi in range(start_group, len(groups)):
            if progress["global_step"] >= total_steps:
                break
            group = [
                (
                    to_device([train_seqs[i] for i in idx], encoder.pad_id, device),
                    torch.from_numpy(train_labels[idx]).to(device),
                )
                for idx in groups[gi]
            ]
            loss, grad_norm = optimizer_step(model, group, optimizer, scheduler, scaler, cfg.max_grad_norm, amp_context)
            progress["global_step"] += 1
            epoch_loss += loss
            epoch_steps += 1
            epoch_samples += sum(len(idx) for idx in groups[gi]) * dist_ctx.world_size
            bar.update(1)
            step = progress["global_step"]
            to_log = step % cfg.log_every_steps == 0 or step == total_steps
            if to_log or step % show_every == 0:
                rate = epoch_samples / max(1e-9, time.perf_counter() - epoch_start)
                lr = scheduler.get_last_lr()[0]
                bar.set_postfix(loss=f"{float(loss):.4f}", lr=f"{lr:.2e}", samples_s=f"{rate:.1f}")
                if to_log:
                    log.info(
                        "epoch %d step %d/%d loss %.4f lr %.3e grad_norm %.3f samples/s %.1f",
                        epoch + 1,
                        step,
                        total_steps,
                        float(loss),
                        lr,
                        float(grad_norm),
                        rate,
                    )
            if cfg.save_state_every_steps and step % cfg.save_state_every_steps == 0:
                now = time.perf_counter()
                progress["train_time_s"] += now - flushed_t
                progress["samples_seen"] += epoch_samples - flushed_samples
                checkpoint_state(epoch, gi + 1)
                flushed_t, flushed_samples = time.perf_counter(), epoch_samples  # saving is not training
                epoch_start += flushed_t - now
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        now = time.perf_counter()
        epoch_time = now - epoch_start
        progress["train_time_s"] += now - flushed_t
        progress["samples_seen"] += epoch_samples - flushed_samples

        val, val_probs = evaluate(
            raw_model, val_seqs, val_labels, encoder.pad_id, device, dist_ctx, cfg.eval_batch_size, amp_context
        )
        improved = val["accuracy"] > progress["best_accuracy"]
        progress["history"].append(
            {
                "epoch": epoch + 1,
                "step": progress["global_step"],
                "train_loss": float(epoch_loss) / epoch_steps if epoch_steps else None,
                "val_loss": val["loss"],
                "val_accuracy": val["accuracy"],
                "val_f1_macro": val["f1_macro"],
                "lr": scheduler.get_last_lr()[0],
                "epoch_time_s": epoch_time,
                "samples_per_s": epoch_samples / max(1e-9, epoch_time),
                "best": improved,
            }
        )
        log.info(
            "epoch %d: train loss %s, val loss %.4f, val accuracy %.4f%s",
            epoch + 1,
            progress["history"][-1]["train_loss"],
            val["loss"],
            val["accuracy"],
            " (best so far, saved)" if improved else "",
        )
        if improved:
            progress.update(best_accuracy=val["accuracy"], best_epoch=epoch + 1, best_val_probs=val_probs, bad_epochs=0)
            save_checkpoint()
        else:
            progress["bad_epochs"] += 1
        checkpoint_state(epoch + 1, 0)
        if progress["global_step"] >= total_steps:
            break
        if cfg.early_stopping_patience and progress["bad_epochs"] >= cfg.early_stopping_patience:
            stopped_early = True
            log.info("early stopping: no validation improvement for %d epoch(s)", progress["bad_epochs"])
            break
    bar.close()

    # -- final evaluation with the checkpoint as saved: the reload check and the test
    # numbers both come from the artifact that ships, not from memory.
    best = AutoModelForSequenceClassification.from_pretrained(out).to(device)
    val, val_probs = evaluate(
        best, val_seqs, val_labels, encoder.pad_id, device, dist_ctx, cfg.eval_batch_size, amp_context
    )
    test, test_probs = evaluate(
        best, test_seqs, test_labels, encoder.pad_id, device, dist_ctx, cfg.eval_batch_size, amp_context
    )
    diff = float(np.abs(val_probs - progress["best_val_probs"]).max())
    tolerance = 1e-4 if amp_dtype is None else 2e-2
    reload_ok = diff <= tolerance and best.config.id2label == ID2LABEL
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    metrics = {
        "base_model": cfg.base_model,
        "base_model_path": model_path,
        "device": device_name,
        "precision": precision,
        "world_size": dist_ctx.world_size,
        "train_time_s": progress["train_time_s"],
        "train_samples": progress["samples_seen"],
        "train_samples_per_s": progress["samples_seen"] / max(1e-9, progress["train_time_s"]),
        "optimizer_steps": progress["global_step"],
        "epochs_completed": len(progress["history"]),
        "best_epoch": progress["best_epoch"],
        "stopped_early": stopped_early,
        "data": {"source": splits.source, **splits.sizes()},
        "validation": val,
        "test": test,
        "reload_check": {"ok": reload_ok, "max_abs_prob_diff": diff, "tolerance": tolerance},
    }
    if dist_ctx.is_main:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        (out / "history.json").write_text(json.dumps(progress["history"], indent=2))
        save_plots(out, progress["history"], test_labels, test_probs)
        if not cfg.keep_state:
            for f in state_dir.glob("*"):
                f.unlink()
            state_dir.rmdir()
    dist_ctx.barrier()
    log.info(
        "best epoch %d: val accuracy %.4f, test accuracy %.4f, f1 %.4f; %.1f train samples/s on %s",
        progress["best_epoch"],
        val["accuracy"],
        test["accuracy"],
        test["f1_macro"],
        metrics["train_samples_per_s"],
        device_name,
    )
    if not reload_ok:
        log.error("reload check failed: reloaded checkpoint differs from the trained model by %.3g", diff)
    return metrics


def main(argv: list[str] | None = None) -> int:
    from trainer.data import DataError

    parser = make_parser()
    try:
        cfg = config_from_args(parser.parse_args(argv))
        metrics = train(cfg)
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0 if metrics["reload_check"]["ok"] else 1
