"""OnnxRunner on the tiny exported model (on its default engine, ONNX Runtime), and its one-line
errors for broken model directories."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

import core.layout as layout_module
import server.model as model_module
from core.layout import model_on_gpu, physical_cores, thread_layout
from core.modeldir import ModelDirError, read_model_dir
from core.probs import softmax
from core.tokenization import pad_batch
from server.encoder import ModelEncoder
from server.runner import OnnxRunner


def encoder_for(model_dir, truncate=True):
    return ModelEncoder(read_model_dir(model_dir), truncate)


def test_runner_reads_the_model_directory(tiny_model_dir):
    runner = OnnxRunner(tiny_model_dir, intra_op_threads=1)
    assert runner.labels == ("negative", "positive")
    assert runner.max_length == 64 and runner.info["quantization"] == "int8"
    assert "token_type_ids" in runner.engine.input_names  # BERT: the engine feeds zeros
    assert runner.info["engine"]["name"] == "ort" and runner.info["engine"]["graph"] == "model.onnx"
    seqs = encoder_for(tiny_model_dir).encode(["good", "word " * 200])
    assert len(seqs[1]) == 64 and seqs[0].dtype == np.int64
    probs = runner.predict(seqs)
    assert probs.shape == (2, 2) and np.allclose(probs.sum(axis=1), 1, atol=1e-6)
    assert runner.info["parity"]["label_agreement"] >= 0


def test_no_truncation_keeps_every_token(tiny_model_dir):
    encoder = encoder_for(tiny_model_dir, truncate=False)
    assert len(encoder.encode(["word " * 200])[0]) == 202


@pytest.mark.parametrize(
    "breakage,needle",
    [
        (lambda d: (d / "model.onnx").unlink(), "lacks model.onnx"),
        (lambda d: (d / "config.json").write_text("{"), "unreadable json"),
        (lambda d: (d / "config.json").write_text(json.dumps({"serving": {}})), "no id2label"),
        (lambda d: (d / "tokenizer.json").write_text("{}"), "cannot load tokenizer"),
    ],
)
def test_broken_model_dir_errors(tiny_model_dir, tmp_path, breakage, needle):
    broken = tmp_path / "m"
    shutil.copytree(tiny_model_dir, broken)
    breakage(broken)
    with pytest.raises(ModelDirError, match=needle):
        OnnxRunner(broken)


def test_thread_default_respects_cgroup_quota(monkeypatch):
    assert 1 <= physical_cores() <= (os.cpu_count() or 1)
    monkeypatch.setattr(layout_module, "cgroup_cpu_quota", lambda: 1.0)
    assert physical_cores() == 1


def test_thread_layout_explicit_values_pass_through():
    assert thread_layout(3, 5) == (3, 5)
    assert thread_layout(1, 1) == (1, 1)


def test_thread_layout_zero_fills_the_physical_cores():
    cores = physical_cores()
    workers, intra = thread_layout(0, 0)
    assert workers == cores and intra >= 1
    assert workers * intra <= max(cores, workers)
    assert thread_layout(1, 0) == (1, cores)  # one worker gets every core
    assert thread_layout(0, 2) == (cores, 2)


@pytest.mark.parametrize(
    "workers,intra,expected",
    [
        (0, 0, (8, 1)),
        (1, 0, (1, 8)),
        (2, 0, (2, 4)),
        (3, 0, (3, 2)),
        (16, 0, (16, 1)),
        (0, 3, (8, 3)),
    ],
)
def test_thread_layout_splits_cores_among_workers(monkeypatch, workers, intra, expected):
    monkeypatch.setattr(layout_module, "physical_cores", lambda: 8)
    assert thread_layout(workers, intra) == expected
    if workers:  # explicit workers are kept on a GPU too; by default a GPU gets one
        assert thread_layout(workers, intra, gpu=True) == expected
    else:
        assert thread_layout(workers, intra, gpu=True) == (1, intra or 8)


def test_model_on_gpu_follows_the_export_target_and_the_providers(tiny_model_dir, tmp_path):
    import onnxruntime as ort

    assert model_on_gpu(tiny_model_dir) is False  # exported for CPU
    gpu_dir = tmp_path / "m"
    shutil.copytree(tiny_model_dir, gpu_dir)
    config = json.loads((gpu_dir / "config.json").read_text())
    config["serving"]["target"] = "gpu"
    (gpu_dir / "config.json").write_text(json.dumps(config))
    assert model_on_gpu(gpu_dir) is ("CUDAExecutionProvider" in ort.get_available_providers())
    with pytest.raises(ModelDirError, match="does not exist"):
        model_on_gpu(tmp_path / "missing")


def test_load_model_gives_each_worker_its_share_of_threads(tiny_model_dir, monkeypatch):
    from server.config import ServerConfig
    from server.model import load_model

    monkeypatch.setattr(layout_module, "physical_cores", lambda: 4)
    runner = load_model(ServerConfig(model_dir=tiny_model_dir, inference_workers=2)).runner
    # Two threads per worker need a session each: one session's pool is shared by its runs.
    assert runner.info["intra_op_threads"] == 2 and runner.info["sessions"] == 2
    one_thread = load_model(ServerConfig(model_dir=tiny_model_dir, inference_workers=4)).runner
    assert one_thread.info["intra_op_threads"] == 1 and one_thread.info["sessions"] == 1


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'")
def test_load_model_falls_back_to_the_cpu_layout_when_cuda_does_not_start(tiny_model_dir, monkeypatch, caplog):
    # Asking for the CUDA provider where it cannot start is ONNX Runtime's real fallback path:
    # the session comes up on CPU. It must then get the CPU's layout, not the GPU's one worker
    # with every core (which the CPU's worker count would multiply).
    import onnxruntime as ort

    from server.config import ServerConfig
    from server.inference import inference_workers
    from server.model import load_model

    if layout_module.uses_cuda(ort.get_available_providers()):
        pytest.skip("the CUDA provider is present here and may start")
    monkeypatch.setattr(layout_module, "physical_cores", lambda: 4)
    monkeypatch.setattr(model_module, "cuda_wanted", lambda serving: True)
    config = ServerConfig(model_dir=tiny_model_dir)
    with caplog.at_level("WARNING", logger="server.model"):
        runner = load_model(config).runner
    assert runner.info["providers"] == ["CPUExecutionProvider"]
    assert runner.info["intra_op_threads"] == 1 and inference_workers(config, runner) == 4
    assert "CUDA provider did not start" in caplog.text


def test_runner_with_several_sessions_answers_concurrent_callers_alike(tiny_model_dir):
    from concurrent.futures import ThreadPoolExecutor

    runner = OnnxRunner(tiny_model_dir, intra_op_threads=1, sessions=2)
    seqs = encoder_for(tiny_model_dir).encode(["a fine film", "dull and long", "I loved every minute of it"] * 4)
    expected = np.concatenate([runner.predict([s]) for s in seqs])
    with ThreadPoolExecutor(4) as pool:
        got = np.concatenate(list(pool.map(lambda s: runner.predict([s]), seqs)))
    assert np.allclose(got, expected, atol=1e-6)
    assert runner.engine._sessions.qsize() == 2  # every session went back to the pool


def test_default_workers_one_per_core_on_cpu_one_on_gpu(monkeypatch):
    from types import SimpleNamespace

    from server.config import ServerConfig
    from server.inference import inference_workers

    monkeypatch.setattr(layout_module, "physical_cores", lambda: 4)
    cpu = SimpleNamespace(info={"providers": ["CPUExecutionProvider"]})
    gpu = SimpleNamespace(info={"providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]})
    assert inference_workers(ServerConfig(), cpu) == 4
    assert inference_workers(ServerConfig(), gpu) == 1
    assert inference_workers(ServerConfig(inference_workers=3), gpu) == 3


def test_batch_token_budget_by_device():
    from types import SimpleNamespace

    from server.config import ServerConfig
    from server.inference import CPU_BATCH_TOKENS, GPU_BATCH_TOKENS, batch_limits

    cpu = SimpleNamespace(info={"providers": ["CPUExecutionProvider"]})
    gpu = SimpleNamespace(info={"providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]})
    assert (CPU_BATCH_TOKENS, GPU_BATCH_TOKENS) == (256, 8192)
    assert batch_limits(ServerConfig(), cpu).max_batch_tokens == 256
    assert batch_limits(ServerConfig(), gpu).max_batch_tokens == 8192
    limits = batch_limits(ServerConfig(max_batch_tokens=1000, max_wait_ms=3, max_padding_ratio=0.2), gpu)
    assert (limits.max_batch_tokens, limits.max_wait_s, limits.max_padding) == (1000, 0.003, 0.2)


def test_softmax_is_stable():
    probs = softmax(np.array([[1000.0, 0.0], [0.0, 0.0]]))
    assert np.allclose(probs, [[1, 0], [0.5, 0.5]])


@pytest.fixture(scope="module")
def tiny_fp32_model_dir(tiny_checkpoint, tmp_path_factory):
    """fp32 export of the tiny checkpoint: int8 dynamic quantization moves a text's output
    with its batch-mates' padding, which would hide what shape buckets change."""
    from exporter.__main__ import main as export_main

    out = tmp_path_factory.mktemp("fp32") / "model"
    assert (
        export_main(
            [
                "--checkpoint",
                str(tiny_checkpoint),
                "--output-dir",
                str(out),
                "--quantize",
                "none",
                "--eval-samples",
                "8",
                "--max-accuracy-drop",
                "100",
                "--min-agreement",
                "0",
                "--no-calibrate",  # a coin-flip model's temperature (its bound) would flatten every answer
            ]
        )
        == 0
    )
    return out


