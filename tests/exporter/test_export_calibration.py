"""The exporter's calibration on the tiny checkpoint: a temperature in config.json, ECE before/after
and accuracy in export_report.json, the reliability diagram in the model directory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.calibration import MIN_TEMPERATURE
from core.modeldir import RELIABILITY_FILE, read_model_dir
from exporter.__main__ import MODEL_FILES, main
from exporter.config import ExportConfig
from server.runner import OnnxRunner

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


MAJORITY = 0.55  # of the labels, the tiny model's favourite


@pytest.fixture(scope="module")
def labelled_dir(tmp_path_factory, reviews, tiny_model_dir) -> Path:
    """200 train rows (20 held out for validation: the fit) and 60 test rows, in the data's layout.

    The random tiny model says about 0.501 for its favourite label whatever the text; where 55% of
    the labels are that label, softmax(logits / T) is calibrated at the T that makes it say 0.55:
    a temperature well inside the search range, and a real drop in ECE on the test rows.
    """
    rng = np.random.default_rng(5)
    words = " ".join(t for t, _ in reviews).split()
    runner = OnnxRunner(tiny_model_dir, intra_op_threads=1)
    favourite = int(runner.predict(read_model_dir(tiny_model_dir).encoder().encode_batch(["a film"]))[0].argmax())

    def frame(n: int) -> pd.DataFrame:
        texts = [" ".join(rng.choice(words, size=int(rng.integers(3, 40)))) for _ in range(n)]
        labels = [favourite if i < round(n * MAJORITY) else 1 - favourite for i in range(n)]
        return pd.DataFrame({"id": range(n), "rating": [8 if y else 2 for y in labels], "label": labels, "text": texts})

    out = tmp_path_factory.mktemp("labelled")
    frame(200).to_parquet(out / "train.parquet")
    frame(60).to_parquet(out / "test.parquet")
    return out


def _export(ckpt: Path, out: Path, *extra: str) -> int:
    return main(
        [
            *("--checkpoint", str(ckpt), "--output-dir", str(out), "--latency-repeats", "1"),
            *("--max-accuracy-drop", "100", "--min-agreement", "0", *extra),
        ]
    )


@pytest.fixture(scope="module")
def calibrated_dir(tmp_path_factory, tiny_checkpoint, labelled_dir) -> Path:
    out = tmp_path_factory.mktemp("calibrated") / "model"
    assert _export(tiny_checkpoint, out, "--eval-data", str(labelled_dir)) == 0
    return out


def test_export_stores_a_temperature_and_reports_calibration(calibrated_dir):
    assert sorted(p.name for p in calibrated_dir.iterdir()) == sorted([*MODEL_FILES, RELIABILITY_FILE])
    temperature = read_model_dir(calibrated_dir).temperature
    report = json.loads((calibrated_dir / "export_report.json").read_text())
    block = report["calibration"]
    assert temperature is not None and block["temperature"] == temperature
    assert MIN_TEMPERATURE * 1.1 < temperature < 1.0 and block["at_bound"] is False  # sharpened
    assert block["reliability_diagram"] == RELIABILITY_FILE and block["ece_bins"] == 15

    validation, test = block["validation"], block["test"]
    # fitted on the parity gate's reviews: the same 20, the same int8 accuracy, unchanged by T
    assert validation["samples"] == report["parity"]["samples"] == 20
    assert validation["source"] == report["parity"]["source"]
    assert validation["accuracy_before"] == validation["accuracy_after"] == report["parity"]["onnx_accuracy"]
    assert validation["accuracy_after"] == MAJORITY  # 11 of the 20 (stratified)
    # calibrated: as sure as it is right, on the fitting reviews and on the held-out ones
    assert validation["nll_after"] < validation["nll_before"] - 1e-3
    assert validation["ece_before"] > 0.04 and validation["ece_after"] < 0.01
    assert test["samples"] == 60 and "test split" in test["source"]
    assert test["accuracy_before"] == test["accuracy_after"] == MAJORITY
    assert test["ece_before"] > 0.04 and test["ece_after"] < 0.01
    for figures in (validation, test):
        for when in ("before", "after"):
            bins = figures[f"reliability_{when}"]
            assert sum(b["count"] for b in bins) == figures["samples"] and len(bins) == 15
            from_bins = sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"])
            assert figures[f"ece_{when}"] == pytest.approx(from_bins / figures["samples"], abs=1e-9)


def test_test_figures_are_what_the_server_would_score(calibrated_dir, labelled_dir):
    """The held-out reviews, one at a time through the server's runner (its own tokenizer and
    stored temperature): the report's accuracy and NLL after calibration (continuous, so int8's
    batch-mate effects show as ~1e-4 at most)."""
    model = read_model_dir(calibrated_dir)
    runner = OnnxRunner(model, intra_op_threads=1)
    test = pd.read_parquet(labelled_dir / "test.parquet")
    encoder = model.encoder()
    probs = np.concatenate([runner.predict(encoder.encode_batch([t])) for t in test["text"]])
    labels = test["label"].to_numpy()
    figures = json.loads((calibrated_dir / "export_report.json").read_text())["calibration"]["test"]
    assert figures["accuracy_after"] == float((probs.argmax(1) == labels).mean())
    nll = float(-np.log(probs[np.arange(len(labels)), labels]).mean())
    assert figures["nll_after"] == pytest.approx(nll, rel=1e-3)
    # and /v1/model's summary is the report's, with the temperature the runner applies
    summary = runner.info["calibration"]
    assert summary["temperature"] == runner.temperature == model.temperature
    assert summary["test"]["ece_after"] == figures["ece_after"] and "reliability_after" not in summary["test"]
    assert set(summary) == {"temperature", "validation", "test"}


def test_reliability_diagram_is_a_png_with_both_splits(calibrated_dir):
    from matplotlib.image import imread

    path = calibrated_dir / RELIABILITY_FILE
    assert path.read_bytes()[:8] == PNG_MAGIC
    height, width = imread(path).shape[:2]
    assert width > 2 * height * 0.9  # two panels side by side: validation and test


def test_no_calibrate_and_random_text_fit_nothing(tiny_model_dir, tmp_path, tiny_checkpoint, monkeypatch):
    # the session's tiny model was exported with --no-calibrate
    report = json.loads((tiny_model_dir / "export_report.json").read_text())
    assert report["calibration"]["temperature"] is None and "--no-calibrate" in report["calibration"]["skipped"]
    assert "temperature" not in read_model_dir(tiny_model_dir).serving
    # no data/imdb here: random text, which has no labels to fit on
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "model"
    assert _export(tiny_checkpoint, out, "--eval-samples", "8") == 0
    report = json.loads((out / "export_report.json").read_text())
    assert report["parity"]["source"].startswith("random text")
    assert report["calibration"]["temperature"] is None and "random text" in report["calibration"]["skipped"]
    assert read_model_dir(out).temperature is None
    assert sorted(p.name for p in out.iterdir()) == sorted(MODEL_FILES)


def test_calibration_flags():
    cfg = ExportConfig(checkpoint=Path("c"), output_dir=Path("o"))
    assert cfg.calibrate is True and cfg.calibration_test_samples == 2000
    with pytest.raises(ValueError, match="--calibration-test-samples"):
        ExportConfig(checkpoint=Path("c"), output_dir=Path("o"), calibration_test_samples=-1)


def test_test_accuracy_scores_every_test_review_as_the_server_does(tmp_path, tiny_checkpoint, labelled_dir):
    out = tmp_path / "model"
    assert _export(tiny_checkpoint, out, "--eval-data", str(labelled_dir), "--no-calibrate", "--test-accuracy") == 0
    model = read_model_dir(out)
    parity = model.parity_summary()  # what GET /v1/model shows
    test = pd.read_parquet(labelled_dir / "test.parquet")
    assert parity["test_samples"] == len(test) == 60 and "test split" in parity["test_source"]
    runner = OnnxRunner(model, intra_op_threads=1)
    encoder = model.encoder()
    served = [int(runner.predict(encoder.encode_batch([t]))[0].argmax()) for t in test["text"]]
    assert parity["test_accuracy"] == pytest.approx(float(np.mean(np.array(served) == test["label"].to_numpy())))
    assert model.temperature is None  # --no-calibrate: the accuracy needs no temperature


def test_test_accuracy_without_test_reviews_says_so(tmp_path, tiny_checkpoint, caplog, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data/imdb here: parity on random text, no test reviews to score
    out = tmp_path / "model"
    assert _export(tiny_checkpoint, out, "--no-calibrate", "--test-accuracy") == 0
    parity = read_model_dir(out).parity_summary()
    assert "random text" in parity["source"] and parity.get("test_accuracy") is None
    assert "no held-out test split" in caplog.text
