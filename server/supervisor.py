"""`--processes N`: N server processes on one port, under a parent that supervises them.

Where inference is cheap (small models, a GPU) one Python process is the limit: its event loop,
JSON and tokenizer hand-off share one interpreter lock. So the parent starts N children, each a
whole server (`python -m server --processes 1 --reuse-port` with its share of the cores), and
the kernel spreads incoming connections over their listening sockets (SO_REUSEPORT hashes each
connection to one of them). The parent loads no model and serves nothing:
- a child that dies is started again, and the parent logs its exit code or signal; a child that
  keeps dying (CRASH_LIMIT exits within CRASH_WINDOW_S) stops the server with exit 1;
- SIGTERM/SIGINT is passed to every child, each drains as a single server does, and the parent
  exits 0 once every child has exited 0; SIGHUP (re-read the API keys) is passed on too;
- metrics: every child writes to one prometheus-client multiprocess directory, so a scrape of any
  child is one view of all of them; the parent wipes it at start and drops a dead child's live
  gauges (`mark_process_dead`), as the library asks of its supervisor.

Admission stays per process: each child predicts the wait in its own queue for its own workers,
and fits its cost model from its own batches, which run beside the other children's, so the
contention between them is in what it measures.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import orjson

from core.layout import ProcessLayout
from server.config import ServerConfig
from server.engine import AUTO, CHOICE_ENV
from server.metrics import MULTIPROC_ENV

log = logging.getLogger("server.supervisor")

POLL_S = 0.1
CRASH_LIMIT = 5  # exits of children within CRASH_WINDOW_S that stop the whole server
CRASH_WINDOW_S = 60.0
RESTART_DELAY_S = 0.5  # between a child's death and its replacement: a failing start is not a busy loop
KILL_MARGIN_S = 5.0  # past the drain timeout, a child that has not exited is killed
PROBE_TIMEOUT_S = 120.0  # auto's measurement: engines load in seconds, the timing itself is ~2 s


@dataclass
class Child:
    slot: int
    process: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)


def child_command(argv: Sequence[str], layout: ProcessLayout, module: str = "server") -> list[str]:
    """The parent's own command line, then what makes it one child: later flags win in argparse.
    `module`: server.engine_probe runs auto's measurement with a child's flags."""
    return [
        sys.executable,
        "-m",
        module,
        *argv,
        *("--processes", "1", "--reuse-port"),
        *("--inference-workers", str(layout.workers), "--intra-op-threads", str(layout.threads)),
    ]


def die_with_parent() -> None:
    """In the child, before exec: SIGTERM it (it drains and exits) when the parent dies, even
    by SIGKILL, which the parent cannot pass on; without it the children would be left serving,
    orphaned. Linux's prctl(PR_SET_PDEATHSIG); elsewhere nothing."""
    # Ignored from exec on (a handled signal would be reset to its default, exit): a key re-read
    # passed on while the child still imports and loads would kill it. serve() takes it over.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def exit_reason(code: int) -> str:
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"


class SupervisorError(Exception):
    """The server cannot start (one line): auto's engine measurement failed."""


