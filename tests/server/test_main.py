"""`python -m server` and `python -m server.batch_predict` as processes and CLIs."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np
import pandas as pd
import pytest

from bench.procs import free_port
from core.modeldir import read_model_dir
from server.batch_predict import main as batch_main
from server.encoder import ModelEncoder
from server.runner import OnnxRunner

ROOT = Path(__file__).resolve().parents[2]


def run_module(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_server_process_never_imports_torch_or_transformers():
    code = (
        "import sys, server.__main__, server.app, server.batch_predict, server.runner; "
        "bad = sorted({'torch', 'transformers', 'optimum'} & set(sys.modules)); print(bad); assert not bad"
    )
    result = run_module("-c", code)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--model-dir", "/nonexistent/model"], "does not exist"),
        (["--max-batch-size", "-1"], "--max-batch-size must be > 0"),
    ],
)
def test_bad_start_is_one_line_and_nonzero(argv, needle, tmp_path):
    result = run_module("-m", "server", *argv)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert needle in lines[-1] and "Traceback" not in result.stderr


def test_broken_model_dir_is_one_line(tmp_path, tiny_model_dir):
    broken = tmp_path / "model"
    broken.mkdir()
    for name in ("tokenizer.json", "config.json"):
        (broken / name).write_bytes((tiny_model_dir / name).read_bytes())
    (broken / "model.onnx").write_bytes(b"not an onnx graph")
    result = run_module("-m", "server", "--model-dir", str(broken))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "model.onnx" in result.stderr.strip().splitlines()[-1]


async def wait_ready(session: aiohttp.ClientSession, url: str, proc: subprocess.Popen, limit_s: float = 30) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "server exited during start-up"
        try:
            async with session.get(url + "/readyz") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("server never became ready")


async def test_sigterm_under_load_answers_every_accepted_request(tiny_model_dir, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        # A long batching wait keeps texts queued, so SIGTERM lands while work is accepted but unanswered.
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "server",
                "--model-dir",
                str(tiny_model_dir),
                "--port",
                str(port),
                "--max-wait-ms",
                "200",
                "--intra-op-threads",
                "1",
                "--drain-timeout-s",
                "5",
                # A 200 ms batching window cannot meet a 200 ms latency budget: admission by budget off.
                "--latency-budget-ms",
                "0",
            ],
            cwd=ROOT,
            stdout=log,
            stderr=log,
        )
    outcomes: list[tuple[str, float]] = []  # (what, time answered)
    stop = asyncio.Event()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            await wait_ready(session, url, proc)

            async def user(i: int) -> None:
                n = 0
                while not stop.is_set():
                    n += 1
                    try:
                        async with session.post(url + "/v1/predict", json={"text": f"review {i} {n} was fine"}) as resp:
                            body = await resp.json()
                            what = "200" if resp.status == 200 else f"{resp.status}:{body['error']['code']}"
                    except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                        what = "not-connected"
                        await asyncio.sleep(0.01)
                    outcomes.append((what, time.monotonic()))

            users = [asyncio.ensure_future(user(i)) for i in range(16)]

            async def answers_reach(n: int) -> None:
                deadline = time.monotonic() + 10
                while sum(what == "200" for what, _ in outcomes) < n and time.monotonic() < deadline:
                    await asyncio.sleep(0.005)

            # The 16 users move in waves: every text waits out the 200 ms batching window, then all are
            # answered together and sent again. SIGTERM goes 50 ms into a window, once the server is
            # visibly busy: at a fixed delay it could land between an answered wave and the next.
            await answers_reach(32)
            await answers_reach(sum(what == "200" for what, _ in outcomes) + 1)
            await asyncio.sleep(0.05)
            term_at = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(proc.wait, 10)
            exit_s = time.monotonic() - term_at
            stop.set()
            await asyncio.gather(*users)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0 and exit_s < 5
    kinds = {what for what, _ in outcomes}
    assert kinds <= {"200", "503:shutting_down", "not-connected"}, kinds
    answered_after_term = [t for what, t in outcomes if what == "200" and t > term_at]
    assert answered_after_term, "no accepted request was still in flight at SIGTERM"
    # Every prediction the server handled reached its client, with the status the server logged.
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    served = [x["status"] for x in lines if x.get("event") == "access" and x["path"] == "/v1/predict"]
    received = [what for what, _ in outcomes if what != "not-connected"]
    assert sorted(served) == sorted(int(w.split(":")[0]) for w in received)
    assert "Traceback" not in log_path.read_text()
    assert "was fine" not in log_path.read_text()  # the access log never holds review text
    assert all(len(x["request_id"]) == 32 and x["latency_ms"] >= 0 for x in lines if x.get("event") == "access")


def test_batch_predict_csv_and_parquet(tmp_path, tiny_model_dir, reviews, capsys):
    texts = [t for t, _ in reviews] + ["", "word " * 300]
    source = tmp_path / "in.csv"
    pd.DataFrame({"id": range(len(texts)), "text": texts}).to_csv(source, index=False)
    assert (
        batch_main(
            ["--model-dir", str(tiny_model_dir), "--batch-size", "1", str(source), str(tmp_path / "out.parquet")]
        )
        == 0
    )
    out = pd.read_parquet(tmp_path / "out.parquet")
    assert list(out["id"]) == list(range(len(texts)))
    runner = OnnxRunner(tiny_model_dir, intra_op_threads=1)
    expected = np.stack(
        [
            runner.predict([s])[0]
            for s in ModelEncoder(read_model_dir(tiny_model_dir)).encode(out["text"].fillna("").tolist())
        ]
    )
    assert np.allclose(out[["prob_negative", "prob_positive"]].to_numpy(), expected, atol=1e-6)
    assert list(out["label"]) == [runner.labels[i] for i in expected.argmax(axis=1)]
    assert np.allclose(out["score"], expected.max(axis=1))

    out.drop(columns=["label", "score"]).to_parquet(tmp_path / "again.parquet")
    assert (
        batch_main(["--model-dir", str(tiny_model_dir), str(tmp_path / "again.parquet"), str(tmp_path / "again.csv")])
        == 0
    )
    again = pd.read_csv(tmp_path / "again.csv")
    assert len(again) == len(texts) and {"label", "score"} <= set(again.columns)


@pytest.mark.parametrize(
    "make,needle",
    [
        (lambda d: pd.DataFrame({"review": ["x"]}).to_csv(d / "in.csv", index=False), "no `text` column"),
        (lambda d: (d / "in.csv").write_text(""), "cannot read"),
        (lambda d: None, "no such file"),
    ],
)
def test_batch_predict_bad_input_is_one_line(tmp_path, tiny_model_dir, capsys, make, needle):
    make(tmp_path)
    code = batch_main(["--model-dir", str(tiny_model_dir), str(tmp_path / "in.csv"), str(tmp_path / "out.csv")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0]
    assert not (tmp_path / "out.csv").exists()


def test_batch_predict_runs_as_module_without_tqdm(tmp_path, tiny_model_dir):
    source = tmp_path / "in.csv"
    pd.DataFrame({"text": ["good film", "bad film"]}).to_csv(source, index=False)
    code = (
        "import sys; sys.modules['tqdm'] = None; from server.batch_predict import main; "
        f"sys.exit(main(['--model-dir', {str(tiny_model_dir)!r}, {str(source)!r}, {str(tmp_path / 'o.csv')!r}]))"
    )
    result = run_module("-c", code)
    assert result.returncode == 0, result.stderr
    assert "scored 2/2 texts" in result.stderr
    assert len(pd.read_csv(tmp_path / "o.csv")) == 2
