"""Configuration 5: FastAPI + uvicorn, a worker process per core, no batching, as a real process."""

from __future__ import annotations

import json
import os
import sys
import urllib.request

import numpy as np
import pytest

from bench.capacity import fastapi_command
from bench.procs import ServedProcess
from core.modeldir import read_model_dir
from server.encoder import ModelEncoder
from server.runner import OnnxRunner

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


def post(url: str, payload: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def test_fastapi_baseline_answers_like_the_server_runner(tiny_model_dir, tmp_path, reviews, monkeypatch):
    from bench.fastapi_baseline import MODEL_DIR_ENV

    monkeypatch.setenv(MODEL_DIR_ENV, str(tiny_model_dir))
    cmd = fastapi_command(cores=2)
    assert cmd[:3] == [sys.executable, "-m", "uvicorn"] and cmd[cmd.index("--workers") + 1] == "2"
    with ServedProcess(cmd, tmp_path / "fastapi.log") as proc:
        answers = [post(proc.url + "/v1/predict", {"text": text}) for text, _ in reviews[:4]]
    model = read_model_dir(tiny_model_dir)
    encoder = ModelEncoder(model)
    runner = OnnxRunner(model, intra_op_threads=1)
    for (text, _), answer in zip(reviews[:4], answers):
        expected = runner.predict(encoder.encode([text]))[0]
        got = [answer["probabilities"]["negative"], answer["probabilities"]["positive"]]
        assert np.allclose(got, expected, atol=1e-6)
        assert answer["label"] == ("positive" if expected[1] > expected[0] else "negative")
    assert os.environ[MODEL_DIR_ENV] == str(tiny_model_dir)