def probe_engine(argv: Sequence[str], layout: ProcessLayout) -> dict[str, Any]:
    """`--engine auto` measured once, in a process of its own with a child's share of the cores
    (server/engine_probe.py): the choice every child is started on. Raises SupervisorError."""
    try:
        done = subprocess.run(
            child_command(argv, layout, module="server.engine_probe"),
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise SupervisorError(f"--engine auto: measuring the engines took over {PROBE_TIMEOUT_S:.0f} s") from exc
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise SupervisorError(lines[-1].removeprefix("error: ") if lines else f"engine probe exit {done.returncode}")
    choice: dict[str, Any] = orjson.loads(done.stdout.strip().splitlines()[-1])
    return choice


class Supervisor:
    def __init__(self, config: ServerConfig, layout: ProcessLayout, argv: Sequence[str]) -> None:
        self.config = config
        self.layout = layout
        self.argv = list(argv)
        self.command = child_command(argv, layout)
        self.child_env: dict[str, str] = {}
        self.children: dict[int, Child] = {}  # slot -> child
        self.crashes: deque[float] = deque()
        self.stopping = False
        given = os.environ.get(MULTIPROC_ENV)
        self._own_dir = not given
        self.metrics_dir = Path(given) if given else Path(tempfile.mkdtemp(prefix="sentiment-metrics-"))

    def resolve_engine(self, gpu: bool) -> None:
        """With --engine auto on a CPU, measure once and start every child on the choice, so that
        N processes on one port answer from one engine. Raises SupervisorError."""
        if self.config.engine != AUTO or gpu:
            return
        choice = probe_engine(self.argv, self.layout)
        log.info("engine %s for every server process: %s", choice["name"], choice["reason"])
        self.command = [*self.command, "--engine", str(choice["name"])]
        self.child_env = {CHOICE_ENV: orjson.dumps(choice).decode()}

    def run(self) -> int:
        """Start the children, keep them running, drain them on SIGTERM; the exit status."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        signal.signal(signal.SIGHUP, self._pass_on)
        self._wipe_metrics()
        log.info(
            "starting %d server processes on %s:%d (%d inference worker(s) x %d thread(s) each)",
            self.layout.processes,
            self.config.host,
            self.config.port,
            self.layout.workers,
            self.layout.threads,
        )
        try:
            for slot in range(self.layout.processes):
                self._start(slot)
            status = self._watch()
        finally:
            stopped_cleanly = self._stop_children()
            if self._own_dir:
                shutil.rmtree(self.metrics_dir, ignore_errors=True)
        return status if stopped_cleanly else 1

    def _watch(self) -> int:
        while not self.stopping:
            time.sleep(POLL_S)
            for slot, child in list(self.children.items()):
                code = child.process.poll()
                if code is None or self.stopping:
                    continue
                self._forget(child)
                now = time.monotonic()
                self.crashes.append(now)
                while self.crashes and now - self.crashes[0] > CRASH_WINDOW_S:
                    self.crashes.popleft()
                if len(self.crashes) >= CRASH_LIMIT:
                    log.error(
                        "server process %d (pid %d) %s: %d exits within %.0f s, stopping",
                        slot,
                        child.process.pid,
                        exit_reason(code),
                        len(self.crashes),
                        CRASH_WINDOW_S,
                    )
                    return 1
                log.warning(
                    "server process %d (pid %d) %s after %.1f s; starting it again",
                    slot,
                    child.process.pid,
                    exit_reason(code),
                    now - child.started,
                )
                time.sleep(RESTART_DELAY_S)
                self._start(slot)
        return 0

    def _start(self, slot: int) -> None:
        env = {**os.environ, **self.child_env, MULTIPROC_ENV: str(self.metrics_dir)}
        process = subprocess.Popen(self.command, env=env, preexec_fn=die_with_parent)
        self.children[slot] = Child(slot, process)
        log.info("server process %d started (pid %d)", slot, process.pid)

    def _forget(self, child: Child) -> None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(child.process.pid, str(self.metrics_dir))  # type: ignore[no-untyped-call]  # untyped upstream
        self.children.pop(child.slot, None)

    def _pass_on(self, signum: int, frame: FrameType | None) -> None:
        """SIGHUP (re-read the API keys) goes to every child: each holds its own copy."""
        for child in self.children.values():
            if child.process.poll() is None:
                child.process.send_signal(signum)

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def _stop_children(self) -> bool:
        """SIGTERM to every child (each drains), then wait; a child past the drain timeout is
        killed. True when every child exited 0."""
        for child in self.children.values():
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.config.drain_timeout_s + KILL_MARGIN_S
        failed = False
        for child in list(self.children.values()):
            try:
                code = child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("server process %d (pid %d) did not stop: killed", child.slot, child.process.pid)
                child.process.kill()
                code = child.process.wait()
            if code != 0:
                failed = True
                log.warning(
                    "server process %d (pid %d) %s while stopping", child.slot, child.process.pid, exit_reason(code)
                )
            self._forget(child)
        return not failed

    def _wipe_metrics(self) -> None:
        """The library's rule: the directory holds nothing from an earlier run at start."""
        self.metrics_dir.mkdir(parents=True, exist_ok=True)
        for path in self.metrics_dir.glob("*.db"):
            path.unlink()
