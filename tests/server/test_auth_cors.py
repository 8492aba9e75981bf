"""API keys and CORS on a real loopback server with the tiny model, and over a real process
for SIGHUP and start-up errors."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import aiohttp
import pytest

from bench.procs import ServedProcess, server_command
from server.app import create_app
from server.config import ServerConfig

ROOT = Path(__file__).resolve().parents[2]
REVIEW = {"text": "A charming, funny film with a wonderful cast."}


@pytest.fixture
def key_file(tmp_path) -> Path:
    path = tmp_path / "keys.txt"
    path.write_text("# team keys\nkey-one\n\n  key-two  \n")
    return path


@pytest.fixture
def serve_tiny(aiohttp_client, tiny_model_dir):
    async def start(**overrides):
        return await aiohttp_client(create_app(ServerConfig(model_dir=tiny_model_dir, intra_op_threads=1, **overrides)))

    return start


async def test_predict_needs_a_valid_key_and_the_probes_stay_open(serve_tiny, key_file):
    client = await serve_tiny(api_key_file=key_file)
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "key-one"},
        {"Authorization": "Basic a2V5"},
    ):
        resp = await client.post("/v1/predict", json=REVIEW, headers=headers)
        assert resp.status == 401, headers
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert (await resp.json())["error"]["code"] == "unauthorized"
    for key in ("key-one", "key-two"):
        resp = await client.post("/v1/predict", json=REVIEW, headers={"Authorization": f"Bearer {key}"})
        assert resp.status == 200 and (await resp.json())["label"] in ("negative", "positive")
    for path in ("/healthz", "/readyz", "/metrics", "/v1/model", "/openapi.json"):
        assert (await client.get(path)).status == 200, path
    metrics = await (await client.get("/metrics")).text()
    assert 'sentiment_rejected_total{reason="unauthorized"} 4.0' in metrics


async def test_without_a_key_file_nothing_is_asked(serve_tiny):
    client = await serve_tiny()
    assert (await client.post("/v1/predict", json=REVIEW)).status == 200


def test_a_key_file_with_no_key_stops_start_up_with_one_line(tmp_path, tiny_model_dir):
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing yet\n\n")
    for path, needle in ((empty, "holds no key"), (tmp_path / "missing.txt", "missing.txt")):
        result = subprocess.run(
            [sys.executable, "-m", "server", "--model-dir", str(tiny_model_dir), "--api-key-file", str(path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and needle in lines[0], result.stderr


def key_server(model_dir: Path, key_file: Path, log_path: Path, processes: int) -> ServedProcess:
    flags = ("--api-key-file", str(key_file), "--intra-op-threads", "1", "--processes", str(processes))
    return ServedProcess(server_command(model_dir, *flags), log_path, ready_timeout_s=60)


@pytest.mark.parametrize("processes", [1, 2])
async def test_keys_are_reread_on_sighup_and_never_logged(tmp_path, tiny_model_dir, key_file, processes):
    log_path = tmp_path / "server.log"
    server = key_server(tiny_model_dir, key_file, log_path, processes).start()
    proc = server.proc
    assert proc is not None
    try:
        # A new connection per request: with two processes the kernel spreads them over both.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:

            async def status(key: str) -> int:
                async with session.post(
                    server.url + "/v1/predict", json=REVIEW, headers={"Authorization": f"Bearer {key}"}
                ) as r:
                    return r.status

            assert (await status("key-one"), await status("key-three")) == (200, 401)
            key_file.write_text("key-three\n")
            proc.send_signal(signal.SIGHUP)
            # Each process re-reads on its own signal: wait until every one has logged it, since the first
            # 200 only shows that one of them has (on a loaded box the other may lag by a second).
            for _ in range(100):
                if log_path.read_text().count("API keys reloaded") >= processes:
                    break
                await asyncio.sleep(0.1)
            assert (await status("key-one"), await status("key-three")) == (401, 200)
            assert [await status("key-three") for _ in range(10)] == [200] * 10  # every process re-read
            key_file.write_text("")  # a file that no longer holds a key keeps the keys in force
            proc.send_signal(signal.SIGHUP)
            await asyncio.sleep(0.5)
            assert await status("key-three") == 200 and proc.poll() is None
    finally:
        code, _ = server.stop(timeout_s=30)
    assert code == 0
    log_text = log_path.read_text()
    assert "reloaded" in log_text and "not reloaded" in log_text
    assert "key-one" not in log_text and "key-three" not in log_text


async def test_cors_preflight_for_an_allowed_and_a_refused_origin(serve_tiny, key_file):
    client = await serve_tiny(cors_allow_origin=["https://app.example.com"], api_key_file=key_file)
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    resp = await client.options("/v1/predict", headers={"Origin": "https://app.example.com", **preflight})
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert "POST" in resp.headers["Access-Control-Allow-Methods"]
    assert {"AUTHORIZATION", "CONTENT-TYPE"} <= {
        h.strip().upper() for h in resp.headers["Access-Control-Allow-Headers"].split(",")
    }

    resp = await client.options("/v1/predict", headers={"Origin": "https://evil.example.net", **preflight})
    assert resp.status == 403 and "Access-Control-Allow-Origin" not in resp.headers
    assert (await resp.json())["error"]["code"] == "forbidden"

    # The answers, errors included, carry the headers a page needs to read them.
    origin = {"Origin": "https://app.example.com"}
    resp = await client.post("/v1/predict", json=REVIEW, headers={**origin, "Authorization": "Bearer key-one"})
    assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert "X-REQUEST-ID" in resp.headers["Access-Control-Expose-Headers"].upper()
    resp = await client.post("/v1/predict", json=REVIEW, headers=origin)
    assert resp.status == 401 and resp.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    resp = await client.post("/v1/predict", json=REVIEW, headers={"Origin": "https://evil.example.net"})
    assert "Access-Control-Allow-Origin" not in resp.headers


async def test_no_cors_headers_by_default(serve_tiny):
    client = await serve_tiny()
    resp = await client.post("/v1/predict", json=REVIEW, headers={"Origin": "https://app.example.com"})
    assert resp.status == 200 and "Access-Control-Allow-Origin" not in resp.headers
    resp = await client.options("/v1/predict", headers={"Origin": "https://app.example.com"})
    assert resp.status == 405


@pytest.mark.parametrize("origin", ["app.example.com", "https://app.example.com/path", "ftp://x"])
def test_a_bad_origin_is_refused_by_the_settings(origin):
    with pytest.raises(ValueError, match="--cors-allow-origin"):
        ServerConfig(cors_allow_origin=[origin])


def test_sighup_while_the_processes_start_kills_none_of_them(tmp_path, tiny_model_dir, key_file):
    log_path = tmp_path / "server.log"
    server = key_server(tiny_model_dir, key_file, log_path, 2)

    def hang_up_while_starting() -> None:
        # Once the parent supervises, while its children import and load (a handled signal would
        # be reset to its default, exit, by exec).
        for _ in range(1500):
            if server.proc is not None and log_path.is_file() and "server process 1 started" in log_path.read_text():
                break
            time.sleep(0.02)
        for _ in range(8):
            if server.proc is not None:
                server.proc.send_signal(signal.SIGHUP)
            time.sleep(0.1)

    sender = threading.Thread(target=hang_up_while_starting)
    sender.start()
    try:
        server.start()  # waits for /readyz meanwhile
    finally:
        sender.join()
        code, _ = server.stop(timeout_s=30)
    text = log_path.read_text()
    assert code == 0, text[-2000:]
    assert "starting it again" not in text and "killed by" not in text, text[-2000:]
