"""The trainer's checkpoint directory as the other packages read it, and the one validated
reader of its `training_config.yaml` (the exporter, the accuracy scorer and the PyTorch
baseline all need the same truncation the model was trained with)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from core.tokenization import TextEncoder, TruncationConfig

TRAINING_CONFIG = "training_config.yaml"
CHECKPOINT_FILES = ("config.json", "tokenizer.json", TRAINING_CONFIG)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
REQUIRED_TRAINING_KEYS = ("base_model", "max_length", "truncation")


class CheckpointError(Exception):
    """The checkpoint is missing or unusable; the message names the problem."""


@dataclass(frozen=True)
class TrainingRecord:
    """What `training_config.yaml` says, checked: the raw mapping and the truncation it implies."""

    path: Path
    values: dict[str, Any]
    truncation: TruncationConfig

    @property
    def base_model(self) -> str:
        return str(self.values["base_model"])

    def encoder(self) -> TextEncoder:
        """The checkpoint's tokenizer with the truncation it was trained with."""
        return TextEncoder.from_file(self.path.parent / "tokenizer.json", self.truncation)


def read_training_config(checkpoint: str | Path) -> TrainingRecord:
    """Read and check `<checkpoint>/training_config.yaml`; CheckpointError names the problem."""
    path = Path(checkpoint) / TRAINING_CONFIG
    try:
        values = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None
    if not isinstance(values, dict):
        raise CheckpointError(f"{path} is not a mapping")
    missing = [k for k in REQUIRED_TRAINING_KEYS if k not in values]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}")
    try:
        truncation = TruncationConfig.from_dict(values)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    return TrainingRecord(path, values, truncation)


def check_checkpoint_dir(checkpoint: str | Path) -> Path:
    """The trainer's layout is there (files and weights); loading the weights is the caller's."""
    path = Path(checkpoint)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    for name in CHECKPOINT_FILES:
        if not (path / name).is_file():
            raise CheckpointError(f"checkpoint {path} has no {name}")
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise CheckpointError(f"checkpoint {path} has no weights ({' or '.join(WEIGHT_FILES)})")
    return path
