"""`python -m exporter --openvino-int8`: the static int8 OpenVINO IR beside model.onnx, gated on
the same reviews, recorded per engine in export_report.json; refused in one line where the
openvino extra is missing."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from core.modeldir import OPENVINO_FILES, read_model_dir
from exporter.__main__ import MODEL_FILES, main

ROOT = Path(__file__).resolve().parents[2]


def test_the_ir_is_written_beside_model_onnx_and_recorded_per_engine(tiny_openvino_model_dir):
    assert sorted(p.name for p in tiny_openvino_model_dir.iterdir()) == sorted([*MODEL_FILES, *OPENVINO_FILES])
    model = read_model_dir(tiny_openvino_model_dir)
    assert model.openvino_ir == tiny_openvino_model_dir / "openvino_model.xml"
    report = json.loads((tiny_openvino_model_dir / "export_report.json").read_text())
    ort, openvino = report["engines"]["ort"], report["engines"]["openvino"]
    assert (ort["graph"], ort["quantization"]) == ("model.onnx", "int8")
    assert (openvino["graph"], openvino["quantization"]) == ("openvino_model.xml", "int8-static")
    assert openvino["parity"]["samples"] == ort["parity"]["samples"] == report["parity"]["samples"] == 16
    assert openvino["parity"]["source"] == report["parity"]["source"]  # the same reviews as model.onnx
    assert 0.0 <= openvino["parity"]["label_agreement"] <= 1.0 and openvino["parity"]["max_abs_prob_diff"] < 0.05
    assert openvino["calibration_samples"] <= 32 and "preset mixed" in openvino["method"]
    if (ROOT / "data" / "imdb" / "train.parquet").is_file():  # training reviews, never the gate's
        assert "train split" in openvino["calibration_source"]
    assert {"openvino", "nncf"} <= set(report["versions"])
    assert report["file_sizes_bytes"]["openvino_model.bin"] > 0
    assert set(model.checked_engines()) == {"ort", "openvino"}


def test_the_ir_faces_the_same_gate(tiny_checkpoint, tmp_path, capsys, eval_dir):
    pytest.importorskip("nncf", reason="the openvino extra is not installed (pip install '.[openvino]')")
    out = tmp_path / "model"
    # Labelled reviews: without them (random text, a clean clone without data/imdb) no accuracy, no drop to gate.
    args = ["--checkpoint", str(tiny_checkpoint), "--output-dir", str(out), "--eval-samples", "8"]
    args += ["--eval-data", str(eval_dir)]
    args += ["--no-calibrate", "--min-agreement", "0", "--latency-repeats", "1", "--openvino-int8"]
    args += ["--openvino-calibration-samples", "8"]
    # A drop of 0 points is over a limit of -1 for every graph: the IR's failure is named too.
    assert main([*args, "--max-accuracy-drop", "-1"]) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "parity gate failed, nothing written" in line and "openvino (openvino_model.xml): accuracy drop" in line
    assert not out.exists()


def test_without_the_openvino_extra_it_is_one_line_and_exit_2(tiny_checkpoint, tmp_path):
    code = (
        "import sys; sys.modules['nncf'] = None; from exporter.__main__ import main; "
        f"sys.exit(main(['--checkpoint', {str(tiny_checkpoint)!r}, '--output-dir', {str(tmp_path / 'm')!r}, "
        "'--openvino-int8']))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    # nncf is hidden here; openvino is named too where it is not installed either (CI's default install)
    absent = "nncf" if importlib.util.find_spec("openvino") is not None else "openvino and nncf"
    assert result.stderr.strip().splitlines()[-1] == (
        f"exporter: error: --openvino-int8 needs {absent} (pip install '.[openvino]')"
    )


def test_the_ir_is_for_the_cpu_target(tiny_checkpoint, tmp_path, capsys):
    args = ["--checkpoint", str(tiny_checkpoint), "--output-dir", str(tmp_path / "m"), "--target", "gpu"]
    assert main([*args, "--openvino-int8"]) == 2
    assert "--openvino-int8 is for --target cpu" in capsys.readouterr().err
