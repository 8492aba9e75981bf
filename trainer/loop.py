"""Fine-tuning loop: `python -m trainer train` (also under `torchrun` for DDP).

Reads top to bottom like Hugging Face's no-Trainer example: data, model, optimizer
(two parameter groups), scheduler, loop, evaluation, save. Steps are counted in
optimizer updates, so warmup and `max_steps` mean the same whatever the accumulation.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core import cli
from core.tokenization import TextEncoder
from trainer.config import ConfigError, TrainArgs, TrainConfig, resolve_base_model
from trainer.data import DataError, Encoded, Splits, accumulation_groups, encode_splits, load_splits, plan_batches
from trainer.distributed import DistContext, init_distributed, shutdown_distributed
from trainer.evaluate import evaluate, labelled_batch, reload_check
from trainer.metrics import save_plots
from trainer.model import load_checkpoint, load_model, load_tokenizer, model_overrides, save_checkpoint
from trainer.optim import StepPlan, make_scheduler, optimizer_step, param_groups
from trainer.runtime import allow_tf32, amp_context_factory, resolve_device, resolve_precision, run_logging, set_seed
from trainer.state import STATE_DIR, EpochMeter, Trainables, TrainState, remove_state

log = logging.getLogger("trainer")


def command(args: TrainArgs) -> int:
    """`python -m trainer train`: 0 trained, 1 the reload check failed, 2 a bad config or dataset."""
    try:
        metrics = train(args.train_config())
    except (ConfigError, DataError) as exc:
        return cli.fail("", str(exc))
    return 0 if metrics["reload_check"]["ok"] else 1


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train, keep the best checkpoint by validation accuracy, evaluate it on test.

    Returns the metrics written to `<output_dir>/metrics.json` (on every rank).
    """
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
        with run_logging(log, out, dist_ctx.is_main):
            return _train(cfg, device, dist_ctx, out, model_path, splits)
    finally:
        shutdown_distributed(dist_ctx)


