"""A real `python -m server` process on the tiny exported model, shared by the ship tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.procs import free_port

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class LiveServer:
    url: str
    port: int
    proc: subprocess.Popen


@pytest.fixture(scope="session")
def live_server(tiny_model_dir, tmp_path_factory):
    """Started through SENTIMENT_* variables, as the images and manifests start it."""
    port = free_port()
    env = {
        **os.environ,
        "SENTIMENT_MODEL_DIR": str(tiny_model_dir),
        "SENTIMENT_HOST": "127.0.0.1",
        "SENTIMENT_PORT": str(port),
        "SENTIMENT_INTRA_OP_THREADS": "1",
        "SENTIMENT_DRAIN_TIMEOUT_S": "5",
    }
    log = tmp_path_factory.mktemp("live-server") / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "server"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"server did not start: {log.read_text()[-2000:]}")
        time.sleep(0.2)
    yield LiveServer(url, port, proc)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
