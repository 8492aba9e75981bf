"""The exporter on a tiny random checkpoint: real optimum export, real ONNX Runtime."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.modeldir import read_serving_config
from core.tokenization import TextEncoder, TruncationConfig, pad_batch
from exporter.__main__ import MODEL_FILES, main
from exporter.compare import onnx_feed, open_session

REPO = Path(__file__).resolve().parents[2]
# Long enough that head+tail truncation matters at max_length 64.
LONG_REVIEW = " ".join(["the film opens slowly and the middle drags on"] * 20) + " but the ending is superb"


def _export(ckpt: Path, out: Path, eval_dir: Path, *extra: str) -> int:
    return main(
        [
            "--checkpoint",
            str(ckpt),
            "--output-dir",
            str(out),
            "--eval-data",
            str(eval_dir),
            "--latency-repeats",
            "2",
            "--max-accuracy-drop",
            "100",
            "--min-agreement",
            "0",
            *extra,
        ]
    )


def _torch_logits(ckpt: Path, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(ckpt).eval()
    with torch.inference_mode():
        return model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()


def _batch(model_dir: Path, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The server's preprocessing, driven only by the model directory."""
    encoder = TextEncoder.from_file(
        model_dir / "tokenizer.json", TruncationConfig.from_dict(read_serving_config(model_dir)["truncation"])
    )
    return pad_batch(encoder.encode_batch(texts), encoder.pad_id)


def _onnx_logits(model_dir: Path, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    session = open_session(model_dir / "model.onnx")
    return session.run(None, onnx_feed(session, ids, mask))[0]


@pytest.fixture(scope="module")
def headtail_checkpoint(tmp_path_factory) -> Path:
    from tiny_model import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("ht") / "ckpt", truncation="head+tail", seed=1)


@pytest.mark.parametrize("optimize", ["none", "O2"])
def test_fp32_logits_match_pytorch(tmp_path, headtail_checkpoint, eval_dir, reviews, optimize):
    out = tmp_path / "model"
    assert _export(headtail_checkpoint, out, eval_dir, "--quantize", "none", "--optimize", optimize) == 0
    serving = read_serving_config(out)
    assert serving["truncation"] == {"max_length": 64, "strategy": "head+tail", "head_tokens": 32}
    assert serving["quantization"] == "none" and serving["optimization"] == optimize

    ids, mask = _batch(out, [t for t, _ in reviews] + [LONG_REVIEW])
    assert ids.shape[1] == 64  # the long review was truncated to max_length
    np.testing.assert_allclose(
        _onnx_logits(out, ids, mask), _torch_logits(headtail_checkpoint, ids, mask), atol=1e-4, rtol=1e-4
    )
    report = json.loads((out / "export_report.json").read_text())
    assert report["parity"]["label_agreement"] == 1.0
    assert report["parity"]["max_abs_prob_diff"] < 1e-4


