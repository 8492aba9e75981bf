"""The prediction log (--prediction-log): a real server on the tiny model, real HTTP, a real SQLite file."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from core.modeldir import read_model_dir
from server.app import create_app
from server.config import ServerConfig
from server.encoder import ModelEncoder
from server.predlog import COLUMNS
from server.runner import OnnxRunner

ROOT = Path(__file__).resolve().parents[2]
LONG = "a long and winding review " * 40  # far past the tiny model's 64 tokens


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return OnnxRunner(tiny_model_dir, intra_op_threads=1), ModelEncoder(read_model_dir(tiny_model_dir))


@pytest.fixture
def serve(aiohttp_client, model, tmp_path):
    """`client, db = await serve(prediction_log_sample=0.5, ...)`: the tiny model, logging to db."""
    runner, encoder = model

    async def start(**overrides):
        db = tmp_path / "predictions.db"
        config = ServerConfig(**{"inference_workers": 1, "prediction_log": db, **overrides})
        return await aiohttp_client(create_app(config, runner=runner, encoder=encoder)), db

    return start


def query(db: Path, sql: str, *args) -> list[tuple]:
    conn = sqlite3.connect(db, timeout=10)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


async def wait_rows(db: Path, n: int, limit_s: float = 10.0) -> int:
    """Until the writer has committed `n` rows (it flushes every FLUSH_S)."""
    deadline = time.monotonic() + limit_s
    count = 0
    while time.monotonic() < deadline:
        count = query(db, "SELECT COUNT(*) FROM predictions")[0][0]
        if count >= n:
            return count
        await asyncio.sleep(0.05)
    return count


async def scrape(client) -> dict[tuple[str, tuple], float]:
    text = await (await client.get("/metrics")).text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def predict(client, body: dict) -> tuple[int, dict, str]:
    resp = await client.post("/v1/predict", json=body)
    return resp.status, await resp.json(), resp.headers["X-Request-ID"]


async def test_every_text_is_a_row_and_the_metrics_count_it(serve, model):
    client, db = await serve()
    runner, encoder = model
    answers = []
    for i in range(5):
        answers.append(await predict(client, {"text": f"a fine film, number {i}"}))
    answers.append(await predict(client, {"texts": ["dull", LONG, "I loved every minute of it"]}))
    status, _, failed_id = await predict(client, {"text": ""})
    assert status == 422
    assert await wait_rows(db, 9) == 9

    got = {
        (r[0], r[1]): r
        for r in query(
            db,
            "SELECT request_id, position, label, score, tokens, truncated, status, text, "
            "model_name, model_version, latency_ms, batch_size FROM predictions",
        )
    }
    for status, body, request_id in answers:
        assert status == 200
        for position, p in enumerate(body.get("predictions", [body])):
            row = got[(request_id, position)]
            assert row[2:4] == (p["label"], pytest.approx(p["score"]))
            assert row[6:8] == (200, None)  # no text without --log-texts
            assert row[8:10] == (runner.info["model_name"], runner.info["model_version"])
            assert row[10] > 0 and row[11] >= 1
    multi = answers[-1][2]
    lengths = [len(ids) for ids in encoder.encode(["dull", LONG, "I loved every minute of it"])]
    assert [got[(multi, i)][4] for i in range(3)] == lengths and lengths[1] == encoder.max_length
    assert [got[(multi, i)][5] for i in range(3)] == [0, 1, 0]  # only the long review was cut
    # A failed request is one row: its status, no prediction.
    assert got[(failed_id, 0)][2:8] == (None, None, None, None, 422, None)

    metrics = await scrape(client)
    labels = [p["label"] for _, body, _ in answers for p in body.get("predictions", [body])]
    for label in runner.labels:  # exported for every label, at 0 when never predicted
        assert metrics[("sentiment_predictions_total", (("label", label),))] == labels.count(label)
    assert metrics[("sentiment_prediction_score_count", ())] == 8
    assert metrics[("sentiment_input_tokens_count", ())] == 8
    assert metrics[("sentiment_input_tokens_bucket", (("le", "64.0"),))] == 8  # never past max_length
    assert metrics[("sentiment_prediction_log_rows_total", ())] == 9
    assert metrics[("sentiment_prediction_log_dropped_total", ())] == 0
    assert metrics[("sentiment_prediction_log_errors_total", ())] == 0


async def test_texts_are_stored_only_with_log_texts(serve):
    client, db = await serve(log_texts=True)
    sent = ["a quiet triumph", "far too long"]
    _, _, request_id = await predict(client, {"texts": sent})
    assert await wait_rows(db, 2) == 2
    assert query(db, "SELECT text FROM predictions WHERE request_id = ? ORDER BY position", request_id) == [
        (t,) for t in sent
    ]
    assert [c[1] for c in query(db, "PRAGMA table_info(predictions)")][1:] == list(COLUMNS)


async def test_sampling_logs_about_its_share_of_requests_each_whole(serve):
    # Every request answered (no admission refusals, room in the queue), so every logged one has 2 rows.
    client, db = await serve(prediction_log_sample=0.3, latency_budget_ms=0, max_queue=1024)
    sent = 300
    results = await asyncio.gather(*(predict(client, {"texts": [f"review {i}", "and another"]}) for i in range(sent)))
    assert [r[0] for r in results] == [200] * sent
    await asyncio.sleep(0.6)  # two flushes: everything queued is written
    requests = query(db, "SELECT request_id, COUNT(*) FROM predictions GROUP BY request_id")
    # Binomial(300, 0.3): mean 90, sd 7.9; 5 sd either side.
    assert 50 <= len(requests) <= 130, len(requests)
    assert all(n == 2 for _, n in requests)  # a request is logged whole or not at all


async def test_a_blocked_writer_drops_and_counts_rows_and_serving_goes_on(serve):
    client, db = await serve(prediction_log_queue=5, latency_budget_ms=0)
    await predict(client, {"text": "the log is open"})
    assert await wait_rows(db, 1) == 1
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # the writer now waits on its busy timeout
    try:
        started = time.monotonic()
        results = await asyncio.gather(*(predict(client, {"text": f"review {i}"}) for i in range(40)))
        assert [r[0] for r in results] == [200] * 40
        assert time.monotonic() - started < 5  # serving did not wait on the disk
        dropped = (await scrape(client))[("sentiment_prediction_log_dropped_total", ())]
        assert dropped >= 40 - 2 * 5  # the queue holds 5; the blocked writer holds at most 5 more
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    written = await wait_rows(db, 41 - int(dropped))
    await asyncio.sleep(0.6)
    metrics = await scrape(client)
    assert written == 41 - dropped == metrics[("sentiment_prediction_log_rows_total", ())]
    assert metrics[("sentiment_prediction_log_dropped_total", ())] == dropped
    assert metrics[("sentiment_prediction_log_errors_total", ())] == 0


async def test_a_write_error_is_logged_and_counted_and_serving_goes_on(serve, caplog):
    client, db = await serve()
    await predict(client, {"text": "before"})
    assert await wait_rows(db, 1) == 1
    query(db, "DROP TABLE predictions")
    with caplog.at_level(logging.ERROR, logger="server.predlog"):
        for i in range(3):
            assert (await predict(client, {"text": f"after {i}"}))[0] == 200
        deadline = time.monotonic() + 5
        while (await scrape(client))[("sentiment_prediction_log_errors_total", ())] < 1:
            assert time.monotonic() < deadline, "no write error counted"
            await asyncio.sleep(0.05)
    assert any("write failed" in r.getMessage() and "no such table" in r.getMessage() for r in caplog.records)
    assert (await predict(client, {"text": "still serving"}))[0] == 200


async def test_the_oldest_rows_are_pruned_past_max_rows(serve):
    client, db = await serve(prediction_log_max_rows=10)
    ids = []
    for i in range(25):
        ids.append((await predict(client, {"text": f"review {i}"}))[2])
        if i % 8 == 7:
            await asyncio.sleep(0.35)  # several commits, each pruning
    await asyncio.sleep(0.6)
    kept = [r[0] for r in query(db, "SELECT request_id FROM predictions ORDER BY id")]
    assert kept == ids[-10:]


@pytest.mark.parametrize("make", ["missing folder", "not a database"])
def test_a_log_that_cannot_be_opened_stops_the_server_with_one_line(tmp_path, tiny_model_dir, make):
    path = tmp_path / "nowhere" / "log.db"
    if make == "not a database":
        path = tmp_path / "log.db"
        path.write_bytes(b"this is no SQLite file, just text " * 100)
    result = subprocess.run(
        [sys.executable, "-m", "server", "--model-dir", str(tiny_model_dir), "--prediction-log", str(path)]
        + ["--processes", "2"],  # checked in the parent, before any child starts
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "--prediction-log" in lines[0], result.stderr


async def test_two_server_processes_write_one_log(tiny_model_dir, tmp_path):
    """--processes 2: each child's writer commits to the same file (WAL, busy timeout); the request
    ids' per-process prefixes show that both children wrote."""
    import aiohttp

    from bench.procs import free_port

    db, port = tmp_path / "predictions.db", free_port()
    url = f"http://127.0.0.1:{port}"
    with open(tmp_path / "server.log", "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "server", "--model-dir", str(tiny_model_dir), "--port", str(port)]
            + ["--processes", "2", "--drain-timeout-s", "5", "--latency-budget-ms", "0", "--prediction-log", str(db)],
            cwd=ROOT,
            stdout=out,
            stderr=out,
        )
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            deadline = time.monotonic() + 60
            pids: set[str] = set()
            while len(pids) < 2:  # each child shows its pid in /metrics once it has answered something
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()
                try:
                    for _ in range(8):  # new connections: the kernel hashes each to one child
                        async with session.get(url + "/readyz") as resp:
                            await resp.read()
                    async with session.get(url + "/metrics") as resp:
                        families = text_string_to_metric_families(await resp.text())
                        pids = {
                            s.labels["pid"]
                            for f in families
                            for s in f.samples
                            if s.name == "sentiment_process_requests"
                        }
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)
            sent = 80

            async def one(i: int) -> int:
                async with session.post(url + "/v1/predict", json={"text": f"review {i}"}) as resp:
                    await resp.read()
                    return resp.status

            assert await asyncio.gather(*(one(i) for i in range(sent))) == [200] * sent
        proc.terminate()  # each child drains and writes what it has queued before it exits
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    rows = query(db, "SELECT request_id FROM predictions")
    assert len(rows) == sent
    assert len({request_id[:16] for (request_id,) in rows}) == 2, "both processes wrote rows"
    assert query(db, "PRAGMA journal_mode") == [("wal",)]


async def test_preflights_and_callers_without_a_key_write_no_rows(serve, tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("the-key\n")
    client, db = await serve(api_key_file=keys, cors_allow_origin=["https://app.example.com"])
    preflight = {"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"}
    assert (await client.options("/v1/predict", headers=preflight)).status == 200
    assert (await client.options("/v1/predict", headers={**preflight, "Origin": "https://x.example"})).status == 403
    assert (await client.post("/v1/predict", json={"text": "no key"})).status == 401
    resp = await client.post("/v1/predict", json={"text": "a fine film"}, headers={"Authorization": "Bearer the-key"})
    assert resp.status == 200
    assert await wait_rows(db, 1) == 1
    await asyncio.sleep(0.6)  # two more flushes: nothing else arrives
    assert query(db, "SELECT status, label IS NOT NULL FROM predictions") == [(200, 1)]
    samples = await scrape(client)
    requests = {labels: v for (name, labels), v in samples.items() if name == "sentiment_requests_total"}
    assert requests[(("code", "200"), ("endpoint", "predict"))] == 1  # the preflights are counted apart
    assert requests[(("code", "200"), ("endpoint", "preflight"))] == 1
    assert requests[(("code", "403"), ("endpoint", "preflight"))] == 1
