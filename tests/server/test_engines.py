"""The engines behind the runner (server/engine*.py): each installed one against ONNX Runtime on
the tiny model, the `--engine auto` choice as a pure function and with fake engines, and the
one-line errors for an engine that is not installed or does not load."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import server.engine_choice as choice_module
from core.modeldir import read_model_dir
from core.tokenization import SpecialIds
from server.config import ServerConfig
from server.engine import EngineError, EngineNotInstalled, build_engine, not_installed
from server.engine_choice import MARGIN, choose_engine, measure, select_engine, timing_shapes
from server.engine_ort import OrtEngine
from server.model import load_model
from server.runner import OnnxRunner

ROOT = Path(__file__).resolve().parents[2]
SPECIALS = SpecialIds(cls_id=101, sep_id=102, pad_id=0)


def encoded(model_dir, texts):
    return read_model_dir(model_dir).encoder().encode_batch(texts)


# --- the choice, a pure function of measured seconds ------------------------------------------


def test_the_fastest_engine_is_chosen_and_every_timing_is_kept():
    choice = choose_engine({"ort": 0.30, "ort-openvino": 0.28, "openvino": 0.20})
    assert choice.name == "openvino" and choice.seconds == {"ort": 0.30, "ort-openvino": 0.28, "openvino": 0.20}
    assert "fastest: openvino" in choice.reason and "ort 0.3000 s" in choice.reason


def test_onnx_runtime_is_kept_unless_another_is_clearly_faster():
    near = 0.30 * (1 - MARGIN / 2)
    choice = choose_engine({"ort": 0.30, "openvino": near})
    assert choice.name == "ort" and "kept ort" in choice.reason
    assert choose_engine({"ort": 0.30, "openvino": 0.31}).name == "ort"


def test_an_engine_that_did_not_load_is_skipped_with_its_reason():
    choice = choose_engine({"ort": 0.30, "openvino": "failed to load: bad graph", "ort-openvino": "not installed"})
    assert choice.name == "ort" and choice.seconds == {"ort": 0.30}
    assert choice.skipped == {"openvino": "failed to load: bad graph", "ort-openvino": "not installed"}
    assert choice.to_dict()["skipped"]["openvino"] == "failed to load: bad graph"


def test_without_onnx_runtime_the_fastest_of_the_rest_serves():
    assert choose_engine({"ort": "failed to run: boom", "openvino": 0.5}).name == "openvino"


def test_nothing_that_ran_is_one_error_naming_every_reason():
    with pytest.raises(EngineError, match="no engine could run: ort: x; openvino: y"):
        choose_engine({"ort": "x", "openvino": "y"})


def test_the_timed_shapes_stay_within_max_length():
    assert timing_shapes(64) == [(1, 64), (4, 64), (8, 64)]
    assert timing_shapes(256) == [(1, 128), (1, 256), (4, 128), (8, 128)]


# --- select_engine with fake engines ----------------------------------------------------------


class FakeEngine:
    """Costs `per_token` seconds per padded token; `fail` raises on run."""

    def __init__(self, name, per_token=0.0, fail=False):
        self.name, self.per_token, self.fail, self.runs = name, per_token, fail, 0
        self.info = {"name": name}

    def run(self, ids, mask):
        if self.fail:
            raise RuntimeError("kernel exploded\nsecond line")
        self.runs += 1
        time.sleep(self.per_token * ids.size)
        return np.zeros((ids.shape[0], 2), dtype=np.float32)


class FakeModel:
    """What select_engine reads of a model directory."""

    path = Path("fake-model")

    def __init__(self, checked=("ort", "openvino", "ort-openvino"), max_length=16):
        self._checked = {name: {} for name in checked}
        self.truncation = type("T", (), {"max_length": max_length})()

    def checked_engines(self):
        return self._checked


@pytest.fixture
def everything_installed(monkeypatch):
    monkeypatch.setattr(choice_module, "not_installed", lambda name: None)


def builder(engines, errors=()):
    def build(name):
        if name in errors:
            raise EngineError(f"engine {name}: cannot load graph (bad op)")
        return engines[name]

    return build


def test_auto_times_every_engine_and_serves_the_fastest(everything_installed):
    engines = {
        "ort": FakeEngine("ort", 3e-6),
        "ort-openvino": FakeEngine("ort-openvino", 2e-6),
        "openvino": FakeEngine("openvino", 1e-6),
    }
    engine, choice = select_engine("auto", FakeModel(), builder(engines), SPECIALS)
    assert engine is engines["openvino"] and choice.name == "openvino"
    assert set(choice.seconds) == {"ort", "ort-openvino", "openvino"}
    assert choice.seconds["openvino"] < choice.seconds["ort-openvino"] < choice.seconds["ort"]
    assert all(e.runs == 4 * 3 for e in engines.values())  # warm-up + 3 rounds of 3 shapes (max_length 16)


def test_auto_falls_back_to_onnx_runtime_when_another_fails_to_load_or_to_run(everything_installed, caplog):
    engines = {"ort": FakeEngine("ort", 1e-6), "openvino": FakeEngine("openvino", fail=True)}
    with caplog.at_level("INFO", logger="server.engine"):
        engine, choice = select_engine("auto", FakeModel(), builder(engines, errors=("ort-openvino",)), SPECIALS)
    assert engine is engines["ort"] and choice.name == "ort"
    assert choice.skipped == {
        "ort-openvino": "failed to load: engine ort-openvino: cannot load graph (bad op)",
        "openvino": "failed to run: kernel exploded",
    }
    assert "engine ort-openvino: failed to load" in caplog.text


def test_auto_says_which_engines_are_not_installed_and_measures_nothing_alone(monkeypatch, caplog):
    monkeypatch.setattr(choice_module, "not_installed", lambda name: None if name == "ort" else "not installed (hint)")
    ort = FakeEngine("ort")
    with caplog.at_level("INFO", logger="server.engine"):
        engine, choice = select_engine("auto", FakeModel(), builder({"ort": ort}), SPECIALS)
    assert engine is ort and ort.runs == 0 and choice.seconds == {}
    assert choice.skipped == {"ort-openvino": "not installed (hint)", "openvino": "not installed (hint)"}
    lines = [r.getMessage() for r in caplog.records]
    assert "engine openvino: not installed (hint)" in lines and "engine ort-openvino: not installed (hint)" in lines


def test_auto_leaves_out_engines_the_export_did_not_check(everything_installed):
    engines = {"ort": FakeEngine("ort", 1e-6), "openvino": FakeEngine("openvino")}
    engine, choice = select_engine("auto", FakeModel(checked=("ort",)), builder(engines), SPECIALS)
    assert engine is engines["ort"] and engines["openvino"].runs == 0
    assert "--openvino-int8" in choice.skipped["openvino"]


def test_an_engine_asked_for_by_name_is_built_or_fails(everything_installed):
    engines = {"openvino": FakeEngine("openvino")}
    engine, choice = select_engine("openvino", FakeModel(checked=("ort",)), builder(engines), SPECIALS)
    assert engine is engines["openvino"] and "did not run this engine" in choice.reason
    with pytest.raises(EngineError, match="cannot load"):
        select_engine("openvino", FakeModel(), builder({}, errors=("openvino",)), SPECIALS)


def test_measure_interleaves_rounds_and_reports_a_failing_engine():
    fast, broken = FakeEngine("ort"), FakeEngine("openvino", fail=True)
    outcomes = measure({"ort": fast, "openvino": broken}, [(1, 8), (2, 8)], SPECIALS, rounds=2)
    assert isinstance(outcomes["ort"], float) and outcomes["openvino"] == "failed to run: kernel exploded"
    assert fast.runs == 2 + 2 * 2


def test_measure_runs_fewer_rounds_where_the_warm_up_says_they_would_be_long():
    slow = FakeEngine("ort", 2e-3)  # 32 ms a batch of 16 tokens
    outcomes = measure({"ort": slow}, [(1, 16)], SPECIALS, rounds=5, budget_s=0.05)
    assert isinstance(outcomes["ort"], float) and slow.runs == 1 + 1  # the warm-up, then one round


def test_the_server_imports_no_engine_runtime_it_does_not_use(tiny_model_dir):
    code = (
        "import sys; from server.config import ServerConfig; from server.model import load_model; "
        f"load_model(ServerConfig(model_dir={str(tiny_model_dir)!r})); "
        "bad = sorted({'openvino', 'torch', 'transformers'} & set(sys.modules)); print(bad); assert not bad"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr  # auto there: only ONNX Runtime was checked


# --- the real engines on the tiny model -------------------------------------------------------


def test_the_onnx_runtime_engine_is_the_runners_default(tiny_model_dir, reviews):
    model = read_model_dir(tiny_model_dir)
    engine = build_engine("ort", model, workers=2, threads=1)
    assert isinstance(engine, OrtEngine) and engine.info["sessions"] == 1  # one thread a run: one shared session
    assert build_engine("ort", model, workers=2, threads=2).info["sessions"] == 2
    seqs = encoded(tiny_model_dir, [text for text, _ in reviews])
    default = OnnxRunner(model, intra_op_threads=1)
    on_engine = OnnxRunner(model, engine=engine)
    np.testing.assert_allclose(on_engine.predict(seqs), default.predict(seqs), atol=1e-6)
    assert on_engine.info["engine"]["name"] == "ort" and on_engine.info["providers"] == ["CPUExecutionProvider"]


def test_load_model_records_the_choice_in_the_runners_info(tiny_model_dir):
    info = load_model(ServerConfig(model_dir=tiny_model_dir, engine="ort")).runner.info["engine"]
    assert (info["requested"], info["name"], info["reason"]) == ("ort", "ort", "asked for (--engine)")
    auto = load_model(ServerConfig(model_dir=tiny_model_dir)).runner.info["engine"]
    assert auto["requested"] == "auto" and auto["name"] == "ort"
    assert set(auto["skipped"]) == {"ort-openvino", "openvino"}  # not installed, or not checked by the export


def test_an_engine_that_is_not_installed_is_named_with_its_install_line(tiny_model_dir):
    if not_installed("ort-openvino") is None:
        pytest.skip("onnxruntime-openvino is installed here")
    with pytest.raises(EngineNotInstalled, match=r"engine ort-openvino: not installed.*\.\[ort-openvino\]"):
        build_engine("ort-openvino", read_model_dir(tiny_model_dir), 1, 1)


def test_onnx_runtimes_openvino_provider_gives_its_cpu_labels(tiny_model_dir, reviews):
    reason = not_installed("ort-openvino")
    if reason is not None:
        pytest.skip(reason)
    model = read_model_dir(tiny_model_dir)
    engine = build_engine("ort-openvino", model, workers=2, threads=1)
    assert engine.info["providers"][0] == "OpenVINOExecutionProvider" and engine.info["sessions"] == 2
    seqs = encoded(tiny_model_dir, [text for text, _ in reviews])
    reference = OnnxRunner(model, intra_op_threads=1).predict(seqs)
    assert_same_labels(OnnxRunner(model, engine=engine).predict(seqs), reference)


def run_server(*args: str, preamble: str = "") -> subprocess.CompletedProcess:
    code = f"import sys; {preamble}from server.__main__ import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_a_missing_engine_asked_for_is_a_one_line_start_up_error(tiny_model_dir):
    # The import system told that openvino is absent (a module set to None), as in the default install.
    result = run_server(
        "--model-dir", str(tiny_model_dir), "--engine", "openvino", preamble="sys.modules['openvino'] = None; "
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "error: engine openvino: not installed (pip install '.[openvino]')"


def test_an_unknown_engine_is_refused_by_the_flag_and_the_environment(capsys):
    from server.config import parse_config

    with pytest.raises(SystemExit) as exc:
        parse_config(["--engine", "tensorrt"], env={})
    assert exc.value.code == 2 and "--engine" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_config([], env={"SENTIMENT_ENGINE": "tensorrt"})
    assert parse_config([], env={"SENTIMENT_ENGINE": "ort"}).engine == "ort"


def test_openvino_names_the_onnx_runtime_fusions_it_cannot_read(tiny_model_dir):
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    with pytest.raises(EngineError, match=r"cannot load model\.onnx \(No conversion rule.*--openvino-int8"):
        build_engine("openvino", read_model_dir(tiny_model_dir), 1, 1)


# --- OpenVINO on the exporter's static int8 IR ------------------------------------------------

# The IR (static int8) and model.onnx (dynamic int8) quantize the same tiny model differently;
# both stay this close to it. Measured against ONNX Runtime: 9e-5 on the Xeon (OpenVINO infers
# in bf16 on AMX), 9.4e-4 on an AMD EPYC without AVX-512 (f32 inference: the static int8 scales
# shift every answer alike), where the tiny model's answers are ~2.4e-3 apart.
INT8_TOLERANCE = 2e-3


def assert_same_labels(probs, reference, tolerance=INT8_TOLERANCE):
    diff = float(np.abs(probs - reference).max()) if probs.shape == reference.shape else float("inf")
    assert diff <= tolerance, f"max |dp| {diff:.2e} over {tolerance:.0e}"
    # Where ONNX Runtime's answer is not a coin flip at the distance measured, the labels agree.
    clear = np.abs(reference[:, 1] - reference[:, 0]) > 2 * max(diff, 1e-5)
    assert clear.sum() >= len(reference) // 4, "too few texts with a clear answer to compare labels on"
    assert (probs.argmax(1) == reference.argmax(1))[clear].all()


def test_openvino_gives_onnx_runtimes_labels_on_the_tiny_model(tiny_openvino_model_dir, reviews):
    from server.engine_openvino import OpenVinoEngine

    model = read_model_dir(tiny_openvino_model_dir)
    engine = build_engine("openvino", model, workers=2, threads=1)
    assert isinstance(engine, OpenVinoEngine)
    assert (engine.info["graph"], engine.info["quantization"], engine.info["requests"]) == (
        "openvino_model.xml",
        "int8-static",
        2,
    )
    assert (engine.info["num_streams"], engine.info["inference_num_threads"]) == ("2", "2")  # 2 workers x 1 thread
    texts = [text for text, _ in reviews] * 3
    seqs = encoded(tiny_openvino_model_dir, texts)
    openvino = OnnxRunner(model, engine=engine)
    ort = OnnxRunner(model, intra_op_threads=1)
    assert openvino.info["quantization"] == "int8-static" and openvino.info["engine"]["name"] == "openvino"
    reference = ort.predict(seqs)
    assert_same_labels(openvino.predict(seqs), reference)  # one batch, padded to its longest text
    one_by_one = np.concatenate([openvino.predict([s]) for s in seqs])  # dynamic batch size and width
    assert_same_labels(one_by_one, reference)


def test_openvinos_infer_requests_serve_concurrent_workers(tiny_openvino_model_dir, reviews):
    from concurrent.futures import ThreadPoolExecutor

    model = read_model_dir(tiny_openvino_model_dir)
    runner = OnnxRunner(model, engine=build_engine("openvino", model, workers=2, threads=1))
    seqs = encoded(tiny_openvino_model_dir, [text for text, _ in reviews] * 2)
    expected = np.concatenate([runner.predict([s]) for s in seqs])
    with ThreadPoolExecutor(4) as pool:  # more callers than requests: they wait for one, never share it
        got = np.concatenate(list(pool.map(lambda s: runner.predict([s]), seqs)))
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert runner.engine._requests.qsize() == 2  # every request went back to the pool


def test_auto_measures_onnx_runtime_and_openvino_on_a_directory_with_the_ir(tiny_openvino_model_dir):
    started = time.perf_counter()
    runner = load_model(ServerConfig(model_dir=tiny_openvino_model_dir, inference_workers=1)).runner
    elapsed = time.perf_counter() - started
    info = runner.info["engine"]
    assert set(info["seconds"]) == {"ort", "openvino"} and info["name"] in ("ort", "openvino")
    assert info["name"] in info["reason"] and "ort-openvino" in info["skipped"]
    assert runner.engine.name == info["name"]
    assert elapsed < 20  # the measurement is meant to take well under 3 s; this only catches a runaway


def test_an_ir_without_its_weights_is_a_broken_model_directory(tiny_openvino_model_dir, tmp_path):
    import shutil

    from core.modeldir import ModelDirError

    broken = tmp_path / "m"
    shutil.copytree(tiny_openvino_model_dir, broken)
    (broken / "openvino_model.bin").unlink()
    with pytest.raises(ModelDirError, match=r"has openvino_model\.xml without openvino_model\.bin"):
        read_model_dir(broken)


def test_the_server_serves_on_openvino_when_asked(tiny_openvino_model_dir, reviews, tmp_path):
    import urllib.request

    from bench.procs import ServedProcess, server_command

    cmd = server_command(tiny_openvino_model_dir, "--engine", "openvino", "--intra-op-threads", "1")
    with ServedProcess(cmd, tmp_path / "server.log", ready_timeout_s=60) as server:
        with urllib.request.urlopen(server.url + "/v1/model", timeout=10) as resp:
            info = json.loads(resp.read())
        request = urllib.request.Request(
            server.url + "/v1/predict",
            data=json.dumps({"texts": [text for text, _ in reviews]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            answers = json.loads(resp.read())["predictions"]
    engine = info["engine"]
    assert (engine["requested"], engine["name"], engine["graph"]) == ("openvino", "openvino", "openvino_model.xml")
    assert info["quantization"] == "int8-static" and len(answers) == len(reviews)
    model = read_model_dir(tiny_openvino_model_dir)
    reference = OnnxRunner(model, intra_op_threads=1).predict(encoded(tiny_openvino_model_dir, [t for t, _ in reviews]))
    served = np.array([[a["probabilities"][label] for label in model.labels] for a in answers])
    assert_same_labels(served, reference)


def test_the_supervisors_probe_measures_once_with_a_childs_share(tiny_openvino_model_dir):
    """`--processes N --engine auto`: server.engine_probe times the engines in a process of its
    own with a child's flags, and prints the choice every child is started on."""
    from core.layout import ProcessLayout
    from server.engine_choice import EngineChoice
    from server.supervisor import probe_engine

    choice = probe_engine(["--model-dir", str(tiny_openvino_model_dir)], ProcessLayout(2, 1, 1))
    assert set(choice["seconds"]) == {"ort", "openvino"} and choice["name"] in ("ort", "openvino")
    assert EngineChoice.from_dict(choice).to_dict() == choice


def test_every_process_serves_the_engine_the_supervisor_measured(tiny_openvino_model_dir, tmp_path):
    import urllib.request

    from bench.procs import ServedProcess, server_command

    cmd = server_command(tiny_openvino_model_dir, "--processes", "2", "--engine", "auto")
    with ServedProcess(cmd, tmp_path / "server.log", ready_timeout_s=90) as server:
        seen = {}
        for _ in range(12):  # new connections: the kernel hashes each to one child
            with urllib.request.urlopen(server.url + "/v1/model", timeout=10) as resp:
                info = json.loads(resp.read())
            seen[info["engine"]["name"]] = info["engine"]
    log = (tmp_path / "server.log").read_text()
    assert len(seen) == 1, seen  # one engine for the port, however the connections were spread
    (engine,) = seen.values()
    assert engine["requested"] == "auto" and engine["reason"].startswith("auto, measured once by the --processes")
    assert set(engine["seconds"]) == {"ort", "openvino"}
    # measured once, by the probe; no child measured again
    assert log.count("for every server process") == 1 and "chosen in" not in log