class ShapeRecorder:
    """Wraps a real engine and notes the input shapes it was run on."""

    def __init__(self, engine):
        self.engine, self.shapes = engine, []
        self.name, self.info = engine.name, engine.info

    def run(self, ids, mask):
        self.shapes.append(ids.shape)
        return self.engine.run(ids, mask)


def test_shape_buckets_pad_batches_to_few_shapes_with_the_same_answers(tiny_fp32_model_dir, reviews):
    plain = OnnxRunner(tiny_fp32_model_dir, intra_op_threads=1)
    assert plain.shape_bucket == 1 and plain.info["shape_bucket"] == 1  # CPU default: off
    bucketed = OnnxRunner(tiny_fp32_model_dir, intra_op_threads=1, shape_bucket=16, max_batch_size=8)
    bucketed.engine = recorder = ShapeRecorder(bucketed.engine)
    seqs = encoder_for(tiny_fp32_model_dir).encode([text for text, _ in reviews[:5]])
    assert max(len(s) for s in seqs) < 64 and len({len(s) for s in seqs}) > 1
    probs = bucketed.predict(seqs)
    assert probs.shape == (5, 2)
    np.testing.assert_allclose(probs, plain.predict(seqs), atol=1e-5)  # padding is masked, copies dropped
    width = -(-max(len(s) for s in seqs) // 16) * 16
    assert recorder.shapes == [(8, width)]
    bucketed.predict(seqs[:1])
    assert recorder.shapes[-1] == (1, -(-len(seqs[0]) // 16) * 16)

    shapes = [(size, width) for size in (1, 2, 4, 8) for width in (16, 32, 48, 64)]
    assert bucketed.warmup_shapes() == shapes
    recorder.shapes.clear()
    bucketed.warmup()
    assert recorder.shapes == shapes  # every shape a batch can take has run before any request


def test_pad_batch_rounds_the_width_and_fills_rows_with_copies():
    seqs = [np.array([101, 5, 6, 7, 102]), np.array([101, 8, 102])]
    ids, mask = pad_batch(seqs, 0)
    assert ids.shape == (2, 5) and mask.sum(axis=1).tolist() == [5, 3] and ids[1, 3:].tolist() == [0, 0]
    ids, mask = pad_batch(seqs, 0, width_multiple=4, rows=4)
    assert ids.shape == (4, 8) and mask.sum(axis=1).tolist() == [5, 3, 5, 5]
    assert (ids[2:] == ids[0]).all()  # filler rows copy a real one: no all-masked row
    assert pad_batch(seqs, 0, width_multiple=4, max_width=6)[0].shape == (2, 6)  # not past max_length
    assert pad_batch(seqs, 0, width_multiple=4, max_width=4)[0].shape == (2, 8)  # longest over it: not cut