def _train(
    cfg: TrainConfig, device: torch.device, dist_ctx: DistContext, out: Path, model_path: str, splits: Splits
) -> dict[str, Any]:
    precision, amp_dtype = resolve_precision(cfg.precision, device)
    amp_context = amp_context_factory(device, amp_dtype)
    allow_tf32(device)
    set_seed(cfg.seed)
    log.info(f"config: {json.dumps(cfg.to_dict())}")
    log.info(f"device {device}, precision {precision}, world size {dist_ctx.world_size}")

    # -- data: tokenized once; each epoch plans its own batches (this rank's share)
    log.info(f"data {cfg.data_dir} ({splits.source}): {splits.sizes()}")
    tokenizer = load_tokenizer(model_path, cfg.base_model)
    encoder = TextEncoder(tokenizer.backend_tokenizer, cfg.truncation_config())
    train_set, val_set, test_set = encode_splits(splits, encoder)
    epoch_batches = functools.partial(
        plan_batches, train_set.lengths(), cfg.batch_size, cfg.seed, world_size=dist_ctx.world_size, rank=dist_ctx.rank
    )

    def evaluate_on(net: torch.nn.Module, data: Encoded) -> tuple[dict[str, Any], np.ndarray]:
        return evaluate(net, data.seqs, data.labels, encoder.pad_id, device, dist_ctx, cfg.eval_batch_size, amp_context)

    # -- model: DDP wraps it under torchrun; the bare model is what is saved
    raw_model = load_model(model_path, cfg.base_model, device, cfg)
    model = dist_ctx.wrap(raw_model, device)

    # -- optimizer and schedule, in optimizer steps
    optimizer = torch.optim.AdamW(param_groups(raw_model, cfg.weight_decay), lr=cfg.lr)
    plan = StepPlan.of(cfg, len(epoch_batches(epoch=0, group_by_length=False)), dist_ctx.world_size)
    scheduler = make_scheduler(optimizer, plan.warmup_steps, plan.total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    log.info(plan.describe())

    # -- resumable state
    parts = Trainables(raw_model, optimizer, scheduler, scaler)
    state_dir = out / STATE_DIR
    state = TrainState.resume(state_dir, parts, cfg, dist_ctx) if cfg.resume else TrainState()

    # -- loop
    progress = Progress(cfg, plan.total_steps, state.global_step, device, enabled=dist_ctx.is_main and cfg.progress_bar)
    stopped_early = False
    for epoch in range(state.epoch, plan.epochs):
        groups = accumulation_groups(
            epoch_batches(epoch=epoch, group_by_length=cfg.group_by_length), cfg.grad_accum_steps
        )
        model.train()
        meter = EpochMeter(state, device)
        for gi in range(state.group, len(groups)):
            if state.global_step >= plan.total_steps:
                break
            group = [labelled_batch(train_set, idx, encoder.pad_id, device) for idx in groups[gi]]
            loss, grad_norm = optimizer_step(model, group, optimizer, scheduler, scaler, cfg.max_grad_norm, amp_context)
            state.global_step, state.group = state.global_step + 1, gi + 1
            meter.step(loss, sum(len(idx) for idx in groups[gi]) * dist_ctx.world_size)
            progress.step(epoch, state.global_step, loss, grad_norm, float(scheduler.get_last_lr()[0]), meter)
            if cfg.save_state_every_steps and state.global_step % cfg.save_state_every_steps == 0:
                with meter.paused():  # saving is not training
                    state.save(state_dir, parts, cfg, dist_ctx)
        meter.finish()
        state.epoch, state.group = epoch + 1, 0  # a resume starts at the next epoch

        val, val_probs = evaluate_on(raw_model, val_set)
        improved = state.record_epoch(meter, val, val_probs, lr=float(scheduler.get_last_lr()[0]))
        progress.epoch(epoch, meter, val, improved)
        if improved:
            save_checkpoint(out, raw_model, tokenizer, cfg, dist_ctx)
        state.save(state_dir, parts, cfg, dist_ctx)
        if state.global_step >= plan.total_steps:
            break
        if cfg.early_stopping_patience and state.bad_epochs >= cfg.early_stopping_patience:
            stopped_early = True
            log.info(f"early stopping: no validation improvement for {state.bad_epochs} epoch(s)")
            break
    progress.close()

    # -- evaluate the checkpoint as saved: the reload check and the test numbers both come
    # from the artifact that ships, not from memory.
    best = load_checkpoint(out, device, model_overrides(cfg, device)["attn_implementation"])
    val, val_probs = evaluate_on(best, val_set)
    test, test_probs = evaluate_on(best, test_set)
    reload = reload_check(val_probs, state.best_val_probs, amp_dtype, best.config.id2label)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    metrics = {
        "base_model": cfg.base_model,
        "base_model_path": model_path,
        "device": device_name,
        "precision": precision,
        "world_size": dist_ctx.world_size,
        **state.summary(),
        "stopped_early": stopped_early,
        "data": {"source": splits.source, **splits.sizes()},
        "validation": val,
        "test": test,
        "reload_check": reload,
    }

    # -- save the report next to the checkpoint; the resumable state goes unless asked to stay
    if dist_ctx.is_main:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        (out / "history.json").write_text(json.dumps(state.history, indent=2))
        save_plots(out, state.history, test_set.labels, test_probs)
        if not cfg.keep_state:
            remove_state(state_dir)
    dist_ctx.barrier()
    log.info(
        f"best epoch {state.best_epoch}: val accuracy {val['accuracy']:.4f}, test accuracy {test['accuracy']:.4f}, "
        f"f1 {test['f1_macro']:.4f}; {metrics['train_samples_per_s']:.1f} train samples/s on {device_name}"
    )
    if not reload["ok"]:
        diff = reload["max_abs_prob_diff"]
        log.error(f"reload check failed: reloaded checkpoint differs from the trained model by {diff:.3g}")
    return metrics


class Progress:
    """The progress bar, and a log line every `log_every_steps` updates and at the last one.

    Reading the loss syncs the GPU: the bar's numbers refresh every step only on CPU.
    """

    def __init__(self, cfg: TrainConfig, total_steps: int, initial: int, device: torch.device, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total_steps, initial=initial, unit="step", dynamic_ncols=True, disable=not enabled)
        self.total_steps, self.log_every = total_steps, cfg.log_every_steps
        self.show_every = 1 if device.type == "cpu" else 20

    def step(
        self, epoch: int, step: int, loss: torch.Tensor, grad_norm: torch.Tensor, lr: float, meter: EpochMeter
    ) -> None:
        self.bar.update(1)
        to_log = step % self.log_every == 0 or step == self.total_steps
        if not (to_log or step % self.show_every == 0):
            return
        rate = meter.rate()
        self.bar.set_postfix(loss=f"{float(loss):.4f}", lr=f"{lr:.2e}", samples_s=f"{rate:.1f}")
        if to_log:
            log.info(
                f"epoch {epoch + 1} step {step}/{self.total_steps} loss {float(loss):.4f} lr {lr:.3e} "
                f"grad_norm {float(grad_norm):.3f} samples/s {rate:.1f}"
            )

    def epoch(self, epoch: int, meter: EpochMeter, val: dict[str, Any], improved: bool) -> None:
        log.info(
            f"epoch {epoch + 1}: train loss {meter.train_loss()}, val loss {val['loss']:.4f}, "
            f"val accuracy {val['accuracy']:.4f}{' (best so far, saved)' if improved else ''}"
        )

    def close(self) -> None:
        self.bar.close()
