"""The command lines the demo runs, one per step (pure: the tests feed them to the real CLIs)."""

from __future__ import annotations

import sys

from bench import procs
from demo.config import DemoConfig


def data_command(cfg: DemoConfig) -> list[str]:
    cmd = [sys.executable, "-m", "trainer", "data", "--output-dir", str(cfg.data_dir)]
    if cfg.shared_data_dir.is_dir():
        cmd += ["--shared-dir", str(cfg.shared_data_dir)]
    return cmd


def baseline_command(cfg: DemoConfig) -> list[str]:
    """TF-IDF + logistic regression on the full train split, scored on the demo's own test reviews:
    the same --max-eval-samples cap and seed as the demo's training run select the same reviews."""
    return [
        sys.executable,
        "-m",
        "trainer",
        "baseline",
        "--data-dir",
        str(cfg.data_dir),
        "--output-dir",
        str(cfg.report_dir / "baseline"),
        "--max-eval-samples",
        str(cfg.eval_samples),
    ]


def train_command(cfg: DemoConfig) -> list[str]:
    sets = {
        "max_train_samples": cfg.train_samples,
        "max_eval_samples": cfg.eval_samples,
        "max_length": cfg.max_length,
        "head_tokens": cfg.max_length // 2,
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "warmup_ratio": 0.1,
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
