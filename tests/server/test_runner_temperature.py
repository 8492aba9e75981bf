"""The server applies the model directory's temperature: probabilities = softmax(logits / T). A
directory without one (exported before calibration) serves plain softmax and says so once."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from core.modeldir import ModelDirError, read_model_dir
from core.tokenization import pad_batch
from server.app import create_app
from server.config import ServerConfig
from server.runner import OnnxRunner

ROOT = Path(__file__).resolve().parents[2]
# The tiny random model's logits differ by ~0.005 (p ~ 0.501): a small T makes that visible.
TEMPERATURE = 0.02
WARNING = "no calibration temperature"


def with_serving(tiny_model_dir: Path, out: Path, **serving: object) -> Path:
    """A copy of the tiny model directory with `serving` merged into config.json's serving block
    (a value of None removes the key)."""
    shutil.copytree(tiny_model_dir, out)
    config = json.loads((out / "config.json").read_text())
    for key, value in serving.items():
        if value is None:
            config["serving"].pop(key, None)
        else:
            config["serving"][key] = value
    (out / "config.json").write_text(json.dumps(config))
    return out


def direct_logits(model_dir: Path, text: str) -> np.ndarray:
    """ONNX Runtime's logits for one text, ids from the model directory's tokenizer."""
    encoder = read_model_dir(model_dir).encoder()
    ids, mask = pad_batch(encoder.encode_batch([text]), encoder.pad_id)
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    return session.run(None, feed)[0][0].astype(np.float64)


def softmax64(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


async def served(client, text: str) -> np.ndarray:
    body = await (await client.post("/v1/predict", json={"text": text})).json()
    return np.array([body["probabilities"]["negative"], body["probabilities"]["positive"]])


async def test_served_probabilities_are_softmax_of_logits_over_the_temperature(
    aiohttp_client, tiny_model_dir, tmp_path, reviews, caplog
):
    model_dir = with_serving(tiny_model_dir, tmp_path / "model", temperature=TEMPERATURE)
    with caplog.at_level(logging.WARNING, logger="server.model"):
        client = await aiohttp_client(create_app(ServerConfig(model_dir=model_dir, intra_op_threads=1)))
    assert WARNING not in caplog.text  # a calibrated model starts quietly
    for text, _ in reviews[:4]:  # one text per request: one batch, as computed directly
        logits = direct_logits(model_dir, text)
        got = await served(client, text)
        assert got == pytest.approx(softmax64(logits / TEMPERATURE), abs=1e-5)
        assert np.abs(got - softmax64(logits)).max() > 0.05  # the temperature really was applied
    info = await (await client.get("/v1/model")).json()
    assert info["calibration"] == {"temperature": TEMPERATURE}  # the copy's report has no calibration block


async def test_a_directory_without_a_temperature_serves_uncalibrated_with_one_warning(
    aiohttp_client, tiny_model_dir, tmp_path, reviews, caplog
):
    old = with_serving(tiny_model_dir, tmp_path / "old", temperature=None)
    report = json.loads((old / "export_report.json").read_text())
    report.pop("calibration", None)  # as an export from before calibration wrote it
    (old / "export_report.json").write_text(json.dumps(report))
    with caplog.at_level(logging.WARNING, logger="server.model"):
        client = await aiohttp_client(create_app(ServerConfig(model_dir=old, intra_op_threads=1)))
        text = reviews[0][0]
        got = await served(client, text)
        info = await (await client.get("/v1/model")).json()
    warnings = [r for r in caplog.records if WARNING in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert str(old) in warnings[0].getMessage() and "uncalibrated" in warnings[0].getMessage()
    assert got == pytest.approx(softmax64(direct_logits(old, text)), abs=1e-6)
    assert info["calibration"] == {"temperature": None}


@pytest.mark.parametrize("bad", [-1.0, 0, "2"])
def test_a_bad_temperature_is_a_one_line_model_dir_error(tiny_model_dir, tmp_path, bad):
    broken = with_serving(tiny_model_dir, tmp_path / "bad", temperature=bad)
    with pytest.raises(ModelDirError, match=r"serving\.temperature must be"):
        OnnxRunner(broken)


def test_the_server_refuses_a_bad_temperature_in_one_line(tiny_model_dir, tmp_path):
    broken = with_serving(tiny_model_dir, tmp_path / "bad", temperature=-2.0)
    result = subprocess.run(
        [sys.executable, "-m", "server", "--model-dir", str(broken)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "config.json" in last and "temperature must be finite and > 0, got -2.0" in last
