"""Two CPU processes under torchrun (gloo) train one model with DistributedDataParallel."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from trainer.__main__ import main as cli_main

REPO = Path(__file__).resolve().parents[2]


def _without_dropout(checkpoint: Path, dest: Path) -> Path:
    """A copy of the tiny checkpoint with dropout off, so runs differ only in how they batch."""
    shutil.copytree(checkpoint, dest)
    config = json.loads((dest / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (dest / "config.json").write_text(json.dumps(config))
    return dest


@pytest.mark.timeout(240)
@pytest.mark.slow
def test_torchrun_two_process_gloo_run_matches_single_process(tmp_path, tiny_checkpoint, reviews):
    base = _without_dropout(tiny_checkpoint, tmp_path / "base")
    data = tmp_path / "imdb"
    data.mkdir()
    train = [(f"{text} Copy {i}.", label) for i in range(3) for text, label in reviews]
    for name, rows in (("train", train), ("test", reviews)):
        pd.DataFrame({"label": [y for _, y in rows], "text": [t for t, _ in rows]}).to_parquet(data / f"{name}.parquet")
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "trainer",
        "train",
        "--data-dir",
        str(data),
        "--base-model",
        str(base),
        "--output-dir",
        str(out),
    ]
    # 18 train reviews, 2 ranks x batch 4 -> micro-batches of 4, 4, 1 per rank,
    # accumulated 2 -> 2 updates per epoch (the second from the remainder); 2 epochs.
    common = (
        "device=cpu",
        "precision=fp32",  # the two runs reduce in different orders: only fp32 matches to 2e-4
        "grad_accum_steps=2",
        "epochs=2",
        "max_length=64",
        "lr=1e-2",
        "val_fraction=0.25",
        "progress_bar=false",
        "log_every_steps=1",
        "keep_state=true",
    )
    for item in common + ("batch_size=4",):
        cmd += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=220)
    assert proc.returncode == 0, proc.stderr[-3000:]

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert metrics["optimizer_steps"] == 4
    assert metrics["train_samples"] == 2 * 18  # both ranks' samples counted, each once
    assert metrics["validation"]["samples"] == 6 and metrics["test"]["samples"] == 8
    assert metrics["reload_check"]["ok"]
    history = json.loads((out / "history.json").read_text())
    assert [h["step"] for h in history] == [2, 4]
    # only rank 0 writes: one log file, one checkpoint, and its weights are finite
    assert (out / "train.log").is_file() and (out / "model.safetensors").is_file()
    from safetensors.torch import load_file

    assert all(torch.isfinite(t).all() for t in load_file(out / "model.safetensors").values())

    # the same global batches (8 = 2 ranks x 4) in one process give the same weights
    single = tmp_path / "single"
    argv = ["train", "--data-dir", str(data), "--base-model", str(base), "--output-dir", str(single)]
    for item in common + ("batch_size=8",):
        argv += ["--set", item]
    assert cli_main(argv) == 0
    ddp_state = torch.load(out / "state" / "state.pt", weights_only=False)["model"]
    one_state = torch.load(single / "state" / "state.pt", weights_only=False)["model"]
    initial = load_file(base / "model.safetensors")
    moved = max((ddp_state[k] - initial[k]).abs().max().item() for k in initial if k in ddp_state)
    assert moved > 2e-2  # 4 AdamW steps at lr 1e-2 really moved the weights
    for name, tensor in one_state.items():
        torch.testing.assert_close(ddp_state[name], tensor, atol=2e-4, rtol=1e-3, msg=name)
