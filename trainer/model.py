"""The base model in, the checkpoint out: what `train` loads from Hugging Face and what it saves.

A checkpoint is a Hugging Face model directory (weights, config.json with the labels, the fast
tokenizer) plus `training_config.yaml`, the TrainConfig it was trained with, which
core.checkpoint reads back for the exporter.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from core.labels import ID2LABEL, LABEL2ID
from trainer.config import ConfigError, TrainConfig, dump_yaml
from trainer.distributed import DistContext

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0]


def load_tokenizer(model_path: str, base_model: str) -> Any:
    """The base model's fast tokenizer (the TextEncoder needs its tokenizer.json form)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"base_model {base_model}: cannot load tokenizer ({_first_line(exc)})") from None
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"base_model {base_model}: needs a fast (tokenizer.json) tokenizer")
    return tokenizer


def model_overrides(cfg: TrainConfig, device: torch.device) -> dict[str, Any]:
    """The config keys `cfg` sets on the base model: attention kernel and any dropout override."""
    attention = cfg.attention if cfg.attention != "auto" else ("eager" if device.type == "cpu" else "sdpa")
    overrides: dict[str, Any] = {"attn_implementation": attention}
    if cfg.hidden_dropout is not None:
        overrides["hidden_dropout_prob"] = cfg.hidden_dropout
    if cfg.attention_dropout is not None:
        overrides["attention_probs_dropout_prob"] = cfg.attention_dropout
    return overrides


def load_model(model_path: str, base_model: str, device: torch.device, cfg: TrainConfig) -> PreTrainedModel:
    """The base model with a fresh two-class head labelled by core.labels, in fp32 on `device`."""
    from transformers import AutoModelForSequenceClassification

    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            model_path,
            num_labels=len(ID2LABEL),
            id2label=ID2LABEL,
            label2id=LABEL2ID,
            **model_overrides(cfg, device),
        )
    except (OSError, ValueError) as exc:
        raise ConfigError(f"base_model {base_model}: cannot load model ({_first_line(exc)})") from None
    # fp32 master weights whatever the stored dtype: transformers 5 loads a half-precision
    # checkpoint as half by default, and autocast handles the low-precision compute.
    return model.float().to(device)


def save_checkpoint(out: Path, model: PreTrainedModel, tokenizer: Any, cfg: TrainConfig, dist_ctx: DistContext) -> None:
    """Rank 0 writes the checkpoint into `out`; every rank waits for it."""
    if dist_ctx.is_main:
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        (out / "training_config.yaml").write_text(dump_yaml(cfg))
    dist_ctx.barrier()


def load_checkpoint(out: Path, device: torch.device, attention: str | None = None) -> PreTrainedModel:
    """The checkpoint as saved, the way the exporter and any user load it. `attention`: the kernel
    to run it with (transformers' default when none); the reload check passes the one it trained
    with, since under bf16 eager and SDPA attention round differently (2e-4 apart on the tiny model)."""
    from transformers import AutoModelForSequenceClassification

    kwargs = {"attn_implementation": attention} if attention else {}
    return AutoModelForSequenceClassification.from_pretrained(out, **kwargs).to(device)
