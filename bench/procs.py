"""A server under test as a subprocess: free loopback port, optional CPU pinning, readiness
wait, CPU accounting, and a clean stop (SIGTERM, then kill)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path


def server_command(model_dir: Path, *flags: str, host: str = "127.0.0.1") -> list[str]:
    """`python -m server` on `model_dir` with `flags`; without --port (ServedProcess adds it)."""
    return [sys.executable, "-m", "server", "--model-dir", str(model_dir), "--host", host, *flags]


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of `pid` and every live descendant (a child that has exited is not counted:
    read before stopping the server)."""
    total, stack, tick = 0.0, [pid], os.sysconf("SC_CLK_TCK")
    while stack:
        current = stack.pop()
        try:
            with open(f"/proc/{current}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as fh:
                    stack.extend(int(child) for child in fh.read().split())
        except OSError:  # gone meanwhile
            continue
    return total


def parse_cpus(text: str) -> set[int]:
    """ "0,1" or "0-3" -> a CPU set ("" -> empty: no pinning)."""
    cpus: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            lo, _, hi = part.partition("-")
            cpus.update(range(int(lo), int(hi or lo) + 1))
        except ValueError:
            raise ValueError(f"CPU list must look like 0,1 or 0-3, got {text!r}") from None
    return cpus


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServedProcess:
    """`cmd` plus `--port P` (a free one unless given), started on enter, ready when GET
    /readyz on `host` answers 200."""

    def __init__(
        self,
        cmd: Sequence[str],
        log_path: Path,
        cpus: set[int] | None = None,
        ready_timeout_s: float = 180.0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.port = port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.cmd = [*cmd, "--port", str(self.port)]
        self.log_path = Path(log_path)
        self.cpus = cpus or set()
        self.ready_timeout_s = ready_timeout_s
        self.ready_body: dict = {}
        self.ready_s = 0.0  # seconds from start to ready
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ServedProcess:
        return self.start()

    def start(self) -> ServedProcess:
        """Start the process and wait until /readyz answers 200 (stopped again if it never does).
        `with ServedProcess(...)` stops it on leaving; a caller that must outlive one block calls
        start() and stop() itself."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "w")
        cpus = self.cpus
        # Pinned before exec, so every thread the server starts (ONNX Runtime's too) inherits the set.
        preexec = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
        self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=preexec)
        log.close()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _started(self) -> subprocess.Popen[bytes]:
        if self.proc is None:
            raise RuntimeError(f"{self.cmd[2]} was never started")
        return self.proc

    def _wait_ready(self) -> None:
        proc = self._started()
        start = time.monotonic()
        deadline = start + self.ready_timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{self.cmd[2]} exited with status {proc.returncode} before it was ready: "
                    f"{self._log_tail()} (log: {self.log_path})"
                )
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=2) as resp:
                    if resp.status == 200:
                        try:
                            self.ready_body = json.loads(resp.read() or b"{}")
                        except ValueError:
                            self.ready_body = {}
                        self.ready_s = time.monotonic() - start
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.cmd[2]} not ready after {self.ready_timeout_s:.0f} s (log: {self.log_path})")

    def get_json(self, path: str, timeout_s: float = 10.0) -> dict:
        """GET `path` (e.g. /v1/model) from the process and parse the JSON body."""
        return json.loads(self.get_text(path, timeout_s))

    def get_text(self, path: str, timeout_s: float = 10.0) -> str:
        """GET `path` (e.g. /metrics) from the process: the body as text."""
        with urllib.request.urlopen(self.url + path, timeout=timeout_s) as resp:
            return resp.read().decode()

    def cpu_seconds(self) -> float:
        """CPU time (user + system, all threads) the process and its live children have used
        so far: with `--processes N` the server is a parent and N children."""
        return tree_cpu_seconds(self._started().pid)

    def main_thread_cpu_seconds(self) -> float:
        """CPU time of the process's main thread alone: the server's event loop, where HTTP,
        admission and refusals run (the tokenizer and inference have threads of their own)."""
        pid = self._started().pid
        with open(f"/proc/{pid}/task/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self, timeout_s: float = 15.0) -> tuple[int | None, float]:
        """SIGTERM, then kill after `timeout_s`: (exit status, None if killed; seconds taken)."""
        start = time.monotonic()
        proc = self.proc
        if proc is None or proc.poll() is not None:  # never started, or already gone
            return (None if proc is None else proc.returncode), 0.0
        proc.send_signal(signal.SIGTERM)
        code: int | None
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = None
        return code, time.monotonic() - start

    def _log_tail(self) -> str:
        try:
            lines = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return "no output"
        return lines[-1][:300] if lines else "no output"
