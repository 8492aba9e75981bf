"""OnnxRunner on the tiny exported model, and its one-line errors for broken model directories."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

import server.runner as runner_module
from server.runner import ModelDirError, OnnxRunner, physical_cores, softmax


def test_runner_reads_the_model_directory(tiny_model_dir):
    runner = OnnxRunner(tiny_model_dir, intra_op_threads=1)
    assert runner.labels == ("negative", "positive")
    assert runner.max_length == 64 and runner.info["quantization"] == "int8"
    assert "token_type_ids" in runner.input_names  # BERT: the runner feeds zeros
    seqs = runner.encode(["good", "word " * 200])
    assert len(seqs[1]) == 64 and seqs[0].dtype == np.int64
    probs = runner.predict(seqs)
    assert probs.shape == (2, 2) and np.allclose(probs.sum(axis=1), 1, atol=1e-6)
    assert runner.info["parity"]["label_agreement"] >= 0


def test_no_truncation_keeps_every_token(tiny_model_dir):
    runner = OnnxRunner(tiny_model_dir, intra_op_threads=1, truncate=False)
    assert len(runner.encode(["word " * 200])[0]) == 202


@pytest.mark.parametrize("breakage,needle", [
    (lambda d: (d / "model.onnx").unlink(), "lacks model.onnx"),
    (lambda d: (d / "config.json").write_text("{"), "unreadable json"),
    (lambda d: (d / "config.json").write_text(json.dumps({"serving": {}})), "no id2label"),
    (lambda d: (d / "tokenizer.json").write_text("{}"), "cannot load tokenizer"),
])
def test_broken_model_dir_errors(tiny_model_dir, tmp_path, breakage, needle):
    broken = tmp_path / "m"
    shutil.copytree(tiny_model_dir, broken)
    breakage(broken)
    with pytest.raises(ModelDirError, match=needle):
        OnnxRunner(broken)


def test_thread_default_respects_cgroup_quota(monkeypatch):
    assert 1 <= physical_cores() <= (os.cpu_count() or 1)
    monkeypatch.setattr(runner_module, "_cgroup_cpu_quota", lambda: 1.0)
    assert physical_cores() == 1


def test_softmax_is_stable():
    probs = softmax(np.array([[1000.0, 0.0], [0.0, 0.0]]))
    assert np.allclose(probs, [[1, 0], [0.5, 0.5]])