def test_int8_graph_has_integer_ops_and_agrees(tiny_model_dir, tiny_checkpoint):
    import onnx

    ops = {node.op_type for node in onnx.load(str(tiny_model_dir / "model.onnx")).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger", "QAttention"} <= ops, ops
    assert "MatMul" not in ops  # every weight matmul was quantized

    rng = np.random.default_rng(0)
    words = ["good", "bad", "film", "plot", "actor", "boring", "great", "awful", "story", "music"]
    texts = [" ".join(rng.choice(words, size=rng.integers(3, 60))) for _ in range(64)]
    ids, mask = _batch(tiny_model_dir, texts)
    onnx_logits = _onnx_logits(tiny_model_dir, ids, mask)
    torch_logits = _torch_logits(tiny_checkpoint, ids, mask)
    agreement = (onnx_logits.argmax(1) == torch_logits.argmax(1)).mean()
    assert agreement >= 0.9, agreement
    assert not np.allclose(onnx_logits, torch_logits, atol=1e-7)  # it really is a different (int8) graph


@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("seq", [5, 300])
def test_dynamic_batch_and_sequence(tiny_model_dir, batch, seq):
    session = open_session(tiny_model_dir / "model.onnx")
    ids = np.random.default_rng(seq).integers(1000, 30000, size=(batch, seq), dtype=np.int64)
    mask = np.ones_like(ids)
    mask[0, seq // 2 :] = 0
    logits = session.run(None, onnx_feed(session, ids, mask))[0]
    assert logits.shape == (batch, 2) and np.isfinite(logits).all()


def test_model_dir_contract_and_report(tiny_model_dir, tiny_checkpoint):
    assert sorted(p.name for p in tiny_model_dir.iterdir()) == sorted(MODEL_FILES)
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert config["serving"] == {
        "truncation": {"max_length": 64, "strategy": "head", "head_tokens": 32},
        "model_name": "tiny-random-bert",
        "model_version": config["serving"]["model_version"],
        "quantization": "int8",
        "optimization": "O2",
        "target": "cpu",
    }
    assert len(config["serving"]["model_version"]) == 12
    tokenizer = json.loads((tiny_model_dir / "tokenizer.json").read_text())
    assert tokenizer["truncation"]["max_length"] == 64

    report = json.loads((tiny_model_dir / "export_report.json").read_text())
    for key in (
        "source_checkpoint",
        "source_git_commit",
        "exporter_git_commit",
        "opset",
        "versions",
        "target",
        "quantization",
        "quantization_isa",
        "per_channel",
        "optimization",
        "pipeline",
        "file_sizes_bytes",
        "input_names",
        "output_names",
        "parity",
        "latency_ms",
    ):
        assert key in report, key
    assert report["source_checkpoint"] == str(tiny_checkpoint.resolve())
    assert report["versions"]["onnxruntime"] and report["versions"]["optimum"]
    assert report["opset"] >= 14
    assert report["input_names"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert report["file_sizes_bytes"]["model.onnx"] == (tiny_model_dir / "model.onnx").stat().st_size
    assert report["file_sizes_bytes"]["model.onnx"] < report["file_sizes_bytes"]["fp32_export.onnx"]
    parity = report["parity"]
    for key in (
        "samples",
        "source",
        "label_agreement",
        "pytorch_accuracy",
        "onnx_accuracy",
        "accuracy_drop_points",
        "max_abs_prob_diff",
    ):
        assert key in parity, key
    assert parity["samples"] == 16 and 0.0 <= parity["label_agreement"] <= 1.0
    latency = report["latency_ms"]
    assert latency["seq_len"] == 128 and latency["intra_op_threads"] >= 1
    assert set(latency["batches"]) == {"1", "8", "32"}
    assert all(b["median_ms"] > 0 for b in latency["batches"].values())


def test_gpu_target_builds_fp16_graph(tmp_path, tiny_checkpoint, eval_dir):
    import onnx

    out = tmp_path / "gpu"
    assert _export(tiny_checkpoint, out, eval_dir, "--target", "gpu") == 0
    model = onnx.load(str(out / "model.onnx"))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # io unchanged
    assert read_serving_config(out)["quantization"] == "fp16" and read_serving_config(out)["target"] == "gpu"


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("exporter: error: ") and "Traceback" not in err[0]
    return err[0]


def test_missing_checkpoint_is_one_line(tmp_path, capsys):
    out = tmp_path / "model"
    assert main(["--checkpoint", str(tmp_path / "nope"), "--output-dir", str(out)]) == 2
    assert "does not exist" in _one_error_line(capsys)
    assert not out.exists()


@pytest.mark.parametrize("damage", ["weights", "training_config", "config"])
def test_broken_checkpoint_is_one_line(tmp_path, tiny_checkpoint, capsys, damage):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    if damage == "weights":
        (ckpt / "model.safetensors").write_bytes(b"not a safetensors file")
    elif damage == "training_config":
        (ckpt / "training_config.yaml").write_text("base_model: x\n")  # no max_length/truncation
    else:
        (ckpt / "config.json").write_text("{broken")
    out = tmp_path / "model"
    assert main(["--checkpoint", str(ckpt), "--output-dir", str(out)]) == 2
    line = _one_error_line(capsys)
    assert str(ckpt) in line
    assert not out.exists()


def test_bad_flag_is_one_line(tmp_path, tiny_checkpoint, capsys):
    assert main(["--checkpoint", str(tiny_checkpoint), "--output-dir", str(tmp_path / "m"), "--quantize", "int4"]) == 2
    assert "--quantize" in _one_error_line(capsys)
    assert (
        main(["--checkpoint", str(tiny_checkpoint), "--output-dir", str(tmp_path / "m"), "--min-agreement", "2"]) == 2
    )
    assert "--min-agreement" in _one_error_line(capsys)


def test_gate_failure_leaves_previous_model_untouched(tmp_path, tiny_checkpoint, tiny_model_dir, eval_dir, capsys):
    out = tmp_path / "model"
    shutil.copytree(tiny_model_dir, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # ONNX would have to be 101 points more accurate than PyTorch: impossible
    code = main(
        [
            "--checkpoint",
            str(tiny_checkpoint),
            "--output-dir",
            str(out),
            "--eval-data",
            str(eval_dir),
            "--latency-repeats",
            "1",
            "--max-accuracy-drop",
            "-101",
        ]
    )
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("exporter: error: parity gate failed") and "--max-accuracy-drop -101" in err[-1]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temp dirs left behind


def test_gate_failure_with_no_previous_output(tmp_path, tiny_checkpoint, eval_dir):
    out = tmp_path / "new" / "model"
    code = main(
        [
            "--checkpoint",
            str(tiny_checkpoint),
            "--output-dir",
            str(out),
            "--eval-data",
            str(eval_dir),
            "--latency-repeats",
            "1",
            "--quantize",
            "none",
            "--optimize",
            "none",
            "--min-agreement",
            "1",
            "--max-accuracy-drop",
            "-101",
        ]
    )
    assert code == 1
    assert list(out.parent.iterdir()) == []


def test_refuses_to_replace_unrelated_directory(tmp_path, tiny_checkpoint, capsys):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(["--checkpoint", str(tiny_checkpoint), "--output-dir", str(out)]) == 2
    assert "refusing" in _one_error_line(capsys)
    assert (out / "notes.txt").read_text() == "keep me"


def test_cli_entry_point_one_line_without_traceback(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "exporter",
            "--checkpoint",
            str(tmp_path / "missing"),
            "--output-dir",
            str(tmp_path / "m"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"exporter: error: checkpoint directory {tmp_path / 'missing'} does not exist"
    ]


def test_detect_isa():
    from exporter.quantize import detect_isa

    assert detect_isa("flags\t: fpu avx2 avx512f avx512bw avx512_vnni\n", "x86_64") == "avx512_vnni"
    assert detect_isa("flags\t: fpu avx2 avx512f avx512bw\n", "x86_64") == "avx512"
    assert detect_isa("flags\t: fpu sse4_2 avx2\n", "x86_64") == "avx2"
    assert detect_isa("", "aarch64") == "arm64"


def test_missing_eval_data_is_one_line(tmp_path, tiny_checkpoint, capsys):
    out = tmp_path / "model"
    code = main(["--checkpoint", str(tiny_checkpoint), "--output-dir", str(out), "--eval-data", str(tmp_path / "none")])
    assert code == 2
    assert "--eval-data" in _one_error_line(capsys)
    assert not out.exists()


def test_benchmark_cli_rejects_unknown_names(capsys):
    from exporter.benchmark import main as bench_main

    assert bench_main(["--models", "minilm,gpt5"]) == 2
    assert "gpt5" in capsys.readouterr().err
    assert bench_main(["--models", "checkpoint"]) == 2
    assert "--checkpoint" in capsys.readouterr().err


def test_report_carries_the_input_reference(tmp_path, tiny_checkpoint, eval_dir, reviews):
    """The evaluation reviews' served token counts and the training split's label share: what the
    monitor and the drift gauge compare traffic with (core/reference.py)."""
    from core.reference import TOKEN_EDGES, read_reference, token_counts

    out = tmp_path / "model"
    assert _export(tiny_checkpoint, out, eval_dir) == 0
    report = json.loads((out / "export_report.json").read_text())
    ref = read_reference(report)
    assert ref is not None and ref.edges == TOKEN_EDGES
    assert ref.samples == report["parity"]["samples"] == sum(ref.counts)
    assert ref.source == report["parity"]["source"]
    # 40 labelled rows, 4 held out for validation, stratified: the other 36 are half positive.
    assert ref.label_share == {"negative": 0.5, "positive": 0.5} and "train split (36 reviews)" in ref.label_source
    # Counted as the server counts tokens: its own encoder, after truncation.
    encoder = TextEncoder.from_file(
        out / "tokenizer.json", TruncationConfig.from_dict(read_serving_config(out)["truncation"])
    )
    every = token_counts(len(ids) for ids in encoder.encode_batch(pd.read_parquet(eval_dir / "train.parquet")["text"]))
    assert all(every[i] >= n for i, n in enumerate(ref.counts))


def test_random_text_is_no_reference(tiny_checkpoint):
    from exporter.parity import EvalSet
    from exporter.report import input_reference

    encoder = TextEncoder.from_file(tiny_checkpoint / "tokenizer.json", TruncationConfig(64))
    assert input_reference(encoder, EvalSet(["some random words"], None, "random text"), {0: "negative"}) is None


def test_gate_takes_a_drop_of_exactly_the_limit():
    # 5 reviews of 1,000 at the default 0.5 points: 0.8900 - 0.8850 is 0.50000000000000044 in floats.
    from exporter.parity import gate_failures

    def parity(pytorch: int, onnx: int, agree: int) -> dict:
        return {
            "label_agreement": agree / 1000,
            "pytorch_accuracy": pytorch / 1000,
            "onnx_accuracy": onnx / 1000,
            "accuracy_drop_points": 100.0 * (pytorch / 1000 - onnx / 1000),
        }

    assert parity(890, 885, 980)["accuracy_drop_points"] > 0.5  # else this test proves nothing
    assert gate_failures(parity(890, 885, 980), 0.5, 0.98) == []
    failures = gate_failures(parity(890, 884, 979), 0.5, 0.98)
    assert len(failures) == 2 and "accuracy drop 0.60 points" in failures[1] and "0.9790 < " in failures[0]
