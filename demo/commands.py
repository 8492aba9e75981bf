"""The command lines the demo runs, one per step (pure: the tests feed them to the real CLIs)."""

from __future__ import annotations

import sys

from bench import procs
from demo.config import DemoConfig
from demo.recipes import Recipe


def data_command(cfg: DemoConfig) -> list[str]:
    cmd = [sys.executable, "-m", "trainer", "data", "--output-dir", str(cfg.data_dir)]
    if cfg.shared_data_dir.is_dir():
        cmd += ["--shared-dir", str(cfg.shared_data_dir)]
    return cmd


def baseline_command(cfg: DemoConfig) -> list[str]:
    """TF-IDF + logistic regression on the full train split, scored on every test review: the ones the
    export's --test-accuracy scores the served model on."""
    return [
        sys.executable,
        "-m",
        "trainer",
        "baseline",
        "--data-dir",
        str(cfg.data_dir),
        "--output-dir",
        str(cfg.report_dir / "baseline"),
    ]


def train_command(cfg: DemoConfig, recipe: Recipe) -> list[str]:
    """--train-samples when given, else the recipe's count (none: the whole train split)."""
    sets = {
        "max_train_samples": cfg.train_samples or recipe.train_samples,
        "max_eval_samples": cfg.eval_samples,
        "max_length": cfg.max_length,
        "head_tokens": cfg.max_length // 2,
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "warmup_ratio": 0.06,
        "hidden_dropout": cfg.dropout,
        "attention_dropout": cfg.dropout,
        "early_stopping_patience": 0,
        "save_state_every_steps": 0,
        "log_every_steps": 10,
    }
    cmd = [
        sys.executable,
        "-m",
        "trainer",
        "train",
        "--config",
        str(cfg.train_config),
        "--data-dir",
        str(cfg.data_dir),
        "--output-dir",
        str(cfg.checkpoint),
    ]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={value}"]
    return cmd


def export_command(cfg: DemoConfig) -> list[str]:
    # The exporter's default gate (<= 0.5 accuracy points lost, >= 98% label agreement) applies.
    return [
        sys.executable,
        "-m",
        "exporter",
        "--checkpoint",
        str(cfg.checkpoint),
        "--output-dir",
        str(cfg.model_dir),
        "--quantize",
        "int8",
        "--eval-data",
        str(cfg.data_dir),
        "--eval-samples",
        str(cfg.eval_samples),
        "--test-accuracy",
    ]


def server_command(cfg: DemoConfig) -> list[str]:
    """Without --port: ServedProcess adds it (cfg.port, or a free one)."""
    return procs.server_command(cfg.model_dir, host=cfg.host)


def loadtest_command(cfg: DemoConfig, url: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "loadtest",
        "--host",
        url,
        "--users",
        str(cfg.users),
        "--spawn-rate",
        str(cfg.users),
        "--run-time",
        cfg.run_time,
        "--sla-p95-ms",
        f"{cfg.sla_p95_ms:g}",
        "--report-dir",
        str(cfg.report_dir / "loadtest"),
    ]
